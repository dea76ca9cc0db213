"""The fold fits of a ladder without a cluster: the same functions the Ray tasks run
(``fold_plan`` draws the folds, ``fit_fold`` fits a candidate Job's ``fit_predict_fold``),
compared with plain scikit-learn and statsmodels on the same folds, and the decision on data
where one family is truly better."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from distml.jobs import kind_module
from distml.jobs.ladder import stats
from distml.jobs.ladder import tasks as ladder_tasks
from distml.spec import load_spec


def _interaction(seed: int, n: int = 400) -> pd.DataFrame:
    """y depends on x1 * x2 only: a logit on x1 + x2 cannot express it, trees can."""
    rng = np.random.default_rng(seed)
    x1, x2, x3 = rng.normal(size=(3, n))
    p = 1 / (1 + np.exp(-4 * x1 * x2))
    return pd.DataFrame({"x1": x1, "x2": x2, "x3": x3, "y": (rng.uniform(size=n) < p).astype(int)})


def _ladder(
    tmp_path,
    frame: pd.DataFrame,
    candidates: list,
    metric: str = "roc_auc",
    cv: int = 5,
    seed: int = 0,
    **promote,
):
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    spec = load_spec(
        {
            "name": "l",
            "kind": "ladder",
            "data": {"source": str(path), "target": "y", "split": {"cv": cv, "seed": seed}},
            "ladder": {"metric": metric, "candidates": candidates, "promote": promote},
        }
    )
    job = kind_module("ladder").Job(spec)
    job.check_data()
    return spec, job


def _climb(spec, job, frame):
    metric = spec.ladder.metric
    folds = ladder_tasks.fold_plan(frame[spec.data.target], spec.data.split_spec, job.ladder_task)
    scores, per = [], {}
    for r in job.rungs:
        got = [ladder_tasks.fit_fold(r.job, frame, r.columns, tr, te) for tr, te in folds]
        assert all(g["error"] is None for g in got), [g["error"] for g in got]
        per[r.name] = [g["metrics"][metric] for g in got]
        scores.append(per[r.name])
    n_train = np.mean([len(tr) for tr, _ in folds])
    n_test = np.mean([len(te) for _, te in folds])
    p = spec.ladder.promote
    rungs, winner, _ = stats.decide(
        [r.name for r in job.rungs],
        scores,
        stats.metric_mode(metric),
        n_train=n_train,
        n_test=n_test,
        alpha=p.alpha,
        min_gain=p.min_gain,
    )
    return per, rungs, winner, folds


GLM = {
    "name": "glm",
    "kind": "statsmodels",
    "model": {"method": "logit", "formula": "y ~ x1 + x2 + x3"},
}
GBM = {
    "name": "gbm",
    "kind": "xgboost",
    "model": {"params": {"max_depth": 3, "eta": 0.3}, "num_boost_round": 40},
}


def test_the_family_that_can_express_the_interaction_is_promoted_over_seeds(tmp_path):
    promoted = 0
    for seed in range(5):
        frame = _interaction(seed)
        spec, job = _ladder(tmp_path, frame, [GLM, GBM], seed=seed, min_gain=0.01)
        _, rungs, winner, _ = _climb(spec, job, frame)
        promoted += winner == "gbm"
        assert rungs[1].test.mean > 0.1  # the trees gain a lot of AUC over the logit
    assert promoted >= 4


def test_identical_candidates_are_never_promoted(tmp_path):
    frame = _interaction(0)
    rf = {
        "kind": "sklearn",
        "model": {
            "estimator": "random_forest_classifier",
            "params": {"n_estimators": 20, "random_state": 0},
        },
    }
    spec, job = _ladder(tmp_path, frame, [{"name": "a", **rf}, {"name": "b", **rf}])
    per, rungs, winner, _ = _climb(spec, job, frame)
    assert per["a"] == per["b"] and winner == "a"
    assert rungs[1].test.p_value == 1.0 and not rungs[1].promoted


def test_sklearn_fold_scores_equal_cross_val_score(tmp_path):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = _interaction(1)
    cands = [
        {
            "name": "rf",
            "kind": "sklearn",
            "model": {
                "estimator": "random_forest_classifier",
                "params": {"n_estimators": 30, "random_state": 0},
            },
        },
        {
            "name": "lr",
            "kind": "sklearn",
            "model": {"estimator": "logistic_regression", "scale": True},
        },
    ]
    spec, job = _ladder(tmp_path, frame, cands, cv=5, seed=3)
    per, _, _, _ = _climb(spec, job, frame)
    X, y = frame[["x1", "x2", "x3"]], frame["y"]
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=3)
    rf = cross_val_score(
        RandomForestClassifier(n_estimators=30, random_state=0), X, y, cv=cv, scoring="roc_auc"
    )
    lr = cross_val_score(
        make_pipeline(StandardScaler(), LogisticRegression()), X, y, cv=cv, scoring="roc_auc"
    )
    assert per["rf"] == pytest.approx(rf.tolist(), abs=0)
    assert per["lr"] == pytest.approx(lr.tolist(), rel=1e-9)


def test_statsmodels_fold_fit_equals_statsmodels(tmp_path):
    import statsmodels.formula.api as smf
    from sklearn.metrics import roc_auc_score

    frame = _interaction(2)
    spec, job = _ladder(tmp_path, frame, [GLM, GBM])
    folds = ladder_tasks.fold_plan(frame["y"], spec.data.split_spec, "classification")
    glm = job.rungs[0]
    for tr, te in folds[:2]:
        got = glm.job.fit_predict_fold(
            frame.iloc[tr][glm.columns].reset_index(drop=True),
            frame.iloc[te][glm.columns].reset_index(drop=True),
        )
        res = smf.logit("y ~ x1 + x2 + x3", data=frame.iloc[tr]).fit(disp=0)
        p = res.predict(frame.iloc[te]).to_numpy()
        assert got["proba"][:, 1] == pytest.approx(p, rel=1e-6)
        assert got["classes"] == [0, 1] and got["y_true"].tolist() == frame["y"].iloc[te].tolist()
        assert ladder_tasks.fold_metrics(got)["roc_auc"] == pytest.approx(
            roc_auc_score(frame["y"].iloc[te], p)
        )


def test_statsmodels_without_formula_uses_every_feature(tmp_path):
    import statsmodels.api as sm

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=120),
            "b": rng.normal(size=120),
            "region": rng.choice(["n", "s", "w"], size=120),
        }
    )
    frame["y"] = 2 * frame["a"] - frame["b"] + (frame["region"] == "s") + rng.normal(size=120)
    cands = [
        {"name": "mean", "kind": "sklearn", "model": {"estimator": "sklearn.dummy.DummyRegressor"}},
        {"name": "ols", "kind": "statsmodels", "model": {"method": "ols"}},
    ]
    _, job = _ladder(tmp_path, frame, cands, metric="rmse")
    ols = job.rungs[1]
    assert ols.spec.model.formula == 'Q("y") ~ Q("a") + Q("b") + C(Q("region"))'
    tr, te = np.arange(90), np.arange(90, 120)
    got = ols.job.fit_predict_fold(
        frame.iloc[tr][ols.columns].reset_index(drop=True),
        frame.iloc[te][ols.columns].reset_index(drop=True),
    )
    X = sm.add_constant(
        pd.get_dummies(
            frame[["a", "b", "region"]], columns=["region"], drop_first=True, dtype=float
        )
    )
    ref = sm.OLS(frame["y"].iloc[tr], X.iloc[tr]).fit().predict(X.iloc[te])
    assert got["pred"] == pytest.approx(ref.to_numpy(), rel=1e-9)
    assert got["task"] == "regression" and got["proba"] is None
