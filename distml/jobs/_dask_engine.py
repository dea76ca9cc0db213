"""``engine: dask`` of the ``pca`` and ``kmeans`` kinds (docs/out_of_core.md, "Which engine").

The data become one lazy Dask array of known lengths, one block per partition as read:

* **parquet** — ``dask.dataframe.read_parquet`` of the files the one planner found, one row group
  per Dask partition, the partition lengths read from the parquet footers (no pass over the data),
  turned into an array with those lengths;
* **CSV and builtin/synthetic sources** — the same partitions the native engine plans
  (:func:`distml.runtime.plan.by_rows`: a CSV file, its lines counted once on the driver; a
  synthetic source in row ranges of ``batch_size``), each read by one ``dask.delayed`` call of
  :func:`distml.runtime.read.read_partition`.

The fit is dask-ml's — ``dask_ml.decomposition.IncrementalPCA`` or
``dask_ml.wrappers.Incremental(sklearn.cluster.MiniBatchKMeans)`` over ``batch_size``-row chunks
in order. What runs where:

* **a partition per Ray task** (:func:`partitions_on_ray`): the partition's Dask graph — the
  read, the float64 conversion, the NaN/inf checks, any scaling, and in the whole-data passes
  (moments, final sizes and inertia) its sums — runs in one Ray task on the run's cluster under
  Dask's synchronous scheduler, so nothing between the read and the result passes through the
  object store; a partition per CPU (and one more) in flight. No ``dask.distributed`` cluster
  is started.
* **the fit loop on the driver**: dask-ml's per-chunk ``partial_fit``, whose small linear
  algebra (column means, the SVD of a ``(k + batch) × d`` matrix) dask-ml expresses as dozens of
  tiny Dask tasks per batch, runs under Dask's synchronous scheduler in the driver, on the
  chunks cut from the partitions as they arrive (:func:`cut`: views, a copy only where a chunk
  spans two partitions).

Measured (docs/out_of_core.md): a Ray task per Dask graph node (``ray.util.dask.ray_dask_get``,
which this engine used before) made 1 GB of k-means 667 tasks, each storing its result in the
object store, and the job 2.5× a plain dask-ml script on threads; running the fit's tiny tasks
on Ray as well made it 1.75× (PCA) to 3× (k-means) slower still. Memory follows the partition
(row-group) size and the partitions in flight, not the data. A worker killed mid-fit is a Ray
task retried: the partition is read again and the fit continues from the same state
(RELIABILITY.md T4).

The fits themselves are in :mod:`distml.jobs._dask_fits`. The fitted model, tables and metrics
are built by the kind's own code, so a dask-engine run is
predicted, reported and loaded exactly as a native one; the manifest says ``engine: dask``."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from distml.errors import DataError, MissingDependency
from distml.jobs import _out_of_core as ooc
from distml.runtime import faults, plan

#: what ``pip install "distml[dask]"`` brings: import name -> distribution
MODULES = {"dask": "dask", "dask_ml": "dask-ml"}
#: Ray 2.60's Dask scheduler (``ray.util.dask``) refuses older Dask
MIN_DASK = "2024.11.0"
#: what the partition tasks import: their module, and Dask's, to rebuild and run a partition's
#: graph (about a second a process, otherwise paid by the first partitions); the kinds'
#: ``worker_modules`` for this engine
WORKER_MODULES = (
    "distml.jobs._dask_engine",
    "dask.dataframe",
    "dask.array",
    "dask.dataframe.io.parquet.arrow",
)


def driver_modules(spec, *fit_modules: str) -> tuple[str, ...]:
    """The kinds' ``driver_modules``: for this engine the fits, Dask's frames and the dask-ml
    fit (``fit_modules``), about 1.7 s of imports; none for the native engine."""
    if spec.engine != "dask":
        return ()
    return ("distml.jobs._dask_fits", "dask.dataframe", *fit_modules)


def check_installed(kind: str) -> None:
    """MissingDependency (exit 2) naming ``pip install "distml[dask]"`` when the extra is absent
    or its Dask is older than Ray's Dask scheduler accepts; run by the kinds' ``check_spec``,
    before any cluster work. Finds the modules without importing them (validate stays light)."""
    import importlib.util
    from importlib import metadata

    purpose = f"engine: dask (kind {kind})"
    for name, package in MODULES.items():
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingDependency.for_extra(package, "dask", purpose)
    try:
        version = metadata.version("dask")
    except metadata.PackageNotFoundError:
        return  # a source tree on sys.path: nothing to compare
    if _release(version) < _release(MIN_DASK):
        raise MissingDependency(
            f"{purpose} needs dask>={MIN_DASK} (Ray's Dask scheduler); dask {version} is "
            'installed; install it with: pip install "distml[dask]"'
        )


def check_spec(spec) -> None:
    """Spec rules of the dask engine (one-sentence errors naming the fields)."""
    m = spec.model
    if m.transform:
        raise ValueError(
            "model.transform is not available with engine: dask (it writes no transformed "
            "data); use engine: native, or distml predict on the fitted run"
        )
    if spec.kind == "pca":
        if m.mode == "exact":
            raise ValueError(
                "model.mode exact needs engine: native (engine: dask runs dask-ml "
                "IncrementalPCA); write mode: incremental or auto"
            )
        if isinstance(m.n_components, float):
            raise ValueError(
                "model.n_components as a variance fraction needs engine: native "
                f"(engine: dask runs IncrementalPCA); got {m.n_components}"
            )
        if m.n_components is not None and m.batch_size < m.n_components:
            raise ValueError(
                "model.batch_size must be >= model.n_components with engine: dask; "
                f"got {m.batch_size} < {m.n_components}"
            )
    if spec.kind == "kmeans" and m.refine_passes:
        raise ValueError(
            "model.refine_passes needs engine: native (engine: dask runs mini-batch "
            f"passes only); got {m.refine_passes}"
        )


def _release(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version string (``2024.11.0rc1`` -> (2024, 11, 0))."""
    import re

    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


# ------------------------------------------------------------------ the lazy array


def lazy_array(source, features: list[str], batch_size: int):
    """``(X, partitions)``: the features of ``source`` (a checked SourceInfo) as a float64 Dask
    array in data order, one block per partition as read (a parquet row group, or a planned
    partition: synthetic sources in ranges of ``batch_size`` rows; see the module docstring),
    its lengths known; :func:`checked` adds the checks of each block, :func:`blocks_on_ray`
    cuts it into batches."""
    import dask
    import dask.array as da

    d = len(features)
    if source.kind == "files" and source.format == "parquet":
        import dask.dataframe as dd

        lengths = [n for f in source.files for n in plan.row_group_rows(f)]
        frame = dd.read_parquet(list(source.files), columns=features, split_row_groups=True)
        if frame.npartitions != len(lengths):  # Dask may leave out empty row groups
            lengths = [n for n in lengths if n]
        if frame.npartitions != len(lengths):
            raise DataError(
                f"data.source: {source.source!r}: Dask sees {frame.npartitions} partitions "
                f"where the parquet footers list {len(lengths)} row groups"
            )
        return frame.astype("float64").to_dask_array(lengths=lengths), len(lengths)
    parts = plan.check_rows(
        plan.by_rows(source, batch_size, virtual_rows=batch_size, count_csv_rows=True),
        source.source,
    )
    read = dask.delayed(_read_matrix, pure=True)
    blocks = [
        da.from_delayed(read(p, features), shape=(p.rows, d), dtype=np.float64)
        for p in parts
        if p.rows
    ]
    if not blocks:
        raise DataError(f"data.source: {source.source!r} has no rows")
    return (da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]), len(blocks)


def batch_slices(rows: int, batch_size: int) -> list[slice]:
    """The row slices of ``batch_size`` rows (the last may be shorter) over ``rows`` rows."""
    return [slice(lo, min(lo + batch_size, rows)) for lo in range(0, rows, max(1, batch_size))]


#: the manifest's ``execution.scheduler``: how the Dask graphs of the passes run
SCHEDULER = "one Ray task per partition, its Dask graph run by Dask's synchronous scheduler"

#: the most partitions :func:`partitions_on_ray` has in flight (computing, or waiting for the
#: driver)
MAX_AHEAD = 16
#: the most bytes of partitions in flight that travel whole to the driver (the fitting passes)
AHEAD_BYTES = 1 << 30


def ahead(cpus: int, partition_bytes: int = 0) -> int:
    """Partitions in flight for ``cpus`` CPUs: one per CPU and one more, so that a CPU freed
    while the driver fits finds the next partition waiting; at most :data:`MAX_AHEAD`, and for
    partitions that travel whole to the driver (``partition_bytes`` each: the largest) at most
    :data:`AHEAD_BYTES` of them (parquet's default row groups of 1M rows are 512 MB at 64
    features), never fewer than 2. Memory follows the partitions, not the data."""
    n = min(MAX_AHEAD, int(cpus) + 1)
    if partition_bytes > 0:
        n = min(n, AHEAD_BYTES // int(partition_bytes))
    return max(2, n)


#: the smallest object store :func:`store_bytes` gives a run's own cluster
STORE_MIN = 256 << 20
#: the driver's chunks at once in a fitting pass, beside :func:`ahead`'s partitions: ``cut``
#: holds up to two partitions, and a partial_fit group (``_dask_fits.GROUP`` chunks) two more
HELD_PARTITIONS = 4


def store_bytes(data, resources: dict) -> int | None:
    """The object store of a run's own cluster for a dask-engine job over parquet: room for
    what its fitting passes hold in the store at once — the partitions in flight
    (:func:`ahead`) and those the driver is cutting and fitting (:data:`HELD_PARTITIONS`) — and
    at least :data:`STORE_MIN`; None (Ray's default) for other sources, whose partitions are
    not known before the cluster starts, and for remote files (their footers, read again here,
    would cost a round trip each before the cluster starts). Every process that writes or maps the partitions
    streaming through the store keeps the pages it touched, and Ray's default store (30% of
    memory) let those grow with the workers running ahead of the driver: B5's 4 GB k-means'
    largest process 1.12-1.24 GB (over the 1 GB cap) with a 7.5 GB store, 0.99 GB with 512 MB,
    0.74 GB with 256 MB, the job's time the same (11.3 s)."""
    from distml.runtime.read import local_path

    source = data.source
    if not (source.kind == "files" and source.format == "parquet"):
        return None
    if any(local_path(f) is None for f in source.files):  # a footer each is a round trip
        return None
    rows = max((n for f in source.files for n in plan.row_group_rows(f)), default=0)
    part = rows * len(data.features) * 8
    cpus = max(1, int(resources.get("CPU", 1)))
    return max(STORE_MIN, (ahead(cpus, part) + HELD_PARTITIONS) * part)


def partition_bytes(X) -> int:
    """The bytes of ``X``'s largest block (float64)."""
    return max(X.chunks[0], default=0) * int(X.shape[1]) * 8


def checked(X, features: list[str], fault, where: str, step: int):
    """``X`` with every block checked for NaN/inf (a DataError naming the column) and carrying
    the T4 hook ``where:step:P`` (``pca.dask``/``kmeans.dask``; step: the data pass, 0-based;
    P: the block of ``X``, a partition: a parquet row group)."""
    return X.map_blocks(
        _check_block, features, fault, where, step, dtype=np.float64, meta=np.empty((0, 0))
    )


def _read_matrix(part, features: list[str]) -> np.ndarray:
    from distml.runtime.read import read_partition

    frame = read_partition(part, features)
    return np.asarray(frame[features].to_numpy(dtype=np.float64), order="C")


def _check_block(X, features, fault, where, step, block_info=None):
    chunk = block_info[0]["chunk-location"][0] if block_info else 0
    faults.crash(fault, where, step, partition=chunk)
    found = ooc.first_nonfinite(X)
    if found is not None:
        j, n = found
        raise DataError(
            f"data.features: column {features[j]!r} has NaN or infinite values ({n} in partition "
            f"{chunk} of {len(X)} rows); drop or impute them first"
        )
    return X


# ------------------------------------------------------------------ running on Ray


@contextmanager
def on_ray() -> Iterator["Probe"]:
    """A :class:`Probe` for the block's Ray tasks; a DataError raised in a task (a partition's
    check) comes out as itself, not wrapped by Ray."""
    try:
        yield Probe()
    except Exception as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, DataError):
            raise DataError(str(cause)) from None
        raise


class Probe:
    """What :func:`on_ray` measured: Ray tasks submitted, and one record per task."""

    def __init__(self):
        self.tasks, self.meta = 0, []


def _pretask() -> tuple[float, int | None]:
    """In the worker, before a task: reset the peak RSS (Linux), note the time and RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return time.perf_counter(), ooc.status_bytes("VmRSS")


def _record(stage: str, partition: int, name: str, result, pre_state) -> dict:
    """One task's figures (see :func:`_pretask`): rows, seconds, RSS at its start and peak."""
    t0, rss0 = pre_state
    peak = ooc.status_bytes("VmHWM")
    return {
        "partition": partition,
        "name": name[:120],
        "stage": stage,
        "rows": int(result.shape[0]) if getattr(result, "ndim", 0) >= 1 else 0,
        "seconds": round(time.perf_counter() - t0, 4),
        "rss_start": rss0,
        "rss_peak": peak,
        "rss_increase": (peak - rss0) if peak and rss0 else None,
    }


def partitions_on_ray(X, in_flight: int, stage: str, probe: Probe) -> Iterator[np.ndarray]:
    """Each block of ``X`` (blocks stacked by rows) as a numpy array, in order. A block is one
    Ray task that runs the block's Dask graph (the read, the float64 conversion, the checks,
    any scaling or sums) with Dask's synchronous scheduler in the worker, so nothing between
    the read and the result passes through the object store; ``in_flight`` tasks at a time: the
    first ones submitted by this call (the workers start reading while the caller goes on), then
    one as each is taken. A worker lost mid-task: Ray runs the task again, which reads its
    partition again (RELIABILITY.md T4). Each task's figures go to ``probe``.

    Measured on B5's 1 GB k-means (42 row groups, 256 chunks), against a Ray task per Dask graph
    node (``ray_dask_get``: 667 tasks, each storing its result): the fitting pass 8.0-9.2 s ->
    2.7-3.2 s, the final pass 1.6-1.7 s -> 1.1 s. A task gets its block's own tasks
    (:func:`block_graphs`), not the whole array's graph: see there."""
    from collections import deque

    task, (graph, rows), pending = _block_task(), block_graphs(X), deque()

    def submit(i: int) -> None:
        pending.append(task.remote(_culled(graph, rows[i]), rows[i], stage, i))
        probe.tasks += 1

    for i in range(min(in_flight, len(rows))):
        submit(i)
    return _arrivals(pending, submit, len(rows), probe)


def block_graphs(X) -> tuple[dict, list[list]]:
    """``X``'s whole graph optimised once (Dask's own optimisation for arrays: cull and fuse),
    as a plain dict, and the keys of each row of blocks. A block's task then gets only the few
    tasks its keys need (:func:`_culled`). Handing it ``X.blocks[i]`` instead made every task
    rebuild and cull the graph of every block of ``X``: on B5's 4 GB (168 row groups) 30-110 ms
    of each task's work, against 10-38 ms for the block's 3 fused tasks, and a 115 KB argument
    against 20 KB."""
    from dask.core import flatten

    keys = X.__dask_keys__()
    rows = [list(flatten([row])) for row in keys]
    graph = dict(X.__dask_optimize__(X.__dask_graph__(), list(flatten(keys))))
    return graph, rows


def _culled(graph: dict, keys: list) -> dict:
    """The tasks of ``graph`` that ``keys`` need, themselves included."""
    from dask.core import get_dependencies

    out: dict = {}
    todo = list(keys)
    while todo:
        key = todo.pop()
        if key not in out:
            out[key] = graph[key]
            todo.extend(get_dependencies(graph, key))
    return out


def _arrivals(pending, submit, n: int, probe: Probe) -> Iterator[np.ndarray]:
    """:func:`partitions_on_ray`'s results in order, the next task submitted as one is taken;
    the tasks still pending are cancelled when the caller stops early."""
    import ray

    nxt = len(pending)
    try:
        while pending:
            value, record = ray.get(pending.popleft())
            probe.meta.append(record)
            if nxt < n:
                submit(nxt)
                nxt += 1
            yield value
    finally:
        for ref in pending:
            try:
                ray.cancel(ref)
            except Exception:  # already finished or gone: nothing to stop
                pass


_TASK: dict[str, object] = {}


def _block_task():
    """:func:`_compute_block` as a Ray remote function of one CPU (retried if its worker dies),
    whose tasks size their thread pools to it first, as every task distml starts."""
    if "task" not in _TASK:
        from distml.runtime import threads

        _TASK["task"] = threads.remote(_compute_block, num_cpus=1, max_retries=3)
    return _TASK["task"]


def _compute_block(graph: dict, keys: list, stage: str, index: int) -> tuple[np.ndarray, dict]:
    """In the worker: the row of blocks ``keys`` of a Dask array, computed from ``graph`` (the
    tasks they need, :func:`block_graphs`) by Dask's synchronous scheduler, joined by columns
    when there are several; and the task's figures."""
    pre = _pretask()
    values = [np.asarray(v) for v in sync()(graph, keys)]
    value = values[0] if len(values) == 1 else np.concatenate(values, axis=1)
    return value, _record(stage, index, f"{stage}-{index}", value, pre)


def sync():
    """Dask's synchronous scheduler as the function itself: named by its string, every compute
    first imports ``dask.distributed`` to look for a client (about 0.3 s in each fresh worker,
    and a lookup per compute after)."""
    from dask.local import get_sync

    return get_sync


def blocks_on_ray(
    X, slices: list[slice], in_flight: int, stage: str, probe: Probe
) -> Iterator[np.ndarray]:
    """``X[s]`` as numpy arrays, for each row slice ``s`` in order (slices ascending, not
    overlapping): ``X``'s blocks computed by :func:`partitions_on_ray`, the slices cut from them
    here (:func:`cut`)."""
    return cut(partitions_on_ray(X, in_flight, stage, probe), slices)


def cut(blocks: Iterator[np.ndarray], slices: list[slice]) -> Iterator[np.ndarray]:
    """``X[s]`` for each slice ``s`` in order, ``X`` being ``blocks`` stacked by rows and
    ``slices`` ascending and not overlapping: a view of one block where the slice lies in it,
    a copy joining the pieces where it spans blocks. A block is taken when a slice first
    reaches it and let go once the slices have passed it."""
    held: list[np.ndarray] = []
    lo = hi = 0  # the rows held: [lo, hi)
    for s in slices:
        while hi < s.stop:
            block = next(blocks)
            held.append(block)
            hi += len(block)
        while held and lo + len(held[0]) <= s.start:  # blocks the slices have passed
            lo += len(held.pop(0))
        pieces, pos = [], lo
        for block in held:
            a, z = max(s.start - pos, 0), min(s.stop - pos, len(block))
            if a < z:
                pieces.append(block[a:z])
            pos += len(block)
            if pos >= s.stop:
                break
        yield pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def local(*blocks: np.ndarray):
    """Numpy arrays already on the driver (rows of the same features) as one Dask array, a chunk
    each, without copies: ``da.from_array`` would copy every block and hash it for a name."""
    import uuid

    import dask.array as da

    name = f"ray-blocks-{uuid.uuid4().hex}"
    graph = {(name, i, 0): b for i, b in enumerate(blocks)}
    chunks = (tuple(len(b) for b in blocks), (blocks[0].shape[1],))
    return da.Array(graph, name, chunks, dtype=blocks[0].dtype)


def moments(X, in_flight: int, probe: Probe) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-feature mean and population variance (ddof=0) and the row count, in one pass: each
    partition's count, mean and scatter computed by its task (:func:`partitions_on_ray`),
    merged here as the native engine merges them (Chan, Golub & LeVeque)."""
    d = int(X.shape[1])
    stats = X.map_blocks(
        _moment_stats, dtype=np.float64, chunks=((1,) * X.numblocks[0], (1 + 2 * d,))
    )
    total = ooc.Moments.empty(d, full=False)
    for row in partitions_on_ray(stats, in_flight, "moments", probe):
        total = total.merge(ooc.Moments(int(row[0, 0]), row[0, 1 : 1 + d], row[0, 1 + d :]))
    return total.mean, total.variance, total.n


def _moment_stats(X: np.ndarray) -> np.ndarray:
    """One row: the count, mean and scatter (per feature) of ``X``'s rows."""
    m = ooc.Moments.empty(X.shape[1], full=False).add(np.array(X, dtype=np.float64))
    return np.concatenate(([m.n], m.mean, m.m2))[None, :]


def execution(
    kind: str, chunks: int, n_parts: int, probe, batch_size: int, passes: int, timings
) -> dict:
    """The manifest ``execution`` of a dask-engine run."""
    import dask

    algorithm = (
        "dask_ml.decomposition.IncrementalPCA"
        if kind == "pca"
        else "dask_ml.wrappers.Incremental(sklearn.cluster.MiniBatchKMeans)"
    )
    return {
        "path": f"dask_{'incremental' if kind == 'pca' else 'minibatch'}",
        "engine": "dask",
        "algorithm": algorithm,
        "scheduler": SCHEDULER,
        "dask_version": dask.__version__,
        "partitions": n_parts,
        "chunks": chunks,
        "tasks": probe.tasks,
        "batch_size": batch_size,
        "data_passes": passes,
        "stages": ooc.stage_info(probe.meta),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }
