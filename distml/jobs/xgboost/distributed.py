"""Multi-worker xgboost: a Ray Train V2 ``XGBoostTrainer`` worker group (DESIGN.md §5).

1. One Ray task reads only the target column (and the categorical columns, for their levels),
   draws exactly the row split of the single-task path (:func:`split_indices`) and cuts the
   source into read units with the one planner (:func:`distml.runtime.plan.by_rows`: parquet
   row groups, synthetic blocks, CSV files).
2. Each worker reads its own share of those units with pyarrow (:func:`shard_units`: balanced
   by rows, the same on every attempt), tagged with the global row number and split; no Ray
   Data (its executor and split coordinator cost seconds per group) and nothing passes through
   the driver.
3. Each worker builds its train/valid DMatrix and runs ``xgboost.train`` inside xgboost's
   collective (evaluation metrics and early stopping are global). A
   :class:`~ray.train.xgboost.RayTrainReportCallback` checkpoints the booster after the first
   round and then every few rounds (at most one report every 2 s, so reports never stall
   boosting: :class:`distml.runtime.workers.Cadence`) with the evaluation history
   and the early-stopping state; a
   restarted group (``resources.max_failures``) continues from the last one with the remaining
   rounds (``xgb_model=``).
4. After training every worker predicts its own rows; an allreduce assembles the predictions in
   row order on rank 0, which computes the same metrics, tables and model files as the
   single-task path and hands them back in its final checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distml.errors import DataError, JobFailed, one_line
from distml.jobs.base import JobOutput, RunContext
from distml.runtime import faults, threads
from distml.runtime import workers as D
from distml.runtime.splits import class_order

if TYPE_CHECKING:  # heavy: imported where used, so `distml validate` stays light
    import numpy as np
    import pandas as pd

UNIT_ROWS = 262_144  # rows per read unit (several parquet row groups may form one)
TRAIN, VALID, TEST, TEST_SOURCE = 0, 1, 2, 3
_SPLIT_CODES = {"train": TRAIN, "valid": VALID, "test": TEST}
ROW, SPLIT, LABEL = "__distml_row", "__distml_split", "__distml_label"


@dataclass
class Plan:
    """What the workers need besides their shard (small: no feature data)."""

    task: str
    classes: list | None
    categories: dict[str, list]
    features: list[str]
    units: list[dict]
    rows: dict[str, int]
    n_total: int

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0


# ------------------------------------------------------------------ planning (one Ray task)


def _units_for(info, offset: int, code: int | None) -> tuple[list[dict], int]:
    """Read units of a checked source (the one planner: whole row groups of about
    :data:`UNIT_ROWS` rows, synthetic blocks, whole CSV files), numbered from ``offset``."""
    from distml.runtime import plan
    from distml.runtime.datasets import BLOCK_ROWS

    parts = plan.by_rows(
        info, UNIT_ROWS, at_least=True, offset=offset, virtual_rows=BLOCK_ROWS, count_csv_rows=True
    )
    return [{"part": p.to_dict(), "code": code} for p in parts], sum(p.rows for p in parts)


def plan_task(job, info) -> tuple[Plan, np.ndarray, np.ndarray]:
    """Read the target (and categorical) columns only: task, classes, levels, split, units.
    Returns the plan, the split code of every row and the encoded labels."""
    import numpy as np
    import pandas as pd

    from distml.jobs._supervised import encode_target
    from distml.runtime.data import infer_task, read_frame, split_indices

    spec = job.spec
    target = info.target
    frame = read_frame(spec.data.source, [target] + list(info.categorical))
    y_raw = frame[target]
    task = job.task() or infer_task(y_raw)
    categories = {
        c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in info.categorical
    }
    classes = None
    if task == "classification":
        classes = class_order(pd.unique(y_raw).tolist())
        y = encode_target(y_raw, classes, "data.source").astype(np.float64)
    else:
        if not pd.api.types.is_numeric_dtype(y_raw):
            raise DataError(
                f"data.target: column {target!r} has dtype {y_raw.dtype}, but a "
                "regression target must be numeric"
            )
        y = y_raw.to_numpy(dtype=np.float64)
    parts = split_indices(y, spec.data.split_spec, classification=task == "classification")
    codes = np.full(len(y), -1, dtype=np.int8)
    for name, rows in parts.items():
        codes[rows] = _SPLIT_CODES[name]
    units, n = _units_for(info.source, 0, None)
    if n != len(y):
        raise DataError(
            f"data.source: {n} rows in the read units but {len(y)} target values; "
            "did the files change while the job started?"
        )
    rows = {k: int(len(v)) for k, v in parts.items()}
    if spec.data.test_source:
        test = read_frame(spec.data.test_source, [target], "data.test_source")[target]
        y_test = (
            encode_target(test, classes, "data.test_source").astype(np.float64)
            if classes is not None
            else test.to_numpy(dtype=np.float64)
        )
        more, n_test = _units_for(info.test, n, TEST_SOURCE)
        units += more
        y = np.concatenate([y, y_test])
        codes = np.concatenate([codes, np.full(n_test, TEST_SOURCE, dtype=np.int8)])
        rows["test"] = int(n_test)
    plan = Plan(task, classes, categories, list(info.features), units, rows, len(y))
    return plan, codes, y


def read_units(units: list[dict], plan: Plan, codes: np.ndarray, target: str) -> pd.DataFrame:
    """Read units → typed feature rows tagged with row number and split (pyarrow, in the
    worker that trains on them). A unit with a ``slice`` ``[lo, hi)`` keeps those of its rows."""
    import numpy as np
    import pandas as pd

    from distml.runtime.plan import Partition
    from distml.runtime.read import read_partition

    frames = []
    for unit in units:
        part = Partition.from_dict(unit["part"])
        frame = read_partition(part, plan.features + [target])
        lo, hi = unit.get("slice") or (0, len(frame))
        frame = frame.iloc[lo:hi]
        rows = np.arange(part.offset + lo, part.offset + lo + len(frame), dtype=np.int64)
        out = frame[plan.features].reset_index(drop=True)
        for c in plan.features:
            if c in plan.categories:  # codes: categorical levels are fixed globally
                levels = plan.categories[c]
                values = out[c].astype("string").astype(object)
                out[c] = pd.Categorical(
                    values.where(values.isin(levels)), categories=levels
                ).codes.astype(np.int32)
            elif pd.api.types.is_bool_dtype(out[c]):
                out[c] = out[c].astype(np.int8)
        out[ROW] = rows
        out[SPLIT] = codes[rows]
        frames.append(out)
    return pd.concat(frames, ignore_index=True)


@dataclass
class Matrix:
    """A worker's shard of plain numeric features as float32 columns: what ``xgboost.DMatrix``
    reads without a conversion (the values are those xgboost's own cast of the typed frame
    gives, so the model is the same to the byte)."""

    columns: np.ndarray  # features × rows, float32, C order (each feature contiguous)
    rows: np.ndarray  # global row numbers
    header: pd.DataFrame  # no rows: the features' dtypes as the frame path has them

    def dmatrix(self, mask, label=None, nthread: int = -1):
        import xgboost as xgb

        return xgb.DMatrix(
            self.columns[:, mask].T,  # rows × features in column order: xgboost takes strides
            label=label,
            feature_names=list(self.header.columns),
            feature_types=self.feature_types(),
            nthread=nthread,
        )

    def feature_types(self) -> list[str]:
        import xgboost as xgb

        return list(xgb.DMatrix(self.header, enable_categorical=True).feature_types or [])


@dataclass
class Frame:
    """A worker's shard as a typed frame (categorical features: xgboost's categorical support
    takes pandas categories); the same interface as :class:`Matrix`."""

    frame: pd.DataFrame  # the features
    rows: np.ndarray

    @property
    def header(self) -> pd.DataFrame:
        return self.frame.iloc[:0]

    def dmatrix(self, mask, label=None, nthread: int = -1):
        import xgboost as xgb

        return xgb.DMatrix(self.frame[mask], label=label, enable_categorical=True, nthread=nthread)


def read_frame_shard(units: list[dict], plan: Plan, codes: np.ndarray, target: str) -> Frame:
    """:func:`read_units` with the categorical codes made pandas categories again."""
    import numpy as np
    import pandas as pd

    frame = read_units(units, plan, codes, target)
    for c, levels in plan.categories.items():
        frame[c] = pd.Categorical.from_codes(frame[c].to_numpy(np.int32), categories=levels)
    return Frame(frame[plan.features], frame[ROW].to_numpy(np.int64))


def read_matrix(units: list[dict], plan: Plan) -> Matrix | None:
    """The features of ``units`` (with their ``slice``) as a :class:`Matrix`, straight from
    Arrow, one unit at a time (no pandas frame, no concatenation; Arrow reuses one unit's
    buffers for the next, where holding every unit's table costs fresh memory: 5× slower here);
    None when a feature is not plain numeric (categorical levels, strings, booleans with nulls):
    the worker reads :func:`read_units` then."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from distml.runtime.plan import Partition
    from distml.runtime.read import read_partition_table

    if plan.categories:
        return None
    spans = [unit.get("slice") or (0, int(unit["part"]["rows"])) for unit in units]
    n = sum(hi - lo for lo, hi in spans)
    columns = np.empty((len(plan.features), n), dtype=np.float32)
    rows = np.empty(n, dtype=np.int64)
    heads, at = [], 0
    for unit, (lo, hi) in zip(units, spans):
        part = Partition.from_dict(unit["part"])
        table = read_partition_table(part, plan.features)
        for c in plan.features:
            kind, column = table.column(c).type, table.column(c)
            plain = pa.types.is_integer(kind) or pa.types.is_floating(kind)
            if not plain and not (pa.types.is_boolean(kind) and column.null_count == 0):
                return None
        if table.num_rows < hi:
            raise DataError(
                f"data.source: a read unit has {table.num_rows} rows where the plan counted "
                f"{unit['part']['rows']}; did the files change while the job ran?"
            )
        heads.append(_header(table, plan.features))  # the whole unit types its rows
        mine = table.slice(lo, hi - lo)
        for j, c in enumerate(plan.features):
            columns[j, at : at + hi - lo] = mine.column(c).to_numpy()
        rows[at : at + hi - lo] = np.arange(part.offset + lo, part.offset + hi, dtype=np.int64)
        at += hi - lo
        del table, mine
    header = pd.concat(heads, ignore_index=True) if len(heads) > 1 else heads[0]
    return Matrix(columns, rows, header.iloc[:0])


def _header(table, features: list[str]) -> pd.DataFrame:
    """One unit's first row with the dtypes :func:`read_units` gives all its rows (pandas' own
    mapping with the file's pandas metadata, an integer column with nulls as float64, booleans
    as int8): concatenated, these rows resolve the dtypes as the frames would."""
    import numpy as np
    import pandas as pd

    head = table.slice(0, 1).to_pandas()[features]  # a row: pandas ignores empty frames' dtypes
    for c in features:
        dtype = head[c].dtype
        if pd.api.types.is_bool_dtype(dtype):  # numpy's bool and pandas' "boolean", as read_units
            head[c] = head[c].astype(np.int8)
        elif table.column(c).null_count and isinstance(dtype, np.dtype) and dtype.kind in "iu":
            head[c] = head[c].astype(np.float64)
    return head


def shard_units(units: list[dict], rank: int, world: int) -> list[dict]:
    """What worker ``rank`` of ``world`` reads: the rows ``[n*rank/world, n*(rank+1)/world)`` of
    the units (numbered in order), as the units that overlap them, each with the ``slice`` of
    its own rows to keep. Shards are contiguous, disjoint, cover every row, differ by at most
    one row (as Ray Data's equal split: xgboost's collective fails on a worker without rows)
    and are the same on every attempt (a restarted worker re-reads exactly its rows). A unit
    on a boundary is read by both neighbours, so at most ``world - 1`` units are read twice."""
    n = sum(int(u["part"]["rows"]) for u in units)
    lo, hi = n * rank // world, n * (rank + 1) // world
    mine, start = [], 0
    for unit in units:
        k = int(unit["part"]["rows"])
        a, b = max(lo, start), min(hi, start + k)
        if a < b:
            mine.append({**unit, "slice": (a - start, b - start)})
        start += k
    return mine


# ------------------------------------------------------------------ the driver side


def run_worker_group(job, ctx: RunContext, choice: D.Execution) -> JobOutput:
    """Train ``job`` (an xgboost Job) on a Ray Train worker group; the JobOutput of the run."""
    import pandas as pd
    import ray
    from ray.train.xgboost import XGBoostTrainer

    from distml.jobs.xgboost.worker import train_loop

    res = job.spec.resources
    t0 = time.perf_counter()
    # "DEFAULT": never inside a placement group of the caller's; in a Tune trial that drives this
    # worker group, the trial's group reserves no CPU for the task (distml/tune/runner.py)
    opts = dict(
        num_cpus=res.cpus_per_worker,
        max_retries=res.max_failures,
        retry_exceptions=False,
        scheduling_strategy="DEFAULT",
    )
    try:
        plan, codes, y = ray.get(threads.remote(plan_task, **opts).remote(job, ctx.data))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, DataError):
            raise e.cause from None
        raise JobFailed(f"xgboost data planning failed: {e.cause}") from e
    t_plan = time.perf_counter() - t0
    ctx.log.info(
        "xgboost: %d workers (%s); %d rows in %d read units",
        choice.workers,
        choice.reason,
        plan.n_total,
        len(plan.units),
    )
    from distml import progress

    config = {
        "job": job,
        "plan": plan,
        "labels": y,
        "codes": codes,
        "target": ctx.data.target,
        "fault": faults.from_env("train.iteration"),
        "progress": progress.worker_reporter(),  # None unless progress is shown
        "checkpoint_interval_s": None,
        "submitted_at": time.time(),  # the worker's loop records how long its group took to start
    }
    trainer = XGBoostTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=D.scaling_config(res, choice.workers),
        run_config=D.run_config(ctx, res.max_failures),
    )
    t1 = time.perf_counter()
    try:
        result = D.fit(trainer)
    except Exception as e:
        raise JobFailed(f"xgboost worker group failed: {one_line(e, 500)}") from e
    t_train = time.perf_counter() - t1
    if result.checkpoint is None:
        raise JobFailed("xgboost worker group finished without a final checkpoint")
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, "result.json"), encoding="utf-8") as fh:
            final = json.load(fh)
        with open(os.path.join(d, "model.ubj"), "rb") as fh:
            model_bytes = fh.read()
        path = os.path.join(d, "predictions.parquet")
        predictions = pd.read_parquet(path) if os.path.exists(path) else None
    D.discard_checkpoints(ctx)
    return _output(
        final,
        model_bytes,
        predictions,
        plan,
        job,
        choice,
        {"plan_s": round(t_plan, 4), "train_s": round(t_train, 4)},
    )


def _output(
    final: dict,
    model_bytes: bytes,
    predictions,
    plan: Plan,
    job,
    choice: D.Execution,
    timings: dict,
) -> JobOutput:
    import pandas as pd

    out = JobOutput()
    if predictions is not None:
        out.tables["predictions"] = predictions
    out.metrics = final["metrics"]
    out.tables["learning_curve"] = pd.DataFrame(
        final["curve"], columns=["iteration", "split", "metric", "value"]
    )
    if final.get("confusion"):
        out.tables["confusion_matrix"] = pd.DataFrame(final["confusion"])
    out.tables["feature_importance"] = pd.DataFrame(final["importance"])
    out.files = {
        "model/model.ubj": model_bytes,
        "model/schema.json": json.dumps(final["schema"], indent=2).encode(),
    }
    out.info = {
        "task": plan.task,
        "task_inferred": job.task() is None,
        "rows": plan.rows,
        "worker_timings_s": final["timings"],
    }
    out.info["execution"] = choice.record(
        backend="xgboost collective (Ray Train V2 XGBoostTrainer)",
        device="cuda" if job.spec.resources.gpus_per_worker > 0 else "cpu",
        attempts=final["attempts"],
        resumed_from=final["resumed_from"],
        checkpoint_interval_s=D.report_interval_s(),
        timings_s=timings,
    )
    return out


# ------------------------------------------------------------------ early-stopping state


def stopper_state(stopper) -> dict | None:
    """xgboost's EarlyStopping state as JSON (for checkpoints; None without a stopper)."""
    if stopper is None:
        return None
    return {
        "stopping_history": stopper.stopping_history,
        "best_scores": stopper.best_scores,
        "current_rounds": stopper.current_rounds,
        "maximize": stopper.maximize,
    }


def set_stopper_state(stopper, state: dict | None) -> None:
    """Restore what :func:`stopper_state` saved into a fresh EarlyStopping."""
    if state:
        stopper.stopping_history = state["stopping_history"]
        stopper.best_scores = state["best_scores"]
        stopper.current_rounds = state["current_rounds"]
        stopper.maximize = state["maximize"]
