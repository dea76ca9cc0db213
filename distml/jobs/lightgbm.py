"""Kind ``lightgbm``: gradient boosting with ``params`` passed to ``lightgbm.train`` unchanged.

The whole job (read, split, train, evaluate) runs in one Ray task. distml adds to the params only
what LightGBM cannot infer: the objective and ``num_class`` from the target when they are not
given, ``num_threads`` from ``resources.cpus_per_worker`` and ``verbosity: -1`` (LightGBM's
per-round warnings otherwise flood the log); ``model.early_stopping_rounds`` becomes LightGBM's
own ``early_stopping_round`` on the valid split (so ``first_metric_only`` and
``early_stopping_min_delta`` in params work as in LightGBM). Categorical columns reach LightGBM
as pandas categories with the levels seen in training (its native categorical splits). The
evaluation history is the ``learning_curve`` table, feature importance is LightGBM's ``gain``,
and the model is saved as LightGBM's text model (``model/model.txt``, the best iteration when
early stopping ran): plain text, no pickle.

In a search (:mod:`distml.tune`) a trial boosts round by round and reports the searched metric
as LightGBM evaluates it each round (``roc_auc`` → ``auc``, ``accuracy`` → 1 - ``binary_error``,
…), so ASHA or the median rule can stop it. Without early stopping it checkpoints the model
text and a retried trial continues from there; with early stopping a retried trial starts again
(LightGBM keeps its early-stopping state inside its callback).
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from distml.errors import DataError, MissingDependency, SpecError, one_line
from distml.jobs._supervised import Prepared, TuneData
from distml.jobs.boosting import BoostingJob, curve_tables
from distml.spec.base import JobSpec, StrictModel

#: LightGBM's names (and aliases) of what the model section sets itself
_ROUNDS_KEYS = frozenset(
    {
        "num_iterations",
        "num_iteration",
        "n_iter",
        "num_tree",
        "num_trees",
        "num_round",
        "num_rounds",
        "nrounds",
        "num_boost_round",
        "n_estimators",
        "max_iter",
    }
)
_EARLY_STOP_KEYS = frozenset(
    {"early_stopping_round", "early_stopping_rounds", "early_stopping", "n_iter_no_change"}
)
_OBJECTIVE_KEYS = ("objective", "objective_type", "app", "application", "loss")
_NUM_CLASS_KEYS = ("num_class", "num_classes")
_THREADS_KEYS = ("num_threads", "num_thread", "nthread", "nthreads", "n_jobs")
_METRIC_KEYS = ("metric", "metrics", "metric_types")
_BINARY = frozenset({"binary"})
_MULTICLASS = frozenset({"multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr"})
#: parameters about the data's columns, files or devices: the probe's one-column data on the
#: driver cannot judge them, the fit does
_DATA_SHAPED = frozenset(
    {
        "monotone_constraints",
        "mc",
        "monotone_constraint",
        "monotonic_cst",
        "feature_contri",
        "feature_contrib",
        "fc",
        "fp",
        "feature_penalty",
        "interaction_constraints",
        "max_bin_by_feature",
        "categorical_feature",
        "cat_feature",
        "categorical_column",
        "cat_column",
        "categorical_features",
        "forcedsplits_filename",
        "fs",
        "forced_splits_filename",
        "forced_splits_file",
        "forced_splits",
        "forcedbins_filename",
        "ignore_column",
        "ignore_feature",
        "blacklist",
        "weight_column",
        "weight",
        "group_column",
        "group",
        "group_id",
        "query_column",
        "query",
        "query_id",
        "label_column",
        "label",
        "cegb_penalty_feature_lazy",
        "cegb_penalty_feature_coupled",
        "input_model",
        "output_model",
        "device_type",
        "device",
        "gpu_platform_id",
        "gpu_device_id",
        "num_gpu",
        "data",
        "train",
        "train_data",
        "valid",
        "valid_data",
        "test",
        "test_data",
        "init_score_file",
        "machines",
        "machine_list_file",
        "num_machines",
        "tree_learner",
        "label_gain",
        "position_column",
    }
)
#: distml metric → (LightGBM metric for binary, multiclass, regression): what a trial can report
#: every round; accuracy comes from the error rate
_ROUND_METRICS: dict[str, tuple[str | None, str | None, str | None]] = {
    "logloss": ("binary_logloss", "multi_logloss", None),
    "roc_auc": ("auc", None, None),  # LightGBM's auc_mu is not scikit-learn's one-vs-rest auc
    "accuracy": ("binary_error", "multi_error", None),
    "rmse": (None, None, "rmse"),
    "mae": (None, None, "l1"),
}


class LightGBMModel(StrictModel):
    """The ``model`` section of a lightgbm job."""

    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters, passed to lightgbm.train unchanged."
    )
    num_boost_round: int = Field(100, ge=1, le=1_000_000, description="Boosting rounds.")
    early_stopping_rounds: int | None = Field(
        None,
        ge=1,
        description="Stop when no valid metric has improved for N rounds "
        "(LightGBM's early_stopping_round).",
    )

    @model_validator(mode="after")
    def _no_second_say(self) -> LightGBMModel:
        for key in self.params:
            if key in _ROUNDS_KEYS:
                raise ValueError(
                    f"model.params.{key} sets the boosting rounds, which "
                    "model.num_boost_round holds; move the value there"
                )
            if key in _EARLY_STOP_KEYS:
                raise ValueError(
                    f"model.params.{key} sets early stopping, which "
                    "model.early_stopping_rounds holds; move the value there"
                )
        return self


class Spec(JobSpec):
    """A LightGBM job."""

    kind: Literal["lightgbm"]
    model: LightGBMModel = Field(default_factory=LightGBMModel)

    @model_validator(mode="after")
    def _checks(self) -> Spec:
        split = self.data.split_spec
        if self.model.early_stopping_rounds and (split is None or split.valid == 0):
            raise ValueError(
                "model.early_stopping_rounds needs a validation split; data.split has no valid "
                "fraction; set data.split.valid (e.g. 0.2) or drop early_stopping_rounds"
            )
        if self.resources.num_workers > 1:
            raise ValueError(
                "resources.num_workers must be 1 for kind lightgbm (it fits in one "
                "Ray task; cross-validation folds run in parallel anyway); got "
                f"{self.resources.num_workers}"
            )
        return self


def _first(params: dict, keys: tuple[str, ...]) -> Any:
    return next((params[k] for k in keys if k in params), None)


def _objective(params: dict) -> str | None:
    value = _first(params, _OBJECTIVE_KEYS)
    return None if value is None else str(value).strip().lower()


class Job(BoostingJob):
    """Single-task LightGBM training."""

    round_metrics = _ROUND_METRICS

    libraries = ("lightgbm",)

    spec: Spec

    # ------------------------------------------------------------------ checks (driver)

    def check_data(self):
        self.check_spec()
        info = super().check_data()
        bad = [c for c in info.features if any(ch in c for ch in '",:[]{}')]
        if bad:
            raise DataError(
                f"data.features: column {bad[0]!r} has a name LightGBM cannot use "
                '(it may not contain " , : [ ] { or }); rename it or list it in '
                "data.exclude"
            )
        return info

    def check_spec(self) -> None:
        """Let LightGBM build a booster from ``model.params`` on four rows of one column, so that
        an unknown objective or a value it refuses is an exit 2 before any cluster work, also
        for every searched value (SpecError naming the parameter). Parameters about columns,
        files or devices are left to the fit."""
        import contextlib
        import io

        try:
            import lightgbm as lgb
        except ImportError:
            raise MissingDependency.for_extra("lightgbm", "lightgbm", "kind lightgbm") from None

        task = self.task()
        params = {k: v for k, v in self.spec.model.params.items() if k not in _DATA_SHAPED}
        n_classes = 2
        if task == "classification" and _objective(params) in _MULTICLASS:
            given = _first(params, _NUM_CLASS_KEYS)
            n_classes = int(given) if isinstance(given, int) and 2 < given <= 1000 else 3
        probe = Prepared(
            pd.DataFrame(),
            np.empty(0),
            task or "regression",
            list(range(n_classes)) if task == "classification" else None,
        )
        params = {**self._params(params, probe), "num_threads": 1}
        y = (
            (np.arange(4) % n_classes).astype(float)
            if task == "classification"
            else np.array([0.25, 0.75, 0.5, 0.6])
        )
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its [Fatal] line: stdout is --json's
                lgb.Booster(params, lgb.Dataset(np.array([[0.0], [1.0], [0.0], [1.0]]), y))
        except lgb.basic.LightGBMError as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            text = re.sub(r" at \S+\.cpp, line \d+ ?\.?$", "", text)[:300]  # its source line
            named = [k for k in self.spec.model.params if k in text]
            where = f"model.params.{named[0]}" if named else "model.params"
            raise SpecError(f"{where}: LightGBM refuses the parameters: {text}") from None

    # ------------------------------------------------------------------ the model

    def task(self) -> str | None:
        objective = _objective(self.spec.model.params)
        if objective is None:
            return None
        return "classification" if objective in _BINARY | _MULTICLASS else "regression"

    def booster_params(self, prep: Prepared) -> dict[str, Any]:
        """The user's params, plus only what LightGBM cannot infer (objective, num_class,
        threads, quiet logs) and early stopping as LightGBM's own ``early_stopping_round``."""
        return self._params(dict(self.spec.model.params), prep)

    def _params(self, params: dict, prep: Prepared) -> dict[str, Any]:
        objective = _objective(params)
        if objective is None:
            if prep.task == "classification":
                objective = params["objective"] = "binary" if prep.n_classes == 2 else "multiclass"
            else:
                objective = params["objective"] = "regression"
        if objective in _MULTICLASS and _first(params, _NUM_CLASS_KEYS) is None:
            params["num_class"] = prep.n_classes
        if _first(params, _THREADS_KEYS) is None:
            params["num_threads"] = max(1, int(self.spec.resources.cpus_per_worker))
        params.setdefault("verbosity", -1)
        return params

    @staticmethod
    def _dataset(
        prep: Prepared, rows: np.ndarray, params: dict, reference=None, keep_raw: bool = False
    ):
        import lightgbm as lgb

        # keep_raw: a Dataset built before continued training (init_model) needs its rows
        return lgb.Dataset(
            prep.X.iloc[rows],
            label=prep.y[rows],
            params=params,
            reference=reference,
            free_raw_data=not keep_raw,
        )

    def fit(self, prep: Prepared, train: np.ndarray, valid: np.ndarray | None):
        """``lightgbm.train`` with the train (and valid) split as evaluation sets."""
        import lightgbm as lgb

        model = self.spec.model
        params = self.booster_params(prep)
        dtrain = self._dataset(prep, train, params)
        sets, names = [dtrain], ["train"]
        if valid is not None and len(valid):
            sets.append(self._dataset(prep, valid, params, reference=dtrain))
            names.append("valid")
        if model.early_stopping_rounds and len(sets) > 1:
            params["early_stopping_round"] = model.early_stopping_rounds
        history: dict = {}
        callbacks = [lgb.record_evaluation(history)]
        reporter = getattr(self, "_progress", None)
        if reporter is not None:
            callbacks.append(_round_progress(reporter, model.num_boost_round))
        booster = lgb.train(
            params,
            dtrain,
            num_boost_round=model.num_boost_round,
            valid_sets=sets,
            valid_names=names,
            callbacks=callbacks,
        )
        rounds = max((len(v) for by in history.values() for v in by.values()), default=0)
        figures: dict[str, Any] = {"num_boosted_rounds": int(rounds or booster.current_iteration())}
        if "early_stopping_round" in params:
            figures["best_iteration"] = int(booster.best_iteration)
        if reporter is not None:
            reporter.update(
                "rounds", figures["num_boosted_rounds"], total=model.num_boost_round, final=True
            )
        return booster, figures, curve_tables(history)

    def predict(self, model, prep: Prepared, X: pd.DataFrame):
        """The best iteration's predictions (LightGBM's default); class 1 when p > 0.5, as
        LightGBM's ``binary_error`` and its scikit-learn classifier decide."""
        raw = np.asarray(model.predict(X), dtype=np.float64)
        if prep.task != "classification":
            return raw, None
        if raw.ndim == 2:
            return raw.argmax(axis=1).astype(np.int64), raw
        return (raw > 0.5).astype(np.int64), np.column_stack([1 - raw, raw])

    def importance(self, model, prep: Prepared) -> pd.DataFrame:
        gain = model.feature_importance(importance_type="gain")
        return pd.DataFrame(
            {"feature": list(prep.X.columns), "importance": np.asarray(gain, dtype=np.float64)}
        )

    def model_files(self, model) -> dict[str, bytes]:
        return {"model/model.txt": model.model_to_string().encode("utf-8")}

    @classmethod
    def load_model(cls, run_dir: pathlib.Path, spec: Spec, schema: dict) -> Any:
        """The booster of ``model/model.txt`` (DataError naming the run dir and the file when it
        is missing, not LightGBM's text model, crashes LightGBM's reader or does not take the
        schema's features)."""
        path = pathlib.Path(run_dir) / "model" / "model.txt"
        where = f"run dir {str(run_dir)!r}: model/model.txt"
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise DataError(f"{where} is missing") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{where} is unreadable ({type(e).__name__})") from None
        if not text.startswith("tree\n"):
            raise DataError(f"{where} is not a LightGBM text model (it must begin with 'tree')")
        _probe_in_child(path, where)
        import lightgbm as lgb

        try:
            booster = lgb.Booster(model_str=text)
        except lgb.basic.LightGBMError as e:
            raise DataError(f"{where} is not a readable LightGBM model ({one_line(e)})") from None
        features = list(schema.get("features") or [])
        if booster.num_feature() != len(features):
            raise DataError(
                f"{where} takes {booster.num_feature()} features; model/schema.json "
                f"lists {len(features)}: the files do not belong together"
            )
        return booster

    # ------------------------------------------------------------------ search hooks (distml.tune)

    def _round_metric(self, prep: Prepared, name: str) -> str | None:
        """The LightGBM metric that gives distml metric ``name`` every round (or None)."""
        names = _ROUND_METRICS.get(name)
        if names is None:
            return None
        objective = _objective(self.booster_params(prep))
        if prep.task != "classification":
            return names[2]
        if objective in _BINARY and prep.n_classes == 2:
            return names[0]
        return names[1] if objective in _MULTICLASS else None

    def tune_trial(self, data: TuneData, session) -> None:
        """Boost round by round, reporting the searched metric; resume from a checkpoint."""
        import lightgbm as lgb

        split, prep, parts = session.split, data.prep, data.parts
        model = self.spec.model
        eval_name = self._round_metric(prep, session.metric_name)
        if split not in ("train", "valid") or split not in parts or eval_name is None:
            return super().tune_trial(data, session)  # one report at the end
        params = self.booster_params(prep)
        dtrain = self._dataset(prep, parts["train"], params, keep_raw=True)
        sets, names = [dtrain], ["train"]
        if "valid" in parts:
            sets.append(
                self._dataset(prep, parts["valid"], params, reference=dtrain, keep_raw=True)
            )
            names.append("valid")
        early = bool(model.early_stopping_rounds and "valid" in parts)
        computed = _metrics_computed(params, dtrain)
        if eval_name not in computed:
            if early and not params.get("first_metric_only"):
                return super().tune_trial(data, session)  # a new metric would change stopping
            params["metric"] = computed + [eval_name]  # last: first_metric_only watches the first
        if early:
            params["early_stopping_round"] = model.early_stopping_rounds
        booster, done = None, 0
        if session.restored is not None and not early:
            booster = lgb.Booster(model_str=session.restored.files["model.txt"].decode("utf-8"))
            done = session.restored.iteration
        reporter = _round_reporter(
            session, split, eval_name, model.num_boost_round, checkpoints=not early
        )
        history: dict = {}
        booster = lgb.train(
            params,
            dtrain,
            num_boost_round=model.num_boost_round - done,
            valid_sets=sets,
            valid_names=names,
            init_model=booster,
            callbacks=[lgb.record_evaluation(history), reporter],
        )
        rows = parts[split]
        metrics, _ = self.evaluate(booster, prep, prep.X.iloc[rows], prep.y[rows])
        figures = {"num_boosted_rounds": int(reporter.rounds or booster.current_iteration())}
        if early:
            figures["best_iteration"] = int(booster.best_iteration)
        report = {**{f"{split}.{k}": v for k, v in metrics.items()}, **figures}
        session.keep(
            report, lambda: self.tune_output(data, booster, figures, curve_tables(history, done))
        )
        session.report(figures["num_boosted_rounds"], report, final=True)


def _metrics_computed(params: dict, dtrain) -> list[str]:
    """The metrics LightGBM evaluates with ``params`` (its default for the objective when
    params name none), as it names them."""
    import lightgbm as lgb

    probe = lgb.Booster({**params, "verbosity": -1}, dtrain)
    return [metric for _, metric, _, _ in probe.eval_train()]


def _round_reporter(session, split: str, eval_name: str, total: int, checkpoints: bool):
    """A LightGBM callback that reports the searched metric each round (with the model text as
    its checkpoint when ``checkpoints``)."""
    key = f"{split}.{session.metric_name}"

    def report(env) -> None:
        value = next(
            v for ds, m, v, *_ in env.evaluation_result_list if ds == split and m == eval_name
        )
        if eval_name in ("binary_error", "multi_error"):
            value = 1.0 - value
        iteration = env.iteration + 1  # absolute: a resumed train counts on from its init model
        report.rounds = iteration
        files = (
            (lambda: {"model.txt": env.model.model_to_string(num_iteration=-1).encode()})
            if checkpoints
            else None
        )
        session.report(iteration, {key: float(value)}, files=files, send=iteration < total)

    report.rounds = 0
    return report


def _round_progress(reporter, total: int):
    """A LightGBM callback that shows the rounds and the last metric of the last eval set."""

    def show(env) -> None:
        info = None
        if env.evaluation_result_list:
            ds, metric, value, *_ = env.evaluation_result_list[-1]
            info = f"{ds}-{metric}={float(value):.5g}"
        reporter.update("rounds", env.iteration + 1, total=total, info=info)

    return show


_PROBE = """
import sys
import lightgbm as lgb
lgb.Booster(model_str=open(sys.argv[1], encoding="utf-8").read())
"""


def _probe_in_child(path: pathlib.Path, where: str) -> None:
    """Parse the model in a child process first (a native reader may crash on a damaged or
    crafted file)."""
    from distml.jobs.predictors import probe_in_child

    probe_in_child(_PROBE, [str(path)], where, "LightGBM")
