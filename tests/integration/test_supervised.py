"""sklearn and xgboost kinds end to end on the shared cluster, compared with the plain libraries."""

from __future__ import annotations

import json

import numpy as np
import pytest

import distml
from distml.runtime.data import split_indices
from distml.spec import load_spec

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _bc_frame():
    from distml.runtime.datasets import load_builtin

    return load_builtin("breast_cancer")


def plain_xgboost(spec, X, y, parts):
    """``xgboost.train`` as ``spec`` (an xgboost spec) asks, on the ``parts`` train rows with
    the valid rows watched: what a plain script fits, to compare distml's run with."""
    import xgboost as xgb

    params = dict(spec.model.params, nthread=1, seed=0)
    dtrain = xgb.DMatrix(X.iloc[parts["train"]], label=y[parts["train"]])
    dvalid = xgb.DMatrix(X.iloc[parts["valid"]], label=y[parts["valid"]])
    return xgb.train(
        params,
        dtrain,
        spec.model.num_boost_round,
        evals=[(dtrain, "train"), (dvalid, "valid")],
        early_stopping_rounds=spec.model.early_stopping_rounds,
        verbose_eval=False,
    )


def test_quickstart_matches_plain_xgboost(tmp_path, project_root):
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    r = distml.run(f"{project_root}/jobs/quickstart.yaml", output=tmp_path)
    assert r.status == "succeeded" and (r.run_dir / "_SUCCESS").is_file()
    spec = load_spec(f"{project_root}/jobs/quickstart.yaml")
    df = _bc_frame()
    X, y = df.drop(columns="target"), df["target"].to_numpy()
    parts = split_indices(y, spec.data.split_spec, classification=True)
    bst = plain_xgboost(spec, X, y, parts)
    rng = (0, bst.best_iteration + 1)
    for split in ("valid", "test"):
        p = bst.predict(xgb.DMatrix(X.iloc[parts[split]]), iteration_range=rng)
        # Same rows, same params, same seed: the same model, to rounding.
        assert r.metrics[split]["roc_auc"] == pytest.approx(
            roc_auc_score(y[parts[split]], p), abs=1e-12
        )
    assert r.metrics["best_iteration"] == bst.best_iteration
    # Loading the saved model gives the same predictions.
    saved = xgb.Booster(model_file=str(r.run_dir / "model" / "model.ubj"))
    np.testing.assert_allclose(
        saved.predict(xgb.DMatrix(X.iloc[parts["test"]]), iteration_range=rng),
        bst.predict(xgb.DMatrix(X.iloc[parts["test"]]), iteration_range=rng),
        rtol=1e-6,
    )
    imp = r.tables["feature_importance"]
    assert list(imp.columns) == ["feature", "importance"] and len(imp) == 30
    assert imp["importance"].max() > 0
    cm = r.tables["confusion_matrix"]
    assert set(cm["split"]) == {"train", "valid", "test"}
    assert cm[cm.split == "test"]["count"].sum() == len(parts["test"])
    curve = r.tables["learning_curve"]
    assert set(curve["split"]) == {"train", "valid"} and set(curve["metric"]) == {"auc", "logloss"}


def test_run_directory_contract(tmp_path, project_root):
    r = distml.run(f"{project_root}/jobs/quickstart.yaml", output=tmp_path, run_id="fixed-1")
    d = r.run_dir
    assert d == (tmp_path / "quickstart" / "fixed-1").resolve()
    for name in (
        "spec.yaml",
        "manifest.json",
        "metrics.json",
        "run.log",
        "_SUCCESS",
        "model/model.ubj",
        "model/schema.json",
        "tables/feature_importance.parquet",
    ):
        assert (d / name).is_file(), name
    assert not [p for p in d.rglob("*") if ".tmp-" in p.name]
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert manifest["execution"]["path"] == "single_task"
    assert manifest["data"]["source"]["rows"] == 569
    assert {"ray", "xgboost", "python"} <= set(manifest["versions"])
    assert manifest["cluster"]["mode"] == "existing"
    metrics = json.loads((d / "metrics.json").read_text())
    assert set(metrics) >= {"train", "valid", "test"}
    assert set(metrics["valid"]) == {"accuracy", "precision", "recall", "f1", "roc_auc", "logloss"}
    # _SUCCESS is the last file written.
    success = (d / "_SUCCESS").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= success for p in d.rglob("*") if p.is_file())
    # A rerun with the same id is a no-op that reports the stored result.
    before = {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}
    again = distml.run(f"{project_root}/jobs/quickstart.yaml", output=tmp_path, run_id="fixed-1")
    assert again.reused and again.metrics == r.metrics
    assert before == {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}


def test_overrides_reach_the_model(tmp_path, project_root):
    r = distml.run(
        f"{project_root}/jobs/quickstart.yaml",
        ["model.num_boost_round=3"],
        output=tmp_path,
        model__early_stopping_rounds=None,
    )
    assert r.metrics["num_boosted_rounds"] == 3
    import yaml

    spec = yaml.safe_load((r.run_dir / "spec.yaml").read_text())
    assert spec["model"]["num_boost_round"] == 3


@pytest.mark.parametrize(
    "estimator,cls_path,builtin",
    [
        ("random_forest_classifier", "sklearn.ensemble.RandomForestClassifier", "wine"),
        ("logistic_regression", "sklearn.linear_model.LogisticRegression", "breast_cancer"),
        ("ridge", "sklearn.linear_model.Ridge", "diabetes"),
        (
            "sklearn.ensemble.HistGradientBoostingRegressor",
            "sklearn.ensemble.HistGradientBoostingRegressor",
            "diabetes",
        ),
    ],
)
def test_sklearn_matches_plain_estimator(tmp_path, estimator, cls_path, builtin):
    import importlib

    import skops.io as sio
    from sklearn import metrics as skm

    from distml.runtime.datasets import load_builtin

    params = {"random_state": 0} if "Ridge" not in cls_path else {"alpha": 0.5}
    if "Logistic" in cls_path:
        params["max_iter"] = 5000
    spec = {
        "name": "sk",
        "kind": "sklearn",
        "data": {
            "source": f"builtin:{builtin}",
            "target": "target",
            "split": {"valid": 0.3, "seed": 3},
        },
        "model": {"estimator": estimator, "params": params},
    }
    r = distml.run(spec, output=tmp_path)
    df = load_builtin(builtin)
    X, y = df.drop(columns="target"), df["target"].to_numpy()
    classification = "Classifier" in cls_path or "Logistic" in cls_path
    parts = split_indices(y, load_spec(spec).data.split_spec, classification=classification)
    mod, _, name = cls_path.rpartition(".")
    est = getattr(importlib.import_module(mod), name)(**params).fit(
        X.iloc[parts["train"]], y[parts["train"]]
    )
    pred = est.predict(X.iloc[parts["valid"]])
    if classification:
        assert r.metrics["valid"]["accuracy"] == pytest.approx(
            skm.accuracy_score(y[parts["valid"]], pred), abs=1e-12
        )
    else:
        assert r.metrics["valid"]["rmse"] == pytest.approx(
            skm.root_mean_squared_error(y[parts["valid"]], pred), rel=1e-9
        )
    loaded = sio.load(
        r.run_dir / "model" / "model.skops",
        trusted=sio.get_untrusted_types(file=r.run_dir / "model" / "model.skops"),
    )
    np.testing.assert_allclose(loaded.predict(X.iloc[parts["valid"]]), pred)


def test_cross_validation_in_parallel(tmp_path, project_root):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from distml.runtime.datasets import load_builtin

    r = distml.run(f"{project_root}/jobs/sklearn_iris.yaml", output=tmp_path)
    cv = r.metrics["cv"]
    assert len(cv["folds"]) == 5 and set(cv) == {"folds", "mean", "std"}
    spec = load_spec(f"{project_root}/jobs/sklearn_iris.yaml")
    df = load_builtin("iris")
    X, y = df.drop(columns="target"), df["target"].to_numpy()
    parts = split_indices(y, spec.data.split_spec, classification=True)
    assert set(parts) == {"train", "test"}
    skf = StratifiedKFold(5, shuffle=True, random_state=spec.data.split_spec.seed)
    plain = cross_val_score(
        RandomForestClassifier(**spec.model.params),
        X.iloc[parts["train"]],
        y[parts["train"]],
        cv=skf,
        scoring="accuracy",
    )
    assert [f["accuracy"] for f in cv["folds"]] == pytest.approx(list(plain), abs=1e-12)
    assert cv["mean"]["accuracy"] == pytest.approx(plain.mean())
    assert "test" in r.metrics and "valid" not in r.metrics
    assert r.manifest["execution"]["path"] == "cv_tasks"


def test_categorical_and_test_source(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 600
    plan = rng.choice(["basic", "plus", "pro"], n)
    x = rng.normal(size=n)
    y = ((plan == "pro") | (x > 1)).astype(int)
    df = pd.DataFrame({"customer_id": np.arange(n), "plan": plan, "x": x, "churned": y})
    df.iloc[:450].to_parquet(tmp_path / "train.parquet")
    df.iloc[450:].to_csv(tmp_path / "test.csv", index=False)
    base = {
        "kind": "xgboost",
        "data": {
            "source": str(tmp_path / "train.parquet"),
            "test_source": str(tmp_path / "test.csv"),
            "target": "churned",
            "exclude": ["customer_id"],
        },
        "model": {
            "params": {"objective": "binary:logistic", "max_depth": 3},
            "num_boost_round": 30,
        },
    }
    r = distml.run({**base, "name": "cat-xgb"}, output=tmp_path / "runs")
    assert r.metrics["test"]["accuracy"] > 0.95
    schema = json.loads((r.run_dir / "model" / "schema.json").read_text())
    assert schema["categorical"] == {"plan": ["basic", "plus", "pro"]}
    assert schema["features"] == ["plan", "x"]
    sk = {
        **base,
        "name": "cat-sk",
        "kind": "sklearn",
        "model": {"estimator": "logistic_regression", "params": {"max_iter": 1000}},
    }
    r2 = distml.run(sk, output=tmp_path / "runs")
    assert r2.metrics["test"]["accuracy"] > 0.9
    feats = set(r2.tables["feature_importance"]["feature"])
    assert {"plan=basic", "plan=plus", "plan=pro", "x"} == feats


def test_multiclass_and_regression_metrics(tmp_path):
    r = distml.run(
        {
            "name": "wine",
            "kind": "xgboost",
            "data": {"source": "builtin:wine", "target": "target"},
            "model": {"num_boost_round": 20},
        },
        output=tmp_path,
    )
    assert r.manifest["task"] == "classification" and r.manifest["task_inferred"]
    assert r.metrics["valid"]["roc_auc"] > 0.9
    r = distml.run(
        {
            "name": "diab",
            "kind": "xgboost",
            "data": {"source": "builtin:diabetes", "target": "target", "split": "none"},
            "model": {"num_boost_round": 20},
        },
        output=tmp_path,
    )
    assert set(r.metrics) >= {"train"} and "valid" not in r.metrics
    assert set(r.metrics["train"]) == {"rmse", "mae", "r2"}


def test_fit_error_is_job_failed(tmp_path):
    spec = {
        "name": "bad",
        "kind": "xgboost",
        "data": {"source": "builtin:iris", "target": "target"},
        "model": {"params": {"objective": "binary:logistic"}},
    }  # 3 classes: xgboost refuses
    with pytest.raises(distml.JobFailed) as e:
        distml.run(spec, output=tmp_path, run_id="r1")
    assert "xgboost fit failed" in str(e.value)
    d = tmp_path / "bad" / "r1"
    assert not (d / "_SUCCESS").exists()
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["type"] == "JobFailed"
    assert (d / "run.log").is_file()
