"""Scale safety: steps from 1e-30 to 1e30 in float32 and float64, tiny N (1, 2) and large k."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ALL_DTYPES, random_factors

import unitary_update as uu
from unitary_update._sketch import SKETCH_METHODS
from unitary_update.reference import project_dense, transport_dense

SCALES = [1e-30, 1e-15, 1e-5, 1.0, 1e5, 1e15, 1e30]
REAL = [np.float32, np.float64]


def unitary_tol(dtype, n: int) -> float:
    return 50 * np.sqrt(n) * float(np.finfo(dtype).eps)


def low_rank(rng: np.random.Generator, n: int, m: int, dtype, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Factors X, Y (n x m) with ||X Y^H||_F ~ scale, each of norm ~ sqrt(scale) (no overflow)."""
    root = np.sqrt(scale / (n * np.sqrt(m)))
    return (root * random_factors(rng, (n, m), dtype)).astype(dtype), (
        root * random_factors(rng, (n, m), dtype)
    ).astype(dtype)


@pytest.mark.parametrize("method", SKETCH_METHODS)
@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("factored", [False, True], ids=["dense", "factored"])
def test_sketch_is_scale_invariant(method, dtype, scale, factored):
    """A rank-3 G is reproduced by a rank-4 sketch at every scale, to the dtype's precision."""
    rng = np.random.default_rng(1)
    n = 20
    X, Y = low_rank(rng, n, 3, dtype, scale)
    G = (X, Y) if factored else (X @ Y.T).astype(dtype)
    A, B = uu.sketch(G, 4, method=method, rng=2)
    assert A.dtype == dtype
    assert np.all(np.isfinite(A))
    assert np.all(np.isfinite(B))
    Gd = X.astype(np.float64) @ Y.astype(np.float64).T
    err = np.linalg.norm(A.astype(np.float64) @ B.astype(np.float64).T - Gd) / np.linalg.norm(Gd)
    assert err < 1e3 * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("scale", SCALES)
def test_sketch_of_a_dense_gradient_at_extreme_scale_matches_the_unit_scale(dtype, scale):
    """randomized and exact sketches commute with scaling: sketch(s G) = s sketch(G) (A B^H)."""
    rng = np.random.default_rng(3)
    G = rng.standard_normal((30, 30))
    for method in ("randomized", "exact"):
        A1, B1 = uu.sketch(G.astype(dtype), 2, method=method, rng=4)
        As, Bs = uu.sketch((scale * G).astype(dtype), 2, method=method, rng=4)
        ref = A1.astype(np.float64) @ B1.astype(np.float64).T
        got = As.astype(np.float64) @ Bs.astype(np.float64).T / scale
        assert np.linalg.norm(got - ref) <= 1e3 * np.finfo(dtype).eps * np.linalg.norm(ref)


@pytest.mark.parametrize("update", ["project", "transport"])
@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("sketch", SKETCH_METHODS)
def test_steps_at_every_scale_stay_finite_and_unitary(update, dtype, scale, sketch):
    rng = np.random.default_rng(5)
    n = 16
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    G = (scale / n * rng.standard_normal((n, n))).astype(dtype)
    V = uu.step(U, G, rank=3, update=update, sketch=sketch, rng=6)
    assert V.dtype == dtype
    assert np.all(np.isfinite(V))
    assert uu.unitarity_error(V) <= unitary_tol(dtype, n)
    if scale <= 1e-15:  # the step is below the rounding of U
        np.testing.assert_allclose(V, U, rtol=0, atol=4 * np.finfo(dtype).eps)
    if update == "transport" and dtype is np.float64:  # SO(N) stays SO(N) even for absurd steps
        assert np.linalg.det(V) == pytest.approx(np.linalg.det(U), abs=1e-8)


@pytest.mark.parametrize("update", ["project", "transport"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1e10, 1e30])
def test_updates_with_extreme_factors_match_the_dense_reference(update, dtype, scale):
    """||A B^H|| = scale with ||A|| = ||B|| = sqrt(scale): finite, unitary, and as accurate as the problem allows.

    Both results are backward stable with backward error ``eps * ||U + A B^H||``, so they are
    determined only to about ``eps * scale`` (for transport: an angle known to ``eps * scale``
    radians; for project: the polar factor of a matrix whose singular values are ~1 and
    ~scale).  They are compared with the dense reference where that is small; beyond it they
    must still be unitary and finite (real transport: det(U) kept).
    """
    rng = np.random.default_rng(7)
    n, k = 12, 2
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A, B = low_rank(rng, n, k, dtype, scale)
    fn, ref = (uu.project, project_dense) if update == "project" else (uu.transport, transport_dense)
    V = fn(U, A, B)
    assert V.dtype == dtype
    assert np.all(np.isfinite(V))
    assert uu.unitarity_error(V) <= unitary_tol(dtype, n)
    atol = 1e3 * np.finfo(dtype).eps * max(1.0, scale)
    if atol < 1e-2:
        R = ref(U.astype(np.complex128), A.astype(np.complex128), B.astype(np.complex128))
        np.testing.assert_allclose(V, R, rtol=0, atol=atol)
    if update == "transport" and dtype in REAL:
        assert np.linalg.det(V.astype(np.float64)) == pytest.approx(np.linalg.det(U.astype(np.float64)), abs=1e-3)


@pytest.mark.parametrize("update", ["project", "transport"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_tiny_n_and_k_larger_than_n(update, dtype, n, k):
    rng = np.random.default_rng(8 + n + k)
    U = uu.random_unitary(n, dtype=dtype, batch_shape=(2,), rng=rng)
    A, B = 0.3 * random_factors(rng, (2, n, k), dtype), 0.3 * random_factors(rng, (2, n, k), dtype)
    A, B = A.astype(dtype), B.astype(dtype)
    V = getattr(uu, update)(U, A, B)
    ref = (project_dense if update == "project" else transport_dense)(
        U.astype(np.complex128), A.astype(np.complex128), B.astype(np.complex128)
    )
    np.testing.assert_allclose(V, ref, rtol=0, atol=100 * np.finfo(dtype).eps)
    assert uu.unitarity_error(V) <= unitary_tol(dtype, n)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("method", SKETCH_METHODS)
def test_sketch_and_step_with_tiny_n_and_full_rank(dtype, n, method):
    rng = np.random.default_rng(9)
    G = random_factors(rng, (n, n), dtype)
    A, B = uu.sketch(G, n, method=method, rng=1)  # k = N: the sketch is exact
    np.testing.assert_allclose(A @ B.conj().T, G, atol=100 * np.finfo(dtype).eps)
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    V = uu.step(U, 0.1 * G, rank=n, sketch=method, rng=1)
    assert uu.unitarity_error(V) <= unitary_tol(dtype, n)


def test_large_k_through_step_and_direct_factors():
    rng = np.random.default_rng(10)
    n = 40
    U = uu.random_unitary(n, dtype=np.float64, rng=rng)
    G = 0.1 * rng.standard_normal((n, n))
    for update, ref in (("project", project_dense), ("transport", transport_dense)):
        V = uu.step(U, G, rank=n, update=update, sketch="exact")  # k = N: the exact G, r = N
        np.testing.assert_allclose(V, ref(U, G, np.eye(n)), atol=1e-12)
        A, B = rng.standard_normal((n, 3 * n)), rng.standard_normal((n, 3 * n)) / n  # k = 3N
        np.testing.assert_allclose(getattr(uu, update)(U, A, B), ref(U, A, B), atol=1e-12)


@pytest.mark.parametrize("backend_option", ["auto", "numba", "numpy"])
@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e4, 1e10, 1e30])
def test_stacks_of_small_matrices_at_every_scale(backend_option, dtype, scale):
    """A stack of 16 matrices (the Numba batched kernel under "auto"): unitary, det kept, at any scale."""
    rng = np.random.default_rng(11)
    n, k = 8, 2
    U = uu.random_unitary(n, dtype=dtype, batch_shape=(16,), rng=rng)
    root = np.sqrt(scale / (n * np.sqrt(k)))
    A = (root * rng.standard_normal((16, n, k))).astype(dtype)
    B = (root * rng.standard_normal((16, n, k))).astype(dtype)
    with uu.options(backend=backend_option):
        for fn in (uu.project, uu.transport):
            V = fn(U, A, B)
            assert np.all(np.isfinite(V))
            assert uu.unitarity_error(V) <= unitary_tol(dtype, n)
        det_V = np.linalg.det(uu.transport(U, A, B).astype(np.float64))
    np.testing.assert_allclose(det_V, np.linalg.det(U.astype(np.float64)), atol=1e-3)
