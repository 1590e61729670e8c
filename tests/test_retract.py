"""retract (polar / Newton-Schulz / QR) against scipy, and the DriftControl policy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from helpers import ALL_DTYPES, random_factors

import unitary_update as uu
from unitary_update._retract import RETRACT_METHODS
from unitary_update._xp import hconj


def floor_tol(dtype, n: int) -> float:
    """Unitarity a retraction must reach.

    Single precision: a small multiple of sqrt(N) eps, the floor of a freshly rounded matrix (the
    retraction works in double, so it gets there; a float32 LAPACK SVD would not, ~N eps).  Double
    precision: the last matrix product is rounded in working precision, so a few N eps.
    """
    eps = float(np.finfo(dtype).eps)
    return 8 * np.sqrt(n) * eps if np.dtype(dtype) in (np.float32, np.complex64) else 4 * n * eps


def drifted(n: int, dtype, size: float, seed: int = 0, batch=()) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    U = uu.random_unitary(n, dtype=dtype, batch_shape=batch, rng=rng)
    noise = random_factors(rng, (*batch, n, n), dtype) / n
    return U, (U + size * noise).astype(dtype)


def scipy_polar(M: np.ndarray) -> np.ndarray:
    flat = M.reshape(-1, *M.shape[-2:]).astype(np.complex128 if M.dtype.kind == "c" else np.float64)
    return np.stack([scipy.linalg.polar(m)[0] for m in flat]).reshape(M.shape)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("method", ["polar", "newton_schulz"])
@pytest.mark.parametrize("size", [0.0, 1e-5, 1e-2, 0.3])
def test_polar_methods_match_scipy_polar(backend, dtype, method, size):
    n = 40
    _, M = drifted(n, dtype, size, seed=1)
    V = backend.to_numpy(uu.retract(backend.asarray(M), method=method))
    assert V.dtype == dtype
    assert uu.unitarity_error(V) <= floor_tol(dtype, n)
    ref = scipy_polar(M)
    atol = 50 * np.finfo(dtype).eps
    np.testing.assert_allclose(V, ref, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_newton_schulz_far_from_unitary_falls_back_to_the_svd(dtype):
    rng = np.random.default_rng(2)
    M = random_factors(rng, (3, 12, 12), dtype)  # nowhere near unitary: ||M^H M - I|| >> 1/2
    V = uu.retract(M, method="newton_schulz")
    np.testing.assert_allclose(V, scipy_polar(M), rtol=0, atol=2000 * np.finfo(dtype).eps)
    assert uu.unitarity_error(V) <= floor_tol(dtype, 12)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_qr_gives_q_with_positive_diagonal_r(dtype):
    _, M = drifted(30, dtype, 1e-2, seed=3, batch=(2,))
    Q = uu.retract(M, method="qr")
    assert Q.dtype == dtype
    assert uu.unitarity_error(Q) <= floor_tol(dtype, 30)
    R = hconj(Q).astype(np.complex128) @ M.astype(np.complex128)  # = R, upper triangular
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(np.tril(R, -1), 0, atol=100 * eps)
    d = np.diagonal(R, axis1=-2, axis2=-1)
    assert np.all(d.real > 0)
    np.testing.assert_allclose(d.imag, 0, atol=100 * eps)
    ref = np.stack([scipy.linalg.qr(m)[0] for m in M.astype(np.complex128)])
    signs = np.diagonal(np.stack([scipy.linalg.qr(m)[1] for m in M.astype(np.complex128)]), axis1=-2, axis2=-1)
    np.testing.assert_allclose(Q, ref * (signs / np.abs(signs))[..., None, :], atol=100 * eps)


@pytest.mark.parametrize("method", RETRACT_METHODS)
def test_retraction_is_close_to_a_nearly_unitary_input(method):
    _, M = drifted(50, np.float64, 1e-6, seed=4)
    V = uu.retract(M, method=method)
    assert np.linalg.norm(V - M) <= 2 * uu.unitarity_error(M)  # moves by O(drift), never more


@pytest.mark.parametrize("method", RETRACT_METHODS)
@pytest.mark.parametrize("order", ["C", "F"])
def test_in_place_and_separate_out(backend, method, order):
    _, M = drifted(70, np.complex64, 1e-3, seed=5)
    expected = uu.retract(M, method=method)
    U = backend.asarray(M) if backend.name != "numpy" else np.array(M, order=order)
    if backend.name == "jax":  # immutable: out= is refused, the result is returned instead
        with pytest.raises(TypeError, match=r"out is a JAX array; JAX arrays are immutable"):
            uu.retract(U, method=method, out=U)
        np.testing.assert_allclose(backend.to_numpy(uu.retract(U, method=method)), expected, atol=1e-6)
        return
    assert uu.retract(U, method=method, out=U) is U
    np.testing.assert_allclose(backend.to_numpy(U), expected, atol=1e-6)
    out = np.zeros_like(M)
    assert uu.retract(M, method=method, out=out) is out
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_input_is_not_modified_without_out():
    _, M = drifted(10, np.float32, 1e-3, seed=6)
    before = M.copy()
    for method in RETRACT_METHODS:
        uu.retract(M, method=method)
    np.testing.assert_array_equal(M, before)


@pytest.mark.parametrize("method", RETRACT_METHODS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_tiny_sizes_and_extreme_scales(method, dtype):
    # N = 1: x / |x|; N = 2; and unitary matrices scaled by 1e-30 / 1e30 (far outside Newton-Schulz's region)
    for n in (1, 2):
        U = uu.random_unitary(n, dtype=dtype, rng=n)
        for scale in (1e-30, 1.0, 1e30):
            V = uu.retract((scale * U).astype(dtype), method=method)
            assert np.all(np.isfinite(V))
            np.testing.assert_allclose(V, U, atol=50 * np.finfo(dtype).eps)


@pytest.mark.parametrize("method", RETRACT_METHODS)
def test_singular_input_gives_a_unitary_matrix(method):
    M = np.zeros((4, 4))
    M[0, 0] = 1.0  # rank 1
    V = uu.retract(M, method=method)
    assert uu.unitarity_error(V) < 1e-14
    if method != "qr":  # a polar factor: V^H M is Hermitian positive semidefinite
        H = V.T @ M
        np.testing.assert_allclose(H, H.T, atol=1e-14)
        assert np.linalg.eigvalsh(H).min() > -1e-14


def test_retract_keeps_the_determinant_sign_of_a_nearly_orthogonal_matrix():
    U, M = drifted(9, np.float64, 1e-3, seed=7)
    for method in RETRACT_METHODS:
        assert np.sign(np.linalg.det(uu.retract(M, method=method))) == np.sign(np.linalg.det(U))


# --- DriftControl ------------------------------------------------------------------------------
def test_estimate_tracks_the_unitarity_error():
    policy = uu.DriftControl()
    for size in (1e-5, 1e-3, 1e-1):
        _, M = drifted(200, np.float64, size, seed=8)
        true = uu.unitarity_error(M)
        assert 0.5 * true <= policy.estimate(M) <= 2 * true


def test_estimate_of_a_stack_is_the_max():
    _, M = drifted(20, np.float64, 1e-3, seed=9, batch=(3,))
    M[1] *= 1.01  # unitarity error ~ 0.02 * sqrt(20), far above the others
    assert uu.DriftControl().estimate(M) == pytest.approx(uu.unitarity_error(M), rel=0.5)


def test_periodic_retraction_counts_steps():
    _, M = drifted(16, np.float64, 1e-4, seed=10)
    policy = uu.DriftControl(every=3, tol=None)
    done = [policy.maybe_retract(M, step=t) for t in range(10)]
    assert done == [False, False, False, True, False, False, True, False, False, True]
    assert policy.retractions == 3
    assert uu.unitarity_error(M) < 1e-14
    own = uu.DriftControl(every=2, tol=None)  # without step: the policy counts its own calls 1, 2, ...
    assert [own.maybe_retract(M) for _ in range(4)] == [False, True, False, True]


def test_tolerance_triggers_retraction_only_when_drifted():
    U, M = drifted(64, np.float32, 1e-3, seed=11)
    policy = uu.DriftControl(check_every=1)
    assert policy.tolerance(64, np.float32) == pytest.approx(64 * np.finfo(np.float32).eps / 4)
    assert policy.tolerance(64, np.complex128) == pytest.approx(64 * np.finfo(np.float64).eps * 2)
    assert uu.DriftControl(tol=1e-3).tolerance(64, np.float32) == 1e-3
    assert policy.maybe_retract(U, step=1) is False  # a fresh matrix is below tol
    before = M.copy()
    assert policy.maybe_retract(M, step=2) is True
    assert uu.unitarity_error(M) < floor_tol(np.float32, 64)
    np.testing.assert_allclose(M, scipy_polar(before), atol=1e-6)  # Newton-Schulz: the polar factor
    checked = uu.DriftControl(check_every=5)
    _, M2 = drifted(64, np.float32, 1e-3, seed=12)
    assert [checked.maybe_retract(M2, step=t) for t in (1, 2, 3, 4, 5)] == [False] * 4 + [True]


def test_drift_along_one_coordinate_is_not_hidden_from_every_check():
    """A probe kept for good could be nearly orthogonal to the drift; a new probe per check is not."""
    n, policy = 128, uu.DriftControl(check_every=10)
    first = np.abs(policy._probe(np, n, np.float32, 10)[:, 0])
    j = int(np.argmin(first))  # the coordinate the first check's probe sees least
    U = uu.random_unitary(n, dtype=np.float32, rng=13)
    U[:, j] *= np.float32(1 + 1e-4)  # unitarity error 2e-4, 50x the tolerance
    assert uu.unitarity_error(U) > 40 * policy.tolerance(n, np.float32)
    assert any(policy.maybe_retract(U, step=t) for t in (10, 20, 30, 40, 50))
    assert uu.unitarity_error(U) < floor_tol(np.float32, n)
    # the probe of a check depends only on the seed and the step: a resumed policy checks alike
    again = uu.DriftControl(check_every=10)
    np.testing.assert_array_equal(again._probe(np, n, np.float32, 30), policy._probe(np, n, np.float32, 30))


@pytest.mark.parametrize("update", ["project", "transport"])
def test_step_with_default_drift_control_keeps_float32_unitary(update):
    rng = np.random.default_rng(13)
    n = 48
    U = uu.random_unitary(n, dtype=np.float32, rng=rng)
    V = U.copy()
    drift = uu.DriftControl(check_every=1, tol=2e-6)
    for _ in range(300):
        G = (1e-2 / n * rng.standard_normal((n, n))).astype(np.float32)
        seed = int(rng.integers(1 << 30))
        uu.step(U, G, update=update, rng=seed, out=U, drift=drift)
        uu.step(V, G, update=update, rng=seed, out=V)
        assert drift.last_estimate is not None
        assert uu.unitarity_error(U) < 4e-6
    assert drift.retractions >= 1
    assert uu.unitarity_error(V) > 4e-6  # without drift control the same run has drifted further
    np.testing.assert_allclose(U, V, atol=1e-4)  # ... but the trajectory is the same


def test_step_without_drift_is_unchanged_and_torch_in_place(backend):
    rng = np.random.default_rng(14)
    U0 = uu.random_unitary(20, dtype=np.float64, rng=rng)
    G = 0.01 * rng.standard_normal((20, 20))
    a = uu.step(U0, G, rng=1)
    b = uu.step(U0, G, rng=1, drift=None)
    np.testing.assert_array_equal(a, b)
    U = backend.asarray(U0 + 1e-3 * rng.standard_normal((20, 20)))
    if backend.name == "jax":  # immutable: neither step nor the drift control can write into it
        with pytest.raises(TypeError, match=r"out is a JAX array; JAX arrays are immutable"):
            uu.step(U, backend.asarray(G), rng=1, out=U, drift=uu.DriftControl(every=1))
        return
    out = uu.step(U, backend.asarray(G), rng=1, out=U, drift=uu.DriftControl(every=1))
    assert out is U
    assert uu.unitarity_error(backend.to_numpy(U)) < 1e-13


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"every": 0}, ValueError, "every must be >= 1; got 0"),
        ({"every": 2.5}, TypeError, "every must be an integer"),
        ({"every": None, "tol": None}, ValueError, "needs every, tol or both"),
        ({"tol": -1.0}, ValueError, "tol must be a positive finite number"),
        ({"tol": float("nan")}, ValueError, "tol must be a positive finite number"),
        ({"tol": "tight"}, TypeError, "tol must be a positive number, 'auto' or None"),
        ({"method": "cayley"}, ValueError, "unknown retraction method 'cayley'; valid: 'polar'"),
        ({"check_every": 0}, ValueError, "check_every must be >= 1"),
        ({"rng": "seed"}, TypeError, "rng must be"),
    ],
)
def test_drift_control_argument_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        uu.DriftControl(**kwargs)


def test_repr_names_the_settings():
    assert repr(uu.DriftControl(every=5)) == (
        "DriftControl(every=5, tol='auto', method='newton_schulz', check_every=10)"
    )
