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


@pytest.mark.parametrize("step", ["after_running_manifest", "log_opening", "mark_success"])
def test_a_stop_between_steps_is_recorded_interrupted(tmp_path, monkeypatch, step):
    if step == "after_running_manifest":  # the signal lands right after the first write
        real = RunDir.write_json

        def write_then_stop(self, rel, obj):
            path = real(self, rel, obj)
            if rel == "manifest.json" and obj.get("status") == "running":
                _stop()
            return path

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
