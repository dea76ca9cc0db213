"""Evaluation metrics by task; names are the plain lower-case words of the contract."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy: imported where used, so `distml validate` stays light
    import numpy as np


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def classification_metrics(
    y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None, n_classes: int
) -> dict[str, float | None]:
    """accuracy, precision, recall, f1 (binary: positive class; multiclass: macro), roc_auc
    (binary, or one-vs-rest macro), logloss; ``y`` and ``pred`` are class codes 0..k-1.

    The figures are scikit-learn's, computed from one confusion matrix and one sort per class
    (:func:`_codes_metrics`: scikit-learn's checks cost seconds at millions of rows); the cases
    where scikit-learn warns or refuses (a class never true or never predicted, scores that are
    not probabilities) go through scikit-learn itself."""
    fast = _codes_metrics(y, pred, proba, n_classes)
    if fast is not None:
        return _clean(fast)
    return _clean(_sklearn_classification(y, pred, proba, n_classes))


def _sklearn_classification(y, pred, proba, n_classes: int) -> dict[str, float | None]:
    import numpy as np
    from sklearn import metrics as skm

    labels = list(range(n_classes))
    average = "binary" if n_classes == 2 else "macro"
    out: dict[str, float | None] = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(
            skm.precision_score(y, pred, labels=labels, average=average, zero_division=0)
        ),
        "recall": float(skm.recall_score(y, pred, labels=labels, average=average, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, labels=labels, average=average, zero_division=0)),
    }
    if proba is not None:
        try:
            if n_classes == 2:
                out["roc_auc"] = float(skm.roc_auc_score(y, proba[:, 1]))
            else:
                out["roc_auc"] = float(
                    skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels)
                )
        except ValueError:  # a split holding one class only
            out["roc_auc"] = None
        out["logloss"] = float(skm.log_loss(y, np.clip(proba, 1e-15, 1), labels=labels))
    return out


def _codes_metrics(y, pred, proba, k: int) -> dict[str, float] | None:
    """scikit-learn's classification figures by its own arithmetic (the same confusion counts
    and divisions, the same ROC points and trapezoids, the same clipped log loss in the
    scores' dtype), or None where an edge case must go through scikit-learn."""
    import numpy as np

    y, pred = np.asarray(y), np.asarray(pred)
    if k < 2 or y.ndim != 1 or len(y) == 0 or y.shape != pred.shape:
        return None
    if y.dtype.kind not in "iu" or pred.dtype.kind not in "iu":
        return None
    if min(y.min(), pred.min()) < 0 or max(y.max(), pred.max()) >= k:
        return None
    if proba is not None:
        proba = np.asarray(proba)
        if (
            proba.shape != (len(y), k)
            or proba.dtype.kind != "f"
            or not np.isfinite(proba).all()
            or proba.min() < 0
            or proba.max() > 1
            or not np.allclose(1, proba.sum(axis=1))
        ):
            return None
    cm = np.bincount(y.astype(np.int64) * k + pred.astype(np.int64), minlength=k * k).reshape(k, k)
    tp, pred_sum, true_sum = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    if (pred_sum == 0).any() or (true_sum == 0).any():
        return None  # zero divisions and one-class ROC curves: scikit-learn's own rules
    precision, recall = tp / pred_sum, tp / true_sum
    f1 = 2.0 * tp / (true_sum.astype(np.float64) + pred_sum.astype(np.float64))
    pick = (lambda v: float(v[1])) if k == 2 else (lambda v: float(np.mean(v)))
    out: dict[str, float] = {
        "accuracy": float(np.mean(y == pred)),
        "precision": pick(precision),
        "recall": pick(recall),
        "f1": pick(f1),
    }
    if proba is not None:
        aucs = [_binary_auc(y == j, proba[:, j]) for j in ([1] if k == 2 else range(k))]
        out["roc_auc"] = float(aucs[0]) if k == 2 else float(np.mean(aucs))
        clipped = np.clip(np.clip(proba, 1e-15, 1), *_eps_range(proba.dtype))
        out["logloss"] = float(np.mean(-np.log(clipped[np.arange(len(y)), y])))
    return out


def _eps_range(dtype) -> tuple:
    import numpy as np

    eps = np.finfo(dtype).eps
    return eps, 1 - eps


def _binary_auc(positive, score) -> float:
    """Area under scikit-learn's ROC curve (``roc_curve(drop_intermediate=True)``, then
    ``auc``): stable descending sort, one point per distinct score, collinear points dropped."""
    import numpy as np

    order = np.argsort(score, kind="mergesort")[::-1]
    score, positive = score[order], positive[order]
    last = np.r_[np.where(np.diff(score))[0], positive.size - 1]
    tps = np.cumsum(positive, dtype=np.float64)[last]
    fps = 1 + last - tps
    if fps.shape[0] > 2:
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps = fps[keep], tps[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    return float(np.trapezoid(tps / tps[-1], fps / fps[-1]))


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    """rmse, mae, r2: scikit-learn's figures by its own arithmetic on one column (its checks
    cost more than the sums at millions of rows); scikit-learn itself where the target is
    constant or the values are not finite."""
    import numpy as np

    y_col, p_col = np.asarray(y), np.asarray(pred)
    # scikit-learn computes in the type of the floating inputs alone (float64 when none is)
    floats = [a.dtype for a in (y_col, p_col) if a.dtype.kind == "f"]
    as_double = (np.result_type(*floats) if floats else np.dtype(np.float64)) == np.float64
    y_col = y_col.astype(np.float64).reshape(-1, 1)
    p_col = p_col.astype(np.float64).reshape(-1, 1)
    n = len(y_col)
    if (
        as_double  # scikit-learn computes float32 pairs in float32
        and n > 1
        and n == len(p_col)
        and np.isfinite(y_col).all()
        and np.isfinite(p_col).all()
    ):
        residual = ((y_col - p_col) ** 2).sum(axis=0)
        total = ((y_col - np.average(y_col, axis=0)) ** 2).sum(axis=0)
        if total[0] != 0:
            return _clean(
                {
                    "rmse": float(math.sqrt(np.average(np.average((y_col - p_col) ** 2, axis=0)))),
                    "mae": float(np.average(np.average(np.abs(p_col - y_col), axis=0))),
                    "r2": float(np.average(1 - residual / total)),
                }
            )
    from sklearn import metrics as skm

    return _clean(
        {
            "rmse": float(math.sqrt(skm.mean_squared_error(y, pred))),
            "mae": float(skm.mean_absolute_error(y, pred)),
            "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else float("nan"),
        }
    )


def confusion_rows(split: str, y: np.ndarray, pred: np.ndarray, classes: list) -> list[dict]:
    """Long-form confusion matrix rows: split, actual, predicted, count."""
    import numpy as np

    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y.astype(int), pred.astype(int)), 1)
    return [
        {
            "split": split,
            "actual": str(classes[i]),
            "predicted": str(classes[j]),
            "count": int(cm[i, j]),
        }
        for i in range(k)
        for j in range(k)
    ]


# Per-fold bookkeeping fields: numbers, but not metrics (a mean fold index of 2±1.6 means nothing).
FOLD_ID_KEYS = frozenset({"fold"})


def summarize_folds(folds: list[dict]) -> dict:
    """Per-fold metric dicts → {"folds": [...], "mean": {...}, "std": {...}}.

    Only numeric metrics are aggregated; the fold index (and booleans) stay in ``folds``.
    """
    import numpy as np

    keys = [
        k
        for k in folds[0]
        if k not in FOLD_ID_KEYS
        and all(
            isinstance(f.get(k), (int, float)) and not isinstance(f.get(k), bool) for f in folds
        )
    ]
    mean = {k: float(np.mean([f[k] for f in folds])) for k in keys}
    std = {k: float(np.std([f[k] for f in folds], ddof=1)) if len(folds) > 1 else 0.0 for k in keys}
    return {"folds": folds, "mean": mean, "std": std}
