"""The warm cluster's record without a cluster: where it lives, how it is written, when it is
stale (dead process, another boot), the version check, leases, the CLI's answers when none is
up, and what ``distml --help``/``validate`` import (DESIGN.md §1: no heavy imports there)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from distml.cli import main
from distml.errors import ClusterError, SpecError
from distml.runtime import procs, warm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def state(tmp_path, monkeypatch):
    folder = tmp_path / "state"
    monkeypatch.setenv(warm.STATE_ENV, str(folder))
    return folder


def _record(folder, **changes) -> dict:
    """A record of a head that looks healthy to everything but the checks under test: this
    process stands in for its GCS (alive, same start time), this boot, these versions."""
    rec = {
        "id": "t" * 16,
        "address": "127.0.0.1:1",
        "temp_dir": str(folder / "nothing"),
        "token_path": str(folder / "auth_token"),
        "state_dir": str(folder),
        "boot_id": warm.boot_id(),
        **warm.identity(),
        "started_at": time.time(),
        "idle_timeout_s": 60.0,
        "pids": {"gcs_server": os.getpid()},
        "start_ticks": {"gcs_server": procs.start_ticks(os.getpid())},
    }
    rec.update(changes)
    warm.write_record(rec, folder)
    return rec


def test_state_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(warm.STATE_ENV, raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert warm.state_dir() == tmp_path / ".local" / "state" / "distml"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert warm.state_dir() == tmp_path / "xdg" / "distml"
    monkeypatch.setenv(warm.STATE_ENV, str(tmp_path / "mine"))
    assert warm.state_dir() == tmp_path / "mine"


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1.5h", 5400),
        ("1d", 86400),
        ("none", 0),
        ("0", 0),
    ],
)
def test_parse_duration(text, seconds):
    assert warm.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "10 minutes", "-5m", "m", "5x"])
def test_parse_duration_refuses(bad):
    with pytest.raises(SpecError, match="--idle-timeout must be a duration"):
        warm.parse_duration(bad)


def test_record_is_written_atomically_for_its_owner_only(state):
    rec = _record(state)
    path = state / warm.RECORD
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert warm.read_record(state) == rec
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []
    path.write_text("{not json")
    assert warm.health(warm.read_record(state)) == ("stale", "its record is unreadable")


def test_healthy_record_needs_the_port_to_answer(state):
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        rec = _record(state, address=f"127.0.0.1:{srv.getsockname()[1]}")
        assert warm.health(rec) == ("up", "healthy")
        assert warm.for_run() == rec
    assert warm.health(rec)[0] == "stale"  # nothing listens any more


@pytest.mark.parametrize(
    "change,why",
    [
        ({"boot_id": "another-boot"}, "before this machine's last boot"),
        ({"pids": {"gcs_server": 2**22 + 7}}, "GCS process"),
        ({"start_ticks": {"gcs_server": "1"}}, "GCS process"),  # the pid was reused
    ],
)
def test_stale_record_is_cleaned_and_ignored(state, change, why):
    _record(state, **change)
    (state / "auth_token").write_text("x")
    state_, reason = warm.health(warm.read_record(state))
    assert state_ == "stale" and why in reason
    assert warm.for_run() is None  # a cluster for the run, as without a record
    assert not (state / warm.RECORD).exists() and not (state / "auth_token").exists()


def test_version_mismatch_is_explained(state):
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        _record(
            state,
            address=f"127.0.0.1:{srv.getsockname()[1]}",
            distml_version="0.0.1",
            ray_version="2.0.0",
        )
        with pytest.raises(ClusterError) as err:
            warm.for_run()
    msg = str(err.value)
    assert err.value.exit_code == 3
    assert "runs distml 0.0.1, ray 2.0.0" in msg and f"ray {warm.identity()['ray_version']}" in msg
    assert "distml cluster stop && distml cluster start" in msg
    assert (state / warm.RECORD).exists()  # not ours to remove: the user restarts it


def test_leases_mark_activity_and_dead_ones_are_dropped(state):
    t0 = time.time()
    rec = _record(state, started_at=t0 - 1000)
    (state / "last_used").touch()
    os.utime(state / "last_used", (t0 - 500, t0 - 500))
    assert warm.last_activity(state, rec) == pytest.approx(t0 - 500, abs=0.01)  # the last touch
    with warm.lease(rec):
        assert len(warm.active_leases(state)) == 1
        assert warm.last_activity(state, rec) >= t0  # in use: now
    assert warm.active_leases(state) == []
    assert warm.last_activity(state, rec) >= t0  # touched when the run ended
    (state / "leases").mkdir(exist_ok=True)
    (state / "leases" / f"{2**22 + 7}-1").touch()  # a run that died holding its lease
    assert warm.active_leases(state) == [] and list((state / "leases").iterdir()) == []


def test_cli_when_no_warm_cluster_is_up(state, capfd):
    capfd.readouterr()
    assert main(["cluster", "status", "--json"]) == 3
    out = json.loads(capfd.readouterr().out)
    assert out["status"] == "down" and out["state_dir"] == str(state)
    assert main(["cluster", "stop", "--json"]) == 0  # stopping nothing is a no-op
    assert json.loads(capfd.readouterr().out) == {
        "status": "down",
        "stopped": False,
        "message": "no warm cluster was running",
    }
    assert main(["cluster", "start", "--idle-timeout", "soon", "--json"]) == 2
    assert (
        "--idle-timeout must be a duration"
        in json.loads(capfd.readouterr().out)["error"]["message"]
    )
    assert main(["cluster", "start", "--cpus", "-1"]) == 2
    assert not (state / warm.RECORD).exists()


HEAVY = (
    "ray",
    "torch",
    "xgboost",
    "lightgbm",
    "statsmodels",
    "dask",
    "sklearn",
    "pandas",
    "pyarrow",
)
PROBE = """
import json, sys
from distml.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "loaded": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _imports(*argv: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_and_validate_import_nothing_heavy():
    """What keeps ``distml --help`` and ``validate`` under 0.5 s of CPU (measured in
    benchmarks/probe_cli_cpu.py, not here): ``--help`` imports none of these; ``validate``
    no cluster or fitting library (tests/unit/test_cold_path.py holds the stricter rule: not
    even numpy or pandas, through the real ``python -m distml`` entry)."""
    assert _imports("--help") == {"code": 0, "loaded": []}
    assert _imports("cluster", "--help") == {"code": 0, "loaded": []}
    fitting = {"ray", "torch", "xgboost", "lightgbm", "statsmodels", "dask"}
    for argv in (
        ("validate", "jobs/quickstart.yaml", "--no-data"),
        ("validate", "jobs/quickstart.yaml"),
    ):
        got = _imports(*argv)
        assert got["code"] == 0 and not fitting & set(got["loaded"]), (argv, got)


def test_ray_private_apis_the_warm_client_uses():
    """distml.runtime.cluster._warm_client sets these when Ray was imported before the run
    (a long-lived process): fail loudly when Ray renames them."""
    import ray._private.ray_constants as consts
    from ray._raylet import AuthenticationTokenLoader

    assert isinstance(consts.ENABLE_RAY_CLUSTER, bool)
    assert callable(AuthenticationTokenLoader.instance().reset_cache)


def test_interrupted_start_leaves_nothing_behind(state, monkeypatch):
    made = []
    real_mkdtemp = warm.tempfile.mkdtemp

    def mkdtemp(**kw):
        made.append(real_mkdtemp(**kw))
        return made[-1]

    def interrupted(*a, **k):  # Ctrl-C while `ray start` runs
        raise KeyboardInterrupt

    monkeypatch.setattr(warm.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(warm.subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        warm.start(num_cpus=1, idle_timeout_s=60)
    assert made and not os.path.exists(made[0])
    assert sorted(p.name for p in state.iterdir()) == [".lock"]  # no record, no token


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_an_explicit_address_wins_over_the_warm_cluster(state, monkeypatch, how):
    """DESIGN.md §3 order: the warm record is not even read when an address is given."""
    from distml.runtime import cluster

    def never():
        raise AssertionError("the warm cluster was consulted")

    monkeypatch.setattr(warm, "for_run", never)
    if "ray" in sys.modules:  # under `make test` the integration suite's Ray is connected here
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)
    address = None
    if how == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    else:
        address = "127.0.0.1:1"
    with pytest.raises(ClusterError, match=f"from {how}"):
        with cluster.cluster(address):
            pass
