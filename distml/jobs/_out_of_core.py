"""Out-of-core machinery shared by the ``pca`` and ``kmeans`` kinds (docs/out_of_core.md).

The data are cut into *partitions* (a parquet file, or a run of its row groups; a CSV file; a
whole builtin/synthetic source) by the one planner (:mod:`distml.runtime.plan`) from parquet
footers alone. Each pass over the data is one Ray task per partition; a task streams its
partition in batches of at most ``batch_size`` rows with the one reader
(:func:`distml.runtime.read.iter_tables`) and keeps only a fixed-size state (moments, a sample,
cluster sums), so its memory is bounded by ``batch_size × features``, never by the data.
Partial results are merged by a fixed tree of Ray merge tasks (the one task runner,
:mod:`distml.runtime.tasks`; Chan et al.'s pairwise update for moments), so the driver only
ever receives one merged state, and the floating-point result does not depend on which task
finished first, or on a retried task (RELIABILITY.md T4).

Dask is not used on this path: measured here it was slower than plain pyarrow batches in Ray
tasks (docs/out_of_core.md has the figures and the benchmark that produced them).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from distml.errors import DataError, JobFailed
from distml.jobs._sample import Sample, draw, picks  # noqa: F401 - ooc.Sample, ooc.draw, ooc.picks
from distml.runtime import faults, pages, plan
from distml.runtime.plan import Partition
from distml.runtime.read import iter_tables, prefetch, rechunk  # noqa: F401 (pca, tests)
from distml.runtime.tasks import FAN_IN, Runner, merge_all  # noqa: F401 (benchmarks/b5 uses them)

#: rows per partition when the spec does not say; row groups are never split, files never merged
DEFAULT_PARTITION_ROWS = 1 << 20
#: the earlier name of the T4 testing hook, "MARKER_PATH:STAGE:PARTITION:BATCH" (an alias of
#: ``DISTML_FAULT=pca.STAGE:BATCH:PARTITION``, see :mod:`distml.runtime.faults`)
FAULT_ENV = faults.STAGE_ENV
#: why ``--resume`` of pca/kmeans starts again (manifest ``execution.resume_reason``): their
#: state between passes is not checkpointed; within a pass a lost task is retried by Ray
NO_RESUME = (
    "out-of-core passes are not checkpointed (a lost task within a pass is retried); "
    "--resume ran the passes from the start"
)


def resume_record(ctx) -> dict:
    """The ``execution`` fields of a pca/kmeans run: on ``--resume``, that it did not resume."""
    return {"resumed_from": None, "resume_reason": NO_RESUME} if ctx.resume else {}


#: what every pass's task imports besides its kind's module: the parquet reader (the batches
#: reach numpy without pyarrow's ``to_numpy``, which would import pandas: :func:`_fill`)
WORKER_MODULES = ("pyarrow.parquet",)


def worker_modules(spec, module: str) -> tuple[str, ...]:
    """:meth:`~distml.jobs.base.Job.worker_modules` of an out-of-core kind: its tasks' module
    and the reader, or those of ``engine: dask`` (:data:`distml.jobs._dask_engine.WORKER_MODULES`)."""
    if spec.engine == "dask":
        from distml.jobs._dask_engine import WORKER_MODULES as dask_modules

        return dask_modules
    return (module, *WORKER_MODULES)


# ------------------------------------------------------------------ partitions


def plan_partitions(source, partition_rows: int | None = None) -> list[Partition]:
    """Partitions of a checked :class:`distml.runtime.data.SourceInfo`, in data order:
    parquet row groups packed, in order, into partitions of at most ``partition_rows`` rows
    (a row group is never split, a partition never spans two files); a CSV file or a virtual
    source is one partition (``distml data generate`` writes them to parquet for parallel
    passes). The one planner, :func:`distml.runtime.plan.by_rows`, does the cutting."""
    parts = plan.by_rows(source, partition_rows or DEFAULT_PARTITION_ROWS)
    return plan.check_rows(parts, source.source)


# ------------------------------------------------------------------ streaming batches


@dataclass
class Batch:
    """``X``: float64, Fortran order (each feature contiguous), at most ``batch_size`` rows;
    ``keep``: the pass-through columns of the same rows (a pyarrow Table) or None."""

    X: np.ndarray
    keep: Any = None


def iter_batches(
    part: Partition,
    features: list[str],
    batch_size: int,
    keep: list[str] | None = None,
    threads: bool = False,
    reuse: bool = False,
) -> Iterator[Batch]:
    """Stream ``part`` as numeric batches; NaN/inf/null in a feature is a DataError. ``reuse``:
    the caller is done with a batch when it asks for the next (it keeps no reference to it),
    so local parquet files' plain float columns are decoded by :mod:`distml.runtime.pages`
    into matrices reused from batch to batch (never hand such batches to :func:`prefetch`)."""
    keep = list(keep or [])
    where = part.where()
    blocks = _plain_blocks(part, features) if reuse and not keep else None
    if blocks is not None:
        for X in pages.cut(blocks, batch_size, len(features)):
            yield Batch(_checked(X, features, where))
        return
    columns = features + [c for c in keep if c not in features]
    for table in iter_tables(part, columns, batch_size, float_columns=features, threads=threads):
        X = _matrix(table, features, where)
        yield Batch(X, table.select(keep) if keep else None)


def _plain_blocks(part: Partition, features: list[str], local: np.ndarray | None = None):
    """:func:`distml.runtime.pages.plain_blocks` of a parquet partition (None otherwise): the
    columns it does not decode are read by Arrow, a row group at a time, as :func:`_columns`
    reads them (nulls refused, other types cast)."""
    if part.format != "parquet":
        return None
    where = part.where()

    def arrow_columns(path: str, g: int, js: list[int], X: np.ndarray, rows) -> None:
        import pyarrow.parquet as pq

        names = [features[j] for j in js]
        table = pq.ParquetFile(path).read_row_group(g, columns=names)
        _columns(table, names, where, rows, out=X, at=js)

    return pages.plain_blocks(part.pieces, features, arrow_columns, local)


#: rows per batch read when only some rows are decoded (:func:`iter_picked`): the per-column
#: work of a batch is Python calls, so fewer, larger batches (a 65,536 × 64 batch is 32 MB)
PICK_ROWS = 1 << 16


def iter_picked(
    part: Partition, features: list[str], batch_size: int, local: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream ``part`` and decode only the rows at the ascending row numbers ``local`` (within
    the partition): ``(rows read, those of them picked as a float64 matrix)`` per batch (per
    row group of local parquet files' plain float columns). A null in a batch is refused as
    :func:`_matrix` refuses it (Arrow counts them); NaN/inf only in the rows picked (the rest
    are not decoded: the passes that decode them check them)."""
    where, at = part.where(), 0
    blocks = _plain_blocks(part, features, local)
    if blocks is not None:
        for _, n, X in blocks:  # only the rows drawn decoded (copied out of the pages)
            yield n, _checked(X, features, where)
        return
    for table in iter_tables(part, features, batch_size, float_columns=features):
        n = table.num_rows
        lo, hi = np.searchsorted(local, [at, at + n])
        yield n, _matrix(table, features, where, local[lo:hi] - at)  # checks nulls, picks or not
        at += n


@dataclass
class Decoded:
    """A partition as its first pass decoded it: the refs of the same batches (float64, Fortran
    order, one object each) in the same order, kept in the object store so the later passes
    skip reading and decoding. A task maps one batch at a time (read-only, zero-copy)."""

    part: Partition
    batches: list


def batches_of(
    src, features: list[str], batch_size: int, keep: list[str] | None = None
) -> tuple[Partition, Iterator[Batch]]:
    """``(partition, batches)`` of a pass's input: a :class:`Decoded` partition's kept batches,
    else the partition read and decoded again (with the pass-through ``keep`` columns, which
    kept batches do not have)."""
    if isinstance(src, Decoded):
        if keep:
            raise ValueError("kept batches have no pass-through columns: read the partition")
        import ray

        return src.part, (Batch(ray.get(ref)) for ref in src.batches)
    return src, iter_batches(src, features, batch_size, keep, reuse=True)


def decoded_fits(rows: int | None, n_features: int, resources: dict, share: float = 0.5) -> bool:
    """Whether ``rows`` × ``n_features`` float64 fit ``share`` of the cluster's object store
    (unknown row counts or store sizes: no)."""
    store = resources.get("object_store_memory")
    return bool(rows and store) and rows * n_features * 8 <= share * store


def _matrix(table, features: list[str], where: str, rows: np.ndarray | None = None) -> np.ndarray:
    """The features of ``table`` as a float64 Fortran matrix; ``rows``: only those (ascending
    row numbers). A null anywhere in the batch, or NaN/inf in a row decoded, is a DataError."""

    X = _tensor(table, features) if rows is None else None
    if X is None:
        X = _columns(table, features, where, rows)
    return _checked(X, features, where)


def _checked(X: np.ndarray, features: list[str], where: str) -> np.ndarray:
    """``X``, unless a column has NaN or infinite values: a DataError naming it."""
    found = first_nonfinite(X)
    if found is not None:
        j, n = found
        raise DataError(
            f"data.features: column {features[j]!r} has NaN or infinite values in "
            f"{where} ({n} in the first batch of {len(X)} rows with any); drop or "
            "impute them first"
        )
    return X


def first_nonfinite(X: np.ndarray) -> tuple[int, int] | None:
    """The first column of ``X`` with NaN or infinite values and how many it has, else None
    (one sum per column finds them: a NaN or inf in a column makes its sum non-finite)."""
    bad = ~np.isfinite(X.sum(axis=0))
    if not bad.any():
        return None
    j = int(np.flatnonzero(bad)[0])
    return j, int((~np.isfinite(X[:, j])).sum())


def _tensor(table, features: list[str]) -> np.ndarray | None:
    """All the rows of ``table``'s features in one copy by Arrow (``to_tensor``, column-major),
    when they are all float64 without nulls; else None. An 8,192 × 64 batch: 0.22 ms, against
    0.62-0.70 ms column by column, whose Python calls per column are most of the cost."""
    import pyarrow as pa

    schema = table.schema
    if not table.num_rows or any(schema.field(n).type != pa.float64() for n in features):
        return None
    try:
        return np.asarray(table.select(features).to_tensor(row_major=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a null: the column-by-column path names it
        return None


def _columns(table, features: list[str], where: str, rows, out=None, at=None) -> np.ndarray:
    """:func:`_matrix` column by column: nulls refused (by column), other types cast. ``out``:
    fill its columns ``at`` (one per feature) instead of a new matrix."""
    import pyarrow as pa

    X = (
        out
        if out is not None
        else np.empty((table.num_rows if rows is None else len(rows), len(features)), order="F")
    )
    for j, name in zip(at if at is not None else range(len(features)), features):
        col = table.column(name)
        if col.null_count:
            raise DataError(
                f"data.features: column {name!r} has missing values in {where} "
                f"({col.null_count} in the first batch of {len(col)} rows with any); "
                "drop or impute them first"
            )
        if col.type != pa.float64():
            col = col.cast(pa.float64())
        _fill(X[:, j], col, rows)
    return X


def _fill(out: np.ndarray, column, rows: np.ndarray | None = None) -> None:
    """Copy a float64 Arrow array without nulls (``rows``: only those, ascending) into ``out``,
    chunk by chunk, from the chunks' data buffers: Arrow's own ``to_numpy`` and ``take`` import
    pandas, which the pass's tasks otherwise never need (0.3-0.5 s of every worker's start)."""
    at = done = 0
    for chunk in getattr(column, "chunks", [column]):  # a table's column, or a batch's
        n = len(chunk)
        data = np.frombuffer(chunk.buffers()[1], dtype=np.float64, count=n, offset=chunk.offset * 8)
        if rows is None:
            out[at : at + n] = data
        else:
            hi = int(np.searchsorted(rows, at + n))
            out[done:hi] = data[rows[done:hi] - at]
            done = hi
        at += n


# ------------------------------------------------------------------ mergeable states


@dataclass
class Moments:
    """Count, mean and scatter (``full``: the d×d matrix of centred cross-products; else its
    diagonal) of some rows, merged with Chan, Golub & LeVeque's pairwise update."""

    n: int
    mean: np.ndarray
    m2: np.ndarray
    meta: list = field(default_factory=list)

    @classmethod
    def empty(cls, d: int, full: bool) -> "Moments":
        return cls(0, np.zeros(d), np.zeros((d, d) if full else d))

    def add(self, X: np.ndarray) -> "Moments":
        """Fold in the rows of ``X`` (centred in place: the caller's batch is consumed)."""
        n = len(X)
        if n == 0:
            return self
        mean = X.mean(axis=0)
        X -= mean
        m2 = X.T @ X if self.m2.ndim == 2 else np.einsum("ij,ij->j", X, X)
        return self.merge(Moments(n, mean, m2))

    def merge(self, other: "Moments") -> "Moments":
        meta = self.meta + other.meta
        if other.n == 0:
            return Moments(self.n, self.mean, self.m2, meta)
        if self.n == 0:
            return Moments(other.n, other.mean, other.m2, meta)
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        w = self.n * other.n / n
        extra = np.outer(delta, delta) * w if self.m2.ndim == 2 else delta * delta * w
        return Moments(n, mean, self.m2 + other.m2 + extra, meta)

    @property
    def variance(self) -> np.ndarray:
        """Population variance per feature (ddof=0, as StandardScaler)."""
        diag = np.diag(self.m2) if self.m2.ndim == 2 else self.m2
        return diag / max(self.n, 1)

    def scaler(self) -> "Scaler":
        std = np.sqrt(self.variance)
        return Scaler(self.mean.copy(), np.where(std > 0, std, 1.0))


def owned(X, copy: bool = True) -> np.ndarray:
    """``X`` as a float64 array this code may overwrite (a copy unless ``copy=False`` and it
    already is a writeable float64 array)."""
    X = np.asarray(X, dtype=np.float64)
    return X.copy() if copy or not X.flags.writeable else X


@dataclass
class Scaler:
    """Standard scaling (StandardScaler semantics: population std, 1 where it is 0)."""

    mean: np.ndarray
    scale: np.ndarray

    def apply(self, X: np.ndarray) -> np.ndarray:
        X -= self.mean
        X /= self.scale
        return X


# ------------------------------------------------------------------ task-side helpers


class TaskProbe:
    """Per-task figures: rows, seconds and peak RSS (Linux: the high-water mark is reset at the
    start so the peak is this task's, not the reused worker process's)."""

    def __init__(self, part: Partition, stage: str):
        self.part, self.stage, self.t0 = part, stage, time.perf_counter()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        self.rss0 = status_bytes("VmRSS")

    def meta(self, rows: int) -> list[dict]:
        peak = status_bytes("VmHWM")
        return [
            {
                "partition": self.part.index,
                "name": self.part.name,
                "stage": self.stage,
                "rows": int(rows),
                "seconds": round(time.perf_counter() - self.t0, 4),
                "rss_start": self.rss0,
                "rss_peak": peak,
                "rss_increase": (peak - self.rss0) if peak and self.rss0 else None,
            }
        ]


def status_bytes(key: str) -> int | None:
    """A ``/proc/self/status`` figure in bytes (``VmRSS``, ``VmHWM``; None off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def fault_from_env(kind: str):
    """The T4 testing hook for the tasks of ``kind`` (pca or kmeans), read on the driver and
    handed to tasks explicitly (:mod:`distml.runtime.faults`)."""
    return faults.from_env(*(f"{kind}.{stage}" for stage in faults.STAGES[kind]))


class PartWriter:
    """Streams tables to ``out_dir/name.parquet`` through the one atomic writer
    (:func:`distml.runtime.artifacts.atomic_file`: a temp name, renamed on close); a retried
    task simply writes the same file again. No table written, no file."""

    def __init__(self, out_dir: str, name: str):
        root = os.path.realpath(out_dir)
        self.path = os.path.realpath(os.path.join(root, name + ".parquet"))
        if not self.path.startswith(root + os.sep):
            raise JobFailed(f"transform output {name!r} would leave {out_dir!r}")
        self.writer = None
        self._atomic = None

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        from distml.runtime.artifacts import atomic_file

        if self.writer is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._atomic = atomic_file(self.path)
            self.writer = pq.ParquetWriter(self._atomic.__enter__(), table.schema)
        self.writer.write_table(table)

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.writer is not None:
            self.writer.close()
            self._atomic.__exit__(exc_type, exc, tb)


def discard_partials(out_dir: str) -> None:
    """Remove temp files a killed task left in ``out_dir`` (its retry wrote the real file)."""
    for root, _, files in os.walk(out_dir):
        for f in files:
            if f.startswith(".") and ".tmp-" in f:
                os.unlink(os.path.join(root, f))


def memory_info(meta: list[dict], batch_size: int, n_features: int) -> dict:
    """Manifest figures: the largest per-task RSS peak and increase, against one batch."""
    peaks = [m["rss_peak"] for m in meta if m.get("rss_peak")]
    incs = [m["rss_increase"] for m in meta if m.get("rss_increase") is not None]
    mb = 1 / 2**20
    return {
        "batch_mb": round(batch_size * n_features * 8 * mb, 3),
        "max_task_rss_peak_mb": round(max(peaks) * mb, 1) if peaks else None,
        "max_task_rss_increase_mb": round(max(incs) * mb, 1) if incs else None,
        "tasks_measured": len(meta),
    }


def stage_info(meta: list[dict]) -> dict:
    """Per-stage task counts, rows and seconds (sum over tasks) for the manifest."""
    out: dict[str, dict] = {}
    for m in meta:
        s = out.setdefault(m["stage"], {"tasks": 0, "rows": 0, "task_seconds": 0.0})
        s["tasks"] += 1
        s["rows"] += m["rows"]
        s["task_seconds"] = round(s["task_seconds"] + m["seconds"], 4)
    return out


# ------------------------------------------------------------------ common spec checks


def numeric_features(spec, keep=()) -> Any:
    """check_data for the out-of-core kinds: features default to the numeric columns (bool and
    string columns are left out); listed ones must be numeric; ``keep`` columns must exist."""
    from distml.runtime.data import DataInfo, is_categorical_dtype, is_numeric_dtype, validate_data

    data, target = spec.data, spec.data.target
    if target:  # not needed by these kinds: only kept out of the features, never read
        data = data.model_copy(update={"target": None})
    info = validate_data(data, needs_target=False, check_features=False)
    cols = info.source.columns
    for what, names in (
        ("data.target", [target] if target else []),
        ("model.keep_columns", list(keep)),
    ):
        missing = [c for c in names if c not in cols]
        if missing:
            raise DataError(
                f"{what}: column {missing[0]!r} is not in {data.source!r} "
                f"(columns: {', '.join(list(cols)[:30])})"
            )
    if data.features is not None:
        if target in data.features:
            raise DataError(f"data.features: {target!r} is also data.target; remove it from one")
        for c in info.features:
            if not is_numeric_dtype(cols[c]) or is_categorical_dtype(cols[c]):
                raise DataError(
                    f"data.features: column {c!r} has dtype {cols[c]}; kind "
                    f"{spec.kind} needs numeric features; list it in data.exclude"
                )
        features = info.features
    else:
        features = [
            c
            for c in info.features
            if c != target and is_numeric_dtype(cols[c]) and not is_categorical_dtype(cols[c])
        ]
    if not features:
        raise DataError(
            f"data.features: {data.source!r} has no numeric feature columns left "
            "after removing target and exclude"
        )
    return DataInfo(info.source, info.test, target, features, [], [])


def check_spec(spec) -> None:
    """Spec rules shared by the out-of-core kinds (raised as one-sentence validation errors)."""
    from distml.spec.base import SplitSpec

    kind = spec.kind
    # the default split is tolerated (a resolved spec.yaml carries it), any other is a mistake
    if spec.data.split not in ("none", SplitSpec()):
        raise ValueError(
            f"data.split does not apply to kind {kind}: every row is used; remove "
            "it or write split: none"
        )
    if spec.data.test_source:
        raise ValueError(f"data.test_source is not used by kind {kind}; remove it")
    if getattr(spec, "tune", None) is not None:
        raise ValueError(
            f"tune does not apply to kind {kind} (a search needs a validation "
            "metric, which an unsupervised fit does not report); remove it"
        )
    if spec.resources.gpus_per_worker:
        raise ValueError(
            f"resources.gpus_per_worker must be 0 for kind {kind} (it runs on CPUs); "
            f"got {spec.resources.gpus_per_worker}"
        )
    model = spec.model
    if not model.transform and model.keep_columns:
        raise ValueError(
            "model.keep_columns needs model.transform: true (they are copied into "
            "the transformed output)"
        )
