"""project (projUNN-D) and transport (projUNN-T) against scipy's polar and expm."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from helpers import ALL_DTYPES, random_factors, rtol_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unitary_update as uu
from unitary_update._xp import hconj
from unitary_update.reference import project_dense, transport_dense


def polar_reference(M: np.ndarray) -> np.ndarray:
    flat = M.reshape(-1, *M.shape[-2:]).astype(np.complex128 if M.dtype.kind == "c" else np.float64)
    return np.stack([scipy.linalg.polar(m)[0] for m in flat]).reshape(M.shape)


def expm_reference(U: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    dt = np.complex128 if U.dtype.kind == "c" else np.float64
    U, A, B = (x.astype(dt) for x in (U, A, B))
    X = hconj(U) @ A @ hconj(B)
    S = 0.5 * (X - hconj(X))
    flat = S.reshape(-1, *S.shape[-2:])
    E = np.stack([scipy.linalg.expm(s) for s in flat]).reshape(S.shape)
    return U @ E


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-300))


def unitary_tol(dtype: np.dtype, n: int) -> float:
    return 1e-12 * n if np.dtype(dtype) in (np.float64, np.complex128) else 1e-5 * max(n, 4)


SIZES = [
    (1, 1),
    (2, 1),
    (2, 2),
    (3, 2),
    (8, 1),
    (8, 4),
    (8, 8),
    (33, 5),
    (64, 1),
    (64, 32),
    (64, 64),
    (256, 1),
    (256, 3),
]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize(("n", "k"), SIZES)
def test_project_matches_scipy_polar(backend, dtype, n, k):
    rng = np.random.default_rng(n * 100 + k)
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A, B = random_factors(rng, (n, k), dtype) / np.sqrt(n), random_factors(rng, (n, k), dtype)
    result = backend.to_numpy(uu.project(backend.asarray(U), backend.asarray(A), backend.asarray(B)))
    assert result.dtype == dtype
    assert result.shape == (n, n)
    M = U.astype(np.complex128) + A.astype(np.complex128) @ B.astype(np.complex128).conj().T
    assert rel_err(result, polar_reference(M if U.dtype.kind == "c" else M.real)) <= rtol_for(dtype)
    assert uu.unitarity_error(result) <= unitary_tol(dtype, n)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize(("n", "k"), SIZES)
def test_transport_matches_scipy_expm(backend, dtype, n, k):
    rng = np.random.default_rng(n * 100 + k + 7)
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A, B = random_factors(rng, (n, k), dtype) / np.sqrt(n), random_factors(rng, (n, k), dtype)
    result = backend.to_numpy(uu.transport(backend.asarray(U), backend.asarray(A), backend.asarray(B)))
    assert result.dtype == dtype
    assert result.shape == (n, n)
    assert rel_err(result, expm_reference(U, A, B)) <= rtol_for(dtype)
    assert uu.unitarity_error(result) <= unitary_tol(dtype, n)


@pytest.mark.parametrize("update", ["project", "transport"])
@pytest.mark.parametrize("dtype", [np.float64, np.complex64])
def test_batched_broadcasting_matches_per_matrix_calls(backend, update, dtype):
    rng = np.random.default_rng(3)
    n, k = 6, 2
    U = uu.random_unitary(n, dtype=dtype, batch_shape=(3, 1), rng=rng)  # (3, 1, n, n)
    A = random_factors(rng, (4, n, k), dtype)  # (4, n, k)
    B = random_factors(rng, (1, 1, n, k), dtype)  # (1, 1, n, k)
    fn = getattr(uu, update)
    result = backend.to_numpy(fn(backend.asarray(U), backend.asarray(A), backend.asarray(B)))
    assert result.shape == (3, 4, n, n)
    for i in range(3):
        for j in range(4):
            single = fn(U[i, 0], A[j], B[0, 0])
            np.testing.assert_allclose(result[i, j], single, rtol=0, atol=20 * np.finfo(dtype).eps)


def test_batched_large_matrices_use_blas_path_and_match():
    rng = np.random.default_rng(4)
    U = uu.random_unitary(80, dtype=np.float64, batch_shape=(2,), rng=rng)
    A, B = rng.standard_normal((2, 80, 2)), rng.standard_normal((2, 80, 2))
    out = U.copy()
    uu.project(out, A, B, out=out)
    np.testing.assert_allclose(out, project_dense(U, A, B), atol=1e-12)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("update", ["project", "transport"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_out_equals_U_updates_in_place(backend, update, dtype, order):
    rng = np.random.default_rng(5)
    n = 96  # above the size where the BLAS gemm path is used
    U0 = np.asarray(uu.random_unitary(n, dtype=dtype, rng=rng), order=order)
    A, B = random_factors(rng, (n, 2), dtype), random_factors(rng, (n, 2), dtype)
    expected = getattr(uu, update)(U0, A, B)
    U = backend.asarray(U0) if backend.name != "numpy" else U0.copy(order=order)
    if backend.name == "jax":  # immutable: out= must be refused before anything is computed
        with pytest.raises(TypeError, match=r"out is a JAX array; JAX arrays are immutable"):
            getattr(uu, update)(U, backend.asarray(A), backend.asarray(B), out=U)
        return
    returned = getattr(uu, update)(U, backend.asarray(A), backend.asarray(B), out=U)
    assert returned is U
    np.testing.assert_allclose(backend.to_numpy(U), expected, rtol=0, atol=100 * np.finfo(dtype).eps)


@pytest.mark.parametrize("update", ["project", "transport"])
def test_inputs_never_modified_without_out(backend, update):
    rng = np.random.default_rng(6)
    U0 = uu.random_unitary(70, rng=rng)
    A0, B0 = random_factors(rng, (70, 3), np.complex128), random_factors(rng, (70, 3), np.complex128)
    U, A, B = backend.asarray(U0), backend.asarray(A0), backend.asarray(B0)
    getattr(uu, update)(U, A, B)
    for x, x0 in ((U, U0), (A, A0), (B, B0)):
        np.testing.assert_array_equal(backend.to_numpy(x), x0)


def test_out_may_be_a_separate_array():
    rng = np.random.default_rng(7)
    U = uu.random_unitary(10, rng=rng)
    A, B = random_factors(rng, (10, 1), np.complex128), random_factors(rng, (10, 1), np.complex128)
    out = np.zeros_like(U)
    assert uu.transport(U, A, B, out=out) is out
    np.testing.assert_allclose(out, uu.transport(U, A, B), atol=1e-14)


def test_real_inputs_stay_real_and_lower_precision_factors_are_cast():
    rng = np.random.default_rng(8)
    U = uu.random_unitary(12, dtype=np.float32, rng=rng)
    A, B = rng.standard_normal((12, 2)), rng.standard_normal((12, 2))  # float64 factors
    for fn in (uu.project, uu.transport):
        assert fn(U, A, B).dtype == np.float32


def test_transport_keeps_determinant_of_real_U():
    rng = np.random.default_rng(9)
    U = uu.random_unitary(9, dtype=np.float64, rng=rng)
    A, B = rng.standard_normal((9, 3)), rng.standard_normal((9, 3))
    np.testing.assert_allclose(np.linalg.det(uu.transport(U, A, B)), np.linalg.det(U), atol=1e-12)


# --- edge cases ----------------------------------------------------------------------------
@pytest.mark.parametrize("update", ["project", "transport"])
@pytest.mark.parametrize("which", ["A", "B", "both"])
def test_zero_factor_returns_U_unchanged(update, which):
    rng = np.random.default_rng(10)
    U = uu.random_unitary(16, rng=rng)
    A, B = random_factors(rng, (16, 2), np.complex128), random_factors(rng, (16, 2), np.complex128)
    if which in ("A", "both"):
        A[:] = 0
    if which in ("B", "both"):
        B[:] = 0
    np.testing.assert_allclose(getattr(uu, update)(U, A, B), U, rtol=0, atol=1e-15)


@pytest.mark.parametrize("update", ["project", "transport"])
def test_rank_deficient_and_parallel_factors(update):
    rng = np.random.default_rng(11)
    n = 20
    U = uu.random_unitary(n, dtype=np.float64, rng=rng)
    a = rng.standard_normal((n, 1))
    A = np.hstack([a, 2 * a, -a])  # rank 1 spread over k = 3
    B = rng.standard_normal((n, 3))
    B_par = U.T @ A  # A_hat parallel to B
    for Bx in (B, B_par):
        result = getattr(uu, update)(U, A, Bx)
        ref = project_dense(U, A, Bx) if update == "project" else transport_dense(U, A, Bx)
        assert rel_err(result, ref) < 1e-10
        assert uu.unitarity_error(result) < 1e-12 * n


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_project_of_singular_target_is_a_valid_polar_factor(dtype):
    """U + A B^H singular: the polar factor is not unique; any valid one is unitary with Q^H M >= 0."""
    rng = np.random.default_rng(12)
    n = 10
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A = -U[:, :2].copy()
    B = np.eye(n, 2, dtype=dtype)  # M = U (I - e1 e1^H - e2 e2^H): rank n - 2
    Q = uu.project(U, A, B)
    assert np.all(np.isfinite(Q))
    tol = 50 * np.finfo(dtype).eps * n
    assert uu.unitarity_error(Q) < tol
    M = (U + A @ B.conj().T).astype(np.complex128)
    H = Q.astype(np.complex128).conj().T @ M
    np.testing.assert_allclose(H, H.conj().T, atol=tol)  # Hermitian
    assert np.linalg.eigvalsh(0.5 * (H + H.conj().T)).min() > -tol  # positive semidefinite


# --- property-based ------------------------------------------------------------------------
@st.composite
def problems(draw, max_scale=1.0):
    dtype = draw(st.sampled_from(ALL_DTYPES))
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, n))
    batch = draw(st.sampled_from([(), (2,), (1, 3)]))
    scale = draw(st.floats(1e-8, max_scale))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    U = uu.random_unitary(n, dtype=dtype, batch_shape=batch, rng=rng)
    A = random_factors(rng, (*batch, n, k), dtype)
    B = random_factors(rng, (*batch, n, k), dtype)
    # scale ||A B^H||_F relative to ||U||_F = sqrt(n)
    norm = np.linalg.norm(A.astype(np.complex128) @ hconj(B.astype(np.complex128)), axis=(-2, -1))
    factor = np.sqrt(scale * np.sqrt(n) / np.maximum(norm, 1e-300))[..., None, None]
    return U, (A * factor).astype(dtype), (B * factor).astype(dtype)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_property_against_dense_references(problem):
    U, A, B = problem
    dtype = U.dtype
    for fn, ref in ((uu.project, project_dense), (uu.transport, transport_dense)):
        result = fn(U, A, B)
        assert result.dtype == dtype
        assert rel_err(result, ref(U, A, B)) <= 10 * rtol_for(dtype)
        assert uu.unitarity_error(result) <= unitary_tol(dtype, U.shape[-1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_scale=1e2))
def test_property_large_updates_stay_unitary_and_finite(problem):
    U, A, B = problem
    for fn in (uu.project, uu.transport):
        result = fn(U, A, B)
        assert np.all(np.isfinite(result))
        assert uu.unitarity_error(result) <= unitary_tol(U.dtype, U.shape[-1])


def test_out_may_be_an_equal_view_of_U():
    """``project(U[i], A, B, out=U[i])``: two view objects of the same elements count as in place."""
    rng = np.random.default_rng(13)
    U = uu.random_unitary(5, dtype=np.float64, batch_shape=(3,), rng=rng)
    U0 = U.copy()
    A, B = rng.standard_normal((5, 1)), rng.standard_normal((5, 1))
    uu.transport(U[1], A, B, out=U[1])
    np.testing.assert_allclose(U[1], transport_dense(U0[1], A, B), atol=1e-13)
    np.testing.assert_array_equal(U[[0, 2]], U0[[0, 2]])
