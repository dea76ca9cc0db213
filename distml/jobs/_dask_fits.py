"""The two fits of ``engine: dask`` (see :mod:`distml.jobs._dask_engine` for the data and the
scheduler): dask-ml's ``IncrementalPCA`` for kind pca, ``Incremental(MiniBatchKMeans)`` for kind
kmeans; the outputs are built by the kinds' own code, so they are the native engine's."""

from __future__ import annotations

import time

import numpy as np

from distml.errors import DataError
from distml.jobs import _out_of_core as ooc
from distml.jobs._dask_engine import (
    ahead,
    batch_slices,
    blocks_on_ray,
    checked,
    execution,
    lazy_array,
    local,
    moments,
    on_ray,
    partition_bytes,
    partitions_on_ray,
    sync,
)
from distml.runtime import faults


def run_pca(job, ctx):
    """``engine: dask`` of kind pca: (with ``scale``, one pass of moments, then) dask-ml's
    ``IncrementalPCA(n_components, batch_size, svd_solver="full").fit(X)``: batches cut as
    scikit-learn's ``IncrementalPCA.fit`` cuts an array, so equal to it."""
    import warnings

    import dask
    from sklearn.utils import gen_batches

    from distml.jobs.base import JobOutput
    from distml.jobs.pca import FittedPCA, flip_signs

    m, feats = job.spec.model, ctx.data.features
    fault = faults.from_env("pca.dask")
    cpus = max(1, int(ctx.cluster.resources.get("CPU", 1)))
    X, n_parts = lazy_array(ctx.data.source, feats, m.batch_size)
    # IncrementalPCA.fit's batches: gen_batches' cut (the last one merged into the one before
    # when shorter than n_components)
    batches = list(gen_batches(X.shape[0], m.batch_size, min_batch_size=m.n_components or 0))
    ctx.log.info(
        "pca (engine dask): %d partitions, %d chunks of %d rows, %d features",
        n_parts,
        len(batches),
        m.batch_size,
        len(feats),
    )
    timings: dict[str, float] = {}
    scaler, passes = None, 1
    with on_ray() as probe:
        if m.scale:
            t0 = time.perf_counter()
            mean, var, _ = moments(checked(X, feats, fault, "pca.dask", 0), ahead(cpus), probe)
            std = np.sqrt(var)
            scaler = ooc.Scaler(mean, np.where(std > 0, std, 1.0))
            timings["moments_s"] = time.perf_counter() - t0
            passes += 1
        Xf = checked(X, feats, fault, "pca.dask", passes - 1)
        if scaler is not None:
            Xf = (Xf - scaler.mean) / scaler.scale
        t0 = time.perf_counter()
        # IncrementalPCA.fit's loop: partial_fit on each batch, cut from the partitions computed
        # on Ray (submitted now, before dask-ml is imported), its small linear algebra run by
        # Dask's synchronous scheduler where it now is
        blocks = blocks_on_ray(Xf, batches, ahead(cpus, partition_bytes(X)), "fit_blocks", probe)
        from dask_ml.decomposition import IncrementalPCA

        # svd_solver "full": dask-ml's "auto" picks a randomised SVD (unseeded) for batches over
        # 500 rows, which is neither reproducible nor scikit-learn's result
        ipca = IncrementalPCA(
            n_components=m.n_components, batch_size=m.batch_size, svd_solver="full"
        )
        with warnings.catch_warnings(), dask.config.set(scheduler=sync()):
            warnings.simplefilter("ignore", RuntimeWarning)  # dask's 0/0 inferring a meta
            for block in blocks:
                ipca.partial_fit(local(block), check_input=False)
        timings["fit_s"] = time.perf_counter() - t0
    n = int(ipca.n_samples_seen_)
    if n < 2:
        raise DataError(f"kind pca needs at least 2 rows; the data have {n}")
    model = FittedPCA(
        feats,
        np.asarray(ipca.mean_, dtype=np.float64),
        # dask's SVD leaves signs as they fall; scikit-learn's svd_flip makes them comparable
        flip_signs(np.asarray(ipca.components_, dtype=np.float64)),
        np.asarray(ipca.explained_variance_, dtype=np.float64),
        np.asarray(ipca.explained_variance_ratio_, dtype=np.float64),
        np.asarray(ipca.singular_values_, dtype=np.float64),
        float(ipca.noise_variance_),
        n,
        m.whiten,
        "incremental",
        scaler,
    )
    raw_mean = scaler.mean if scaler is not None else model.mean
    raw_std = np.sqrt(var) if scaler is not None else np.sqrt(np.asarray(ipca.var_))
    out = JobOutput()
    job._outputs(out, model, feats, raw_mean, raw_std)
    out.info["engine"] = "dask"
    out.info["execution"] = {
        "mode": "incremental",
        "reason": "engine: dask runs dask-ml IncrementalPCA",
        **execution("pca", len(batches), n_parts, probe, m.batch_size, passes, timings),
        **ooc.resume_record(ctx),
    }
    out.info["memory"] = ooc.memory_info(probe.meta, m.batch_size, len(feats))
    return out


def run_kmeans(job, ctx):
    """``engine: dask`` of kind kmeans: ``dask_ml.wrappers.Incremental(MiniBatchKMeans(...),
    shuffle_blocks=False)`` over the chunks in data order, ``max_passes`` times at most (each
    pass continues from the last with ``partial_fit``; it stops once the centres move less than
    ``tol`` × the mean feature variance), then one pass of sizes and inertia. Equal to
    ``MiniBatchKMeans(...).partial_fit`` fed the same batches in the same order."""
    from distml.jobs.kmeans.model import FittedKMeans, PassStats

    m, feats = job.spec.model, ctx.data.features
    fault = faults.from_env("kmeans.dask")
    cpus = max(1, int(ctx.cluster.resources.get("CPU", 1)))
    X, n_parts = lazy_array(ctx.data.source, feats, m.batch_size)
    slices = batch_slices(int(X.shape[0]), m.batch_size)
    ctx.log.info(
        "kmeans (engine dask): %d partitions, %d chunks of %d rows, k=%d",
        n_parts,
        len(slices),
        m.batch_size,
        m.n_clusters,
    )
    timings: dict[str, float] = {}
    history: list[dict] = []
    scaler, step, converged, passes = None, 0, False, 0
    with on_ray() as probe:
        t0 = time.perf_counter()
        # the moments pass (data pass 0) only when its figures are used: the scaler, or the
        # tolerance of a later pass (a first pass never converges; tol 0 needs no variance)
        n, tol, read = int(X.shape[0]), 0.0, 0
        if m.scale or (m.tol > 0 and m.max_passes > 1):
            Xc = checked(X, feats, fault, "kmeans.dask", step)
            mean, var, n = moments(Xc, ahead(cpus), probe)
            read += 1
        step += 1
        if n < m.n_clusters:
            raise DataError(
                f"model.n_clusters must be <= the number of rows ({n}); got {m.n_clusters}"
            )
        if m.scale:
            std = np.sqrt(var)
            scaler = ooc.Scaler(mean, np.where(std > 0, std, 1.0))
            var = var / scaler.scale**2
        if read:
            tol = m.tol * float(np.mean(var))
            timings["moments_s"] = time.perf_counter() - t0

        def fitting_pass(step: int):
            Xf = checked(X, feats, fault, "kmeans.dask", step)
            if scaler is not None:
                Xf = (Xf - scaler.mean) / scaler.scale
            return blocks_on_ray(Xf, slices, ahead(cpus, partition_bytes(X)), "fit_blocks", probe)

        t0 = time.perf_counter()
        # the first pass's partitions submitted before dask-ml is imported: the workers read
        # while the driver finishes loading it (started while the cluster started)
        first = fitting_pass(step)
        from dask_ml.wrappers import Incremental

        inc = Incremental(
            writable_minibatch_kmeans()(
                n_clusters=m.n_clusters,
                batch_size=m.batch_size,
                n_init=m.n_init,
                init_size=m.init_size,
                random_state=m.seed,
            ),
            shuffle_blocks=False,
        )
        old = None
        for passes in range(1, m.max_passes + 1):  # noqa: B007 - read after the loop
            _partial_fit_pass(inc, first if passes == 1 else fitting_pass(step))
            step += 1
            new = np.array(inc.estimator_.cluster_centers_, dtype=np.float64)
            shift = float(((new - old) ** 2).sum()) if old is not None else float("inf")
            history.append(
                {
                    "pass": passes,
                    "kind": "minibatch",
                    "center_shift": shift if old is not None else None,
                    "inertia_while_assigning": None,
                    "rows": n,
                    "reseeded": 0,
                }
            )
            old = new
            if shift <= tol:
                converged = True
                break
        timings["minibatch_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # Sizes and inertia are sums over the rows: one task per partition as read (the read,
        # the check and the sums in one process), not per chunk cut from it
        Xf = checked(X, feats, fault, "kmeans.dask", step)
        if scaler is not None:
            Xf = (Xf - scaler.mean) / scaler.scale
        k = len(old)
        stats = Xf.map_blocks(
            _final_stats, old, dtype=np.float64, chunks=((1,) * Xf.numblocks[0], (k + 1,))
        )
        parts = list(partitions_on_ray(stats, ahead(cpus), "final_stats", probe))
        timings["final_s"] = time.perf_counter() - t0
    table = np.concatenate(parts)
    counts, inertia = table[:, :k].sum(axis=0).astype(np.int64), float(table[:, k].sum())
    final = PassStats(np.zeros((0, 0)), counts, inertia, int(counts.sum()))
    model = FittedKMeans(feats, old, counts, scaler)
    out = job._outputs(model, final, history, [float("nan")], converged, passes, 0)
    out.metrics.update(init_inertia=None, init_inertias=[])  # MiniBatchKMeans does not say
    out.info["engine"] = "dask"
    out.info["execution"] = {
        "init": "MiniBatchKMeans.partial_fit on the first chunk",
        **execution(
            "kmeans", len(slices), n_parts, probe, m.batch_size, read + passes + 1, timings
        ),
        **ooc.resume_record(ctx),
    }
    out.info["memory"] = ooc.memory_info(probe.meta, m.batch_size, len(feats) + m.n_clusters)
    return out


#: the most chunks one ``Incremental.partial_fit`` call takes (it fits them one by one, in order)
GROUP = 16


def _partial_fit_pass(inc, blocks) -> None:
    """One pass of ``inc.partial_fit`` over the chunks ``blocks`` yields, in order: handed to
    ``Incremental.partial_fit`` :data:`GROUP` at a time as one Dask array of those chunks, its
    ``partial_fit`` calls run by Dask's synchronous scheduler here."""
    import dask

    pending: list[np.ndarray] = []

    def fit() -> None:
        inc.partial_fit(local(*pending))
        pending.clear()

    with dask.config.set(scheduler=sync()):
        for block in blocks:
            pending.append(block)
            if len(pending) == GROUP:
                fit()
        if pending:
            fit()


_WRITABLE: dict[str, type] = {}


def writable_minibatch_kmeans() -> type:
    """``sklearn.cluster.MiniBatchKMeans`` whose ``partial_fit`` first copies fitted arrays that
    arrive read-only: between two Dask tasks the model travels through Ray's object store, which
    hands numpy arrays back as read-only views, and scikit-learn updates its centres in place.
    The arithmetic is scikit-learn's, untouched."""
    if "cls" not in _WRITABLE:
        from sklearn.cluster import MiniBatchKMeans

        class WritableMiniBatchKMeans(MiniBatchKMeans):
            def partial_fit(self, X, y=None, sample_weight=None):
                for name, value in list(vars(self).items()):
                    if isinstance(value, np.ndarray) and not value.flags.writeable:
                        setattr(self, name, value.copy())
                return super().partial_fit(X, y, sample_weight)

        _WRITABLE["cls"] = WritableMiniBatchKMeans
    return _WRITABLE["cls"]


def _final_stats(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """One row: each centre's count of ``X``'s rows, then their inertia."""
    from distml.jobs.kmeans.model import assign

    labels, dist = assign(np.asarray(X, dtype=np.float64), centers)
    counts = np.bincount(labels, minlength=len(centers)).astype(np.float64)
    return np.append(counts, dist.sum())[None, :]
