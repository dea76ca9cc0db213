"""Unit tests for distml.runtime.metrics helpers."""

from __future__ import annotations

import pytest

from distml.runtime import metrics as M


def test_summarize_folds_does_not_average_the_fold_index():
    # The CV path tags each fold dict with its index; that index is not a metric
    # (issue 18 #11: the summary showed ``fold=2±1.6`` and tracking logged ``cv.mean.fold``).
    folds = [
        {"accuracy": a, "fold": i, "early_stopped": True}
        for i, a in enumerate([0.9, 0.8, 1.0, 0.7, 0.85])
    ]
    s = M.summarize_folds(folds)
    assert set(s["mean"]) == {"accuracy"}
    assert set(s["std"]) == {"accuracy"}
    assert s["mean"]["accuracy"] == pytest.approx(0.85)
    # the per-fold records keep their index for the report table
    assert [f["fold"] for f in s["folds"]] == [0, 1, 2, 3, 4]


def test_summarize_folds_single_fold_std_is_zero():
    s = M.summarize_folds([{"rmse": 1.5, "fold": 0}])
    assert s["mean"] == {"rmse": 1.5} and s["std"] == {"rmse": 0.0}
