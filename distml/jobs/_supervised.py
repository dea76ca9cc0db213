"""The supervised pipeline shared by the sklearn and xgboost kinds.

Read → type the columns → split → fit → evaluate, in one Ray task per fit: the task reads the
data itself (no copy through the driver) and returns metrics, tables and model bytes. With
``data.split.cv`` the data is read once into the object store and the folds are fitted in
parallel, each in its own task, beside the final fit.

A kind implements the four hooks of :class:`SupervisedJob` (``fit``, ``predict``,
``importance``, ``model_files``); everything else here is common, including the hooks a search
uses (:mod:`distml.tune`): ``tune_prepare`` reads and splits the data once for every trial,
``tune_trial`` fits one configuration, reports its valid (or cv) metrics and offers the run's
output of its model (``tune_output``: kept when the trial is the best so far), ``tune_refit``
fits the best one from the same prepared data when no output was kept. Iterative kinds (xgboost) override ``tune_trial`` to
report every iteration.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distml import progress
from distml.errors import DataError, JobFailed, error_text
from distml.jobs.base import Job, JobOutput, RunContext
from distml.runtime import metrics as M
from distml.runtime import runners, threads
from distml.runtime.data import (
    DataInfo,
    cv_indices,
    infer_task,
    read_frame,
    split_indices,
    validate_data,
)
from distml.runtime.splits import class_order

if TYPE_CHECKING:  # heavy: imported where used, so `distml validate` stays light
    import numpy as np
    import pandas as pd

SPLITS = ("train", "valid", "test")
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "logloss")
REGRESSION_METRICS = ("rmse", "mae", "r2")


@dataclass
class Prepared:
    """Typed features and encoded target of a supervised job (lives on a worker)."""

    X: pd.DataFrame
    y: np.ndarray
    task: str  # classification | regression
    classes: list | None
    categories: dict[str, list] = field(default_factory=dict)
    X_test: pd.DataFrame | None = None
    y_test: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0

    def schema(self, target: str) -> dict:
        """What ``predict`` needs to rebuild the inputs: columns, dtypes, levels, classes."""
        return {
            "target": target,
            "task": self.task,
            "features": list(self.X.columns),
            "dtypes": {c: str(t) for c, t in self.X.dtypes.items()},
            "categorical": self.categories,
            "classes": [py_scalar(c) for c in self.classes] if self.classes is not None else None,
        }


@dataclass
class TuneData:
    """What every trial of a search shares through the object store: the prepared data and the
    row split (read, typed and split once, in one Ray task)."""

    prep: Prepared
    parts: dict[str, np.ndarray]
    #: what a kind builds from the data once per trial process and reuses in its later trials
    #: (an xgboost DMatrix with its histogram index): the process keeps one TuneData per search
    cache: dict = field(default_factory=dict, repr=False, compare=False)


def py_scalar(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def type_features(X: pd.DataFrame, categories: dict[str, list]) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    X = X.copy(deep=False)  # copy-on-write (pandas 3): the caller's frame is never changed
    for c, levels in categories.items():
        X[c] = pd.Categorical(X[c].astype("string").astype(object), categories=levels)
    for c in X.columns:
        if c not in categories and pd.api.types.is_bool_dtype(X[c]):
            X[c] = X[c].astype(np.int8)
    return X


def prepare(spec, info: DataInfo, task: str | None) -> Prepared:
    """Read and type the data of a supervised spec; ``task`` None means infer from the target."""
    import numpy as np
    import pandas as pd

    target = info.target
    frame = read_frame(spec.data.source, info.features + [target])
    y_raw = frame[target]
    task = task or infer_task(y_raw)
    categories = {
        c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in info.categorical
    }
    X = type_features(frame[info.features], categories)
    classes = None
    if task == "classification":
        classes = class_order(pd.unique(y_raw).tolist())
        y = encode_target(y_raw, classes, "data.source")
    else:
        if not pd.api.types.is_numeric_dtype(y_raw):
            raise DataError(
                f"data.target: column {target!r} has dtype {y_raw.dtype}, but a "
                "regression target must be numeric"
            )
        y = y_raw.to_numpy(dtype=np.float64)
    prep = Prepared(X, y, task, classes, categories)
    if info.test is not None:
        test = read_frame(spec.data.test_source, info.features + [target], "data.test_source")
        prep.X_test = type_features(test[info.features], categories)
        prep.y_test = (
            encode_target(test[target], classes, "data.test_source")
            if classes is not None
            else test[target].to_numpy(dtype=np.float64)
        )
    return prep


def encode_target(y: pd.Series, classes: list, where: str) -> np.ndarray:
    import numpy as np

    index = {c: i for i, c in enumerate(classes)}
    codes = y.map(index)
    if codes.isna().any():
        unseen = sorted(set(y[codes.isna()].astype(str)))[:5]
        raise DataError(f"{where}: target classes {unseen} do not occur in the training data")
    return codes.to_numpy(dtype=np.int64)


class SupervisedJob(Job):
    """A kind that fits ``X → y``; subclasses implement the hooks below (called on a worker)."""

    tune_trial_hook = True
    #: whether a spec of this kind may train in a Ray Train worker group (xgboost, torch)
    trains_in_worker_group: bool = False
    _ckpt: Any = None  # distml.jobs._resume.Checkpoints of the single-task fit, when it makes them
    _fault: dict | None = None  # the single task's fault hook (tests)

    def task(self) -> str | None:
        """classification / regression when the spec fixes it; None to infer from the target."""
        return None

    def check_data(self) -> DataInfo:
        """The common data checks plus the target's against the task, split and folds."""
        return validate_data(
            self.spec.data, needs_target=self.needs_target, task=self.task() or "infer"
        )

    def fit(
        self, prep: Prepared, train: np.ndarray, valid: np.ndarray | None
    ) -> tuple[Any, dict, dict]:
        """Fit on rows ``train`` (early-stop on ``valid``); return (model, figures, tables)."""
        raise NotImplementedError

    def predict(
        self, model: Any, prep: Prepared, X: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (predictions: class codes or values, class probabilities or None)."""
        raise NotImplementedError

    def importance(self, model: Any, prep: Prepared) -> pd.DataFrame | None:
        """Feature importance as columns ``feature, importance`` (None if the model has none)."""
        return None

    def model_files(self, model: Any) -> dict[str, bytes]:
        """The model in a safe format, as ``{relative path: bytes}`` under ``model/``."""
        raise NotImplementedError

    @classmethod
    def load_model(cls, run_dir: Path, spec: Any, schema: dict) -> Any:
        """The saved model of a finished run, as :meth:`predict` takes it (DataError naming the
        run dir and file when it is missing, damaged or not what this kind saves)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ abilities

    def train_execution(self, data: DataInfo, resources: dict) -> Any | None:
        if not self.trains_in_worker_group:
            return None
        from distml.runtime.workers import choose

        decision = choose(self.spec, data, resources)
        return decision if decision.worker_group else None

    @classmethod
    def load_predictor(
        cls, run_dir: Path, manifest: dict, allow_module: tuple[str, ...] = ()
    ) -> Any:
        from distml.jobs.predictors import SupervisedPredictor, read_schema, run_spec

        schema = read_schema(run_dir)
        spec = run_spec(run_dir, manifest)
        return SupervisedPredictor(
            spec.kind, cls(spec), cls.load_model(run_dir, spec, schema), schema
        )

    # ------------------------------------------------------------------ common pipeline

    def evaluate(
        self, model: Any, prep: Prepared, X: pd.DataFrame, y: np.ndarray
    ) -> tuple[dict, np.ndarray]:
        metrics, pred, _ = self.score(model, prep, X, y)
        return metrics, pred

    def score(
        self, model: Any, prep: Prepared, X: pd.DataFrame, y: np.ndarray
    ) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """(metrics, predictions, class probabilities or None) of ``model`` on ``X, y``."""
        pred, proba = self.predict(model, prep, X)
        return self._metrics(prep, y, pred, proba), pred, proba

    def score_rows(
        self, model: Any, prep: Prepared, rows: np.ndarray
    ) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """:meth:`score` on the rows ``rows`` of ``prep.X`` (and ``prep.y``)."""
        pred, proba = self.predict_rows(model, prep, rows)
        return self._metrics(prep, prep.y[rows], pred, proba), pred, proba

    def predict_rows(self, model: Any, prep: Prepared, rows: np.ndarray):
        """:meth:`predict` on the rows ``rows`` of ``prep.X``; a kind that reads the rows
        straight from ``prep.X`` overrides it (no copy of those rows as a frame first)."""
        return self.predict(model, prep, prep.X.iloc[rows])

    @staticmethod
    def _metrics(prep: Prepared, y, pred, proba) -> dict:
        if prep.task == "classification":
            return M.classification_metrics(y, pred, proba, prep.n_classes)
        return M.regression_metrics(y, pred)

    def fit_and_evaluate(self, info: DataInfo, prep: Prepared | None = None) -> JobOutput:
        """The whole single-worker job: runs inside one Ray task."""

        t0 = time.perf_counter()
        _worker_stage(self, "read")
        prep = prep if prep is not None else prepare(self.spec, info, self.task())
        split = self.spec.data.split_spec
        parts = split_indices(prep.y, split, classification=prep.task == "classification")
        t_read = time.perf_counter() - t0
        _worker_stage(self, "train")
        model, figures, tables = self.fit(prep, parts["train"], parts.get("valid"))
        t_fit = time.perf_counter() - t0 - t_read
        _worker_stage(self, "evaluate")
        out = self.output(prep, parts, model, figures, tables, info.target)
        ckpt = getattr(self, "_ckpt", None)
        out.info = {
            "task": prep.task,
            "task_inferred": self.task() is None,
            **({"checkpoint": ckpt.record()} if ckpt is not None else {}),
            "rows": {k: int(len(v)) for k, v in parts.items()},
            "worker_timings_s": {"read": round(t_read, 4), "fit": round(t_fit, 4)},
        }
        return out

    def output(
        self,
        prep: Prepared,
        parts: dict[str, np.ndarray],
        model: Any,
        figures: dict,
        tables: dict,
        target: str,
    ) -> JobOutput:
        """The run's output of a fitted ``model``: metrics on every split (and the test
        source), confusion matrix, predictions, importance, model files and schema (what
        :meth:`fit_and_evaluate` and a search's kept best trial write)."""
        import numpy as np
        import pandas as pd

        out = JobOutput(tables=dict(tables))
        confusion, predictions = [], []
        held_out = prep.X_test is not None or any(k != "train" for k in parts)
        for name, rows in parts.items():
            y = prep.y[rows]
            out.metrics[name], pred, proba = self.score_rows(model, prep, rows)
            if prep.classes is not None:
                confusion += M.confusion_rows(name, y, pred, prep.classes)
            if name != "train" or not held_out:
                predictions.append(prediction_rows(name, rows, y, pred, proba, prep.classes))
        if prep.X_test is not None:
            out.metrics["test"], pred, proba = self.score(model, prep, prep.X_test, prep.y_test)
            if prep.classes is not None:
                confusion += M.confusion_rows("test", prep.y_test, pred, prep.classes)
            predictions.append(
                prediction_rows(
                    "test", np.arange(len(prep.y_test)), prep.y_test, pred, proba, prep.classes
                )
            )
        if confusion:
            out.tables["confusion_matrix"] = pd.DataFrame(confusion)
        if predictions:
            out.tables["predictions"] = pd.concat(predictions, ignore_index=True)
        imp = self.importance(model, prep)
        if imp is not None:
            out.tables["feature_importance"] = imp
        out.metrics.update(figures)
        out.metrics.update(n_rows=int(len(prep.y)), n_features=int(prep.X.shape[1]))
        out.files = self.model_files(model)
        out.files["model/schema.json"] = json.dumps(prep.schema(target), indent=2).encode()
        out.info = {
            "task": prep.task,
            "task_inferred": self.task() is None,
            "rows": {k: int(len(v)) for k, v in parts.items()},
        }
        return out

    def fold_metrics(self, prep: Prepared, fold: int) -> dict:
        split = self.spec.data.split_spec
        stratify = split.stratify if split.stratify is not None else prep.task == "classification"
        # Folds are drawn from the rows left after the test split.
        rows = split_indices(prep.y, split, classification=prep.task == "classification")["train"]
        train, valid = cv_indices(prep.y[rows], split.cv, split.seed, stratify=stratify)[fold]
        train, valid = rows[train], rows[valid]
        model, figures, _ = self.fit(prep, train, valid)
        metrics, _, _ = self.score_rows(model, prep, valid)
        return {**metrics, **{k: v for k, v in figures.items() if isinstance(v, (int, float))}}

    def run(self, ctx: RunContext, prep_ref: Any = None) -> JobOutput:
        """One Ray task (or one per CV fold); ``prep_ref`` reuses data already prepared in the
        object store (a :class:`Prepared` or :class:`TuneData`) instead of reading it again."""

        res = self.spec.resources
        opts = dict(
            num_cpus=res.cpus_per_worker,
            num_gpus=res.gpus_per_worker,
            max_retries=res.max_failures,
            retry_exceptions=False,
        )
        split = self.spec.data.split_spec
        try:
            if split is not None and split.cv:
                return self._run_cv(ctx, split, opts, prep_ref)
            ctx.log.info("fitting in one Ray task (resources.num_workers is 1)")
            self._progress = progress.worker_reporter()  # None unless progress is shown
            self._ckpt = self._checkpoints(ctx)
            ran: dict = {}
            out = runners.call(_fit_task, (self, ctx.data, prep_ref), opts, ctx.cluster, ran)
        except DataError:
            raise
        except Exception as e:
            raise JobFailed(f"{self.spec.kind} fit failed: {error_text(e)}") from e
        out.info["execution"] = {
            "path": "single_task",
            "reason": "resources.num_workers is 1: the data fits one worker",
            "warm_runner": ran,
            **out.info.pop("checkpoint", {}),
        }
        if self._ckpt is not None:
            self._ckpt.discard()  # the output is in hand; _SUCCESS follows its writing
        return out

    def _checkpoints(self, ctx: RunContext):
        """The fit's checkpoints (:mod:`distml.jobs._resume`) when the kind makes them, and the
        fault hook of a single task (``train.iteration`` of :mod:`distml.runtime.faults`,
        RELIABILITY.md T3), read here on the driver and carried to the task."""
        if not self.checkpointable():
            return None
        from distml.jobs import _resume
        from distml.runtime import faults

        self._fault = faults.from_env("train.iteration")
        key = _resume.fingerprint(self.spec.to_dict(), ctx.data.fingerprint())
        return _resume.Checkpoints.for_run(ctx, "fit", key)

    def checkpointable(self) -> bool:
        """Whether :meth:`fit` checkpoints and resumes (through ``self._ckpt``)."""
        return False

    def _run_cv(self, ctx: RunContext, split, opts: dict, prep_ref: Any = None) -> JobOutput:
        import ray

        ctx.log.info("cross-validation: %d folds in parallel Ray tasks", split.cv)
        if prep_ref is None:
            prep_ref = threads.remote(prepare_task, **opts).remote(self, ctx.data)
        final_ref = threads.remote(_fit_task, **opts).remote(self, ctx.data, prep_ref)
        fold_refs = [
            threads.remote(_fold_task, **opts).remote(self, prep_ref, i) for i in range(split.cv)
        ]
        folds = ray.get(fold_refs)
        out = ray.get(final_ref)
        for i, f in enumerate(folds):
            f["fold"] = i
        out.metrics["cv"] = M.summarize_folds(folds)
        out.info["execution"] = {
            "path": "cv_tasks",
            "folds": split.cv,
            "reason": "data.split.cv: one Ray task per fold plus the final fit",
        }
        return out

    # ------------------------------------------------------------------ search hooks (distml.tune)

    def tune_metric_names(self) -> set[str]:
        """Metric names a trial can be scored on: the task's when the spec fixes the task, else
        those of either task (the data decide; a trial then reports what it computes)."""
        task = self.task()
        if task == "classification":
            return set(CLASSIFICATION_METRICS)
        if task == "regression":
            return set(REGRESSION_METRICS)
        return set(CLASSIFICATION_METRICS) | set(REGRESSION_METRICS)

    def tune_iterations(self) -> int | None:
        """Iterations a trial reports (None: one fit, one report; no early-stopping scheduler)."""
        return None

    def tune_iteration_metrics(self) -> set[str] | None:
        """Metric names computed every iteration (None: the kind is not iterative)."""
        return None

    def tune_prepare(self, info: DataInfo) -> TuneData:
        """Read, type and split the data once (in a Ray task) for every trial of a search."""
        prep = prepare(self.spec, info, self.task())
        parts = split_indices(
            prep.y, self.spec.data.split_spec, classification=prep.task == "classification"
        )
        return TuneData(prep, parts)

    def tune_trial(self, data: TuneData, session) -> None:
        """One trial: fit ``self.spec`` on the train rows, report the metric's split once."""
        prep, parts = data.prep, data.parts
        if session.split == "cv":
            folds = [self.fold_metrics(prep, i) for i in range(self.spec.data.split_spec.cv)]
            for i, f in enumerate(folds):
                f["fold"] = i  # as the run's cross-validation records them
            summary = M.summarize_folds(folds)
            report = {f"cv.{k}": v for k, v in summary["mean"].items()}

            def build() -> JobOutput:  # the final fit, only when this trial is the best so far
                out = self.tune_output(data, *self.fit(prep, parts["train"], parts.get("valid")))
                out.metrics["cv"] = summary
                return out

            session.keep(report, build)
            session.report(1, report, final=True)
            return
        model, figures, tables = self.fit(prep, parts["train"], parts.get("valid"))
        split = session.split if session.split in parts else "valid"
        rows = parts[split]
        metrics, _, _ = self.score_rows(model, prep, rows)
        report = {f"{split}.{k}": v for k, v in metrics.items()}
        report.update({k: v for k, v in figures.items() if isinstance(v, (int, float))})
        session.keep(report, lambda: self.tune_output(data, model, figures, tables))
        session.report(int(figures.get("num_boosted_rounds", 1)), report, final=True)

    def tune_output(self, data: TuneData, model: Any, figures: dict, tables: dict) -> JobOutput:
        """The run's output of a trial's model (what :meth:`fit_and_evaluate` gives for the
        same model on the same split), kept when the trial is the best
        (:meth:`distml.tune.session.TrialSession.keep`)."""
        out = self.output(data.prep, data.parts, model, figures, tables, self.spec.data.target)
        out.info["execution"] = {
            "path": "best_trial",
            "reason": "the best trial's own model, trained on the run's split (no refit)",
        }
        return out

    def tune_final_overrides(self, result: dict) -> dict[str, Any]:
        """Overrides that make the refit reproduce a trial (beyond its sampled values)."""
        return {}

    def tune_refit(self, ctx: RunContext, shared_ref: Any) -> JobOutput:
        """The run's model for the best configuration, from the data the trials shared."""
        return self.run(ctx, prep_ref=shared_ref)

    def fit_predict_fold(self, train: pd.DataFrame, test: pd.DataFrame) -> dict:
        """Fit on the rows of ``train``, predict the rows of ``test`` (the ``ladder`` kind's
        folds; see :meth:`distml.jobs.base.Job.fit_predict_fold`). Both frames are typed
        together as :func:`prepare` types one source: the same feature choice, categorical
        levels and class codes, so a fold here is the fold ``data.split.cv`` fits."""
        import numpy as np
        import pandas as pd

        from distml.runtime.data import is_categorical_dtype

        d = self.spec.data
        target = d.target
        frame = pd.concat([train, test], ignore_index=True)
        skip = set(d.exclude) | {target}
        features = (
            list(d.features)
            if d.features is not None
            else [c for c in frame.columns if c not in skip]
        )
        categorical = (
            list(d.categorical)
            if d.categorical is not None
            else [c for c in features if is_categorical_dtype(str(frame[c].dtype))]
        )
        y_raw = frame[target]
        task = self.task() or infer_task(y_raw)
        categories = {
            c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in categorical
        }
        X = type_features(frame[features], categories)
        classes = None
        if task == "classification":
            classes = class_order(pd.unique(y_raw).tolist())
            y = encode_target(y_raw, classes, "data.target")
        else:
            y = y_raw.to_numpy(dtype=np.float64)
        prep = Prepared(X, y, task, classes, categories)
        rows_train = np.arange(len(train))
        rows_test = np.arange(len(train), len(frame))
        model, _, _ = self.fit(prep, rows_train, None)
        pred, proba = self.predict(model, prep, X.iloc[rows_test])
        return {
            "task": task,
            "y_true": y[rows_test],
            "pred": np.asarray(pred),
            "proba": None if proba is None else np.asarray(proba, dtype=np.float64),
            "classes": [py_scalar(c) for c in classes] if classes is not None else None,
        }


#: rows per split kept in ``tables/predictions.parquet`` (a deterministic sample beyond it)
MAX_PREDICTION_ROWS = 100_000


def prediction_rows(
    split: str,
    rows: np.ndarray,
    y: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray | None,
    classes: list | None,
    limit: int = MAX_PREDICTION_ROWS,
) -> pd.DataFrame:
    """Rows of ``tables/predictions.parquet``: split, row (position in its source), y_true,
    y_pred (class labels or values), ``proba_<class>`` per class; at most ``limit`` rows,
    sampled with a fixed seed."""
    import numpy as np
    import pandas as pd

    keep = np.arange(len(y))
    if len(keep) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(y), limit, replace=False))
    frame = pd.DataFrame({"split": split, "row": np.asarray(rows)[keep].astype(np.int64)})
    if classes is not None:
        labels = np.asarray([str(c) for c in classes], dtype=object)
        frame["y_true"] = labels[y[keep].astype(int)]
        frame["y_pred"] = labels[np.asarray(pred)[keep].astype(int)]
        if proba is not None:
            for j, label in enumerate(labels):
                frame[f"proba_{label}"] = np.asarray(proba, dtype=np.float64)[keep, j]
    else:
        frame["y_true"] = np.asarray(y, dtype=np.float64)[keep]
        frame["y_pred"] = np.asarray(pred, dtype=np.float64)[keep]
    return frame


def _worker_stage(job: SupervisedJob, name: str) -> None:
    """Tell the driver's progress display the task's stage (nothing when progress is off)."""
    reporter = getattr(job, "_progress", None)
    if reporter is not None:
        reporter.stage(name)


def _fit_task(
    job: SupervisedJob, info: DataInfo, prep: "Prepared | TuneData | None" = None
) -> JobOutput:
    return job.fit_and_evaluate(info, as_prepared(prep))


def prepare_task(job: SupervisedJob, info: DataInfo) -> Prepared:
    return prepare(job.spec, info, job.task())


def _fold_task(job: SupervisedJob, prep: "Prepared | TuneData", fold: int) -> dict:
    return job.fold_metrics(as_prepared(prep), fold)


def as_prepared(x: "Prepared | TuneData | None") -> Prepared | None:
    return x.prep if isinstance(x, TuneData) else x
