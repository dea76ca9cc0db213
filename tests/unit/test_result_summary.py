"""``Result.summary()``: the lines `distml run` prints carry each kind's key figures."""

from __future__ import annotations

from pathlib import Path

from distml.result import Result


def _result(kind: str, metrics: dict) -> Result:
    return Result(
        status="succeeded", name="n", kind=kind, run_id="r1", run_dir=Path("/x"), metrics=metrics
    )


def test_single_statsmodels_summary_shows_fit_statistics():
    # keys as distml/jobs/statsmodels/many.tabulate writes them for one model (no group_by)
    m = {
        "method": "ols",
        "n_groups": 1,
        "n_fitted": 1,
        "n_failed": 0,
        "n_not_converged": 0,
        "nobs": 16.0,
        "r_squared": 0.99548,
        "adj_r_squared": 0.99246,
        "aic": 229.0,
        "bic": 234.4,
        "llf": -109.62,
        "converged": True,
        "n_params": 7,
    }
    text = _result("statsmodels", m).summary()
    assert "model: ols" in text
    for fig in ("r_squared=0.9955", "llf=-109.6", "aic=229", "nobs=16"):
        assert fig in text, text
    assert "groups:" not in text


def test_single_glm_summary_without_r_squared_uses_llf_and_aic():
    m = {
        "method": "logit",
        "n_groups": 1,
        "n_fitted": 1,
        "n_failed": 0,
        "n_not_converged": 1,
        "nobs": 32.0,
        "llf": -12.89,
        "aic": 33.78,
        "pseudo_r_squared": 0.374,
        "converged": False,
        "n_params": 4,
    }
    text = _result("statsmodels", m).summary()
    assert "pseudo_r_squared=0.374" in text and "llf=-12.89" in text and "aic=33.78" in text
    assert "did not converge" in text


def test_many_models_summary_shows_fitted_and_failed_counts():
    m = {
        "method": "ols",
        "n_groups": 10,
        "n_fitted": 9,
        "n_failed": 1,
        "n_not_converged": 0,
        "nobs": 180.0,
        "r_squared_median": 0.8123,
        "aic_median": 190.5,
        "n_rows_without_group": 0,
    }
    text = _result("statsmodels", m).summary()
    assert "groups: 9 of 10 fitted, 1 failed" in text
    assert "r_squared_median=0.8123" in text and "aic_median=190.5" in text


def test_pca_summary_shows_explained_variance():
    m = {
        "n_components": 3,
        "mode": "exact",
        "explained_variance_ratio": [0.5, 0.25, 0.125],
        "explained_variance_ratio_sum": 0.875,
        "n_rows": 100,
        "n_features": 5,
    }
    text = _result("pca", m).summary()
    assert "3 components explain 87.5% of the variance" in text
    assert "0.5, 0.25, 0.125" in text


def test_kmeans_summary_shows_inertia_and_sizes():
    m = {
        "inertia": 1234.5678,
        "mean_inertia": 1.2345678,
        "passes": 7,
        "converged": True,
        "n_clusters": 3,
        "n_rows": 1000,
        "cluster_sizes": [400, 350, 250],
    }
    text = _result("kmeans", m).summary()
    assert "kmeans: k=3, inertia=1234.57 (1.235 per row), 7 passes" in text
    assert "cluster sizes: 400, 350, 250" in text


def test_supervised_summary_is_unchanged():
    m = {"valid": {"accuracy": 0.95, "roc_auc": 0.99}, "best_iteration": 12}
    lines = _result("xgboost", m).summary().splitlines()
    assert lines[2] == "valid: accuracy=0.95, roc_auc=0.99" and len(lines) == 3


def test_cv_summary_has_no_fold_line():
    from distml.runtime.metrics import summarize_folds

    folds = [{"accuracy": a, "fold": i} for i, a in enumerate([0.9, 0.8, 1.0])]
    text = _result("sklearn", {"cv": summarize_folds(folds)}).summary()
    assert "cv: accuracy=0.9±0.1" in text and "fold=" not in text
