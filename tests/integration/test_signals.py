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
    "name": "sigterm", "kind": "sklearn",
    "data": {"source": "builtin:iris", "target": "target", "split": {"valid": 0.3}},
    "model": {"estimator": "sklearn.dummy.DummyClassifier"},
    # enough trials to be still searching when the signal comes
    "tune": {"metric": "valid.accuracy", "num_samples": 5000, "seed": 0,
             "space": {"model.params.strategy": {"choice": ["prior", "stratified"]}}},
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
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
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
        [sys.executable, "-m", "distml", "run", str(spec_path), "--output", str(out),
         "--run-id", "r1", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
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
        [sys.executable, "-m", "distml", "run", "jobs/quickstart.yaml", "--output", str(tmp_path),
         "--set", "model.num_boost_round=5", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group_alive(proc.pid) == []
