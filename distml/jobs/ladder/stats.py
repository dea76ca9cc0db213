"""The statistics of a ladder: fold-paired differences, the Nadeau–Bengio corrected resampled
t-test, Holm's adjustment, and the promotion rule. Pure numpy/scipy (no Ray, no pandas).

For k-fold cross-validation the k per-fold differences ``d_j`` (candidate − incumbent, signed
so that positive means better) are not independent: every pair of folds shares most of its
training rows. Nadeau & Bengio (2003, *Inference for the Generalization Error*) correct the
variance of their mean by replacing ``1/k`` with ``1/k + n_test/n_train``::

    se = sqrt((1/k + n_test/n_train) * s²)      s² = sample variance of d (ddof=1)
    t  = (mean(d) - min_gain) / se              df = k - 1

The one-sided p-value tests H0: the true mean gain is at most ``min_gain``, against H1: it is
larger. The confidence interval of the mean difference uses the same corrected standard error
and the t quantile with k − 1 degrees of freedom.

>>> r = corrected_ttest([0.02, 0.03, 0.01, 0.04, 0.02], n_train=400, n_test=100)
>>> round(r.mean, 3), r.df
(0.024, 4)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: metrics where larger is better / smaller is better (the names of distml.runtime.metrics)
MAXIMIZE = ("accuracy", "precision", "recall", "f1", "roc_auc", "r2")
MINIMIZE = ("logloss", "rmse", "mae")
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "logloss")
REGRESSION_METRICS = ("rmse", "mae", "r2")


def metric_mode(metric: str) -> str:
    """``max`` or ``min`` for a metric name (ValueError listing the valid names otherwise).

    >>> metric_mode("logloss")
    'min'
    """
    if metric in MAXIMIZE:
        return "max"
    if metric in MINIMIZE:
        return "min"
    raise ValueError(
        f"unknown metric {metric!r}; valid metrics: "
        f"{', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)}"
    )


def paired_differences(
    candidate: Sequence[float], incumbent: Sequence[float], mode: str
) -> np.ndarray:
    """Per-fold ``candidate - incumbent`` for ``max`` metrics, ``incumbent - candidate`` for
    ``min`` metrics: positive always means the candidate is better."""
    c = np.asarray(candidate, dtype=np.float64)
    i = np.asarray(incumbent, dtype=np.float64)
    if c.shape != i.shape or c.ndim != 1:
        raise ValueError(
            f"fold scores must be two vectors of one length; got {c.shape} and {i.shape}"
        )
    return c - i if mode == "max" else i - c


@dataclass
class TTest:
    """The corrected resampled t-test of one paired comparison."""

    mean: float  # mean per-fold difference (positive: the candidate is better)
    std: float  # sample standard deviation of the differences (ddof=1)
    se: float  # corrected standard error of the mean
    t: float  # (mean - min_gain) / se
    df: int  # k - 1
    p_value: float  # one-sided, H0: true mean gain <= min_gain
    ci_low: float  # two-sided (1 - alpha) interval of the mean difference
    ci_high: float
    k: int
    correction: float  # 1/k + n_test/n_train


def corrected_ttest(
    d: Sequence[float], n_train: float, n_test: float, *, min_gain: float = 0.0, alpha: float = 0.05
) -> TTest:
    """Nadeau–Bengio corrected resampled t-test of per-fold differences ``d`` (module doc).

    ``n_train``/``n_test``: rows a fold trains on / is scored on (their means over the folds).
    A zero variance gives t = ±inf (p 0 or 1) when the mean differs from ``min_gain`` and
    p = 1 when it equals it: identical scores on every fold are no evidence of a gain.
    """
    from scipy import stats

    d = np.asarray(d, dtype=np.float64)
    k = int(d.size)
    if k < 2:
        raise ValueError(f"the corrected t-test needs at least 2 folds; got {k}")
    if not (n_train > 0 and n_test > 0):
        raise ValueError(f"n_train and n_test must be > 0; got {n_train} and {n_test}")
    if not np.all(np.isfinite(d)):
        raise ValueError("fold differences must be finite numbers")
    mean = float(d.mean())
    std = float(d.std(ddof=1))
    correction = 1.0 / k + float(n_test) / float(n_train)
    se = math.sqrt(correction) * std
    df = k - 1
    excess = mean - min_gain
    if se > 0:
        t = excess / se
        p = float(stats.t.sf(t, df))
    elif excess > 0:
        t, p = math.inf, 0.0
    elif excess < 0:
        t, p = -math.inf, 1.0
    else:
        t, p = 0.0, 1.0
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return TTest(mean, std, se, t, df, p, mean - half, mean + half, k, correction)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control), in input order.

    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
    out = np.empty(m)
    out[order] = adjusted
    return out


@dataclass
class Rung:
    """The decision on one candidate of a ladder."""

    name: str
    mean: float | None  # mean fold score
    std: float | None  # std of the fold scores (ddof=1)
    incumbent: str | None  # the rung it was compared with (None: the base rung, or failed)
    test: TTest | None
    p_adjusted: float | None
    promoted: bool
    reason: str


def decide(
    names: Sequence[str],
    scores: Sequence[Sequence[float] | None],
    mode: str,
    *,
    n_train: float,
    n_test: float,
    alpha: float,
    min_gain: float,
) -> tuple[list[Rung], str, str]:
    """Climb the ladder: the first rung that has scores is the incumbent; each later rung is
    compared with the incumbent the rungs below it leave, and replaces it when it is promoted.

    A rung is promoted when the Holm-adjusted one-sided p-value of "its true mean gain over
    the incumbent exceeds ``min_gain``" is below ``alpha`` (which needs a mean gain above
    ``min_gain``). The family is every comparison made. As the comparisons depend on the
    decisions (a promotion changes the incumbent of the rungs above), the decisions are solved
    as a fixed point: decide with the adjusted p-values of the comparisons the current
    decisions imply, until nothing changes (in practice one or two rounds). If the decisions
    were ever to cycle, each comparison is held to ``alpha / m`` (Bonferroni; never more
    lenient than Holm) in one pass instead. ``scores[i]`` None means rung i failed.

    Returns (rungs, winner name, adjustment used: "holm" or "bonferroni").
    """
    ok = [i for i, s in enumerate(scores) if s is not None]
    if not ok:
        raise ValueError("every rung failed; there is nothing to compare")
    base = ok[0]
    compared = ok[1:]
    m = len(compared)

    def comparisons(promoted: set[int]) -> dict[int, tuple[int, TTest]]:
        out, inc = {}, base
        for i in compared:
            d = paired_differences(scores[i], scores[inc], mode)
            out[i] = (inc, corrected_ttest(d, n_train, n_test, min_gain=min_gain, alpha=alpha))
            if i in promoted:
                inc = i
        return out

    def decisions(comps: dict[int, tuple[int, TTest]], adjusted: dict[int, float]) -> set[int]:
        return {i for i in compared if adjusted[i] < alpha and comps[i][1].mean > min_gain}

    promoted: set[int] = set()
    adjustment = "holm"
    seen: list[set[int]] = []
    while True:
        comps = comparisons(promoted)
        adj = dict(zip(compared, holm([comps[i][1].p_value for i in compared]).tolist()))
        new = decisions(comps, adj)
        if new == promoted:
            break
        if new in seen:  # a cycle: one pass of Bonferroni, which needs no fixed point
            adjustment = "bonferroni"
            promoted, inc = set(), base
            comps, adj = {}, {}
            for i in compared:
                d = paired_differences(scores[i], scores[inc], mode)
                test = corrected_ttest(d, n_train, n_test, min_gain=min_gain, alpha=alpha)
                comps[i], adj[i] = (inc, test), min(1.0, test.p_value * m)
                if adj[i] < alpha and test.mean > min_gain:
                    promoted.add(i)
                    inc = i
            break
        seen.append(promoted)
        promoted = new

    rungs: list[Rung] = []
    winner = base
    for i, name in enumerate(names):
        s = scores[i]
        if s is None:
            rungs.append(Rung(name, None, None, None, None, None, False, "failed"))
            continue
        arr = np.asarray(s, dtype=np.float64)
        mean, std = float(arr.mean()), float(arr.std(ddof=1))
        if i == base:
            rungs.append(
                Rung(name, mean, std, None, None, None, False, "base rung: the first incumbent")
            )
            continue
        inc, test = comps[i]
        p = adj[i]
        if i in promoted:
            winner = i
            why = (
                f"promoted over {names[inc]}: mean gain {test.mean:.4g} > min_gain "
                f"{min_gain:g} with {adjustment}-adjusted p {p:.3g} < alpha {alpha:g}"
            )
        elif test.mean <= min_gain:
            why = (
                f"not promoted: mean gain over {names[inc]} {test.mean:.4g} is not above "
                f"min_gain {min_gain:g}"
            )
        else:
            why = (
                f"not promoted: mean gain over {names[inc]} {test.mean:.4g} > min_gain but "
                f"{adjustment}-adjusted p {p:.3g} >= alpha {alpha:g}"
            )
        rungs.append(Rung(name, mean, std, names[inc], test, p, i in promoted, why))
    return rungs, names[winner], adjustment
