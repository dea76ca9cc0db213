"""Multi-worker xgboost reads its shards itself (no Ray Data): each worker's rows are a
contiguous slice of the units, the slices cover every row once, differ by at most one row and
are the same on every attempt."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distml.jobs.xgboost.distributed import ROW, SPLIT, Plan, read_units, shard_units
from distml.runtime.data import inspect_source
from distml.runtime.plan import by_rows as plan_rows


def _units(rows: list[int]) -> list[dict]:
    return [{"part": {"rows": n, "offset": i}, "code": None} for i, n in enumerate(rows)]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("rows", [[569], [262_144] * 3 + [100_000, 5, 40_000], [1, 1, 7]])
def test_shards_are_equal_contiguous_and_cover_every_row_once(world, rows):
    units = _units(rows)
    shards = [shard_units(units, r, world) for r in range(world)]
    starts = np.cumsum([0] + rows)
    covered = []
    for shard in shards:
        for u in shard:
            lo, hi = u["slice"]
            assert 0 <= lo < hi <= u["part"]["rows"]
            covered.extend(
                range(starts[u["part"]["offset"]] + lo, starts[u["part"]["offset"]] + hi)
            )
    assert covered == list(range(sum(rows)))  # every row once, in order, rank after rank
    sizes = [sum(u["slice"][1] - u["slice"][0] for u in s) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # no worker without rows (xgboost's collective)
    assert shards == [shard_units(units, r, world) for r in range(world)]  # same every attempt


def test_one_unit_is_sliced_between_two_workers():
    units = _units([569])
    assert [u["slice"] for u in shard_units(units, 0, 2)] == [(0, 284)]
    assert [u["slice"] for u in shard_units(units, 1, 2)] == [(284, 569)]


def test_read_units_tags_rows_and_split_and_keeps_a_slice(tmp_path):
    frame = pd.DataFrame({"a": np.arange(6.0), "b": np.arange(6) % 2 == 0, "y": np.arange(6)})
    path = tmp_path / "d.parquet"
    frame.to_parquet(path, row_group_size=3)
    part = plan_rows(inspect_source(str(path)), 3)[1]  # the second row group: rows 3..5
    plan = Plan("regression", None, {}, ["a", "b"], [], {"train": 6}, 6)
    codes = np.array([0, 1, 0, 1, 2, 0], dtype=np.int8)
    out = read_units([{"part": part.to_dict(), "code": None}], plan, codes, "y")
    assert out[ROW].tolist() == [3, 4, 5] and out[SPLIT].tolist() == [1, 2, 0]
    assert out["a"].tolist() == [3.0, 4.0, 5.0] and out["b"].dtype == np.int8
    sliced = read_units([{"part": part.to_dict(), "code": None, "slice": (1, 3)}], plan, codes, "y")
    assert sliced[ROW].tolist() == [4, 5] and sliced["a"].tolist() == [4.0, 5.0]


def _mixed_source(tmp_path) -> str:
    """Three files: floats with NaN, an integer column that has nulls in one file only (a
    nullable pandas column in two, a plain Arrow int64 in the other), a boolean column, and
    row groups of 4 so units and slices cross files."""
    rng = np.random.default_rng(11)
    for i, n in enumerate([10, 7, 9]):
        ints = pd.array(rng.integers(-(2**40), 2**40, n), dtype="Int64")
        if i == 1:
            ints[2] = pd.NA
        frame = pd.DataFrame(
            {
                "f": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n) * 1e5),
                "i": ints,
                "b": rng.random(n) < 0.5,
                "nb": pd.array(rng.random(n) < 0.5, dtype="boolean"),  # nullable, no nulls
                "small": rng.integers(0, 5, n).astype(np.int32),
                "y": rng.integers(0, 2, n),
            }
        )
        if i == 1:  # as another writer leaves it: no pandas metadata (int64 with a null)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            pq.write_table(table.replace_schema_metadata(None), tmp_path / "p1.parquet", 4)
        else:
            frame.to_parquet(tmp_path / f"p{i}.parquet", row_group_size=4)
    return str(tmp_path / "*.parquet")


@pytest.mark.parametrize("world", [1, 2, 3])
def test_a_numeric_shard_is_read_straight_into_the_values_the_frame_path_gives(tmp_path, world):
    from distml.jobs.xgboost.distributed import read_matrix

    info = inspect_source(_mixed_source(tmp_path))
    parts = plan_rows(info, 4)
    units = [{"part": p.to_dict(), "code": None} for p in parts]
    features = ["small", "f", "i", "b", "nb"]  # not in file order
    plan = Plan("classification", [0, 1], {}, features, units, {"train": 26}, 26)
    codes = np.zeros(26, dtype=np.int8)
    for rank in range(world):
        mine = shard_units(units, rank, world)
        frame = read_units(mine, plan, codes, "y")
        matrix = read_matrix(mine, plan)
        assert matrix is not None
        assert matrix.columns.dtype == np.float32 and matrix.columns.flags.c_contiguous
        np.testing.assert_array_equal(matrix.rows, frame[ROW].to_numpy())
        np.testing.assert_array_equal(
            matrix.columns.T, frame[features].to_numpy(dtype=np.float64).astype(np.float32)
        )
        assert dict(matrix.header.dtypes) == dict(frame[features].dtypes)
        assert len(matrix.header) == 0


def test_the_matrix_trains_the_same_model_as_the_frame_to_the_byte(tmp_path):
    import xgboost as xgb

    from distml.jobs.xgboost.distributed import read_frame_shard, read_matrix

    rng = np.random.default_rng(2)
    n = 3000
    frame = pd.DataFrame(
        {
            "a": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
            "k": rng.integers(0, 50, n),
            "b": rng.random(n) < 0.3,
        }
    )
    frame["y"] = ((frame["a"].fillna(0) + frame["k"] / 25 + frame["b"]) > 1.2).astype(int)
    frame.to_parquet(tmp_path / "d.parquet", row_group_size=700)
    units = [
        {"part": p.to_dict(), "code": None}
        for p in plan_rows(inspect_source(str(tmp_path / "d.parquet")), 700)
    ]
    plan = Plan("classification", [0, 1], {}, ["a", "k", "b"], units, {"train": n}, n)
    codes = np.zeros(n, dtype=np.int8)
    mine = shard_units(units, 1, 2)
    matrix, typed = read_matrix(mine, plan), read_frame_shard(mine, plan, codes, "y")
    assert matrix.feature_types() == ["float", "int", "int"]
    y = frame["y"].to_numpy()[matrix.rows]
    mask = np.arange(len(y)) % 4 != 0
    params = {"objective": "binary:logistic", "max_depth": 4, "nthread": 1, "seed": 0}
    models = [
        bytes(xgb.train(params, s.dmatrix(mask, label=y[mask], nthread=1), 15).save_raw("ubj"))
        for s in (matrix, typed)
    ]
    assert models[0] == models[1]


@pytest.mark.parametrize("column", ["text", "nullable bool", "categorical"])
def test_features_that_are_not_plain_numbers_are_read_as_a_frame(tmp_path, column):
    from distml.jobs.xgboost.distributed import read_matrix

    frame = pd.DataFrame({"a": np.arange(6.0), "y": np.arange(6) % 2})
    categories = {}
    if column == "text":
        frame["c"] = list("abcabc")
    elif column == "nullable bool":
        frame["c"] = pd.array([True, None, False, True, False, True], dtype="boolean")
    else:
        frame["c"] = list("abcabc")
        categories = {"c": ["a", "b", "c"]}
    frame.to_parquet(tmp_path / "d.parquet")
    units = [
        {"part": p.to_dict(), "code": None}
        for p in plan_rows(inspect_source(str(tmp_path / "d.parquet")), 6)
    ]
    plan = Plan("classification", [0, 1], categories, ["a", "c"], units, {"train": 6}, 6)
    assert read_matrix(units, plan) is None
