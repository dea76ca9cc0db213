"""``distml predict`` on the shared cluster: predictions equal the plain library's on the same
rows (xgboost; sklearn with categorical + scale; pca/kmeans), the input schema is checked
before scoring, unfinished runs are refused, and the output folder follows the ``_SUCCESS``
contract (idempotent reruns, no writing over foreign files)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

import distml
from distml.cli import main
from distml.errors import DataError
from distml.runtime.datasets import load_builtin
from distml.scoring import load_predictor, predict

pytestmark = pytest.mark.usefixtures("ray_cluster")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(out_dir) -> pd.DataFrame:
    files = sorted(p for p in os.listdir(out_dir) if p.endswith(".parquet"))
    return pd.concat([pd.read_parquet(os.path.join(out_dir, f)) for f in files], ignore_index=True)


@pytest.fixture(scope="module")
def xgb_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("xgb")
    r = distml.run(
        f"{ROOT}/jobs/quickstart.yaml", output=out / "runs", run_id="x1", model__num_boost_round=60
    )
    frame = load_builtin("breast_cancer").drop(columns=["target"])
    frame.insert(0, "row_id", np.arange(len(frame)) * 10)
    # two files, so the scoring runs in more than one task
    frame.iloc[:300].to_parquet(out / "a.parquet")
    frame.iloc[300:].to_parquet(out / "b.parquet")
    return r, out, frame


def test_xgboost_predictions_equal_the_booster(xgb_run, tmp_path, capfd):
    import xgboost as xgb

    r, data, frame = xgb_run
    code = main(
        [
            "predict",
            str(r.run_dir),
            "--input",
            f"{data}/*.parquet",
            "--output",
            str(tmp_path / "scores"),
            "--keep",
            "row_id",
            "--json",
            "--batch-size",
            "100",
        ]
    )
    payload = json.loads(capfd.readouterr().out)
    assert code == 0, payload
    assert payload["rows"] == len(frame) and payload["kind"] == "xgboost"
    assert payload["columns"] == ["row_id", "prediction", "proba_0", "proba_1"]
    out = _read(tmp_path / "scores")
    assert out["row_id"].tolist() == frame["row_id"].tolist()  # input order kept

    booster = xgb.Booster(model_file=str(r.run_dir / "model" / "model.ubj"))
    best = int(booster.attr("best_iteration"))
    p1 = booster.predict(xgb.DMatrix(frame.drop(columns=["row_id"])), iteration_range=(0, best + 1))
    np.testing.assert_allclose(out["proba_1"], p1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["proba_0"] + out["proba_1"], 1.0, atol=1e-6)
    assert out["prediction"].tolist() == (p1 >= 0.5).astype(int).tolist()

    marker = json.loads((tmp_path / "scores" / "_SUCCESS").read_text())
    assert marker["rows"] == len(frame) and marker["files"] == payload["files"]
    assert not [p for p in os.listdir(tmp_path / "scores") if p.startswith(".")]


def test_output_folder_contract(xgb_run, tmp_path):
    r, data, frame = xgb_run
    out = tmp_path / "scores"
    first = predict(r.run_dir, f"{data}/a.parquet", out, keep=["row_id"])
    assert first.rows == 300 and not first.reused
    again = predict(r.run_dir, f"{data}/a.parquet", out, keep=["row_id"])
    assert again.reused and again.files == first.files and again.rows == 300
    with pytest.raises(DataError, match="already holds finished predictions"):
        predict(r.run_dir, f"{data}/b.parquet", out, keep=["row_id"])
    other = predict(r.run_dir, f"{data}/b.parquet", out, keep=["row_id"], overwrite=True)
    assert other.rows == len(frame) - 300 and _read(out)["row_id"].iloc[0] == 3000
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="did not write"):
        predict(r.run_dir, f"{data}/a.parquet", foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_schema_is_checked_before_scoring(xgb_run, tmp_path, capfd):
    r, data, frame = xgb_run
    missing = frame.drop(columns=["mean_radius", "worst_area"])
    missing.to_parquet(tmp_path / "missing.parquet")
    code = main(
        [
            "predict",
            str(r.run_dir),
            "--input",
            str(tmp_path / "missing.parquet"),
            "--output",
            str(tmp_path / "o1"),
            "--json",
        ]
    )
    err = json.loads(capfd.readouterr().out)["error"]
    assert code == 2 and "2 columns of the model's training schema are missing" in err["message"]
    assert "'mean_radius'" in err["message"] and "'worst_area'" in err["message"]
    assert not (tmp_path / "o1" / "_SUCCESS").exists()

    wrong = frame.assign(**{"mean_radius": frame["mean_radius"].astype(str)})
    wrong.to_parquet(tmp_path / "wrong.parquet")
    with pytest.raises(DataError, match="column 'mean_radius' is numeric in the training data"):
        predict(r.run_dir, str(tmp_path / "wrong.parquet"), tmp_path / "o2")
    with pytest.raises(DataError, match=r"--keep: column \['nope'\] is not in"):
        predict(r.run_dir, f"{data}/a.parquet", tmp_path / "o3", keep=["nope"])
    # extra columns: ignored, or refused with --strict (row_id is not a feature)
    with pytest.raises(
        DataError,
        match=r"1 column of .* is not in the model's training schema "
        r"\(strict\): \['row_id'\]",
    ):
        predict(r.run_dir, f"{data}/a.parquet", tmp_path / "o4", strict=True)
    assert (
        predict(r.run_dir, f"{data}/a.parquet", tmp_path / "o4", strict=True, keep=["row_id"]).rows
        == 300
    )


def test_unfinished_or_unscorable_run_dirs_are_refused(xgb_run, tmp_path, capfd):
    import shutil

    r, data, _ = xgb_run
    unfinished = tmp_path / "unfinished"
    shutil.copytree(r.run_dir, unfinished)
    (unfinished / "_SUCCESS").unlink()
    code = main(
        [
            "predict",
            str(unfinished),
            "--input",
            f"{data}/a.parquet",
            "--output",
            str(tmp_path / "o"),
            "--json",
        ]
    )
    err = json.loads(capfd.readouterr().out)["error"]
    assert code == 2 and "has no _SUCCESS" in err["message"]
    for kind, expect in (
        ("statsmodels", "distml predict cannot score"),
        ("catboost", "which this distml does not have"),
    ):
        from distml.runtime.artifacts import RunDir

        fake = RunDir(tmp_path, "fake", kind)  # a finished run dir (digests) of that kind
        fake.prepare()
        fake.mark_success({"kind": kind})
        fake = fake.path
        with pytest.raises(DataError, match=expect):
            load_predictor(fake)


def _mixed_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "pro"], n)
    age = rng.integers(18, 80, n)
    income = rng.normal(50_000, 15_000, n)
    score = 0.03 * (age - 50) + (income - 50_000) / 20_000 + np.where(plan == "pro", 1.5, 0)
    label = np.where(score + rng.normal(0, 0.5, n) > 0, "yes", "no")
    return pd.DataFrame(
        {
            "customer": [f"c{i}" for i in range(n)],
            "age": age,
            "income": income,
            "plan": plan,
            "churned": label,
        }
    )


@pytest.mark.parametrize("estimator", ["logistic_regression", "hist_gradient_boosting_classifier"])
def test_sklearn_categorical_and_scaled_predictions_equal_the_estimator(tmp_path, estimator):
    import skops.io as sio

    train = _mixed_frame(600, 0)
    train.to_parquet(tmp_path / "train.parquet")
    spec = {
        "name": "churn",
        "kind": "sklearn",
        "data": {
            "source": str(tmp_path / "train.parquet"),
            "target": "churned",
            "exclude": ["customer"],
            "categorical": ["plan"],
        },
        "model": {
            "estimator": estimator,
            "scale": True,
            "params": {"max_iter": 200} if estimator == "logistic_regression" else {},
        },
    }
    r = distml.run(spec, output=tmp_path / "runs")
    # new rows: another column order, an unseen plan level, an extra column, as CSV
    new = _mixed_frame(250, 1)
    new.loc[:4, "plan"] = "enterprise"
    new = new[["income", "plan", "customer", "age"]].assign(extra=1.0)
    new.to_csv(tmp_path / "new.csv", index=False)
    p = predict(r.run_dir, str(tmp_path / "new.csv"), tmp_path / "scores", keep=["customer"])
    out = _read(tmp_path / "scores")
    assert p.columns == ["customer", "prediction", "proba_no", "proba_yes"]
    assert out["customer"].tolist() == new["customer"].tolist()

    # the plain library on the same rows, encoded by hand as training did
    est = sio.load(
        r.run_dir / "model" / "model.skops",
        trusted=sio.get_untrusted_types(file=r.run_dir / "model" / "model.skops"),
    )
    scaler = json.loads((r.run_dir / "model" / "scaler.json").read_text())
    X = new[["age", "income", "plan"]].copy()
    levels = ["basic", "plus", "pro"]
    X["plan"] = pd.Categorical(
        X["plan"].where(X["plan"].isin(levels)).astype(object), categories=levels
    )
    if estimator == "logistic_regression":
        X = pd.get_dummies(X, columns=["plan"], prefix_sep="=", dtype=np.float64)
    for c, (mu, sd) in scaler.items():
        X[c] = (X[c] - mu) / sd
    proba = est.predict_proba(X)
    np.testing.assert_allclose(
        out[["proba_no", "proba_yes"]].to_numpy(), proba, rtol=1e-9, atol=1e-12
    )
    assert out["prediction"].tolist() == np.array(["no", "yes"])[proba.argmax(axis=1)].tolist()


def test_sklearn_regression_from_builtin_input(tmp_path):
    r = distml.run(f"{ROOT}/jobs/sklearn_diabetes.yaml", output=tmp_path / "runs")
    p = predict(r.run_dir, "builtin:diabetes", tmp_path / "scores")
    out = _read(tmp_path / "scores")
    assert p.columns == ["prediction"] and len(out) == 442
    # the run's own metrics: r2 on its valid rows is reproduced from the scored file
    frame = load_builtin("diabetes")
    resid = frame["target"] - out["prediction"]
    assert 1 - (resid**2).sum() / ((frame["target"] - frame["target"].mean()) ** 2).sum() > 0.4


@pytest.mark.parametrize("kind", ["pca", "kmeans"])
def test_pca_and_kmeans_predict_equal_their_models(tmp_path, kind):
    from distml.jobs import kind_module

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(3000, 5)), columns=[f"x{i}" for i in range(5)])
    frame["x1"] += 3 * (rng.random(3000) > 0.5)
    frame.insert(0, "key", np.arange(3000))
    frame.to_parquet(tmp_path / "d.parquet")
    model = (
        {"n_components": 3, "whiten": True, "scale": True}
        if kind == "pca"
        else {"n_clusters": 3, "batch_size": 512, "seed": 1, "scale": True}
    )
    r = distml.run(
        {
            "name": f"{kind}-p",
            "kind": kind,
            "data": {"source": str(tmp_path / "d.parquet"), "exclude": ["key"]},
            "model": model,
        },
        output=tmp_path / "runs",
    )
    p = predict(r.run_dir, str(tmp_path / "d.parquet"), tmp_path / "scores", keep=["key"])
    out = _read(tmp_path / "scores")
    expected = kind_module(kind).predict(r.run_dir, frame)
    assert p.columns == ["key", *expected.columns] and out["key"].tolist() == list(range(3000))
    np.testing.assert_allclose(
        out[list(expected.columns)].to_numpy(), expected.to_numpy(), rtol=1e-10, atol=1e-10
    )


def test_tuned_run_predicts_with_its_refitted_model(tmp_path):
    """A tuned xgboost run: its model is the best configuration's refit; predict scores with it."""
    import xgboost as xgb

    assert os.path.isfile(f"{ROOT}/jobs/tune_xgboost.yaml"), "jobs/tune_xgboost.yaml is gone"
    r = distml.run(
        f"{ROOT}/jobs/tune_xgboost.yaml",
        output=tmp_path / "runs",
        tune__num_samples=3,
        tune__search="random",
        tune__scheduler="none",
    )
    assert r.best_config
    p = predict(r.run_dir, "builtin:breast_cancer", tmp_path / "scores")
    out = _read(tmp_path / "scores")
    frame = load_builtin("breast_cancer").drop(columns=["target"])
    booster = xgb.Booster(model_file=str(r.run_dir / "model" / "model.ubj"))
    np.testing.assert_allclose(
        out["proba_1"], booster.predict(xgb.DMatrix(frame)), rtol=1e-6, atol=1e-7
    )
    assert p.rows == len(frame)


def test_torch_user_module_scores_only_with_allow_module(tmp_path, capfd):
    """Training with ``module:`` in the spec is the opt-in there; scoring the run directory is
    not: its module loads only when the person scoring names it (``--allow-module``)."""
    import torch  # the `torch` extra: `make test` installs it

    spec = {
        "name": "linear-net",
        "kind": "torch",
        "data": {
            "source": "builtin:breast_cancer",
            "target": "target",
            "split": {"test": 0.2, "seed": 0},
        },
        "model": {
            "module": "torch.nn:Linear",
            "module_args": {"bias": True},
            "epochs": 2,
            "batch_size": 64,
        },
        "output": {"dir": str(tmp_path / "runs")},
    }
    r = distml.run(spec)
    frame = load_builtin("breast_cancer")
    with pytest.raises(DataError, match="--allow-module torch.nn:Linear"):
        predict(r.run_dir, "builtin:breast_cancer", tmp_path / "refused")
    assert not (tmp_path / "refused" / "_SUCCESS").exists()
    code = main(
        [
            "predict",
            str(r.run_dir),
            "--input",
            "builtin:breast_cancer",
            "--output",
            str(tmp_path / "refused-cli"),
        ]
    )
    err = capfd.readouterr().err
    assert code == 2 and "model.module" in err and "Traceback" not in err

    p = predict(
        r.run_dir, "builtin:breast_cancer", tmp_path / "scores", allow_module=["torch.nn:Linear"]
    )
    assert p.rows == len(frame)
    code = main(
        [
            "predict",
            str(r.run_dir),
            "--input",
            "builtin:breast_cancer",
            "--output",
            str(tmp_path / "scores-cli"),
            "--allow-module",
            "torch.nn:Linear",
            "--json",
        ]
    )
    assert code == 0, capfd.readouterr()
    # the scores are the saved Linear layer's on the saved input scaling
    from distml.jobs.torch.saved import load_model

    fitted = load_model(r.run_dir, allow_module=("torch.nn:Linear",))
    assert isinstance(fitted.net, torch.nn.Linear)
    _, proba = fitted.outputs(frame.drop(columns=["target"]))
    out = _read(tmp_path / "scores")
    np.testing.assert_allclose(out["proba_1"], proba[:, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        _read(tmp_path / "scores-cli")["proba_1"], proba[:, 1], rtol=1e-5, atol=1e-6
    )
