"""Every Numba kernel against its NumPy twin, and the public API under both backends."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ALL_DTYPES, random_factors

import unitary_update as uu
from unitary_update import _kernels, _lowrank
from unitary_update._xp import hconj
from unitary_update.reference import project_dense, transport_dense


def tol(dtype):
    return 1e-4 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-11


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize(("n", "k"), [(1, 1), (70, 1), (300, 3)])
def test_adjoint_matmul_twins_agree(dtype, n, k):
    rng = np.random.default_rng(n + k)
    U, A = random_factors(rng, (n, n), dtype), random_factors(rng, (n, k), dtype)
    expected = U.astype(np.complex128).conj().T @ A.astype(np.complex128)
    for fn in (_kernels.adjoint_matmul_numba, _kernels.adjoint_matmul_numpy):
        got = fn(U, A)
        assert got.dtype == dtype
        np.testing.assert_allclose(
            got, expected if np.dtype(dtype).kind == "c" else expected.real, rtol=0, atol=tol(dtype) * np.sqrt(n) * 10
        )


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_adjoint_matmul_numba_propagates_non_finite_even_against_zeros(bad):
    U = np.eye(300, dtype=np.float32)
    U[123, 45] = bad
    A = np.zeros((300, 1), np.float32)
    assert not np.isfinite(_kernels.adjoint_matmul_numba(U, A)).all()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("in_place", [True, False])
def test_fused_update_twins_agree(dtype, in_place):
    rng = np.random.default_rng(1)
    n, r = 300, 4
    U = random_factors(rng, (n, n), dtype)
    W = np.linalg.qr(random_factors(rng, (n, r), dtype))[0]
    D = random_factors(rng, (r, r), dtype)
    expected = U + (U @ W) @ D @ W.conj().T
    results = []
    for fn in (_kernels.fused_update_numba, _lowrank.fused_update_numpy):
        V = U.copy()
        out = V if in_place else np.full_like(U, np.nan)
        fn(V, W, D, out)
        results.append(out)
        np.testing.assert_allclose(out, expected, rtol=0, atol=tol(dtype) * 10)
    np.testing.assert_allclose(results[0], results[1], rtol=0, atol=tol(dtype) * 10)


def batched_problem(dtype, F, n, k, seed, kind="random"):
    rng = np.random.default_rng(seed)
    U = uu.random_unitary(n, dtype=dtype, batch_shape=(F,), rng=rng)
    A = random_factors(rng, (F, n, k), dtype) / np.sqrt(n)
    B = random_factors(rng, (F, n, k), dtype)
    if kind == "zero_A":
        A[:] = 0
    elif kind == "parallel":  # A_hat parallel to B
        B = hconj(U) @ A
    elif kind == "singular":  # U + A B^H singular
        A = -U[..., :, :k].copy()
        B = np.broadcast_to(np.eye(n, k, dtype=dtype), (F, n, k)).copy()
    elif kind == "rank_deficient":
        A[..., :, -1] = A[..., :, 0]
    return U, A, B


@pytest.mark.parametrize("transport", [False, True])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize(("n", "k"), [(1, 1), (2, 1), (4, 3), (8, 1), (16, 1), (16, 4), (20, 2)])
@pytest.mark.parametrize("kind", ["random", "zero_A", "parallel", "singular", "rank_deficient"])
def test_batched_update_twins_agree_and_are_unitary(transport, dtype, n, k, kind):
    F = 24
    U, A, B = batched_problem(dtype, F, n, k, seed=n * 10 + k, kind=kind)
    out_numba = np.empty_like(U)
    _kernels.batched_update_numba(U, A, B, transport, out_numba)
    assert np.all(np.isfinite(out_numba))
    assert uu.unitarity_error(out_numba) < (2e-5 if np.dtype(dtype).itemsize <= 8 else 1e-12) * max(n, 4)
    if kind == "singular" and not transport:
        # the polar factor is not unique: check the defining property Q^H M Hermitian PSD
        M = (U + A @ hconj(B)).astype(np.complex128)
        H = hconj(out_numba.astype(np.complex128)) @ M
        np.testing.assert_allclose(H, hconj(H), atol=1e-4)
        assert np.linalg.eigvalsh(0.5 * (H + hconj(H))).min() > -1e-4
        return
    out_numpy = np.empty_like(U)
    _lowrank.batched_update_numpy(U, A, B, transport, out_numpy)
    np.testing.assert_allclose(out_numba, out_numpy, rtol=0, atol=tol(dtype) * 10)
    ref = (transport_dense if transport else project_dense)(U, A, B)
    np.testing.assert_allclose(out_numba, ref, rtol=0, atol=tol(dtype) * 10)


@pytest.mark.parametrize("scale", [1e2, 1e4, 1e8])
def test_batched_kernel_keeps_huge_real_rotations_orthogonal(scale):
    """Angles up to ||A|| ||B||: the kernel's real core is repaired to the nearest rotation in place."""
    rng = np.random.default_rng(5)
    U = uu.random_unitary(16, dtype=np.float64, batch_shape=(32,), rng=rng)
    A, B = (np.sqrt(scale) * rng.standard_normal((32, 16, 2)) for _ in range(2))
    out = np.empty_like(U)
    _kernels.batched_update_numba(U, A, B, True, out)
    assert max(uu.unitarity_error(m) for m in out) < 1e-14
    ref = np.empty_like(U)
    _lowrank.batched_update_numpy(U, A, B, True, ref)
    # agreement is limited by the conditioning of a rotation by angle ~scale: eps * scale
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-14 * scale)


@pytest.mark.parametrize("update", ["project", "transport"])
@pytest.mark.parametrize("shape", [(64, 12, 12), (2, 400, 400)])
def test_public_api_same_result_under_both_backends(update, shape):
    rng = np.random.default_rng(2)
    *batch, n, _ = shape
    U = uu.random_unitary(n, dtype=np.complex64, batch_shape=tuple(batch), rng=rng)
    A, B = random_factors(rng, (*batch, n, 2), np.complex64) * 0.1, random_factors(rng, (*batch, n, 2), np.complex64)
    results = {}
    for backend in ("numba", "numpy"):
        with uu.options(backend=backend):
            V = U.copy()
            getattr(uu, update)(V, A, B, out=V)
            results[backend] = V
            results[backend + "-new"] = getattr(uu, update)(U, A, B)
    for key in ("numba", "numba-new", "numpy-new"):
        np.testing.assert_allclose(results[key], results["numpy"], rtol=0, atol=2e-5)


@pytest.mark.parametrize("update", ["project", "transport"])
def test_numba_batched_path_checks_finiteness_before_writing(update):
    U = uu.random_unitary(8, dtype=np.float32, batch_shape=(32,), rng=3)
    U[17, 2, 3] = np.nan
    before = U.copy()
    with uu.options(backend="numba"), pytest.raises(uu.NonFiniteError, match="U contains NaN"):
        getattr(uu, update)(U, np.ones((8, 1), np.float32), np.ones((8, 1), np.float32), out=U)
    np.testing.assert_array_equal(U, before)


@pytest.mark.parametrize("update", ["project", "transport"])
def test_fused_path_detects_non_finite_U_through_a_hat(update):
    U = uu.random_unitary(300, dtype=np.float32, rng=4)
    U[5, 250] = np.inf
    before = U.copy()
    with uu.options(backend="numba"), pytest.raises(uu.NonFiniteError, match="U contains NaN"):
        getattr(uu, update)(U, np.zeros((300, 1), np.float32), np.ones((300, 1), np.float32), out=U)
    np.testing.assert_array_equal(U, before)


def test_lowrank_update_without_out_does_not_touch_U_on_fused_path():
    U = uu.random_unitary(300, dtype=np.float64, rng=5)
    U0 = U.copy()
    rng = np.random.default_rng(6)
    with uu.options(backend="numba"):
        V = _lowrank.lowrank_update(
            np, "transport", U, rng.standard_normal((300, 1)), rng.standard_normal((300, 1)), None, U.shape
        )
    np.testing.assert_array_equal(U, U0)
    assert uu.unitarity_error(V) < 1e-12 * 300
