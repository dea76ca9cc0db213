"""A candidate's own search inside each ladder fold: the configurations drawn, and the choice
compared with scikit-learn's GridSearchCV on the same inner folds."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from distml.jobs import kind_module
from distml.jobs.ladder import job as ladder_job
from distml.jobs.ladder import nested
from distml.jobs.ladder import tasks as ladder_tasks
from distml.spec import load_spec
from distml.spec.base import TuneSpec


def test_configurations_cross_grids_and_sample_the_rest_reproducibly():
    t = TuneSpec(
        metric="cv.roc_auc",
        num_samples=3,
        seed=4,
        space={
            "model.params.max_depth": {"grid": [2, 4]},
            "model.params.eta": {"loguniform": [1e-3, 1e-1]},
            "model.params.subsample": {"quniform": [0.5, 1.0, 0.1]},
            "model.params.min_child_weight": {"randint": [1, 3]},
            "model.params.max_bin": {"lograndint": [16, 256]},
            "model.params.gamma": {"uniform": [0, 2]},
            "model.params.booster": {"choice": ["gbtree", "dart"]},
        },
    )
    got = nested.configurations(t)
    assert len(got) == 3 * 2 and got == nested.configurations(t)  # seeded
    assert [c["model.params.max_depth"] for c in got] == [2, 4] * 3
    for c in got:
        assert 1e-3 <= c["model.params.eta"] <= 1e-1
        sub = c["model.params.subsample"]
        assert 0.5 <= sub <= 1.0 and math.isclose(round(sub / 0.1) * 0.1, sub)
        assert c["model.params.min_child_weight"] in (1, 2, 3)
        assert 16 <= c["model.params.max_bin"] <= 256
        assert 0 <= c["model.params.gamma"] <= 2 and c["model.params.booster"] in ("gbtree", "dart")
    assert len({c["model.params.eta"] for c in got}) == 6
    grid = TuneSpec(
        metric="cv.r2",
        search="grid",
        space={"model.params.a": {"choice": [1, 2, 3]}, "model.params.b": {"grid": ["x", "y"]}},
    )
    assert len(nested.configurations(grid)) == 6


def _frame(seed: int = 0, n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2, x3 = rng.normal(size=(3, n))
    p = 1 / (1 + np.exp(-3 * x1 * x2 - x3))
    return pd.DataFrame({"x1": x1, "x2": x2, "x3": x3, "y": (rng.uniform(size=n) < p).astype(int)})


def _tuned_tree(tmp_path, frame):
    frame.to_parquet(tmp_path / "d.parquet")
    spec = load_spec(
        {
            "name": "n",
            "kind": "ladder",
            "data": {
                "source": str(tmp_path / "d.parquet"),
                "target": "y",
                "split": {"cv": 4, "seed": 1},
            },
            "ladder": {
                "metric": "roc_auc",
                "candidates": [
                    {
                        "name": "base",
                        "kind": "sklearn",
                        "model": {"estimator": "sklearn.dummy.DummyClassifier"},
                    },
                    {
                        "name": "tree",
                        "kind": "sklearn",
                        "model": {
                            "estimator": "decision_tree_classifier",
                            "params": {"random_state": 0},
                        },
                        "tune": {
                            "metric": "cv.roc_auc",
                            "seed": 9,
                            "space": {"model.params.max_depth": {"grid": [1, 2, 3, 6]}},
                        },
                    },
                ],
            },
        }
    )
    job = kind_module("ladder").Job(spec)
    job.check_data()
    return spec, job


def test_the_search_chooses_as_gridsearchcv_on_the_same_inner_folds(tmp_path):
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.tree import DecisionTreeClassifier

    frame = _frame()
    spec, job = _tuned_tree(tmp_path, frame)
    tree = job.rungs[1]
    plan = tree.nested("classification", "y")
    folds = ladder_tasks.fold_plan(frame["y"], spec.data.split_spec, "classification")
    train, test = folds[0]
    config, trials = nested.search(
        plan["kind"],
        plan["base"],
        plan["tune"],
        frame.iloc[train],
        tree.columns,
        "y",
        "classification",
    )
    X, y = frame[["x1", "x2", "x3"]].iloc[train], frame["y"].iloc[train]
    ref = GridSearchCV(
        DecisionTreeClassifier(random_state=0),
        {"max_depth": [1, 2, 3, 6]},
        scoring="roc_auc",
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=9),
    ).fit(X, y)
    assert config == {"model.params.max_depth": ref.best_params_["max_depth"]}
    assert [t["score"] for t in trials] == pytest.approx(
        ref.cv_results_["mean_test_score"].tolist(), rel=1e-12
    )
    # the fold's score is the chosen tree's, fitted on the fold's training rows only
    got = ladder_tasks.fit_fold(tree.job, frame, tree.columns, train, test, plan)
    assert got["config"] == config and got["error"] is None
    best = DecisionTreeClassifier(random_state=0, max_depth=ref.best_params_["max_depth"])
    from sklearn.metrics import roc_auc_score

    proba = best.fit(X, y).predict_proba(frame[["x1", "x2", "x3"]].iloc[test])[:, 1]
    assert got["metrics"]["roc_auc"] == pytest.approx(
        roc_auc_score(frame["y"].iloc[test], proba), abs=1e-12
    )
    row = ladder_job.fold_row(tree, 0, "roc_auc", got["metrics"]["roc_auc"], got, None)
    assert json.loads(row["config"]) == config


def test_failing_configurations_are_skipped_and_all_failing_fails_the_fold(tmp_path):
    frame = _frame(1)
    spec, job = _tuned_tree(tmp_path, frame)
    plan = job.rungs[1].nested("classification", "y")
    bad = {
        **plan,
        "tune": TuneSpec(metric="cv.roc_auc", space={"model.params.max_depth": {"grid": [-1, 2]}}),
    }
    folds = ladder_tasks.fold_plan(frame["y"], spec.data.split_spec, "classification")
    config, trials = nested.search(
        bad["kind"],
        bad["base"],
        bad["tune"],
        frame.iloc[folds[0][0]],
        job.rungs[1].columns,
        "y",
        "classification",
    )
    assert config == {"model.params.max_depth": 2}
    assert trials[0]["score"] is None and "max_depth" in trials[0]["error"]
    worse = {
        **plan,
        "tune": TuneSpec(metric="cv.roc_auc", space={"model.params.max_depth": {"grid": [-1, -2]}}),
    }
    got = ladder_tasks.fit_fold(job.rungs[1].job, frame, job.rungs[1].columns, *folds[0], worse)
    assert got["error"].startswith("JobFailed: every configuration of the nested search failed")
