"""Kind ``kmeans`` end to end on the shared cluster, compared with scikit-learn on the same rows.

Tolerances: the reported inertia is the exact inertia of the reported centres over every row
(1e-9 relative) and the sizes are exact; against scikit-learn ``KMeans`` and ``MiniBatchKMeans``
(same k, n_init, seed) on well-separated blobs the inertia is within 1% (mini-batch updates do
not land on the Lloyd fixed point; observed ~0.1%) and matched centres within 0.05 (one
standard error of a centre here is ~0.01).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

import distml
from distml.jobs import _out_of_core as ooc
from distml.jobs.kmeans import load_model
from distml.runtime.datasets import generate_dataset

pytestmark = pytest.mark.usefixtures("ray_cluster")
FEATS = [f"x{i}" for i in range(8)]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """48k rows × 8 features around 6 centres, in 3 parquet files; and the rows in memory."""
    out = tmp_path_factory.mktemp("kmeans") / "blobs"
    generate_dataset("synthetic:blobs?features=8&centers=6&seed=5", out, rows=48_000, files=3)
    return out, pd.read_parquet(out)


def _spec(source, **model):
    return {
        "name": "km-test",
        "kind": "kmeans",
        "data": {"source": str(source), "exclude": ["target"]},
        "model": {"n_clusters": 6, "batch_size": 2048, "n_init": 3, "seed": 0, **model},
    }


def _inertia(X, centers):
    from sklearn.metrics import pairwise_distances_argmin_min

    labels, dist = pairwise_distances_argmin_min(X, centers)
    return labels, float((dist**2).sum())


def _match(a, b):
    """Largest distance between matched centres (Hungarian matching)."""
    from scipy.optimize import linear_sum_assignment

    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols]).max())


def test_kmeans_matches_sklearn(tmp_path, blobs):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    path, df = blobs
    r = distml.run(_spec(path, transform=True, keep_columns=["target"]), output=tmp_path)
    X = df[FEATS].to_numpy()
    m = r.metrics
    centers = r.tables["centers"]
    assert list(centers.columns) == ["cluster", "size", *FEATS]
    C = centers[FEATS].to_numpy()
    labels, inertia = _inertia(X, C)
    # the final pass is exact: inertia and sizes of the reported centres over every row
    assert m["inertia"] == pytest.approx(inertia, rel=1e-9)
    assert m["cluster_sizes"] == np.bincount(labels, minlength=6).tolist()
    assert centers["size"].tolist() == m["cluster_sizes"] and m["n_rows"] == 48_000
    assert 1 <= m["passes"] <= 10 and m["n_clusters"] == 6 and len(m["init_inertias"]) == 3
    full = KMeans(6, n_init=3, random_state=0).fit(X)
    mini = MiniBatchKMeans(6, batch_size=2048, n_init=3, random_state=0).fit(X)
    assert m["inertia"] == pytest.approx(full.inertia_, rel=0.01)
    assert m["inertia"] <= mini.inertia_ * 1.01
    assert _match(C, full.cluster_centers_) < 0.05
    # assignments: one file per input file, rows in input order
    out = pd.read_parquet(r.run_dir / "transformed")
    assert list(out.columns) == ["target", "cluster"] and out["cluster"].dtype == np.int32
    np.testing.assert_array_equal(out["cluster"], labels)
    np.testing.assert_array_equal(out["target"], df["target"])
    model = load_model(r.run_dir)
    np.testing.assert_array_equal(model.predict(X), labels)
    meta = json.loads((r.run_dir / "model" / "model.json").read_text())
    assert meta["kind"] == "kmeans" and meta["n_clusters"] == 6
    ex = r.manifest["execution"]
    assert ex["partitions"] == 3 and ex["data_passes"] == 2 + m["passes"]
    hist = r.tables["pass_history"]
    assert len(hist) == m["passes"] and (hist["rows"] == 48_000).all()


def test_scale_and_refine_passes(tmp_path, blobs):
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    path, df = blobs
    r = distml.run(_spec(path, scale=True, max_passes=2, tol=0.0, refine_passes=3), output=tmp_path)
    X = df[FEATS].to_numpy()
    scaler = StandardScaler().fit(X)
    Xs = scaler.transform(X)
    # centres are reported in input units; the inertia is in the scaled space it was fitted in
    C_in = r.tables["centers"][FEATS].to_numpy()
    assert r.metrics["inertia"] == pytest.approx(_inertia(Xs, scaler.transform(C_in))[1], rel=1e-9)
    full = KMeans(6, n_init=3, random_state=0).fit(Xs)
    assert r.metrics["inertia"] == pytest.approx(full.inertia_, rel=0.01)
    assert r.metrics["passes"] == 2 and 1 <= r.metrics["refine_passes"] <= 3
    assert set(r.tables["pass_history"]["kind"]) == {"minibatch", "lloyd"}


def test_a_drawn_sample_decodes_only_its_rows_and_changes_nothing(tmp_path, blobs):
    """Row counts known (parquet): the driver draws the sample's rows and, unless the pass keeps
    its batches, a task decodes only those; the first mini-batch pass measures the tolerance's
    variance. The result equals the run that decodes every row (kept batches, moments in the
    sample pass), and each pass's convergence decision is numpy's tolerance on the same rows."""
    path, df = blobs
    spec = _spec(path, max_passes=10, keep_decoded=False)
    drawn = distml.run(spec, output=tmp_path / "drawn")
    kept = distml.run({**spec, "model": {**spec["model"], "keep_decoded": True}}, output=tmp_path)
    assert drawn.manifest["execution"]["sample"] == {
        "drawn": "by position",
        "decoded": "the rows drawn",
    }
    assert kept.manifest["execution"]["sample"] == {"drawn": "by position", "decoded": "every row"}
    assert drawn.metrics == kept.metrics
    for name in ("centers", "pass_history"):
        pd.testing.assert_frame_equal(drawn.tables[name], kept.tables[name])
    tol = 1e-4 * df[FEATS].to_numpy().var(axis=0).mean()
    shifts = drawn.tables["pass_history"]["center_shift"].tolist()
    assert drawn.metrics["converged"] and 2 <= drawn.metrics["passes"] < 10
    assert shifts[-1] <= tol and all(s > tol for s in shifts[:-1])


def test_csv_rows_draw_random_keys_and_fit_as_parquet(tmp_path, blobs):
    """Row counts unknown (CSV): every row draws a random key in the sample pass, which then
    also folds every row into the moments; the fit is as good as the parquet run's."""
    path, df = blobs
    csv = tmp_path / "blobs.csv"
    df.to_csv(csv, index=False)
    r = distml.run(_spec(csv, keep_decoded=False), output=tmp_path / "csv")
    p = distml.run(_spec(path, keep_decoded=False), output=tmp_path / "parquet")
    assert r.manifest["execution"]["sample"] == {"drawn": "by random key", "decoded": "every row"}
    assert r.metrics["n_rows"] == 48_000 and r.metrics["converged"]
    assert r.metrics["inertia"] == pytest.approx(p.metrics["inertia"], rel=1e-3)
    assert (
        _match(r.tables["centers"][FEATS].to_numpy(), p.tables["centers"][FEATS].to_numpy()) < 0.05
    )


def test_killed_task_is_retried_and_changes_nothing(tmp_path, blobs, monkeypatch):
    """RELIABILITY.md T4: the worker running mini-batch pass work on partition 1 dies at its
    second batch (first attempt only); the retried task gives the undisturbed result."""
    import ray

    path, _ = blobs
    spec = _spec(path, max_passes=3)
    calm = distml.run(spec, output=tmp_path / "calm")
    marker = tmp_path / "crashed"
    monkeypatch.setenv(ooc.FAULT_ENV, f"{marker}:minibatch:1:1")
    hit = distml.run(spec, output=tmp_path / "hit")
    assert marker.exists()
    assert hit.metrics == calm.metrics
    pd.testing.assert_frame_equal(hit.tables["centers"], calm.tables["centers"])
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "CPUs still held after the job (T10)"
        time.sleep(0.2)


def test_kept_batches_give_the_result_of_reading_again(tmp_path, blobs, monkeypatch):
    """The later passes on the batches the sample pass kept in the object store equal the same
    passes reading and decoding the parquet again, bit for bit (scaled, with refine passes); a
    worker killed during such a pass is retried on the same kept batches (T4)."""
    path, _ = blobs
    spec = _spec(path, scale=True, max_passes=3, tol=0.0, refine_passes=1)
    reread = distml.run(
        {**spec, "model": {**spec["model"], "keep_decoded": False}}, output=tmp_path / "a"
    )
    auto = distml.run(spec, output=tmp_path / "b")  # 48k x 8 fit the store: kept
    assert reread.manifest["execution"]["kept_decoded"] is False
    assert auto.manifest["execution"]["kept_decoded"] is True
    assert auto.metrics == reread.metrics
    for name in ("centers", "pass_history"):
        pd.testing.assert_frame_equal(auto.tables[name], reread.tables[name])
    for stage in ("minibatch", "sample"):  # sample: a generator task dies after yielding
        marker = tmp_path / f"crashed-{stage}"
        monkeypatch.setenv(ooc.FAULT_ENV, f"{marker}:{stage}:2:1")
        hit = distml.run(spec, output=tmp_path / f"hit-{stage}")
        assert marker.exists() and hit.manifest["execution"]["kept_decoded"] is True
        assert hit.metrics == reread.metrics
        pd.testing.assert_frame_equal(hit.tables["centers"], reread.tables["centers"])


def test_a_bad_row_fails_the_sample_pass_whether_batches_are_kept_or_not(tmp_path):
    df = pd.DataFrame({"a": np.arange(100.0), "b": np.r_[np.nan, np.ones(99)]})
    path = tmp_path / "d.parquet"
    df.to_parquet(path)
    for keep in (True, False):
        with pytest.raises(distml.DataError, match="column 'b' has missing values in"):
            distml.run(
                {
                    "name": "bad",
                    "kind": "kmeans",
                    "data": {"source": str(path)},
                    "model": {"n_clusters": 2, "batch_size": 10, "keep_decoded": keep},
                },
                output=tmp_path / "runs",
                run_id=f"keep-{keep}",
            )


def test_bad_rows_fail_the_job_with_a_data_error(tmp_path):
    df = pd.DataFrame({"a": np.arange(100.0), "b": np.r_[np.ones(99), np.nan]})
    path = tmp_path / "d.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": df["a"].to_numpy(), "b": df["b"].to_numpy()}), path)
    with pytest.raises(distml.DataError, match="column 'b' has NaN or infinite values"):
        distml.run(
            {
                "name": "bad",
                "kind": "kmeans",
                "data": {"source": str(path)},
                "model": {"n_clusters": 2},
            },
            output=tmp_path / "runs",
            run_id="r1",
        )
    assert not (tmp_path / "runs" / "bad" / "r1" / "_SUCCESS").exists()
