"""Kind ``xgboost``: gradient boosting with ``params`` passed to xgboost unchanged.

With ``resources.num_workers: 1`` the whole job (read, split, train, evaluate) runs in one Ray
task: a Ray Train worker group costs ~13 s to start here and does not pay for data that fits one
worker. Early stopping watches the valid split; the evaluation history is kept as the
``learning_curve`` table; feature importance is xgboost's ``gain``; the model is saved as
``model/model.ubj`` (xgboost's native binary JSON).

In a search (:mod:`distml.tune`) a trial boosts round by round and reports the searched metric
as xgboost evaluates it each round (``auc`` → ``roc_auc``, ``error`` → ``accuracy = 1 - error``,
…), so ASHA or the median rule can stop it; it checkpoints the booster (raw bytes) with the
early-stopping state, and a retried trial continues from there with the remaining rounds.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from distml.errors import DataError, one_line
from distml.jobs._supervised import Prepared, TuneData
from distml.jobs.boosting import BoostingJob, curve_tables
from distml.jobs.xgboost.distributed import set_stopper_state, stopper_state
from distml.spec.base import JobSpec, StrictModel

if TYPE_CHECKING:  # heavy: imported where used, so `distml validate` stays light
    import numpy as np
    import pandas as pd


class XGBoostModel(StrictModel):
    """The ``model`` section of an xgboost job."""

    params: dict[str, Any] = Field(
        default_factory=dict, description="Booster parameters, passed to xgboost.train unchanged."
    )
    num_boost_round: int = Field(100, ge=1, le=1_000_000, description="Boosting rounds.")
    early_stopping_rounds: int | None = Field(
        None,
        ge=1,
        description="Stop when the last valid eval_metric has not improved for N rounds.",
    )


class Spec(JobSpec):
    """An xgboost job."""

    kind: Literal["xgboost"]
    model: XGBoostModel = Field(default_factory=XGBoostModel)

    @model_validator(mode="after")
    def _checks(self) -> "Spec":
        split = self.data.split_spec
        if self.model.early_stopping_rounds and (split is None or split.valid == 0):
            raise ValueError(
                "model.early_stopping_rounds needs a validation split; data.split has no valid "
                "fraction; set data.split.valid (e.g. 0.2) or drop early_stopping_rounds"
            )
        if self.resources.num_workers > 1 and split is not None and split.cv:
            raise ValueError(
                "data.split.cv and resources.num_workers conflict: cross-validation folds run as "
                f"parallel single-worker tasks; got cv={split.cv} and num_workers="
                f"{self.resources.num_workers}; set resources.num_workers: 1"
            )
        return self


_CLASSIFICATION_PREFIXES = ("binary:", "multi:")
#: distml metric → (xgboost eval_metric for binary, multiclass, regression); what a trial can
#: report every round. accuracy comes from the error rate.
_ROUND_METRICS: dict[str, tuple[str | None, str | None, str | None]] = {
    "logloss": ("logloss", "mlogloss", None),
    "roc_auc": ("auc", "auc", None),
    "accuracy": ("error", "merror", None),
    "rmse": (None, None, "rmse"),
    "mae": (None, None, "mae"),
}


class Job(BoostingJob):
    """Single-task xgboost training."""

    round_metrics = _ROUND_METRICS

    spec: Spec
    trains_in_worker_group = True

    @classmethod
    def load_model(cls, run_dir: Path, spec: Spec, schema: dict) -> Any:
        """The run's booster, from xgboost's native ``model/model.ubj`` (probed in a child
        process first: a crafted file must not crash the caller)."""
        import xgboost as xgb

        run = Path(run_dir)
        path = run / "model" / "model.ubj"
        probe_model(run, path, list(schema["features"]))
        try:
            return xgb.Booster(model_file=str(path))
        except (xgb.core.XGBoostError, UnicodeDecodeError) as e:  # message may not decode
            raise DataError(
                f"run dir {str(run)!r}: model/model.ubj is not a readable xgboost "
                f"model ({one_line(e)})"
            ) from None

    def check_data(self):
        info = super().check_data()
        bad = [c for c in info.features if any(ch in c for ch in "[]<")]
        if bad:
            raise DataError(
                f"data.features: column {bad[0]!r} has a name xgboost cannot use "
                "(it may not contain [, ] or <); rename it or list it in data.exclude"
            )
        return info

    def task(self) -> str | None:
        objective = self.spec.model.params.get("objective")
        if objective is None:
            return None
        return (
            "classification"
            if str(objective).startswith(_CLASSIFICATION_PREFIXES)
            else "regression"
        )

    def run(self, ctx, prep_ref: Any = None):
        """One Ray task, or a Ray Train worker group when right-sizing asks for one
        (:mod:`distml.runtime.workers`; the group is in :mod:`distml.jobs.xgboost.distributed`)."""
        from distml.runtime import workers

        split = self.spec.data.split_spec
        choice = workers.choose(self.spec, ctx.data, ctx.cluster.resources)
        if choice.worker_group and not (split is not None and split.cv):
            from distml.jobs.xgboost.distributed import run_worker_group

            return run_worker_group(self, ctx, choice)
        out = super().run(ctx, prep_ref)
        ex = out.info.get("execution", {})
        if ex.get("path") == "single_task":
            out.info["execution"] = {
                **choice.record(),
                **{k: v for k, v in ex.items() if k not in ("path", "reason")},
            }
        return out

    def booster_params(self, prep: Prepared) -> dict[str, Any]:
        """The user's params, plus only what xgboost cannot infer (objective, num_class, threads)."""
        params = dict(self.spec.model.params)
        if "objective" not in params:
            if prep.task == "classification":
                params["objective"] = "binary:logistic" if prep.n_classes == 2 else "multi:softprob"
            else:
                params["objective"] = "reg:squarederror"
        if str(params["objective"]).startswith("multi:") and "num_class" not in params:
            params["num_class"] = prep.n_classes
        if "nthread" not in params and "n_jobs" not in params:
            params["nthread"] = max(1, int(self.spec.resources.cpus_per_worker))
        if self.spec.resources.gpus_per_worker > 0 and "device" not in params:
            params["device"] = "cuda"
        params.setdefault("seed", 0)
        return params

    @staticmethod
    def _dmatrix(prep: Prepared, rows: np.ndarray, nthread: int):
        import xgboost as xgb

        return xgb.DMatrix(
            prep.X.iloc[rows], label=prep.y[rows], enable_categorical=True, nthread=nthread
        )

    def checkpointable(self) -> bool:
        return True

    def fit(self, prep: Prepared, train: np.ndarray, valid: np.ndarray | None):
        """``xgboost.train``; in the single task it checkpoints the booster with its round, the
        early-stopping state and the evaluation history (:mod:`distml.jobs._resume`) and
        continues from the last checkpoint (``xgb_model=``) for the remaining rounds."""
        import xgboost as xgb

        params = self.booster_params(prep)
        nthread = params.get("nthread", -1)
        dtrain = self._dmatrix(prep, train, nthread)
        evals = [(dtrain, "train")]
        if valid is not None and len(valid):
            evals.append((self._dmatrix(prep, valid, nthread), "valid"))
        model = self.spec.model
        es_rounds = model.early_stopping_rounds if len(evals) > 1 else None
        # what xgb.train(early_stopping_rounds=) adds, made here so its state can be saved
        stopper = xgb.callback.EarlyStopping(rounds=es_rounds) if es_rounds else None
        booster, done, earlier = None, 0, {}
        ckpt = self._ckpt
        restored = ckpt.load() if ckpt is not None else None
        if restored is not None:
            state, files = restored
            booster = xgb.Booster(model_file=bytearray(files["model.ubj"]))
            done, earlier = int(state["round"]), state["history"]
            if stopper is not None:
                set_stopper_state(stopper, state.get("early_stopping"))
            ckpt.resumed_from = {
                "round": done,
                "of": model.num_boost_round,
                **({"best_iteration": int(booster.best_iteration)} if es_rounds else {}),
            }
        stopped = bool(restored and restored[0].get("stopped"))
        from distml.progress import xgboost_callback

        rounds = xgboost_callback(getattr(self, "_progress", None), model.num_boost_round)
        saver = _round_checkpointer(ckpt, stopper, self._fault, model.num_boost_round, earlier)
        callbacks = [c for c in (rounds, saver if ckpt is not None else stopper) if c is not None]
        history: dict = {}
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=0 if stopped else model.num_boost_round - done,
            evals=evals,
            evals_result=history,
            verbose_eval=False,
            callbacks=callbacks or None,
            xgb_model=booster,
        )
        history = _join_history(earlier, history)
        figures: dict[str, Any] = {"num_boosted_rounds": int(booster.num_boosted_rounds())}
        if es_rounds:
            figures["best_iteration"] = int(booster.best_iteration)
        booster.set_attr(distml_objective=str(params["objective"]))
        # scoring these rows predicts on these matrices (:meth:`predict_rows`)
        _FIT_MATRICES[booster] = [(prep, rows, m) for rows, (m, _) in zip((train, valid), evals)]
        return booster, figures, curve_tables(history)

    def predict(self, model, prep: Prepared, X: pd.DataFrame):
        import xgboost as xgb

        return self.predict_matrix(model, prep, xgb.DMatrix(X, enable_categorical=True))

    def predict_rows(self, model, prep: Prepared, rows: np.ndarray):
        """:meth:`predict` on rows that ``model``'s :meth:`fit` trained or evaluated it on:
        on the matrix the fit built for them (the same rows of the same ``prep``), not on a
        frame copy of the rows and a second matrix (40-80 ms of 200k rows × 20 here; the
        same predictions). Each matrix serves once, and none outlives its booster."""
        held = _FIT_MATRICES.get(model, [])
        for i, (held_prep, held_rows, matrix) in enumerate(held):
            if held_prep is prep and held_rows is rows:
                del held[i]
                return self.predict_matrix(model, prep, matrix)
        return super().predict_rows(model, prep, rows)

    def predict_matrix(self, model, prep: Prepared, matrix):
        """:meth:`predict` for a DMatrix: the worker group predicts on its training matrices
        before ``xgboost.train`` releases their prediction cache (no second pass over the
        trees, no second matrix)."""
        import numpy as np

        best = model.attr("best_iteration")
        rng = (
            (0, int(best) + 1)
            if best is not None and self.spec.model.early_stopping_rounds
            else (0, 0)
        )
        raw = model.predict(matrix, iteration_range=rng)
        objective = model.attr("distml_objective") or ""
        if prep.task != "classification":
            return raw.astype(np.float64), None
        if objective in ("binary:logistic",):
            proba = np.column_stack([1 - raw, raw])
            return (raw >= 0.5).astype(np.int64), proba
        if objective == "multi:softprob":
            return raw.argmax(axis=1).astype(np.int64), raw
        if objective == "binary:logitraw":
            return (raw >= 0).astype(np.int64), None
        return np.rint(raw).astype(np.int64), None

    def importance(self, model, prep: Prepared) -> pd.DataFrame:
        import pandas as pd

        gain = model.get_score(importance_type="gain")
        feats = list(prep.X.columns)
        return pd.DataFrame(
            {"feature": feats, "importance": [float(gain.get(f, 0.0)) for f in feats]}
        )

    def model_files(self, model) -> dict[str, bytes]:
        return {"model/model.ubj": bytes(model.save_raw("ubj"))}

    # ------------------------------------------------------------------ search hooks (distml.tune)

    def _round_metric(self, prep: Prepared, name: str) -> str | None:
        """The xgboost eval_metric that gives distml metric ``name`` every round (or None)."""
        names = _ROUND_METRICS.get(name)
        if names is None:
            return None
        if prep.task != "classification":
            return names[2]
        objective = str(self.booster_params(prep)["objective"])
        if not objective.startswith(_CLASSIFICATION_PREFIXES) or objective == "binary:logitraw":
            return None
        return names[0] if prep.n_classes == 2 else names[1]

    def tune_trial(self, data: TuneData, session) -> None:
        """Boost round by round, reporting the searched metric; resume from a checkpoint."""
        import xgboost as xgb

        split = session.split
        prep, parts = data.prep, data.parts
        eval_name = self._round_metric(prep, session.metric_name)
        if split not in ("train", "valid") or split not in parts or eval_name is None:
            return super().tune_trial(data, session)  # one report at the end
        params = self.booster_params(prep)
        nthread = params.get("nthread", -1)
        model = self.spec.model
        dtrain = _cached_dmatrix(self, data, "train", nthread)
        # not train unless searched on: its evaluation costs ~7% of a trial (measured on
        # 16k rows); the kept best trial's learning curve has the splits it evaluated
        evals = [(dtrain, "train")] if split == "train" else []
        if "valid" in parts:
            evals.append((_cached_dmatrix(self, data, "valid", nthread), "valid"))
        es_rounds = model.early_stopping_rounds if "valid" in parts else None
        params["eval_metric"] = _with_metric(params, eval_name, es_rounds, dtrain)
        stopper = xgb.callback.EarlyStopping(rounds=es_rounds) if es_rounds else None
        booster, done = None, 0
        if session.restored is not None:
            booster = xgb.Booster(model_file=bytearray(session.restored.files["model.ubj"]))
            done = session.restored.iteration
            if stopper is not None:
                set_stopper_state(stopper, session.restored.state.get("early_stopping"))
        reporter = _round_reporter(session, split, eval_name, stopper, model.num_boost_round)
        callbacks = [c for c in (stopper, reporter) if c is not None]
        history: dict = {}
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=model.num_boost_round - done,
            evals=evals,
            evals_result=history,
            callbacks=callbacks,
            xgb_model=booster,
            verbose_eval=False,
        )
        booster.set_attr(distml_objective=str(params["objective"]))
        # scored on the trial process's own matrix of the split (no copy of its rows as a
        # frame, no second DMatrix: 8-14 ms + 21 ms of predicting against 0.4-21 ms on 20k
        # rows here), with the same predictions
        pred, proba = self.predict_matrix(
            booster, prep, _cached_dmatrix(self, data, split, nthread)
        )
        metrics = self._metrics(prep, prep.y[parts[split]], pred, proba)
        figures = {"num_boosted_rounds": int(booster.num_boosted_rounds())}
        if es_rounds:
            figures["best_iteration"] = int(booster.best_iteration)
        report = {**{f"{split}.{k}": v for k, v in metrics.items()}, **figures}
        session.keep(
            report, lambda: self.tune_output(data, booster, figures, curve_tables(history, done))
        )
        session.report(figures["num_boosted_rounds"], report, final=True)


#: booster → [(prep, rows, DMatrix)] of the rows its :meth:`Job.fit` trained and evaluated it
#: on, for :meth:`Job.predict_rows`; weak, so the matrices go with their booster
_FIT_MATRICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached_dmatrix(job: Job, data: TuneData, split: str, nthread: int):
    """The DMatrix of ``split``, built once per trial process and search: the trials of a
    process share it, and with it the histogram index xgboost builds on it at the first
    ``hist`` training (rebuilt by xgboost itself when a trial's ``max_bin`` differs), as a
    plain script that builds its DMatrix once before a search does."""
    key = ("xgboost.DMatrix", split, nthread)
    if key not in data.cache:
        data.cache[key] = job._dmatrix(data.prep, data.parts[split], nthread)
    return data.cache[key]


def _with_metric(params: dict, name: str, es_rounds: int | None, dtrain) -> list[str]:
    """eval_metric with ``name`` added where it does not change early stopping (which watches
    the last metric): first in the list; when the user set none, before xgboost's default."""
    import xgboost as xgb

    given = params.get("eval_metric")
    metrics = [given] if isinstance(given, str) else list(given or [])
    if name in metrics:
        return metrics
    if not metrics and es_rounds:
        probe = {k: v for k, v in params.items() if k != "eval_metric"}
        line = xgb.Booster(probe, [dtrain]).eval(dtrain, "d")  # "[0]\td-logloss:0.69"
        default = line.split("\t")[1].split(":")[0][len("d-") :]
        metrics = [default] if default != name else []
    return [name] + metrics


def _round_reporter(session, split: str, eval_name: str, stopper, total: int):
    """An xgboost callback that reports the searched metric each round, with checkpoints."""
    import xgboost as xgb

    class RoundReporter(xgb.callback.TrainingCallback):
        def __init__(self):
            super().__init__()
            self.key = f"{split}.{session.metric_name}"
            self.start = 0

        def before_training(self, model):
            self.start = model.num_boosted_rounds()  # epochs restart at 0 when continuing
            return model

        def after_iteration(self, model, epoch, evals_log) -> bool:
            value = float(evals_log[split][eval_name][-1])
            if eval_name in ("error", "merror"):
                value = 1.0 - value
            iteration = self.start + epoch + 1
            session.report(
                iteration,
                {self.key: value},
                files=lambda: {"model.ubj": bytes(model.save_raw("ubj"))},
                state={"early_stopping": stopper_state(stopper)},
                send=iteration < total,
            )  # the final report follows the last round
            return False

    return RoundReporter()


def _join_history(earlier: dict, later: dict) -> dict:
    """The evaluation history of the rounds before a resume followed by those after it."""
    out = {split: {m: list(v) for m, v in by.items()} for split, by in earlier.items()}
    for split, by in later.items():
        for metric, values in by.items():
            out.setdefault(split, {}).setdefault(metric, []).extend(float(v) for v in values)
    return out


def _round_checkpointer(ckpt, stopper, fault, total: int, earlier: dict):
    """An xgboost callback that runs early stopping (``stopper``, or none) and then saves the
    booster, the round, the stopping state and the history at the checkpoint cadence and after
    the last round; it must be the last callback (xgboost stops calling callbacks after the
    first that asks to stop)."""
    import xgboost as xgb

    from distml.runtime import faults
    from distml.runtime import workers as D

    class RoundCheckpointer(xgb.callback.TrainingCallback):
        def before_training(self, model):
            self.start = model.num_boosted_rounds()
            return stopper.before_training(model) if stopper is not None else model

        def after_iteration(self, model, epoch, evals_log) -> bool:
            stop = bool(stopper.after_iteration(model, epoch, evals_log)) if stopper else False
            done = self.start + epoch + 1
            if ckpt.due(final=stop or done >= total):
                ckpt.save(
                    {
                        "round": done,
                        "stopped": stop,
                        "early_stopping": stopper_state(stopper),
                        "history": _join_history(earlier, evals_log),
                    },
                    {"model.ubj": bytes(model.save_raw("ubj"))},
                )
            faults.crash(fault, "train.iteration", done, delay_s=D.crash_delay_s())
            return stop

    return RoundCheckpointer()


#: loads an xgboost model and scores one row of zeros (argv: model path, feature names as JSON)
_XGB_PROBE = """
import json, sys
import numpy as np, xgboost as xgb
b = xgb.Booster(model_file=sys.argv[1])
names = json.loads(sys.argv[2])
b.predict(xgb.DMatrix(np.zeros((1, len(names))), feature_names=names))
"""


def probe_model(run: Path, path: Path, features: list[str]) -> None:
    """Load the model in a child process first (xgboost's native reader can crash on a damaged
    or crafted ``model.ubj``)."""
    from distml.jobs.predictors import probe_in_child

    probe_in_child(
        _XGB_PROBE,
        [str(path), json.dumps(features)],
        f"run dir {str(run)!r}: model/model.ubj",
        "xgboost",
    )
