"""Kind ``pca`` end to end on the shared cluster, compared with scikit-learn on the same rows.

Tolerances (the issue asks 1e-6): explained variance to 1e-9 relative in exact mode (observed
~1e-13) and 1e-6 in incremental mode, components to 1e-8 absolute (same signs: both sides apply
scikit-learn's ``svd_flip``), transformed rows to 1e-8.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import distml
from distml.jobs import _out_of_core as ooc
from distml.jobs.pca import load_model
from distml.runtime.datasets import generate_dataset

pytestmark = pytest.mark.usefixtures("ray_cluster")
FEATS = [f"x{i}" for i in range(10)]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """60k rows × 10 features in 4 parquet files, and the same rows in memory."""
    out = tmp_path_factory.mktemp("pca") / "blobs"
    generate_dataset("synthetic:blobs?features=10&centers=5&seed=3", out, rows=60_000, files=4)
    return out, pd.read_parquet(out)


def _spec(source, **model):
    return {
        "name": "pca-test",
        "kind": "pca",
        "data": {"source": str(source), "exclude": ["target"]},
        "model": model,
    }


def test_exact_matches_sklearn_pca(tmp_path, blobs):
    from sklearn.decomposition import PCA

    path, df = blobs
    r = distml.run(
        _spec(
            path,
            n_components=4,
            whiten=True,
            transform=True,
            keep_columns=["target"],
            partition_rows=10_000,
        ),
        output=tmp_path,
    )
    X = df[FEATS].to_numpy()
    sk = PCA(4, whiten=True, svd_solver="full").fit(X)
    m = r.metrics
    assert m["mode"] == "exact" and m["n_components"] == 4 and m["n_rows"] == 60_000
    np.testing.assert_allclose(m["explained_variance"], sk.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(
        m["explained_variance_ratio"], sk.explained_variance_ratio_, rtol=1e-9
    )
    comp = r.tables["components"]
    assert list(comp.columns) == [
        "component",
        "explained_variance",
        "explained_variance_ratio",
        *FEATS,
    ]
    np.testing.assert_allclose(comp[FEATS].to_numpy(), sk.components_, atol=1e-8)
    np.testing.assert_allclose(r.tables["feature_stats"]["mean"], sk.mean_, rtol=1e-12)
    ex = r.manifest["execution"]
    assert ex["path"] == "out_of_core_exact" and ex["partitions"] == 4
    assert ex["stages"]["moments"]["rows"] == 60_000
    # transformed: one file per input file, rows in input order, the kept column first
    files = sorted((r.run_dir / "transformed").glob("*.parquet"))
    assert [f.name for f in files] == [f"part-0000{i}.parquet" for i in range(4)]
    out = pd.read_parquet(r.run_dir / "transformed")
    assert list(out.columns) == ["target", "pca0", "pca1", "pca2", "pca3"]
    np.testing.assert_array_equal(out["target"], df["target"])
    np.testing.assert_allclose(out[["pca0", "pca1", "pca2", "pca3"]], sk.transform(X), atol=1e-8)
    # the saved model loads without pickle and gives the same rows
    model = load_model(r.run_dir)
    np.testing.assert_allclose(model.transform(X[:100]), sk.transform(X[:100]), atol=1e-8)
    meta = json.loads((r.run_dir / "model" / "model.json").read_text())
    assert meta["kind"] == "pca" and meta["features"] == FEATS and meta["mode"] == "exact"


def test_incremental_matches_sklearn_incremental_pca(tmp_path, blobs):
    from sklearn.decomposition import IncrementalPCA
    from sklearn.preprocessing import StandardScaler

    path, df = blobs
    r = distml.run(
        _spec(path, n_components=3, mode="incremental", batch_size=7000, scale=True),
        output=tmp_path,
    )
    Xs = StandardScaler().fit_transform(df[FEATS].to_numpy())
    sk = IncrementalPCA(3, batch_size=7000).fit(Xs)
    assert r.metrics["mode"] == "incremental"
    np.testing.assert_allclose(r.metrics["explained_variance"], sk.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(
        r.metrics["explained_variance_ratio"], sk.explained_variance_ratio_, rtol=1e-6
    )
    np.testing.assert_allclose(r.tables["components"][FEATS].to_numpy(), sk.components_, atol=1e-6)
    assert r.manifest["execution"]["stages"]["incremental"]["rows"] == 60_000


def test_variance_fraction_on_a_synthetic_source(tmp_path):
    from sklearn.decomposition import PCA

    from distml.runtime.datasets import synthetic_frame

    source = "synthetic:blobs?rows=3000&features=6&centers=4&seed=1"
    r = distml.run(_spec(source, n_components=0.8, scale=True), output=tmp_path)
    df = synthetic_frame(source)
    X = df[[f"x{i}" for i in range(6)]].to_numpy()
    sk = PCA(0.8).fit((X - X.mean(0)) / X.std(0))
    assert r.metrics["n_components"] == sk.n_components_
    np.testing.assert_allclose(r.metrics["explained_variance"], sk.explained_variance_, rtol=1e-9)
    assert r.manifest["execution"]["partitions"] == 1


@pytest.mark.parametrize("stage", ["moments", "transform"])
def test_killed_task_is_retried_and_changes_nothing(tmp_path, blobs, monkeypatch, stage):
    """RELIABILITY.md T4: a task's worker process dies part way (os._exit at batch 2 of
    partition 1, first attempt only); Ray retries it and the result is the undisturbed one."""
    import ray

    path, _ = blobs
    spec = _spec(path, n_components=3, batch_size=4000, transform=True)
    calm = distml.run(spec, output=tmp_path / "calm")
    marker = tmp_path / "crashed"
    monkeypatch.setenv(ooc.FAULT_ENV, f"{marker}:{stage}:1:2")
    hit = distml.run(spec, output=tmp_path / "hit")
    assert json.loads(marker.read_text())["stage"] == stage  # the crash did happen
    assert hit.metrics == calm.metrics
    pd.testing.assert_frame_equal(hit.tables["components"], calm.tables["components"])
    pd.testing.assert_frame_equal(
        pd.read_parquet(hit.run_dir / "transformed"), pd.read_parquet(calm.run_dir / "transformed")
    )
    assert not [p for p in (hit.run_dir / "transformed").rglob("*") if ".tmp-" in p.name]
    _wait_for_free_cpus(ray)


def _wait_for_free_cpus(ray, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "CPUs still held after the job"
        time.sleep(0.2)


def test_memory_stays_bounded_by_the_batch_not_the_data(tmp_path):
    """About 120 MB of float64 features streamed with 2,048-row batches (0.5 MB): the largest
    increase of any task's RSS over its start stays under a 32 MB cap."""
    data = tmp_path / "big"
    info = generate_dataset(
        "synthetic:blobs?features=32&centers=4&seed=0", data, rows=480_000, files=2
    )
    raw_mb = info["rows"] * 32 * 8 / 2**20
    spec = _spec(data, n_components=4, batch_size=2048)
    distml.run(
        spec,
        output=tmp_path / "warm",
        **{"data.source": str(data / "part-00000.parquet"), "model.partition_rows": 65_536},
    )
    r = distml.run(spec, output=tmp_path / "runs")
    mem = r.manifest["memory"]
    assert raw_mb > 100 and r.metrics["n_rows"] == 480_000
    assert mem["tasks_measured"] == 2 and mem["batch_mb"] == 0.5
    assert mem["max_task_rss_increase_mb"] < 32, mem
