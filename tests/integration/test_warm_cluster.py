"""The warm local cluster with real ``ray start --head`` processes (DESIGN.md §3).

start → status up → ``distml run`` uses it (the manifest says so) → a second run reuses it →
a CLI of another version is refused with the restart advice → stop → status down, record gone,
no process left → a run falls back to a cluster of its own, with the same metrics; and a head
started with a short ``--idle-timeout`` stops itself. Each test has its own HOME and state
folder; whatever a test started is stopped in its teardown, and checked gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from distml.runtime import procs, warm, warm_workers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EQUAL = ("train", "valid", "test", "best_iteration", "num_boosted_rounds")

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.allow_local_ray,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="finds its Ray processes through /proc"
    ),
]


@pytest.fixture
def warm_env(tmp_path, monkeypatch):
    """Environment of the CLI processes; the teardown stops the head of this state folder."""
    home, state = tmp_path / "home", tmp_path / "state"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH_TOKEN"))
    }
    env.update(
        {
            "HOME": str(home),
            warm.STATE_ENV: str(state),
            "PYTHONPATH": ROOT,
            "RAY_USAGE_STATS_ENABLED": "0",
            "OMP_NUM_THREADS": "1",
        }
    )
    monkeypatch.setenv(warm.STATE_ENV, str(state))
    seen: list[dict] = []
    try:
        yield env, seen
    finally:
        rec = warm.read_record(state)
        if rec is not None and not rec.get("corrupt"):
            seen.append(rec)
        warm.stop()
        for r in seen:
            left = warm.processes(r)
            assert left == [], f"processes of the warm cluster survived: {left}"
            wd = r.get("watchdog_pid")
            assert not procs.alive(wd, r.get("watchdog_ticks")), "the watchdog survived"


def cli(env: dict, *args: str, timeout: float = 300) -> tuple[int, dict, str]:
    out = subprocess.run(
        [sys.executable, "-m", "distml", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    lines = out.stdout.strip().splitlines()
    return out.returncode, json.loads(lines[-1]) if lines else {}, out.stderr


def _run(env: dict, out_dir) -> tuple[dict, dict]:
    code, res, err = cli(
        env,
        "run",
        "jobs/quickstart.yaml",
        "--output",
        str(out_dir),
        "--set",
        "model.num_boost_round=30",
    )
    assert code == 0, err[-3000:]
    with open(os.path.join(res["run_dir"], "manifest.json")) as fh:
        return res, json.load(fh)


def _http_status(url: str, token: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _same_metrics(a: dict, b: dict) -> None:
    assert {k: a[k] for k in EQUAL} == {k: b[k] for k in EQUAL}


def test_start_run_reuse_mismatch_stop_fallback(warm_env, tmp_path):
    env, seen = warm_env
    code, started, err = cli(env, "cluster", "start", "--cpus", "2", "--idle-timeout", "10m")
    assert code == 0, err[-3000:]
    assert started["status"] == "up" and not started["already_running"]
    rec = warm.read_record()
    seen.append(rec)
    assert started["address"] == rec["address"] and rec["address"].startswith("127.0.0.1:")
    assert rec["dashboard_url"].startswith("http://127.0.0.1:")
    assert rec["boot_id"] == warm.boot_id() and rec["idle_timeout_s"] == 600
    assert procs.alive(rec["watchdog_pid"], rec["watchdog_ticks"])
    # token authentication is on: the dashboard refuses a request without the head's token
    with open(rec["token_path"]) as fh:
        token = fh.read().strip()
    assert _http_status(rec["dashboard_url"] + "/api/version", None) == 401
    assert _http_status(rec["dashboard_url"] + "/api/version", token) == 200
    # started through node_start (the head beside the raylet, which outlived the start's
    # process: it answered above), without the autoscaler monitor and the log monitor
    cmdlines = []
    for pid in warm.processes(rec):
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdlines.append(fh.read().replace(b"\0", b" ").decode())
    assert any("dashboard/dashboard.py" in c for c in cmdlines)
    assert not [c for c in cmdlines if "autoscaler/_private/monitor.py" in c or "log_monitor" in c]

    code, again, _ = cli(env, "cluster", "start")  # a second start reports the running head
    assert code == 0 and again["already_running"] and again["address"] == rec["address"]
    code, st, _ = cli(env, "cluster", "status")
    assert code == 0 and st["status"] == "up" and st["address"] == rec["address"]
    assert st["pids"] == rec["pids"] and "mismatch" not in st

    first, m1 = _run(env, tmp_path / "runs")
    assert m1["cluster"]["mode"] == "warm" and m1["cluster"]["address"] == rec["address"]
    assert m1["cluster"]["address_source"] == warm.SOURCE
    assert m1["cluster"]["warm"]["started_at"] == rec["started_at"]
    assert m1["cluster"]["resources"]["CPU"] == 2
    second, m2 = _run(env, tmp_path / "runs")
    assert m2["cluster"]["mode"] == "warm" and second["run_dir"] != first["run_dir"]
    _same_metrics(first["metrics"], second["metrics"])
    assert warm.read_record()["pids"] == rec["pids"]  # the same head served both runs
    assert not list((tmp_path / "state" / "leases").iterdir())  # both runs let go

    # a CLI of another version: refused, with the way out, before any work
    tampered = dict(rec, distml_version="0.0.1")
    warm.write_record(tampered)
    code, res, err = cli(env, "run", "jobs/quickstart.yaml", "--output", str(tmp_path / "bad"))
    msg = res["error"]["message"]
    assert (
        code == 3
        and "runs distml 0.0.1" in msg
        and "distml cluster stop && distml cluster start" in msg
        and "Traceback" not in err
    )
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").rglob("_SUCCESS"))
    code, st, _ = cli(env, "cluster", "status")
    assert code == 3 and st["status"] == "up" and "runs distml 0.0.1" in st["mismatch"]
    warm.write_record(rec)

    code, stopped, err = cli(env, "cluster", "stop")
    assert code == 0 and stopped["stopped"] and stopped["processes"] > 0, err[-2000:]
    assert warm.processes(rec) == [] and not (tmp_path / "state" / warm.RECORD).exists()
    assert not os.path.exists(rec["temp_dir"])
    time.sleep(0.5)
    assert not procs.alive(rec["watchdog_pid"], rec["watchdog_ticks"])
    code, st, _ = cli(env, "cluster", "status")
    assert code == 3 and st["status"] == "down"

    # a head whose GCS died (a crash, `ray stop`): its record is stale; a run cleans it (and
    # what is left of the head) and starts a cluster of its own, with the same result
    code, _, err = cli(
        env, "cluster", "start", "--cpus", "1", "--idle-timeout", "none", "--preload", "none"
    )
    assert code == 0, err[-3000:]
    dead = warm.read_record()
    seen.append(dead)
    assert "watchdog_pid" not in dead  # no idle timeout, no watchdog
    os.kill(dead["pids"]["gcs_server"], 9)
    time.sleep(1)
    third, m3 = _run(env, tmp_path / "runs")
    assert m3["cluster"]["mode"] == "local" and "warm" not in m3["cluster"]
    _same_metrics(first["metrics"], third["metrics"])
    assert warm.read_record() is None and warm.processes(dead) == []
    code, st, _ = cli(env, "cluster", "status")
    assert code == 3 and st["status"] == "down"


def test_idle_timeout_stops_it(warm_env):
    env, seen = warm_env
    code, _, err = cli(
        env, "cluster", "start", "--cpus", "1", "--idle-timeout", "8s", "--preload", "none"
    )
    assert code == 0, err[-3000:]
    rec = warm.read_record()
    assert rec is not None, "stopped before the test could read its record"
    seen.append(rec)
    assert rec["preload"] == [] and rec["idle_timeout_s"] == 8
    deadline = time.monotonic() + 120
    while warm.read_record() is not None and time.monotonic() < deadline:
        time.sleep(1)
    assert warm.read_record() is None, "the idle head was not stopped"
    assert warm.processes(rec) == []
    with open(os.path.join(rec["state_dir"], "watchdog.log")) as fh:
        log = fh.read()
    assert "idle for" in log and "stopping" in log
    code, st, _ = cli(env, "cluster", "status")
    assert code == 3 and st["status"] == "down"


PRELOAD_PROBE = """
import json, os, sys, time
import psutil, ray
from distml.runtime import warm, warm_workers
from distml.runtime.cluster import cluster

def probe():
    import os, sys
    seen = {"pid": os.getpid(), "guard": "distml.runtime.preload" in sys.modules,
            "warm": {m: m in sys.modules for m in WARM},
            "started": psutil.Process().create_time()}
    time.sleep(1.5)  # the two tasks run at once, in two processes
    return seen

class Probe:  # an actor (a trial's process): Ray gives it a worker that never ran a task
    def seen(self):
        return probe()

WARM = list(warm.PRELOAD) + ["tabnanny"]
with cluster(run_preload=tuple(sys.argv[2:])) as info:
    from ray.experimental.internal_kv import _internal_kv_list
    declared = sorted(k.decode() for k in _internal_kv_list("", namespace=warm_workers.RUN_NAMESPACE))
    time.sleep(float(sys.argv[1]))  # the driver planning
    # in the clock of psutil's create_time (boot time + time since boot: the same rounding)
    asked = psutil.boot_time() + time.clock_gettime(time.CLOCK_BOOTTIME)
    if os.environ.get("PROBE_ACTORS"):
        actors = [ray.remote(num_cpus=1)(Probe).remote() for _ in range(2)]
        seen = ray.get([a.seen.remote() for a in actors])
    else:
        remote = ray.remote(num_cpus=1)(probe)
        seen = ray.get([remote.remote() for _ in range(2)])
    job = ray.get_runtime_context().get_job_id()
print(json.dumps({"mode": info.mode, "seen": seen, "declared": declared, "job": job,
                  "prestarted": info.warm.get("prestarted"), "asked": asked}))
"""


def _probe_run(env: dict, *run_preload: str, wait_s: float = 0.0, actors: bool = False) -> dict:
    """A driver on the warm cluster (declaring ``run_preload``) that runs two probes at once,
    ``wait_s`` after it connected: tasks, or with ``actors`` two actors."""
    out = subprocess.run(
        [sys.executable, "-c", PRELOAD_PROBE, str(wait_s), *run_preload],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=dict(env, PROBE_ACTORS="1") if actors else env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_only_workers_prestarted_for_no_job_import_the_warm_preload(warm_env):
    """The warm preload goes to the workers Ray prestarts for no job (the first run's tasks
    take them); a worker started for a later run imports only Ray's worker and the thread
    guard, and the run's own modules when its tasks need them."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("Ray prestarts one worker per core: two are needed for the two tasks")
    env, seen = warm_env
    code, started, err = cli(env, "cluster", "start", "--cpus", "2", "--idle-timeout", "10m")
    assert code == 0, err[-3000:]
    rec = warm.read_record()
    seen.append(rec)
    assert rec["preload"] == list(warm.PRELOAD)
    # the start connected a driver, so Ray prestarted the workers (one per CPU on a machine of
    # at least 2 cores), and it returned once both had imported the preload
    want = warm_workers.expected_workers(2)
    assert started["workers_ready"] == want == rec["workers_ready"] >= 1
    assert len(os.listdir(os.path.join(rec["temp_dir"], "ready"))) == want
    everything = {**dict.fromkeys(warm.PRELOAD, True), "tabnanny": False}
    nothing = dict.fromkeys([*warm.PRELOAD, "tabnanny"], False)
    # the first run takes the workers Ray prestarted; they are idle, so although it declares
    # a list it has none started for itself (their preload is the warm list, not its list)
    first = _probe_run(env, "tabnanny")
    assert first["mode"] == "warm" and len({s["pid"] for s in first["seen"]}) == 2
    assert first["prestarted"] == 0 and first["declared"] == [first["job"]]
    marked = {int(p) for p in os.listdir(os.path.join(rec["temp_dir"], "ready"))}
    assert {s["pid"] for s in first["seen"]} == marked
    assert [s["warm"] for s in first["seen"]] == [everything, everything]
    assert all(s["guard"] for s in first["seen"])
    later = _probe_run(env)  # those ended with the first job: workers started for this one
    assert later["mode"] == "warm"
    assert not {s["pid"] for s in later["seen"]} & {s["pid"] for s in first["seen"]}
    assert [s["warm"] for s in later["seen"]] == [nothing, nothing]
    assert all(s["guard"] for s in later["seen"])
    assert later["declared"] == [] and later["prestarted"] is None
    # a run that declares modules (a search: Tune and the warm cluster's libraries) has its
    # own workers import them as they start; the entry is gone once the run is
    declared = _probe_run(env, "tabnanny", warm_workers.WARM_LIST)
    assert declared["declared"] == [declared["job"]]
    assert [s["warm"] for s in declared["seen"]] == [dict(everything, tabnanny=True)] * 2
    assert _probe_run(env)["declared"] == []
    # such a run has its workers started as it connects, while its driver plans, not when its
    # work asks: its actors (a search's trials) get processes that started before they were
    # created, with the list already imported
    early = _probe_run(env, "tabnanny", wait_s=4.0, actors=True)
    assert early["prestarted"] == want
    assert all(s["started"] < early["asked"] for s in early["seen"]), early
    assert [s["warm"]["tabnanny"] for s in early["seen"]] == [True, True]
    # without the list, the same actors start when created
    plain = _probe_run(env, wait_s=4.0, actors=True)
    assert plain["prestarted"] is None
    assert all(s["started"] > plain["asked"] for s in plain["seen"]), plain


def test_a_search_on_the_warm_cluster_starts_its_trials_on_processes_started_for_it(
    warm_env, tmp_path
):
    """A search on the warm cluster: after the first run, its trial processes were started as
    it connected, and it waits until they are ready before its trials (Tune removes a trial's
    actor still starting when a finished trial's is free, so trials shorter than a process
    start would run one at a time); its data are prepared in the driver, not in a task that
    would take one of them (of those or, in the first run after the start, of the workers Ray
    prestarted for no job). Its trials are those of the same search on a cluster of its own
    (data prepared in a task), to the last digit."""
    import pandas as pd
    import yaml

    env, seen = warm_env
    code, _, err = cli(env, "cluster", "start", "--cpus", "2", "--idle-timeout", "10m")
    assert code == 0, err[-3000:]
    seen.append(warm.read_record())
    spec = tmp_path / "search.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "warm-search",
                "kind": "xgboost",
                "data": {
                    "source": "builtin:breast_cancer",
                    "target": "target",
                    "split": {"valid": 0.25, "seed": 1},
                },
                "model": {"num_boost_round": 20},
                "tune": {
                    "metric": "valid.logloss",
                    "num_samples": 6,
                    "seed": 0,
                    "space": {"model.params.max_depth": {"randint": [2, 8]}},
                },
            }
        )
    )

    def search(env: dict, out: str) -> tuple[dict, pd.DataFrame]:
        code, res, err = cli(env, "run", str(spec), "--output", str(tmp_path / out))
        assert code == 0, err[-3000:]
        run_dir = Path(res["run_dir"])
        man = json.loads((run_dir / "manifest.json").read_text())
        trials = pd.read_parquet(run_dir / "tables" / "trials.parquet")
        cols = ["trial_id", "model.params.max_depth", "valid.logloss", "iterations"]
        return man, trials[cols].sort_values("trial_id").reset_index(drop=True)

    want = warm_workers.expected_workers(2)
    # the first run after the start: its trials take the workers Ray prestarted for no job,
    # so none are started for it, and its data task would have taken one of them
    first, first_trials = search(env, "first")
    assert first["cluster"]["mode"] == "warm" and first["cluster"]["warm"]["prestarted"] == 0
    assert first["tune"]["data_prepared_in"] == "driver" and "workers_ready" not in first["tune"]
    man, trials = search(env, "warm")  # a later run: its workers started as it connects
    assert man["cluster"]["mode"] == "warm" and man["cluster"]["warm"]["prestarted"] == want
    assert man["tune"]["data"] == "shared" and man["tune"]["workers_ready"] == want
    assert man["tune"]["data_prepared_in"] == "driver"
    assert "workers_wait_s" in man["tune"]["timings_s"]
    own, own_trials = search(dict(env, **{warm.STATE_ENV: str(tmp_path / "no-warm")}), "own")
    assert own["cluster"]["mode"] == "local" and "workers_ready" not in own["tune"]
    assert own["tune"]["data"] == "shared" and own["tune"]["data_prepared_in"] == "task"
    pd.testing.assert_frame_equal(trials, own_trials)
    pd.testing.assert_frame_equal(first_trials, own_trials)
