"""ROC and precision-recall curves of a binary score, as scikit-learn computes them
(``roc_curve`` with ``drop_intermediate=True``, ``auc``, ``precision_recall_curve``,
``average_precision_score``), in numpy alone: the report of a run is drawn in the driver,
which otherwise never imports scikit-learn (its import is 1.5–2 s of CPU on the 2-core
machines; issue 14). tests/unit/test_report_curves.py compares them with scikit-learn's."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def _counts_at_thresholds(y, score) -> tuple[np.ndarray, np.ndarray]:
    """False and true positives with the threshold at each distinct score, highest first."""
    import numpy as np

    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="stable")
    score, y = score[order], y[order].astype(np.float64)
    ends = np.r_[np.flatnonzero(np.diff(score)), y.size - 1]
    tps = np.cumsum(y)[ends]
    fps = 1 + ends.astype(np.float64) - tps
    return fps, tps


def roc(y, score) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate); ``y`` true for the positive class, with
    both classes present."""
    import numpy as np

    fps, tps = _counts_at_thresholds(y, score)
    if fps.shape[0] > 2:  # drop the points on straight segments, as scikit-learn does
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1]


def auc(x, y) -> float:
    """Area under a monotone curve by the trapezoidal rule."""
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    direction = -1.0 if np.all(np.diff(x) <= 0) and np.any(np.diff(x) < 0) else 1.0
    return float(direction * np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def precision_recall(y, score) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall), recall decreasing, ending at (1, 0)."""
    import numpy as np

    fps, tps = _counts_at_thresholds(y, score)
    ps = tps + fps
    precision = np.where(ps != 0, tps / np.where(ps != 0, ps, 1.0), 0.0)
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def average_precision(y, score) -> float:
    """Average precision: the step integral of the precision-recall curve."""
    import numpy as np

    precision, recall = precision_recall(y, score)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))
