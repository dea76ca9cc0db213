"""Kind ``pca``: principal components of data larger than memory (docs/out_of_core.md).

Two algorithms, picked by ``model.mode``:

* ``exact`` — one parallel pass: each partition's task streams its batches into (count, mean,
  scatter matrix); the partial states are merged pairwise (Chan et al.) by a tree of Ray tasks;
  the driver eigendecomposes the d×d covariance. The same figures as scikit-learn ``PCA`` on the
  rows in memory (its ``covariance_eigh`` solver, the signs of its ``svd_flip``).
* ``incremental`` — one Ray task feeds every batch, in data order and cut exactly as
  ``IncrementalPCA.fit`` cuts an array, to ``IncrementalPCA.partial_fit``: equal to it. For
  feature counts whose d×d state would not be small; sequential by nature.

``auto`` (the default) picks exact up to :data:`EXACT_MAX_FEATURES` features: a BLAS ``syrk``
per batch instead of an SVD, and parallel across partitions. ``scale: true`` standardises the
features first; in exact mode the scaling falls out of the same pass (the correlation matrix is
the scaled scatter matrix), in incremental mode it costs one extra parallel pass.

Outputs: ``tables/components.parquet`` (one row per component: explained variance, ratio, one
column per feature), ``tables/feature_stats.parquet`` (fitted mean and std per feature),
``model/pca.npz`` + ``model/model.json`` (arrays and JSON, loaded without pickle by
:func:`load_model`), and with ``transform: true`` the reduced data as ``transformed/*.parquet``,
one file per input partition, rows in input order.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from distml.errors import DataError
from distml.jobs import _dask_engine
from distml.jobs import _out_of_core as ooc
from distml.jobs.base import Job as BaseJob
from distml.jobs.base import JobOutput, RunContext
from distml.runtime import faults, tasks
from distml.spec.base import JobSpec, StrictModel

#: ``mode: auto`` uses the exact algorithm up to this many features (a 32 MiB scatter matrix)
EXACT_MAX_FEATURES = 2048
FORMAT_VERSION = 1


class PCAModelSpec(StrictModel):
    """The ``model`` section of a pca job."""

    n_components: int | float | None = Field(
        None,
        description="Components to keep: an integer, a fraction in (0, 1) of the variance "
        "to explain (exact mode), or null for all.",
    )
    mode: Literal["auto", "exact", "incremental"] = Field(
        "auto",
        description="exact (mergeable moments, parallel), incremental (IncrementalPCA, "
        "sequential), or auto: exact up to 2048 features.",
    )
    batch_size: int = Field(
        8192,
        ge=1,
        le=1 << 24,
        description="Rows per streamed batch; a "
        "task's memory is about 3 × batch_size × features × 8 bytes.",
    )
    whiten: bool = Field(False, description="Scale the transformed components to unit variance.")
    scale: bool = Field(
        False, description="Standardise features first (mean 0, std 1), computed out of core."
    )
    transform: bool = Field(
        False,
        description="Write the reduced data as transformed/*.parquet, "
        "one file per input partition.",
    )
    keep_columns: list[str] = Field(
        default_factory=list,
        description="Columns copied unchanged into the transformed output (e.g. an id).",
    )
    partition_rows: int | None = Field(
        None, ge=1, description="Rows per task (row groups are never split); default 1048576."
    )

    @field_validator("n_components")
    @classmethod
    def _n_components(cls, v):
        if (
            isinstance(v, bool)
            or (isinstance(v, float) and not 0 < v < 1)
            or (isinstance(v, int) and not isinstance(v, bool) and v < 1)
        ):
            raise ValueError(f"must be an integer >= 1 or a fraction in (0, 1); got {v!r}")
        return v


class Spec(JobSpec):
    """Principal component analysis of data larger than memory."""

    kind: Literal["pca"]
    engine: Literal["native", "dask"] = Field(
        "native", description="native (pyarrow batches in Ray tasks) or dask (dask-ml on Ray)."
    )
    model: PCAModelSpec = Field(default_factory=PCAModelSpec)

    @model_validator(mode="after")
    def _checks(self) -> "Spec":
        ooc.check_spec(self)
        if self.engine == "dask":
            _dask_engine.check_spec(self)
        m = self.model
        if m.mode == "incremental":
            if isinstance(m.n_components, float):
                raise ValueError(
                    "model.n_components as a variance fraction needs model.mode "
                    f"exact or auto; got {m.n_components} with mode incremental"
                )
            if m.n_components is not None and m.batch_size < m.n_components:
                raise ValueError(
                    f"model.batch_size must be >= model.n_components in incremental "
                    f"mode; got {m.batch_size} < {m.n_components}"
                )
        return self


@dataclass
class FittedPCA:
    """A fitted PCA (what ``model/pca.npz`` + ``model/model.json`` hold) and its transform."""

    features: list[str]
    mean: np.ndarray  # in the space PCA was fitted in (scaled when ``scaler``)
    components: np.ndarray  # (k, d)
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    noise_variance: float
    n_samples: int
    whiten: bool
    mode: str
    scaler: ooc.Scaler | None = None

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def transform(self, X: np.ndarray, copy: bool = True) -> np.ndarray:
        """Project rows (columns in ``features`` order) as scikit-learn's ``transform`` does;
        ``copy=False`` may overwrite a writeable float64 ``X``."""
        X = (
            self.scaler.apply(ooc.owned(X, copy))
            if self.scaler is not None
            else np.asarray(X, dtype=np.float64)
        )
        Z = X @ self.components.T
        Z -= self.mean @ self.components.T
        if self.whiten:
            Z /= np.maximum(np.sqrt(self.explained_variance), np.finfo(np.float64).eps)
        return Z

    def columns(self) -> list[str]:
        return [f"pca{i}" for i in range(self.n_components)]

    def to_files(self) -> dict[str, bytes]:
        arrays = {
            "mean": self.mean,
            "components": self.components,
            "explained_variance": self.explained_variance,
            "explained_variance_ratio": self.explained_variance_ratio,
            "singular_values": self.singular_values,
            "noise_variance": np.asarray(self.noise_variance),
        }
        if self.scaler is not None:
            arrays.update(scale_mean=self.scaler.mean, scale_std=self.scaler.scale)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        meta = {
            "kind": "pca",
            "format": FORMAT_VERSION,
            "arrays": "model/pca.npz",
            "features": self.features,
            "n_components": self.n_components,
            "whiten": self.whiten,
            "scale": self.scaler is not None,
            "mode": self.mode,
            "n_samples": self.n_samples,
            "output_columns": self.columns(),
        }
        return {
            "model/pca.npz": buf.getvalue(),
            "model/model.json": json.dumps(meta, indent=2).encode(),
        }


def load_model(run_dir: str | Path) -> FittedPCA:
    """Load ``model/`` of a finished pca run (no pickle: ``allow_pickle=False``).

    >>> m = load_model("runs/pca-blobs/RUN_ID")              # doctest: +SKIP
    >>> Z = m.transform(frame[m.features].to_numpy())        # doctest: +SKIP
    """
    d = Path(run_dir) / "model"
    meta = json.loads((d / "model.json").read_text())
    if meta.get("kind") != "pca":
        raise DataError(f"{str(d)!r} holds a {meta.get('kind')!r} model, not pca")
    with np.load(d / "pca.npz", allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    scaler = ooc.Scaler(a["scale_mean"], a["scale_std"]) if meta["scale"] else None
    return FittedPCA(
        meta["features"],
        a["mean"],
        a["components"],
        a["explained_variance"],
        a["explained_variance_ratio"],
        a["singular_values"],
        float(a["noise_variance"]),
        int(meta["n_samples"]),
        bool(meta["whiten"]),
        meta["mode"],
        scaler,
    )


def predict(run_dir: str | Path, frame) -> Any:
    """The reduced data of ``frame`` (a pandas DataFrame with the model's features)."""
    import pandas as pd

    model = load_model(run_dir)
    Z = model.transform(frame[model.features].to_numpy(dtype=np.float64), copy=False)
    return pd.DataFrame(Z, columns=model.columns(), index=frame.index)


# ------------------------------------------------------------------ the two algorithms


def n_components_for(n_components, ratio: np.ndarray, limit: int) -> int:
    """scikit-learn's rule: an int as is, a fraction → the fewest components whose cumulative
    ratio exceeds it, None → all."""
    if n_components is None:
        return limit
    if isinstance(n_components, float):
        return min(int(np.searchsorted(np.cumsum(ratio), n_components, side="right")) + 1, limit)
    if n_components > limit:
        raise DataError(
            f"model.n_components must be <= min(rows, features) = {limit}; got {n_components}"
        )
    return int(n_components)


def flip_signs(vt: np.ndarray) -> np.ndarray:
    """scikit-learn's ``svd_flip(u_based_decision=False)``: each row's largest |entry| > 0."""
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    return vt * signs[:, None]


def exact_pca(
    mom: ooc.Moments, n_components, *, scale: bool, whiten: bool, features: list[str]
) -> FittedPCA:
    """PCA from merged moments: eigendecomposition of the covariance (or correlation) matrix."""
    n, d = mom.n, len(mom.mean)
    if n < 2:
        raise DataError(f"kind pca needs at least 2 rows; the data have {n}")
    scatter, mean, scaler = mom.m2, mom.mean, None
    if scale:
        scaler = mom.scaler()
        scatter = scatter / np.outer(scaler.scale, scaler.scale)
        mean = np.zeros(d)  # standardised data have mean 0
    cov = scatter / (n - 1)
    evals, evecs = np.linalg.eigh((cov + cov.T) / 2)
    evals, evecs = np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]
    vt = flip_signs(np.ascontiguousarray(evecs.T))
    total = evals.sum()
    ratio = evals / total if total > 0 else np.zeros_like(evals)
    limit = min(n, d)
    k = n_components_for(n_components, ratio, limit)
    noise = float(evals[k:limit].mean()) if k < limit else 0.0
    return FittedPCA(
        features,
        mean,
        np.ascontiguousarray(vt[:k]),
        evals[:k].copy(),
        ratio[:k].copy(),
        np.sqrt(evals[:k] * (n - 1)),
        noise,
        n,
        whiten,
        "exact",
        scaler,
    )


def _moments_task(
    part: ooc.Partition, features: list[str], batch_size: int, full: bool, fault: dict | None
) -> ooc.Moments:
    probe = ooc.TaskProbe(part, "moments")
    mom = ooc.Moments.empty(len(features), full)
    for i, batch in enumerate(ooc.iter_batches(part, features, batch_size, reuse=True)):
        faults.crash(fault, "pca.moments", i, partition=part.index)
        mom = mom.add(batch.X)
    mom.meta = probe.meta(mom.n)
    return mom


def _incremental_task(
    plan: list[ooc.Partition],
    features: list[str],
    batch_size: int,
    n_components: int | None,
    whiten: bool,
    scaler: ooc.Scaler | None,
    threads: bool,
    fault: dict | None,
) -> tuple[FittedPCA, np.ndarray, list]:
    from sklearn.decomposition import IncrementalPCA

    probe = ooc.TaskProbe(plan[0], "incremental")

    def arrays():
        for part in plan:
            for i, batch in enumerate(
                ooc.iter_batches(part, features, batch_size, threads=threads)
            ):
                faults.crash(fault, "pca.incremental", i, partition=part.index)
                yield scaler.apply(batch.X) if scaler is not None else batch.X

    ipca = IncrementalPCA(n_components=n_components, batch_size=batch_size)
    rows = 0
    for X in ooc.rechunk(ooc.prefetch(arrays()), batch_size, n_components or 0):
        ipca.partial_fit(X)
        rows += len(X)
    if rows < 2:
        raise DataError(f"kind pca needs at least 2 rows; the data have {rows}")
    fitted = FittedPCA(
        features,
        ipca.mean_,
        ipca.components_,
        ipca.explained_variance_,
        ipca.explained_variance_ratio_,
        ipca.singular_values_,
        float(ipca.noise_variance_),
        int(ipca.n_samples_seen_),
        whiten,
        "incremental",
        scaler,
    )
    return fitted, np.sqrt(ipca.var_), probe.meta(rows)


def _transform_task(
    part: ooc.Partition,
    model: FittedPCA,
    batch_size: int,
    keep: list[str],
    out_dir: str,
    fault: dict | None,
) -> list:
    import pyarrow as pa

    probe = ooc.TaskProbe(part, "transform")
    rows = 0
    names = model.columns()
    with ooc.PartWriter(out_dir, part.name) as writer:
        for i, batch in enumerate(
            ooc.iter_batches(part, model.features, batch_size, keep, reuse=True)
        ):
            faults.crash(fault, "pca.transform", i, partition=part.index)
            Z = model.transform(batch.X, copy=False)
            table = pa.table({c: Z[:, j] for j, c in enumerate(names)})
            if batch.keep is not None:
                for c in reversed(batch.keep.column_names):
                    table = table.add_column(0, c, batch.keep.column(c))
            writer.write(table)
            rows += len(Z)
    return probe.meta(rows)


# ------------------------------------------------------------------ the job


class Job(BaseJob):
    """Out-of-core PCA: plan partitions, run the passes on Ray, hand back tables and the model."""

    spec: Spec
    needs_target = False

    def worker_modules(self) -> tuple[str, ...]:
        return ooc.worker_modules(self.spec, "distml.jobs.pca")

    def driver_modules(self) -> tuple[str, ...]:
        return _dask_engine.driver_modules(self.spec, "dask_ml.decomposition")

    @classmethod
    def load_predictor(cls, run_dir: Path, manifest: dict, allow_module: tuple[str, ...] = ()):
        from distml.jobs.predictors import array_predictor

        return array_predictor(
            Path(run_dir), "pca", load_model, lambda fitted: len(fitted.columns())
        )

    def object_store_bytes(self, data, resources: dict) -> int | None:
        if self.spec.engine != "dask":
            return None
        return _dask_engine.store_bytes(data, resources)

    def check_spec(self) -> None:
        if self.spec.engine == "dask":
            _dask_engine.check_installed("pca")

    def check_data(self):
        self.check_spec()
        info = ooc.numeric_features(self.spec, self.spec.model.keep_columns)
        d, m = len(info.features), self.spec.model
        if isinstance(m.n_components, int) and m.n_components > d:
            raise DataError(
                f"model.n_components must be <= the number of features ({d}); got {m.n_components}"
            )
        rows = info.source.rows
        if isinstance(m.n_components, int) and rows is not None and m.n_components > rows:
            raise DataError(
                f"model.n_components must be <= the number of rows ({rows}); got {m.n_components}"
            )
        mode, _ = self.mode(d)
        if mode == "incremental" and m.n_components is not None and m.batch_size < m.n_components:
            raise DataError(
                f"model.batch_size must be >= model.n_components for incremental PCA "
                f"(chosen for {d} features); got {m.batch_size} < {m.n_components}"
            )
        return info

    def mode(self, d: int) -> tuple[str, str]:
        """The algorithm that runs, and why."""
        m = self.spec.model
        if m.mode != "auto":
            return m.mode, "model.mode"
        if d <= EXACT_MAX_FEATURES:
            return "exact", (
                f"auto: {d} features <= {EXACT_MAX_FEATURES}; one parallel pass of "
                "mergeable moments is faster than IncrementalPCA"
            )
        if isinstance(m.n_components, float):
            return "exact", "auto: a variance fraction needs the whole spectrum"
        mib = d * d * 8 / 2**20
        return "incremental", (
            f"auto: {d} features > {EXACT_MAX_FEATURES}; the exact state would "
            f"be a {mib:.0f} MiB matrix per task"
        )

    def run(self, ctx: RunContext) -> JobOutput:
        if self.spec.engine == "dask":
            from distml.jobs import _dask_fits

            return _dask_fits.run_pca(self, ctx)
        m, feats = self.spec.model, ctx.data.features
        mode, reason = self.mode(len(feats))
        plan = ooc.plan_partitions(ctx.data.source, m.partition_rows)
        runner = tasks.Runner(self.spec.resources, ctx.log)
        fault = ooc.fault_from_env("pca")
        ctx.log.info(
            "pca (%s): %d partitions, %d features, batch_size %d",
            mode,
            len(plan),
            len(feats),
            m.batch_size,
        )
        timings: dict[str, float] = {}
        meta: list = []
        t0 = time.perf_counter()
        fit = self._fit_exact if mode == "exact" else self._fit_incremental
        model, raw_mean, raw_std = fit(plan, feats, runner, fault, meta)
        timings["fit_s"] = time.perf_counter() - t0
        out = JobOutput()
        if m.transform:
            t1 = time.perf_counter()
            from distml import progress

            progress.current().stage("write", "transformed data")
            out_dir = str(ctx.run_dir.file("transformed"))
            for part_meta in runner.get(
                runner.map(
                    _transform_task,
                    plan,
                    runner.put(model),
                    m.batch_size,
                    m.keep_columns,
                    out_dir,
                    fault,
                )
            ):
                meta += part_meta
            ooc.discard_partials(out_dir)
            timings["transform_s"] = time.perf_counter() - t1
            out.info["transformed"] = {
                "dir": "transformed",
                "format": "parquet",
                "columns": m.keep_columns + model.columns(),
                "files": [f"transformed/{p.name}.parquet" for p in plan],
            }
        self._outputs(out, model, feats, raw_mean, raw_std)
        out.info["engine"] = "native"
        out.info["execution"] = {
            "path": f"out_of_core_{mode}",
            "mode": mode,
            "reason": reason,
            "partitions": len(plan),
            "tasks": runner.tasks,
            "batch_size": m.batch_size,
            "passes": 1 + (mode == "incremental" and m.scale) + bool(m.transform),
            "stages": ooc.stage_info(meta),
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            **ooc.resume_record(ctx),
        }
        out.info["memory"] = ooc.memory_info(meta, m.batch_size, len(feats))
        return out

    def _fit_exact(self, plan, feats, runner, fault, meta):
        """One parallel pass of full moments, merged; eigendecomposition on the driver."""
        m = self.spec.model
        mom = runner.reduce(runner.map(_moments_task, plan, feats, m.batch_size, True, fault))
        meta += mom.meta
        model = exact_pca(mom, m.n_components, scale=m.scale, whiten=m.whiten, features=feats)
        return model, mom.mean, np.sqrt(mom.variance)

    def _fit_incremental(self, plan, feats, runner, fault, meta):
        """(With ``scale``, a parallel pass of per-feature moments, then) one sequential task."""
        m, scaler = self.spec.model, None
        if m.scale:
            mom = runner.reduce(runner.map(_moments_task, plan, feats, m.batch_size, False, fault))
            meta += mom.meta
            scaler = mom.scaler()
        ref = runner.remote(_incremental_task).remote(
            plan,
            feats,
            m.batch_size,
            m.n_components,
            m.whiten,
            scaler,
            self.spec.resources.cpus_per_worker > 1,
            fault,
        )
        runner.tasks += 1
        model, std, task_meta = runner.get(ref)
        meta += task_meta
        if scaler is not None:
            return model, mom.mean, np.sqrt(mom.variance)
        return model, model.mean, std

    def _outputs(
        self, out: JobOutput, model: FittedPCA, feats: list[str], raw_mean, raw_std
    ) -> None:
        import pandas as pd

        k = model.n_components
        out.metrics.update(
            n_components=k,
            mode=model.mode,
            explained_variance_ratio=[float(v) for v in model.explained_variance_ratio],
            explained_variance=[float(v) for v in model.explained_variance],
            explained_variance_ratio_sum=float(np.sum(model.explained_variance_ratio)),
            singular_values=[float(v) for v in model.singular_values],
            noise_variance=model.noise_variance,
            n_rows=model.n_samples,
            n_features=len(feats),
            scale=model.scaler is not None,
            whiten=model.whiten,
        )
        comp = pd.DataFrame(model.components, columns=feats)
        comp.insert(0, "explained_variance_ratio", model.explained_variance_ratio)
        comp.insert(0, "explained_variance", model.explained_variance)
        comp.insert(0, "component", np.arange(k))
        out.tables["components"] = comp
        out.tables["feature_stats"] = pd.DataFrame(
            {"feature": feats, "mean": raw_mean, "std": raw_std}
        )
        out.files.update(model.to_files())
