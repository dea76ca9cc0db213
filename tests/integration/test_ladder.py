"""Kind ladder on a real Ray cluster: every candidate on the same folds (compared with a plain
scikit-learn loop), the statistics recomputed from the written tables, a failing rung recorded
while the ladder goes on, all failing is exit 4, the winner refitted and scorable, and the
report sections drawn from the finished run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import distml
from distml.errors import JobFailed, MissingDependency
from distml.jobs import kind_module
from distml.jobs.ladder import report as ladder_report
from distml.jobs.ladder import stats
from distml.report._run import RunView

pytestmark = pytest.mark.usefixtures("ray_cluster")

DATA = {
    "source": "builtin:breast_cancer",
    "target": "target",
    "split": {"cv": 5, "stratify": True, "seed": 3},
}
BASELINE = {
    "name": "baseline",
    "kind": "sklearn",
    "model": {"estimator": "sklearn.dummy.DummyClassifier"},
}
FOREST = {
    "name": "forest",
    "kind": "sklearn",
    "model": {
        "estimator": "random_forest_classifier",
        "params": {"n_estimators": 30, "random_state": 0},
    },
}


@pytest.fixture(scope="module")
def four_rungs(tmp_path_factory):
    spec = {
        "name": "ladder-4",
        "kind": "ladder",
        "data": DATA,
        "ladder": {
            "metric": "roc_auc",
            "promote": {"alpha": 0.05, "min_gain": 0.001},
            "candidates": [
                BASELINE,
                {
                    "name": "glm",
                    "kind": "statsmodels",
                    "model": {
                        "method": "logit",
                        "formula": "target ~ worst_radius + worst_texture",
                    },
                },
                FOREST,
                {
                    "name": "gbm",
                    "kind": "xgboost",
                    "model": {"params": {"max_depth": 3}, "num_boost_round": 30},
                },
            ],
        },
    }
    return distml.run(spec, output=tmp_path_factory.mktemp("ladder4"))


def test_every_candidate_on_the_same_folds_as_a_plain_sklearn_loop(four_rungs):
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    r = four_rungs
    assert r.status == "succeeded" and (r.run_dir / "_SUCCESS").is_file()
    long = r.tables["ladder"]
    assert len(long) == 4 * 5 and set(long["metric"]) == {"roc_auc"}
    assert long.groupby("candidate")["fold"].apply(sorted).map(tuple).nunique() == 1
    X, y = load_breast_cancer(return_X_y=True)
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=3)
    ref = cross_val_score(
        RandomForestClassifier(n_estimators=30, random_state=0), X, y, cv=cv, scoring="roc_auc"
    )
    mine = long[long["candidate"] == "forest"].sort_values("fold")["value"].to_numpy()
    assert mine.tolist() == pytest.approx(ref.tolist(), abs=1e-12)
    assert (long["n_test"] + long["n_train"] == len(y)).all()
    assert long["error"].isna().all() and (long["fit_seconds"] > 0).all()


def test_the_summary_is_the_corrected_test_of_the_fold_table(four_rungs):
    long, summary = four_rungs.tables["ladder"], four_rungs.tables["ladder_summary"]
    wide = long.pivot(index="fold", columns="candidate", values="value")
    n_train, n_test = long["n_train"].mean(), long["n_test"].mean()
    compared = summary[summary["incumbent"].notna()]
    assert list(summary["candidate"]) == ["baseline", "glm", "forest", "gbm"]
    raw = []
    for row in compared.itertuples():
        d = wide[row.candidate] - wide[row.incumbent]
        t = stats.corrected_ttest(d.to_numpy(), n_train, n_test, min_gain=0.001)
        assert (
            row.mean_diff,
            row.se,
            row.t,
            row.p_value,
            row.ci_low,
            row.ci_high,
        ) == pytest.approx((t.mean, t.se, t.t, t.p_value, t.ci_low, t.ci_high))
        raw.append(t.p_value)
    assert compared["p_adjusted"].tolist() == pytest.approx(stats.holm(raw).tolist())
    # the incumbent of each rung is the last promoted rung below it (or the base)
    incumbent = "baseline"
    for row in summary.iloc[1:].itertuples():
        assert row.incumbent == incumbent
        assert row.promoted == (row.p_adjusted < 0.05 and row.mean_diff > 0.001)
        incumbent = row.candidate if row.promoted else incumbent
    winner = summary[summary["winner"]]
    assert len(winner) == 1 and winner["candidate"].iloc[0] == incumbent
    assert summary.loc[summary["candidate"] == "glm", "promoted"].item()  # far above chance
    means = wide.mean()
    assert summary.set_index("candidate")["mean"].to_dict() == pytest.approx(means.to_dict())
    assert (summary["cpu_seconds"] > 0).all() and (summary["fit_seconds"] > 0).all()


def test_the_winner_is_the_runs_model(four_rungs):
    r = four_rungs
    winner = r.tables["ladder_summary"].query("winner")["candidate"].item()
    assert r.metrics["winner"] == winner and r.metrics["ladder"]["winner"] == winner
    assert r.metrics["ladder"]["metric"] == "roc_auc" and r.metrics["ladder"]["mode"] == "max"
    mine = r.tables["ladder_summary"].query("winner").iloc[0]
    assert r.metrics["cv"] == {
        "mean": {"roc_auc": pytest.approx(mine["mean"])},
        "std": {"roc_auc": pytest.approx(mine["std"])},
    }
    assert f"cv: roc_auc={mine['mean']:.4g}" in r.summary()
    assert [x["candidate"] for x in r.metrics["ladder"]["rungs"]] == [
        "baseline",
        "glm",
        "forest",
        "gbm",
    ]
    saved = json.loads((r.run_dir / "model" / "ladder_winner.json").read_text())
    kind = saved["kind"]
    assert saved["name"] == winner and saved["spec"]["kind"] == kind
    assert saved["spec"]["data"]["split"]["cv"] is None  # refitted on every training row
    info = r.manifest["ladder"]
    assert info["winner"] == winner and info["auto"] is False
    assert [c["name"] for c in info["candidates"]] == ["baseline", "glm", "forest", "gbm"]
    assert r.manifest["execution"]["path"] == "ladder_tasks"
    assert r.manifest["execution"]["tasks"] == 4 * 5 + 2
    if kind == "statsmodels":  # the refit's own tables, as a statsmodels run writes them
        assert {"coefficients", "model_stats"} <= set(r.tables)
        assert r.metrics["nobs"] == 569
    else:
        assert (r.run_dir / "model" / "schema.json").is_file()


def test_report_sections_are_drawn_from_the_run(four_rungs):
    job = kind_module("ladder").Job
    builders = job.report_sections()
    run = RunView(four_rungs.run_dir)
    sections = [b(run) for b in builders]
    assert [s.id for s in sections] == ["ladder_folds", "ladder_differences", "ladder_cost"]
    for s in sections:
        assert "<img src='data:image/png;base64," in s.body
    assert all(name in sections[0].body for name in ("baseline", "glm", "forest", "gbm"))
    assert "corrected resampled t-test" in sections[1].body and "holm" in sections[1].body
    assert "cpu_seconds" in sections[2].body
    # a run of another kind has no ladder sections
    other = RunView(four_rungs.run_dir / "nowhere", manifest={"kind": "sklearn"})
    assert all(b(other) is None for b in builders)
    assert ladder_report.fold_paired(run).title.startswith("Ladder")


@pytest.fixture(scope="module")
def with_failures(tmp_path_factory):
    from distml.jobs import torch as torch_kind

    def missing(purpose: str = "kind torch") -> None:
        raise MissingDependency.for_extra("torch", "torch", purpose)

    spec = {
        "name": "ladder-fail",
        "kind": "ladder",
        "data": DATA,
        "ladder": {
            "metric": "accuracy",
            "candidates": [
                BASELINE,
                {
                    "name": "broken",
                    "kind": "sklearn",
                    "model": {
                        "estimator": "logistic_regression",
                        "params": {"penalty": "elasticnet", "solver": "liblinear"},
                    },
                },
                {"name": "mlp", "kind": "torch", "model": {"hidden": [8], "epochs": 2}},
                FOREST,
            ],
        },
    }
    mp = pytest.MonkeyPatch()
    mp.setattr(torch_kind, "require_torch", missing)
    try:
        return distml.run(spec, output=tmp_path_factory.mktemp("ladderfail"))
    finally:
        mp.undo()


def test_a_failing_rung_is_recorded_and_the_ladder_goes_on(with_failures):
    r = with_failures
    assert r.status == "succeeded"
    s = r.tables["ladder_summary"].set_index("candidate")
    assert s.loc["broken", "status"] == "failed" and "elasticnet" in s.loc["broken", "error"]
    assert s.loc["mlp", "status"] == "failed" and "pip install" in s.loc["mlp", "error"]
    assert s.loc["broken", "reason"].startswith("failed: ")
    assert s.loc["forest", "incumbent"] == "baseline" and s.loc["forest", "promoted"]
    assert r.metrics["winner"] == "forest"
    long = r.tables["ladder"]
    assert long[long["candidate"] == "broken"]["error"].notna().all()
    assert long[long["candidate"] == "mlp"]["value"].isna().all()
    assert r.manifest["ladder"]["candidates"][2]["unavailable"]
    assert (r.run_dir / "model" / "model.skops").is_file()


def test_predict_delegates_to_the_winners_kind(with_failures, monkeypatch):
    """The ladder's ``load_predictor`` hands the winning kind a view of the run that holds the
    winner's spec and model files (checked here with a stand-in for that kind's loader)."""
    sklearn_job = kind_module("sklearn").Job
    seen = {}

    def fake(cls, run_dir, manifest, allow_module):
        import yaml

        seen["spec"] = yaml.safe_load((run_dir / "spec.yaml").read_text())
        seen["files"] = sorted(p.name for p in (run_dir / "model").iterdir())
        seen["manifest"] = manifest
        return "predictor"

    monkeypatch.setattr(sklearn_job, "load_predictor", classmethod(fake), raising=False)
    manifest = json.loads((with_failures.run_dir / "manifest.json").read_text())
    got = kind_module("ladder").Job.load_predictor(with_failures.run_dir, manifest, ())
    assert got == "predictor"
    assert seen["spec"]["kind"] == "sklearn" and seen["spec"]["name"] == "forest"
    assert seen["spec"]["model"]["estimator"] == "random_forest_classifier"
    assert seen["files"] == ["model.skops", "schema.json"]
    assert seen["manifest"]["kind"] == "sklearn"


def test_distml_predict_scores_with_the_winner(with_failures, tmp_path):
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns="target")
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame.to_parquet(tmp_path / "in.parquet")
    p = distml.predict(with_failures.run_dir, str(tmp_path / "in.parquet"), tmp_path / "out")
    scored = pd.concat(
        [pd.read_parquet(f) for f in sorted((tmp_path / "out").glob("part-*"))], ignore_index=True
    )
    assert p.rows == len(frame)
    ref = with_failures.tables["predictions"].sort_values("row")
    assert np.allclose(scored["proba_1"].to_numpy(), ref["proba_1"].to_numpy())


def test_all_rungs_failing_is_exit_4(tmp_path):
    bad = {
        "kind": "sklearn",
        "model": {
            "estimator": "logistic_regression",
            "params": {"penalty": "elasticnet", "solver": "liblinear"},
        },
    }
    spec = {
        "name": "ladder-none",
        "kind": "ladder",
        "data": DATA,
        "ladder": {
            "metric": "accuracy",
            "candidates": [{"name": "a", **bad}, {"name": "b", **bad}],
        },
    }
    with pytest.raises(
        JobFailed, match=r"every candidate of the ladder failed: a: .*elasticnet"
    ) as e:
        distml.run(spec, output=tmp_path)
    assert e.value.exit_code == 4
    (manifest,) = tmp_path.rglob("manifest.json")
    assert json.loads(manifest.read_text())["status"] == "failed"
    assert not list(tmp_path.rglob("_SUCCESS"))


def test_a_candidates_search_runs_inside_each_fold_and_before_the_refit(tmp_path):
    spec = {
        "name": "ladder-tuned",
        "kind": "ladder",
        "data": {**DATA, "split": {"cv": 3, "seed": 5}},
        "ladder": {
            "metric": "roc_auc",
            "candidates": [
                BASELINE,
                {
                    "name": "tree",
                    "kind": "sklearn",
                    "model": {
                        "estimator": "decision_tree_classifier",
                        "params": {"random_state": 0},
                    },
                    "tune": {
                        "metric": "cv.roc_auc",
                        "search": "grid",
                        "seed": 2,
                        "space": {"model.params.max_depth": {"grid": [1, 3, 5]}},
                    },
                },
            ],
        },
    }
    r = distml.run(spec, output=tmp_path)
    long = r.tables["ladder"]
    tree = long[long["candidate"] == "tree"]
    assert tree["error"].isna().all() and len(tree) == 3
    configs = [json.loads(c) for c in tree["config"]]
    assert all(set(c) == {"model.params.max_depth"} for c in configs)
    assert long[long["candidate"] == "baseline"]["config"].isna().all()
    assert r.metrics["winner"] == "tree"
    search = r.manifest["ladder"]["winner_search"]
    assert search["configurations"] == 3 and search["failed"] == 0
    saved = json.loads((r.run_dir / "model" / "ladder_winner.json").read_text())
    assert "tune" not in saved["spec"] or saved["spec"]["tune"] is None
    depth = search["config"]["model.params.max_depth"]
    assert saved["spec"]["model"]["params"] == {"random_state": 0, "max_depth": depth}


def test_auto_ladder_runs_and_the_manifest_says_which(tmp_path):
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=150),
            "b": rng.normal(size=150),
            "c": rng.choice(["x", "y"], size=150),
        }
    )
    frame["y"] = np.where(frame["a"] > 0, 2.0, -1.0) * frame["b"] + rng.normal(0, 0.3, 150)
    frame.to_parquet(tmp_path / "d.parquet")
    r = distml.run(
        {
            "name": "auto",
            "kind": "ladder",
            "data": {
                "source": str(tmp_path / "d.parquet"),
                "target": "y",
                "split": {"cv": 3, "seed": 0},
            },
            "ladder": {"metric": "rmse", "candidates": "auto"},
        },
        output=tmp_path,
    )
    info = r.manifest["ladder"]
    names = ["baseline", "glm", "forest", "gbm", "mlp"]
    assert info["auto"] is True and [c["name"] for c in info["candidates"]] == names
    assert set(info["auto_choice"]) == set(names)
    assert info["candidates"][1]["model"]["formula"] == 'Q("y") ~ Q("a") + Q("b") + C(Q("c"))'
    s = r.tables["ladder_summary"]
    assert (s["status"] == "ok").all(), s[["candidate", "error"]]
    assert r.metrics["ladder"]["mode"] == "min"
    # the interaction is beyond the linear rung: a tree rung wins
    assert r.metrics["winner_kind"] in ("sklearn", "xgboost", "torch")
    assert r.metrics["winner"] != "baseline"
