"""Multi-worker xgboost (Ray Train V2 worker group) on the shared 2-CPU cluster: the same quality
as plain ``xgboost.train`` on the same split, the same outputs as the single-task path, and
RELIABILITY.md T3/T10 — a worker that dies part way is restarted from a checkpoint, the run
finishes with the rounds asked, and every CPU is free afterwards. One worker-group run (plus its
restart) keeps this file at about a minute."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ray_checks import actor_ids_by_class as _actor_ids_by_class
from ray_checks import end_autoscaling_coordinator as _end_autoscaling_coordinator
from ray_checks import wait_dead as _wait_dead
from ray_checks import wait_resources_free as _wait_resources_free

import distml
from distml.runtime.data import split_indices

pytestmark = pytest.mark.usefixtures("ray_cluster")

SOURCE = "synthetic:classification?rows=12000&features=8&seed=5"
ROUNDS = 30


def test_two_workers_match_plain_xgboost_and_survive_a_worker_death(
    tmp_path, monkeypatch, ray_cluster
):
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    from distml.runtime.datasets import synthetic_frame

    marker = tmp_path / "crashed"
    monkeypatch.setenv("DISTML_TRAIN_FAULT", f"{marker}:{ROUNDS // 2}")
    spec = {
        "name": "xgb-dist",
        "kind": "xgboost",
        "data": {
            "source": SOURCE,
            "target": "target",
            "split": {"valid": 0.2, "test": 0.2, "seed": 7},
        },
        "model": {
            "params": {
                "objective": "binary:logistic",
                "eval_metric": ["logloss", "auc"],
                "max_depth": 4,
                "eta": 0.3,
            },
            "num_boost_round": ROUNDS,
        },
        "resources": {"num_workers": 2, "max_failures": 1},
        "output": {"dir": str(tmp_path)},
    }
    # as on a cluster distml started (a CLI run's): Train without autoscaler requests, dataset
    # manager or preemption watcher, through a worker death and a restart
    from distml.runtime import cluster

    monkeypatch.setattr(cluster, "fixed_size", lambda: True)
    _end_autoscaling_coordinator()  # a detached singleton an earlier Train run may have made
    before = _actor_ids_by_class()
    r = distml.run(spec)
    assert r.status == "succeeded" and (r.run_dir / "_SUCCESS").is_file()
    _wait_resources_free(ray_cluster)  # T10
    started = {name: ids - before.get(name, set()) for name, ids in _actor_ids_by_class().items()}
    assert len(started.get("RayTrainWorker", ())) == 4  # two groups: the first, the restart
    assert len(started.get("TrainController", ())) == 1
    for skipped in ("_AutoscalingCoordinatorActor", "DatasetManager", "PreemptionWatcher"):
        assert not started.get(skipped), skipped
    # the placement-group cleaner (one per run, through the restart) ends with the run (a warm
    # cluster keeps nothing of it)
    cleaners = started.get("PlacementGroupCleaner", set())
    assert len(cleaners) == 1 and _wait_dead(cleaners)

    # T3: a worker died once at round ROUNDS//2; the group restarted from a checkpoint > 0 and
    # finished the rounds asked.
    crash = json.loads(marker.read_text())
    assert crash["iteration"] == ROUNDS // 2 and crash["rank"] == 1
    ex = r.manifest["execution"]
    assert ex["path"] == "train_worker_group" and ex["workers"] == 2
    assert ex["attempts"] == 2 and 0 < ex["resumed_from"] < ROUNDS // 2
    assert r.metrics["num_boosted_rounds"] == ROUNDS

    # Distributed equals local: plain xgboost.train on the same rows and split.
    df = synthetic_frame(SOURCE)
    X, y = df.drop(columns="target"), df["target"].to_numpy()
    parts = split_indices(y, distml.load_spec(spec).data.split_spec, classification=True)
    params = dict(spec["model"]["params"], nthread=2, seed=0)
    dtrain = xgb.DMatrix(X.iloc[parts["train"]], label=y[parts["train"]])
    bst = xgb.train(params, dtrain, ROUNDS)
    for split in ("valid", "test"):
        plain = roc_auc_score(y[parts[split]], bst.predict(xgb.DMatrix(X.iloc[parts[split]])))
        assert abs(r.metrics[split]["roc_auc"] - plain) <= 0.005, (split, plain)
    assert r.manifest["rows"] == {k: len(v) for k, v in parts.items()}

    # The same outputs as the single-task path, under the same names.
    assert set(r.metrics) >= {"train", "valid", "test", "num_boosted_rounds", "n_rows"}
    assert set(r.metrics["valid"]) == {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "logloss",
    }
    curve = r.tables["learning_curve"]
    assert list(curve.columns) == ["iteration", "split", "metric", "value"]
    assert set(curve["split"]) == {"train", "valid"} and set(curve["metric"]) == {"logloss", "auc"}
    # the history is continuous across the restart: one value per round and metric
    assert sorted(curve.groupby(["split", "metric"]).size().unique()) == [ROUNDS]
    imp = r.tables["feature_importance"]
    assert list(imp.columns) == ["feature", "importance"] and imp["importance"].max() > 0
    cm = r.tables["confusion_matrix"]
    assert cm[cm.split == "test"]["count"].sum() == len(parts["test"])
    pred = r.tables["predictions"]  # held-out rows, positions in the source, as in one task
    assert set(pred["split"]) == {"valid", "test"} and len(pred) == len(parts["valid"]) + len(
        parts["test"]
    )
    np.testing.assert_array_equal(pred[pred.split == "test"]["row"].to_numpy(), parts["test"])
    saved = xgb.Booster(model_file=str(r.run_dir / "model" / "model.ubj"))
    p = saved.predict(xgb.DMatrix(X.iloc[parts["test"]]))
    assert roc_auc_score(y[parts["test"]], p) == pytest.approx(
        r.metrics["test"]["roc_auc"], abs=1e-9
    )
    assert np.isfinite(p).all()
    # the training matrices' rows are predicted from xgboost's cache after the last round:
    # the same probabilities as the saved model's, row by row, and the same train figures
    valid = pred[pred.split == "valid"]
    np.testing.assert_array_equal(np.sort(valid["row"].to_numpy()), parts["valid"])
    np.testing.assert_allclose(
        valid["proba_1"].to_numpy(),
        saved.predict(xgb.DMatrix(X.iloc[valid["row"].to_numpy()])),
        rtol=0,
        atol=1e-7,
    )
    p_train = saved.predict(xgb.DMatrix(X.iloc[parts["train"]]))
    assert roc_auc_score(y[parts["train"]], p_train) == pytest.approx(
        r.metrics["train"]["roc_auc"], abs=1e-9
    )
    assert not (r.run_dir / "checkpoints" / "train").exists()  # restart state is not a result
