"""Single-task xgboost scores the rows it trained and evaluated on with the matrices its fit
built (no frame copy, no second DMatrix), with the same metrics and predictions as matrices
built again from the rows, and builds a matrix only for rows its fit did not see."""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest

from distml.jobs._supervised import prepare
from distml.jobs.xgboost import _FIT_MATRICES
from distml.registry import kind_module
from distml.runtime.data import split_indices
from distml.spec import load_spec

SPEC = {
    "name": "xgb-score",
    "kind": "xgboost",
    "data": {
        "source": "builtin:breast_cancer",
        "target": "target",
        "split": {"valid": 0.2, "test": 0.2, "stratify": True, "seed": 42},
    },
    "model": {
        "params": {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3},
        "num_boost_round": 40,
        "early_stopping_rounds": 5,
    },
}


class _Rebuilding:
    """The same job scoring as it did before: a frame of the rows, a new DMatrix."""

    def predict_rows(self, model, prep, rows):
        return self.predict(model, prep, prep.X.iloc[rows])


def _jobs(spec: dict):
    Job = kind_module("xgboost").Job
    plain = Job(load_spec(spec))
    rebuilding = type("RebuildingJob", (_Rebuilding, Job), {})(load_spec(spec))
    return plain, rebuilding


@pytest.fixture
def built(monkeypatch):
    """Counts the DMatrix objects built, by how many rows they hold."""
    import xgboost as xgb

    sizes: list[int] = []
    real = xgb.DMatrix

    class Counting(real):
        def __init__(self, data, *a, **kw):
            sizes.append(len(data))
            super().__init__(data, *a, **kw)

    monkeypatch.setattr(xgb, "DMatrix", Counting)
    return sizes


def test_a_single_task_scores_its_train_and_valid_rows_on_its_fits_matrices(built):
    job, rebuilding = _jobs(SPEC)
    info = job.check_data()
    prep = prepare(job.spec, info, job.task())
    parts = split_indices(prep.y, job.spec.data.split_spec, classification=True)
    out = job.fit_and_evaluate(info, prep)
    # train and valid by the fit, the test split's rows for scoring: nothing else
    assert sorted(built) == sorted(len(parts[k]) for k in ("train", "valid", "test"))
    gc.collect()
    assert len(_FIT_MATRICES) == 0  # none held once the booster is gone

    built.clear()
    again = rebuilding.fit_and_evaluate(info, prep)
    assert sorted(built) == sorted(
        [len(parts["train"]), len(parts["valid"])] + [len(parts[k]) for k in parts]
    )
    assert out.metrics == again.metrics and out.metrics["best_iteration"] < 39
    for name in ("predictions", "confusion_matrix"):
        pd.testing.assert_frame_equal(out.tables[name], again.tables[name], check_exact=True)


def test_other_rows_or_another_preparation_get_a_matrix_of_their_own(built):
    job, _ = _jobs(SPEC)
    info = job.check_data()
    prep = prepare(job.spec, info, job.task())
    parts = split_indices(prep.y, job.spec.data.split_spec, classification=True)
    model, _, _ = job.fit(prep, parts["train"], parts["valid"])
    fresh = job.predict(model, prep, prep.X.iloc[parts["valid"]])
    other = prepare(job.spec, info, job.task())
    built.clear()
    for p, rows in ((prep, parts["valid"].copy()), (other, parts["valid"])):
        pred, proba = job.predict_rows(model, p, rows)
        np.testing.assert_array_equal(pred, fresh[0])
        np.testing.assert_array_equal(proba, fresh[1])
    assert built == [len(parts["valid"])] * 2 and len(_FIT_MATRICES[model]) == 2
    pred, proba = job.predict_rows(model, prep, parts["valid"])  # the fit's own: no new matrix
    np.testing.assert_array_equal(proba, fresh[1])
    assert len(built) == 2 and [rows for _, rows, _ in _FIT_MATRICES[model]] == [parts["train"]]
    second, _, _ = job.fit(prep, parts["train"], None)  # each booster has its own
    assert [rows for _, rows, _ in _FIT_MATRICES[second]] == [parts["train"]]
    assert len(_FIT_MATRICES[model]) == 1
    del model, second
    gc.collect()
    assert len(_FIT_MATRICES) == 0


def test_cross_validation_folds_score_on_their_fits_matrices(built):
    spec = {**SPEC, "data": {**SPEC["data"], "split": {"cv": 3, "test": 0.2, "seed": 1}}}
    spec["model"] = {**SPEC["model"], "early_stopping_rounds": None}
    job, rebuilding = _jobs(spec)
    info = job.check_data()
    prep = prepare(job.spec, info, job.task())
    for fold in range(3):
        built.clear()
        metrics = job.fold_metrics(prep, fold)
        assert len(built) == 2  # the fold's train and valid matrices, scored on the second
        built.clear()
        assert metrics == rebuilding.fold_metrics(prep, fold) and len(built) == 3
