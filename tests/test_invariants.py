"""Invariants of project (projUNN-D) and transport (projUNN-T), as property-based tests.

Hypothesis draws the dtype (all four), N (1 .. 24, so N = 1 and 2 are in), k (1 .. N + 2: also
k > N/2, where the basis W is the whole space), a batch shape (a stack of 16 takes the Numba
batched kernel, the others NumPy/LAPACK), the step size and the seed.
Tolerances scale with the dtype's epsilon: ``tol = C sqrt(N) eps``, with C = 50 for unitarity (the
worst of 1,500 random cases was 16) and C = 200 for comparisons of two computed matrices.
"""

from __future__ import annotations

import numpy as np
from helpers import ALL_DTYPES, random_factors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unitary_update as uu
from unitary_update._xp import hconj

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tol(dtype, n: int, c: float = 200.0) -> float:
    return c * np.sqrt(n) * float(np.finfo(dtype).eps)


def unitary_ok(V: np.ndarray, dtype) -> bool:
    return V.dtype == dtype and bool(np.all(np.isfinite(V))) and uu.unitarity_error(V) <= tol(dtype, V.shape[-1], 50)


def assert_unitary_near(result: np.ndarray, expected: np.ndarray, dtype) -> None:
    """``result`` is unitary in ``dtype`` and within ``tol`` of ``expected``."""
    assert unitary_ok(result, dtype)
    np.testing.assert_allclose(result, expected, rtol=0, atol=tol(dtype, result.shape[-1]))


@st.composite
def cases(draw, max_scale: float = 0.5):
    """U (..., N, N) unitary, A, B (..., N, k) with ||A B^H||_F = scale, and a seeded generator."""
    dtype = np.dtype(draw(st.sampled_from(ALL_DTYPES)))
    n = draw(st.integers(1, 24))
    k = draw(st.integers(1, n + 2))
    batch = draw(st.sampled_from([(), (3,), (2, 1), (16,)]))  # 16 small matrices: the Numba batched kernel
    scale = draw(st.floats(1e-6, max_scale))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    U = uu.random_unitary(n, dtype=dtype, batch_shape=batch, rng=rng)
    A = random_factors(rng, (*batch, n, k), dtype)
    B = random_factors(rng, (*batch, n, k), dtype)
    norm = np.linalg.norm(A.astype(np.complex128) @ hconj(B.astype(np.complex128)), axis=(-2, -1))
    factor = np.sqrt(scale / np.maximum(norm, 1e-300))[..., None, None]
    return U, (A * factor).astype(dtype), (B * factor).astype(dtype), rng


@SETTINGS
@given(cases())
def test_zero_update_returns_U(case):
    U, A, B, _ = case
    for fn in (uu.project, uu.transport):
        V = fn(U, np.zeros_like(A), np.zeros_like(B))
        np.testing.assert_allclose(V, U, rtol=0, atol=4 * float(np.finfo(U.dtype).eps))
        V = fn(U, A, np.zeros_like(B))  # one factor zero is a zero update too
        np.testing.assert_allclose(V, U, rtol=0, atol=4 * float(np.finfo(U.dtype).eps))


@SETTINGS
@given(cases(), st.floats(0.0, 3.0))
def test_project_of_a_unitary_target_returns_it(case, angle):
    """V = U (I + W (R - I) W^H), W orthonormal (N x r), R unitary r x r: V is unitary, polar(V) = V."""
    U, A, _, rng = case
    dtype = U.dtype
    W = np.linalg.qr(A.astype(np.complex128 if dtype.kind == "c" else np.float64))[0]  # (..., N, r)
    r = W.shape[-1]
    X = random_factors(rng, (*U.shape[:-2], r, r), dtype).astype(W.dtype)
    R = uu.retract(np.eye(r) + angle * X, method="polar")  # unitary; near I for small angles, else anywhere
    A_target = (U.astype(W.dtype) @ W @ (R - np.eye(r))).astype(dtype)  # V - U = A_target W^H
    B_target = W.astype(dtype)
    V = U + A_target @ hconj(B_target)
    result = uu.project(U, A_target, B_target)
    assert_unitary_near(result, V, dtype)


@SETTINGS
@given(cases())
def test_left_equivariance(case):
    """project(Q U, Q A, B) = Q project(U, A, B) for unitary Q, and the same for transport."""
    U, A, B, rng = case
    dtype, n = U.dtype, U.shape[-1]
    Q = uu.random_unitary(n, dtype=dtype, rng=rng)
    for fn in (uu.project, uu.transport):
        lhs = fn(Q @ U, Q @ A, B)
        rhs = Q @ fn(U, A, B)
        assert_unitary_near(lhs, rhs, dtype)


@SETTINGS
@given(cases(max_scale=5.0))
def test_transport_keeps_the_determinant_of_real_U(case):
    """SO(N) stays SO(N): det(transport(U, A, B)) = det(U) = +-1 for real U (any step size)."""
    U, A, B, _ = case
    if U.dtype.kind == "c":
        U, A, B = U.real.copy(), A.real.copy(), B.real.copy()
    V = uu.transport(U, A, B)
    assert V.dtype == U.dtype
    np.testing.assert_allclose(np.linalg.det(V.astype(np.float64)), np.linalg.det(U.astype(np.float64)), atol=1e-3)
    assert np.all(np.sign(np.linalg.det(V.astype(np.float64))) == np.sign(np.linalg.det(U.astype(np.float64))))


@SETTINGS
@given(cases())
def test_transport_back_with_the_negated_tangent_step_returns_U(case):
    """V = U expm(S), S = skew(U^H A B^H); with A' = -V U^H A, skew(V^H A' B^H) = -S, so back to U."""
    U, A, B, _ = case
    dtype = U.dtype
    V = uu.transport(U, A, B)
    A_back = -(V.astype(np.complex128) @ hconj(U.astype(np.complex128)) @ A.astype(np.complex128))
    A_back = A_back.real if dtype.kind != "c" else A_back
    back = uu.transport(V, A_back.astype(dtype), B)
    assert_unitary_near(back, U, dtype)


@SETTINGS
@given(cases(max_scale=10.0))
def test_results_are_unitary_to_dtype_precision(case):
    U, A, B, _ = case
    for fn in (uu.project, uu.transport):
        assert unitary_ok(fn(U, A, B), U.dtype)
