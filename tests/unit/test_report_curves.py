"""The report's numpy ROC / precision-recall curves equal scikit-learn's (distml/report/_curves.py
exists so the driver need not import scikit-learn to draw them)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from distml.report import _curves


@pytest.mark.parametrize("seed", range(12))
def test_curves_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    y = rng.random(n) < rng.uniform(0.05, 0.95)
    y[0], y[-1] = True, False  # both classes
    score = rng.random(n)
    if seed % 3 == 0:  # many ties, as rounded probabilities give
        score = np.round(score, 1)
    if seed % 4 == 1:
        score = np.where(y, score + 0.5, score)  # well separated

    fpr, tpr = _curves.roc(y, score)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, score)
    np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-12)
    assert _curves.auc(fpr, tpr) == pytest.approx(skm.auc(sk_fpr, sk_tpr), abs=1e-12)
    assert _curves.auc(fpr, tpr) == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)

    prec, rec = _curves.precision_recall(y, score)
    sk_prec, sk_rec, _ = skm.precision_recall_curve(y, score)
    np.testing.assert_allclose(prec, sk_prec, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rec, sk_rec, rtol=0, atol=1e-12)
    assert _curves.average_precision(y, score) == pytest.approx(
        skm.average_precision_score(y, score), abs=1e-12
    )
