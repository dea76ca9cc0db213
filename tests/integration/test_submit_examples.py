"""examples/: the Airflow DAG and the Spark driver import and behave without Airflow/pyspark
installed; the DAG's PythonOperator callable really runs a spec. (The cron script runs against
a real cluster in test_submit_cluster.py.)"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import shlex
import sys

import pytest

from distml.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(rel: str):
    path = os.path.join(ROOT, rel)
    py_compile.compile(path, doraise=True)
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_")[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_airflow_dag_without_airflow():
    dag = _load("examples/airflow/distml_dag.py")
    if importlib.util.find_spec("airflow") is None:
        assert dag.dag is None
    cmd = dag.submit_command(
        spec="/specs/my spec.yaml", address="http://head:8265", output="/mnt/distml/runs"
    )
    argv = shlex.split(cmd)
    assert argv[:3] == ["distml", "submit", "/specs/my spec.yaml"]
    assert argv[argv.index("--submission-id") + 1] == "nightly-{{ds}}"
    assert "--wait" in argv and "--json" in argv
    assert argv[argv.index("--address") + 1] == "http://head:8265"


@pytest.mark.usefixtures("ray_cluster")
def test_airflow_python_callable_runs_the_spec(tmp_path):
    dag = _load("examples/airflow/distml_dag.py")
    few = {"model.num_boost_round": 5}
    out = dag.train_in_process(
        "af-1", spec=f"{ROOT}/jobs/quickstart.yaml", output=str(tmp_path), overrides=few
    )
    assert os.path.isfile(os.path.join(out["run_dir"], "_SUCCESS"))
    assert out["run_id"] == "af-1" and out["metrics"]["valid"]["roc_auc"] > 0.9
    assert dag.train_in_process(
        "af-1", spec=f"{ROOT}/jobs/quickstart.yaml", output=str(tmp_path), overrides=few
    )["reused"]
    with pytest.raises(TypeError):  # Airflow's task context is never taken as overrides
        dag.train_in_process(
            "af-1", spec=f"{ROOT}/jobs/quickstart.yaml", ti=object(), ds="2026-12-01"
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"name: b\nkind: xgboost\ndata: {{source: '{tmp_path}/none.parquet', target: y}}\n"
    )
    with pytest.raises(DataError):  # no Airflow here: the distml error itself
        dag.train_in_process("af-2", spec=str(bad), output=str(tmp_path))


def test_spark_driver_without_pyspark(capsys, monkeypatch):
    spark = _load("examples/spark/train_on_spark.py")
    for name in [m for m in sys.modules if m == "pyspark" or m.startswith("pyspark.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("pyspark", "pyspark.sql"):  # `make test` installs pyspark: hide it
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: ImportError
    assert spark.main(["jobs/quickstart.yaml", "--output", "/tmp/x"]) == 2
    assert "needs pyspark" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_cluster")
def test_spec_tracking_logs_the_run_to_mlflow(tmp_path, monkeypatch):
    """`tracking: {mlflow: {uri, experiment}}` in a spec: the finished run is in MLflow.
    (mlflow-skinny is in the ``dev`` extra that `make test` installs: missing, this fails.)"""
    from mlflow.tracking import MlflowClient

    import distml
    from distml.spec.base import JobSpec

    assert "tracking" in JobSpec.model_fields, "JobSpec lost its `tracking` field"
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    r = distml.run(
        f"{ROOT}/jobs/quickstart.yaml",
        output=tmp_path / "runs",
        run_id="ml-1",
        model__num_boost_round=5,
        tracking={"mlflow": {"uri": uri, "experiment": "quickstart"}},
    )
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    assert run.data.tags["distml.run_dir"] == str(r.run_dir)
    assert run.data.metrics["valid.roc_auc"] == r.metrics["valid"]["roc_auc"]
    assert run.data.params["model.num_boost_round"] == "5"


def test_spark_driver_passes_cpus_and_gpus_together(capsys):
    """Ray on Spark refuses one of num_cpus/num_gpus_worker_node alone: both go, or neither."""
    spark = _load("examples/spark/train_on_spark.py")

    def size(*a):
        return spark._node_resources(spark._parser().parse_args(["s.yaml", "--output", "o", *a]))

    assert size() == (None, None)
    assert size("--cpus-per-node", "4") == (4, 0)
    assert size("--cpus-per-node", "4", "--gpus-per-node", "1") == (4, 1)
    assert "--gpus-per-node needs --cpus-per-node" in size("--gpus-per-node", "1")
    assert spark.main(["s.yaml", "--output", "o", "--gpus-per-node", "1"]) == 2
    assert "needs --cpus-per-node" in capsys.readouterr().err
