"""A Spark DataFrame passed as ``data=`` from a Spark driver (a real local[2] Spark session, the
shared Ray cluster): Spark's executors write the partitions, nothing is collected on the driver,
and a supervised job and a statsmodels ``group_by`` job give the results of the same data read
from parquet. Skipped, saying why, without pyspark or a Java runtime."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

import distml
from distml.runtime.datasets import load_builtin

pytestmark = pytest.mark.usefixtures("ray_cluster")

SUPERVISED = {
    "name": "spark-sk",
    "kind": "sklearn",
    "data": {"target": "target", "split": {"valid": 0.25, "seed": 3}},
    "model": {"estimator": "logistic_regression", "params": {"max_iter": 500}, "scale": True},
}
GROUPED = {
    "name": "spark-sm",
    "kind": "statsmodels",
    "group_by": ["firm"],
    "model": {"method": "ols", "formula": "invest ~ value + capital", "cov_type": "HC1"},
}


@pytest.fixture(scope="module")
def spark():
    pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (the spark extra)")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime: a Spark session needs Java 17+")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("distml-frames-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    assert pyspark.__version__
    yield session
    session.stop()


def _runs(spark, tmp_path, spec: dict, frame: pd.DataFrame):
    """The same rows as one parquet file: run from the path, and from Spark's frame of it."""
    path = tmp_path / f"{spec['name']}.parquet"
    frame.to_parquet(path, index=False)
    ref = distml.run(
        {**spec, "data": {**spec.get("data", {}), "source": str(path)}}, output=tmp_path
    )
    sdf = spark.read.parquet(str(path))
    r = distml.run(spec, data=sdf, output=tmp_path)
    assert (r.run_dir / "_SUCCESS").is_file() and not (r.run_dir / "staging").exists()
    fp = json.loads((r.run_dir / "manifest.json").read_text())["data"]["source"]["frame"]
    assert fp["type"] == "spark" and fp["rows"] == len(frame)
    assert fp["partitions"] == sdf.rdd.getNumPartitions() and fp["columns"] == frame.shape[1]
    return r, ref


def test_spark_frame_supervised_equals_parquet(spark, tmp_path):
    bc = load_builtin("breast_cancer").sample(frac=1, random_state=0).reset_index(drop=True)
    r, ref = _runs(spark, tmp_path, SUPERVISED, bc)
    assert r.metrics == ref.metrics
    pd.testing.assert_frame_equal(r.tables["feature_importance"], ref.tables["feature_importance"])


def test_spark_frame_group_by_equals_parquet(spark, tmp_path):
    r, ref = _runs(spark, tmp_path, GROUPED, load_builtin("grunfeld"))
    for name, keys in (("coefficients", ["firm", "term"]), ("model_stats", ["firm"])):
        got = r.tables[name].sort_values(keys).reset_index(drop=True)
        want = ref.tables[name].sort_values(keys).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, rtol=1e-10)
