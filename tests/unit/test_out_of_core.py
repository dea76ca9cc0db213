"""The out-of-core building blocks without a cluster: partitions, batches, mergeable states, and
the pca/kmeans numerics against scikit-learn on in-memory data.

Tolerances: the exact PCA is compared with scikit-learn ``PCA`` to 1e-9 relative on explained
variance and 1e-9 absolute on components (the issue asks 1e-6; it lands near 1e-14); one
mini-batch step is scikit-learn's ``partial_fit`` to 1e-10.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distml.errors import DataError, SpecError
from distml.jobs import _out_of_core as ooc
from distml.jobs import kmeans as K
from distml.jobs import pca as P
from distml.runtime.data import inspect_source
from distml.spec import load_spec

FEATS = [f"x{i}" for i in range(6)]


def _frame(n=5000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(0, 30, d)
    return pd.DataFrame(X, columns=[f"x{i}" for i in range(d)])


def _write(df, path, row_group_size=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group_size
    )
    return path


def _moments(X, pieces=7, full=True):
    mom = ooc.Moments.empty(X.shape[1], full)
    for chunk in np.array_split(X, pieces):
        mom = mom.merge(ooc.Moments.empty(X.shape[1], full).add(np.asfortranarray(chunk.copy())))
    return mom


# ------------------------------------------------------------------ partitions and batches


def test_partitions_pack_row_groups_and_name_outputs(tmp_path):
    df = _frame(1000)
    _write(df.iloc[:600], tmp_path / "d" / "day=1" / "part-0.parquet", row_group_size=100)
    _write(df.iloc[600:], tmp_path / "d" / "day=2" / "part-0.parquet", row_group_size=100)
    info = inspect_source(str(tmp_path / "d"))
    parts = ooc.plan_partitions(info, partition_rows=250)
    # row groups of 100 packed to <= 250 rows, never across files
    assert [p.rows for p in parts] == [200, 200, 200, 200, 200]
    assert [p.row_groups for p in parts] == [(0, 1), (2, 3), (4, 5), (0, 1), (2, 3)]
    assert [p.name for p in parts] == [
        "day=1/part-0-rg00000",
        "day=1/part-0-rg00002",
        "day=1/part-0-rg00004",
        "day=2/part-0-rg00000",
        "day=2/part-0-rg00002",
    ]
    whole = ooc.plan_partitions(info)
    assert [p.name for p in whole] == ["day=1/part-0", "day=2/part-0"]
    virtual = ooc.plan_partitions(inspect_source("synthetic:blobs?rows=300&features=3"))
    assert len(virtual) == 1 and virtual[0].format == "virtual" and virtual[0].rows == 300


def test_batches_are_bounded_ordered_and_typed(tmp_path):
    df = _frame(1000)
    df["x0"] = np.arange(1000)  # an integer column is read as float64
    df["id"] = [f"r{i}" for i in range(1000)]
    _write(df, tmp_path / "a.parquet", row_group_size=300)
    part = ooc.plan_partitions(inspect_source(str(tmp_path / "a.parquet")))[0]
    batches = list(ooc.iter_batches(part, FEATS, 128, keep=["id", "x1"]))  # x1: also a feature
    assert max(len(b.X) for b in batches) <= 128
    X = np.concatenate([b.X for b in batches])
    np.testing.assert_array_equal(X, df[FEATS].to_numpy())
    assert all(b.X.flags.f_contiguous and b.X.dtype == np.float64 for b in batches)
    assert sum((b.keep.column("id").to_pylist() for b in batches), []) == df["id"].tolist()
    assert batches[0].keep.column_names == ["id", "x1"]
    # CSV and virtual sources stream the same way
    df.to_csv(tmp_path / "a.csv", index=False)
    part = ooc.plan_partitions(inspect_source(str(tmp_path / "a.csv")))[0]
    X = np.concatenate([b.X for b in ooc.iter_batches(part, FEATS, 100)])
    np.testing.assert_allclose(X, df[FEATS].to_numpy(), rtol=1e-15)
    part = ooc.plan_partitions(inspect_source("synthetic:blobs?rows=500&features=3"))[0]
    sizes = [len(b.X) for b in ooc.iter_batches(part, ["x0", "x1", "x2"], 64)]
    assert sum(sizes) == 500 and max(sizes) == 64


def test_float64_batches_are_one_arrow_copy_equal_to_the_column_path():
    """An all-float64 batch without nulls becomes the matrix in one Arrow ``to_tensor`` copy:
    the same values as the column-by-column copy, Fortran ordered and writeable (the moments
    centre batches in place); other batches take the column path (casts, named nulls)."""
    X = _frame(1000).to_numpy()
    t = pa.table({c: X[:, j] for j, c in enumerate(FEATS)})
    t = t.append_column("other", pa.array(np.arange(1000)))  # not a feature: left out
    fast = ooc._tensor(t, FEATS)
    assert fast is not None and fast.flags.f_contiguous and fast.flags.writeable
    np.testing.assert_array_equal(fast, X)
    np.testing.assert_array_equal(ooc._matrix(t, FEATS, "here"), X)
    np.testing.assert_array_equal(ooc._columns(t, FEATS, "here", None), X)
    assert ooc._tensor(t.slice(0, 0), FEATS) is None
    as_int = t.set_column(0, "x0", pa.array(np.arange(1000, dtype=np.int64)))
    assert ooc._tensor(as_int, FEATS) is None
    assert ooc._matrix(as_int, FEATS, "here")[:, 0].tolist() == list(range(1000))
    nulls = t.set_column(2, "x2", pa.array([None] + [1.0] * 999, pa.float64()))
    assert ooc._tensor(nulls, FEATS) is None
    with pytest.raises(DataError, match="column 'x2' has missing values in here"):
        ooc._matrix(nulls, FEATS, "here")


@pytest.mark.parametrize(
    "bad,expect",
    [
        (np.nan, "has NaN or infinite values"),
        (np.inf, "has NaN or infinite values"),
        (None, "has missing values"),
    ],
)
def test_bad_values_name_the_column_and_file(tmp_path, bad, expect):
    df = _frame(100)
    cols = {c: pa.array(df[c].to_numpy()) for c in FEATS}
    x3 = df["x3"].to_numpy().copy()
    x3[[5, 50]] = np.nan if bad is None else bad
    cols["x3"] = pa.array(x3, mask=np.isnan(x3) if bad is None else None)  # None: a null
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(cols), path)
    part = ooc.plan_partitions(inspect_source(str(path)))[0]
    with pytest.raises(DataError) as e:
        list(ooc.iter_batches(part, FEATS, 30))
    msg = str(e.value)
    assert f"column 'x3' {expect} in" in msg and "bad.parquet" in msg
    assert "(1 in the first batch of 30 rows with any)" in msg


@pytest.mark.parametrize(
    "n,size,min_last",
    [
        (1000, 128, 0),
        (1000, 128, 5),
        (1030, 128, 7),
        (1029, 128, 7),
        (1024, 128, 3),
        (100, 128, 3),
        (5, 128, 7),
    ],
)
def test_rechunk_cuts_like_gen_batches(n, size, min_last):
    from sklearn.utils import gen_batches

    X = np.arange(n, dtype=float)[:, None]
    pieces = [X[a:b] for a, b in zip([0, 17, 300, 301, 700], [17, 300, 301, 700, n]) if a < n]
    got = [len(b) for b in ooc.rechunk(iter(pieces), size, min_last)]
    want = [s.stop - s.start for s in gen_batches(n, size, min_batch_size=min_last)]
    assert got == want
    np.testing.assert_array_equal(
        np.concatenate(list(ooc.rechunk(iter(pieces), size, min_last))), X
    )


def test_prefetch_keeps_order_and_raises():
    assert list(ooc.prefetch(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        raise DataError("boom")

    with pytest.raises(DataError, match="boom"):
        list(ooc.prefetch(broken()))


# ------------------------------------------------------------------ mergeable states


def test_moments_merge_equals_numpy():
    X = _frame(3001).to_numpy()
    mom = _moments(X, pieces=13)
    assert mom.n == len(X)
    np.testing.assert_allclose(mom.mean, X.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(mom.m2 / (len(X) - 1), np.cov(X, rowvar=False), rtol=1e-11)
    diag = _moments(X, pieces=5, full=False)
    np.testing.assert_allclose(diag.variance, X.var(axis=0), rtol=1e-12)
    s = diag.scaler()
    from sklearn.preprocessing import StandardScaler

    sk = StandardScaler().fit(X)
    np.testing.assert_allclose(s.apply(X.copy()), sk.transform(X), atol=1e-12)


def test_sample_is_uniform_and_independent_of_batching():
    rows = np.arange(10_000, dtype=float)[:, None]
    keys = np.random.default_rng(0).random(len(rows))

    def sample(cuts):
        parts = [ooc.Sample.empty(500, 1).add(rows[a:b], keys[a:b]) for a, b in cuts]
        out = parts[0]
        for p in parts[1:]:
            out = out.merge(p)
        return out.sorted_rows()

    a = sample([(0, 10_000)])
    one = ooc.Sample.empty(500, 1)
    for lo in range(0, 10_000, 37):  # many small batches into one sample: the replace path
        one = one.add(rows[lo : lo + 37].copy(), keys[lo : lo + 37])
    np.testing.assert_array_equal(one.sorted_rows(), a)
    # with the row count known, a key threshold keeps ~m rows in all instead of m per part,
    # and the m smallest keys are the same rows
    t = ooc.Sample.threshold_for(500, 10_000)
    parts = [
        ooc.Sample.empty(500, 1, t).add(rows[lo : lo + 1000].copy(), keys[lo : lo + 1000])
        for lo in range(0, 10_000, 1000)
    ]
    assert sum(len(p.keys) for p in parts) < 800
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    np.testing.assert_array_equal(merged.sorted_rows(), a)
    # all at once (a merge task's body): the same rows, with or without empty parts
    many = ooc.Sample.merge_many([ooc.Sample.empty(500, 1, t), *parts[::-1]])
    np.testing.assert_array_equal(many.sorted_rows(), a)
    assert len(many.keys) == len(many.rows) == 500
    from distml.runtime.tasks import merge_all

    np.testing.assert_array_equal(merge_all(*parts).sorted_rows(), a)
    small = ooc.Sample.merge_many(parts[:1])  # fewer rows than m: every one is kept
    np.testing.assert_array_equal(small.sorted_rows(), parts[0].sorted_rows())
    # the row count unknown (no threshold): every part holds m rows, the merge keeps m of all
    full = [
        ooc.Sample.empty(500, 1).add(rows[lo : lo + 2500].copy(), keys[lo : lo + 2500])
        for lo in range(0, 10_000, 2500)
    ]
    assert [len(p.keys) for p in full] == [500] * 4
    np.testing.assert_array_equal(ooc.Sample.merge_many(full).sorted_rows(), a)
    assert ooc.Sample.threshold_for(500, None) == 1.0 == ooc.Sample.threshold_for(500, 400)
    b = sample([(0, 3), (3, 4000), (4000, 9000), (9000, 10_000)])
    np.testing.assert_array_equal(a, b)
    assert len(a) == 500 and len(np.unique(a)) == 500
    np.testing.assert_array_equal(a[:, 0], np.argsort(keys)[:500])  # smallest keys, in order
    assert 4000 < a.mean() < 6000  # a uniform draw from 0..9999


def test_sample_pass_states_merge_all_at_once_as_pairwise():
    """A k-means sample pass's partial states merged in one call (the merge task's body) are
    the pairwise fold's: moments to the last bit (the same left-to-right order), the same
    sampled rows."""
    import functools

    from distml.jobs.kmeans.model import SamplePass
    from distml.runtime.tasks import merge_all

    X = _frame(6000).to_numpy()
    keys = np.random.default_rng(1).random(len(X))
    t = ooc.Sample.threshold_for(900, len(X))
    parts = [
        SamplePass(
            ooc.Moments.empty(6, full=False).add(X[lo : lo + 1000].copy()),
            ooc.Sample.empty(900, 6, t).add(X[lo : lo + 1000], keys[lo : lo + 1000]),
            [{"part": lo}],
        )
        for lo in range(0, 6000, 1000)
    ]
    want = functools.reduce(lambda a, b: a.merge(b), parts)
    got = merge_all(*parts)
    assert got.moments.n == want.moments.n == 6000
    np.testing.assert_array_equal(got.moments.mean, want.moments.mean)
    np.testing.assert_array_equal(got.moments.m2, want.moments.m2)
    np.testing.assert_array_equal(got.sample.sorted_rows(), want.sample.sorted_rows())
    np.testing.assert_array_equal(got.sample.sorted_rows(), X[np.argsort(keys)[:900]])
    assert got.meta == want.meta == [{"part": lo} for lo in range(0, 6000, 1000)]


# ------------------------------------------------------------------ pca numerics


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("n_components", [3, 0.9, None])
def test_exact_pca_equals_sklearn(scale, n_components):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    X = _frame(4000).to_numpy()
    fit = P.exact_pca(_moments(X), n_components, scale=scale, whiten=True, features=FEATS)
    Xs = StandardScaler().fit_transform(X) if scale else X
    sk = PCA(n_components, whiten=True, svd_solver="full").fit(Xs)
    assert fit.n_components == sk.n_components_
    np.testing.assert_allclose(fit.explained_variance, sk.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(
        fit.explained_variance_ratio, sk.explained_variance_ratio_, rtol=1e-9
    )
    np.testing.assert_allclose(fit.components, sk.components_, atol=1e-9)  # same signs too
    np.testing.assert_allclose(fit.singular_values, sk.singular_values_, rtol=1e-9)
    assert fit.noise_variance == pytest.approx(sk.noise_variance_, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(fit.transform(X), sk.transform(Xs), atol=1e-8)


def test_pca_model_files_round_trip_without_pickle(tmp_path):
    X = _frame(500).to_numpy()
    fit = P.exact_pca(_moments(X), 2, scale=True, whiten=False, features=FEATS)
    for rel, data in fit.to_files().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    loaded = P.load_model(tmp_path)
    np.testing.assert_array_equal(loaded.transform(X), fit.transform(X))
    frame = pd.DataFrame(X, columns=FEATS)
    out = P.predict(tmp_path, frame)  # to_numpy() may be a read-only view: never written
    np.testing.assert_array_equal(frame.to_numpy(), X)
    assert list(out.columns) == ["pca0", "pca1"]
    np.testing.assert_array_equal(out.to_numpy(), fit.transform(X))


def test_kmeans_model_files_round_trip_without_pickle(tmp_path):
    X = _frame(500).to_numpy()
    scaler = _moments(X, full=False).scaler()
    fit = K.FittedKMeans(FEATS, scaler.apply(X[:3].copy()), np.array([1, 2, 3]), scaler)
    for rel, data in fit.to_files({"inertia": 1.0}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    loaded = K.load_model(tmp_path)
    np.testing.assert_array_equal(loaded.predict(X), fit.predict(X))
    assert loaded.predict(X[:3]).tolist() == [0, 1, 2]
    np.testing.assert_allclose(loaded.centers_in_input_units(), X[:3], rtol=1e-12)
    frame = pd.DataFrame(X, columns=FEATS)
    out = K.predict(tmp_path, frame)
    assert out["cluster"].dtype == np.int32 and out["cluster"].tolist() == fit.predict(X).tolist()
    np.testing.assert_array_equal(frame.to_numpy(), X)


# ------------------------------------------------------------------ kmeans numerics


def test_minibatch_step_is_sklearn_partial_fit():
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import pairwise_distances_argmin

    X = _frame(3000).to_numpy()
    init = X[:5].copy()
    sk = MiniBatchKMeans(5, init=init, n_init=1, reassignment_ratio=0.0, batch_size=100)
    centers, counts = init.copy(), np.zeros(5)
    assigned = np.zeros(5)  # points per center, each batch labelled by the centers before its step
    for b in np.array_split(X, 30):
        before = sk.cluster_centers_ if hasattr(sk, "cluster_centers_") else init
        assigned += np.bincount(pairwise_distances_argmin(b, before), minlength=5)
        sk.partial_fit(b)
        K.minibatch_step(np.asfortranarray(b.copy()), centers, counts)
        np.testing.assert_allclose(centers, sk.cluster_centers_, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(counts, assigned)


def test_init_centres_are_sklearns_kmeans_plusplus():
    """choose_init draws each init with scikit-learn's kmeans_plusplus on its slice of the
    sample, seeded per init: the centres are exactly sklearn's for that slice and seed."""
    from sklearn.cluster import kmeans_plusplus

    X = _frame(3000, d=5).to_numpy()
    for k, seed in ((1, 0), (7, 1), (20, 2)):
        got, scores = K.choose_init(X, k, n_init=1, init_size=1000, seed=seed)
        state = np.random.RandomState(np.random.SeedSequence([seed, 0]).generate_state(1)[0])
        want, _ = kmeans_plusplus(X[1000:2000], k, random_state=state)
        np.testing.assert_array_equal(got, want)
        assert len(scores) == 1


@pytest.mark.parametrize(
    "shape,k,seed",
    [((3000, 5), 1, 0), ((3000, 5), 12, 1), ((500, 64), 40, 2), ((20, 3), 20, 3)],
)
def test_numpy_kmeans_plusplus_is_sklearns(shape, k, seed):
    """The numpy k-means++ draws exactly scikit-learn's centres from the same RandomState, on
    offset, correlated data, with repeated rows (ties) and with k equal to the row count."""
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.default_rng(seed)
    X = rng.normal(size=shape) @ rng.normal(size=(shape[1], shape[1])) + 1e3
    X[1::4] = X[::4][: len(X[1::4])]  # duplicated rows
    got = K.kmeans_plusplus(X, k, np.random.RandomState(seed))
    want, _ = kmeans_plusplus(X, k, random_state=np.random.RandomState(seed))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=rf"needs at least k={len(X) + 1} rows; got {len(X)}"):
        K.kmeans_plusplus(X, len(X) + 1, np.random.RandomState(seed))  # as sklearn refuses


def test_kmeans_initialisation_never_imports_sklearn():
    """The driver's k-means++ starts without importing scikit-learn (about 1 s on these
    machines, on the critical path between the sample pass and the first mini-batch pass)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from distml.jobs import kmeans as K\n"
        "X = np.random.default_rng(0).normal(size=(2000, 4))\n"
        "c, s = K.choose_init(X, 5, 3, 400, seed=0)\n"
        "assert c.shape == (5, 4) and len(s) == 3\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_passes_tasks_never_import_pandas(tmp_path):
    """A worker runs a pass's tasks without pandas (pyarrow's own ``to_numpy`` would import it:
    0.3-0.5 s of every fresh worker's start), so a run's own cluster does not preload it; the
    batches are the same (test_batches_are_bounded_ordered_and_typed)."""
    from tests.fresh import stdout_of

    df = _frame(3000)
    df["x0"] = np.arange(3000, dtype=np.int32)  # cast to float64 in the batch
    _write(df, tmp_path / "a.parquet", row_group_size=700)
    code = (
        "import sys, numpy as np\n"
        "from distml.jobs import _out_of_core as ooc, kmeans as K, pca as P\n"
        "from distml.runtime.data import inspect_source\n"
        f"part = ooc.plan_partitions(inspect_source({str(tmp_path / 'a.parquet')!r}))[0]\n"
        f"feats = {FEATS!r}\n"
        "list(K._sample_task(part, feats, 256, 600, 1.0, 0, True, None, True, None))\n"
        "list(K._sample_task(part, feats, 256, 600, 1.0, 0, False, ooc.draw(3000, 600, 0), False, None))\n"
        "C = np.zeros((3, len(feats)))\n"
        "K._minibatch_task(part, feats, 256, C, np.zeros(3), None, True, None)\n"
        "K._final_task(part, feats, 256, C, None, [], None, None)\n"
        "X = np.concatenate([b.X for b in ooc.iter_batches(part, feats, 256)])\n"
        "print(X.shape, X.dtype, 'pandas' in sys.modules)\n"
    )
    assert stdout_of(code) == f"(3000, {len(FEATS)}) float64 False"


def test_assign_and_init_choose_the_best_on_the_held_sample():
    from sklearn.metrics import pairwise_distances_argmin_min

    X = _frame(2000).to_numpy()
    C = X[:4]
    labels, dist = K.assign(X, C)
    want_labels, want_d = pairwise_distances_argmin_min(X, C)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(dist, want_d**2, rtol=1e-9)
    centers, scores = K.choose_init(X, 4, 3, 400, seed=0)
    held = X[:400]
    assert len(scores) == 3
    assert K.assign(held, centers)[1].sum() == pytest.approx(min(scores))
    again, _ = K.choose_init(X, 4, 3, 400, seed=0)
    np.testing.assert_array_equal(centers, again)


# ------------------------------------------------------------------ specs


@pytest.mark.parametrize(
    "kind,model,data,expect",
    [
        (
            "pca",
            {"n_components": 1.5},
            {},
            "model.n_components must be an integer >= 1 or a fraction in (0, 1); got 1.5",
        ),
        ("pca", {"n_components": 0}, {}, "model.n_components must be an integer >= 1"),
        ("pca", {"mode": "incremental", "n_components": 0.5}, {}, "needs model.mode exact or auto"),
        (
            "pca",
            {"mode": "incremental", "n_components": 20, "batch_size": 10},
            {},
            "model.batch_size must be >= model.n_components",
        ),
        ("pca", {"keep_columns": ["id"]}, {}, "model.keep_columns needs model.transform: true"),
        ("kmeans", {"n_clusters": 0}, {}, "model.n_clusters must be >= 1; got 0"),
        ("kmeans", {"tol": -1}, {}, "model.tol must be >= 0"),
        (
            "kmeans",
            {"n_clusters": 8, "init_size": 5},
            {},
            "model.init_size must be >= model.n_clusters (8): each k-means++ initialisation "
            "picks its centres among init_size sampled rows; got 5",
        ),
        ("kmeans", {}, {"split": {"valid": 0.3}}, "data.split does not apply to kind kmeans"),
        ("kmeans", {}, {"test_source": "x.parquet"}, "data.test_source is not used by kind kmeans"),
        ("kmeans", {"n_clsters": 3}, {}, "did you mean 'n_clusters'"),
    ],
)
def test_spec_errors_are_one_sentence(kind, model, data, expect):
    spec = {"name": "t", "kind": kind, "data": {"source": "builtin:iris", **data}, "model": model}
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert expect in str(e.value)


def test_tune_is_refused():
    spec = {
        "name": "t",
        "kind": "pca",
        "data": {"source": "builtin:iris"},
        "tune": {
            "metric": "valid.x",
            "mode": "max",
            "space": {"model.batch_size": {"choice": [10, 20]}},
        },
    }
    with pytest.raises(SpecError, match=r"tune (does not apply to kind pca|is not a known field)"):
        load_spec(spec)


def test_resolved_spec_round_trips():
    for kind in ("pca", "kmeans"):
        spec = load_spec({"name": "t", "kind": kind, "data": {"source": "builtin:iris"}})
        assert load_spec(spec.to_dict()) == spec


def test_check_data_picks_numeric_features_and_checks_columns(tmp_path):
    df = _frame(50)
    df["label"] = "a"
    df["flag"] = True
    df["id"] = np.arange(50)
    path = _write(df, tmp_path / "d.parquet")
    job = P.Job(
        load_spec({"name": "t", "kind": "pca", "data": {"source": str(path), "exclude": ["id"]}})
    )
    assert job.check_data().features == FEATS  # strings and bools left out
    bad = [
        ({"features": ["x0", "label"]}, {}, "column 'label' has dtype"),
        ({"target": "nope"}, {}, "data.target: column 'nope' is not in"),
        ({}, {"transform": True, "keep_columns": ["idd"]}, "model.keep_columns: column 'idd'"),
        ({}, {"n_components": 9}, "model.n_components must be <= the number of features"),
    ]
    for data, model, expect in bad:
        spec = load_spec(
            {"name": "t", "kind": "pca", "data": {"source": str(path), **data}, "model": model}
        )
        with pytest.raises(DataError, match=expect.replace("(", r"\(")):
            P.Job(spec).check_data()
    spec = load_spec(
        {"name": "t", "kind": "kmeans", "data": {"source": str(path)}, "model": {"n_clusters": 51}}
    )
    with pytest.raises(DataError, match="n_clusters must be <= the number of rows"):
        K.Job(spec).check_data()
    # a target is only kept out of the features, never read
    spec = load_spec({"name": "t", "kind": "kmeans", "data": {"source": str(path), "target": "x5"}})
    assert K.Job(spec).check_data().features == FEATS[:5] + ["id"]


def test_mode_choice():
    def mode(**model):
        return P.Job(
            load_spec(
                {"name": "t", "kind": "pca", "data": {"source": "builtin:iris"}, "model": model}
            )
        ).mode

    assert mode()(64)[0] == "exact"
    assert mode()(P.EXACT_MAX_FEATURES + 1)[0] == "incremental"
    assert mode(n_components=0.5)(P.EXACT_MAX_FEATURES + 1)[0] == "exact"
    assert mode(mode="incremental")(4)[0] == "incremental"
