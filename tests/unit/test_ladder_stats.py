"""The ladder's statistics: the Nadeau–Bengio corrected resampled t-test and its interval
against a hand computation, Holm against statsmodels, the promotion rule, and seeded
simulations of its error rates (the null rate at most nominal; a truly better rung promoted)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from distml.jobs.ladder import stats

FOLD_D = [0.021, 0.034, 0.008, 0.041, 0.017, 0.026, -0.004, 0.030, 0.012, 0.025]


def test_corrected_ttest_equals_a_hand_computation():
    d = np.array(FOLD_D)
    k, n_train, n_test = 10, 450.0, 50.0
    r = stats.corrected_ttest(d, n_train, n_test, alpha=0.05)
    # by hand: the corrected variance (1/k + n_test/n_train) * s², df = k - 1
    mean = sum(FOLD_D) / k
    s2 = sum((x - mean) ** 2 for x in FOLD_D) / (k - 1)
    se = math.sqrt((1 / k + n_test / n_train) * s2)
    t = mean / se
    assert r.mean == pytest.approx(mean, rel=1e-12)
    assert r.std == pytest.approx(math.sqrt(s2), rel=1e-12)
    assert r.se == pytest.approx(se, rel=1e-12)
    assert r.t == pytest.approx(t, rel=1e-12) and r.df == 9 and r.k == 10
    assert r.p_value == pytest.approx(1 - st.t.cdf(t, 9), rel=1e-9)
    q = st.t.ppf(0.975, 9)
    assert (r.ci_low, r.ci_high) == (pytest.approx(mean - q * se), pytest.approx(mean + q * se))
    # the uncorrected paired t-test (1/k only) is what the correction widens
    naive = st.ttest_1samp(d, 0.0, alternative="greater")
    assert r.p_value > naive.pvalue
    assert r.se / (np.std(d, ddof=1) / math.sqrt(k)) == pytest.approx(
        math.sqrt(1 + k * n_test / n_train)
    )


def test_min_gain_shifts_the_null_and_alpha_the_interval():
    d, n_train, n_test = np.array(FOLD_D), 400, 100
    r = stats.corrected_ttest(d, n_train, n_test, min_gain=0.01, alpha=0.10)
    se = math.sqrt((0.1 + 0.25) * np.var(d, ddof=1))
    assert r.t == pytest.approx((d.mean() - 0.01) / se)
    assert r.p_value == pytest.approx(st.t.sf((d.mean() - 0.01) / se, 9))
    assert r.ci_high - r.mean == pytest.approx(st.t.ppf(0.95, 9) * se)


def test_zero_variance_differences():
    assert stats.corrected_ttest([0.0] * 5, 80, 20).p_value == 1.0  # identical scores
    up = stats.corrected_ttest([0.02] * 5, 80, 20)
    assert up.p_value == 0.0 and up.t == math.inf and up.ci_low == up.ci_high == 0.02
    assert stats.corrected_ttest([0.02] * 5, 80, 20, min_gain=0.05).p_value == 1.0
    with pytest.raises(ValueError, match="at least 2 folds"):
        stats.corrected_ttest([0.1], 80, 20)


def test_holm_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(3)
    for _ in range(5):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 7))
        assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1], abs=1e-12)


def test_metric_modes_and_unknown_metric_lists_the_valid_ones():
    assert stats.metric_mode("roc_auc") == "max" and stats.metric_mode("rmse") == "min"
    with pytest.raises(ValueError, match="valid metrics: accuracy, precision.*rmse, mae, r2"):
        stats.metric_mode("auc")
    # min metrics: lower is better, so the difference is incumbent - candidate
    assert stats.paired_differences([1.0, 2.0], [2.0, 2.5], "min").tolist() == [1.0, 0.5]


def test_decide_climbs_compares_with_the_incumbent_and_explains():
    base = np.array([0.70, 0.72, 0.69, 0.71, 0.70])
    better = base + np.array([0.05, 0.06, 0.05, 0.055, 0.06])
    same = better + np.array([0.001, -0.002, 0.0, 0.001, -0.001])
    rungs, winner, adj = stats.decide(
        ["base", "broken", "better", "same"],
        [base, None, better, same],
        "max",
        n_train=80,
        n_test=20,
        alpha=0.05,
        min_gain=0.0,
    )
    assert [r.promoted for r in rungs] == [False, False, True, False]
    assert winner == "better" and adj == "holm"
    assert rungs[1].reason == "failed" and rungs[0].reason.startswith("base rung")
    assert rungs[2].incumbent == "base" and rungs[3].incumbent == "better"
    # Holm over the two comparisons made, in the order of their p-values
    p = [rungs[2].test.p_value, rungs[3].test.p_value]
    assert [rungs[2].p_adjusted, rungs[3].p_adjusted] == pytest.approx(stats.holm(p).tolist())
    assert "not promoted" in rungs[3].reason
    # a gain below min_gain is never promoted, however sure
    rungs, winner, _ = stats.decide(
        ["base", "better"], [base, better], "max", n_train=80, n_test=20, alpha=0.05, min_gain=0.1
    )
    assert winner == "base" and "not above min_gain" in rungs[1].reason
    with pytest.raises(ValueError, match="every rung failed"):
        stats.decide(["a", "b"], [None, None], "max", n_train=8, n_test=2, alpha=0.05, min_gain=0)


def _null_folds(rng, k: int, sigma: float = 0.01) -> np.ndarray:
    """Per-fold scores of one candidate under the resampling model the correction assumes: the
    k fold scores are equicorrelated with rho = n_test / n = 1/k (Nadeau & Bengio)."""
    rho = 1.0 / k
    common = rng.normal(0, sigma * math.sqrt(rho))
    return 0.8 + common + rng.normal(0, sigma * math.sqrt(1 - rho), size=k)


@pytest.mark.parametrize("k", [5, 10])
def test_identical_candidates_are_promoted_at_most_at_the_nominal_rate(k):
    rng = np.random.default_rng(20260)
    n_sim, alpha = 3000, 0.05
    n = 1000
    n_test, n_train = n / k, n - n / k
    promoted, diffs = 0, []
    for _ in range(n_sim):
        a, b = _null_folds(rng, k), _null_folds(rng, k)
        _, winner, _ = stats.decide(
            ["a", "b"], [a, b], "max", n_train=n_train, n_test=n_test, alpha=alpha, min_gain=0.0
        )
        promoted += winner == "b"
        diffs.append(b - a)
    rate = promoted / n_sim
    naive = (
        st.ttest_1samp(np.array(diffs), 0.0, axis=1, alternative="greater").pvalue < alpha
    ).sum()
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / n_sim)
    assert rate <= bound, rate
    assert rate >= alpha / 2, rate  # the test is not vacuous: it does reject at about alpha
    # the uncorrected paired t-test would promote far more often than it says
    assert naive / n_sim > 2 * alpha


def test_a_ladder_of_equal_rungs_keeps_the_family_wise_rate():
    rng = np.random.default_rng(7)
    k, n_sim, alpha = 10, 2000, 0.05
    any_promoted = 0
    for _ in range(n_sim):
        scores = [_null_folds(rng, k) for _ in range(4)]
        rungs, _, _ = stats.decide(
            list("abcd"), scores, "max", n_train=900, n_test=100, alpha=alpha, min_gain=0.0
        )
        any_promoted += any(r.promoted for r in rungs)
    assert any_promoted / n_sim <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / n_sim)


def test_a_truly_better_rung_is_promoted_with_high_probability():
    rng = np.random.default_rng(11)
    k, n_sim = 10, 500
    wins = 0
    for _ in range(n_sim):
        base = _null_folds(rng, k)
        better = _null_folds(rng, k) + 0.03  # three times the fold noise
        _, winner, _ = stats.decide(
            ["base", "better"],
            [base, better],
            "max",
            n_train=900,
            n_test=100,
            alpha=0.05,
            min_gain=0.005,
        )
        wins += winner == "better"
    assert wins / n_sim >= 0.9


def test_decisions_that_would_cycle_fall_back_to_one_bonferroni_pass(monkeypatch):
    base = np.array([0.70, 0.72, 0.69, 0.71, 0.70])
    a = base + np.array([0.05, 0.06, 0.05, 0.055, 0.06])
    b = a + np.array([0.01, 0.012, 0.008, 0.011, 0.009])
    calls = []

    def flipping(p):  # a stand-in that makes the fixed point oscillate
        calls.append(list(p))
        return np.zeros(len(p)) if len(calls) % 2 else np.ones(len(p))

    monkeypatch.setattr(stats, "holm", flipping)
    rungs, winner, adj = stats.decide(
        ["base", "a", "b"], [base, a, b], "max", n_train=80, n_test=20, alpha=0.05, min_gain=0.0
    )
    assert adj == "bonferroni" and len(calls) == 2
    ta = stats.corrected_ttest(a - base, 80, 20)
    tb = stats.corrected_ttest(b - a, 80, 20)  # a is promoted first, so b is compared with a
    assert rungs[1].p_adjusted == pytest.approx(min(1.0, 2 * ta.p_value))
    assert rungs[2].p_adjusted == pytest.approx(min(1.0, 2 * tb.p_value))
    assert rungs[1].promoted == (2 * ta.p_value < 0.05)
    assert rungs[2].incumbent == ("a" if rungs[1].promoted else "base")
    assert "bonferroni-adjusted" in rungs[1].reason


def test_equally_good_real_models_under_real_cross_validation_are_rarely_promoted():
    """The null rate on real k-fold CV, not on simulated scores: two logistic regressions on
    equally informative features (x1 vs x2 of y ~ x1 + x2), scored on the same 5 folds of a
    fresh sample each time. Real folds share training rows, which is what the correction is
    for; the one-sided corrected test must keep promotions near alpha (here: at most alpha plus
    three standard errors), where the plain paired t-test promotes far more often."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(7)
    n_sim, n, k, alpha = 300, 200, 5, 0.05
    promoted = naive = 0
    for seed in range(n_sim):
        X = rng.normal(size=(n, 2))
        y = (rng.random(n) < 1 / (1 + np.exp(-(X[:, 0] + X[:, 1])))).astype(int)
        scores = {0: [], 1: []}
        for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y):
            for j in (0, 1):
                model = LogisticRegression().fit(X[train, j : j + 1], y[train])
                scores[j].append(
                    roc_auc_score(y[test], model.predict_proba(X[test, j : j + 1])[:, 1])
                )
        a, b = np.array(scores[0]), np.array(scores[1])
        _, winner, _ = stats.decide(
            ["x1", "x2"],
            [a, b],
            "max",
            n_train=n - n // k,
            n_test=n // k,
            alpha=alpha,
            min_gain=0.0,
        )
        promoted += winner == "x2"
        naive += st.ttest_1samp(b - a, 0.0, alternative="greater").pvalue < alpha
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / n_sim)
    assert promoted / n_sim <= bound, promoted / n_sim
    assert naive > promoted  # what the correction buys on real folds
