"""The mergeable uniform sample of the out-of-core passes (k-means' initialisation sample):
:class:`Sample`, re-exported by :mod:`distml.jobs._out_of_core`, drawn one of two ways:

* **by position** (:func:`draw`, :func:`picks`, :meth:`Sample.picked`), when every partition's
  row count and offset are known (parquet, generated sources): the driver draws the row numbers
  up front, so a task decodes only the rows drawn in its partition, not every row;
* **by random key** (:meth:`Sample.add`), when they are not (CSV): every row draws a key and
  the smallest keys are kept, which needs every row decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def draw(rows: int, m: int, seed: int) -> np.ndarray:
    """``min(m, rows)`` distinct row numbers of ``[0, rows)``, uniformly at random without
    replacement, in random order: the sample's order (any prefix is itself a uniform sample).
    The same ``rows``, ``m`` and ``seed`` draw the same numbers, however the rows are split."""
    rng = np.random.default_rng([seed, 0x5A3])
    return rng.choice(rows, size=min(m, rows), replace=False)


def picks(positions: np.ndarray, offset: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The drawn ``positions`` that fall in rows ``[offset, offset + rows)``: their row numbers
    within those rows, ascending (the order a reader meets them), and their ranks in the draw
    (the order of the sample)."""
    ranks = np.flatnonzero((positions >= offset) & (positions < offset + rows))
    local = positions[ranks] - offset
    order = np.argsort(local, kind="stable")
    return local[order], ranks[order]


@dataclass
class Sample:
    """A uniform random sample without replacement of at most ``m`` rows: every row draws a
    random key in [0, 1) and the rows with the ``m`` smallest keys are kept. Mergeable, and
    independent of batch sizes and of the order partial samples are merged in.

    With the data's row count known, ``threshold`` (a little above ``m / rows``) drops almost
    every row at once, so a task keeps about its share of ``m`` rows, not ``m``; the ``m``
    smallest keys below the threshold are still the ``m`` smallest overall (unless fewer than
    ``m`` rows fall below it, a many-sigma event, when the sample is simply smaller). Once ``m``
    rows are held, a row only enters by replacing a larger key in place."""

    m: int
    keys: np.ndarray
    rows: np.ndarray  # capacity >= len(keys); rows[:len(keys)] are the sample
    meta: list = field(default_factory=list)
    threshold: float = 1.0

    @classmethod
    def empty(cls, m: int, d: int, threshold: float = 1.0) -> "Sample":
        return cls(m, np.empty(0), np.empty((0, d)), threshold=threshold)

    @classmethod
    def picked(cls, m: int, ranks: np.ndarray, rows: list[np.ndarray], d: int) -> "Sample":
        """The rows a partition holds of a sample drawn by position (:func:`draw`), keyed by
        their ranks in the draw: merged, the parts hold exactly the draw's rows, in its order.
        The rows are held in row-major order: the merge gathers them row by row into the draw's
        order, which from column-major parts took 3x as long (0.15 s for B5's 98,304 rows)."""
        got = np.empty((sum(len(r) for r in rows), d))
        if rows:
            np.concatenate(rows, out=got)
        if len(got) != len(ranks):
            raise ValueError(f"{len(got)} sampled rows for {len(ranks)} drawn positions")
        return cls(m, ranks.astype(np.float64), got)

    @staticmethod
    def threshold_for(m: int, rows: int | None) -> float:
        """Key threshold keeping about ``m + 8·sqrt(m)`` of ``rows`` rows (1 when unknown)."""
        if not rows or m >= rows:
            return 1.0
        return min(1.0, (m + 8 * m**0.5 + 16) / rows)

    def add(self, X: np.ndarray, keys: np.ndarray) -> "Sample":
        """Fold in a batch (copies the rows it keeps; ``X`` may be overwritten afterwards)."""
        take = keys < self.threshold
        if len(self.keys) >= self.m:
            take &= keys < self.keys.max()
        if not take.any():
            return self
        X, keys = X[take], keys[take]
        n = len(self.keys)
        if n < self.m:  # room left: append into a buffer growing geometrically up to m rows
            put = min(self.m - n, len(keys))
            if self.rows.shape[0] < n + put:
                rows = np.empty(
                    (min(self.m, max(n + put, 2 * self.rows.shape[0], 1024)), X.shape[1])
                )
                rows[:n] = self.rows[:n]
                self.rows = rows
            self.rows[n : n + put] = X[:put]
            self.keys = np.concatenate([self.keys, keys[:put]])
            X, keys = X[put:], keys[put:]
            if not len(keys):
                return self
            enter = keys < self.keys.max()
            X, keys = X[enter], keys[enter]
            if not len(keys):
                return self
        union = np.concatenate([self.keys, keys])
        drop = np.argpartition(union, self.m - 1)[self.m :]  # the len(keys) largest of the union
        slots = drop[drop < self.m]
        incoming = np.setdiff1d(
            np.arange(len(keys)), drop[drop >= self.m] - self.m, assume_unique=True
        )
        self.rows[slots] = X[incoming]
        self.keys[slots] = keys[incoming]
        return self

    def merge(self, other: "Sample") -> "Sample":
        """The ``m`` smallest keys of both, gathering only the rows kept (no concatenation)."""
        na = len(self.keys)
        keys = np.concatenate([self.keys, other.keys])
        keep = (
            np.argpartition(keys, self.m - 1)[: self.m]
            if len(keys) > self.m
            else np.arange(len(keys))
        )
        a, b = keep[keep < na], keep[keep >= na] - na
        rows = np.empty((len(keep), self.rows.shape[1]))
        rows[: len(a)] = self.rows[a]
        rows[len(a) :] = other.rows[b]
        return Sample(
            self.m,
            np.concatenate([self.keys[a], other.keys[b]]),
            rows,
            self.meta + other.meta,
            self.threshold,
        )

    @classmethod
    def merge_many(cls, parts: list["Sample"]) -> "Sample":
        """The ``m`` smallest keys of all the parts in one selection and one gather of the kept
        rows, already in key order (a pairwise fold would copy the growing sample once per
        part, and :meth:`sorted_rows` once more): the same rows as any order of :meth:`merge`
        (keys are random floats: ties do not occur)."""
        first = parts[0]
        keys = np.concatenate([p.keys for p in parts])
        bounds = np.cumsum([0] + [len(p.keys) for p in parts])
        meta = [m for p in parts for m in p.meta]
        if len(keys) <= first.m:  # every row is kept: each part's rows go straight to their places
            order = np.argsort(keys, kind="stable")
            place = np.empty(len(keys), dtype=np.intp)
            place[order] = np.arange(len(keys))
            rows = np.empty((len(keys), first.rows.shape[1]))
            for i, p in enumerate(parts):
                rows[place[bounds[i] : bounds[i + 1]]] = p.rows[: len(p.keys)]
            return Sample(first.m, keys[order], rows, meta, first.threshold)
        # many parts of up to m rows each (an unknown row count): the m smallest keys
        order = np.argpartition(keys, first.m - 1)[: first.m]
        order = order[np.argsort(keys[order], kind="stable")]
        owner = np.searchsorted(bounds, order, side="right") - 1
        rows = np.empty((len(order), first.rows.shape[1]))
        for i, p in enumerate(parts):
            at = np.flatnonzero(owner == i)
            rows[at] = p.rows[order[at] - bounds[i]]
        return Sample(first.m, keys[order], rows, meta, first.threshold)

    def sorted_rows(self) -> np.ndarray:
        """The sampled rows in key order (any prefix is itself a uniform sample); the rows
        themselves when they are already in that order (after :meth:`merge_many`)."""
        n = len(self.keys)
        rows = self.rows[:n]
        if (
            rows.flags.c_contiguous
            and rows.flags.writeable
            and np.all(self.keys[1:] >= self.keys[:-1])
        ):
            return rows
        order = np.argsort(self.keys, kind="stable")
        return np.ascontiguousarray(self.rows[: len(self.keys)][order])
