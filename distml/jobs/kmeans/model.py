"""The k-means kind's spec, its fitted model (centres, sizes, scaler) and the numerical kernels
the passes share (assignment, sums, the mini-batch step)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from distml.errors import DataError
from distml.jobs import _dask_engine
from distml.jobs import _out_of_core as ooc
from distml.spec.base import JobSpec, StrictModel

FORMAT_VERSION = 1


class KMeansModelSpec(StrictModel):
    """The ``model`` section of a kmeans job."""

    n_clusters: int = Field(8, ge=1, le=100_000, description="Number of clusters.")
    batch_size: int = Field(
        8192,
        ge=1,
        le=1 << 24,
        description="Rows per mini-batch; a task's "
        "memory is about 3 × batch_size × (features + n_clusters) × 8 bytes.",
    )
    n_init: int = Field(
        3,
        ge=1,
        le=1000,
        description="k-means++ initialisations; the best by inertia on a held sample is kept.",
    )
    max_passes: int = Field(
        10, ge=1, le=100_000, description="Mini-batch passes over the data at most."
    )
    tol: float = Field(
        1e-4,
        ge=0,
        description="Stop when the squared centre shift of a pass, "
        "summed over centres, is <= tol × the mean feature variance.",
    )
    init_size: int | None = Field(
        None,
        ge=1,
        description="Sample rows per initialisation (and "
        "held for scoring); default 3 × batch_size, >= 3 × n_clusters.",
    )
    refine_passes: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Full-batch Lloyd passes after the mini-batch passes (stop early at tol).",
    )
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="Seed of the sample and the initialisations."
    )
    scale: bool = Field(
        False, description="Standardise features first (mean 0, std 1), computed out of core."
    )
    transform: bool = Field(
        False,
        description="Write the cluster of every row as "
        "transformed/*.parquet, one file per partition.",
    )
    keep_columns: list[str] = Field(
        default_factory=list,
        description="Columns copied unchanged into the transformed output (e.g. an id).",
    )
    partition_rows: int | None = Field(
        None, ge=1, description="Rows per task (row groups are never split); default 1048576."
    )
    keep_decoded: bool | None = Field(
        None,
        description="Keep the batches the sample pass decoded in Ray's object store for the "
        "later passes (no second read or decode); default: when they fit half of it "
        "(rows × features × 8 bytes). Ray spills them to disk when memory runs short.",
    )


class Spec(JobSpec):
    """Mini-batch k-means over data larger than memory."""

    kind: Literal["kmeans"]
    engine: Literal["native", "dask"] = Field(
        "native", description="native (pyarrow batches in Ray tasks) or dask (dask-ml on Ray)."
    )
    model: KMeansModelSpec = Field(default_factory=KMeansModelSpec)

    @model_validator(mode="after")
    def _checks(self) -> "Spec":
        ooc.check_spec(self)
        m = self.model
        if m.init_size is not None and m.init_size < m.n_clusters:
            raise ValueError(
                f"model.init_size must be >= model.n_clusters ({m.n_clusters}): each k-means++ "
                f"initialisation picks its centres among init_size sampled rows; got {m.init_size}"
            )
        if self.engine == "dask":
            _dask_engine.check_spec(self)
        return self


@dataclass
class FittedKMeans:
    """Centres (in the fitted, possibly standardised, space) and how to assign rows to them."""

    features: list[str]
    centers: np.ndarray  # (k, d)
    sizes: np.ndarray  # rows per cluster in the final pass
    scaler: ooc.Scaler | None = None

    def predict(self, X: np.ndarray, copy: bool = True) -> np.ndarray:
        """Cluster of each row (columns in ``features`` order); ``copy=False`` may overwrite a
        writeable float64 ``X``."""
        X = (
            self.scaler.apply(ooc.owned(X, copy))
            if self.scaler is not None
            else np.asarray(X, dtype=np.float64)
        )
        return assign(X, self.centers)[0]

    def centers_in_input_units(self) -> np.ndarray:
        if self.scaler is None:
            return self.centers.copy()
        return self.centers * self.scaler.scale + self.scaler.mean

    def to_files(self, info: dict) -> dict[str, bytes]:
        arrays = {"centers": self.centers, "sizes": self.sizes}
        if self.scaler is not None:
            arrays.update(scale_mean=self.scaler.mean, scale_std=self.scaler.scale)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        meta = {
            "kind": "kmeans",
            "format": FORMAT_VERSION,
            "arrays": "model/kmeans.npz",
            "features": self.features,
            "n_clusters": int(len(self.centers)),
            "scale": self.scaler is not None,
            "output_columns": ["cluster"],
            **info,
        }
        return {
            "model/kmeans.npz": buf.getvalue(),
            "model/model.json": json.dumps(meta, indent=2).encode(),
        }


def load_model(run_dir: str | Path) -> FittedKMeans:
    """Load ``model/`` of a finished kmeans run (``allow_pickle=False``)."""
    d = Path(run_dir) / "model"
    meta = json.loads((d / "model.json").read_text())
    if meta.get("kind") != "kmeans":
        raise DataError(f"{str(d)!r} holds a {meta.get('kind')!r} model, not kmeans")
    with np.load(d / "kmeans.npz", allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    scaler = ooc.Scaler(a["scale_mean"], a["scale_std"]) if meta["scale"] else None
    return FittedKMeans(meta["features"], a["centers"], a["sizes"], scaler)


def predict(run_dir: str | Path, frame) -> Any:
    """The cluster of every row of ``frame`` (a pandas DataFrame with the model's features)."""
    import pandas as pd

    model = load_model(run_dir)
    labels = model.predict(frame[model.features].to_numpy(dtype=np.float64))
    return pd.DataFrame({"cluster": labels.astype(np.int32)}, index=frame.index)


# ------------------------------------------------------------------ the numerical kernels


#: the assignment works through a batch this many bytes of rows at a time (1,024 rows of 64
#: float64 features), so a block stays in a core's L2 cache from the distances' product to the
#: per-cluster sums'. Measured on 8,192 × 64, k = 12, one thread: the mini-batch step's arithmetic
#: 1.16–1.27 ms in 512–1,024-row blocks, 1.60 ms over the whole batch at once, 2.62 ms as before
#: (the whole batch, one weighted bincount per feature)
BLOCK_BYTES = 512 * 1024


def block_rows(d: int) -> int:
    """Rows per block of :func:`assign_rows` for ``d`` features (at least 256)."""
    return max(256, BLOCK_BYTES // (8 * max(d, 1)))


def one_hot_sums(k: int, d: int) -> bool:
    """Whether the per-cluster sums are a one-hot matrix product (as many flops as the
    distances' product) rather than one weighted bincount per feature (a cost that does not grow
    with k): measured on 8,192 rows, the product is faster while ``4 k <= d`` (d = 64: k = 12
    1.16 against 1.73 ms a batch, k = 32 2.91 against 2.35 ms; d = 8: k = 2 0.23 against 0.40 ms,
    k = 12 1.24 against 0.99 ms)."""
    return 4 * k <= d


def assign_rows(X: np.ndarray, centers: np.ndarray, sums: bool = False):
    """Nearest centre of each row, the squared distance to it, the rows' squared norms and,
    with ``sums``, the per-cluster sums of the rows (else None): block by block of
    :func:`block_rows` rows. Each row's arithmetic is the same whatever the block (its
    distances are one row of a matrix product), so the labels and distances do not depend on
    the blocking."""
    n, d = X.shape
    k = len(centers)
    labels, dist, norms = np.empty(n, dtype=np.intp), np.empty(n), np.empty(n)
    csq = np.einsum("ij,ij->i", centers, centers)
    one_hot = sums and one_hot_sums(k, d)
    S = np.zeros((k, d)) if one_hot else None
    step = block_rows(d)
    rows = np.arange(min(step, n))
    hot = np.zeros((k, len(rows))) if one_hot else None
    for lo in range(0, n, step):
        Xb = X[lo : lo + step]
        m = len(Xb)
        D = Xb @ centers.T
        D *= -2.0
        D += csq
        lb = D.argmin(axis=1)
        nb = np.einsum("ij,ij->i", Xb, Xb)
        labels[lo : lo + m], norms[lo : lo + m] = lb, nb
        dist[lo : lo + m] = D[rows[:m], lb] + nb
        if one_hot:
            hot[lb, rows[:m]] = 1.0
            S += hot[:, :m] @ Xb
            hot[lb, rows[:m]] = 0.0
    np.maximum(dist, 0.0, out=dist)
    if sums and not one_hot:
        S = cluster_sums(X, labels, k)[0]
    return labels, dist, norms, S


def assign(X: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of each row and the squared distance to it."""
    labels, dist, _, _ = assign_rows(X, centers)
    return labels, dist


def kmeans_plusplus(X: np.ndarray, k: int, state: np.random.RandomState) -> np.ndarray:
    """scikit-learn's greedy k-means++ (``sklearn.cluster.kmeans_plusplus`` on dense float64
    rows with unit weights: ``2 + log(k)`` local trials per centre), the same arithmetic in the
    same order, so the same ``state`` picks the same centres; numpy only, so the driver need
    not import scikit-learn (~1 s) to start a fit."""
    n = len(X)
    if n < k:  # as scikit-learn's: k distinct picks need k rows
        raise ValueError(f"k-means++ needs at least k={k} rows; got {n}")
    norms = np.einsum("ij,ij->i", X, X)
    weights = np.ones(n, dtype=X.dtype)
    trials = 2 + int(np.log(k))
    centers = np.empty((k, X.shape[1]), dtype=X.dtype)
    first = state.choice(n, p=weights / weights.sum())
    centers[0] = X[first]
    closest = _sq_distances(centers[0, np.newaxis], X, norms)
    potential = closest @ weights
    for c in range(1, k):
        draws = state.uniform(size=trials) * potential
        ids = np.searchsorted(np.cumsum(weights * closest), draws)
        np.clip(ids, None, closest.size - 1, out=ids)  # rounding can point past the end
        candidates = _sq_distances(X[ids], X, norms)
        np.minimum(closest, candidates, out=candidates)
        potentials = candidates @ weights.reshape(-1, 1)
        best = np.argmin(potentials)
        potential, closest = potentials[best], candidates[best]
        centers[c] = X[ids[best]]
    return centers


def _sq_distances(A: np.ndarray, X: np.ndarray, x_norms: np.ndarray) -> np.ndarray:
    """Squared distances of the rows of ``A`` to those of ``X`` as scikit-learn's
    ``_euclidean_distances(squared=True)`` computes them (dot-product form, clipped at 0)."""
    D = -2 * (A @ X.T)
    D += np.einsum("ij,ij->i", A, A)[:, None]
    D += x_norms.reshape(1, -1)
    np.maximum(D, 0, out=D)
    return D


def cluster_sums(X: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sum of rows and row count (one ``bincount`` per feature: O(rows × features)
    whatever ``k``, and a contiguous column each for the Fortran-ordered batches)."""
    sums = np.empty((k, X.shape[1]))
    for j in range(X.shape[1]):
        sums[:, j] = np.bincount(labels, weights=X[:, j], minlength=k)
    return sums, np.bincount(labels, minlength=k).astype(np.float64)


def minibatch_step(X: np.ndarray, centers: np.ndarray, counts: np.ndarray):
    """scikit-learn's mini-batch update, in place: each centre with rows in this batch becomes
    the running mean of every row ever assigned to it. Returns (sums, batch counts, inertia,
    the batch's :class:`Spread`: from the column sums and squared norms the step has anyway)."""
    labels, dist, norms, sums = assign_rows(X, centers, sums=True)
    n = np.bincount(labels, minlength=len(centers)).astype(np.float64)
    hit = n > 0
    total = counts[hit] + n[hit]
    centers[hit] = (centers[hit] * counts[hit, None] + sums[hit]) / total[:, None]
    counts[hit] = total
    return sums, n, float(dist.sum()), Spread.of_batch(len(X), sums.sum(axis=0), norms.sum())


@dataclass
class Spread:
    """Count, mean and total scatter (the sum over rows of the squared distance to their mean:
    the trace of the scatter matrix) of some rows, merged as :class:`ooc.Moments` (Chan et al.).
    The tolerance needs no more than this (the mean feature variance). A batch's comes from its
    column sums and squared row norms, which the assignment computes anyway, so it rounds as
    that assignment's distances do: well unless the data's offset dwarfs its spread by ~1e7."""

    n: int
    mean: np.ndarray
    m2: float

    @classmethod
    def of_batch(cls, n: int, colsum: np.ndarray, sq: float) -> "Spread":
        if n == 0:
            return cls(0, np.zeros_like(colsum), 0.0)
        mean = colsum / n
        return cls(n, mean, max(float(sq) - n * float(mean @ mean), 0.0))

    def merge(self, other: "Spread") -> "Spread":
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        return Spread(n, mean, self.m2 + other.m2 + float(delta @ delta) * self.n * other.n / n)

    @property
    def mean_variance(self) -> float:
        """The population variance per feature (ddof=0), averaged over the features."""
        return self.m2 / max(self.n, 1) / max(len(self.mean), 1)


@dataclass
class PassStats:
    """Per-cluster sums and counts of one pass, and the inertia seen while assigning."""

    sums: np.ndarray
    counts: np.ndarray
    inertia: float
    rows: int
    meta: list = field(default_factory=list)
    spread: Spread | None = None  # the rows' spread, when the pass was asked for it

    def merge(self, other: "PassStats") -> "PassStats":
        spread = self.spread if other.spread is None else other.spread
        if self.spread is not None and other.spread is not None:
            spread = self.spread.merge(other.spread)
        return PassStats(
            self.sums + other.sums,
            self.counts + other.counts,
            self.inertia + other.inertia,
            self.rows + other.rows,
            self.meta + other.meta,
            spread,
        )


@dataclass
class SamplePass:
    """The first pass: a uniform sample, the rows seen, and (when the pass decoded every row)
    per-feature moments."""

    moments: ooc.Moments
    sample: ooc.Sample
    meta: list = field(default_factory=list)
    rows: int = 0

    def merge(self, other: "SamplePass") -> "SamplePass":
        return SamplePass(
            self.moments.merge(other.moments),
            self.sample.merge(other.sample),
            self.meta + other.meta,
            self.rows + other.rows,
        )

    @classmethod
    def merge_many(cls, parts: list["SamplePass"]) -> "SamplePass":
        """All the parts at once (a merge task's body): the moments folded left to right as
        :meth:`merge` would, the samples in one selection (:meth:`Sample.merge_many`)."""
        moments = parts[0].moments
        for p in parts[1:]:
            moments = moments.merge(p.moments)
        sample = ooc.Sample.merge_many([p.sample for p in parts])
        return cls(moments, sample, [m for p in parts for m in p.meta], sum(p.rows for p in parts))
