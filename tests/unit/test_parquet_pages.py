"""The page decoder of local parquet files (``distml.runtime.pages``) behind the out-of-core
passes' batches (``ooc.iter_batches(..., reuse=True)``, ``ooc.iter_picked``): against Arrow's
reader (the same function with ``reuse=False``) on the same files, written every way pyarrow
writes them — codecs, data page versions 1 and 2, dictionary or not, float32, integer and
required columns, many small pages, row groups of several sizes — without a cluster.

Tolerances: none. The decoder copies the file's float64 values (float32 ones cast as Arrow casts
them), so every batch is Arrow's bit for bit and cut at the same rows."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distml.errors import DataError
from distml.jobs import _out_of_core as ooc
from distml.runtime import pages
from distml.runtime.data import inspect_source

FEATS = [f"x{i}" for i in range(5)]


def _table(n: int = 3000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)) * [1, 10, 1e-3, 1e6, 1] + [0, 5, -3, 1e9, 0]
    return pa.Table.from_pandas(pd.DataFrame(X, columns=FEATS), preserve_index=False)


def _write(table: pa.Table, path: Path, **kw) -> ooc.Partition:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **{"row_group_size": 700, "use_dictionary": False, **kw})
    return ooc.plan_partitions(inspect_source(str(path)))[0]


def _both(part, batch_size: int, feats=FEATS) -> tuple[list, list]:
    arrow = [b.X for b in ooc.iter_batches(part, feats, batch_size)]
    mine = [b.X.copy() for b in ooc.iter_batches(part, feats, batch_size, reuse=True)]
    return arrow, mine


def _decoded(path: Path, feats=FEATS) -> list[list[int]]:
    """Per row group: the feature columns the decoder left to Arrow."""
    rgs = pages.RowGroups(str(path), feats)
    try:
        rows = max(rgs.meta.row_group(g).num_rows for g in range(rgs.meta.num_row_groups))
        X = np.empty((rows, len(feats)), order="F")
        return [pages.decode_row_group(rgs, g, X) for g in range(rgs.meta.num_row_groups)]
    finally:
        rgs.close()


WRITERS = {
    "snappy v1": {},
    "uncompressed": {"compression": "none"},
    "gzip": {"compression": "gzip"},
    "zstd": {"compression": "zstd"},
    "brotli": {"compression": "brotli"},
    "lz4 (left to Arrow)": {"compression": "lz4"},
    "v2 pages": {"data_page_version": "2.0"},
    "v2 uncompressed": {"data_page_version": "2.0", "compression": "none"},
    "small pages": {"data_page_size": 1000, "write_batch_size": 64},
    "one row group": {"row_group_size": 10_000},
}


@pytest.mark.parametrize("writer", WRITERS)
def test_plain_pages_are_decoded_and_equal_arrows_batches(tmp_path, writer):
    path = tmp_path / "a.parquet"
    part = _write(_table(), path, **WRITERS[writer])
    # every column of every row group here; pyarrow's footer names both LZ4 codecs "LZ4"
    left = list(range(5)) if "Arrow" in writer else []
    assert all(rest == left for rest in _decoded(path))
    for batch_size in (1, 7, 256, 700, 1000, 2999, 5000):
        arrow, mine = _both(part, batch_size)
        assert [len(X) for X in mine] == [len(X) for X in arrow]
        for a, b in zip(arrow, mine):
            np.testing.assert_array_equal(b, a)


def test_columns_it_does_not_decode_are_arrows_in_the_same_matrix(tmp_path):
    """Dictionary pages, integer and float32 columns and a required (non-nullable) column in
    one file: the plain float columns are decoded, the others read by Arrow, row group by row
    group, into the same matrices."""
    t = _table()
    t = t.set_column(1, "x1", pa.array(np.arange(3000) * 3 - 7, pa.int64()))  # Arrow: cast
    t = t.set_column(2, "x2", t.column("x2").cast(pa.float32()))  # decoded, cast as Arrow casts
    schema = t.schema.set(4, pa.field("x4", pa.float64(), nullable=False))  # no def levels
    path = tmp_path / "mixed.parquet"
    part = _write(t.cast(schema), path, use_dictionary=["x3"])
    assert _decoded(path) == [[1, 3]] * 5  # 3000 rows in row groups of 700
    for batch_size in (256, 1000):
        arrow, mine = _both(part, batch_size)
        assert [len(X) for X in mine] == [len(X) for X in arrow]
        np.testing.assert_array_equal(np.concatenate(mine), np.concatenate(arrow))
    # the sample pass's rows drawn: decoded columns and Arrow's alike
    local = np.array([0, 699, 700, 1500, 2999])
    picked = list(ooc.iter_picked(part, FEATS, 1000, local))
    assert [n for n, _ in picked] == [700] * 4 + [200]
    np.testing.assert_array_equal(
        np.concatenate([r for _, r in picked]), np.concatenate(arrow)[local]
    )


def test_a_file_of_dictionary_pages_only_keeps_arrows_streaming_reader(tmp_path):
    part = _write(_table(), tmp_path / "d.parquet", use_dictionary=True)
    assert ooc._plain_blocks(part, FEATS) is None
    arrow, mine = _both(part, 1000)
    np.testing.assert_array_equal(np.concatenate(mine), np.concatenate(arrow))


def test_nulls_and_nan_are_refused_naming_the_column(tmp_path):
    t = _table()
    nulls = t.set_column(3, "x3", pa.array([1.0] * 2500 + [None] + [2.0] * 499, pa.float64()))
    part = _write(nulls, tmp_path / "n.parquet")
    assert _decoded(tmp_path / "n.parquet")[3] == [3]  # the row group with the null: Arrow
    with pytest.raises(DataError, match="column 'x3' has missing values"):
        list(ooc.iter_batches(part, FEATS, 1000, reuse=True))
    with pytest.raises(DataError, match="column 'x3' has missing values"):
        list(ooc.iter_picked(part, FEATS, 1000, np.array([0])))  # refused, drawn or not
    x2 = t.column("x2").to_numpy().copy()
    x2[1234] = np.nan
    part = _write(t.set_column(2, "x2", pa.array(x2)), tmp_path / "nan.parquet")
    with pytest.raises(DataError, match="column 'x2' has NaN or infinite values"):
        list(ooc.iter_batches(part, FEATS, 1000, reuse=True))
    # the sample pass checks only the rows it decodes (the other passes check every row)
    assert sum(len(r) for _, r in ooc.iter_picked(part, FEATS, 1000, np.array([5, 2000]))) == 2
    with pytest.raises(DataError, match="column 'x2' has NaN or infinite values"):
        list(ooc.iter_picked(part, FEATS, 1000, np.array([1234])))


def test_picked_rows_are_the_rows_at_those_numbers(tmp_path):
    t = _table(5000)
    part = _write(t, tmp_path / "p.parquet", row_group_size=900)
    X = np.column_stack([t.column(c).to_numpy() for c in FEATS])
    local = np.array([0, 1, 899, 900, 2500, 4999])
    out = list(ooc.iter_picked(part, FEATS, 1000, local))
    assert [n for n, _ in out] == [900] * 5 + [500]  # a row group at a time
    assert all(r.flags.f_contiguous for _, r in out)
    np.testing.assert_array_equal(np.concatenate([r for _, r in out]), X[local])


def test_batches_are_reused_only_when_asked(tmp_path):
    part = _write(_table(), tmp_path / "r.parquet")
    first, second = [b.X for b in ooc.iter_batches(part, FEATS, 1000, reuse=True)][:2]
    assert np.shares_memory(first, second)  # one matrix, reused
    kept = [b.X for b in ooc.iter_batches(part, FEATS, 1000)]
    assert not any(np.shares_memory(a, b) for a, b in zip(kept, kept[1:]))


def test_a_row_group_larger_than_the_limit_is_streamed_by_arrow(tmp_path, monkeypatch):
    part = _write(_table(), tmp_path / "big.parquet")
    monkeypatch.setattr(pages, "MAX_BLOCK_BYTES", 700 * 5 * 8 - 1)
    assert ooc._plain_blocks(part, FEATS) is None
    monkeypatch.setattr(pages, "MAX_BLOCK_BYTES", 700 * 5 * 8)
    assert ooc._plain_blocks(part, FEATS) is not None


def test_a_page_it_cannot_read_leaves_the_column_to_arrow(tmp_path, monkeypatch):
    part = _write(_table(), tmp_path / "u.parquet")
    real, calls = pages._pages, []

    def odd(b, max_def):
        calls.append(len(b))
        if len(calls) % 3 == 0:  # every third column chunk: an unknown page
            raise pages.Unsupported("page type 9")
        return real(b, max_def)

    monkeypatch.setattr(pages, "_pages", odd)
    assert any(_decoded(tmp_path / "u.parquet"))
    arrow, mine = _both(part, 1000)
    np.testing.assert_array_equal(np.concatenate(mine), np.concatenate(arrow))


def test_each_row_group_is_unmapped_when_decoded(tmp_path):
    path = tmp_path / "m.parquet"
    part = _write(_table(20_000), path, row_group_size=5000)
    for _ in ooc.iter_batches(part, FEATS, 1000, reuse=True):
        maps = Path("/proc/self/maps")
        if maps.exists():
            assert sum(str(path) in line for line in maps.read_text().splitlines()) <= 1
    if Path("/proc/self/maps").exists():
        assert str(path) not in Path("/proc/self/maps").read_text()
    assert mmap.ALLOCATIONGRANULARITY > 0


def test_definition_levels_all_defined_or_not():
    ones = lambda n: bytes([n << 1, 1])  # noqa: E731 - an RLE run of n ones
    assert pages._all_defined(ones(20), 20)
    assert not pages._all_defined(bytes([20 << 1, 0]), 20)  # a run of zeros: nulls
    assert not pages._all_defined(ones(10), 20)  # too few levels
    assert pages._all_defined(ones(10) + ones(10), 20)
    # bit-packed: one group of 8 values, then a run; a partial last group counts its low bits
    assert pages._all_defined(bytes([(1 << 1) | 1, 0xFF]) + ones(4), 12)
    assert pages._all_defined(bytes([(1 << 1) | 1, 0x1F]), 5)
    assert not pages._all_defined(bytes([(1 << 1) | 1, 0xEF]), 8)


def test_thrift_skips_what_it_does_not_read():
    """A page header with fields the decoder skips (a list of booleans, a map, a nested
    struct, a double, binary) still yields the fields it reads; a truncated one raises."""
    header = bytes(
        [0x15, 0x00]  # 1: type 0 (i32 zigzag)
        + [0x15, 0x10]  # 2: uncompressed size 8
        + [0x15, 0x10]  # 3: compressed size 8
        + [0x19, 0x31, 0x01, 0x02, 0x01]  # 4 (list): three booleans, a byte each
        + [0x1B, 0x01, 0x58, 0x02, 0x00]  # 5 (map): one i32 -> binary entry
        + [0x17]
        + [0] * 8  # 6: a double
        + [0x1C, 0x18, 0x01, 0x61, 0x00]  # 7 (struct): a binary field
        + [0x1C, 0x15, 0x04, 0x15, 0x00, 0x00]  # 8 (struct): data_page_header_v2 fields 1, 2
        + [0x00]
    )
    got, end = pages._struct(header, 0, pages._HEADER)
    assert end == len(header)
    assert got[1] == 0 and got[2] == 8 and got[3] == 8 and got[8] == {1: 2, 2: 0}
    with pytest.raises(IndexError):
        pages._struct(header[:-3], 0, pages._HEADER)


def test_a_struct_child_with_a_features_dotted_name_is_not_read_for_it(tmp_path):
    """A top-level column named ``s.x`` beside a struct ``s`` with a child ``x``: both leaves'
    paths are ``s.x``; the feature is the top-level column, as Arrow reads it."""
    t = pa.table(
        {
            "s.x": pa.array(np.arange(8.0)),
            "s": pa.array([{"x": -99.0}] * 8, pa.struct([pa.field("x", pa.float64(), False)])),
        }
    )
    path = tmp_path / "dots.parquet"
    pq.write_table(t, path, use_dictionary=False)
    part = ooc.plan_partitions(inspect_source(str(path)))[0]
    arrow, mine = _both(part, 4, ["s.x"])
    np.testing.assert_array_equal(np.concatenate(mine), np.arange(8.0)[:, None])
    np.testing.assert_array_equal(np.concatenate(arrow), np.arange(8.0)[:, None])


def test_corrupt_headers_and_pages_are_left_to_arrow_not_looped_on(tmp_path):
    huge = bytes([0x19, 0xF7]) + bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x7F])  # a list of 2^35 doubles
    with pytest.raises(pages.Unsupported):
        pages._struct(huge + bytes(64), 0, pages._HEADER)
    bool_map = bytes([0x1B, 0x02, 0x11, 0x01, 0x00, 0x01, 0x01, 0x00])  # {true: false, ...}
    assert pages._struct(bool_map, 0, {})[1] == len(bool_map)
    with pytest.raises(pages.Unsupported):
        pages._struct(bytes([0x1C] * 40), 0, pages._HEADER)  # structs nested 40 deep
    # a data page whose snappy stream is corrupt: Arrow's reader reports it, as before
    path = tmp_path / "bad.parquet"
    part = _write(_table(), path)
    rgs = pages.RowGroups(str(path), FEATS)
    chunk = rgs.meta.row_group(1).column(2)
    rgs.close()
    raw = bytearray(path.read_bytes())
    at = pages._struct(bytes(raw), chunk.data_page_offset, pages._HEADER)[1]  # the page's data
    raw[at : at + 8] = b"\xff" * 8  # snappy's length preamble and first tag
    path.write_bytes(bytes(raw))
    assert _decoded(path)[1] == [2]  # the decompressor's error: the chunk left to Arrow
    with pytest.raises(OSError) as arrow:
        list(ooc.iter_batches(part, FEATS, 1000))
    with pytest.raises(OSError) as mine:
        list(ooc.iter_batches(part, FEATS, 1000, reuse=True))
    assert str(mine.value) == str(arrow.value)


def test_a_required_columns_level_encoding_is_not_read():
    """parquet-mr writes BIT_PACKED as the (absent) level encoding of a required column."""
    header = bytes(
        [0x15, 0x00, 0x15, 0x20, 0x15, 0x20]  # DATA_PAGE, 16 bytes, 16 bytes
        + [0x2C, 0x15, 0x04, 0x15, 0x00, 0x15, 0x08, 0x15, 0x08, 0x00]  # 2 values PLAIN, BIT_PACKED
        + [0x00]
    )
    page = memoryview(header + np.array([1.5, -2.0]).tobytes())
    assert [p[:2] for p in pages._pages(page, max_def=0)] == [(0, 2)]
    with pytest.raises(pages.Unsupported):
        pages._pages(page, max_def=1)
