"""Multi-worker xgboost reads its shards itself (no Ray Data): each worker's rows are a
contiguous slice of the units, the slices cover every row once, differ by at most one row and
are the same on every attempt."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
