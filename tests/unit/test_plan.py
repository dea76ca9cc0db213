"""The one planner and the one reader (distml.runtime.plan / distml.runtime.read), without a
cluster: every plan covers every row of the source exactly once, in order; row groups are never
split; projection returns only the columns asked for; batches are bounded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distml.runtime import datasets, plan
from distml.runtime.data import inspect_source, read_frame
from distml.runtime.read import csv_range, iter_tables, open_input, read_partition, recut


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"row": np.arange(n), "x": rng.normal(size=n), "s": [f"v{i % 7}" for i in range(n)]}
    )


def _write(df: pd.DataFrame, path, row_group_size: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group_size
    )


@pytest.fixture
def parquet_dir(tmp_path):
    """Three files of 700, 1 and 1299 rows in row groups of 100 (2,000 rows in all)."""
    df = _frame(2000)
    _write(df.iloc[:700], tmp_path / "d" / "a.parquet", 100)
    _write(df.iloc[700:701], tmp_path / "d" / "b.parquet", 100)
    _write(df.iloc[701:], tmp_path / "d" / "c" / "d.parquet", 100)
    return tmp_path / "d", df


def _rows_read(parts, columns=("row",)) -> np.ndarray:
    return np.concatenate([read_partition(p, list(columns))["row"].to_numpy() for p in parts])


@pytest.mark.parametrize(
    "rows,at_least",
    [(250, False), (250, True), (100, False), (99, True), (10**9, False), (1, True)],
)
def test_by_rows_covers_every_row_once_in_whole_row_groups(parquet_dir, rows, at_least):
    folder, df = parquet_dir
    info = inspect_source(str(folder))
    parts = plan.by_rows(info, rows, at_least=at_least)
    np.testing.assert_array_equal(_rows_read(parts), df["row"].to_numpy())
    assert [p.index for p in parts] == list(range(len(parts)))
    offsets = np.cumsum([0] + [p.rows for p in parts])[:-1]
    assert [p.offset for p in parts] == offsets.tolist()
    for p in parts:
        assert len(p.pieces) == 1  # never across files
        meta = pq.ParquetFile(p.path).metadata
        assert p.rows == sum(meta.row_group(g).num_rows for g in p.row_groups)
        if at_least:  # closes once it holds `rows`: only a file's last run may hold fewer
            last = p.row_groups[-1] == meta.num_row_groups - 1
            assert p.rows >= rows or last
            assert p.rows - meta.row_group(p.row_groups[-1]).num_rows < rows
        else:  # never more than `rows` unless one row group is bigger
            assert p.rows <= max(rows, 100)


def test_by_rows_names_and_offsets(parquet_dir):
    folder, _ = parquet_dir
    info = inspect_source(str(folder))
    parts = plan.by_rows(info, 300, offset=5000)
    assert [p.name for p in parts] == [
        "a-rg00000",
        "a-rg00003",
        "a-rg00006",
        "b",
        "c/d-rg00000",
        "c/d-rg00003",
        "c/d-rg00006",
        "c/d-rg00009",
        "c/d-rg00012",
    ]
    assert parts[0].offset == 5000 and parts[3].offset == 5700
    assert [p.name for p in plan.by_rows(info, 10**6)] == ["a", "b", "c/d"]


@pytest.mark.parametrize("n_parts", [1, 2, 4, 16])
def test_by_count_covers_every_row_once(parquet_dir, n_parts):
    folder, df = parquet_dir
    info = inspect_source(str(folder))
    for max_bytes in (None, 2000):
        parts = plan.by_count(info, n_parts, max_bytes)
        np.testing.assert_array_equal(_rows_read(parts), df["row"].to_numpy())
        if max_bytes:  # split inside files, by whole row groups
            assert len(parts) > 3 and all(len(p.pieces) == 1 for p in parts)


def test_by_count_groups_small_files(tmp_path):
    df = _frame(300)
    for i in range(30):
        _write(df.iloc[i * 10 : (i + 1) * 10], tmp_path / f"p{i:02d}.parquet", 100)
    parts = plan.by_count(inspect_source(str(tmp_path)), 2)
    assert len(parts) == 8  # at most 4 per partition wanted, each whole files
    assert all(p.row_groups is None for piece in parts for p in piece.pieces)
    np.testing.assert_array_equal(_rows_read(parts), df["row"].to_numpy())


def test_projection_returns_only_the_columns_asked(parquet_dir, tmp_path):
    folder, df = parquet_dir
    part = plan.by_rows(inspect_source(str(folder)), 250)[0]
    assert list(read_partition(part, ["x"]).columns) == ["x"]
    for t in iter_tables(part, ["s", "row"], 64):
        assert t.schema.names == ["s", "row"]
    df.to_csv(tmp_path / "a.csv", index=False)
    csv = plan.by_rows(inspect_source(str(tmp_path / "a.csv")), 250)[0]
    assert list(read_partition(csv, ["x"]).columns) == ["x"]
    virtual = plan.by_rows(inspect_source("synthetic:blobs?rows=300&features=3"), 10)[0]
    assert list(read_partition(virtual, ["x1", "target"]).columns) == ["x1", "target"]


@pytest.mark.parametrize("batch", [1, 37, 100, 5000])
def test_batches_are_bounded_and_in_order(parquet_dir, tmp_path, batch):
    folder, df = parquet_dir
    info = inspect_source(str(folder))
    got = []
    for p in plan.by_rows(info, 250):
        for t in iter_tables(p, ["row"], batch):
            assert 0 < t.num_rows <= batch
            got.append(t.column("row").to_numpy())
    np.testing.assert_array_equal(np.concatenate(got), df["row"].to_numpy())
    df.to_csv(tmp_path / "a.csv", index=False)
    csv = plan.by_rows(inspect_source(str(tmp_path / "a.csv")), 250)
    sizes = [t.num_rows for p in csv for t in iter_tables(p, ["row"], batch)]
    assert sum(sizes) == len(df) and max(sizes) <= batch


@pytest.mark.parametrize("batch", [1, 37, 100, 256, 5000])
def test_mapped_batches_are_cut_as_one_reader_over_the_file_cuts_them(tmp_path, batch):
    """A local parquet file is read memory-mapped, one row group at a time; its batches are
    the same rows as pyarrow's own reader over the whole file (row groups of 100 rows, batches
    that span them), for a whole file, a file:// URL and a subset of its row groups."""
    df = _frame(1299)
    path = tmp_path / "d.parquet"
    _write(df, path, 100)
    pf = pq.ParquetFile(path)
    whole = [b.column("row").to_numpy() for b in pf.iter_batches(batch_size=batch, columns=["row"])]
    subset = [
        b.column("row").to_numpy()
        for b in pf.iter_batches(batch_size=batch, row_groups=[3, 4, 5], columns=["row"])
    ]
    for source, groups, want in (
        (str(path), None, whole),
        (path.as_uri(), None, whole),
        (str(path), (3, 4, 5), subset),
    ):
        part = plan.Partition(0, source, "parquet", (plan.Piece(source, groups),))
        got = [t.column("row").to_numpy() for t in iter_tables(part, ["row", "x"], batch)]
        assert [len(g) for g in got] == [len(w) for w in want]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_recut_makes_exact_batches_without_copying():
    batches = [pa.record_batch({"a": np.arange(lo, hi)}) for lo, hi in ((0, 5), (5, 6), (6, 13))]
    got = list(recut(iter(batches), 4))
    assert [t.num_rows for t in got] == [4, 4, 4, 1]
    assert [len(t.column("a").chunks) for t in got] == [1, 3, 1, 1]  # slices, not copies
    np.testing.assert_array_equal(
        np.concatenate([t.column("a").to_numpy() for t in got]), np.arange(13)
    )
    assert list(recut(iter([]), 4)) == []


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 10**6])
def test_csv_byte_ranges_cover_every_line_once(tmp_path, chunk):
    df = _frame(523)
    path = tmp_path / "a.csv"
    df.to_csv(path, index=False)
    info = inspect_source(str(path))
    parts = plan.by_rows(info, 10**6, csv_bytes=chunk)
    size = path.stat().st_size
    assert len(parts) == -(-size // chunk)
    whole = pd.concat([read_partition(p, ["row", "s"]) for p in parts], ignore_index=True)
    np.testing.assert_array_equal(whole["row"].to_numpy(), df["row"].to_numpy())
    assert whole["s"].tolist() == df["s"].tolist()
    streamed = np.concatenate(
        [t.column("row").to_numpy() for p in parts for t in iter_tables(p, ["row"], 50)]
        or [np.zeros(0)]
    )
    np.testing.assert_array_equal(streamed, df["row"].to_numpy())


def test_csv_range_at_line_boundaries(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"h\n1\n22\n333\n")  # data lines start at bytes 2, 4, 7
    with open_input(str(path)) as fh:
        assert csv_range(fh, 0, 4) == b"h\n1\n"
    with open_input(str(path)) as fh:
        assert csv_range(fh, 4, 7) == b"h\n22\n"
    with open_input(str(path)) as fh:
        assert csv_range(fh, 5, 11) == b"h\n333\n"
    with open_input(str(path)) as fh:
        assert csv_range(fh, 8, 11) == b"h\n"


@pytest.mark.parametrize(
    "source",
    [
        "synthetic:regression?rows=150000&features=3&seed=2",
        "synthetic:timeseries?rows=70000&series=3",
        "builtin:iris",
    ],
)
def test_virtual_row_ranges_equal_the_whole_source(source):
    info = inspect_source(source)
    whole = read_frame(source)
    parts = plan.by_rows(info, 10**9, virtual_rows=datasets.BLOCK_ROWS)
    if datasets.reads_row_ranges(source):
        assert len(parts) == -(-info.rows // datasets.BLOCK_ROWS)
    else:
        assert len(parts) == 1 and parts[0].row_range is None
    cols = list(whole.columns)
    got = pd.concat([read_partition(p, cols) for p in parts], ignore_index=True)
    pd.testing.assert_frame_equal(got, whole)
    assert sum(p.rows for p in parts) == len(whole)
    pd.testing.assert_frame_equal(
        datasets.read_rows(source, 100, 140), whole.iloc[100:140].reset_index(drop=True)
    )


def test_partitions_travel_as_json(parquet_dir):
    import json

    folder, _ = parquet_dir
    for p in plan.by_rows(inspect_source(str(folder)), 250) + plan.by_rows(
        inspect_source("synthetic:blobs?rows=70000"), 1, virtual_rows=65536
    ):
        assert plan.Partition.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_open_input_reads_local_paths_and_file_urls(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    for name in (str(path), f"file://{path}"):
        with open_input(name) as fh:
            assert fh.read() == b"abc"


def test_whole_sources_and_partitions_read_gzipped_csv_and_name_a_bad_file(tmp_path):
    from distml.errors import DataError

    df = _frame(50)
    df.to_csv(tmp_path / "a.csv.gz", index=False)
    source = str(tmp_path / "a.csv.gz")
    pd.testing.assert_frame_equal(read_frame(source, ["row", "s"]), df[["row", "s"]])
    part = plan.by_rows(inspect_source(source), 10)[0]
    pd.testing.assert_frame_equal(read_partition(part, ["row", "s"]), df[["row", "s"]])
    (tmp_path / "bad.csv").write_bytes(b"a,b\n1,2\n3,\xff\n")
    bad = plan.files_partition(str(tmp_path), [str(tmp_path / "bad.csv")], "csv")
    with pytest.raises(DataError, match=r"file '.*bad\.csv' is not readable CSV \(not utf-8 text "):
        read_partition(bad, ["a", "b"])
