"""Kind ``ladder``: every candidate fitted on the same cross-validation folds, one Ray task per
(candidate, fold), compared fold by fold with the corrected resampled t-test
(:mod:`distml.jobs.ladder.stats`), and the winner refitted on all training rows as the run's
model.

Lifecycle: ``check_data`` resolves the candidates (``auto`` builds them from the task and the
installed kinds), validates each with its kind's own spec and data checks — a bad one is exit 2
naming it — and notes those whose optional dependency is missing (they fail as rungs, the
ladder goes on). ``run`` reads the data once into the object store in one task, which also
draws the folds exactly as ``data.split.cv`` does for a single kind; then every (candidate,
fold) fit runs in parallel through the candidate Job's ``fit_predict_fold``; the driver scores,
decides, and refits the winner with its own kind's pipeline (``Job.run`` with the fold split
replaced by a fit on every training row), whose model files, tables and metrics become the
run's, beside ``tables/ladder.parquet`` and ``tables/ladder_summary.parquet``.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from distml.errors import DataError, JobFailed, MissingDependency, SpecError, error_text
from distml.jobs.base import Job as BaseJob
from distml.jobs.base import JobOutput, RunContext
from distml.jobs.ladder import stats
from distml.jobs.ladder.spec import Candidate, Spec, check_candidate, formula_for, where
from distml.jobs.ladder.tasks import fold_task, read_task, search_task
from distml.runtime import threads
from distml.runtime.data import DataInfo, read_frame, validate_data

WINNER_FILE = "model/ladder_winner.json"


class Rung:
    """A candidate as the run uses it: its spec, Job, data info and columns (or why not)."""

    def __init__(
        self,
        index: int,
        cand: Candidate,
        spec: Any = None,
        job: Any = None,
        info: DataInfo | None = None,
        columns: list[str] | None = None,
        unavailable: str | None = None,
    ):
        self.index, self.cand, self.spec, self.job = index, cand, spec, job
        self.info, self.columns, self.unavailable = info, columns or [], unavailable

    @property
    def name(self) -> str:
        return self.cand.name

    def nested(self, task: str, target: str) -> dict | None:
        """What a fold task needs to run the candidate's own search (None without ``tune``)."""
        if self.spec is None or self.spec.tune is None:
            return None
        base = self.spec.to_dict()
        base.pop("tune", None)
        return {
            "kind": self.cand.kind,
            "base": base,
            "tune": self.spec.tune,
            "target": target,
            "task": task,
        }


def metric_task(metric: str) -> str:
    return "classification" if metric in stats.CLASSIFICATION_METRICS else "regression"


def auto_candidates(task: str, n_classes: int) -> tuple[list[Candidate], dict[str, str]]:
    """The default ladder for ``task`` from the installed kinds, cheapest first, and why each
    rung is (or is not) there."""
    have = {m: importlib.util.find_spec(m) is not None for m in ("statsmodels", "xgboost", "torch")}
    why: dict[str, str] = {}
    out: list[Candidate] = []
    clf = task == "classification"
    out.append(
        Candidate(
            name="baseline",
            kind="sklearn",
            model={
                "estimator": "sklearn.dummy.DummyClassifier"
                if clf
                else "sklearn.dummy.DummyRegressor"
            },
        )
    )
    why["baseline"] = "predicts the class priors" if clf else "predicts the mean"
    if have["statsmodels"] and (not clf or n_classes == 2):
        out.append(
            Candidate(name="glm", kind="statsmodels", model={"method": "logit" if clf else "ols"})
        )
        why["glm"] = f"statsmodels {'logit' if clf else 'ols'} on every feature"
    else:
        out.append(
            Candidate(
                name="glm",
                kind="sklearn",
                model={
                    "estimator": "logistic_regression" if clf else "ridge",
                    "scale": True,
                    "params": {"max_iter": 1000} if clf else {},
                },
            )
        )
        why["glm"] = (
            "scikit-learn "
            + ("logistic regression" if clf else "ridge")
            + (
                " (statsmodels is not installed)"
                if not have["statsmodels"]
                else f" (statsmodels logit needs 2 classes; the target has {n_classes})"
            )
        )
    out.append(
        Candidate(
            name="forest",
            kind="sklearn",
            model={
                "estimator": "random_forest_classifier" if clf else "random_forest_regressor",
                "params": {"n_estimators": 200, "random_state": 0},
            },
        )
    )
    why["forest"] = "scikit-learn random forest, 200 trees"
    if have["xgboost"]:
        out.append(
            Candidate(
                name="gbm",
                kind="xgboost",
                model={"params": {"max_depth": 4, "eta": 0.1}, "num_boost_round": 200},
            )
        )
        why["gbm"] = "xgboost, 200 rounds of depth-4 trees"
    else:
        why["gbm"] = "left out: xgboost is not installed"
    if have["torch"]:
        out.append(Candidate(name="mlp", kind="torch", model={"hidden": [64, 32], "epochs": 30}))
        why["mlp"] = "torch MLP 64-32, 30 epochs"
    else:
        why["mlp"] = "left out: torch is not installed"
    return out, why


class Job(BaseJob):
    """A ladder of candidates of other kinds (see the module doc)."""

    spec: Spec
    needs_target = True

    def __init__(self, spec: Spec):
        super().__init__(spec)
        self.rungs: list[Rung] = []
        self.auto: dict[str, str] | None = None
        self.ladder_task: str = metric_task(spec.ladder.metric)

    # ------------------------------------------------------------------ before the cluster

    def check_data(self) -> DataInfo:
        """The data checks, then every candidate's spec and data checks (exit 2 naming it)."""
        spec = self.spec
        info = validate_data(spec.data, needs_target=True)
        y = read_frame(spec.data.source, [spec.data.target])[spec.data.target]
        from distml.jobs._supervised import infer_task

        inferred = infer_task(y)
        metric = spec.ladder.metric
        if inferred != self.ladder_task:
            valid = (
                stats.CLASSIFICATION_METRICS
                if inferred == "classification"
                else stats.REGRESSION_METRICS
            )
            raise SpecError(
                f"ladder.metric {metric!r} is a {self.ladder_task} metric, but target "
                f"{spec.data.target!r} is a {inferred} target; valid metrics: "
                f"{', '.join(valid)}"
            )
        cands = spec.ladder.candidates
        if cands == "auto":
            cands, self.auto = auto_candidates(self.ladder_task, int(y.nunique()))
        self.rungs = [self._check_rung(i, c, info) for i, c in enumerate(cands)]
        if all(r.unavailable for r in self.rungs):
            raise MissingDependency(
                "no candidate of the ladder can run here: "
                + "; ".join(f"{r.name}: {r.unavailable}" for r in self.rungs)
            )
        return info

    def _check_rung(self, i: int, cand: Candidate, info: DataInfo) -> Rung:
        spec = self.spec
        formula = None
        if (
            cand.kind == "statsmodels"
            and not cand.model.get("formula")
            and not cand.model.get("exog")
        ):
            formula = formula_for(spec.data.target, info.features, info.categorical)
        try:
            cspec = check_candidate(spec, i, cand, formula)
        except ValueError as e:
            raise SpecError(str(e)) from None
        from distml.jobs import kind_module

        job = kind_module(cand.kind).Job(cspec)
        fixed = _fixed_task(job)
        if fixed is not None and fixed != self.ladder_task:
            raise SpecError(
                f"{where(i, cand)}: the model is a {fixed} model, but "
                f"ladder.metric {spec.ladder.metric!r} is a {self.ladder_task} metric"
            )
        try:
            cinfo = job.check_data()
        except MissingDependency as e:  # a missing extra is a failed rung, not a bad spec
            return Rung(i, cand, cspec, job, unavailable=e.message)
        except (SpecError, DataError) as e:
            raise type(e)(f"{where(i, cand)}: {e.message}") from None
        if fixed is None and cand.kind != "statsmodels":
            from distml.jobs._supervised import infer_task

            y = read_frame(spec.data.source, [spec.data.target])[spec.data.target]
            if infer_task(y) != self.ladder_task:
                raise SpecError(
                    f"{where(i, cand)}: kind {cand.kind} infers a {infer_task(y)} "
                    f"task from the target, but ladder.metric is a {self.ladder_task} "
                    "metric; set the candidate's task or objective"
                )
        target = spec.data.target
        columns = list(dict.fromkeys([*cinfo.features, target]))
        if cand.kind == "statsmodels" and cspec.tune is not None:
            # a searched formula may use any feature; a formula only reads what it names
            columns = list(dict.fromkeys([*columns, *info.features]))
        return Rung(i, cand, cspec, job, cinfo, columns)

    # ------------------------------------------------------------------ on the cluster

    def run(self, ctx: RunContext) -> JobOutput:
        import ray

        spec, metric = self.spec, self.spec.ladder.metric
        if not self.rungs:
            self.check_data()
        res = spec.resources
        opts = dict(
            num_cpus=res.cpus_per_worker,
            num_gpus=res.gpus_per_worker,
            max_retries=res.max_failures,
            retry_exceptions=False,
        )
        runnable = [r for r in self.rungs if not r.unavailable]
        columns = list(dict.fromkeys(c for r in runnable for c in r.columns))
        split = spec.data.split_spec
        frame_ref, folds_ref = threads.remote(read_task, num_returns=2, **opts).remote(
            spec.data.source, columns, spec.data.target, split, self.ladder_task
        )
        folds = ray.get(folds_ref)
        ctx.log.info(
            "ladder: %d candidates x %d folds in parallel Ray tasks (%s)",
            len(runnable),
            len(folds),
            metric,
        )
        t0 = time.perf_counter()
        target = spec.data.target
        refs = {
            (r.index, j): threads.remote(fold_task, **opts).remote(
                r.job, frame_ref, r.columns, train, test, r.nested(self.ladder_task, target)
            )
            for r in runnable
            for j, (train, test) in enumerate(folds)
        }
        results: dict[tuple[int, int], dict] = {}
        for key, ref in refs.items():
            try:
                results[key] = ray.get(ref)
            except Exception as e:  # the task itself died (not a fit error): the rung fails
                results[key] = {
                    "metrics": {},
                    "error": error_text(e),
                    "fit_s": None,
                    "cpu_s": None,
                    "n_train": None,
                    "n_test": None,
                }
        folds_s = time.perf_counter() - t0
        long, scores, errors = self._collect(results, folds, metric)
        if all(s is None for s in scores):
            raise JobFailed(
                "every candidate of the ladder failed: "
                + "; ".join(f"{r.name}: {errors[r.index]}" for r in self.rungs)
            )
        n_train = float(sum(len(tr) for tr, _ in folds)) / len(folds)
        n_test = float(sum(len(te) for _, te in folds)) / len(folds)
        p = spec.ladder.promote
        decided, winner_name, adjustment = stats.decide(
            [r.name for r in self.rungs],
            scores,
            stats.metric_mode(metric),
            n_train=n_train,
            n_test=n_test,
            alpha=p.alpha,
            min_gain=p.min_gain,
        )
        summary = self._summary(decided, long, errors, winner_name)
        for row in summary.itertuples():
            ctx.log.info("ladder: %s (%s): %s", row.candidate, row.kind, row.reason)
        winner = next(r for r in self.rungs if r.name == winner_name)
        ctx.log.info(
            "ladder: winner %s (%s); refitting it on every training row",
            winner.name,
            winner.cand.kind,
        )
        t1 = time.perf_counter()
        out, refit_spec, best = self._refit(winner, ctx, frame_ref, folds, opts)
        refit_s = time.perf_counter() - t1
        out.tables["ladder"] = long
        out.tables["ladder_summary"] = summary
        out.files[WINNER_FILE] = json.dumps(
            {
                "name": winner.name,
                "kind": winner.cand.kind,
                "rung": winner.index,
                "spec": refit_spec.to_dict(),
            },
            indent=2,
        ).encode()
        rows = summary.to_dict(orient="records")
        mine = summary[summary["candidate"] == winner.name].iloc[0]
        out.metrics = {
            "winner": winner.name,
            "winner_kind": winner.cand.kind,
            "cv": {"mean": {metric: float(mine["mean"])}, "std": {metric: float(mine["std"])}},
            **out.metrics,
            "ladder": {
                "metric": metric,
                "mode": stats.metric_mode(metric),
                "folds": len(folds),
                "alpha": p.alpha,
                "min_gain": p.min_gain,
                "adjustment": adjustment,
                "n_train": n_train,
                "n_test": n_test,
                "winner": winner.name,
                "rungs": [_jsonable(r) for r in rows],
            },
        }
        refit_info = out.info
        out.info = {
            "task": refit_info.get("task", self.ladder_task),
            "ladder": {
                "candidates": [
                    {
                        "name": r.name,
                        "kind": r.cand.kind,
                        "model": r.spec.model.model_dump(mode="json")
                        if r.spec is not None
                        else r.cand.model,
                        **({"unavailable": r.unavailable} if r.unavailable else {}),
                    }
                    for r in self.rungs
                ],
                "auto": self.auto is not None,
                **({"auto_choice": self.auto} if self.auto is not None else {}),
                "winner": winner.name,
                "winner_kind": winner.cand.kind,
                "adjustment": adjustment,
                "refit": refit_info,
                **({"winner_search": best} if best is not None else {}),
            },
            "execution": {
                "path": "ladder_tasks",
                "folds": len(folds),
                "tasks": len(refs) + 2,
                "reason": "one Ray task per (candidate, fold), the data read once "
                "into the object store, then the winner's refit",
                "timings_s": {"folds": round(folds_s, 4), "refit": round(refit_s, 4)},
            },
        }
        return out

    def _collect(self, results: dict, folds: list, metric: str):
        import pandas as pd

        rows, scores, errors = [], [], {}
        for r in self.rungs:
            vals: list[float] = []
            err = r.unavailable
            for j in range(len(folds)):
                got = results.get((r.index, j))
                if got is None:  # unavailable: no task ran
                    rows.append(fold_row(r, j, metric, None, {}, err))
                    continue
                value = got["metrics"].get(metric)
                fold_err = got["error"] or (
                    None
                    if value is not None
                    else f"the fit gives no {metric} (e.g. no class probabilities)"
                )
                err = err or fold_err
                rows.append(fold_row(r, j, metric, value, got, fold_err))
                if value is not None:
                    vals.append(float(value))
            errors[r.index] = err
            scores.append(vals if err is None and len(vals) == len(folds) else None)
        return pd.DataFrame(rows), scores, errors

    def _summary(self, decided: list, long, errors: dict, winner: str):
        import pandas as pd

        out = []
        for r, d in zip(self.rungs, decided):
            mine = long[long["candidate"] == r.name]
            t = d.test
            out.append(
                {
                    "rung": r.index,
                    "candidate": r.name,
                    "kind": r.cand.kind,
                    "status": "failed" if errors[r.index] else "ok",
                    "mean": d.mean,
                    "std": d.std,
                    "incumbent": d.incumbent,
                    "mean_diff": t.mean if t else None,
                    "diff_std": t.std if t else None,
                    "se": t.se if t else None,
                    "ci_low": t.ci_low if t else None,
                    "ci_high": t.ci_high if t else None,
                    "t": t.t if t else None,
                    "df": t.df if t else None,
                    "p_value": t.p_value if t else None,
                    "p_adjusted": d.p_adjusted,
                    "promoted": bool(d.promoted),
                    "winner": r.name == winner,
                    "reason": d.reason if not errors[r.index] else f"failed: {errors[r.index]}",
                    "fit_seconds": float(mine["fit_seconds"].sum(min_count=1))
                    if mine["fit_seconds"].notna().any()
                    else None,
                    "cpu_seconds": float(mine["cpu_seconds"].sum(min_count=1))
                    if mine["cpu_seconds"].notna().any()
                    else None,
                    "error": errors[r.index],
                }
            )
        frame = pd.DataFrame(out)
        for c in (
            "mean",
            "std",
            "mean_diff",
            "diff_std",
            "se",
            "ci_low",
            "ci_high",
            "t",
            "p_value",
            "p_adjusted",
            "fit_seconds",
            "cpu_seconds",
        ):
            frame[c] = frame[c].astype("float64")
        frame["df"] = frame["df"].astype("Int64")
        return frame

    def _refit(self, winner: Rung, ctx: RunContext, frame_ref: Any, folds: list, opts: dict):
        """The winner's own pipeline on every training row (the folds' split without cv); a
        winner with ``tune`` first runs its search on those rows and is refitted with the best
        configuration. Returns (output, refit spec, search record or None)."""
        import numpy as np

        from distml.jobs import kind_module
        from distml.spec.load import apply_overrides, load_spec

        raw = winner.spec.to_dict()
        best = None
        nested = winner.nested(self.ladder_task, self.spec.data.target)
        if nested is not None:
            import ray

            rows = np.sort(np.concatenate(folds[0]))
            config, trials = ray.get(
                threads.remote(search_task, **opts).remote(nested, frame_ref, winner.columns, rows)
            )
            raw = apply_overrides(nested["base"], config)
            best = {
                "config": config,
                "configurations": len(trials),
                "failed": sum(t["error"] is not None for t in trials),
            }
            ctx.log.info("ladder: the winner's search picked %s", config)
        split = self.spec.data.split_spec
        raw["data"]["split"] = {
            "valid": 0.0,
            "test": split.test,
            "seed": split.seed,
            "stratify": split.stratify,
        }
        refit_spec = load_spec(raw)
        job = kind_module(refit_spec.kind).Job(refit_spec)
        rctx = RunContext(refit_spec, winner.info, ctx.run_dir, ctx.cluster, ctx.log, False)
        try:
            out = job.run(rctx)
        except (SpecError, DataError, JobFailed) as e:
            raise JobFailed(
                f"the winner {winner.name} ({winner.cand.kind}) could not be "
                f"refitted on every training row: {e.message}"
            ) from e
        return out, refit_spec, best

    # ------------------------------------------------------------------ abilities

    @classmethod
    def load_predictor(cls, run_dir: Path, manifest: dict, allow_module: tuple = ()) -> Any:
        """The winner's predictor: its kind's ``load_predictor`` on a view of the run holding
        the winner's spec and model files (``model/ladder_winner.json`` names them); a
        DataError naming the winner's kind when that kind cannot predict."""
        from distml.jobs.ladder.predictor import read_winner, winner_predictor

        run = Path(run_dir)
        predictor = winner_predictor(run, manifest, tuple(allow_module))
        if predictor is None:
            raise DataError(
                f"run dir {str(run)!r}: the ladder's winner is of kind {read_winner(run)['kind']}, "
                "whose runs distml predict cannot score (no predictor for that kind)"
            )
        return predictor

    @classmethod
    def report_sections(cls) -> list:
        """Section builders of ``report.html``: the fold-paired plot, the difference intervals
        and the cost of each rung (:mod:`distml.jobs.ladder.report`)."""
        from distml.jobs.ladder import report

        return [report.fold_paired, report.differences, report.cost]


def _fixed_task(job: Any) -> str | None:
    """The task a candidate's spec fixes (None: inferred from the target)."""
    spec = job.spec
    if spec.kind == "statsmodels":
        m = spec.model
        return (
            "classification"
            if m.method in ("logit", "probit") or (m.method == "glm" and m.family == "binomial")
            else "regression"
        )
    task = getattr(job, "task", None)
    return task() if callable(task) else None


def fold_row(r: Rung, fold: int, metric: str, value, got: dict, error: str | None) -> dict:
    """One row of ``tables/ladder.parquet`` from a fold task's result ``got``."""
    return {
        "candidate": r.name,
        "kind": r.cand.kind,
        "rung": r.index,
        "fold": fold,
        "metric": metric,
        "value": None if value is None else float(value),
        "fit_seconds": got.get("fit_s"),
        "cpu_seconds": got.get("cpu_s"),
        "n_train": got.get("n_train"),
        "n_test": got.get("n_test"),
        "config": json.dumps(got["config"], sort_keys=True)
        if got.get("config") is not None
        else None,
        "error": error,
    }


def _jsonable(row: dict) -> dict:
    import math

    out = {}
    for k, v in row.items():
        if hasattr(v, "item"):
            v = v.item()
        if v is not None and isinstance(v, float) and not math.isfinite(v):
            v = None
        try:
            import pandas as pd

            if v is pd.NA:
                v = None
        except ImportError:  # pragma: no cover
            pass
        out[k] = v
    return out
