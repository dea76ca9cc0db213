"""Kind ``lightgbm`` end to end on the shared cluster, compared with plain ``lightgbm.train`` on
the same rows with the same params: predictions, early stopping, gain importance, the saved
text model, ``distml predict``, per-round search reports and ASHA, bad parameters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import distml
from distml.cli import main
from distml.runtime.data import split_indices
from distml.runtime.datasets import load_builtin
from distml.spec import load_spec

pytestmark = pytest.mark.usefixtures("ray_cluster")
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "jobs" / "lightgbm_breast_cancer.yaml"
#: fixed threads and deterministic histograms: distml's fit and the plain one are the same model
SAME = {"num_threads": 1, "deterministic": True, "seed": 7, "verbosity": -1}


def _plain(
    params: dict, X: pd.DataFrame, y: np.ndarray, parts: dict, rounds: int, early: int | None = None
):
    """``lightgbm.train`` as a user would call it: the train split, early stopping on valid."""
    import lightgbm as lgb

    dtrain = lgb.Dataset(X.iloc[parts["train"]], label=y[parts["train"]])
    sets, names = [dtrain], ["train"]
    if "valid" in parts:
        sets.append(lgb.Dataset(X.iloc[parts["valid"]], label=y[parts["valid"]], reference=dtrain))
        names.append("valid")
    history: dict = {}
    callbacks = [lgb.record_evaluation(history)]
    if early:
        callbacks.append(lgb.early_stopping(early, verbose=False))
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=rounds,
        valid_sets=sets,
        valid_names=names,
        callbacks=callbacks,
    )
    return booster, history


def _test_rows(r, split: str = "test") -> pd.DataFrame:
    p = r.tables["predictions"]
    return p[p.split == split].sort_values("row")


@pytest.mark.parametrize(
    "builtin,objective,task",
    [
        ("breast_cancer", "binary", "classification"),
        ("iris", "multiclass", "classification"),
        ("diabetes", "regression", "regression"),
    ],
)
def test_fit_predictions_and_importance_equal_plain_lightgbm(tmp_path, builtin, objective, task):
    from distml.jobs.lightgbm import Job

    params = {
        "objective": objective,
        "num_leaves": 7,
        "learning_rate": 0.1,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "feature_fraction": 0.9,
        **SAME,
    }
    if objective == "multiclass":
        params["num_class"] = 3
    spec = {
        "name": f"lgb-{builtin}",
        "kind": "lightgbm",
        "data": {
            "source": f"builtin:{builtin}",
            "target": "target",
            "split": {"valid": 0.2, "test": 0.2, "seed": 5},
        },
        "model": {"params": params, "num_boost_round": 25},
    }
    r = distml.run(spec, output=tmp_path)
    assert r.status == "succeeded" and r.manifest["task"] == task
    import lightgbm as lgb

    assert r.manifest["versions"]["lightgbm"] == lgb.__version__  # the kind declares its library
    df = load_builtin(builtin)
    X, y = df.drop(columns="target"), df["target"].to_numpy()
    parts = split_indices(
        y, load_spec(spec).data.split_spec, classification=task == "classification"
    )
    booster, history = _plain(params, X, y, parts, 25)
    rows = _test_rows(r)
    assert rows["row"].tolist() == sorted(parts["test"])
    expected = booster.predict(X.iloc[np.sort(parts["test"])])
    if task == "classification":
        got = rows[[c for c in rows.columns if c.startswith("proba_")]].to_numpy()
        expected = expected if expected.ndim == 2 else np.column_stack([1 - expected, expected])
    else:
        got = rows["y_pred"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # the learning curve is LightGBM's own evaluation history
    curve = r.tables["learning_curve"]
    for split, by_metric in history.items():
        for metric, values in by_metric.items():
            mine = curve[(curve.split == split) & (curve.metric == metric)]["value"]
            np.testing.assert_allclose(mine.to_numpy(), values, rtol=0, atol=1e-12)
    # importance: LightGBM's gain, in the feature order
    imp = r.tables["feature_importance"]
    assert imp["feature"].tolist() == list(X.columns)
    np.testing.assert_array_equal(
        imp["importance"].to_numpy(), booster.feature_importance(importance_type="gain")
    )
    # the saved model is LightGBM's text model and predicts the same
    text = (r.run_dir / "model" / "model.txt").read_text()
    assert text.startswith("tree\n")
    schema = json.loads((r.run_dir / "model" / "schema.json").read_text())
    saved = Job.load_model(r.run_dir, load_spec(spec), schema)
    np.testing.assert_allclose(saved.predict(X), booster.predict(X), rtol=0, atol=1e-12)
    assert r.metrics["num_boosted_rounds"] == 25 and "best_iteration" not in r.metrics


def test_early_stopping_stops_where_lightgbm_stops(tmp_path):
    spec = load_spec(
        EXAMPLE,
        {
            "model.params.num_threads": 1,
            "model.params.deterministic": True,
            "model.params.learning_rate": 0.3,
        },
    )
    r = distml.run(spec, output=tmp_path)
    df = load_builtin("breast_cancer")
    X, y = df.drop(columns="target"), df["target"].to_numpy()
    parts = split_indices(y, spec.data.split_spec, classification=True)
    params = {**spec.model.params, "verbosity": -1}
    booster, history = _plain(
        params, X, y, parts, spec.model.num_boost_round, early=spec.model.early_stopping_rounds
    )
    rounds = len(history["valid"]["auc"])
    assert rounds < spec.model.num_boost_round  # it did stop early
    assert r.metrics["best_iteration"] == booster.best_iteration
    assert r.metrics["num_boosted_rounds"] == rounds
    assert r.tables["learning_curve"]["iteration"].max() == rounds - 1
    # the model (and every metric) is the best iteration's, as LightGBM predicts by default
    for split in ("valid", "test"):
        rows = _test_rows(r, split)
        np.testing.assert_allclose(
            rows["proba_1"].to_numpy(),
            booster.predict(X.iloc[rows["row"].to_numpy()]),
            rtol=0,
            atol=1e-12,
        )


def test_categorical_columns_are_native_categories(tmp_path):
    rng = np.random.default_rng(0)
    n = 500
    plan = rng.choice(["basic", "plus", "pro"], n)
    x = rng.normal(size=n)
    y = ((plan == "pro") | (x > 1)).astype(int)
    pd.DataFrame({"plan": plan, "x": x, "churned": y}).to_parquet(tmp_path / "d.parquet")
    params = {"objective": "binary", "min_data_in_leaf": 5, **SAME}
    spec = {
        "name": "lgb-cat",
        "kind": "lightgbm",
        "data": {
            "source": str(tmp_path / "d.parquet"),
            "target": "churned",
            "split": {"valid": 0.25, "seed": 2},
        },
        "model": {"params": params, "num_boost_round": 15},
    }
    r = distml.run(spec, output=tmp_path / "runs")
    schema = json.loads((r.run_dir / "model" / "schema.json").read_text())
    assert schema["categorical"] == {"plan": ["basic", "plus", "pro"]}
    X = pd.DataFrame({"plan": pd.Categorical(plan, categories=["basic", "plus", "pro"]), "x": x})
    parts = split_indices(y, load_spec(spec).data.split_spec, classification=True)
    booster, _ = _plain(params, X, y, parts, 15)
    text = (r.run_dir / "model" / "model.txt").read_text()
    assert 'pandas_categorical:[["basic", "plus", "pro"]]' in text  # LightGBM's own categories
    rows = _test_rows(r, "valid")
    np.testing.assert_allclose(
        rows["proba_1"].to_numpy(),
        booster.predict(X.iloc[rows["row"].to_numpy()]),
        rtol=0,
        atol=1e-12,
    )
    assert r.metrics["valid"]["accuracy"] > 0.95


def test_distml_predict_equals_the_model(tmp_path, capfd):
    import lightgbm as lgb

    r = distml.run(EXAMPLE, output=tmp_path / "runs", run_id="p1")
    frame = load_builtin("breast_cancer").drop(columns=["target"])
    frame.insert(0, "row_id", np.arange(len(frame)))
    frame.iloc[:300].to_parquet(tmp_path / "a.parquet")
    frame.iloc[300:].to_parquet(tmp_path / "b.parquet")
    code = main(
        [
            "predict",
            str(r.run_dir),
            "--input",
            f"{tmp_path}/*.parquet",
            "--output",
            str(tmp_path / "scores"),
            "--keep",
            "row_id",
            "--json",
        ]
    )
    payload = json.loads(capfd.readouterr().out)
    assert code == 0, payload
    assert payload["kind"] == "lightgbm" and payload["rows"] == len(frame)
    assert payload["columns"] == ["row_id", "prediction", "proba_0", "proba_1"]
    out = pd.concat(
        [pd.read_parquet(p) for p in sorted((tmp_path / "scores").glob("*.parquet"))],
        ignore_index=True,
    )
    assert out["row_id"].tolist() == frame["row_id"].tolist()
    booster = lgb.Booster(model_file=str(r.run_dir / "model" / "model.txt"))
    p1 = booster.predict(frame.drop(columns=["row_id"]))
    np.testing.assert_allclose(out["proba_1"], p1, rtol=0, atol=1e-12)
    assert out["prediction"].tolist() == (p1 > 0.5).astype(int).tolist()


def test_load_model_refuses_missing_and_damaged_files(tmp_path):
    import lightgbm as lgb

    from distml.errors import DataError
    from distml.jobs.lightgbm import Job

    spec = load_spec(EXAMPLE)
    schema = {"features": ["a", "b"], "task": "classification", "classes": [0, 1]}
    (tmp_path / "model").mkdir()
    with pytest.raises(DataError, match=r"model/model.txt is missing") as e:
        Job.load_model(tmp_path, spec, schema)
    assert str(tmp_path) in str(e.value)
    (tmp_path / "model" / "model.txt").write_bytes(b"\xff\xfe not text")
    with pytest.raises(DataError, match="model/model.txt is unreadable"):
        Job.load_model(tmp_path, spec, schema)
    (tmp_path / "model" / "model.txt").write_text('{"not": "a model"}')
    with pytest.raises(DataError, match="is not a LightGBM text model"):
        Job.load_model(tmp_path, spec, schema)
    (tmp_path / "model" / "model.txt").write_text("tree\nversion=v4\n")
    with pytest.raises(DataError, match="is not a readable LightGBM model"):
        Job.load_model(tmp_path, spec, schema)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1},
        lgb.Dataset(X, label=(X[:, 0] > 0).astype(int)),
        num_boost_round=2,
    )
    (tmp_path / "model" / "model.txt").write_text(booster.model_to_string())
    with pytest.raises(DataError, match="takes 3 features; model/schema.json lists 2"):
        Job.load_model(tmp_path, spec, schema)
    assert Job.load_model(tmp_path, spec, {**schema, "features": ["a", "b", "c"]}) is not None


class _Session:
    """What a trial's ``tune_trial`` reports to (the searched metric's split and name)."""

    def __init__(self, metric: str):
        self.split, self.metric_name = metric.split(".")
        self.restored = None
        self.reports: list[tuple[int, dict, bool]] = []

    def report(self, iteration, metrics, *, final=False, files=None, state=None, send=True):
        self.reports.append((iteration, dict(metrics), final))

    def keep(self, metrics, build):
        """As the real session, offered the trial's output before its final report: build it
        (so the kept output of a lightgbm trial is exercised) and keep it."""
        self.kept = (dict(metrics), build())
        return True


@pytest.mark.parametrize(
    "metric,lgb_metric",
    [
        ("valid.logloss", "binary_logloss"),
        ("valid.roc_auc", "auc"),
        ("valid.accuracy", "binary_error"),
    ],
)
def test_trial_reports_lightgbm_s_metric_every_round(metric, lgb_metric):
    """The per-round values a scheduler sees are LightGBM's own evaluation of each round."""
    from distml.jobs import kind_module
    from distml.runtime.data import validate_data

    spec = load_spec(
        EXAMPLE,
        {
            "model.early_stopping_rounds": None,
            "model.num_boost_round": 12,
            "model.params.num_threads": 1,
        },
    )
    job = kind_module("lightgbm").Job(spec)
    data = job.tune_prepare(validate_data(spec.data, needs_target=True))
    session = _Session(metric)
    job.tune_trial(data, session)
    rounds = [rep for rep in session.reports if not rep[2]]
    assert [it for it, _, _ in rounds] == list(range(1, 13))
    df = load_builtin("breast_cancer")
    X, y = df.drop(columns="target"), df["target"].to_numpy()
    params = {**spec.model.params, "metric": [lgb_metric], "verbosity": -1}
    _, history = _plain(params, X, y, data.parts, 12)
    values = np.asarray(history["valid"][lgb_metric])
    if lgb_metric == "binary_error":
        values = 1 - values
    np.testing.assert_allclose([m[metric] for _, m, _ in rounds], values, rtol=0, atol=1e-12)
    final = session.reports[-1]
    assert final[2] and final[0] == 12 and metric in final[1]
    # the trial offered its own output, scored as its final report says, with its model
    kept_metrics, kept = session.kept
    assert kept_metrics == final[1]
    split, name = metric.split(".")
    assert kept.metrics[split][name] == pytest.approx(final[1][metric], rel=1e-12)
    assert any(path.startswith("model") for path in kept.files), sorted(kept.files)


def test_search_with_asha_stops_hopeless_trials_and_refits_the_best(tmp_path):
    spec = {
        "name": "lgb-tune",
        "kind": "lightgbm",
        "data": {
            "source": "builtin:breast_cancer",
            "target": "target",
            "split": {"valid": 0.25, "test": 0.2, "stratify": True, "seed": 1},
        },
        "model": {"params": {"objective": "binary", "num_leaves": 7}, "num_boost_round": 30},
        "tune": {
            "metric": "valid.logloss",
            "search": "grid",
            "scheduler": "asha",
            "grace_period": 5,
            "report_every": 5,
            "seed": 0,
            "space": {"model.params.learning_rate": {"grid": [0.3, 0.1, 0.00001, 0.000001]}},
        },
    }
    r = distml.run(spec, output=tmp_path)
    assert r.status == "succeeded"
    trials = r.tables["trials"]
    assert len(trials) == 4 and set(trials["status"]) <= {"completed", "stopped"}
    # the two learning rates that barely move stop at a rung, before all 30 rounds
    hopeless = trials[trials["model.params.learning_rate"] < 1e-3]
    assert (hopeless["status"] == "stopped").all() and (hopeless["iterations"] < 30).all()
    best = trials.set_index("trial_id").loc[r.metrics["tune"]["best_trial"]]
    assert best["valid.logloss"] == pytest.approx(trials["valid.logloss"].min())
    assert r.best_config["model.params.learning_rate"] == best["model.params.learning_rate"]
    assert r.manifest["best_config"] == r.best_config
    assert r.metrics["valid"]["logloss"] == pytest.approx(best["valid.logloss"], rel=1e-6)
    assert "model/model.txt" in r.artifacts


def test_bad_parameters_exit_2_before_the_cluster_and_fit_errors_exit_4(tmp_path, capfd):
    spec = tmp_path / "s.yaml"
    out = tmp_path / "runs"
    for override, field in [
        ("model.params.objective=binary_nope", "model.params.objective"),
        ("model.params.num_leaves=1", "model.params.num_leaves"),
        ("model.params.n_estimators=50", "model.params.n_estimators"),
        ("model.params.early_stopping_round=5", "model.params.early_stopping_round"),
    ]:
        code = main(["run", str(EXAMPLE), "--set", override, "--output", str(out), "--json"])
        cap = capfd.readouterr()
        message = json.loads(cap.out)["error"]["message"]
        assert code == 2 and message.startswith(field), message
        assert "Traceback" not in cap.err
    assert not list(out.rglob("_SUCCESS")) and not list(out.rglob("manifest.json"))
    # a value only the data can refuse: LightGBM's poisson objective and a negative target
    rng = np.random.default_rng(0)
    pd.DataFrame({"x": rng.normal(size=200), "y": rng.normal(size=200)}).to_parquet(
        tmp_path / "neg.parquet"
    )
    spec.write_text(
        f"name: neg\nkind: lightgbm\ndata: {{source: '{tmp_path}/neg.parquet', "
        "target: y}\nmodel: {params: {objective: poisson}}\n"
    )
    code = main(["run", str(spec), "--output", str(out), "--json"])
    cap = capfd.readouterr()
    error = json.loads(cap.out)["error"]
    assert code == 4 and error["type"] == "JobFailed", error
    assert "lightgbm fit failed" in error["message"] and "negative" in error["message"]
    assert not list(out.rglob("_SUCCESS"))


def test_cross_validation_folds_equal_plain_lightgbm(tmp_path):
    from sklearn.metrics import log_loss

    from distml.runtime.data import cv_indices

    params = {"objective": "binary", "num_leaves": 7, **SAME}
    spec = {
        "name": "lgb-cv",
        "kind": "lightgbm",
        "data": {
            "source": "builtin:breast_cancer",
            "target": "target",
            "split": {"cv": 3, "test": 0.2, "seed": 4},
        },
        "model": {"params": params, "num_boost_round": 20},
    }
    r = distml.run(spec, output=tmp_path)
    assert r.manifest["execution"]["path"] == "cv_tasks"
    df = load_builtin("breast_cancer")
    X, y = df.drop(columns="target"), df["target"].to_numpy()
    split = load_spec(spec).data.split_spec
    rows = split_indices(y, split, classification=True)["train"]
    plain = []
    for train, valid in cv_indices(y[rows], 3, split.seed, stratify=True):
        booster, _ = _plain(params, X, y, {"train": rows[train]}, 20)
        p = booster.predict(X.iloc[rows[valid]])
        plain.append(log_loss(y[rows[valid]], np.column_stack([1 - p, p]), labels=[0, 1]))
    folds = r.metrics["cv"]["folds"]
    assert [f["logloss"] for f in folds] == pytest.approx(plain, abs=1e-12)


def test_unusable_column_names_and_a_missing_lightgbm_exit_2(tmp_path, monkeypatch):
    import sys

    from distml.errors import DataError, MissingDependency

    pd.DataFrame({"a:b": [0.0, 1.0] * 20, "y": [0, 1] * 20}).to_parquet(tmp_path / "d.parquet")
    spec = {
        "name": "cols",
        "kind": "lightgbm",
        "data": {"source": str(tmp_path / "d.parquet"), "target": "y"},
    }
    with pytest.raises(DataError, match=r"data.features: column 'a:b' has a name LightGBM"):
        distml.validate(spec)
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # as if the extra were not installed
    with pytest.raises(MissingDependency, match=r'pip install "distml\[lightgbm\]"'):
        distml.validate(EXAMPLE)


def test_retried_trial_continues_from_its_checkpoint():
    """A trial restored from the model text of round 6 reports rounds 7-12 as an uninterrupted
    trial does (no subsampling: continued boosting equals boosting in one go)."""
    from distml.jobs import kind_module
    from distml.runtime.data import validate_data
    from distml.tune.session import Restored

    spec = load_spec(
        EXAMPLE,
        {
            "model.early_stopping_rounds": None,
            "model.num_boost_round": 12,
            "model.params.num_threads": 1,
        },
    )
    job = kind_module("lightgbm").Job(spec)
    data = job.tune_prepare(validate_data(spec.data, needs_target=True))
    whole, saved = _Session("valid.logloss"), {}

    def keep(iteration, metrics, *, final=False, files=None, state=None, send=True):
        if iteration == 6 and files is not None:
            saved.update(files())
        whole.reports.append((iteration, dict(metrics), final))

    whole.report = keep
    job.tune_trial(data, whole)
    assert saved["model.txt"].startswith(b"tree\n")
    retry = _Session("valid.logloss")
    retry.restored = Restored(6, {}, saved)
    job.tune_trial(data, retry)
    first = [(it, m["valid.logloss"]) for it, m, final in whole.reports if not final and it > 6]
    again = [(it, m["valid.logloss"]) for it, m, final in retry.reports if not final]
    assert [it for it, _ in again] == list(range(7, 13))
    np.testing.assert_allclose([v for _, v in again], [v for _, v in first], rtol=1e-9)
    assert retry.reports[-1][1]["valid.logloss"] == pytest.approx(
        whole.reports[-1][1]["valid.logloss"], rel=1e-9
    )


@pytest.mark.parametrize("first_metric_only", [False, True])
def test_trial_under_early_stopping_stops_where_lightgbm_stops(first_metric_only):
    """A searched metric outside ``params.metric`` is added only where it cannot change early
    stopping (after the first metric, with first_metric_only); otherwise the trial reports
    once at the end. Either way it stops where plain LightGBM stops."""
    import lightgbm as lgb

    from distml.jobs import kind_module
    from distml.runtime.data import validate_data

    spec = load_spec(
        EXAMPLE,
        {
            "model.params.num_threads": 1,
            "model.params.learning_rate": 0.3,
            "model.params.first_metric_only": first_metric_only,
        },
    )
    job = kind_module("lightgbm").Job(spec)
    data = job.tune_prepare(validate_data(spec.data, needs_target=True))
    session = _Session("valid.accuracy")  # binary_error: not in the example's params.metric
    job.tune_trial(data, session)
    df = load_builtin("breast_cancer")
    X, y = df.drop(columns="target"), df["target"].to_numpy()
    parts = data.parts
    params = {
        **spec.model.params,
        "verbosity": -1,
        "early_stopping_round": spec.model.early_stopping_rounds,
    }
    dtrain = lgb.Dataset(X.iloc[parts["train"]], label=y[parts["train"]])
    dvalid = lgb.Dataset(X.iloc[parts["valid"]], label=y[parts["valid"]], reference=dtrain)
    booster = lgb.train(
        params,
        dtrain,
        spec.model.num_boost_round,
        valid_sets=[dtrain, dvalid],
        valid_names=["train", "valid"],
    )
    final = session.reports[-1]
    assert final[2] and final[1]["best_iteration"] == booster.best_iteration
    rounds = [it for it, _, last in session.reports if not last]
    if first_metric_only:
        assert rounds == list(range(1, final[0] + 1))  # every round, up to where it stopped
    else:
        assert rounds == [] and len(session.reports) == 1
