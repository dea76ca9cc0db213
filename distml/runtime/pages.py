"""Local parquet row groups of plain floating-point columns decoded page by page into one
float64 matrix (Fortran order), beside Arrow's reader (docs/out_of_core.md).

Through Arrow, a batch's bytes are copied three times (decompressed, decoded into Arrow's
arrays, copied into the matrix the arithmetic wants), and the out-of-core passes stream small
batches through it. Here each page is decompressed straight from the file's memory map and
its values copied into one matrix per row group, reused from row group to row group (a first
touch of fresh memory costs ~5 µs a page on the VMs distml is measured on). A 190,000 × 64
float64 partition (snappy, PLAIN) reaches numpy in 50 ms instead of 74 ms.

Only the common case takes this path, column chunk by column chunk: a flat ``DOUBLE`` or
``FLOAT`` column whose footer promises PLAIN values (no dictionary page) and a codec in
:data:`CODECS`, whose pages (v1 or v2) turn out to be PLAIN with no nulls. Any other column
chunk is left to the caller, who reads it with Arrow into the same matrix (which also names a
column with nulls in its error). NaN and inf are the caller's to check.

The page headers are Thrift compact-protocol structs (parquet-format's ``PageHeader``); the
few fields needed are read here and the rest skipped.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

#: the largest row group decoded whole, in float64 bytes (rows × features × 8): a task holds
#: one such matrix; a file with larger row groups is streamed through Arrow in batches, whose
#: memory is bounded by the batch size (65,536 × 64 is 32 MiB; pyarrow's default row groups of
#: a million rows at 64 features, 512 MiB, are streamed)
MAX_BLOCK_BYTES = 64 << 20
#: parquet codec names -> :func:`pyarrow.decompress` codecs (None: stored as is). Not here:
#: LZ4 (pyarrow's footer names both parquet's LZ4 codecs, framed and raw, "LZ4") and LZO.
CODECS = {
    "UNCOMPRESSED": None,
    "SNAPPY": "snappy",
    "GZIP": "gzip",
    "BROTLI": "brotli",
    "ZSTD": "zstd",
}
_DTYPES = {"DOUBLE": np.dtype("<f8"), "FLOAT": np.dtype("<f4")}
# parquet-format enums
_DATA_PAGE, _DATA_PAGE_V2 = 0, 3
_PLAIN, _RLE = 0, 3
#: a column chunk's encodings (footer) that leave its values PLAIN: levels are RLE/bit-packed
_ENCODINGS = {"PLAIN", "RLE", "BIT_PACKED"}


class Unsupported(Exception):
    """A page this decoder does not handle: the column chunk is read with Arrow instead."""


# ------------------------------------------------------------------ Thrift compact protocol


def _varint(b, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        x = b[i]
        i += 1
        out |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return out, i


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


#: how deep structs and containers may nest in a page header (parquet's need 3)
MAX_DEPTH = 16


def _skip(b, i: int, t: int, depth: int = 0, element: bool = False) -> int:
    """Past one value of compact type ``t`` (``element``: inside a container, where a boolean
    takes a byte). ``b`` ends where the header may end: reading past it is an IndexError, and
    a container claiming more elements than bytes left is Unsupported (a corrupt header)."""
    if depth > MAX_DEPTH:
        raise Unsupported("thrift nesting")
    if t in (
        1,
        2,
    ):  # a field's boolean lives in its type nibble; an element's takes a byte
        return i + 1 if element else i
    if t == 3:  # byte
        return i + 1
    if t in (4, 5, 6):  # i16, i32, i64
        return _varint(b, i)[1]
    if t == 7:  # double
        return i + 8
    if t == 8:  # binary
        n, i = _varint(b, i)
        return i + n
    if t in (9, 10):  # list, set
        head = b[i]
        i += 1
        n, et = head >> 4, head & 0x0F
        if n == 15:
            n, i = _varint(b, i)
        if n > len(b) - i:
            raise Unsupported("thrift list size")
        width = {1: 1, 2: 1, 3: 1, 7: 8}.get(et)
        if width:
            return i + n * width
        for _ in range(n):
            i = _skip(b, i, et, depth + 1, True)
        return i
    if t == 11:  # map
        n, i = _varint(b, i)
        if n:
            if 2 * n > len(b) - i:
                raise Unsupported("thrift map size")
            kv = b[i]
            i += 1
            for _ in range(n):
                i = _skip(b, _skip(b, i, kv >> 4, depth + 1, True), kv & 0x0F, depth + 1, True)
        return i
    if t == 12:  # struct
        return _struct(b, i, {}, depth + 1)[1]
    raise Unsupported(f"thrift type {t}")


def _struct(b, i: int, want: dict, depth: int = 0) -> tuple[dict, int]:
    """A struct at ``b[i]``: ``want`` maps field ids to ``"i"`` (an integer), ``"b"`` (a
    boolean) or a dict (a nested struct, its own ``want``); other fields are skipped."""
    if depth > MAX_DEPTH:
        raise Unsupported("thrift nesting")
    out: dict = {}
    fid = 0
    while True:
        head = b[i]
        i += 1
        if head == 0:
            return out, i
        t, delta = head & 0x0F, head >> 4
        if delta:
            fid += delta
        else:
            v, i = _varint(b, i)
            fid = _zigzag(v)
        kind = want.get(fid)
        if kind == "i" and t in (4, 5, 6):
            v, i = _varint(b, i)
            out[fid] = _zigzag(v)
        elif kind == "b" and t in (1, 2):
            out[fid] = t == 1
        elif isinstance(kind, dict) and t == 12:
            out[fid], i = _struct(b, i, kind, depth + 1)
        else:
            i = _skip(b, i, t, depth)


# PageHeader: type, uncompressed size, compressed size, data_page_header (num_values, encoding,
# definition level encoding), data_page_header_v2 (num_values, num_nulls, encoding,
# definition and repetition levels' byte lengths, is_compressed)
_HEADER = {
    1: "i",
    2: "i",
    3: "i",
    5: {1: "i", 2: "i", 3: "i"},
    8: {1: "i", 2: "i", 4: "i", 5: "i", 6: "i", 7: "b"},
}


# ------------------------------------------------------------------ a file's row groups


class RowGroups:
    """A local parquet file open for :func:`decode_row_group`: its footer and the leaf columns
    of ``features`` (None where one is not a flat float column)."""

    def __init__(self, path: str, features: list[str]):
        import pyarrow.parquet as pq

        self.file = open(path, "rb")
        try:
            self.meta = pq.ParquetFile(self.file).metadata
        except BaseException:
            self.file.close()
            raise
        schema = self.meta.schema
        # top-level columns only: a struct's child has a dotted path that a top-level column
        # may also be named (Arrow's reader, which the features' names come from, picks that)
        leaves = {}
        for j in range(len(schema)):
            col = schema.column(j)
            if col.name == col.path:
                leaves[col.path] = j
        self.columns: list[tuple[int, int, np.dtype] | None] = []
        for name in features:
            j = leaves.get(name)
            col = schema.column(j) if j is not None else None
            plain = (
                col is not None
                and col.physical_type in _DTYPES
                and col.max_repetition_level == 0
                and col.max_definition_level <= 1
                and col.logical_type.type == "NONE"
            )
            self.columns.append(
                (j, col.max_definition_level, _DTYPES[col.physical_type]) if plain else None
            )

    def close(self) -> None:
        self.file.close()


def decode_row_group(rgs: RowGroups, g: int, out: np.ndarray, rows=None) -> list[int]:
    """Row group ``g``'s features into ``out`` (float64, Fortran order, at least as many rows
    as the row group, or as ``rows``: only those, ascending row numbers within the group;
    column ``j`` = feature ``j``), each column whose pages this decoder handles; the others
    (their ``j``, ascending) are the caller's to read, with Arrow, which also names a column
    with nulls.

    Only the row group's bytes are mapped, and unmapped before returning: the file's pages
    a task holds are one row group's, as with Arrow's reader."""
    import mmap

    rg = rgs.meta.row_group(g)
    chunks, rest = [], []
    for j, spec in enumerate(rgs.columns):
        codec = _codec(rg, spec)
        if codec is False:
            rest.append(j)
        else:
            chunk = rg.column(spec[0])
            chunks.append((j, spec, codec, chunk.data_page_offset, chunk.total_compressed_size))
    if not chunks:
        return rest
    lo = min(c[3] for c in chunks)
    base = lo - lo % mmap.ALLOCATIONGRANULARITY
    size = max(c[3] + c[4] for c in chunks) - base
    try:
        mm = mmap.mmap(rgs.file.fileno(), size, offset=base, access=mmap.ACCESS_READ)
    except (ValueError, OSError):  # a footer past the file's end: Arrow's reader says so
        return list(range(len(rgs.columns)))
    try:
        view = memoryview(mm)
        try:
            for j, spec, codec, offset, length in chunks:
                with view[offset - base : offset - base + length] as part:
                    if not _column(part, spec, codec, rg.num_rows, out[:, j], rows):
                        rest.append(j)
        finally:
            view.release()
    finally:
        try:
            mm.close()
        except BufferError:  # a view still alive: the mapping goes with it
            pass
    return sorted(rest)


def _codec(rg, spec):
    """A column chunk's :data:`CODECS` entry when its footer says its values are PLAIN (no
    dictionary) and it is a flat float column (``spec``), else False."""
    if spec is None:
        return False
    chunk = rg.column(spec[0])
    if (
        chunk.has_dictionary_page
        or chunk.num_values != rg.num_rows
        or not set(chunk.encodings) <= _ENCODINGS
    ):
        return False
    return CODECS.get(chunk.compression, False)


def _column(chunk, spec, codec, n: int, out: np.ndarray, rows) -> bool:
    """One column chunk's pages (``chunk``: its bytes; a header read past them is an
    IndexError) into ``out`` (``rows``: only those); False (part of it maybe written) when a
    page is not one this decoder handles, or is corrupt (Arrow's reader then says what is
    wrong with it)."""
    import pyarrow as pa

    _, max_def, dtype = spec
    try:
        pages = _pages(chunk, max_def)  # every header first: a page not handled costs nothing
        at = 0
        for kind, count, raw, (offset, size), levels in pages:
            nbytes = count * dtype.itemsize
            if count < 0 or at + count > n:
                return False
            data = chunk[offset : offset + size]
            if kind == _DATA_PAGE:
                if codec and (raw is None or raw < nbytes):  # (before allocating it)
                    return False
                page = pa.decompress(data, raw, codec=codec) if codec else data
                skip = _check_levels_v1(page, count) if max_def else 0
            elif codec and raw is not None:  # v2: levels stored before the values, as is
                if raw - levels != nbytes:
                    return False
                page, skip = pa.decompress(data, raw - levels, codec=codec), 0
            else:
                page, skip = data, 0
            if len(page) - skip != nbytes:
                return False
            values = np.frombuffer(page, dtype=dtype, count=count, offset=skip)
            if rows is None:
                out[at : at + count] = values
            else:
                lo, hi = np.searchsorted(rows, [at, at + count])
                out[lo:hi] = values[rows[lo:hi] - at]
            at += count
        return at == n
    except (Unsupported, IndexError, ValueError, OSError, RecursionError):
        return False


def _pages(b, max_def: int) -> list[tuple]:
    """The data pages of the column chunk ``b``: ``(type, values, decompressed bytes (None:
    stored as is), (offset, bytes), level bytes)``; Unsupported for anything but PLAIN pages
    without nulls or repetition. (parquet-mr labels the absent levels of a required column
    ``BIT_PACKED``: their encoding is read only where there are levels.)"""
    end, i = len(b), 0
    pages = []
    while i < end:
        head, i = _struct(b, i, _HEADER)
        kind, size = head.get(1), head.get(3, -1)
        if size < 0 or i + size > end:
            raise Unsupported("page size")
        if kind == _DATA_PAGE:
            dp = head.get(5, {})
            if dp.get(2) != _PLAIN or (max_def and dp.get(3, _RLE) != _RLE):
                raise Unsupported("encoding")
            pages.append((kind, dp.get(1, -1), head.get(2), (i, size), 0))
        elif kind == _DATA_PAGE_V2:
            dp = head.get(8, {})
            if dp.get(4) != _PLAIN or dp.get(2, -1) != 0 or dp.get(6, 0) != 0:
                raise Unsupported("v2 page")
            levels = dp.get(5, 0)
            if levels and not _all_defined(b[i : i + levels], dp.get(1, -1)):
                raise Unsupported("v2 levels")
            raw = head.get(2) if dp.get(7, True) else None
            pages.append((kind, dp.get(1, -1), raw, (i + levels, size - levels), levels))
        else:  # dictionary or index page
            raise Unsupported(f"page type {kind}")
        i += size
    return pages


def _check_levels_v1(page, count: int) -> int:
    """The definition levels at the start of a v1 page (a 4-byte length, then RLE/bit-packed
    runs): where the values start, when every one of the ``count`` values is defined; else
    Unsupported (a null: Arrow's reader names the column)."""
    b = memoryview(page).cast("B")
    length = int.from_bytes(b[:4], "little")
    if not _all_defined(b[4 : 4 + length], count):
        raise Unsupported("nulls")
    return 4 + length


def _all_defined(levels, count: int) -> bool:
    """Whether RLE/bit-packed hybrid definition levels (bit width 1) are ``count`` ones."""
    i = seen = 0
    while seen < count:
        if i >= len(levels):
            return False
        head, i = _varint(levels, i)
        if head & 1:  # bit-packed: (head >> 1) groups of 8 values, one byte each
            groups = head >> 1
            packed = bytes(levels[i : i + groups])
            take = min(8 * groups, count - seen)
            full, rest = divmod(take, 8)
            if packed[:full] != b"\xff" * full or (
                rest and (packed[full] & ((1 << rest) - 1)) != (1 << rest) - 1
            ):
                return False
            i += groups
            seen += take
        else:  # an RLE run: its length, then its value in one byte
            if levels[i] != 1:
                return False
            i += 1
            seen += head >> 1
    return seen == count


# ------------------------------------------------------------------ reused matrices

_local = threading.local()


def scratch(name: str, rows: int, d: int) -> np.ndarray:
    """A float64 Fortran matrix of at least ``rows`` × ``d``, this thread's for ``name``,
    reused from call to call (its pages are touched once per process, not once per row
    group); the caller gets its first ``rows`` rows."""
    held = getattr(_local, "held", None)
    if held is None:
        held = _local.held = {}
    X = held.get(name)
    if X is None or X.shape[1] != d or X.shape[0] < rows:
        X = held[name] = np.empty((rows, d), order="F")
    return X[:rows]


# ------------------------------------------------------------------ a partition's batches


def plain_blocks(pieces, features: list[str], arrow_columns, local=None) -> Any:
    """Per row group of ``pieces`` (local parquet files' row groups, in order): ``(piece
    index, its rows, those rows as a float64 Fortran matrix)``, valid until the next one: the
    columns :func:`decode_row_group` decodes, and ``arrow_columns(path, g, js, X, rows)``
    fills the others (``js``). ``local``: only the rows at those ascending row numbers (within
    the pieces, one after another), in a new matrix per row group. None (nothing read) when a
    file is not local, a row group is larger than :data:`MAX_BLOCK_BYTES` or no column's
    footer promises PLAIN pages: Arrow streams those in batches (as fast as a row group at a
    time for dictionary pages)."""
    from distml.runtime.read import local_path

    d, usable, files = len(features), False, []
    try:
        for piece in pieces:
            path = local_path(piece.path)
            if path is None:
                break
            rgs = RowGroups(path, features)
            files.append((rgs, path, piece.row_groups))
            groups = (
                range(rgs.meta.num_row_groups) if piece.row_groups is None else piece.row_groups
            )
            files[-1] = (rgs, path, list(groups))
            meta = [rgs.meta.row_group(g) for g in groups]
            if max((rg.num_rows for rg in meta), default=0) * d * 8 > MAX_BLOCK_BYTES:
                break
            usable = usable or any(_codec(rg, c) is not False for rg in meta for c in rgs.columns)
        else:
            if usable:
                return _blocks(files, d, arrow_columns, local)
    except BaseException:
        for f in files:
            f[0].close()
        raise
    for f in files:
        f[0].close()
    return None


def _blocks(files, d: int, arrow_columns, local):
    at = 0
    try:
        for k, (rgs, path, groups) in enumerate(files):
            for g in groups:
                n, rows = rgs.meta.row_group(g).num_rows, None
                if local is None:
                    X = scratch("block", n, d)
                else:
                    lo, hi = np.searchsorted(local, [at, at + n])
                    rows = local[lo:hi] - at
                    X = np.empty((len(rows), d), order="F")
                rest = decode_row_group(rgs, g, X, rows)
                if rest:
                    arrow_columns(path, g, rest, X, rows)
                at += n
                yield k, n, X
    finally:
        for f in files:
            f[0].close()


def cut(blocks, size: int, d: int):
    """Batches of exactly ``size`` rows (the last of each piece shorter) cut from
    :func:`plain_blocks`, as one reader over each piece's row groups cuts them: views of the
    blocks where a batch lies within one, else rows gathered into a reused matrix. Each is
    valid until the next is asked for."""
    have, piece = 0, None
    B = scratch("batch", size, d)
    for k, _, X in blocks:
        if k != piece:
            if have:
                yield B[:have]
            have, piece = 0, k
        at, n = 0, len(X)
        if have:
            take = min(size - have, n)
            B[have : have + take] = X[:take]
            have, at = have + take, take
            if have < size:
                continue
            yield B
            have = 0
        while n - at >= size:
            yield X[at : at + size]
            at += size
        if at < n:
            B[: n - at] = X[at:]
            have = n - at
    if have:
        yield B[:have]
