"""The worker side of multi-worker xgboost: each Train worker reads its shard, boosts with the
group (xgboost's collective), reports and checkpoints every few seconds, and rank 0 evaluates."""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd

from distml.jobs.xgboost.distributed import (
    TEST,
    TEST_SOURCE,
    TRAIN,
    VALID,
    Plan,
    read_frame_shard,
    read_matrix,
    set_stopper_state,
    shard_units,
    stopper_state,
)
from distml.runtime import faults
from distml.runtime import workers as D
from distml.runtime.threads import fit_pools


def _read_shard(plan: Plan, codes, target: str):
    """This worker's rows: a float32 :class:`Matrix` when every feature is plain numeric, else
    a typed :class:`Frame`."""
    import ray.train

    ctx = ray.train.get_context()
    units = shard_units(plan.units, ctx.get_world_rank(), ctx.get_world_size())
    matrix = read_matrix(units, plan)
    return matrix if matrix is not None else read_frame_shard(units, plan, codes, target)


def train_loop(config: dict) -> None:
    import ray.train
    import xgboost as xgb
    from xgboost import collective

    from distml.jobs._supervised import Prepared

    job, plan, labels = config["job"], config["plan"], config["labels"]
    fit_pools(job.spec.resources.cpus_per_worker)
    t0 = time.perf_counter()
    started = time.time() - float(config.get("submitted_at") or time.time())
    shard = _read_shard(plan, config["codes"], config["target"])
    rows = shard.rows
    split = config["codes"][rows]
    y = labels[rows]
    prep = Prepared(shard.header, np.empty(0), plan.task, plan.classes, plan.categories)
    params = job.booster_params(prep)
    nthread = params.get("nthread", -1)
    t_read = time.perf_counter() - t0
    t_dm = time.perf_counter()

    def dmatrix(mask):
        return shard.dmatrix(mask, label=y[mask], nthread=nthread)

    dtrain = dmatrix(split == TRAIN)
    has_valid = plan.rows.get("valid", 0) > 0
    evals = [(dtrain, "train")] + ([(dmatrix(split == VALID), "valid")] if has_valid else [])
    matrices = [(split == code, dm) for code, (dm, _) in zip((TRAIN, VALID), evals)]
    model = job.spec.model
    es_rounds = model.early_stopping_rounds if has_valid else None

    restored = ray.train.get_checkpoint()
    booster, state = None, {"history": {}, "attempts": 0, "early_stopping": None}
    if restored is not None:
        with restored.as_directory() as d:
            booster = xgb.Booster(model_file=os.path.join(d, "model.ubj"))
            with open(os.path.join(d, "state.json"), encoding="utf-8") as fh:
                state = json.load(fh)
    done = booster.num_boosted_rounds() if booster is not None else 0
    attempts = int(state["attempts"]) + 1
    stopper = xgb.callback.EarlyStopping(rounds=es_rounds) if es_rounds else None
    if stopper is not None:
        set_stopper_state(stopper, state.get("early_stopping"))
    reporter = _reporter(config, state["history"], stopper, attempts, model.num_boost_round)
    reporter.predict_on(matrices, lambda booster: _predictor(job, prep, params, booster))
    from distml.progress import xgboost_callback

    shown = xgboost_callback(
        config.get("progress") if ray.train.get_context().get_world_rank() == 0 else None,
        model.num_boost_round,
    )
    callbacks = [c for c in (stopper, reporter, shown) if c is not None]
    t1 = time.perf_counter()
    t_dm = t1 - t_dm
    if done < model.num_boost_round and not _stopped(stopper, state):
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=model.num_boost_round - done,
            evals=evals,
            callbacks=callbacks,
            xgb_model=booster,
            verbose_eval=False,
        )
    t_fit = time.perf_counter() - t1
    booster.set_attr(distml_objective=str(params["objective"]))
    predicted = reporter.predicted
    _finish(
        job,
        plan,
        booster,
        shard,
        prep,
        labels,
        rows,
        split,
        predicted,
        reporter.history,
        attempts,
        done,
        {
            "group_start": round(started, 4),
            "read": round(t_read, 4),
            "dmatrix": round(t_dm, 4),
            "fit": round(t_fit, 4),
        },
        collective,
    )


def _predictor(job, prep, params: dict, booster):
    """``matrix -> (pred, proba)`` of the booster, for the training matrices in
    ``after_training``: they still hold xgboost's prediction cache there (``xgboost.train``
    resets it on return), so the predictions of the last round cost no pass over the trees."""
    booster.set_attr(distml_objective=str(params["objective"]))
    return lambda matrix: job.predict_matrix(booster, prep, matrix)


def _stopped(stopper, state: dict) -> bool:
    """Whether the checkpointed early-stopping state had already stopped training."""
    es = state.get("early_stopping")
    return bool(stopper is not None and es and es["current_rounds"] >= stopper.rounds)


def _reporter(config: dict, history: dict, stopper, attempts: int, total: int):
    """RayTrainReportCallback that checkpoints with distml's state (history, early stopping,
    attempts) when the :class:`~distml.runtime.workers.Cadence` says so, and reports nothing
    in between (each report is a group barrier and may wait for the controller's poll)."""
    import ray.train
    from ray.train import Checkpoint
    from ray.train.xgboost import RayTrainReportCallback
    from xgboost import collective

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    def agree(flag: bool) -> bool:
        if world == 1:
            return flag
        mine = np.array([int(flag and rank == 0)], dtype=np.int32)
        return bool(collective.allreduce(mine, collective.Op.MAX)[0])

    cadence = D.Cadence(agree, config.get("checkpoint_interval_s"))

    class Reporter(RayTrainReportCallback):
        def __init__(self):
            super().__init__(frequency=1, checkpoint_at_end=False)
            self.history = {s: {m: list(v) for m, v in ms.items()} for s, ms in history.items()}
            self.start = 0
            self.matrices: list = []
            self.predictor = None
            self.predicted: list | None = None  # [(rows mask, pred, proba)] after training

        def predict_on(self, matrices: list, predictor) -> None:
            """Predict on ``matrices`` ([(rows mask, DMatrix)]) after the last round, with
            ``predictor(booster)(matrix) -> (pred, proba)``."""
            self.matrices, self.predictor = matrices, predictor

        def before_training(self, model):
            self.start = model.num_boosted_rounds()
            return model

        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            for s, by_metric in evals_log.items():
                for m, values in by_metric.items():
                    self.history.setdefault(s, {}).setdefault(m, []).append(float(values[-1]))
            iteration = self.start + epoch + 1
            faults.crash(
                config["fault"],
                "train.iteration",
                iteration,
                rank=rank,
                world=world,
                delay_s=D.crash_delay_s(),
            )
            if iteration < total and cadence.due():
                report = {"iteration": iteration}
                with self._get_checkpoint(model) as checkpoint:
                    ray.train.report(report, checkpoint=checkpoint)
            return False

        def after_training(self, model):
            if self.predictor is not None:
                predict = self.predictor(model)
                self.predicted = [(mask, *predict(dm)) for mask, dm in self.matrices]
            return model

        def _get_checkpoint(self, model):
            import contextlib

            @contextlib.contextmanager
            def make():
                if ray.train.get_context().get_world_rank() != 0:
                    yield None
                    return
                with tempfile.TemporaryDirectory() as d:
                    model.save_model(os.path.join(d, "model.ubj"))
                    with open(os.path.join(d, "state.json"), "w", encoding="utf-8") as fh:
                        json.dump(
                            {
                                "history": self.history,
                                "attempts": attempts,
                                "early_stopping": stopper_state(stopper),
                            },
                            fh,
                        )
                    yield Checkpoint(d)

            return make()

    return Reporter()


def _finish(
    job,
    plan: Plan,
    booster,
    shard,
    prep,
    labels: np.ndarray,
    rows,
    split,
    predicted: list | None,
    history: dict,
    attempts: int,
    resumed_from: int,
    timings: dict,
    collective,
) -> None:
    """Predict the own rows (those of the training matrices were predicted after the last round:
    ``predicted``), assemble the predictions on rank 0, compute the outputs there."""
    import ray.train
    from ray.train import Checkpoint

    from distml.jobs._supervised import prediction_rows, py_scalar
    from distml.runtime import metrics as M

    width = 1 + (plan.n_classes if plan.classes is not None else 0)
    local = np.zeros((plan.n_total, width), dtype=np.float64)
    has_proba = np.zeros(1)
    t0 = time.perf_counter()
    pieces = list(predicted or [])
    rest = np.ones(len(rows), dtype=bool)
    for mask, _, _ in pieces:
        rest &= ~mask
    if rest.any():  # test rows, or a run restored after its last round
        pieces.append((rest, *job.predict_matrix(booster, prep, shard.dmatrix(rest))))
    for mask, pred, proba in pieces:
        local[rows[mask], 0] = pred
        if proba is not None:
            local[rows[mask], 1:] = proba
            has_proba[0] = 1
    timings["predict"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    world = collective.get_world_size() if collective.is_distributed() else 1
    if world > 1:
        local = collective.allreduce(local, collective.Op.SUM).reshape(local.shape)
        has_proba = collective.allreduce(has_proba, collective.Op.MAX)
        codes = np.full(plan.n_total, -1, dtype=np.int64)
        codes[rows] = split
        codes = collective.allreduce(codes, collective.Op.MAX)
    else:
        codes = np.full(plan.n_total, -1, dtype=np.int64)
        codes[rows] = split
    timings["gather"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    rank = ray.train.get_context().get_world_rank()
    if rank != 0:
        ray.train.report({"final": 1}, checkpoint=None)
        return
    y_all = labels
    metrics: dict[str, Any] = {}
    confusion: list = []
    predictions = []
    named = [("train", TRAIN), ("valid", VALID), ("test", TEST)]
    n_source = int((codes != TEST_SOURCE).sum())
    if plan.rows.get("test") and (codes == TEST_SOURCE).any():
        named[-1] = ("test", TEST_SOURCE)
    held_out = bool((codes != TRAIN).any())
    for name, code in named:
        mask = codes == code
        if not mask.any():
            continue
        yy = y_all[mask]
        pred = local[mask, 0]
        proba = None
        if plan.task == "classification":
            yy = yy.astype(np.int64)
            pred = pred.astype(np.int64)
            proba = local[mask, 1:] if has_proba[0] else None
            metrics[name] = M.classification_metrics(yy, pred, proba, plan.n_classes)
            confusion += M.confusion_rows(name, yy, pred, plan.classes)
        else:
            metrics[name] = M.regression_metrics(yy, pred)
        if name != "train" or not held_out:  # as the single-task path keeps them
            positions = np.nonzero(mask)[0] - (n_source if code == TEST_SOURCE else 0)
            predictions.append(prediction_rows(name, positions, yy, pred, proba, plan.classes))
    metrics["num_boosted_rounds"] = int(booster.num_boosted_rounds())
    if job.spec.model.early_stopping_rounds and plan.rows.get("valid"):
        metrics["best_iteration"] = int(booster.best_iteration)
    metrics.update(
        n_rows=int(
            sum(v for k, v in plan.rows.items() if k != "test" or not (codes == TEST_SOURCE).any())
        ),
        n_features=len(plan.features),
    )
    curve = [
        {"iteration": i, "split": s, "metric": m, "value": float(v)}
        for s, by_metric in history.items()
        for m, values in by_metric.items()
        for i, v in enumerate(values)
    ]
    gain = booster.get_score(importance_type="gain")
    schema = {
        "target": job.spec.data.target,
        "task": plan.task,
        "features": plan.features,
        "dtypes": {c: str(t) for c, t in shard.header.dtypes.items()},
        "categorical": plan.categories,
        "classes": [py_scalar(c) for c in plan.classes] if plan.classes is not None else None,
    }
    timings["outputs"] = round(time.perf_counter() - t0, 4)
    final = {
        "metrics": metrics,
        "curve": curve,
        "confusion": confusion,
        "importance": {
            "feature": plan.features,
            "importance": [float(gain.get(f, 0.0)) for f in plan.features],
        },
        "schema": schema,
        "attempts": attempts,
        "resumed_from": resumed_from,
        "timings": timings,
    }
    with tempfile.TemporaryDirectory() as d:
        booster.save_model(os.path.join(d, "model.ubj"))
        with open(os.path.join(d, "result.json"), "w", encoding="utf-8") as fh:
            json.dump(final, fh)
        if predictions:
            pd.concat(predictions, ignore_index=True).to_parquet(
                os.path.join(d, "predictions.parquet")
            )
        with open(os.path.join(d, "state.json"), "w", encoding="utf-8") as fh:
            json.dump(
                {"history": history, "attempts": attempts, "early_stopping": None, "final": True},
                fh,
            )
        ray.train.report({"final": 1}, checkpoint=Checkpoint(d))
