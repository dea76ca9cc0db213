"""``engine: dask`` of the ``pca`` and ``kmeans`` kinds (docs/out_of_core.md, "Which engine").

The data become one lazy Dask array with known chunks of ``model.batch_size`` rows:

* **parquet** — ``dask.dataframe.read_parquet`` of the files the one planner found, one row group
  per Dask partition, the partition lengths read from the parquet footers (no pass over the data),
  turned into an array with those lengths and re-cut into ``batch_size``-row chunks;
* **CSV and builtin/synthetic sources** — the same partitions the native engine plans
  (:func:`distml.runtime.plan.by_rows`: a CSV file, its lines counted once on the driver; a
  synthetic source in row ranges of ``batch_size``), each read by one ``dask.delayed`` call of
  :func:`distml.runtime.read.read_partition`.

The fit is dask-ml's — ``dask_ml.decomposition.IncrementalPCA`` or
``dask_ml.wrappers.Incremental(sklearn.cluster.MiniBatchKMeans)`` over the chunks in order.
What runs where: the chunk work (reads, float64 conversion, the cut into chunks, the NaN/inf
checks, scaling) and the whole-data passes (moments, final sizes and inertia) are Dask graphs run
as Ray tasks on the run's cluster through Ray's Dask scheduler (``ray.util.dask.ray_dask_get``;
no ``dask.distributed`` cluster is started). The sequential fit loop — dask-ml's per-chunk
``partial_fit``, whose small linear algebra (column means, the SVD of a ``(k + batch) × d``
matrix) dask-ml expresses as dozens of tiny Dask tasks per batch — runs under Dask's synchronous
scheduler in the driver, on chunks :func:`blocks_on_ray` brings from Ray a group at a time (the
next group computed while the current one is fitted). Measured (docs/out_of_core.md), running
those tiny tasks as Ray tasks made the fit 1.75× (PCA) to 3× (k-means) slower than a plain
dask-ml script on threads; the driver holds at most two groups of chunks. A task holds one
chunk (or, for parquet, the row group it is cut from), so memory follows the batch size and the
row-group size, not the data. A worker killed mid-fit is a Ray task retried: the chunk is read
again and the fit continues from the same state (RELIABILITY.md T4).

The fits themselves are in :mod:`distml.jobs._dask_fits`. The fitted model, tables and metrics
are built by the kind's own code, so a dask-engine run is
predicted, reported and loaded exactly as a native one; the manifest says ``engine: dask``.
"""

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


def lazy_array(
    source, features: list[str], batch_size: int, rechunk: bool = True, parallel: int = 1
):
    """``(X, partitions, group)``: the features of ``source`` (a checked SourceInfo) as a float64 Dask
    array of known chunks, ``batch_size`` rows each (the last may be shorter), in data order
    (see the module docstring), and the :func:`group_size` for :func:`blocks_on_ray` on
    ``parallel`` CPUs; :func:`checked` adds the checks of each chunk. ``rechunk=False``:
    chunked as read (a parquet row group, or a planned partition, each)."""
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
        X = frame.astype("float64").to_dask_array(lengths=lengths)
        n_parts, longest = len(lengths), max(lengths, default=0)
    else:
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
        X = da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
        n_parts, longest = len(blocks), max(p.rows for p in parts)
    if rechunk:
        X = X.rechunk({0: batch_size, 1: -1})
    return X, n_parts, group_size(longest, batch_size, parallel)


#: the most chunks one Ray graph of :func:`blocks_on_ray` brings to the driver
MAX_GROUP = 16


def group_size(partition_rows: int, batch_size: int, parallel: int = 1) -> int:
    """How many chunks :func:`blocks_on_ray` computes per Ray graph: enough to cover the longest
    partition once per CPU (so a row group is read about once, not once per chunk cut from it,
    and ``parallel`` row groups are read at once: a graph of one row group read on one CPU at a
    time while the other waited, 1 GB k-means' fitting pass took 8.5 s against 6.6-7.1 s), at
    most :data:`MAX_GROUP`."""
    per_partition = -(-partition_rows // max(batch_size, 1))
    return max(1, min(MAX_GROUP, per_partition * max(1, int(parallel))))


def checked(X, features: list[str], fault, where: str, step: int):
    """``X`` with every chunk checked for NaN/inf (a DataError naming the column) and carrying
    the T4 hook ``where:step:P`` (``pca.dask``/``kmeans.dask``; step: the data pass, 0-based;
    P: the chunk of ``X``, a row group in k-means' final pass)."""
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
    bad = ~np.isfinite(X.sum(axis=0))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        n = int((~np.isfinite(X[:, j])).sum())
        raise DataError(
            f"data.features: column {features[j]!r} has NaN or infinite values ({n} in chunk "
            f"{chunk} of {len(X)} rows); drop or impute them first"
        )
    return X


# ------------------------------------------------------------------ running on Ray


@contextmanager
def on_ray(log) -> Iterator["Probe"]:
    """Dask's scheduler set to Ray's (``ray_dask_get``) for the block, with a :class:`Probe`
    recording every task's rows, seconds and peak RSS; the probe's actor ends with the block."""
    import functools

    import dask
    import ray
    from ray.util.dask import RayDaskCallback, ray_dask_get

    sink = _sink_class().options(num_cpus=0).remote()
    probe = Probe()
    # plain module functions as callbacks: they travel with every task by reference
    callback = RayDaskCallback(
        ray_pretask=_pretask,
        ray_posttask=functools.partial(_posttask, sink),
        ray_postsubmit=probe.submitted,
    )
    try:
        with dask.config.set(scheduler=ray_dask_get), callback:
            yield probe
    except Exception as e:  # a DataError raised in a task comes back wrapped by Ray
        cause = getattr(e, "cause", None)
        if isinstance(cause, DataError):
            raise DataError(str(cause)) from None
        raise
    finally:
        try:
            probe.meta = ray.get(sink.meta.remote(), timeout=60)
        except Exception as e:  # the figures are a report, not the result
            log.warning("dask engine: task figures not collected (%s)", e)
        ray.kill(sink)


class Probe:
    """What :func:`on_ray` measured: Ray tasks submitted, and one record per task."""

    def __init__(self):
        self.tasks, self.meta = 0, []

    def submitted(self, task, key, deps, object_ref) -> None:
        self.tasks += 1


def _sink_class():
    import ray

    @ray.remote
    class Sink:
        """Collects the per-task figures the workers send."""

        def __init__(self):
            self.rows: list[dict] = []

        def add(self, row: dict) -> None:
            self.rows.append(row)

        def meta(self) -> list[dict]:
            return self.rows

    return Sink


def _pretask(key, object_refs):
    """In the worker, before a Dask task: reset the peak RSS (Linux), note the time and RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return time.perf_counter(), ooc.status_bytes("VmRSS")


def _posttask(sink, key, result, pre_state) -> None:
    """In the worker, after a Dask task: send its rows, seconds and RSS figures to the sink."""
    from dask.utils import key_split

    t0, rss0 = pre_state
    peak = ooc.status_bytes("VmHWM")
    rows = int(result.shape[0]) if getattr(result, "ndim", 0) >= 1 else 0
    sink.add.remote(
        {
            "partition": _index(key),
            "name": str(key)[:120],
            "stage": key_split(key).split("-")[0],
            "rows": rows,
            "seconds": round(time.perf_counter() - t0, 4),
            "rss_start": rss0,
            "rss_peak": peak,
            "rss_increase": (peak - rss0) if peak and rss0 else None,
        }
    )


def _index(key) -> int:
    return int(key[1]) if isinstance(key, tuple) and len(key) > 1 and isinstance(key[1], int) else 0


def blocks_on_ray(X, slices: list[slice], group: int) -> Iterator[np.ndarray]:
    """``X[s]`` as numpy arrays, for each row slice ``s`` in order: the slices are computed
    ``group`` at a time, each group one Dask graph run by Ray's Dask scheduler (the chunks of a
    group share the Ray tasks reading the row groups they are cut from), and the next group is
    computed while the caller fits the current one. At most two groups are held on the driver
    (``2 × group`` chunks). One group at a time: Ray's Dask scheduler keeps its callbacks (the
    memory probe) in process-wide state, and two graphs computed at once lost task records."""
    from concurrent.futures import ThreadPoolExecutor

    import dask
    from ray.util.dask import ray_dask_get

    def compute(part: list[slice]) -> tuple:
        return dask.compute(*[X[s] for s in part], scheduler=ray_dask_get)

    groups = [slices[i : i + group] for i in range(0, len(slices), group)]
    if not groups:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="dask-blocks") as pool:
        pending = pool.submit(compute, groups[0])
        try:
            for i in range(len(groups)):
                blocks = pending.result()
                if i + 1 < len(groups):
                    pending = pool.submit(compute, groups[i + 1])
                yield from blocks
        finally:
            pending.cancel()


def chunk_slices(X) -> list[slice]:
    """The row slices of ``X``'s chunks."""
    bounds = np.cumsum((0, *X.chunks[0]))
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def local(*blocks: np.ndarray):
    """Numpy arrays already on the driver (rows of the same features) as one Dask array, a chunk
    each, without copies: ``da.from_array`` would copy every block and hash it for a name."""
    import uuid

    import dask.array as da

    name = f"ray-blocks-{uuid.uuid4().hex}"
    graph = {(name, i, 0): b for i, b in enumerate(blocks)}
    chunks = (tuple(len(b) for b in blocks), (blocks[0].shape[1],))
    return da.Array(graph, name, chunks, dtype=blocks[0].dtype)


def moments(X) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-feature mean and population variance (ddof=0) and the row count, in one pass."""
    import dask

    mean, var = dask.compute(X.mean(axis=0), X.var(axis=0))
    return np.asarray(mean), np.asarray(var), int(X.shape[0])


def execution(kind: str, X, n_parts: int, probe, batch_size: int, passes: int, timings) -> dict:
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
        "scheduler": "ray.util.dask.ray_dask_get",
        "dask_version": dask.__version__,
        "partitions": n_parts,
        "chunks": len(X.chunks[0]),
        "tasks": probe.tasks,
        "batch_size": batch_size,
        "data_passes": passes,
        "stages": ooc.stage_info(probe.meta),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }
