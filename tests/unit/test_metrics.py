"""Unit tests for distml.runtime.metrics helpers."""

from __future__ import annotations

import math
import warnings

import numpy as np
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


# ------------------------------------------------------------------ scikit-learn's figures


def _sklearn(y, pred, proba, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return M._clean(M._sklearn_classification(y, pred, proba, k))


def _cases():
    """(y, pred, proba, k): binary and multiclass, float32 and float64 scores, ties, scores at
    0 and 1, imbalanced classes, and sizes from 7 rows to a million."""
    rng = np.random.default_rng(7)
    for n, k, dtype, ties in [
        (7, 2, np.float64, False),
        (500, 2, np.float32, True),
        (1000, 3, np.float64, False),
        (2000, 5, np.float32, True),
        (1_000_000, 2, np.float32, False),
        (300_000, 4, np.float64, True),
    ]:
        y = rng.integers(0, k, n)
        y[:k] = np.arange(k)  # every class true at least once
        logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
        if ties:
            logits = np.round(logits, 1)
        proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        proba = proba.astype(dtype)
        if ties:
            proba[: n // 10] = np.eye(k, dtype=dtype)[y[: n // 10]]  # exact 0s and 1s
        pred = proba.argmax(axis=1).astype(np.int64)
        pred[:k] = np.arange(k)  # every class predicted at least once
        yield y, pred, proba, k


@pytest.mark.parametrize("case", list(range(6)))
def test_classification_metrics_are_scikit_learns_to_the_last_bit(case):
    y, pred, proba, k = list(_cases())[case]
    assert M._codes_metrics(y, pred, proba, k) is not None  # the fast path ran
    assert M.classification_metrics(y, pred, proba, k) == _sklearn(y, pred, proba, k)
    assert M.classification_metrics(y, pred, None, k) == _sklearn(y, pred, None, k)
    unsigned = (y.astype(np.uint64), pred.astype(np.uint64))  # other integer codes
    assert M.classification_metrics(*unsigned, proba, k) == _sklearn(y, pred, proba, k)


@pytest.mark.parametrize(
    "edit",
    ["class never predicted", "class never true", "one class only", "not probabilities", "nan"],
)
def test_classification_edge_cases_go_through_scikit_learn(edit):
    y, pred, proba, k = list(_cases())[2]
    y, pred, proba = y.copy(), pred.copy(), proba.copy()
    if edit == "class never predicted":
        pred[pred == 2] = 0
    elif edit == "class never true":
        y[y == 1] = 0
    elif edit == "one class only":
        y[:], pred[:] = 0, 0
    elif edit == "not probabilities":
        proba = proba * 0.5
    else:
        proba[3, 1] = np.nan
    assert M._codes_metrics(y, pred, proba, k) is None
    if edit != "nan":
        assert M.classification_metrics(y, pred, proba, k) == _sklearn(y, pred, proba, k)
    else:
        with pytest.raises(ValueError):  # scikit-learn refuses NaN scores, as before
            M.classification_metrics(y, pred, proba, k)


def test_one_class_binary_split_has_no_auc():
    y = np.zeros(50, dtype=np.int64)
    pred = np.r_[np.zeros(40), np.ones(10)].astype(np.int64)
    proba = np.column_stack([np.full(50, 0.7), np.full(50, 0.3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert M.classification_metrics(y, pred, proba, 2)["roc_auc"] is None


@pytest.mark.parametrize(
    "y_dtype,p_dtype,n",
    [
        (np.float64, np.float64, 10),
        (np.int64, np.float64, 2_000_000),
        (np.float64, np.float32, 1000),
        (np.int64, np.float32, 1000),  # scikit-learn: the floating input's float32
        (np.int64, np.int64, 1000),
    ],
)
def test_regression_metrics_are_scikit_learns_to_the_last_bit(y_dtype, p_dtype, n):
    from sklearn import metrics as skm

    rng = np.random.default_rng(3)
    y = (rng.normal(size=n) * 100).astype(y_dtype)
    pred = (y + rng.normal(size=n) * 30).astype(p_dtype)
    got = M.regression_metrics(y, pred)
    assert got == {
        "rmse": math.sqrt(skm.mean_squared_error(y, pred)),
        "mae": skm.mean_absolute_error(y, pred),
        "r2": skm.r2_score(y, pred),
    }


@pytest.mark.parametrize("edit", ["constant target", "float32 pair", "one row"])
def test_regression_edge_cases_are_scikit_learns(edit):
    from sklearn import metrics as skm

    y, pred = np.array([1.0, 2.0, 4.0]), np.array([1.5, 2.0, 3.0])
    if edit == "constant target":
        y = np.ones(3)
    elif edit == "float32 pair":
        y, pred = y.astype(np.float32), pred.astype(np.float32)
    else:
        y, pred = y[:1], pred[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = M.regression_metrics(y, pred)
        r2 = skm.r2_score(y, pred) if len(y) > 1 else float("nan")
    assert got["rmse"] == math.sqrt(skm.mean_squared_error(y, pred))
    assert got["mae"] == skm.mean_absolute_error(y, pred)
    assert got["r2"] == (r2 if math.isfinite(r2) else None)
