"""The summary `distml run` prints for statsmodels, pca and kmeans runs carries their key figures,
read from the metrics the real jobs write (issue 18 #12)."""

from __future__ import annotations

import re

import pytest

import distml

pytestmark = pytest.mark.usefixtures("ray_cluster")
SMALL = "synthetic:blobs?rows=3000&features=6&centers=3&seed=0"


def test_single_statsmodels_summary(tmp_path):
    r = distml.run("jobs/statsmodels_ols_longley.yaml", output=tmp_path)
    text = r.summary()
    assert r.status == "succeeded"
    assert re.search(r"model: ols, nobs=16, r_squared=0\.99\d*, adj_r_squared=", text), text
    assert "llf=" in text and "aic=" in text


def test_many_models_summary(tmp_path):
    r = distml.run("jobs/statsmodels_grunfeld_firms.yaml", output=tmp_path)
    n = r.metrics["n_groups"]
    assert (
        f"groups: {r.metrics['n_fitted']} of {n} fitted, {r.metrics['n_failed']} failed"
        in r.summary()
    )


def test_pca_and_kmeans_summaries(tmp_path):
    p = distml.run(
        "jobs/pca_out_of_core.yaml",
        output=tmp_path,
        data__source=SMALL,
        model__n_components=3,
        model__transform=False,
    )
    total = p.metrics["explained_variance_ratio_sum"]
    assert f"3 components explain {total:.1%} of the variance" in p.summary(), p.summary()
    k = distml.run(
        "jobs/kmeans_out_of_core.yaml",
        output=tmp_path,
        data__source=SMALL,
        model__n_clusters=3,
        model__transform=False,
        model__keep_columns=[],
    )
    assert f"kmeans: k=3, inertia={k.metrics['inertia']:.6g}" in k.summary(), k.summary()
    assert "cluster sizes: " in k.summary()


def test_cross_validation_does_not_report_the_fold_index(tmp_path):
    """Issue 18 #11: ``fold=2±1.6`` in the summary and ``cv.mean.fold`` in tracking."""
    r = distml.run("jobs/sklearn_iris.yaml", output=tmp_path)
    cv = r.metrics["cv"]
    assert "fold" not in cv["mean"] and "fold" not in cv["std"] and "accuracy" in cv["mean"]
    assert [f["fold"] for f in cv["folds"]] == [0, 1, 2, 3, 4]  # kept per fold
    assert "fold=" not in r.summary() and "cv: accuracy=" in r.summary()
