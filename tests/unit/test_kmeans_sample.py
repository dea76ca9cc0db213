"""k-means' sample pass when row counts are known: the driver draws the sample's row numbers
(``ooc.draw``), each task decodes only the rows drawn in its partition (``ooc.iter_picked``), and
the first mini-batch pass measures the rows' spread for the tolerance (``Spread``) — against
numpy on the same rows, without a cluster.

Tolerances: the sampled rows are the drawn rows bit for bit; the spread's mean feature variance
is numpy's to 1e-12 relative (data offset 30 standard deviations from 0, as ``_frame`` makes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distml.errors import DataError
from distml.jobs import _out_of_core as ooc
from distml.jobs import kmeans as K
from distml.jobs.kmeans.model import Spread
from distml.runtime.data import inspect_source
from distml.runtime.tasks import merge_all

FEATS = [f"x{i}" for i in range(6)]


def _frame(n=5000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(0, 30, d)
    return pd.DataFrame(X, columns=[f"x{i}" for i in range(d)])


def _parquet(df, path, row_group_size=700):
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group_size
    )
    return inspect_source(str(path))


def _sample(plan, positions, m, keep=False, moments=False, batch_size=256):
    """The sample pass's tasks run in turn, merged as the driver merges them; and the batches
    the tasks yielded (kept: copies, as the object store takes them before the task resumes)."""
    states, kept = [], []
    for part in plan:
        task = K._sample_task(part, FEATS, batch_size, m, 1.0, 0, keep, positions, moments, None)
        *batches, state = (x.copy() if isinstance(x, np.ndarray) else x for x in task)
        kept += batches
        states.append(state)
    return merge_all(*states), kept


def test_draw_is_a_uniform_sample_without_replacement_in_random_order():
    d = ooc.draw(10_000, 900, seed=3)
    assert len(d) == len(np.unique(d)) == 900 and d.min() >= 0 and d.max() < 10_000
    assert not np.all(np.diff(d) > 0)  # the sample's order is random, not the rows'
    np.testing.assert_array_equal(d, ooc.draw(10_000, 900, seed=3))
    assert not np.array_equal(d, ooc.draw(10_000, 900, seed=4))
    assert sorted(ooc.draw(50, 80, seed=0)) == list(range(50))  # asked for more: every row
    # every row as likely as any other: 2,000 draws of 5 of 20 rows
    hits = np.bincount(np.concatenate([ooc.draw(20, 5, seed=s) for s in range(2000)]), minlength=20)
    assert hits.sum() == 10_000 and abs(hits - 500).max() < 5 * np.sqrt(500 * 0.75)
    # the first draw of each: uniform over the rows too (a prefix is itself a uniform sample)
    first = np.bincount([ooc.draw(20, 5, seed=s)[0] for s in range(2000)], minlength=20)
    assert abs(first - 100).max() < 5 * np.sqrt(100 * 0.95)


def test_picks_are_the_positions_inside_a_partition_in_reading_order():
    positions = np.array([17, 3, 250, 99, 100, 5])
    local, ranks = ooc.picks(positions, offset=3, rows=97)  # rows 3..99
    assert local.tolist() == [0, 2, 14, 96] and ranks.tolist() == [1, 5, 0, 3]
    local, ranks = ooc.picks(positions, offset=100, rows=1000)
    assert local.tolist() == [0, 150] and ranks.tolist() == [4, 2]


@pytest.mark.parametrize("partition_rows", [700, 2100, None])
def test_the_sample_is_the_drawn_rows_however_the_data_is_split(tmp_path, partition_rows):
    df = _frame(5000)
    df["x0"] = np.arange(5000, dtype=np.int32)  # cast to float64 in the sampled rows too
    X = df.to_numpy(dtype=np.float64)
    plan = ooc.plan_partitions(_parquet(df, tmp_path / "a.parquet"), partition_rows)
    assert len(plan) == {700: 8, 2100: 3, None: 1}[partition_rows]
    positions = ooc.draw(5000, 900, seed=1)
    got, kept = _sample(plan, positions, 900)
    assert kept == [] and got.rows == 5000 and got.moments.n == 0  # only the drawn rows decoded
    np.testing.assert_array_equal(got.sample.sorted_rows(), X[positions])
    # decoding every row (kept batches, or the moments for the scaler): the same sample
    full, kept = _sample(plan, positions, 900, keep=True, moments=True)
    np.testing.assert_array_equal(full.sample.sorted_rows(), X[positions])
    np.testing.assert_array_equal(np.concatenate(kept), X)
    np.testing.assert_allclose(full.moments.variance, X.var(axis=0), rtol=1e-12)
    assert [m["rows"] for m in got.meta] == [p.rows for p in plan]


def test_picked_rows_are_decoded_from_large_batches_and_checked(tmp_path):
    df = _frame(3000)
    X = df.to_numpy()
    part = ooc.plan_partitions(_parquet(df, tmp_path / "a.parquet", row_group_size=1000))[0]
    local = np.array([0, 5, 999, 1000, 2999])
    out = list(ooc.iter_picked(part, FEATS, 1000, local))
    assert [n for n, _ in out] == [1000, 1000, 1000]
    np.testing.assert_array_equal(np.concatenate([r for _, r in out]), X[local])
    assert all(r.flags.f_contiguous for _, r in out)
    assert [len(r) for _, r in out] == [3, 1, 1]
    assert [len(r) for _, r in ooc.iter_picked(part, FEATS, 1000, np.array([1500]))] == [0, 1, 0]
    # NaN in a drawn row: the column named; in a row not drawn: left to the passes that decode it
    df.loc[5, "x3"] = np.inf
    part = ooc.plan_partitions(_parquet(df, tmp_path / "b.parquet", row_group_size=1000))[0]
    with pytest.raises(DataError, match="column 'x3' has NaN or infinite values"):
        list(ooc.iter_picked(part, FEATS, 1000, local))
    assert len(list(ooc.iter_picked(part, FEATS, 1000, np.array([6, 2000])))) == 3
    # a null anywhere in a batch read is refused at once, drawn or not
    t = pa.Table.from_pandas(_frame(3000), preserve_index=False)
    t = t.set_column(1, "x1", pa.array([None] + [1.0] * 2999, pa.float64()))
    pq.write_table(t, tmp_path / "c.parquet", row_group_size=1000)
    part = ooc.plan_partitions(inspect_source(str(tmp_path / "c.parquet")))[0]
    with pytest.raises(DataError, match="column 'x1' has missing values"):
        list(ooc.iter_picked(part, FEATS, 1000, np.array([2000])))


def test_a_partition_that_changed_since_planning_is_refused(tmp_path):
    df = _frame(2000)
    plan = ooc.plan_partitions(_parquet(df, tmp_path / "a.parquet"))
    _parquet(df.iloc[:1500], tmp_path / "a.parquet")  # rewritten after the plan
    with pytest.raises(DataError, match="has 1500 rows, not the 2000 planned"):
        _sample(plan, ooc.draw(2000, 100, seed=0), 100)


def test_the_minibatch_steps_spread_is_the_rows_variance():
    """The tolerance's mean feature variance from the mini-batch steps' column sums and squared
    norms, merged over batches and partitions, is numpy's over the same rows."""
    X = _frame(6000).to_numpy()
    centers, counts = X[:4].copy(), np.zeros(4)
    parts = []
    for rows in np.array_split(X, 3):  # three partitions of uneven batches
        spread = Spread(0, np.zeros(6), 0.0)
        for b in np.array_split(rows, 7):
            *_, sp = K.minibatch_step(np.asfortranarray(b.copy()), centers, counts)
            spread = spread.merge(sp)
        parts.append(spread)
    got = parts[2].merge(parts[0].merge(parts[1]))
    assert got.n == 6000
    np.testing.assert_allclose(got.mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got.mean_variance, X.var(axis=0).mean(), rtol=1e-12)
    assert Spread.of_batch(0, np.zeros(6), 0.0).merge(got) is got
