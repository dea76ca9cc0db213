"""A stop (SIGTERM's KeyboardInterrupt) at any step of a run after its first ``running``
manifest is recorded: the manifest says ``interrupted``, never ``running``, and there is no
``_SUCCESS``. The steps between the job's own handler and the manifest writes are the narrow
windows a batch platform's SIGTERM can land in; each is forced here, no cluster needed."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest

import distml
import distml.api as api
from distml.jobs.base import JobOutput
from distml.runtime.artifacts import RunDir

SPEC = {
    "name": "stopped",
    "kind": "sklearn",
    "data": {"source": "builtin:iris", "target": "target", "split": {"valid": 0.3}},
    "model": {"estimator": "sklearn.dummy.DummyClassifier"},
}


def _stop(*_a, **_k):
    raise KeyboardInterrupt("terminated by signal 15 (SIGTERM)")


_write_json = RunDir.write_json


def write_then_stop(self, rel, obj):
    """RunDir.write_json, then the stop, right after the first ``running`` manifest."""
    path = _write_json(self, rel, obj)
    if rel == "manifest.json" and obj.get("status") == "running":
        _stop()
    return path


@pytest.mark.parametrize("step", ["after_running_manifest", "log_opening", "mark_success"])
def test_a_stop_between_steps_is_recorded_interrupted(tmp_path, monkeypatch, step):
    if step == "after_running_manifest":  # the signal lands right after the first write
        monkeypatch.setattr(RunDir, "write_json", write_then_stop)
    elif step == "log_opening":

        @contextmanager
        def stopped_log(run_dir):
            _stop()
            yield

        monkeypatch.setattr(api, "_run_log", stopped_log)
    else:  # the job succeeded; the stop comes while the digests are written
        monkeypatch.setattr(api, "_execute", lambda *a, **k: JobOutput(metrics={"m": 1.0}))
        monkeypatch.setattr(api, "_report", lambda *a, **k: {})
        monkeypatch.setattr(RunDir, "mark_success", _stop)
    with pytest.raises(KeyboardInterrupt):
        distml.run(SPEC, output=str(tmp_path), run_id="r1")
    run_dir = tmp_path / "stopped" / "r1"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted", manifest
    assert manifest["error"]["message"] == "terminated by signal 15 (SIGTERM)"
    assert not (run_dir / "_SUCCESS").exists()


_STOP_AFTER_MANIFEST = """
import sys
import distml
from distml.runtime.artifacts import RunDir
from tests.unit.test_run_interrupts import SPEC, write_then_stop

RunDir.write_json = write_then_stop
try:
    distml.run(SPEC, output=sys.argv[1], run_id="r1")
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_stop_before_run_log_prints_no_traceback(tmp_path):
    """Before run.log opens there is nowhere for the traceback to go: it goes nowhere, not to
    Python's last-resort stderr handler (the console says one line, the CLI's). A fresh process,
    since pytest's own log handlers would hide the difference."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", _STOP_AFTER_MANIFEST, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip() == "interrupted", proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "traceback" not in proc.stderr, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "stopped" / "r1" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"


@pytest.mark.parametrize("gc_on", [True, False])
def test_the_cluster_stops_beside_the_report_and_before_success(tmp_path, monkeypatch, gc_on):
    """Ray's stop runs in a thread of its own while the outputs and report.html are written
    (the two overlap), and it has ended before ``_SUCCESS``; its seconds are in the timings.
    No automatic garbage collection runs while it stops (one freeing a cycle's Ray object
    ref in the writing thread while Ray's core worker shut down ended the process: exit 1,
    the run left ``running``); the collector is as it was once the stop is over."""
    import gc
    import threading
    import time

    import distml.jobs.sklearn as sk
    import distml.runtime.cluster as rc

    seen: dict = {}

    @contextmanager
    def slow_stopping_cluster(address=None, **_):
        yield rc.ClusterInfo("existing", None, None, {"CPU": 1.0})
        seen["gc_during_stop"] = gc.isenabled()
        seen["stop_thread"] = threading.current_thread().name
        seen["stop_began"] = time.monotonic()
        time.sleep(1.0)
        seen["stop_ended"] = time.monotonic()

    real_build = api.build_report

    def build(run_dir, manifest=None):
        seen["report_began"] = time.monotonic()
        seen["gc_during_report"] = gc.isenabled()
        return real_build(run_dir, manifest)

    real_success = RunDir.mark_success

    def success(self, manifest):
        seen["success_at"] = time.monotonic()
        return real_success(self, manifest)

    monkeypatch.setattr(rc, "cluster", slow_stopping_cluster)
    monkeypatch.setattr(sk.Job, "run", lambda self, ctx: JobOutput(metrics={"m": 1.0}))
    monkeypatch.setattr(api, "build_report", build)
    monkeypatch.setattr(RunDir, "mark_success", success)
    was = gc.isenabled()
    (gc.enable if gc_on else gc.disable)()
    try:
        result = distml.run(SPEC, output=str(tmp_path), run_id="r1")
        assert gc.isenabled() is gc_on  # as before the run
    finally:
        (gc.enable if was else gc.disable)()
    assert seen["gc_during_stop"] is False and seen["gc_during_report"] is False
    assert seen["stop_thread"] == "distml-cluster-stop"
    assert seen["report_began"] < seen["stop_ended"] <= seen["success_at"]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["timings"]["cluster_stop_s"] >= 1.0


def test_the_collector_stays_off_until_every_overlapping_stop_is_over(monkeypatch):
    """Two cluster stops at once: automatic collection comes back when the last one ends (not
    the first), as it was before; a stop whose thread cannot start gives it back at once."""
    import gc
    import threading
    from contextlib import ExitStack

    import distml.runtime.cluster as rc

    was = gc.isenabled()
    gc.enable()
    try:
        gates = [threading.Event(), threading.Event()]
        stops = []
        for gate in gates:
            stack = ExitStack()
            stack.callback(gate.wait, 10)
            stops.append(rc.Stopping(stack))
        assert not gc.isenabled()
        gates[0].set()
        stops[0].join()
        assert not gc.isenabled()  # the second is still stopping
        gates[1].set()
        stops[1].join()
        assert gc.isenabled()

        def no_thread(self):
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(threading.Thread, "start", no_thread)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            rc.Stopping(ExitStack())
        assert gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()
