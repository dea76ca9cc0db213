"""The one partition planner of distml (DESIGN.md §12): a checked source -> partitions.

A :class:`Partition` is the unit of work of one Ray task: some *pieces* of files (a parquet file
or a run of its whole row groups; a CSV file or a byte range of it) or a row range of a
``builtin:``/``synthetic:`` source. Partitions are planned on the driver from parquet footers
alone (no row is read) and keep the data's order: concatenating the partitions of a plan, in
order, gives every row of the source exactly once, in file order. :mod:`distml.runtime.read`
reads them.

Two sizing rules, one per way a kind spends its tasks:

- :func:`by_rows` packs whole row groups, in order, into partitions of about ``rows`` rows,
  never across files: bounded memory per task (pca/kmeans, ``at_least=False``: a partition never
  exceeds ``rows`` unless one row group does) or even shards for a worker group (multi-worker
  xgboost, ``at_least=True``: a partition closes once it holds ``rows``). Virtual sources are one
  partition, or row ranges of ``virtual_rows`` where the source can be read by ranges; CSV files
  are one partition each, or byte ranges of ``csv_bytes``.
- :func:`by_count` cuts a source into about ``n_parts`` partitions (two per CPU for
  many-models and the sufficient-statistics passes), splitting big parquet files by row groups
  and grouping many small files, none bigger than ``max_bytes`` on disk.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from distml.errors import DataError

#: below this many rows a source is not split inside its files by :func:`by_count`
MIN_SPLIT_ROWS = 200_000


@dataclass(frozen=True)
class Piece:
    """Part of one file: parquet ``row_groups`` (None: all), or a CSV ``byte_range`` (the lines
    whose first byte lies in ``[lo, hi)``, header excluded; None: the whole file)."""

    path: str
    row_groups: tuple[int, ...] | None = None
    byte_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class Partition:
    """One task's share of a source, in data order.

    ``format``: parquet | csv | virtual (a ``builtin:``/``synthetic:`` source, rows
    ``row_range`` of it, or all of it when None). ``name``: an output stem (the file's path
    relative to the files' common folder, without suffix, plus ``-rgNNNNN`` when the file is
    split). ``rows`` and ``offset`` (global number of the first row) are None when unknown
    without reading (CSV).
    """

    index: int
    source: str
    format: str
    pieces: tuple[Piece, ...] = ()
    name: str = "part-00000"
    rows: int | None = None
    offset: int | None = None
    row_range: tuple[int, int] | None = None

    @property
    def path(self) -> str:
        """The one file of the partition (or the source itself when it spans several/none)."""
        return self.pieces[0].path if len(self.pieces) == 1 else self.source

    @property
    def row_groups(self) -> tuple[int, ...] | None:
        return self.pieces[0].row_groups if len(self.pieces) == 1 else None

    def where(self) -> str:
        """The partition for a message: its file and, when split, its row groups or rows."""
        rg = self.row_groups
        text = repr(self.path)
        if rg and len(rg) > 1:
            text += f" (row groups {rg[0]}-{rg[-1]})"
        elif self.row_range is not None:
            text += f" (rows {self.row_range[0]}-{self.row_range[1] - 1})"
        return text

    def to_dict(self) -> dict:
        """JSON-able form (e.g. one row of a Ray Dataset of partitions)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Partition":
        pieces = tuple(
            Piece(p["path"], _tuple(p.get("row_groups")), _tuple(p.get("byte_range")))
            for p in d.get("pieces", ())
        )
        return cls(
            d["index"],
            d["source"],
            d["format"],
            pieces,
            d.get("name", "part-00000"),
            d.get("rows"),
            d.get("offset"),
            _tuple(d.get("row_range")),
        )


def _tuple(v):
    return tuple(int(x) for x in v) if v is not None else None


def files_partition(source: str, files: list[str], fmt: str, index: int = 0) -> Partition:
    """A partition of whole files (e.g. a task that reads a few files in full)."""
    return Partition(index, source, fmt, tuple(Piece(f) for f in files))


# ------------------------------------------------------------------ footers and names


def row_group_rows(path: str) -> list[int]:
    """Rows of each row group of parquet file ``path``, from its footer."""
    import pyarrow.parquet as pq

    from distml.runtime.read import open_input

    with open_input(path) as fh:
        meta = pq.ParquetFile(fh).metadata
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def relative_names(files: list[str]) -> list[str]:
    """Each file's path relative to the files' common folder, without its suffix."""
    paths = [f.split("://", 1)[-1] for f in files]
    root = os.path.commonpath([os.path.dirname(p) or "." for p in paths]) if paths else ""
    out = []
    for p in paths:
        rel = os.path.relpath(p, root) if root else os.path.basename(p)
        stem, ext = os.path.splitext(rel)
        if ext == ".gz":
            stem = os.path.splitext(stem)[0]
        out.append(stem.replace(os.sep, "/"))
    return out


def _runs(sizes: list[int], target: int, at_least: bool) -> list[tuple[list[int], int]]:
    """Consecutive row groups packed into runs of about ``target`` rows (runs with rows only)."""
    runs: list[tuple[list[int], int]] = []
    cur: list[int] = []
    n = 0
    for g, r in enumerate(sizes):
        if not at_least and cur and n + r > target:
            runs.append((cur, n))
            cur, n = [], 0
        cur.append(g)
        n += r
        if at_least and n >= target:
            runs.append((cur, n))
            cur, n = [], 0
    if cur:
        runs.append((cur, n))
    return [r for r in runs if r[1] > 0]


# ------------------------------------------------------------------ rule 1: rows per partition


def by_rows(
    info,
    rows: int,
    *,
    at_least: bool = False,
    offset: int = 0,
    virtual_rows: int | None = None,
    csv_bytes: int | None = None,
    count_csv_rows: bool = False,
) -> list[Partition]:
    """Partitions of a checked :class:`~distml.runtime.data.SourceInfo` of about ``rows`` rows
    each, whole row groups, never across files, in data order (see the module docstring).

    ``offset``: the global row number of the source's first row (a second source appended to a
    first). ``virtual_rows``: split a synthetic source into row ranges of that many rows where
    it can be generated by ranges (else one partition). ``csv_bytes``: split CSV files into byte
    ranges of about that size. ``count_csv_rows``: count the lines of CSV files so partitions
    carry rows and offsets (reads the files once).
    """
    if info.kind != "files":
        return _virtual(info, offset, virtual_rows)
    names = relative_names(info.files)
    parts: list[Partition] = []
    at = offset
    for f, stem, size in zip(info.files, names, info.sizes or [None] * len(info.files)):
        if info.format == "csv":
            n = _csv_rows(f) if count_csv_rows else None
            if csv_bytes and size and size > csv_bytes and not f.lower().endswith(".gz"):
                ranges = [(lo, min(lo + csv_bytes, size)) for lo in range(0, size, csv_bytes)]
                for lo, hi in ranges:
                    parts.append(
                        Partition(
                            len(parts),
                            info.source,
                            "csv",
                            (Piece(f, byte_range=(lo, hi)),),
                            f"{stem}-b{lo:012d}",
                        )
                    )
                continue
            parts.append(
                Partition(
                    len(parts),
                    info.source,
                    "csv",
                    (Piece(f),),
                    stem,
                    n,
                    at if n is not None else None,
                )
            )
            at += n or 0
            continue
        runs = _runs(row_group_rows(f), rows, at_least)
        for groups, n in runs:
            name = stem if len(runs) == 1 else f"{stem}-rg{groups[0]:05d}"
            parts.append(
                Partition(
                    len(parts), info.source, "parquet", (Piece(f, tuple(groups)),), name, n, at
                )
            )
            at += n
    return parts


def _virtual(info, offset: int, virtual_rows: int | None) -> list[Partition]:
    from distml.runtime import datasets

    total = info.rows
    if virtual_rows and total and datasets.reads_row_ranges(info.source):
        return [
            Partition(
                i,
                info.source,
                "virtual",
                name=f"part-{i:05d}",
                rows=min(lo + virtual_rows, total) - lo,
                offset=offset + lo,
                row_range=(lo, min(lo + virtual_rows, total)),
            )
            for i, lo in enumerate(range(0, total, virtual_rows))
        ]
    return [Partition(0, info.source, "virtual", rows=total, offset=offset)]


def _csv_rows(path: str) -> int:
    """Data lines of a CSV file (lines minus the header)."""
    from distml.runtime.read import open_input

    with open_input(path) as fh:
        return sum(1 for _ in fh) - 1


# ------------------------------------------------------------------ rule 2: number of partitions


def by_count(info, n_parts: int, max_bytes: int | None = None) -> list[Partition]:
    """About ``n_parts`` partitions of a checked source (and, with ``max_bytes``, none bigger
    than that on disk): parquet files split by row groups in proportion to their size when they
    are fewer than the partitions wanted (and the source has at least :data:`MIN_SPLIT_ROWS`
    rows, or ``max_bytes`` is given); otherwise whole files, grouped into at most
    ``4 * n_parts`` partitions. Virtual sources are one partition."""
    if info.kind != "files":
        return [Partition(0, info.source, "virtual", rows=info.rows, offset=0)]
    target = max(2, n_parts)
    total = sum(info.sizes) or 1
    if max_bytes:
        target = max(target, math.ceil(total / max_bytes))
    files = list(info.files)
    if (
        info.format == "parquet"
        and len(files) < target
        and ((info.rows or 0) >= MIN_SPLIT_ROWS or max_bytes)
    ):
        parts: list[Partition] = []
        for f, size in zip(files, info.sizes or [total] * len(files)):
            n_groups = len(row_group_rows(f))
            share = max(1, round(target * size / total))
            for chunk in np.array_split(np.arange(n_groups), min(share, max(1, n_groups))):
                if len(chunk):
                    parts.append(
                        Partition(
                            len(parts),
                            info.source,
                            "parquet",
                            (Piece(f, tuple(int(i) for i in chunk)),),
                        )
                    )
        return parts
    n_units = min(len(files), 4 * target)
    return [
        Partition(i, info.source, info.format, tuple(Piece(files[j]) for j in idx))
        for i, idx in enumerate(i for i in np.array_split(np.arange(len(files)), n_units) if len(i))
    ]


def check_rows(parts: list[Partition], source: str) -> list[Partition]:
    """``parts``, or a DataError when the plan holds no row."""
    if not parts:
        raise DataError(f"data.source: {source!r} has no rows")
    return parts
