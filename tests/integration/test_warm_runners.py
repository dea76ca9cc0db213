"""Warm runners (:mod:`distml.runtime.runners`) on a real ``ray start --head`` warm cluster.

A run's single task becomes a method call on a detached actor that later runs reuse: the same
metrics as a plain task (the task by hand), the same process serving run after run, a runner
of other code replaced, a runner that imported the user's module retired (an edit of that
module is seen by the next run), a runner killed mid-fit handled as the task's failed attempt,
and a stopped run's runner ended with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from distml.runtime import procs, runners, warm
from tests.integration import test_warm_cluster as wc

ROOT, cli = wc.ROOT, wc.cli
warm_env = wc.warm_env  # the fixture: own HOME and state folder, the head stopped after

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.allow_local_ray,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="finds its Ray processes through /proc"
    ),
]

XGB = ("train", "valid", "test", "best_iteration", "num_boosted_rounds")


def _start(env: dict, seen: list) -> dict:
    code, _, err = cli(env, "cluster", "start", "--cpus", "2", "--idle-timeout", "10m")
    assert code == 0, err[-3000:]
    rec = warm.read_record()
    seen.append(rec)
    return rec


def _run(env: dict, out: Path, *args: str, spec: str = "jobs/quickstart.yaml", code: int = 0):
    got, res, err = cli(env, "run", spec, "--output", str(out), *args)
    assert got == code, err[-3000:]
    if code:
        return res, None
    manifest = json.loads((Path(res["run_dir"]) / "manifest.json").read_text())
    return res, manifest


def _ran(manifest: dict) -> dict:
    return manifest["execution"]["warm_runner"]


def _runner_pids(rec: dict, ready: bool = False) -> list[int]:
    """The runners' processes; ``ready``: those whose actor is created (Ray titles the process
    ``ray::RunnerActor.__init__`` while its ``__init__`` runs, ``ray::RunnerActor`` after)."""
    found = []
    for pid in warm.processes(rec):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "RunnerActor" in cmd and not (ready and "RunnerActor.__init__" in cmd):
            found.append(pid)
    return found


def _await_runner(rec: dict, besides: tuple[int, ...] = (), count: int = 1) -> int:
    """The pid of a runner other than ``besides`` once its actor is up (its ``__init__``, the
    warm preload's imports and the code identity, done): a run only uses a ready runner, and a
    slow machine may take seconds to start one."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = [p for p in _runner_pids(rec, ready=True) if p not in besides]
        if len(ready) >= count:
            time.sleep(1.0)
            return ready[0]
        time.sleep(0.2)
    raise AssertionError("no runner came up")


def test_runs_reuse_a_runner_with_the_plain_task_result(warm_env, tmp_path):
    env, seen = warm_env
    rec = _start(env, seen)
    first, m1 = _run(env, tmp_path / "r")
    assert m1["cluster"]["mode"] == "warm"
    assert _ran(m1) == {"runner": False, "why": "none yet (created for next runs)"}
    _await_runner(rec, count=2)  # one per CPU
    for pid in _runner_pids(rec, ready=True):  # each imported the warm preload as it started
        assert "libxgboost" in Path(f"/proc/{pid}/maps").read_text()
    second, m2 = _run(env, tmp_path / "r")
    third, m3 = _run(env, tmp_path / "r")
    r2, r3 = _ran(m2), _ran(m3)
    assert r2["runner"] and r3["runner"] and r2["name"] == f"{runners.PREFIX}0"
    assert r3["reused"] and r3["pid"] == r2["pid"]  # one process served both runs
    assert r2["pid"] in _runner_pids(rec)
    for res in (second, third):  # a method call on a runner = the plain Ray task, exactly
        assert {k: res["metrics"][k] for k in XGB} == {k: first["metrics"][k] for k in XGB}
    # a process that imported Ray before distml (a notebook) connects with the token, too
    script = (
        "import json, sys\nimport ray\nimport distml\n"
        "r = distml.run('jobs/quickstart.yaml', output=sys.argv[1])\n"
        "print(json.dumps([r.manifest['cluster']['mode'], r.metrics]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "r")],
        cwd=ROOT,
        env={k: v for k, v in env.items() if k != "RAY_AUTH_MODE"},  # a user's plain shell
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    mode, metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert mode == "warm" and {k: metrics[k] for k in XGB} == {k: first["metrics"][k] for k in XGB}
    # statsmodels' single model through a runner = the same fit in a plain task
    ols, m_ols = _run(env, tmp_path / "r", spec="jobs/statsmodels_ols_longley.yaml")
    plain_env = dict(env, **{runners.ENV: "0"})
    ols_plain, m_plain = _run(plain_env, tmp_path / "r", spec="jobs/statsmodels_ols_longley.yaml")
    assert _ran(m_ols)["runner"] and _ran(m_plain) == {
        "runner": False,
        "why": f"turned off ({runners.ENV}=0)",
    }
    assert ols["metrics"] == ols_plain["metrics"]
    import pandas as pd

    tables = [
        pd.read_parquet(Path(r["run_dir"]) / "tables" / "coefficients.parquet")
        for r in (ols, ols_plain)
    ]
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    # the runner's CPU was reserved only for the calls: both CPUs are free between runs
    code, st, _ = cli(env, "cluster", "status")
    assert code == 0 and st["status"] == "up"


def test_other_code_is_replaced_and_a_killed_runner_is_a_failed_attempt(warm_env, tmp_path):
    env, seen = warm_env
    env = dict(env, **{runners.ENV: "1"})
    rec = _start(env, seen)
    _run(env, tmp_path / "r")  # creates the runners
    _await_runner(rec)
    _, m = _run(env, tmp_path / "r")
    old_pid = _ran(m)["pid"]
    # distml's source changes (a new mtime is enough): the runner of the old code is not used
    src = Path(ROOT) / "distml" / "runtime" / "runners.py"
    st = src.stat()
    try:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        _other_code_then_faults(env, rec, old_pid, tmp_path)
    finally:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))


def _other_code_then_faults(env: dict, rec: dict, old_pid: int, tmp_path: Path) -> None:
    _, m = _run(env, tmp_path / "r")
    ran = _ran(m)
    assert not ran["runner"] and "other code (source), replaced" in ran["why"], ran
    deadline = time.monotonic() + 30
    while old_pid in _runner_pids(rec) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert old_pid not in _runner_pids(rec)
    _await_runner(rec, besides=(old_pid,))
    _, m = _run(env, tmp_path / "r")  # the replacement, created by the run before
    assert _ran(m)["runner"] and _ran(m)["pid"] != old_pid
    clean, _ = _run(env, tmp_path / "r")

    # the fit's process exits at round 5 inside the runner: with one retry the run goes on as
    # a plain task (resumed from its checkpoint) and gives the unfaulted result
    faulty = dict(env, DISTML_FAULT=f"train.iteration:5@{tmp_path / 'marker'}")
    res, m = _run(faulty, tmp_path / "r", "--set", "resources.max_failures=1")
    assert (tmp_path / "marker").exists()
    ran = _ran(m)
    assert ran["runner"] and ran["runner_died"] == "ActorDiedError", ran
    assert {k: res["metrics"][k] for k in XGB} == {k: clean["metrics"][k] for k in XGB}
    # without retries the runner's death fails the run (exit 4), as a plain task's would
    faulty = dict(env, DISTML_FAULT=f"train.iteration:5@{tmp_path / 'marker2'}")
    _await_runner(rec, besides=(ran["pid"],))  # the run that lost it created a replacement
    _, m = _run(env, tmp_path / "r")
    assert _ran(m)["runner"] and _ran(m)["pid"] != ran["pid"], _ran(m)
    res, _ = _run(faulty, tmp_path / "r", code=4)
    assert "fit failed" in res["error"]["message"]


NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.lin = nn.Linear(in_features, out_features)
        with torch.no_grad():
            self.lin.weight.mul_({scale})

    def forward(self, x):
        return self.lin(x)
"""


def test_user_code_retires_the_runner_so_an_edit_is_seen(warm_env, tmp_path):
    pytest.importorskip("torch")
    env, seen = warm_env
    user = tmp_path / "user"
    user.mkdir()
    (user / "usernet.py").write_text(textwrap.dedent(NET.format(scale=1.0)))
    # the user's package on the cluster's path (where every task, runner or not, imports it)
    env = dict(env, PYTHONPATH=f"{user}{os.pathsep}{env['PYTHONPATH']}")
    rec = _start(env, seen)
    spec = tmp_path / "net.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "usernet",
                "kind": "torch",
                "data": {
                    "source": "builtin:breast_cancer",
                    "target": "target",
                    "split": {"valid": 0.2, "seed": 3},
                },
                "model": {"module": "usernet:Net", "epochs": 2, "batch_size": 64, "seed": 1},
            }
        )
    )
    _run(env, tmp_path / "r")  # creates the runners
    _await_runner(rec)
    one, m1 = _run(env, tmp_path / "r", spec=str(spec))
    assert _ran(m1)["runner"]
    (user / "usernet.py").write_text(textwrap.dedent(NET.format(scale=0.0)))
    two, m2 = _run(env, tmp_path / "r", spec=str(spec))
    ran = _ran(m2)  # the runner that imported usernet retired; another one or a plain task
    assert not ran.get("reused") or ran["pid"] != _ran(m1)["pid"], ran
    plain = dict(env, **{runners.ENV: "0"})
    ref, _ = _run(plain, tmp_path / "r", spec=str(spec))  # the edited module in a fresh process
    assert two["metrics"] == ref["metrics"] and two["metrics"] != one["metrics"]


def test_a_stopped_run_ends_its_runner(warm_env, tmp_path):
    env, seen = warm_env
    env = dict(env, **{runners.ENV: "1"})
    rec = _start(env, seen)
    _run(env, tmp_path / "r")  # creates the runners
    _await_runner(rec)
    out = tmp_path / "long"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distml",
            "run",
            "jobs/quickstart.yaml",
            "--output",
            str(out),
            "--set",
            "model.num_boost_round=1000000",
            "--set",
            "model.early_stopping_rounds=null",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        busy = None
        deadline = time.monotonic() + 120
        while busy is None and time.monotonic() < deadline and proc.poll() is None:
            for pid in _runner_pids(rec):
                if _cpu_ticks(pid, 1.0) > 50:  # the runner is fitting
                    busy = pid
            time.sleep(0.2)
        assert busy is not None, "no runner took the long run's task"
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 130, err.decode()[-3000:]
    deadline = time.monotonic() + 30
    while procs.alive(busy) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not procs.alive(busy), "the stopped run's runner went on fitting"


def _cpu_ticks(pid: int, over_s: float) -> int:
    def ticks() -> int:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0
        return int(fields[11]) + int(fields[12])

    a = ticks()
    time.sleep(over_s)
    return ticks() - a
