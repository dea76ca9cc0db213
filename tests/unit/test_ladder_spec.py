"""The ladder spec: every candidate validated with its own kind's rules before any cluster work
(exit 2 naming the candidate and the field), unknown metrics listing the valid ones, the
``auto`` ladder, and the data checks of each candidate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distml.cli import main
from distml.errors import DataError, MissingDependency, SpecError
from distml.jobs import KINDS, kind_module
from distml.jobs.ladder.job import auto_candidates
from distml.jobs.ladder.spec import NOT_CANDIDATES
from distml.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
#: every registered kind that fits supervised folds (sklearn, statsmodels, torch, xgboost, ...)
CANDIDATE_KINDS = sorted(k for k in KINDS if k not in NOT_CANDIDATES)
EXAMPLE = ROOT / "jobs" / "ladder_breast_cancer.yaml"
BASE = {
    "name": "l",
    "kind": "ladder",
    "data": {"source": "builtin:breast_cancer", "target": "target", "split": {"cv": 5, "seed": 0}},
    "ladder": {
        "metric": "roc_auc",
        "candidates": [
            {
                "name": "baseline",
                "kind": "sklearn",
                "model": {"estimator": "sklearn.dummy.DummyClassifier"},
            },
            {"name": "gbm", "kind": "xgboost", "model": {"num_boost_round": 10}},
        ],
    },
}


def _with(**changes) -> dict:
    import copy

    raw = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = raw
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def _cand(i: int, **fields) -> dict:
    return _with(**{f"ladder__candidates__{i}": {**BASE["ladder"]["candidates"][i], **fields}})


def test_the_example_loads_and_checks():
    spec = load_spec(EXAMPLE)
    assert spec.kind == "ladder" and spec.data.split.cv == 10
    job = kind_module("ladder").Job(spec)
    job.check_data()
    assert [r.name for r in job.rungs] == ["baseline", "logistic", "forest", "gbm"]
    assert all(r.unavailable is None for r in job.rungs)


def test_split_defaults_to_five_folds_and_needs_cv():
    raw = _with()
    del raw["data"]["split"]
    assert load_spec(raw).data.split.cv == 5
    with pytest.raises(SpecError, match=r"data.split.cv is required for kind ladder"):
        load_spec(_with(data__split={"valid": 0.2}))
    with pytest.raises(SpecError, match=r"data.split.cv is required.*got split: none"):
        load_spec(_with(data__split="none"))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(model={"estimator": "random_forest_clasifier"}),
            r"ladder.candidates\[0\] \(baseline\): model.estimator .*did you mean "
            r"'random_forest_classifier'",
        ),
        (
            dict(model={"estimator": "ridge", "paramz": {}}),
            r"ladder.candidates\[0\] \(baseline\): model.paramz is not a known field",
        ),
        (
            dict(kind="pca"),
            r"ladder.candidates\[0\] \(baseline\): kind must be one of "
            + ", ".join(CANDIDATE_KINDS)
            + "; got 'pca'",
        ),
        (dict(kind="sklaern"), r"did you mean 'sklearn'"),
        (
            dict(
                model={"estimator": "logistic_regression"},
                tune={
                    "metric": "valid.roc_auc",
                    "space": {"model.params.C": {"uniform": [0.1, 1]}},
                },
            ),
            r"ladder.candidates\[0\] \(baseline\): tune.metric valid.roc_auc and data.split.cv "
            r"conflict.*use cv.roc_auc",
        ),
        (
            dict(
                model={"estimator": "logistic_regression"},
                tune={
                    "metric": "cv.roc_auc",
                    "search": "optuna",
                    "space": {"model.params.C": {"uniform": [0.1, 1]}},
                },
            ),
            r"\(baseline\): tune.search optuna is not supported inside a ladder's folds",
        ),
        (
            dict(
                model={"estimator": "logistic_regression"},
                tune={
                    "metric": "cv.roc_auc",
                    "time_budget_s": 60,
                    "space": {"model.params.C": {"uniform": [0.1, 1]}},
                },
            ),
            r"\(baseline\): tune.time_budget_s has no meaning inside a ladder's folds",
        ),
    ],
)
def test_a_bad_candidate_names_itself_and_the_field(change, message):
    with pytest.raises(SpecError, match=message):
        load_spec(_cand(0, **change))


def test_candidate_field_errors_of_other_kinds():
    with pytest.raises(
        SpecError,
        match=r"ladder.candidates\[1\] \(gbm\): model.num_boost_round "
        r"must be >= 1; got 0",
    ):
        load_spec(_cand(1, model={"num_boost_round": 0}))
    # early stopping needs a valid split, which folds do not have
    with pytest.raises(
        SpecError,
        match=r"\(gbm\): model.early_stopping_rounds needs a "
        "validation split",
    ):
        load_spec(_cand(1, model={"early_stopping_rounds": 5}))
    with pytest.raises(SpecError, match=r"\(glm\): model.method arima is a time-series model"):
        load_spec(_cand(1, name="glm", kind="statsmodels", model={"method": "arima"}))
    with pytest.raises(
        SpecError,
        match=r"\(glm\): model.formula must have the ladder's target "
        r"'target' itself on the left",
    ):
        load_spec(
            _cand(
                1,
                name="glm",
                kind="statsmodels",
                model={"method": "logit", "formula": "np.log(target) ~ mean_radius"},
            )
        )


def test_ladder_level_rules():
    with pytest.raises(
        SpecError,
        match=r"ladder.metric must be one of accuracy, .*r2; got "
        r"'auc'; did you mean 'roc_auc'\?",
    ):
        load_spec(_with(ladder__metric="auc"))
    with pytest.raises(SpecError, match="must name each candidate once; got duplicates"):
        load_spec(_cand(1, name="baseline"))
    with pytest.raises(SpecError, match="at least 2 candidates"):
        load_spec(_with(ladder__candidates=BASE["ladder"]["candidates"][:1]))
    with pytest.raises(SpecError, match="tune is not supported for kind ladder itself"):
        load_spec(
            {
                **_with(),
                "tune": {"metric": "valid.roc_auc", "space": {"model.x": {"uniform": [0, 1]}}},
            }
        )
    with pytest.raises(SpecError, match="resources.num_workers must be 1 for kind ladder"):
        load_spec({**_with(), "resources": {"num_workers": 2}})


def test_cli_validate_exits_2_naming_the_candidate(tmp_path, capsys):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_cand(1, model={"num_boost_round": -3})))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "ladder.candidates[1] (gbm): model.num_boost_round must be >= 1" in err
    assert "Traceback" not in err


def test_data_checks_of_each_candidate_before_the_cluster():
    # the metric says the task; the target must be of it
    with pytest.raises(
        SpecError,
        match=r"ladder.metric 'rmse' is a regression metric, but "
        r"target 'target' is a classification target; valid "
        r"metrics: accuracy",
    ):
        kind_module("ladder").Job(load_spec(_with(ladder__metric="rmse"))).check_data()
    # a regressor in a classification ladder
    job = kind_module("ladder").Job(load_spec(_cand(0, model={"estimator": "ridge"})))
    with pytest.raises(SpecError, match=r"\(baseline\): the model is a regression model"):
        job.check_data()
    # a formula naming a column the data lacks: exit 2 naming the candidate
    job = kind_module("ladder").Job(
        load_spec(
            _cand(
                1,
                name="glm",
                kind="statsmodels",
                model={"method": "logit", "formula": "target ~ mean_radius + nope"},
            )
        )
    )
    with pytest.raises(
        DataError,
        match=r"ladder.candidates\[1\] \(glm\): model.formula: "
        "column 'nope' is not in",
    ):
        job.check_data()


def test_a_missing_extra_is_a_failed_rung_not_a_bad_spec(monkeypatch):
    from distml.jobs import torch as torch_kind

    def missing(purpose: str = "kind torch") -> None:
        raise MissingDependency.for_extra("torch", "torch", purpose)

    monkeypatch.setattr(torch_kind, "require_torch", missing)
    spec = load_spec(
        _with(
            ladder__candidates=[
                BASE["ladder"]["candidates"][0],
                {"name": "mlp", "kind": "torch", "model": {"hidden": [8], "epochs": 2}},
            ]
        )
    )
    job = kind_module("ladder").Job(spec)
    job.check_data()
    assert job.rungs[0].unavailable is None
    assert "pip install" in job.rungs[1].unavailable


@pytest.mark.parametrize(
    "task, n_classes, names, glm_kind",
    [
        ("classification", 2, ["baseline", "glm", "forest", "gbm", "mlp"], "statsmodels"),
        ("classification", 3, ["baseline", "glm", "forest", "gbm", "mlp"], "sklearn"),
        ("regression", 0, ["baseline", "glm", "forest", "gbm", "mlp"], "statsmodels"),
    ],
)
def test_auto_ladder_from_the_installed_kinds(task, n_classes, names, glm_kind):
    cands, why = auto_candidates(task, n_classes)
    assert [c.name for c in cands] == names and cands[1].kind == glm_kind
    assert set(why) == set(names)
    if task == "regression":
        assert cands[0].model["estimator"] == "sklearn.dummy.DummyRegressor"


def test_auto_ladder_leaves_out_what_is_not_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("torch", "xgboost") else real(name, *a),
    )
    cands, why = auto_candidates("classification", 2)
    assert [c.name for c in cands] == ["baseline", "glm", "forest"]
    assert why["mlp"] == "left out: torch is not installed"


def test_auto_ladder_resolves_at_check_time(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    frame["y"] = frame["a"] * 3 + rng.normal(size=60)
    frame.to_parquet(tmp_path / "d.parquet")
    spec = load_spec(
        {
            "name": "auto",
            "kind": "ladder",
            "data": {"source": str(tmp_path / "d.parquet"), "target": "y"},
            "ladder": {"metric": "rmse", "candidates": "auto"},
        }
    )
    job = kind_module("ladder").Job(spec)
    job.check_data()
    assert [r.name for r in job.rungs] == ["baseline", "glm", "forest", "gbm", "mlp"]
    assert job.rungs[1].spec.model.method == "ols" and job.auto is not None
