"""Kind ``kmeans``: mini-batch k-means over data larger than memory (docs/out_of_core.md).

Passes over the data, each one Ray task per partition (distml.jobs._out_of_core):

1. **sample** — a uniform random sample of ``(n_init + 1) × init_size`` rows. Where row counts
   are known (parquet, generated data) the driver draws the row numbers and a task decodes only
   the rows drawn in its partition; else every row draws a random key (mergeable). The pass
   also folds every row into per-feature moments when it decodes them all anyway (kept
   batches, unknown row counts) or needs them (``scale: true``); otherwise the first mini-batch
   pass measures the rows' spread for the tolerance. ``n_init`` k-means++ initialisations, each
   on its own slice of the sample, are scored by inertia on a held slice; the best starts
   (scikit-learn ``MiniBatchKMeans`` semantics).
2. **mini-batch passes** (at most ``max_passes``) — every task starts from the current centres
   and their counts and applies scikit-learn's mini-batch update to its own batches in order
   (each centre is the running mean of the rows ever assigned to it); the tasks' per-cluster
   sums and counts are merged into that same running mean. With one partition a pass is exactly
   ``MiniBatchKMeans.partial_fit`` over the batches. Stops early when the centres move less than
   ``tol`` × the mean feature variance (squared shift summed over centres, as ``KMeans``).
3. **refine passes** (``refine_passes``, default 0) — optional full-batch Lloyd iterations
   (k-means‖-style refinement), each one parallel pass of per-cluster sums.
4. **final** — assignments, cluster sizes and the inertia over the full data (with
   ``transform: true`` the assignments are written as ``transformed/*.parquet``).

Outputs: ``metrics.json`` (``inertia``, ``passes``, ``n_clusters``, ``cluster_sizes``…),
``tables/centers.parquet`` (centres in the input's units, with sizes),
``tables/pass_history.parquet``, ``model/kmeans.npz`` + ``model/model.json`` (no pickle).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from distml import progress
from distml.errors import DataError, JobFailed
from distml.jobs import _dask_engine
from distml.jobs import _out_of_core as ooc
from distml.jobs.base import Job as BaseJob
from distml.jobs.base import JobOutput, RunContext
from distml.jobs.kmeans.model import (  # noqa: F401
    FORMAT_VERSION,
    FittedKMeans,
    KMeansModelSpec,
    PassStats,
    SamplePass,
    Spec,
    Spread,
    assign,
    assign_rows,
    cluster_sums,
    kmeans_plusplus,
    load_model,
    minibatch_step,
    predict,
)
from distml.runtime import faults, tasks
from distml.runtime.tasks import merge_all

# ------------------------------------------------------------------ tasks (one per partition)


def _scaled(batch: ooc.Batch, scaler: ooc.Scaler | None) -> np.ndarray:
    if scaler is None:
        return batch.X
    return scaler.apply(batch.X if batch.X.flags.writeable else batch.X.copy())


def _sample_task(part, features, batch_size, m, threshold, seed, keep, positions, moments, fault):
    """The sample pass over one partition, a generator: with ``keep``, every decoded batch
    (each its own object, for the later passes), then the :class:`SamplePass`.

    ``positions``: the sample's row numbers, drawn by the driver (``ooc.draw``), or None when
    row counts are unknown (every row then draws a random key). ``moments``: fold every row
    into per-feature moments. Without ``keep`` and ``moments`` only the drawn rows are decoded."""
    probe = ooc.TaskProbe(part, "sample")
    d = len(features)
    mom = ooc.Moments.empty(d, full=False)
    if positions is None:
        rng = np.random.default_rng([seed, part.index])
        smp, rows = ooc.Sample.empty(m, d, threshold), 0
        for i, batch in enumerate(ooc.iter_batches(part, features, batch_size, reuse=True)):
            faults.crash(fault, "kmeans.sample", i, partition=part.index)
            smp = smp.add(batch.X, rng.random(len(batch.X)))  # copies the rows it keeps
            rows += len(batch.X)
            if keep:  # serialized by Ray before the generator resumes (the batch is reused)
                yield np.asfortranarray(batch.X)
            mom = mom.add(batch.X)  # centres the batch in place
        yield SamplePass(mom, smp, probe.meta(rows), rows)
        return
    local, ranks = ooc.picks(positions, part.offset, part.rows)
    got, rows = [], 0
    if keep or moments:
        for i, batch in enumerate(ooc.iter_batches(part, features, batch_size, reuse=True)):
            faults.crash(fault, "kmeans.sample", i, partition=part.index)
            lo, hi = np.searchsorted(local, [rows, rows + len(batch.X)])
            got.append(batch.X[local[lo:hi] - rows])  # a copy
            rows += len(batch.X)
            if keep:
                yield np.asfortranarray(batch.X)
            if moments:
                mom = mom.add(batch.X)
    else:
        for i, (n, picked) in enumerate(
            ooc.iter_picked(part, features, max(batch_size, ooc.PICK_ROWS), local)
        ):
            faults.crash(fault, "kmeans.sample", i, partition=part.index)
            rows += n
            got.append(picked)
    if rows != part.rows:
        raise DataError(
            f"{part.where()} has {rows} rows, not the {part.rows} planned: the data changed "
            "while the job ran"
        )
    yield SamplePass(mom, ooc.Sample.picked(m, ranks, got, d), probe.meta(rows), rows)


def _minibatch_task(src, features, batch_size, centers, counts, scaler, spread, fault) -> PassStats:
    """One mini-batch pass over a partition; ``spread``: also the rows' :class:`Spread` (for the
    tolerance, when the sample pass did not decode every row)."""
    part, batches = ooc.batches_of(src, features, batch_size)
    probe = ooc.TaskProbe(part, "minibatch")
    C, cnt = centers.copy(), counts.copy()
    st = PassStats(np.zeros_like(C), np.zeros(len(C)), 0.0, 0)
    seen = Spread(0, np.zeros(C.shape[1]), 0.0)
    for i, batch in enumerate(batches):
        faults.crash(fault, "kmeans.minibatch", i, partition=part.index)
        X = _scaled(batch, scaler)
        sums, n, inertia, batch_spread = minibatch_step(X, C, cnt)
        st = PassStats(st.sums + sums, st.counts + n, st.inertia + inertia, st.rows + len(X))
        if spread:
            seen = seen.merge(batch_spread)
    st.meta, st.spread = probe.meta(st.rows), seen if spread else None
    return st


def _lloyd_task(src, features, batch_size, centers, scaler, fault) -> PassStats:
    part, batches = ooc.batches_of(src, features, batch_size)
    probe = ooc.TaskProbe(part, "lloyd")
    st = PassStats(np.zeros_like(centers), np.zeros(len(centers)), 0.0, 0)
    for i, batch in enumerate(batches):
        faults.crash(fault, "kmeans.lloyd", i, partition=part.index)
        X = _scaled(batch, scaler)
        labels, dist, _, sums = assign_rows(X, centers, sums=True)
        n = np.bincount(labels, minlength=len(centers)).astype(np.float64)
        st = PassStats(
            st.sums + sums, st.counts + n, st.inertia + float(dist.sum()), st.rows + len(X)
        )
    st.meta = probe.meta(st.rows)
    return st


def _final_task(src, features, batch_size, centers, scaler, keep, out_dir, fault) -> PassStats:
    """Sizes and inertia over the full data; with ``out_dir``, writes the assignments (read
    again with the ``keep`` columns)."""
    import contextlib

    import pyarrow as pa

    part, batches = ooc.batches_of(src, features, batch_size, keep if out_dir else None)
    probe = ooc.TaskProbe(part, "final")
    k = len(centers)
    counts, inertia, rows = np.zeros(k), 0.0, 0
    writer = ooc.PartWriter(out_dir, part.name) if out_dir else contextlib.nullcontext()
    with writer:
        for i, batch in enumerate(batches):
            faults.crash(fault, "kmeans.final", i, partition=part.index)
            labels, dist = assign(_scaled(batch, scaler), centers)
            counts += np.bincount(labels, minlength=k)
            inertia += float(dist.sum())
            rows += len(labels)
            if out_dir:
                table = pa.table({"cluster": labels.astype(np.int32)})
                if batch.keep is not None:
                    for c in reversed(batch.keep.column_names):
                        table = table.add_column(0, c, batch.keep.column(c))
                writer.write(table)
    return PassStats(np.zeros((0, 0)), counts, inertia, rows, probe.meta(rows))


# ------------------------------------------------------------------ initialisation


def choose_init(rows: np.ndarray, k: int, n_init: int, init_size: int, seed: int):
    """k-means++ on ``n_init`` slices of the sample (in its random order); the best by inertia on the
    held slice (scikit-learn's ``kmeans_plusplus``, seeded per init, in numpy:
    :func:`~distml.jobs.kmeans.model.kmeans_plusplus`). Returns (centres, inertia of each init
    on the held slice)."""
    if len(rows) >= (n_init + 1) * init_size:
        held = rows[:init_size]
        pools = [rows[(i + 1) * init_size : (i + 2) * init_size] for i in range(n_init)]
    else:  # a small data set: every init draws from all of it, scored on all of it
        held, pools = rows, [rows] * n_init
    best, scores = None, []
    for i, pool in enumerate(pools):
        state = np.random.RandomState(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        centers = kmeans_plusplus(pool, k, state)
        score = float(assign(held, centers)[1].sum())
        scores.append(score)
        if best is None or score < scores[best[0]]:
            best = (i, centers)
    return best[1].copy(), scores


def reseed_empty(centers: np.ndarray, counts: np.ndarray, held: np.ndarray) -> list[int]:
    """Move centres that no row ever reached to the held rows farthest from every centre."""
    empty = np.flatnonzero(counts == 0)
    if len(empty) == 0 or len(held) == 0:
        return []
    dist = assign(held, centers)[1]
    for j, row in zip(empty, np.argsort(-dist, kind="stable")):
        centers[j] = held[row]
    return [int(j) for j in empty]


# ------------------------------------------------------------------ the job


class _Fit:
    """One k-means run in progress: the plan, the runner, and what the passes recorded."""

    def __init__(self, spec: Spec, ctx: RunContext):
        self.m, self.feats = spec.model, ctx.data.features
        self.plan = ooc.plan_partitions(ctx.data.source, self.m.partition_rows)
        self.runner = tasks.Runner(spec.resources, ctx.log)
        self.fault = ooc.fault_from_env("kmeans")
        self.meta: list = []
        self.history: list[dict] = []
        self.timings: dict[str, float] = {}
        self.decoded: list | None = None  # refs of the sample pass's kept batches (ooc.Decoded)
        self.sampling: dict = {}

    def over_data(self, stage: str, task, *args, reread: bool = False, first: bool = False):
        """One parallel pass (a task per partition), merged; timed as ``stage``. Its tasks get
        the kept batches of the sample pass when there are (unless ``reread``), else the
        partitions. ``first``: ``task`` is the sample pass's generator, whose batches (when it
        yields them) are kept for the later passes."""
        t0 = time.perf_counter()
        progress.current().stage(
            "train",
            f"k-means {stage.removesuffix('_s')} pass; {len(self.history)} centre updates so far",
        )
        if first:  # a generator: its batches (when kept), then its state
            yields = self.runner.map_yields(
                task, self.plan, self.feats, self.m.batch_size, *args, self.fault
            )
            refs = [y[-1] for y in yields]
            if any(len(y) > 1 for y in yields):
                self.decoded = [ooc.Decoded(p, y[:-1]) for p, y in zip(self.plan, yields)]
        else:
            inputs = self.plan if reread or self.decoded is None else self.decoded
            refs = self.runner.map(task, inputs, self.feats, self.m.batch_size, *args, self.fault)
        # the sample pass's states merge here, at once (the kept rows gathered once, in key
        # order); the other passes' small states through the runner's fixed tree of tasks
        merged = merge_all(*self.runner.get(refs)) if first else self.runner.reduce(refs)
        self.meta += merged.meta
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0
        return merged

    def record(
        self, kind: str, old: np.ndarray, new: np.ndarray, st: PassStats, reseeded: int = 0
    ) -> float:
        shift = float(((new - old) ** 2).sum())
        self.history.append(
            {
                "pass": len(self.history) + 1,
                "kind": kind,
                "center_shift": shift,
                "inertia_while_assigning": st.inertia,
                "rows": st.rows,
                "reseeded": reseeded,
            }
        )
        return shift


class Job(BaseJob):
    """Out-of-core mini-batch k-means on Ray."""

    spec: Spec
    needs_target = False

    def worker_modules(self) -> tuple[str, ...]:
        return ooc.worker_modules(self.spec, "distml.jobs.kmeans")

    def driver_modules(self) -> tuple[str, ...]:
        return _dask_engine.driver_modules(self.spec, "dask_ml.wrappers", "sklearn.cluster")

    @classmethod
    def load_predictor(cls, run_dir: Path, manifest: dict, allow_module: tuple[str, ...] = ()):
        from distml.jobs.predictors import array_predictor

        return array_predictor(Path(run_dir), "kmeans", load_model, lambda fitted: 1)

    def object_store_bytes(self, data, resources: dict) -> int | None:
        if self.spec.engine != "dask":
            return None
        return _dask_engine.store_bytes(data, resources)

    def check_spec(self) -> None:
        if self.spec.engine == "dask":
            _dask_engine.check_installed("kmeans")

    def check_data(self):
        self.check_spec()
        info = ooc.numeric_features(self.spec, self.spec.model.keep_columns)
        rows, k = info.source.rows, self.spec.model.n_clusters
        if rows is not None and rows < k:
            raise DataError(f"model.n_clusters must be <= the number of rows ({rows}); got {k}")
        return info

    def run(self, ctx: RunContext) -> JobOutput:
        if self.spec.engine == "dask":
            from distml.jobs import _dask_fits

            return _dask_fits.run_kmeans(self, ctx)
        m, fit = self.spec.model, _Fit(self.spec, ctx)
        ctx.log.info(
            "kmeans: %d partitions, %d features, k=%d, batch_size %d",
            len(fit.plan),
            len(fit.feats),
            m.n_clusters,
            m.batch_size,
        )
        passes_ckpt = _PassCheckpoints(self.spec, ctx, fit)
        st0 = passes_ckpt.restore()
        if st0 is None:
            scaler, centers, held, tol, init_scores = self._initialise(fit, ctx)
            st0 = {
                "scaler": scaler,
                "centers": centers,
                "held": held,
                "tol": tol,
                "init_scores": init_scores,
                "counts": np.zeros(m.n_clusters),
                "passes": 0,
                "refines": 0,
                "converged": False,
                "phase": "minibatch",
            }
            passes_ckpt.save(st0)  # the sample pass and the initialisation are done
        scaler, centers, held, tol, init_scores = (
            st0[k] for k in ("scaler", "centers", "held", "tol", "init_scores")
        )
        counts, converged, passes = st0["counts"], st0["converged"], st0["passes"]
        refines, phase = st0["refines"], st0["phase"]

        def passed(next_phase: str) -> None:  # after every pass: a checkpoint when due
            passes_ckpt.save(
                dict(
                    st0,
                    tol=tol,
                    centers=centers,
                    counts=counts,
                    passes=passes,
                    refines=refines,
                    converged=converged,
                    phase=next_phase,
                )
            )

        scaler_ref = fit.runner.put(scaler)
        # the loop variables are the state: the checkpoint closure and the outputs read them
        for passes in range(passes + 1, m.max_passes + 1) if phase == "minibatch" else ():  # noqa: B007,B020
            st = fit.over_data(
                "minibatch_s",
                _minibatch_task,
                fit.runner.put(centers),
                fit.runner.put(counts),
                scaler_ref,
                tol is None,  # the rows' spread, for the tolerance
            )
            if tol is None:
                tol = m.tol * st.spread.mean_variance
            total = counts + st.counts
            new, hit = centers.copy(), total > 0
            new[hit] = (centers[hit] * counts[hit, None] + st.sums[hit]) / total[hit, None]
            reseeded = reseed_empty(new, total, held)
            shift = fit.record("minibatch", centers, new, st, len(reseeded))
            centers, counts = new, total
            converged = shift <= tol and not reseeded
            passed("refine" if converged else "minibatch")
            if converged:
                break
        for refines in range(refines + 1, m.refine_passes + 1) if phase != "final" else ():  # noqa: B007,B020
            st = fit.over_data("refine_s", _lloyd_task, fit.runner.put(centers), scaler_ref)
            new, hit = centers.copy(), st.counts > 0
            new[hit] = st.sums[hit] / st.counts[hit, None]
            shift = fit.record("lloyd", centers, new, st)
            centers = new
            passed("final" if shift <= tol else "refine")
            if shift <= tol:
                break
        out_dir = str(ctx.run_dir.file("transformed")) if m.transform else None
        final = fit.over_data(
            "final_s",
            _final_task,
            fit.runner.put(centers),
            scaler_ref,
            m.keep_columns,
            out_dir,
            reread=out_dir is not None,
        )
        kept_decoded, fit.decoded = fit.decoded is not None, None  # the store's copy goes
        if out_dir:
            ooc.discard_partials(out_dir)
        model = FittedKMeans(fit.feats, centers, final.counts.astype(np.int64), scaler)
        out = self._outputs(model, final, fit.history, init_scores, converged, passes, refines)
        if out_dir:
            out.info["transformed"] = {
                "dir": "transformed",
                "format": "parquet",
                "columns": m.keep_columns + ["cluster"],
                "files": [f"transformed/{p.name}.parquet" for p in fit.plan],
            }
        out.info["engine"] = "native"
        out.info["execution"] = {
            "path": "out_of_core_minibatch",
            "partitions": len(fit.plan),
            "tasks": fit.runner.tasks,
            "batch_size": m.batch_size,
            "init_size": self.init_size(),
            "sample": fit.sampling,  # how the sample was drawn, which rows the pass decoded
            "data_passes": 2 + passes + refines,
            "kept_decoded": kept_decoded,  # the later passes read the sample pass's batches
            "stages": ooc.stage_info(fit.meta),
            "timings_s": {k: round(v, 4) for k, v in fit.timings.items()},
            **passes_ckpt.ckpt.record(),
        }
        passes_ckpt.ckpt.discard()  # the result is in hand; _SUCCESS follows its writing
        out.info["memory"] = ooc.memory_info(fit.meta, m.batch_size, len(fit.feats) + m.n_clusters)
        return out

    def init_size(self) -> int:
        m = self.spec.model
        return m.init_size or max(3 * m.batch_size, 3 * m.n_clusters)

    def _initialise(self, fit: _Fit, ctx: RunContext):
        """The sample pass, then the best of ``n_init`` k-means++ starts on the sample."""
        m, init_size = self.spec.model, self.init_size()
        size = (m.n_init + 1) * init_size
        keep = m.keep_decoded
        if keep is None:
            keep = ooc.decoded_fits(ctx.data.source.rows, len(fit.feats), ctx.cluster.resources)
        # row counts and offsets known (parquet, generated data): the sample's rows are drawn
        # here, and unless the pass decodes every row anyway (kept batches, the scaler's
        # moments) its tasks decode only those; the first mini-batch pass then measures the
        # rows' spread for the tolerance
        starts = np.cumsum([0] + [p.rows or 0 for p in fit.plan])
        known = all(p.rows is not None and p.offset == at for p, at in zip(fit.plan, starts))
        positions = ooc.draw(int(starts[-1]), size, m.seed) if known else None
        moments = bool(m.scale or keep or not known)
        fit.sampling = {
            "drawn": "by position" if known else "by random key",
            "decoded": "every row" if moments else "the rows drawn",
        }
        first = fit.over_data(
            "sample_s",
            _sample_task,
            size,
            ooc.Sample.threshold_for(size, ctx.data.source.rows),
            m.seed,
            keep,
            None if positions is None else fit.runner.put(positions),
            moments,
            first=True,
        )
        if first.rows < m.n_clusters:
            raise DataError(
                f"model.n_clusters must be <= the number of rows ({first.rows}); got {m.n_clusters}"
            )
        if len(first.sample.keys) < min(size, first.rows):
            ctx.log.warning(
                "the random sample has %d rows, fewer than the %d asked",
                len(first.sample.keys),
                min(size, first.rows),
            )
        t0 = time.perf_counter()
        mom = first.moments
        scaler = mom.scaler() if m.scale else None
        sample = first.sample.sorted_rows()
        if scaler is not None:
            sample = scaler.apply(sample)
        tol = None  # measured by the first mini-batch pass
        if moments:
            variance = mom.variance / (scaler.scale**2 if scaler is not None else 1.0)
            tol = m.tol * float(np.mean(variance))
        centers, scores = choose_init(sample, m.n_clusters, m.n_init, init_size, m.seed)
        fit.timings["init_s"] = time.perf_counter() - t0
        return scaler, centers, sample[:init_size], tol, scores

    def _outputs(self, model, final, history, init_scores, converged, passes, refines):
        import pandas as pd

        feats, k = model.features, len(model.centers)
        out = JobOutput()
        out.metrics.update(
            inertia=final.inertia,
            mean_inertia=final.inertia / max(final.rows, 1),
            passes=passes,
            refine_passes=refines,
            converged=converged,
            n_clusters=k,
            n_rows=final.rows,
            n_features=len(feats),
            cluster_sizes=[int(c) for c in final.counts],
            init_inertia=min(init_scores),
            init_inertias=init_scores,
            scale=model.scaler is not None,
        )
        centers = pd.DataFrame(model.centers_in_input_units(), columns=feats)
        centers.insert(0, "size", model.sizes)
        centers.insert(0, "cluster", np.arange(k))
        out.tables["centers"] = centers
        out.tables["pass_history"] = pd.DataFrame(history)
        out.files.update(
            model.to_files(
                {
                    "inertia": final.inertia,
                    "passes": passes,
                    "refine_passes": refines,
                    "converged": converged,
                    "n_samples": final.rows,
                }
            )
        )
        return out


class _PassCheckpoints:
    """The k-means state after the sample pass and after every later pass (centres, counts,
    the scaler, the held sample, the pass history) under ``checkpoints/passes/``
    (:mod:`distml.jobs._resume`): ``--resume`` continues with the next pass."""

    ARRAYS = ("centers", "counts", "held")

    def __init__(self, spec: Spec, ctx: RunContext, fit: _Fit):
        from distml.jobs import _resume

        key = _resume.fingerprint(spec.to_dict(), ctx.data.fingerprint())
        self.ckpt = _resume.Checkpoints.for_run(ctx, "passes", key)
        self.fit = fit
        self.fault = faults.from_env("kmeans.pass")  # tests: the driver stops after pass K, once

    def save(self, st: dict) -> None:
        done = len(self.fit.history)
        crash = faults.once(self.fault, "kmeans.pass", done)
        if self.ckpt.due(final=crash):
            arrays = {k: st[k] for k in self.ARRAYS}
            if st["scaler"] is not None:
                arrays.update(scaler_mean=st["scaler"].mean, scaler_scale=st["scaler"].scale)
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            self.ckpt.save(
                {
                    **{k: v for k, v in st.items() if k not in self.ARRAYS + ("scaler",)},
                    "history": self.fit.history,
                    "meta": self.fit.meta,
                    "timings": self.fit.timings,
                },
                {"state.npz": buf.getvalue()},
            )
        if crash:
            raise JobFailed(f"fault injected after k-means pass {done} (kmeans.pass)")

    def restore(self) -> dict | None:
        found = self.ckpt.load()
        if found is None:
            return None
        state, files = found
        with np.load(io.BytesIO(files["state.npz"]), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        self.fit.history[:] = state.pop("history")
        self.fit.meta[:] = state.pop("meta")
        self.fit.timings.update(state.pop("timings"))
        scaler = (
            ooc.Scaler(arrays.pop("scaler_mean"), arrays.pop("scaler_scale"))
            if "scaler_mean" in arrays
            else None
        )
        self.ckpt.resumed_from = {"passes": len(self.fit.history), "phase": state["phase"]}
        return {**state, **arrays, "scaler": scaler}
