"""Hyperparameter search end to end on the shared 2-CPU cluster (and T2 in its own driver):
outputs, reproducibility, tuned ≥ untuned, trial faults (T1), driver kill + --resume (T2),
resources freed after the job (T10)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_checks import actor_ids_by_class, end_autoscaling_coordinator
from ray_checks import wait_resources_free as _wait_resources_free

import distml
from distml.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
#: columns that must agree between two runs of one seeded search (not times)
SAME = ["trial_id", "status", "valid.logloss", "valid.logloss.best", "best_iteration", "iterations"]


def _xgb(name: str, tune: dict, rounds: int = 20, **data) -> dict:
    return {
        "name": name,
        "kind": "xgboost",
        "data": {
            "source": "builtin:breast_cancer",
            "target": "target",
            "split": {"valid": 0.25, "seed": 1},
            **data,
        },
        "model": {"params": {"objective": "binary:logistic"}, "num_boost_round": rounds},
        "tune": {"metric": "valid.logloss", "seed": 0, **tune},
    }


@pytest.mark.usefixtures("ray_cluster")
def test_search_outputs_and_the_tuned_model_beats_defaults(tmp_path, ray_cluster):
    r = distml.run(ROOT / "jobs" / "tune_xgboost.yaml", output=tmp_path, run_id="s1")
    assert r.status == "succeeded" and (r.run_dir / "_SUCCESS").is_file()
    spec = load_spec(ROOT / "jobs" / "tune_xgboost.yaml")
    trials = r.tables["trials"]
    assert len(trials) == spec.tune.num_samples
    assert list(trials.columns[:6]) == ["trial_id", "status", *spec.tune.space]
    assert (
        set(trials["status"]) <= {"completed", "stopped"} and (trials.status == "completed").any()
    )
    # ASHA stopped some trials early: they ran fewer rounds than asked.
    stopped = trials[trials.status == "stopped"]
    assert (stopped["iterations"] < spec.model.num_boost_round).all()
    # two trials ran at once on the 2-CPU cluster (the data's prepare task, holding a CPU while
    # Tune asked for the second trial's, once left the whole search one trial at a time)
    end = trials["finished_at"].to_numpy()
    start = end - trials["time_s"].to_numpy()
    assert any(
        (start[i] < end[j]) and (start[j] < end[i])
        for i in range(len(end))
        for j in range(i + 1, len(end))
    ), trials[["trial_id", "time_s", "finished_at"]]
    # best_config: in the Result, the --json object and the manifest; it is the best trial's.
    assert r.best_config and r.to_dict()["best_config"] == r.best_config
    assert r.manifest["best_config"] == r.best_config
    tune_metrics = r.metrics["tune"]
    best = trials.set_index("trial_id").loc[tune_metrics["best_trial"]]
    assert best["valid.logloss"] == pytest.approx(trials["valid.logloss"].min())
    for path, value in r.best_config.items():
        if path in spec.tune.space:
            assert best[path] == value
    # The run's model is the best trial's own (kept, not refitted): exactly the trial's metric.
    model = r.manifest["tune"]["model"]
    if best["status"] == "completed":
        assert model == {
            "from": "best_trial",
            "trial": best.name,
            "reason": None,
            "matches_trial": True,
        }
        assert r.metrics["valid"]["logloss"] == best["valid.logloss"]
        assert r.manifest["execution"]["model"]["path"] == "best_trial"
        assert "refit_s" not in r.manifest["tune"]["timings_s"]
        assert "refit of the best configuration" not in (r.run_dir / "run.log").read_text()
    else:  # stopped by ASHA: its value is xgboost's per-round figure; the fallback refits
        assert model["from"] == "refit" and "stopped by the scheduler" in model["reason"]
        assert r.metrics["valid"]["logloss"] == pytest.approx(best["valid.logloss"], rel=1e-6)
    assert {"train", "valid", "test"} <= set(r.metrics)
    assert {
        "model/model.ubj",
        "tables/trials.parquet",
        "tables/feature_importance.parquet",
        "tables/learning_curve.parquet",
    } <= set(r.artifacts)
    assert not any("checkpoints" in a for a in r.artifacts)
    assert not (r.run_dir / "checkpoints").exists()  # a complete run is never resumed
    log = (r.run_dir / "run.log").read_text()
    assert f"trial {len(trials)}/{len(trials)}" in log and "best" in log
    # The tuned model is at least as good as xgboost's defaults on the same split.
    untuned = distml.run({**spec.to_dict(), "tune": None, "name": "untuned"}, output=tmp_path)
    assert r.metrics["valid"]["logloss"] <= untuned.metrics["valid"]["logloss"]
    _wait_resources_free(ray_cluster)


@pytest.mark.usefixtures("ray_cluster")
def test_seeded_search_reproduces_its_trials_table(tmp_path):
    spec = _xgb(
        "repro",
        {
            "num_samples": 5,
            "report_every": 5,
            "space": {
                "model.params.max_depth": {"randint": [2, 6]},
                "model.params.eta": {"loguniform": [0.05, 0.5]},
                "model.params.subsample": {"uniform": [0.6, 1.0]},
            },
        },
    )
    a = distml.run(spec, output=tmp_path, run_id="a").tables["trials"]
    b = distml.run(spec, output=tmp_path, run_id="b").tables["trials"]
    cols = SAME + list(spec["tune"]["space"])
    assert a[cols].equals(b[cols])
    assert (a["status"] == "completed").all() and a["model.params.max_depth"].between(2, 6).all()
    assert len(set(a["model.params.eta"])) == 5


def _crash_spec(name: str, samples: int, failures: int) -> dict:
    # No subsampling: a booster continued from a checkpoint equals one trained in one go.
    return _xgb(
        name,
        {
            "num_samples": samples,
            "max_failures": failures,
            "report_every": 1,
            "checkpoint_every": 1,
            "space": {
                "model.params.max_depth": {"randint": [2, 4]},
                "model.params.eta": {"uniform": [0.1, 0.4]},
            },
        },
        rounds=8,
    )


@pytest.mark.usefixtures("ray_cluster")
def test_t1_crashed_trial_resumes_from_its_checkpoint(tmp_path, monkeypatch, ray_cluster):
    """RELIABILITY.md T1: a trial process kills itself at iteration 3 of its first attempt."""
    reference = distml.run(_crash_spec("t1", 2, 1), output=tmp_path, run_id="ref")
    marker = tmp_path / "crashed"
    monkeypatch.setenv("DISTML_TUNE_FAULT", f"{marker}:3")
    r = distml.run(_crash_spec("t1", 2, 1), output=tmp_path, run_id="crash")
    assert r.status == "succeeded" and marker.exists()
    t = r.tables["trials"]
    crashed = t[t.num_failures == 1]
    assert len(crashed) == 1 and (t.num_failures.sum() == 1)
    # The retry started from the checkpoint of iteration 2, not from 0, and finished all rounds.
    assert crashed["resumed_from"].iloc[0] == 2 and crashed["iterations"].iloc[0] == 8
    assert (t["status"] == "completed").all()
    ref = reference.tables["trials"]
    assert list(t["valid.logloss"]) == pytest.approx(list(ref["valid.logloss"]), rel=1e-6)
    _wait_resources_free(ray_cluster)

    # max_failures 0: the crashed trial is reported failed; the job succeeds on the other.
    marker.unlink()
    r0 = distml.run(_crash_spec("t1", 2, 0), output=tmp_path, run_id="nofail")
    t0 = r0.tables["trials"]
    assert sorted(t0["status"]) == ["completed", "failed"]
    failed = t0[t0.status == "failed"].iloc[0]
    assert "died" in failed["error"].lower() or "actor" in failed["error"].lower()
    assert r0.metrics["tune"]["failed"] == 1

    # ... and exits 4 (JobFailed) when that was the only trial.
    marker.unlink()
    with pytest.raises(distml.JobFailed) as e:
        distml.run(_crash_spec("t1", 1, 0), output=tmp_path, run_id="allfail")
    assert "every trial of the search failed" in str(e.value) and "trial_0000" in str(e.value)
    assert not (tmp_path / "t1" / "allfail" / "_SUCCESS").exists()
    _wait_resources_free(ray_cluster)


@pytest.mark.usefixtures("ray_cluster")
def test_fit_errors_fail_their_trials_without_retry(tmp_path, ray_cluster):
    spec = {
        "name": "bad-sk",
        "kind": "sklearn",
        "data": {"source": "builtin:iris", "target": "target", "split": {"valid": 0.3}},
        "model": {"estimator": "random_forest_classifier", "params": {"n_estimators": 5}},
        "tune": {
            "metric": "valid.accuracy",
            "num_samples": 3,
            "max_failures": 2,
            "space": {"model.params.max_depth": {"choice": [-1, -2]}},
        },
    }
    with pytest.raises(distml.JobFailed) as e:
        distml.run(spec, output=tmp_path, run_id="x")
    msg = str(e.value)
    assert msg.startswith(
        "every trial of the search failed or reported no valid.accuracy "
        "(3 trials): trial_0000: InvalidParameterError"
    )
    manifest = json.loads((tmp_path / "bad-sk" / "x" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["exit_code"] == 4
    # A metric the data's task does not have (the task is inferred from the target here).
    wrong = _xgb(
        "wrong",
        {
            "metric": "valid.rmse",
            "num_samples": 2,
            "space": {"model.params.max_depth": {"randint": [2, 3]}},
        },
        rounds=3,
    )
    wrong["model"]["params"] = {}
    with pytest.raises(distml.JobFailed) as e:
        distml.run(wrong, output=tmp_path)
    assert (
        "trial_0000: ValueError: tune.metric valid.rmse is not computed for this job (its "
        "trial reports valid.accuracy"
    ) in str(e.value)
    _wait_resources_free(ray_cluster)


# ------------------------------------------------------------------ T2: kill the driver, resume

T2_SPEC = {
    "name": "t2",
    "kind": "xgboost",
    "data": {
        "source": "synthetic:classification?rows=30000&features=10&seed=2",
        "target": "target",
        "split": {"valid": 0.2, "seed": 1},
    },
    "model": {"params": {"objective": "binary:logistic"}, "num_boost_round": 150},
    "tune": {
        "metric": "valid.logloss",
        "num_samples": 8,
        "seed": 5,
        "space": {
            "model.params.max_depth": {"randint": [4, 6]},
            "model.params.eta": {"loguniform": [0.05, 0.3]},
        },
    },
}


def _saved_trials(exp: Path) -> list[tuple[str, dict]]:
    """(status, last result) of each trial in the newest experiment state Tune saved."""
    states = sorted(exp.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return []
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, ValueError):  # being rewritten
        return []
    out = []
    for trial_json, meta_json in data["trial_data"]:
        out.append((json.loads(trial_json)["status"], json.loads(meta_json)["last_result"]))
    return out


@pytest.mark.allow_local_ray
@pytest.mark.usefixtures("ray_cluster")
def test_t2_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    """RELIABILITY.md T2: kill the driver after >= 2 trials finished, rerun with --resume."""
    spec_path = tmp_path / "t2.yaml"
    spec_path.write_text(json.dumps(T2_SPEC))
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "distml",
        "run",
        str(spec_path),
        "--output",
        str(out),
        "--run-id",
        "r1",
        "--json",
    ]
    env = {k: v for k, v in os.environ.items() if k != "DISTML_TUNE_FAULT"}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    exp = out / "t2" / "r1" / "checkpoints" / "tune"
    deadline = time.monotonic() + 240
    finished: list[dict] = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            saved = _saved_trials(exp)
            finished = [res for status, res in saved if status == "TERMINATED"]
            if len(finished) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the search finished before the driver could be killed"
        assert len(finished) >= 2, "no saved state with 2 finished trials in time"
        assert len(finished) < T2_SPEC["tune"]["num_samples"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (out / "t2" / "r1" / "_SUCCESS").exists()

    resumed_at = time.time()
    again = subprocess.run(
        cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    r = distml.Result.load(json.loads(again.stdout)["run_dir"])
    assert r.manifest["tune"]["resumed"] is True
    table = r.tables["trials"]
    # No trial that had finished runs again: its last report is the one saved before the kill.
    done = {res["finished_at"] for res in finished}
    kept = table[table["finished_at"].isin(done)]
    assert len(kept) == len(finished) and (kept["finished_at"] < resumed_at).all()
    assert (table["finished_at"] >= resumed_at).sum() == len(table) - len(finished)
    # The final table equals an uninterrupted run of the same seeded search.
    ref = distml.run(T2_SPEC, output=tmp_path / "ref").tables["trials"]
    cols = SAME + list(T2_SPEC["tune"]["space"])
    assert table[cols].equals(ref[cols])
    assert (
        r.best_config == distml.Result.load(next((tmp_path / "ref" / "t2").iterdir())).best_config
    )
    assert math.isclose(r.metrics["valid"]["logloss"], ref["valid.logloss"].min(), rel_tol=1e-6)


@pytest.mark.usefixtures("ray_cluster")
def test_a_kind_without_search_hooks_runs_its_whole_job_per_trial(tmp_path, ray_cluster):
    """statsmodels has no tune_* hooks: each trial runs the kind's own pipeline (its Ray tasks
    inside the trial's placement group) and reports the run's metrics once."""
    spec = {
        "name": "sm",
        "kind": "statsmodels",
        "data": {"source": "builtin:spector"},
        "model": {"method": "logit", "formula": "GRADE ~ GPA + TUCE + PSI"},
        "tune": {
            "metric": "aic",
            "search": "grid",
            "space": {"model.method": {"grid": ["logit", "probit"]}},
        },
    }
    r = distml.run(spec, output=tmp_path)
    t = r.tables["trials"]
    assert list(t["model.method"]) == ["logit", "probit"] and (t.status == "completed").all()
    assert r.best_config == {"model.method": t.loc[t["aic"].idxmin(), "model.method"]}
    assert r.manifest["tune"]["data"] == "per_trial"
    assert r.metrics["tune"]["model_value"] == t["aic"].min()  # the best trial's own output
    assert r.manifest["tune"]["model"]["from"] == "best_trial"
    _wait_resources_free(ray_cluster)


@pytest.mark.usefixtures("ray_cluster")
def test_trials_of_a_multi_worker_job_each_drive_a_train_worker_group(
    tmp_path, ray_cluster, monkeypatch
):
    """num_workers: 2 → each trial builds its own Ray Train run inside the Tune trial (no
    Tuner(trainer) in Ray 2.60); on 2 CPUs one trial at a time, so the worker groups never wait
    on each other; the best trial's own output is the run's (no refit). On a cluster distml
    started (as a CLI run's), the trials' groups skip what only an autoscaled cluster uses, as
    the driver's own group does: the trial processes are told by the driver."""
    from distml.runtime import cluster

    monkeypatch.setattr(cluster, "fixed_size", lambda: True)  # in this driver process only
    end_autoscaling_coordinator()  # a detached singleton an earlier Train run may have made
    before = actor_ids_by_class()
    spec = _xgb("mw", {"num_samples": 2, "search": "random", "scheduler": "none"}, rounds=8)
    spec["data"] = {
        "source": "synthetic:classification?rows=3000&features=6&seed=4",
        "target": "target",
        "split": {"valid": 0.25, "seed": 1},
    }
    spec["resources"] = {"num_workers": 2}
    spec["tune"]["space"] = {"model.params.max_depth": {"choice": [2, 5]}}
    r = distml.run(spec, output=tmp_path)
    tune = r.manifest["tune"]
    assert tune["worker_group"]["path"] == "train_worker_group" and tune["concurrency"] == 1
    assert tune["resources_per_trial"] == {"cpu": 0, "memory": 1}
    t = r.tables["trials"]
    assert (t.status == "completed").all() and len(t) == 2
    # the best trial's own worker-group run is the run's model: no second worker group
    assert r.manifest["execution"]["model"]["path"] == "train_worker_group"
    assert tune["model"]["from"] == "best_trial" and tune["model"]["matches_trial"] is True
    assert r.metrics["valid"]["logloss"] == t["valid.logloss"].min()
    started = {name: ids - before.get(name, set()) for name, ids in actor_ids_by_class().items()}
    assert len(started.get("TrainController", ())) == 2  # a group per trial
    for skipped in ("_AutoscalingCoordinatorActor", "DatasetManager", "PreemptionWatcher"):
        assert not started.get(skipped), skipped
    _wait_resources_free(ray_cluster)


def test_train_worker_reports_reach_tune_as_trial_reports():
    """The Train callback of a worker-group trial turns the workers' reports into distml trial
    reports (objective, iteration, best so far) every report_every iterations; reports without
    the searched metric (xgboost's checkpoint reports) are not forwarded."""
    from distml.tune.session import OBJECTIVE, _train_to_tune_class

    cls = _train_to_tune_class()
    cb = cls.__new__(cls)  # __init__ needs a live Tune session for its queue

    class Queue:
        items: list = []

        def put(self, item):
            self.items.append(item)

    cb.metric, cb.mode, cb.every, cb.best, cb.best_iteration = "valid.accuracy", "max", 2, None, -1
    cb.t0, cb.queue = time.time(), Queue()
    cb.after_report(None, [{"epoch": 1, "valid.accuracy": 0.8}], None)  # not due: every 2
    cb.after_report(None, [{"epoch": 2, "valid.accuracy": 0.7, "valid.loss": 0.9}], None)
    cb.after_report(None, [{"iteration": 4}], None)  # no metric
    (item,) = Queue.items
    assert item[OBJECTIVE] == 0.7 and item["iteration"] == 2 and item["final"] is False
    assert item["best"] == 0.8 and item["best_iteration"] == 1 and item["valid.loss"] == 0.9


@pytest.mark.usefixtures("ray_cluster")
def test_the_kept_best_trial_is_the_plain_fit_of_its_configuration_and_the_fallback_refits(
    tmp_path, monkeypatch
):
    """The run's model is the best trial's own, not refitted: its valid metric is the trial's
    to the last digit and its predictions are plain ``xgboost.train``'s for the best
    configuration on the same split; when no output was kept the refit (the fallback) gives
    the same model."""
    import numpy as np
    import pandas as pd
    import xgboost as xgb

    from distml.runtime.data import split_indices
    from distml.runtime.datasets import load_builtin
    from distml.tune.kept import KeptStore

    spec = _xgb(
        "kept",
        {"num_samples": 3, "space": {"model.params.max_depth": {"choice": [1, 2, 4]}}},
        rounds=12,
    )
    r = distml.run(spec, output=tmp_path, run_id="kept")
    t = r.tables["trials"].set_index("trial_id")
    best = t.loc[r.metrics["tune"]["best_trial"]]
    assert r.manifest["tune"]["model"]["from"] == "best_trial"
    assert r.metrics["valid"]["logloss"] == best["valid.logloss"] == t["valid.logloss"].min()
    assert r.manifest["execution"]["model"]["path"] == "best_trial"
    assert "model_s" in r.manifest["tune"]["timings_s"]
    assert set(r.tables["learning_curve"]["split"]) == {"valid"}  # what the trial evaluated
    # the plain library, the best configuration, the same split
    frame = load_builtin("breast_cancer")
    X, y = frame.drop(columns="target"), frame["target"].to_numpy()
    parts = split_indices(y, load_spec(spec).data.split_spec, classification=True)
    params = {
        "objective": "binary:logistic",
        "nthread": 1,
        "seed": 0,
        **{k.rsplit(".", 1)[-1]: v for k, v in r.best_config.items()},
    }
    dtrain = xgb.DMatrix(X.iloc[parts["train"]], label=y[parts["train"]])
    plain = xgb.train(params, dtrain, num_boost_round=12)
    pred = r.tables["predictions"]
    valid = pred[pred["split"] == "valid"]
    want = plain.predict(xgb.DMatrix(X.iloc[valid["row"].to_numpy()]))
    np.testing.assert_allclose(valid["proba_1"], want, rtol=1e-6, atol=1e-7)

    # The fallback: the driver finds no kept output and refits the best configuration.
    monkeypatch.setattr(KeptStore, "value_of", lambda self, trial: None)
    f = distml.run(spec, output=tmp_path, run_id="refit")
    model = f.manifest["tune"]["model"]
    assert model["from"] == "refit" and "no output of" in model["reason"]
    assert "refit_s" in f.manifest["tune"]["timings_s"] and model["matches_trial"] is True
    assert f.metrics["valid"] == pytest.approx(r.metrics["valid"], rel=1e-9)
    pd.testing.assert_frame_equal(f.tables["predictions"], r.tables["predictions"])


def _two_at_a_time(trial, num_samples: int, tmp_path, name: str):
    """The Tuner of distml's searches over ``trial`` (1 CPU each, 2 at once, x in [0, 1])."""
    from ray import tune

    from distml.tune.tuner import make_tuner, tune_env

    with tune_env():
        return make_tuner(
            tune.with_resources(trial, {"cpu": 1}),
            {"x": tune.uniform(0, 1)},
            mode="min",
            num_samples=num_samples,
            concurrency=2,
            storage_path=str(tmp_path),
            seed=0,
            name=name,
        ).fit()


def test_a_search_whose_trials_all_ended_removes_its_idle_actors_at_once(tmp_path, ray_cluster):
    """distml's searches end without Tune's graceful stop of the actors its reuse keeps (0.6-0.7 s
    of every search on 2 cores): once every trial has ended, they are removed at once."""

    def trial(config):  # defined here: pickled by value (the workers cannot import tests)
        from ray import tune

        tune.report({"objective": config["x"]})

    before = set(ray_cluster._private.state.actors())
    grid = _two_at_a_time(trial, 4, tmp_path, "quick-end")
    assert sorted(r.metrics["objective"] for r in grid) == sorted(r.config["x"] for r in grid)
    ends = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = [a for i, a in ray_cluster._private.state.actors().items() if i not in before]
        ends = [str(a["DeathCause"]) for a in new if "ImplicitFunc" in a["ActorClassName"]]
        if ends and all(a["State"] == "DEAD" for a in new):
            break
        time.sleep(0.2)
    assert ends and all("DEAD" == a["State"] for a in new)
    # killed, not stopped one by one (Tune's own end: "all references ... were removed")
    assert any("ray.kill" in e for e in ends), ends
    _wait_resources_free(ray_cluster)


def test_trial_actors_start_without_a_runtime_env_and_the_search_frees_its_cpus(
    tmp_path, ray_cluster, monkeypatch
):
    """Tune gives its trial actors their environment variables as a ``runtime_env`` (a worker
    started through Ray's setup script: 0.3 s more per search); distml sets the same variables
    as the actor's first step. The trial still sees them (Tune does not move it into the trial
    folder), and the search's placement groups are gone when ``fit`` returns, so the next
    search's trials start at once."""

    def trial(config):  # defined here: pickled by value (the workers cannot import tests)
        import os

        import ray
        from ray import tune

        tune.report(
            {
                "objective": config["x"],
                "runtime_env": dict(ray.get_runtime_context().runtime_env),
                "pl_disable_fork": os.environ.get("PL_DISABLE_FORK"),
                "chdir": os.environ.get("RAY_CHDIR_TO_TRIAL_DIR"),
                "cwd": os.getcwd(),
            }
        )

    from ray.tune.execution.class_cache import ENV_VARS_TO_PROPAGATE

    for name in ENV_VARS_TO_PROPAGATE:  # (with AWS credentials, Tune's runtime_env is kept)
        monkeypatch.delenv(name, raising=False)
    driver_env = dict(ray_cluster.get_runtime_context().runtime_env)
    before = {name for name in ray_cluster.cluster_resources() if "_group_" in name}
    grid = _two_at_a_time(trial, 3, tmp_path, "plain-actors")
    bundles = [n for n in ray_cluster.cluster_resources() if "_group_" in n and n not in before]
    assert bundles == []  # this search's placement groups are gone (others' may be listed)
    assert len(grid) == 3
    for r in grid:
        assert r.metrics["runtime_env"] == driver_env  # nothing added for the trial actor
        assert r.metrics["pl_disable_fork"] == "1"  # Tune's own variable, still set
        assert r.metrics["chdir"] == "0"  # propagated from distml's TUNE_ENV
        assert r.metrics["cwd"] == os.getcwd()
    _wait_resources_free(ray_cluster)
