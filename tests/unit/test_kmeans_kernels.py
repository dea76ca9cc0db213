"""k-means' per-batch arithmetic (``assign_rows``): block by block of rows, the per-cluster sums as
a one-hot matrix product while ``4 k <= d`` and one bincount per feature beyond — against numpy on
the whole batch at once and against scikit-learn's ``MiniBatchKMeans.partial_fit``.

Tolerances: labels and distances are numpy's bit for bit (each row's distances are one row of
a matrix product, whatever the block); the sums are a different order of additions, so 1e-12
relative; the mini-batch centres are scikit-learn's to 1e-10, as the bincount path's test in
test_out_of_core.py."""

from __future__ import annotations

import numpy as np
import pytest

from distml.jobs.kmeans import model as M


def _data(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (k, d)) + 30.0
    X = centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    return np.asfortranarray(X), centers + rng.normal(0, 0.5, (k, d))


def _numpy(X, C):
    D = ((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)
    labels = D.argmin(axis=1)
    sums = np.zeros_like(C)
    np.add.at(sums, labels, X)
    return labels, sums


@pytest.mark.parametrize(
    "n,d,k",
    [
        (3000, 64, 12),  # one-hot sums, 1,024-row blocks, the last one short
        (1024, 64, 16),  # one-hot, exactly one block
        (700, 64, 3),  # fewer rows than a block
        (5000, 8, 12),  # bincount sums (4 k > d), one block of 8,192 rows
        (2500, 300, 80),  # bincount, 256-row blocks (wide rows)
        (2500, 300, 20),  # one-hot, 256-row blocks
    ],
)
def test_blocked_assignment_equals_the_whole_batch_at_once(n, d, k):
    X, C = _data(n, d, k)
    labels, dist, norms, sums = M.assign_rows(X, C, sums=True)
    # the unblocked arithmetic of the same form (dot products), on the whole batch
    D = -2.0 * (X @ C.T) + np.einsum("ij,ij->i", C, C)
    want = D.argmin(axis=1)
    np.testing.assert_array_equal(labels, want)
    np.testing.assert_array_equal(norms, np.einsum("ij,ij->i", X, X))
    np.testing.assert_allclose(dist, np.maximum(D[np.arange(n), want] + norms, 0), rtol=0, atol=0)
    # and the plain definition: nearest centre by squared difference, sums of the rows
    exact_labels, exact_sums = _numpy(X, C)
    np.testing.assert_array_equal(labels, exact_labels)
    np.testing.assert_allclose(sums, exact_sums, rtol=1e-12)
    assert M.one_hot_sums(k, d) == (4 * k <= d)
    # without sums: the same labels and distances, no sums computed
    l2, d2, _, s2 = M.assign_rows(X, C)
    np.testing.assert_array_equal(l2, labels)
    np.testing.assert_array_equal(d2, dist)
    assert s2 is None


def test_block_rows():
    assert M.block_rows(64) == 1024  # 512 KB of float64 rows
    assert M.block_rows(8) == 8192
    assert M.block_rows(300) == M.block_rows(5000) == 256  # never fewer than 256


def test_no_rows_and_empty_clusters():
    X, C = _data(40, 64, 12)
    labels, dist, norms, sums = M.assign_rows(X[:0], C, sums=True)
    assert labels.shape == dist.shape == norms.shape == (0,)
    np.testing.assert_array_equal(sums, np.zeros_like(C))
    far = np.vstack([C, np.full((1, 64), 1e6)])  # a centre no row is near: a zero row of sums
    labels, _, _, sums = M.assign_rows(X, far, sums=True)
    assert (labels != 12).all()
    np.testing.assert_array_equal(sums[12], 0.0)


@pytest.mark.parametrize("d,k", [(64, 12), (8, 12)])
def test_minibatch_steps_are_sklearn_partial_fit_on_both_sum_paths(d, k):
    from sklearn.cluster import MiniBatchKMeans

    X, C = _data(6000, d, k, seed=1)
    init = np.ascontiguousarray(C)
    sk = MiniBatchKMeans(k, init=init, n_init=1, reassignment_ratio=0.0, batch_size=1500)
    centers, counts = init.copy(), np.zeros(k)
    for b in np.array_split(np.ascontiguousarray(X), 4):
        sk.partial_fit(b)
        M.minibatch_step(np.asfortranarray(b), centers, counts)
        np.testing.assert_allclose(centers, sk.cluster_centers_, rtol=1e-10, atol=1e-10)
    assert counts.sum() == len(X)
