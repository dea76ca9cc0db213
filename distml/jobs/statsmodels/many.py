"""The fitting engine of the statsmodels kind: one model, or thousands of per-group models.

Many-models execution (``group_by``), measured on 2 cores (docs/statsmodels.md, B6):

1. **Partition on the workers.** One *map* task per input partition (a parquet file or a run of
   its row groups, a CSV file, or the whole of a builtin/synthetic source) reads only the
   columns the model needs, drops rows whose group key is missing, and stably sorts its rows by
   group key. It returns a small key summary (group keys, start, count) and the sorted columns
   as numpy arrays, which stay in the object store (zero-copy for the fit tasks on that node).
   The driver only merges the key summaries: the rows never pass through it.
2. **Batch the groups.** Groups are numbered in sorted key order (as ``pandas.groupby`` sorts)
   and cut into contiguous batches, many groups per Ray task: a task costs ~2 ms here and one
   OLS fit ~0.3 ms with its inference, so one group per task is ~8x slower than a loop.
   :func:`auto_groups_per_task` sizes the batches from the method's cost, the group count and
   the cluster's CPUs (override: ``model.groups_per_task``).
3. **Fit a batch.** The task slices its groups out of the partitions (rows keep their original
   order), evaluates the formula **once for the whole batch** and slices the design matrix per
   group, when that is provably the same as evaluating the formula on each group alone: every
   factor is computed row by row and the group has every level of each ``C(col)`` seen in the
   batch. Other groups (and formulas with stateful transforms or explicit contrasts) are fitted
   from their own formula, exactly as a per-group ``smf.<method>(formula, group_df)`` would.
   The array interface (``endog``/``exog``) builds its design once per batch too. Design
   matrices are handed to statsmodels in the memory layout the formula API and
   ``sm.add_constant(DataFrame)`` produce (column-major), so results are bit-for-bit those of a
   plain per-group statsmodels loop.
4. **Collect.** Results come back as columnar arrays as tasks finish (``ray.wait``) and are
   tabulated once.

A group that fails (statsmodels raises, a singular design, too few rows, ``min_rows``, a
missing value under ``missing: raise``) gets its ``error`` filled and ``converged`` false;
statsmodels' warnings are recorded per group in ``warnings`` (a ConvergenceWarning also sets
``converged`` false), never raised.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from distml.errors import DataError, JobFailed
from distml.jobs.base import JobOutput
from distml.jobs.statsmodels.batch import Batch, concat, fit_batch
from distml.jobs.statsmodels.fit import (
    COEF_COLUMNS,
    COST_MS,
    FORECAST_COLUMNS,
    MAX_TASKS_PER_CPU,
    TASK_MIN_MS,
    TIME_SERIES,
    FitConfig,
)

#: statsmodels methods by family (the kind's spec checks use them too)

# ------------------------------------------------------------------------ partitions (map side)


def column_array(s: pd.Series) -> np.ndarray:
    """A column as numpy: numbers/bools/datetimes as they are, everything else as objects
    (what statsmodels' formula API turns strings and categoricals into)."""
    dt = s.dtype
    if isinstance(dt, pd.CategoricalDtype) or not isinstance(dt, np.dtype):
        if pd.api.types.is_numeric_dtype(dt) and not pd.api.types.is_bool_dtype(dt):
            return s.to_numpy(dtype=np.float64, na_value=np.nan)
        return s.to_numpy(dtype=object, na_value=None)
    return s.to_numpy()


@dataclass
class Coded:
    """An object column in transit: integer codes (-1: missing) and the distinct values."""

    codes: np.ndarray
    values: np.ndarray

    def take(self, a: int, b: int) -> np.ndarray:
        lookup = np.append(self.values, None).astype(object)
        return lookup[self.codes[a:b]]


def _encode(v: np.ndarray):
    if v.dtype.kind != "O":
        return v
    codes, uniques = pd.factorize(v, use_na_sentinel=True)
    return Coded(codes.astype(np.int32), np.asarray(uniques, dtype=object))


def map_partition(part, group_by: tuple[str, ...], columns: list[str]) -> tuple:
    """Map task: read a partition (a :class:`distml.runtime.plan.Partition`), sort its rows by
    group key (stable), and return ``(summary, data)``: the keys with start/count, and the
    sorted model columns."""
    from distml.runtime.read import read_partition

    c0 = time.process_time()
    frame = read_partition(part, list(dict.fromkeys(list(group_by) + columns)))
    n = len(frame)
    codes = []
    valid = np.ones(n, dtype=bool)
    for c in group_by:
        k, _ = pd.factorize(frame[c], sort=True, use_na_sentinel=True)
        codes.append(k)
        valid &= k >= 0
    idx = np.flatnonzero(valid)
    order = idx[np.lexsort([k[idx] for k in reversed(codes)])] if len(idx) else idx
    if len(order):
        sorted_codes = np.stack([k[order] for k in codes])
        change = np.flatnonzero((np.diff(sorted_codes, axis=1) != 0).any(axis=0)) + 1
        starts = np.concatenate([[0], change])
    else:
        starts = np.zeros(0, dtype=np.int64)
    counts = np.diff(np.append(starts, len(order)))
    summary = frame[list(group_by)].iloc[order[starts]].reset_index(drop=True)
    summary["_start"] = starts
    summary["_count"] = counts
    data = {c: _encode(column_array(frame[c])[order]) for c in columns}
    return (summary, int(n - len(idx)), time.process_time() - c0), data


def merge_summaries(summaries: list[pd.DataFrame], group_by: tuple[str, ...]):
    """Number the groups in sorted key order; returns (keys, pieces) with pieces an int64 array
    of rows ``(gid, part, start, count)`` sorted by gid then part."""
    frames = [s.assign(_part=i) for i, s in enumerate(summaries) if len(s)]
    if not frames:
        return summaries[0][list(group_by)].iloc[:0], np.zeros((0, 4), dtype=np.int64)
    allsum = pd.concat(frames, ignore_index=True)
    gid = allsum.groupby(list(group_by), sort=True, dropna=True).ngroup().to_numpy()
    pieces = np.column_stack(
        [gid, allsum["_part"].to_numpy(), allsum["_start"].to_numpy(), allsum["_count"].to_numpy()]
    ).astype(np.int64)
    pieces = pieces[np.lexsort((pieces[:, 1], pieces[:, 0]))]
    first = np.unique(gid, return_index=True)[1]
    keys = allsum[list(group_by)].iloc[first].reset_index(drop=True)
    return keys, pieces


def assemble(pieces: np.ndarray, parts: list[dict], columns: list[str]) -> Batch:
    """Fit-task side: the rows of a batch's groups, cut out of the partitions in group order."""
    runs: list[list[int]] = []  # [slot, start, end]: adjacent pieces of one part merged
    for _, slot, start, count in pieces:
        if runs and runs[-1][0] == slot and runs[-1][2] == start:
            runs[-1][2] += count
        else:
            runs.append([int(slot), int(start), int(start + count)])
    cols = {}
    for c in columns:
        chunks = [
            parts[s][c].take(a, b) if isinstance(parts[s][c], Coded) else parts[s][c][a:b]
            for s, a, b in runs
        ]
        cols[c] = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    gids, first = np.unique(pieces[:, 0], return_index=True)
    sizes = np.add.reduceat(pieces[:, 3], first) if len(first) else np.zeros(0, np.int64)
    return Batch(cols, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), gids)


def fit_task(cfg: FitConfig, pieces: np.ndarray, columns: list[str], *parts) -> dict:
    """Fit task: assemble the batch from the partitions it needs and fit every group."""
    slots = sorted(set(pieces[:, 1].tolist()))
    local = {s: i for i, s in enumerate(slots)}
    remapped = pieces.copy()
    remapped[:, 1] = [local[s] for s in pieces[:, 1]]
    return fit_batch(cfg, assemble(remapped, list(parts), columns))


def auto_groups_per_task(n_groups: int, method: str, n_cpus: int) -> int:
    """Groups per Ray task: enough fitting per task to bury the ~2 ms task cost
    (``TASK_MIN_MS``), at most ``MAX_TASKS_PER_CPU`` tasks per CPU for fast methods, and at
    least one task per CPU when there are enough groups to share.

    >>> auto_groups_per_task(10_000, "ols", 2), auto_groups_per_task(200, "arima", 2)
    (1250, 5)
    """
    n_cpus = max(1, int(n_cpus))
    min_per_task = max(1, math.ceil(TASK_MIN_MS / COST_MS[method]))
    tasks = min(math.ceil(n_groups / min_per_task), MAX_TASKS_PER_CPU * n_cpus)
    if method in TIME_SERIES:  # slow, uneven fits: finer tasks balance the tail
        tasks = math.ceil(n_groups / min_per_task)
    tasks = max(tasks, min(n_cpus, n_groups), 1)
    return math.ceil(n_groups / tasks)


# ------------------------------------------------------------------------ driver side


def runner(spec):
    """The task runner of the statsmodels paths (:class:`distml.runtime.tasks.Runner`). Map and
    fit tasks are pure functions of their inputs: a task lost with its worker or node is simply
    run again (Ray's default 3 retries, or more with resources.max_failures); a Python error
    inside a fit is the group's error, never a task failure. All tasks may run at once."""
    from distml.runtime.tasks import Runner

    return Runner(spec.resources, min_retries=3, limit_concurrency=False)


def task_options(spec) -> dict:
    """The Ray task options of :func:`runner` (one Ray task of the single-model path)."""
    return runner(spec).opts


def run_many(spec, cfg: FitConfig, ctx) -> JobOutput:
    """Many-models: partition by group on the workers, fit batches of groups in Ray tasks."""
    import ray

    t0, c0 = time.perf_counter(), time.process_time()
    cpus = max(1, int(ctx.cluster.resources.get("CPU", 1) or 1)) if ctx.cluster else 1
    from distml.runtime import plan

    units = plan.by_count(ctx.data.source, 2 * cpus)
    columns = cfg.model_columns()
    tasks = runner(spec)
    from distml import progress

    progress.current().stage("read", f"partitioning by {', '.join(cfg.group_by)}")
    refs = tasks.map(map_partition, units, cfg.group_by, columns, num_returns=2)
    heads = ray.get([r[0] for r in refs])
    parts = [r[1] for r in refs]
    keys, pieces = merge_summaries([h[0] for h in heads], cfg.group_by)
    n_null = sum(h[1] for h in heads)
    n_groups = len(keys)
    if n_groups == 0:
        raise DataError(
            f"group_by: no row of {spec.data.source!r} has a complete group key "
            f"({n_null} rows have a missing value in {list(cfg.group_by)})"
        )
    t_partition = time.perf_counter() - t0
    saver = _checkpoints(spec, ctx, keys)
    results = saver.restore()  # tasks an interrupted attempt finished (--resume)
    done_gids = {int(g) for r in results for g in r["gids"]}
    gpt = saver.gpt or cfg.groups_per_task or auto_groups_per_task(n_groups, cfg.method, cpus)
    fitter = tasks.remote(fit_task)
    bounds = np.searchsorted(pieces[:, 0], np.arange(0, n_groups + gpt, gpt).clip(max=n_groups))
    pending = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo and not done_gids.issuperset(pieces[lo:hi, 0].tolist()):
            chunk = pieces[lo:hi]
            slots = sorted(set(chunk[:, 1].tolist()))
            pending.append(fitter.remote(cfg, chunk, columns, *[parts[s] for s in slots]))
    n_tasks = len(pending)
    ctx.log.info(
        "many-models: %d groups in %d partitions -> %d tasks of <= %d groups%s",
        n_groups,
        len(units),
        n_tasks,
        gpt,
        f" ({len(done_gids)} groups from the checkpoint)" if done_gids else "",
    )
    show = progress.current()
    show.stage("train", f"many-models: {n_tasks} tasks")
    groups, n_done, n_bad = show.counter("groups", total=n_groups, unit="groups"), 0, 0
    from distml.runtime import faults

    fault = faults.from_env("manymodels.groups")  # tests: the driver stops after K groups
    n_collected = len(done_gids)
    # collect as tasks finish, so results stream back while others fit; leaving the loop early
    # (a lost task, a fault) cancels the others
    with contextlib.closing(tasks.stream(pending)) as finished:
        for batch, n_pending in finished:
            results.extend(batch)
            n_collected += sum(len(r["gids"]) for r in batch)
            crash = faults.once(fault, "manymodels.groups", n_collected) if n_pending else False
            saver.collected(batch, gpt, force=crash)
            if crash:
                raise JobFailed(f"fault injected after {n_collected} groups (manymodels.groups)")
            if show.active:  # groups done and failed so far, on the progress display
                n_done += sum(len(r["gids"]) for r in batch)
                n_bad += sum(bool(s.get("error")) for r in batch for s in r["stats"])
                groups.update(completed=n_done, info=f"{n_bad} failed")
    groups.done()
    del parts, refs, pending
    t_fit = time.perf_counter() - t0 - t_partition
    out = tabulate(cfg, results, keys)
    n_failed = out.metrics["n_failed"]
    if n_failed == n_groups:
        raise JobFailed(
            f"every group failed ({n_groups}); first errors: "
            + "; ".join(out.info.pop("first_errors"))
        )
    if n_failed:
        ctx.log.warning(
            "%d of %d groups failed; e.g. %s",
            n_failed,
            n_groups,
            "; ".join(out.info["first_errors"][:3]),
        )
    out.metrics["n_rows_without_group"] = int(n_null)
    out.info["execution"] = {
        "partitions": len(units),
        "tasks": n_tasks,
        "groups_per_task": int(gpt),
        "groups_per_task_auto": cfg.groups_per_task is None,
        "formula_evaluated_per_batch_groups": int(sum(r["n_fast"] for r in results)),
        "engine": _engine_summary(cfg, results),
        **saver.ckpt.record(),
        "timings_s": {
            "partition": round(t_partition, 4),
            "fit": round(t_fit, 4),
            "tabulate": round(time.perf_counter() - t0 - t_partition - t_fit, 4),
            "worker_fit_total": round(sum(r["fit_s"] for r in results), 4),
            "worker_fit_cpu_total": round(sum(r["cpu_s"] for r in results), 4),
            "worker_partition_cpu_total": round(sum(h[2] for h in heads), 4),
            "driver_cpu": round(time.process_time() - c0, 4),
        },
    }
    saver.ckpt.discard()  # the tables are in hand; _SUCCESS follows their writing
    return out


def _engine_summary(cfg: FitConfig, results: list[dict]) -> dict:
    """Which engine fitted how many groups, and why the vectorised one declined the rest."""
    from distml.jobs.statsmodels import engine as _vectorised

    declined: dict[str, int] = {}
    for r in results:
        for why, n in r.get("declined", {}).items():
            declined[why] = declined.get(why, 0) + n
    return {
        "vectorised": int(sum(r.get("n_vectorised", 0) for r in results)),
        "out_of_scope": _vectorised.scope(cfg),
        "declined": declined,
    }


def _checkpoints(spec, ctx, keys: pd.DataFrame):
    """The run's group checkpoints (:mod:`distml.jobs._groups_checkpoint`), valid only for
    this spec, these data and these groups."""
    from distml.jobs import _resume
    from distml.jobs._groups_checkpoint import FOLDER, GroupCheckpoints

    key = _resume.fingerprint(
        spec.to_dict(),
        ctx.data.fingerprint(),
        len(keys),
        int(pd.util.hash_pandas_object(keys, index=False).sum()),
    )
    return GroupCheckpoints(_resume.Checkpoints.for_run(ctx, FOLDER, key), len(keys))


def single_task(cfg: FitConfig, source: str, columns: list[str]) -> dict:
    """The one Ray task of a single model: read the columns, fit with statsmodels."""
    from distml.runtime.data import read_frame

    frame = read_frame(source, columns)
    cols = {c: column_array(frame[c]) for c in columns}
    batch = Batch(cols, np.array([0, len(frame)], dtype=np.int64), np.array([0]))
    return fit_batch(cfg, batch, fast=False, keep=True)


def run_single(spec, cfg: FitConfig, ctx) -> JobOutput:
    """One model in one Ray task; adds statsmodels' summary as ``summary.txt``."""
    from distml.runtime import runners

    columns = cfg.model_columns()
    ran: dict = {}
    args = (cfg, spec.data.source, columns)
    result = runners.call(single_task, args, task_options(spec), ctx.cluster, ran)
    stats = result["stats"][0]
    if stats.get("error"):
        if cfg.missing == "raise" and stats.get("n_missing"):
            raise DataError(
                f"data.source: {stats['error']}; drop those rows or set model.missing: drop"
            )
        raise JobFailed(f"statsmodels {cfg.method} fit failed: {stats['error']}")
    out = tabulate(cfg, [result], None)
    out.texts["summary.txt"] = result["summary"] or ""
    out.info.pop("first_errors", None)
    out.info["execution"] = {
        "tasks": 1,
        "timings_s": {"worker_fit": round(result["fit_s"], 4)},
        "warm_runner": ran,
    }
    return out


def tabulate(cfg: FitConfig, results: list[dict], keys: pd.DataFrame | None) -> JobOutput:
    """Tables and metrics from the tasks' columnar results (``keys`` None: a single model)."""
    results = sorted(results, key=lambda r: int(r["gids"][0]) if len(r["gids"]) else -1)
    gids = np.concatenate([r["gids"] for r in results])
    stat_cols = cfg.stat_columns()
    stats = pd.DataFrame([row for r in results for row in r["stats"]]).reindex(columns=stat_cols)
    stats["converged"] = stats["converged"].fillna(False).astype(bool)
    for c in ("error", "warnings"):
        stats[c] = stats[c].astype(object).where(stats[c].notna(), None)
    coef = concat([r["coef"] for r in results if r["coef"] is not None])
    coef_df = (
        pd.DataFrame({c: coef[c] for c in COEF_COLUMNS})
        if coef
        else pd.DataFrame(
            {c: pd.Series(dtype=object if c == "term" else float) for c in COEF_COLUMNS}
        )
    )
    fc = concat([r["forecast"] for r in results if r["forecast"] is not None])
    tables = {"coefficients": coef_df, "model_stats": stats}
    if cfg.forecast_steps:
        tables["forecast"] = (
            pd.DataFrame({c: fc[c] for c in FORECAST_COLUMNS})
            if fc
            else pd.DataFrame(columns=FORECAST_COLUMNS)
        )
    if keys is not None:
        tables["model_stats"] = _with_keys(keys, gids, stats)
        tables["coefficients"] = _with_keys(
            keys, coef["gid"] if coef else np.zeros(0, np.int64), coef_df
        )
        if "forecast" in tables:
            tables["forecast"] = _with_keys(
                keys, fc["gid"] if fc else np.zeros(0, np.int64), tables["forecast"]
            )
    failed = stats["error"].notna()
    metrics: dict[str, Any] = {
        "method": cfg.method,
        "n_groups": int(len(stats)),
        "n_fitted": int((~failed).sum()),
        "n_failed": int(failed.sum()),
        "n_not_converged": int((~failed & ~stats["converged"]).sum()),
        "nobs": float(stats["nobs"].where(~failed).sum()),
    }
    if keys is None:
        row = stats.iloc[0]
        for c in stat_cols:
            v = row[c]
            if (
                c in ("error", "warnings", "engine")
                or c.startswith(("valid_", "test_"))
                or pd.isna(v)
            ):
                continue
            metrics[c] = (
                bool(v)
                if c == "converged"
                else (int(v) if c in ("n_rows", "n_missing", "ljung_box_lags") else float(v))
            )
        metrics["n_params"] = int(len(coef_df))
    else:
        for c in ("r_squared", "pseudo_r_squared", "aic"):
            if c in stats and stats[c].notna().any():
                metrics[f"{c}_median"] = float(stats[c].median())
    for split in ("valid", "test"):
        pairs = [(y, p) for r in results for (s, y, p) in r["holdout"] if s == split]
        if pairs:
            metrics[split] = _pooled(
                cfg, np.concatenate([y for y, _ in pairs]), np.concatenate([p for _, p in pairs])
            )
    out = JobOutput(metrics=metrics, tables=tables)
    out.info["first_errors"] = [
        f"{_key_text(keys, g)}: {e}"
        for g, e in zip(gids[failed.to_numpy()], stats["error"][failed].head(5))
    ][:5]
    return out


def _with_keys(keys: pd.DataFrame, gid: np.ndarray, frame: pd.DataFrame) -> pd.DataFrame:
    left = keys.iloc[gid].reset_index(drop=True)
    return pd.concat([left, frame.reset_index(drop=True)], axis=1)


def _key_text(keys: pd.DataFrame | None, gid: int) -> str:
    if keys is None:
        return "model"
    return ", ".join(f"{c}={v}" for c, v in keys.iloc[int(gid)].items())


def _pooled(cfg: FitConfig, y: np.ndarray, pred: np.ndarray) -> dict:
    from distml.runtime import metrics as M

    if cfg.classification:
        return M.classification_metrics(
            y.astype(np.int64), (pred >= 0.5).astype(np.int64), np.column_stack([1 - pred, pred]), 2
        )
    return M.regression_metrics(y, pred)
