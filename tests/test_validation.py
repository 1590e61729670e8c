"""Bad input: clear errors naming the argument, raised before anything is written."""

from __future__ import annotations

import numpy as np
import pytest

import unitary_update as uu

N = 6


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    U = uu.random_unitary(N, dtype=np.float64, rng=rng)
    return U, rng.standard_normal((N, 2)), rng.standard_normal((N, 2))


@pytest.mark.parametrize("fn", [uu.project, uu.transport])
@pytest.mark.parametrize(
    ("mutate", "exc", "match"),
    [
        (lambda U, A, B: (U[:, :-1], A, B), ValueError, r"U must have shape \(\.\.\., N, N\); got \(6, 5\)"),
        (lambda U, A, B: (U, A[:-1], B), ValueError, r"A has shape \(5, 2\) but U is 6 x 6"),
        (lambda U, A, B: (U, A, B[:, :1]), ValueError, "same number of columns"),
        (lambda U, A, B: (U, A[:, :0], B[:, :0]), ValueError, "at least one column"),
        (lambda U, A, B: (U, np.stack([A] * 3), np.stack([B] * 2)), ValueError, "batch dimensions do not broadcast"),
        (lambda U, A, B: (U.astype(int), A, B), TypeError, "U has dtype int64"),
        (lambda U, A, B: (U, A.astype(bool), B), TypeError, "A has dtype bool"),
        (lambda U, A, B: (U, A.astype(np.float16), B), TypeError, "A has dtype float16"),
        (lambda U, A, B: (U, A + 1j, B), TypeError, "A is complex .* but U is real"),
        (lambda U, A, B: (U, A, B.tolist()), TypeError, "B must be an array .* got list"),
        (lambda U, A, B: (U, 1.0, B), TypeError, "A must be an array .* got float"),
        (lambda U, A, B: (U, np.where(np.arange(2) == 0, np.nan, A), B), uu.NonFiniteError, "A contains NaN or Inf"),
        (lambda U, A, B: (U, A, np.full_like(B, np.inf)), uu.NonFiniteError, "B contains NaN or Inf"),
        (lambda U, A, B: (U, A[:, 0], B[:, 0]), ValueError, r"A must have shape \(\.\.\., N, k\)"),
    ],
)
def test_bad_factors_and_shapes_raise_and_leave_out_untouched(data, fn, mutate, exc, match):
    U, A, B = mutate(*data)
    out = data[0].copy()
    before = out.copy()
    with pytest.raises(exc, match=match):
        fn(U, A, B, out=out)
    np.testing.assert_array_equal(out, before)


@pytest.mark.parametrize("fn", [uu.project, uu.transport])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_U_in_place_raises_and_leaves_U_untouched(data, fn, bad):
    U, A, B = data
    U = U.copy()
    U[2, 3] = bad
    before = U.copy()
    with pytest.raises(uu.NonFiniteError, match="U contains NaN or Inf"):
        fn(U, A, B, out=U)
    np.testing.assert_array_equal(U, before)


@pytest.mark.parametrize("fn", [uu.project, uu.transport])
def test_non_finite_large_U_detected(fn):
    U = uu.random_unitary(200, dtype=np.float32, rng=1)
    U[150, 7] = np.nan
    before = U.copy()
    with pytest.raises(uu.NonFiniteError):
        fn(U, np.ones((200, 1), np.float32), np.ones((200, 1), np.float32), out=U)
    np.testing.assert_array_equal(U, before)


@pytest.mark.parametrize(
    ("out", "exc", "match"),
    [
        (np.zeros((N, N), np.float32), TypeError, "out has dtype float32"),
        (np.zeros((N + 1, N + 1)), ValueError, r"out has shape \(7, 7\)"),
        ([[0.0] * N] * N, TypeError, "out must be an array"),
    ],
)
def test_bad_out(data, out, exc, match):
    U, A, B = data
    with pytest.raises(exc, match=match):
        uu.project(U, A, B, out=out)


def test_read_only_and_overlapping_out(data):
    U, A, B = data
    ro = U.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        uu.transport(U, A, B, out=ro)
    big = np.zeros((2 * N, N))
    big[:N] = U
    with pytest.raises(ValueError, match="overlaps U"):
        uu.transport(big[:N], A, B, out=big[N // 2 : N // 2 + N])


def test_batched_result_larger_than_out_is_rejected(data):
    U, A, B = data
    out = U.copy()
    with pytest.raises(ValueError, match=r"out has shape \(6, 6\); the result has shape \(3, 6, 6\)"):
        uu.project(out, np.stack([A] * 3), B, out=out)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"rank": 0}, ValueError, "1 <= rank <= 6; got 0"),
        ({"rank": 7}, ValueError, "1 <= rank <= 6; got 7"),
        ({"rank": 1.5}, TypeError, "rank must be an integer"),
        ({"rank": True}, TypeError, "rank must be an integer"),
        (
            {"rank": 1, "method": "svd"},
            ValueError,
            "unknown sketch method 'svd'; valid: 'randomized', 'lsi', 'column', 'exact'",
        ),
        (
            {"rank": 1, "method": "lsi", "oversampling": 3},
            TypeError,
            "unknown option 'oversampling' for sketch method 'lsi'",
        ),
        ({"rank": 1, "oversampling": -1}, ValueError, "non-negative integer"),
        ({"rank": 1, "rng": "seed"}, TypeError, "rng must be"),
    ],
)
def test_bad_sketch_arguments(kwargs, exc, match):
    G = np.ones((N, N))
    with pytest.raises(exc, match=match):
        uu.sketch(G, **kwargs)


@pytest.mark.parametrize(
    ("G", "exc", "match"),
    [
        (np.full((N, N), np.nan), uu.NonFiniteError, "G contains NaN or Inf"),
        (np.ones((N, N), dtype=np.int32), TypeError, "G has dtype int32"),
        (np.ones(N), ValueError, "G must have shape"),
        ((np.ones((N, 2)), np.ones((N, 3))), ValueError, "same number of columns m"),
        ((np.ones((N, 2)),), ValueError, "pair"),
        ((np.ones((N, 2)), np.full((N, 2), np.inf)), uu.NonFiniteError, "Y contains NaN or Inf"),
        (3.0, TypeError, "G must be an array"),
    ],
)
def test_bad_gradients(G, exc, match):
    with pytest.raises(exc, match=match):
        uu.sketch(G, 1)


@pytest.mark.parametrize(
    ("kwargs", "G", "exc", "match"),
    [
        ({"update": "retract"}, np.ones((N, N)), ValueError, "unknown update 'retract'; valid: 'project', 'transport'"),
        ({"sketch": "qr"}, np.ones((N, N)), ValueError, "unknown sketch method 'qr'"),
        ({}, np.ones((N + 1, N + 1)), ValueError, r"G has shape \(7, 7\) but U is 6 x 6"),
        ({}, np.ones((N, N)) * 1j, TypeError, "G is complex"),
        ({}, np.full((N, N), np.nan), uu.NonFiniteError, "G contains NaN"),
    ],
)
def test_bad_step_arguments_leave_U_untouched(data, kwargs, G, exc, match):
    U = data[0].copy()
    before = U.copy()
    with pytest.raises(exc, match=match):
        uu.step(U, G, out=U, **kwargs)
    np.testing.assert_array_equal(U, before)


def test_random_unitary_validation_and_properties():
    with pytest.raises(ValueError, match="n must be >= 1"):
        uu.random_unitary(0)
    with pytest.raises(TypeError, match="n must be an integer"):
        uu.random_unitary(2.0)
    with pytest.raises(TypeError, match="dtype is int64"):
        uu.random_unitary(3, dtype=np.int64)
    Q1 = uu.random_unitary(5, dtype=np.complex64, batch_shape=(2, 3), rng=4)
    Q2 = uu.random_unitary(5, dtype=np.complex64, batch_shape=(2, 3), rng=4)
    assert Q1.shape == (2, 3, 5, 5)
    assert Q1.dtype == np.complex64
    np.testing.assert_array_equal(Q1, Q2)
    assert uu.unitarity_error(Q1) < 1e-5
    # Haar: the mean of |trace|^2 over many samples is 1 for the unitary group
    T = np.trace(uu.random_unitary(8, batch_shape=(4000,), rng=5), axis1=-2, axis2=-1)
    assert abs(np.mean(np.abs(T) ** 2) - 1) < 0.1


def test_unitarity_error_is_max_over_batch():
    stack = np.stack([np.eye(3), 2 * np.eye(3)])
    assert uu.unitarity_error(stack) == pytest.approx(np.sqrt(27))
    with pytest.raises(ValueError, match="U must have shape"):
        uu.unitarity_error(np.ones((3, 2)))


def test_options_switch_and_validate():
    with pytest.raises(ValueError, match="backend must be one of"):
        uu.set_options(backend="cuda")
    with uu.options(check_finite=False):
        assert uu.get_options().check_finite is False
    assert uu.get_options().check_finite is True
