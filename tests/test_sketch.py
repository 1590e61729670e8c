"""Sketches: exact recovery of rank-k matrices, near-optimal error, dense == factored, memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from helpers import ALL_DTYPES, random_factors

import unitary_update as uu
from unitary_update import _sketch
from unitary_update._xp import hconj

METHODS = ["randomized", "lsi", "column", "exact"]


def low_rank(rng, n, m, k, dtype, batch=()):
    return random_factors(rng, (*batch, n, k), dtype) @ hconj(random_factors(rng, (*batch, m, k), dtype))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize(
    ("n", "m", "k", "batch"), [(30, 30, 1, ()), (50, 40, 4, ()), (20, 20, 20, ()), (16, 16, 3, (2,))]
)
def test_exact_rank_k_matrix_is_reconstructed(backend, method, dtype, n, m, k, batch):
    rng = np.random.default_rng(k + n)
    G = low_rank(rng, n, m, k, dtype, batch)
    A, B = uu.sketch(backend.asarray(G), k, method=method, rng=1)
    A, B = backend.to_numpy(A), backend.to_numpy(B)
    assert A.shape == (*batch, n, k)
    assert B.shape == (*batch, m, k)
    assert A.dtype == dtype
    assert B.dtype == dtype
    np.testing.assert_allclose(A @ hconj(B), G, rtol=0, atol=1e-8 * np.abs(G).max())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_factored_form_reconstructs_rank_k(backend, method, dtype):
    rng = np.random.default_rng(2)
    X, Y = random_factors(rng, (40, 3), dtype), random_factors(rng, (40, 3), dtype)
    A, B = uu.sketch((backend.asarray(X), backend.asarray(Y)), 3, method=method, rng=3)
    A, B = backend.to_numpy(A), backend.to_numpy(B)
    G = X.astype(np.complex128) @ hconj(Y.astype(np.complex128))
    tol = 1e-8 if np.dtype(dtype) in (np.float64, np.complex128) else 1e-4
    np.testing.assert_allclose(
        A @ hconj(B), G if dtype in (np.complex64, np.complex128) else G.real, rtol=0, atol=tol * np.abs(G).max()
    )


@pytest.mark.parametrize("method", ["randomized", "lsi", "column"])
def test_factored_and_dense_forms_agree(method):
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((60, 9)), rng.standard_normal((60, 9))
    A1, B1 = uu.sketch(X @ Y.T, 4, method=method, rng=5)
    A2, B2 = uu.sketch((X, Y), 4, method=method, rng=5)
    np.testing.assert_allclose(A1 @ B1.T, A2 @ B2.T, atol=1e-9)


def test_exact_factored_matches_truncated_svd():
    rng = np.random.default_rng(6)
    X, Y = rng.standard_normal((50, 8)), rng.standard_normal((45, 8))
    A, B = uu.sketch((X, Y), 3, method="exact")
    L, s, Rh = np.linalg.svd(X @ Y.T)
    np.testing.assert_allclose(A @ B.T, (L[:, :3] * s[:3]) @ Rh[:3], atol=1e-10)


def test_rank_above_factored_rank_pads_with_zeros():
    rng = np.random.default_rng(7)
    X, Y = rng.standard_normal((30, 2)), rng.standard_normal((30, 2))
    A, B = uu.sketch((X, Y), 5, method="exact")
    assert A.shape == (30, 5)
    np.testing.assert_allclose(A @ B.T, X @ Y.T, atol=1e-10)
    np.testing.assert_array_equal(A[:, 2:], 0)


@pytest.mark.parametrize("method", _sketch.SKETCH_METHODS)
def test_a_factored_g_with_no_columns_sketches_to_zero(method):
    # X, Y of m = 0 columns: G = 0, of rank 0 < k (column sampling divided by a block width of 0)
    A, B = uu.sketch((np.ones((8, 0)), np.ones((6, 0))), 2, method=method, rng=0)
    assert A.shape == (8, 2)
    assert B.shape == (6, 2)
    np.testing.assert_array_equal(A @ B.T, 0)


@pytest.mark.parametrize("G", [np.zeros((0, 3)), np.zeros((3, 0)), (np.zeros((0, 2)), np.ones((3, 2)))])
def test_an_empty_g_is_named(G):
    with pytest.raises(ValueError, match=r"G is empty \(N x M = \d x \d\); a sketch needs N, M >= 1"):
        uu.sketch(G, 1, rng=0)


@pytest.mark.parametrize("spectrum", ["flat", "decaying"])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_randomized_error_is_near_optimal(spectrum, k):
    rng = np.random.default_rng(8 + k)
    n = 120
    Q1 = uu.random_unitary(n, dtype=np.float64, rng=rng)
    Q2 = uu.random_unitary(n, dtype=np.float64, rng=rng)
    s = np.ones(n) if spectrum == "flat" else 0.8 ** np.arange(n)
    s = s * (1 + 0.1 * rng.random(n))
    s = np.sort(s)[::-1]
    G = (Q1 * s) @ Q2.T
    optimal = np.sqrt(np.sum(s[k:] ** 2))  # Frobenius error of the truncated SVD
    A, B = uu.sketch(G, k, method="randomized", rng=9)
    assert np.linalg.norm(G - A @ B.T) <= 1.5 * optimal
    A, B = uu.sketch(G, k, method="exact")
    np.testing.assert_allclose(np.linalg.norm(G - A @ B.T), optimal, rtol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_factors_and_dense_g_untouched(method):
    rng = np.random.default_rng(10)
    G = rng.standard_normal((30, 30))
    G0 = G.copy()
    A1, B1 = uu.sketch(G, 2, method=method, rng=11)
    A2, B2 = uu.sketch(G, 2, method=method, rng=np.random.default_rng(11))
    np.testing.assert_array_equal(A1, A2)
    np.testing.assert_array_equal(B1, B2)
    np.testing.assert_array_equal(G, G0)


def test_column_sampling_picks_only_nonzero_columns():
    rng = np.random.default_rng(12)
    G = np.zeros((20, 20))
    G[:, [3, 11]] = rng.standard_normal((20, 2))
    A, B = uu.sketch(G, 2, method="column", rng=0)
    np.testing.assert_allclose(A @ B.T, G, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_factored_sketch_never_allocates_n_by_n(method):
    n, m = 3000, 4
    rng = np.random.default_rng(13)
    X, Y = rng.standard_normal((n, m)), rng.standard_normal((n, m))
    uu.sketch((X, Y), 2, method=method, rng=0)  # warm caches/imports
    tracemalloc.start()
    uu.sketch((X, Y), 2, method=method, rng=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < n * n * 8 / 50, f"peak {peak} bytes is not O(N m)"


@pytest.mark.parametrize("scale", [1.0, 2.0**-30], ids=["moderate", "rescaled"])
@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
@pytest.mark.parametrize("method", ["randomized", "lsi", "column"])
def test_factored_sketch_extra_memory_is_thin(method, dtype, scale):
    """O((N + m) k) extra memory: no copy of X or Y (each 1/6 of N x N here), no m x m Gram, no QR of X.

    A tiny Y (``2^-30``) sends G through the rescaling, which scales thin products, not X and Y.
    """
    n, m, k = 1500, 250, 4
    rng = np.random.default_rng(18)
    X = random_factors(rng, (n, m), dtype)
    Y = (scale * random_factors(rng, (n, m), dtype)).astype(dtype)
    X0, Y0 = X.copy(), Y.copy()
    uu.sketch((X, Y), k, method=method, rng=0)
    tracemalloc.start()
    uu.sketch((X, Y), k, method=method, rng=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.1 * n * n * np.dtype(dtype).itemsize, f"peak {peak} bytes is not O((N + m) k)"
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(Y, Y0)


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
@pytest.mark.parametrize("method", METHODS)
def test_rescaled_factored_sketch_equals_the_one_with_scaled_copies(monkeypatch, method, dtype):
    rng = np.random.default_rng(19)
    big = 2.0**40 if dtype == np.float32 else 2.0**300
    X = (big * random_factors(rng, (2, 1, 40, 35), dtype)).astype(dtype)
    Y = (random_factors(rng, (3, 30, 35), dtype) / big**1.25).astype(dtype)
    A1, B1 = uu.sketch((X, Y), 3, method=method, rng=1)
    monkeypatch.setattr(_sketch, "_LAZY_LIMIT", {4: -1, 8: -1})  # X and Y copied, scaled
    A2, B2 = uu.sketch((X, Y), 3, method=method, rng=1)
    np.testing.assert_array_equal(A1, A2)
    np.testing.assert_array_equal(B1, B2)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_factored_operator_products_match_the_dense_g(dtype):
    rng = np.random.default_rng(20)
    X, Y = random_factors(rng, (2, 1, 30, 70), dtype), random_factors(rng, (3, 25, 70), dtype)  # m = 70: 3 blocks
    sx, sy = np.array([[-3], [4]]), np.array([5, 0, -7])
    op = _sketch._Factored(np, X, Y, sx, sy)
    G = (X * 2.0 ** sx[..., None, None]) @ hconj(Y * 2.0 ** sy[..., None, None])  # (2, 3, 30, 25)
    x, q = random_factors(rng, (2, 3, 25, 4), dtype), random_factors(rng, (2, 3, 30, 4), dtype)
    idx = np.broadcast_to(np.array([7, 0, 24]), (2, 3, 3))
    np.testing.assert_allclose(op.matmul(x), G @ x, rtol=1e-12)
    np.testing.assert_allclose(op.rmatmul(q), hconj(G) @ q, rtol=1e-12)
    np.testing.assert_allclose(op.column_norms2(2), (np.abs(G) ** 2).sum(axis=-2), rtol=1e-12)
    np.testing.assert_allclose(op.columns(idx), G[..., [7, 0, 24]], rtol=1e-12)


@pytest.mark.parametrize("method", ["randomized", "lsi", "column"])
def test_dense_sketch_does_not_copy_g(method):
    n = 1500
    rng = np.random.default_rng(14)
    G = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    uu.sketch(G, 2, method=method, rng=0)
    tracemalloc.start()
    uu.sketch(G, 2, method=method, rng=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < G.nbytes / 10, f"peak {peak} bytes vs G {G.nbytes}"


def test_step_is_sketch_then_update():
    rng = np.random.default_rng(15)
    U = uu.random_unitary(25, rng=rng)
    G = 0.1 * random_factors(rng, (25, 25), np.complex128)
    for update in ("project", "transport"):
        for method in METHODS:
            A, B = uu.sketch(G, 3, method=method, rng=16)
            expected = getattr(uu, update)(U, A, B)
            np.testing.assert_allclose(
                uu.step(U, G, rank=3, update=update, sketch=method, rng=16), expected, atol=1e-14
            )


def test_step_accepts_factored_gradient_in_place():
    rng = np.random.default_rng(17)
    U = uu.random_unitary(64, dtype=np.float32, rng=rng)
    X, Y = rng.standard_normal((64, 5)).astype(np.float32), rng.standard_normal((64, 5)).astype(np.float32)
    expected = uu.step(U, (0.01 * X, Y), rank=2, rng=3)
    assert uu.step(U, (0.01 * X, Y), rank=2, rng=3, out=U) is U
    np.testing.assert_allclose(U, expected, atol=1e-6)
    assert uu.unitarity_error(U) < 1e-5
