"""A batch platform stops a run with SIGTERM (Airflow's timeout, ``kill``, a cron wrapper): the
run records ``interrupted`` in its manifest, writes no ``_SUCCESS``, stops the local Ray cluster
it started, and exits 130 like Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SPEC = {
    "name": "sigterm",
    "kind": "sklearn",
    "data": {"source": "builtin:iris", "target": "target", "split": {"valid": 0.3}},
    "model": {"estimator": "sklearn.dummy.DummyClassifier"},
    # enough trials to be still searching when the signal comes
    "tune": {
        "metric": "valid.accuracy",
        "num_samples": 5000,
        "seed": 0,
        "space": {"model.params.strategy": {"choice": ["prior", "stratified"]}},
    },
}


def _group_alive(pgid: int) -> list[str]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        fields = rest.split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(f"{entry.name}:{name}")
    return out


@pytest.mark.allow_local_ray
def test_sigterm_marks_the_run_interrupted_and_stops_its_cluster(tmp_path):
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(json.dumps(SPEC))
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distml",
            "run",
            str(spec_path),
            "--output",
            str(out),
            "--run-id",
            "r1",
            "--json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    run_dir = out / "sigterm" / "r1"
    exp = run_dir / "checkpoints" / "tune"
    deadline = time.monotonic() + 180
    try:
        # searching: Tune has saved its experiment state at least once
        while time.monotonic() < deadline and proc.poll() is None:
            if list(exp.glob("experiment_state-*.json")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert list(exp.glob("experiment_state-*.json")), "the search did not start in time"
        os.kill(proc.pid, signal.SIGTERM)  # the driver only, as a scheduler would
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 130, err.decode()[-3000:]
    assert "interrupted" in err.decode() or "terminated" in err.decode()
    assert "run failed" not in err.decode()  # one line: the CLI's "error: interrupted"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert "SIGTERM" in manifest["error"]["message"]
    assert not (run_dir / "_SUCCESS").exists()
    # the local cluster the run started (raylet, GCS, workers: same process group) is gone
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group_alive(proc.pid) == []


@pytest.mark.allow_local_ray
def test_a_finished_run_leaves_no_process_of_the_cluster_it_started(tmp_path):
    """The raylet's agents are its children, not the node's: they must not outlive the run."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distml",
            "run",
            "jobs/quickstart.yaml",
            "--output",
            str(tmp_path),
            "--set",
            "model.num_boost_round=5",
            "--json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group_alive(proc.pid) == []


def _names_in_group(pgid: int) -> list[str]:
    return [p.split(":", 1)[1] for p in _group_alive(pgid)]


@pytest.mark.allow_local_ray
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("moment", ["run_dir_locked", "cluster_starting"])
def test_sigterm_at_any_moment_is_exit_130_and_interrupted(tmp_path, moment):
    """SIGTERM as soon as the run holds its directory, and while Ray is starting (Ray installs
    a handler of its own in ray.init, a bare exit 15): exit 130, one line on the console, the
    manifest (when written) ``interrupted``, never ``running`` or ``failed``; nothing of the
    cluster left."""
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(json.dumps(SPEC))
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distml",
            "run",
            str(spec_path),
            "--output",
            str(out),
            "--run-id",
            "r1",
            "--json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    run_dir = out / "sigterm" / "r1"
    log_tmp = run_dir / f".run.log.tmp-{proc.pid}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if moment == "run_dir_locked" and (run_dir / ".distml.lock").exists():
                break
            if (
                moment == "cluster_starting"
                and log_tmp.exists()
                and any(n in ("gcs_server", "raylet") for n in _names_in_group(proc.pid))
            ):
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if moment == "cluster_starting":  # Ray's processes run, ray.init has not returned
            assert "ray cluster ready" not in log_tmp.read_text()
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    err = err.decode()
    assert proc.returncode == 130, err[-3000:]
    said = [ln for ln in err.splitlines() if ln.startswith("distml:")]
    assert said[-1] == "distml: error: interrupted" and "run failed" not in err, err[-3000:]
    assert "Traceback" not in err and "SystemExit" not in err
    if moment == "cluster_starting" or (run_dir / "manifest.json").exists():
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == "interrupted", manifest
        assert "SIGTERM" in manifest["error"]["message"]
    assert not (run_dir / "_SUCCESS").exists() and not (run_dir / ".distml.lock").exists()
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group_alive(proc.pid) == []
