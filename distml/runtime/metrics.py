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
    (binary, or one-vs-rest macro), logloss; ``y`` and ``pred`` are class codes 0..k-1."""
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
    return _clean(out)


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    """rmse, mae, r2."""
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
