"""MLflow tracking (distml.runtime.tracking) against a local file store; no cluster."""

from __future__ import annotations

import builtins
import json

import pytest
import yaml

from distml.errors import MissingDependency, SpecError
from distml.result import Result
from distml.runtime import tracking
from distml.runtime.artifacts import RunDir


def _finished_run(tmp_path) -> Result:
    rd = RunDir(tmp_path / "runs", "churn", "r1")
    rd.prepare()
    rd.write_yaml(
        "spec.yaml",
        {
            "name": "churn",
            "kind": "xgboost",
            "data": {"source": "builtin:iris", "target": "target"},
            "model": {"params": {"max_depth": 4, "eta": 0.1}, "num_boost_round": 20},
        },
    )
    rd.write_json(
        "manifest.json", {"name": "churn", "kind": "xgboost", "run_id": "r1", "status": "succeeded"}
    )
    rd.write_json(
        "metrics.json",
        {
            "train": {"accuracy": 1.0},
            "valid": {"roc_auc": 0.97},
            "cv": {"mean": {"f1": 0.9}, "folds": [{"f1": 0.8}]},
            "best_iteration": 12,
            "converged": True,
            "note": "x",
            "nan": None,
        },
    )
    rd.write_bytes("model/model.ubj", b"\x00model")
    rd.write_parquet(
        "tables/feature_importance.parquet",
        __import__("pandas").DataFrame({"feature": ["a"], "importance": [1.0]}),
    )
    rd.mark_success()
    return Result.load(rd.path)


def test_flatten_metrics_and_params():
    assert tracking.metric_items(
        {"valid": {"auc": 0.9, "n": 3}, "ok": True, "l": [1], "bad": float("nan")}
    ) == {"valid.auc": 0.9, "valid.n": 3.0}
    params = tracking.param_items(
        {"model": {"params": {"max_depth": 4}, "hidden": [8, 4]}, "name": "x", "long": "y" * 7000}
    )
    assert params["model.params.max_depth"] == "4" and params["model.hidden"] == "[8, 4]"
    assert params["name"] == "x" and len(params["long"]) == 6000


def test_config_shapes():
    assert tracking._config({"mlflow": {"uri": "file:///x"}})["experiment"] == "distml"
    with pytest.raises(SpecError, match="tracking.mlflow.uri is required"):
        tracking._config({"mlflow": {"experiment": "e"}})


def test_missing_mlflow_has_an_install_hint(monkeypatch, tmp_path):
    real = builtins.__import__

    def no_mlflow(name, *a, **k):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(MissingDependency, match=r'pip install "distml\[tracking\]"'):
        tracking.log_result(object(), {"uri": "file:///x", "experiment": "e"})


def test_log_result_to_a_file_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient  # the `tracking` extra: `make test` installs it

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    result = _finished_run(tmp_path)
    uri = (tmp_path / "mlruns").as_uri()
    rid = tracking.log_result(
        result, {"mlflow": {"uri": uri, "experiment": "churn", "tags": {"team": "growth"}}}
    )
    client = MlflowClient(uri)
    run = client.get_run(rid)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {
        "train.accuracy": 1.0,
        "valid.roc_auc": 0.97,
        "cv.mean.f1": 0.9,
        "best_iteration": 12.0,
    }
    assert run.data.params["model.params.max_depth"] == "4"
    assert run.data.params["data.source"] == "builtin:iris"
    assert run.data.tags["distml.run_id"] == "r1" and run.data.tags["team"] == "growth"
    assert run.data.tags["distml.run_dir"] == str(result.run_dir)
    listed = {a.path for a in client.list_artifacts(rid, "distml_run")}
    assert {
        "distml_run/metrics.json",
        "distml_run/spec.yaml",
        "distml_run/model",
        "distml_run/tables",
        "distml_run/_SUCCESS",
    } <= listed
    model = [a.path for a in client.list_artifacts(rid, "distml_run/model")]
    assert model == ["distml_run/model/model.ubj"]
    # the same distml run again: found by its tags, not logged twice
    assert tracking.log_result(result, {"uri": uri, "experiment": "churn"}) == rid
    exp = client.get_experiment_by_name("churn")
    assert len(client.search_runs([exp.experiment_id])) == 1
    json.dumps(run.data.params)  # plain strings


@pytest.fixture
def distml_log():
    """Records of the "distml" logger (the CLI may have turned its propagation off)."""
    import logging

    records: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda r: records.append(r.getMessage())
    logger = logging.getLogger("distml")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_tracking_failure_is_a_warning(tmp_path, distml_log):
    import mlflow  # noqa: F401 - the `tracking` extra: `make test` installs it

    result = _finished_run(tmp_path)
    (tmp_path / "blocked").write_text("a file where the store's folder would go")
    assert (
        tracking.log_result_safely(
            result, {"uri": (tmp_path / "blocked").as_uri(), "experiment": "e"}
        )
        is None
    )
    assert any("could not log run churn/r1 to MLflow" in m for m in distml_log)
    assert yaml.safe_load((result.run_dir / "spec.yaml").read_text())["name"] == "churn"


def _hide_mlflow(monkeypatch):
    """As if MLflow were not installed: the import fails and the package is not found."""
    import importlib.util

    real_import, real_find = builtins.__import__, importlib.util.find_spec

    def no_mlflow(name, *a, **k):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlflow" else real_find(name, *a),
    )


def test_missing_mlflow_fails_at_validation_not_after_success(monkeypatch, tmp_path, capsys):
    """`tracking.mlflow` without MLflow: exit 2 with the install hint from `validate` and `run`,
    before any run directory (let alone _SUCCESS) exists; without tracking nothing changes."""
    from distml.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: tr\nkind: xgboost\ndata: {source: builtin:iris, target: target}\n"
        "model: {num_boost_round: 2}\n"
        f"tracking: {{mlflow: {{uri: '{(tmp_path / 'mlruns').as_uri()}'}}}}\n"
    )
    _hide_mlflow(monkeypatch)
    for argv in (
        ["validate", str(spec)],
        ["run", str(spec), "--output", str(tmp_path / "runs"), "--run-id", "t1"],
    ):
        assert main([*argv, "--json"]) == 2
        err = json.loads(capsys.readouterr().out)["error"]
        assert err["type"] == "MissingDependency" and "tracking.mlflow" in err["message"]
        assert 'pip install "distml[tracking]"' in err["message"]
    assert not (tmp_path / "runs").exists()
    # the client of `submit` checks the spec only: MLflow may be on the cluster, not here
    assert main(["validate", str(spec), "--no-data", "--json"]) == 0
    capsys.readouterr()
    plain = tmp_path / "plain.yaml"
    plain.write_text("name: p\nkind: xgboost\ndata: {source: builtin:iris, target: target}\n")
    assert main(["validate", str(plain), "--json"]) == 0


@pytest.mark.parametrize("before", [None, "false", "true"])
def test_file_store_permission_is_scoped_to_the_logging_call(tmp_path, monkeypatch, before):
    """MLFLOW_ALLOW_FILE_STORE is set only while a file store is written, then restored."""
    import os

    import mlflow  # noqa: F401 - the `tracking` extra: `make test` installs it

    seen = {}
    real = tracking._log_result

    def spy(*a, **k):
        seen["during"] = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
        return real(*a, **k)

    monkeypatch.setattr(tracking, "_log_result", spy)
    if before is None:
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", before)
    uri = (tmp_path / "mlruns").as_uri()
    try:
        tracking.log_result(_finished_run(tmp_path), {"uri": uri, "experiment": "e"})
    except Exception:  # MLflow itself refuses the file store when the user said "false"
        assert before == "false"
    assert seen["during"] == (before or "true")  # a value the user set is theirs
    assert os.environ.get("MLFLOW_ALLOW_FILE_STORE") == before
