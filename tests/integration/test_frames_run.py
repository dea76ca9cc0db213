"""Frames from Python on the shared cluster: a pandas DataFrame, a Dask DataFrame and a
``ray.data.Dataset`` passed as ``data=`` (and ``test_data=``) give the results of the same data
read from parquet, for a supervised job (sklearn on breast_cancer, a seeded stratified split, so
row order matters) and a statsmodels ``group_by`` job (Grunfeld, one OLS per firm). The manifest
fingerprints what was passed; the staged copies are gone when the run ends; a rerun of the run
id reports the stored result for the same frame and refuses another."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import distml
from distml.errors import SpecError
from distml.runtime.datasets import load_builtin

pytestmark = pytest.mark.usefixtures("ray_cluster")

SUPERVISED = {
    "name": "frames-sk",
    "kind": "sklearn",
    "data": {"target": "target", "split": {"valid": 0.25, "seed": 3}},
    "model": {"estimator": "logistic_regression", "params": {"max_iter": 500}, "scale": True},
}
GROUPED = {
    "name": "frames-sm",
    "kind": "statsmodels",
    "group_by": ["firm"],
    "model": {"method": "ols", "formula": "invest ~ value + capital", "cov_type": "HC1"},
}
KINDS = ["pandas", "dask", "ray"]


def _as(kind: str, df: pd.DataFrame):
    """``df`` as a frame of ``kind``, in 3 partitions where the kind has partitions."""
    if kind == "pandas":
        return df
    if kind == "dask":
        import dask.dataframe as dd

        return dd.from_pandas(df, npartitions=3)
    import ray.data

    return ray.data.from_pandas([df.iloc[i] for i in np.array_split(np.arange(len(df)), 3)])


def _source(spec: dict, path) -> dict:
    return {**spec, "data": {**spec.get("data", {}), "source": str(path)}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    bc, gf = load_builtin("breast_cancer"), load_builtin("grunfeld")
    bc = bc.sample(frac=1, random_state=0).reset_index(drop=True)  # not the builtin's order
    train, test = bc.iloc[:450].reset_index(drop=True), bc.iloc[450:].reset_index(drop=True)
    paths = {"train": root / "train.parquet", "test": root / "test.parquet", "gf": root / "gf.pq"}
    train.to_parquet(paths["train"], index=False)
    test.to_parquet(paths["test"], index=False)
    gf.to_parquet(paths["gf"], index=False)
    out = root / "runs"
    ref_sk = distml.run(_source(SUPERVISED, paths["train"]), output=out)
    ref_sm = distml.run(_source(GROUPED, paths["gf"]), output=out)
    with_test = _source(SUPERVISED, paths["train"])
    with_test["data"]["test_source"] = str(paths["test"])
    ref_test = distml.run(with_test, output=out)
    return {
        "train": train,
        "test": test,
        "gf": gf,
        "paths": paths,
        "ref_sk": ref_sk,
        "ref_sm": ref_sm,
        "ref_test": ref_test,
    }


def _manifest(r) -> dict:
    return json.loads((r.run_dir / "manifest.json").read_text())


def _staged_gone(r) -> None:
    assert (r.run_dir / "_SUCCESS").is_file()
    assert not (r.run_dir / "staging").exists()
    assert not any("staging" in k for k in _manifest(r)["digests"])


def _sorted(t: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    # the group column keeps the frame's string dtype (Dask's is pyarrow-backed): compare values
    return t.astype({"firm": object}).sort_values(keys).reset_index(drop=True)


@pytest.mark.parametrize("kind", KINDS)
def test_supervised_frame_equals_parquet(tmp_path, data, kind):
    r = distml.run(SUPERVISED, data=_as(kind, data["train"]), output=tmp_path)
    ref = data["ref_sk"]
    assert r.metrics == ref.metrics
    pd.testing.assert_frame_equal(r.tables["feature_importance"], ref.tables["feature_importance"])
    _staged_gone(r)
    fp = _manifest(r)["data"]["source"]["frame"]
    assert fp["type"] == kind and fp["rows"] == 450 and fp["columns"] == 31
    assert fp["partitions"] == (1 if kind == "pandas" else 3)
    assert fp["schema_hash"] and fp["keyword"] == "data"
    assert _manifest(r)["data"]["source"]["n_files"] == (1 if kind == "pandas" else 3)


@pytest.mark.parametrize("kind", KINDS)
def test_group_by_frame_equals_parquet(tmp_path, data, kind):
    r = distml.run(GROUPED, data=_as(kind, data["gf"]), output=tmp_path)
    ref = data["ref_sm"]
    keys = ["firm", "term"]
    pd.testing.assert_frame_equal(
        _sorted(r.tables["coefficients"], keys),
        _sorted(ref.tables["coefficients"], keys),
        rtol=1e-10,
    )
    pd.testing.assert_frame_equal(
        _sorted(r.tables["model_stats"], ["firm"]), _sorted(ref.tables["model_stats"], ["firm"])
    )
    assert r.tables["model_stats"]["firm"].nunique() == data["gf"]["firm"].nunique()
    _staged_gone(r)


def test_test_data_frame_equals_test_source(tmp_path, data):
    import dask.dataframe as dd

    r = distml.run(
        SUPERVISED,
        data=dd.from_pandas(data["train"], npartitions=2),
        test_data=data["test"],
        output=tmp_path,
    )
    ref = data["ref_test"]
    assert r.metrics["test"] == ref.metrics["test"] and r.metrics["valid"] == ref.metrics["valid"]
    m = _manifest(r)["data"]
    assert m["test_source"]["frame"]["type"] == "pandas"
    assert m["test_source"]["frame"]["rows"] == len(data["test"])
    assert m["source"]["frame"]["type"] == "dask" and m["source"]["frame"]["partitions"] == 2
    _staged_gone(r)


def test_rerun_of_a_frame_run_id(tmp_path, data):
    df = data["train"]
    first = distml.run(SUPERVISED, data=df, output=tmp_path, run_id="frame-1")
    again = distml.run(SUPERVISED, data=df, output=tmp_path, run_id="frame-1")
    assert again.reused and again.metrics == first.metrics
    spec = (first.run_dir / "spec.yaml").read_text()
    assert str(first.run_dir / "staging" / "data") in spec  # what the kind read
    with pytest.raises(SpecError, match=r"already finished with other data: data= rows"):
        distml.run(SUPERVISED, data=df.iloc[:400], output=tmp_path, run_id="frame-1")
