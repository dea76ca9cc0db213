"""The store of the best trial's output (distml.tune.kept): only the best is kept, its output
comes back exactly as the trial built it, and the driver falls back to a refit when the best
trial's output is not there."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from distml.jobs.base import JobOutput
from distml.tune.kept import KeptStore
from distml.tune.runner import _best_output
from distml.tune.table import TrialRecord


def _output(value: float) -> JobOutput:
    return JobOutput(
        metrics={"valid": {"logloss": value, "auc": np.float64(0.1) + value}, "n_rows": 10},
        tables={"predictions": pd.DataFrame({"row": np.arange(3), "p": [0.1, 1 / 3, value]})},
        files={"model/model.ubj": bytes(range(256)), "model/schema.json": b"{}"},
        info={"task": "classification", "rows": {"train": np.int64(7)}},
    )


def test_only_the_best_output_is_kept_and_it_comes_back_exactly(tmp_path):
    store = KeptStore(tmp_path / "kept", "min")
    built = []

    def offer(trial, value):
        return store.offer(trial, value, lambda: built.append(trial) or _output(value))

    def kept_folders():
        return sorted(p.name for p in (tmp_path / "kept").iterdir() if p.is_dir())

    assert offer("trial_0004", 0.5) and offer("trial_0003", 0.25)
    assert not offer("trial_0000", 0.3) and not offer("trial_0001", math.nan)
    assert built == ["trial_0004", "trial_0003"]  # an output is built only when it is kept
    assert store.best() == {"trial": "trial_0003", "folder": "trial_0003", "value": 0.25}
    assert kept_folders() == ["trial_0003"]  # the output replaced is deleted
    assert store.load("trial_0004") is None
    out = store.load("trial_0003")
    want = _output(0.25)
    assert out.metrics == {"valid": {"logloss": 0.25, "auc": 0.1 + 0.25}, "n_rows": 10}
    assert out.files == want.files and out.info["rows"] == {"train": 7}
    pd.testing.assert_frame_equal(out.tables["predictions"], want.tables["predictions"])
    # ties go to the earlier trial, as the driver's choice of the best does
    assert not offer("trial_0005", 0.25)
    assert offer("trial_0002", 0.25) and kept_folders() == ["trial_0002"]
    # a retried attempt of the kept trial replaces its own output, whatever its value
    assert offer("trial_0002", 0.26) and store.value_of("trial_0002") == 0.26
    assert KeptStore(tmp_path / "max", "max").offer("x", 0.5, lambda: _output(0.5))
    assert not KeptStore(tmp_path / "max", "max").offer("y", 0.4, lambda: _output(0.4))


def _record(index, value, *, final=True) -> TrialRecord:
    metrics = {"objective": value, "final": final, "iteration": 7}
    return TrialRecord(index, {"model.params.eta": 0.1}, metrics)


def test_the_driver_uses_the_kept_output_only_when_it_is_the_best_trials(tmp_path):
    store = KeptStore(tmp_path, "min")
    store.offer("trial_0002", 0.2, lambda: _output(0.2))
    out, model = _best_output(_record(2, 0.2), store)
    assert model == {"from": "best_trial", "trial": "trial_0002", "reason": None}
    assert out.metrics["valid"]["logloss"] == 0.2
    # another trial is the best (its output was kept on another node's disk): refit
    out, model = _best_output(_record(1, 0.2), store)
    assert out is None and model["from"] == "refit" and "no output of trial_0001" in model["reason"]
    # the best trial was stopped by the scheduler: no model was kept at that iteration
    out, model = _best_output(_record(2, 0.2, final=False), store)
    assert out is None and "stopped by the scheduler at iteration 7" in model["reason"]
    # what was kept is not what the trial finally reported (an earlier attempt)
    out, model = _best_output(_record(2, 0.19), store)
    assert out is None and "0.2" in model["reason"]


def test_a_kept_output_naming_files_outside_its_folder_is_refused(tmp_path):
    import json

    store = KeptStore(tmp_path, "min")
    store.offer("trial_0000", 0.2, lambda: _output(0.2))
    head = tmp_path / "trial_0000" / "output.json"
    data = json.loads(head.read_text())
    data["files"] = ["../../etc/passwd"]
    head.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="outside its folder"):
        store.load("trial_0000")
