"""Bad input: clear errors naming the argument, raised before anything is written."""

from __future__ import annotations

import numpy as np
import pytest

import unitary_update as uu
from unitary_update.reference import project_dense, transport_dense

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


@pytest.mark.parametrize(
    "call",
    [
        lambda A, B: uu.project(None, A, B),
        lambda A, B: uu.transport(None, A, B),
        lambda A, B: uu.retract(None),
    ],
    ids=["project", "transport", "retract"],
)
def test_none_as_U_is_a_type_error_naming_U(data, call):
    # without out, ``out is U`` holds for U=None: U must still be validated as U
    _, A, B = data
    with pytest.raises(TypeError, match=r"U must be an array.*got NoneType"):
        call(A, B)


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


@pytest.mark.parametrize("fn", [uu.project, uu.transport])
@pytest.mark.parametrize(
    ("dtype", "bad"),
    [
        (np.float32, np.nan),
        (np.float32, np.inf),
        (np.float64, -np.inf),
        (np.complex64, np.nan),
        (np.complex64, complex(np.inf, 0.0)),
        (np.complex128, complex(0.0, -np.inf)),
    ],
)
@pytest.mark.parametrize("zero_rows_of_A", ["none", "the bad row", "all but one"])
def test_non_finite_U_on_the_blas_path_is_caught_whatever_the_rows_of_A(fn, dtype, bad, zero_rows_of_A):
    # the BLAS path checks U through U^H A when every row of A is nonzero, by a pass over U
    # otherwise; a NaN/Inf in U must raise either way, including a row of U that A does not touch
    n, k = 300, 8  # r = 16 at N >= 256: the BLAS path, not the fused or batched Numba kernels
    rng = np.random.default_rng(3)
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A = rng.standard_normal((n, k)).astype(dtype)
    B = rng.standard_normal((n, k)).astype(dtype)
    if zero_rows_of_A == "the bad row":
        A[41] = 0
    elif zero_rows_of_A == "all but one":
        A[1:] = 0
    U[41, 17] = bad
    before = U.copy()
    with pytest.raises(uu.NonFiniteError, match="U contains NaN or Inf"):
        fn(U, A, B, out=U)
    np.testing.assert_array_equal(U, before)


def test_the_blas_path_skips_the_pass_over_U_only_when_U_H_A_proves_U_finite(monkeypatch):
    from unitary_update import _lowrank

    calls = []
    real_check = _lowrank.check_finite
    monkeypatch.setattr(_lowrank, "check_finite", lambda x, name: (calls.append(name), real_check(x, name)))
    n, k = 300, 8
    rng = np.random.default_rng(4)
    U = uu.random_unitary(n, dtype=np.float32, rng=rng)
    A = rng.standard_normal((n, k)).astype(np.float32)
    B = rng.standard_normal((n, k)).astype(np.float32)
    expected = uu.project(U, A, B, out=None)
    assert calls == []  # every row of A nonzero and U^H A finite: no N x N pass
    A[5] = 0
    np.testing.assert_allclose(uu.project(U, A, B), project_dense(U, A, B), atol=1e-4)
    assert calls == ["U"]  # a zero row of A: U^H A proves nothing about U's row 5, so U is read
    assert np.isfinite(expected).all()


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
    before = None if isinstance(out, list) else out.copy()
    with pytest.raises(exc, match=match):
        uu.project(U, A, B, out=out)
    if before is not None:
        np.testing.assert_array_equal(out, before)


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


# --- retract, DriftControl, unitarity_error, factored sketches, step(drift=...) -----------------
# Every failing call below is made with an ``out`` (or in place) and must leave it untouched.
def _drifted(n: int = N, dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(20)
    return (uu.random_unitary(n, dtype=dtype, rng=rng) + 1e-3 * rng.standard_normal((n, n))).astype(dtype)


@pytest.mark.parametrize("method", ["polar", "newton_schulz", "qr"])
@pytest.mark.parametrize(
    ("make_U", "exc", "match"),
    [
        (lambda U: np.where(np.eye(N, dtype=bool), np.nan, U), uu.NonFiniteError, "U contains NaN or Inf"),
        (lambda U: np.where(np.eye(N, dtype=bool), -np.inf, U), uu.NonFiniteError, "U contains NaN or Inf"),
        (lambda U: U[:, :-1], ValueError, r"U must have shape \(\.\.\., N, N\); got \(6, 5\)"),
        (lambda U: U[0], ValueError, r"U must have shape \(\.\.\., N, N\); got \(6,\)"),
        (lambda U: U[:0, :0], ValueError, r"U is empty \(N = 0\)"),
        (lambda U: U.astype(np.int64), TypeError, "U has dtype int64"),
        (lambda U: U.astype(np.float16), TypeError, "U has dtype float16"),
        (lambda U: U.astype(object), TypeError, "U has dtype object"),
        (lambda U: U.astype(">f8"), TypeError, "U has dtype >f8"),
        (lambda U: U.tolist(), TypeError, "U must be an array .* got list"),
        (lambda U: 1.0, TypeError, "U must be an array .* got float"),
    ],
)
def test_retract_bad_U_raises_and_leaves_out_untouched(method, make_U, exc, match):
    out = _drifted()
    before = out.copy()
    with pytest.raises(exc, match=match):
        uu.retract(make_U(out.copy()), method=method, out=out)
    np.testing.assert_array_equal(out, before)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_retract_in_place_of_non_finite_U_leaves_it_untouched(bad):
    U = _drifted(100, np.float32)  # > 64 rows: the blockwise finiteness check
    U[77, 3] = bad
    before = U.copy()
    with pytest.raises(uu.NonFiniteError):
        uu.retract(U, method="newton_schulz", out=U)
    np.testing.assert_array_equal(U, before)


def _read_only(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x.flags.writeable = False
    return x


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"method": "cayley"}, ValueError, "unknown retraction method 'cayley'; valid: 'polar', 'newton_schulz', 'qr'"),
        ({"out": np.zeros((N, N), np.float32)}, TypeError, "out has dtype float32"),
        ({"out": np.zeros((N + 1, N + 1))}, ValueError, r"out has shape \(7, 7\)"),
        ({"out": [[0.0] * N] * N}, TypeError, "out must be an array"),
        ({"out": _read_only(np.zeros((N, N)))}, ValueError, "out is read-only"),
    ],
)
def test_retract_bad_arguments(kwargs, exc, match):
    U = _drifted()
    before = U.copy()
    out = kwargs.get("out")
    out_before = None if out is None or isinstance(out, list) else out.copy()
    with pytest.raises(exc, match=match):
        uu.retract(U, **kwargs)
    np.testing.assert_array_equal(U, before)
    if out_before is not None:
        np.testing.assert_array_equal(out, out_before)


def test_retract_out_overlapping_U_is_rejected():
    big = np.zeros((2 * N, N))
    big[:N] = _drifted()
    before = big.copy()
    with pytest.raises(ValueError, match="overlaps U"):
        uu.retract(big[:N], out=big[N // 2 : N // 2 + N])
    np.testing.assert_array_equal(big, before)


def test_drift_control_non_finite_U_raises_and_leaves_it_untouched():
    U = _drifted()
    U[1, 1] = np.nan
    before = U.copy()
    for policy, step in ((uu.DriftControl(check_every=1), 1), (uu.DriftControl(every=1, tol=None), 1)):
        with pytest.raises(uu.NonFiniteError):
            policy.maybe_retract(U, step=step)
        np.testing.assert_array_equal(U, before)
        assert policy.retractions == 0


@pytest.mark.parametrize(
    ("step", "exc", "match"),
    [
        (-1, ValueError, "step must be >= 0; got -1"),
        (2.0, TypeError, "step must be an integer"),
        (True, TypeError, "step must be an integer; got True"),
    ],
)
def test_drift_control_bad_step(step, exc, match):
    U = _drifted()
    before = U.copy()
    with pytest.raises(exc, match=match):
        uu.DriftControl(every=1).maybe_retract(U, step=step)
    np.testing.assert_array_equal(U, before)


def test_drift_control_read_only_U():
    U = _read_only(_drifted())
    before = U.copy()
    with pytest.raises(ValueError, match="out is read-only"):
        uu.DriftControl(every=1).maybe_retract(U, step=1)
    np.testing.assert_array_equal(U, before)


@pytest.mark.parametrize(
    ("U", "exc", "match"),
    [
        (np.full((3, 3), np.nan), uu.NonFiniteError, "U contains NaN or Inf"),
        (np.diag([1.0, np.inf, 1.0]), uu.NonFiniteError, "U contains NaN or Inf"),
        (np.eye(3).tolist(), TypeError, "U must be an array"),
        (np.eye(3, dtype=np.int8), TypeError, "U has dtype int8"),
        (np.ones(3), ValueError, "U must have shape"),
    ],
)
def test_unitarity_error_bad_input(U, exc, match):
    with pytest.raises(exc, match=match):
        uu.unitarity_error(U)


@pytest.mark.parametrize(
    ("G", "exc", "match"),
    [
        ((np.full((N, 2), np.nan), np.ones((N, 2))), uu.NonFiniteError, "X contains NaN or Inf"),
        ((np.ones((N, 2)), np.full((N, 2), -np.inf)), uu.NonFiniteError, "Y contains NaN or Inf"),
        ((np.ones((N, 2), np.int64), np.ones((N, 2))), TypeError, "X has dtype int64"),
        ((np.ones(N), np.ones((N, 2))), ValueError, r"X must have shape \(\.\.\., N, m\)"),
        ((np.ones((2, N, 1)), np.ones((3, N, 1))), ValueError, "do not broadcast"),
        ((np.ones((N, 1)).tolist(), np.ones((N, 1))), TypeError, r"G\[0\]( \(X\))? must be an array"),
        ((np.ones((N, 1)), 2.0), TypeError, r"G\[1\]( \(Y\))? must be an array"),
        ((np.ones((N, 1)), np.ones((N, 1)), np.ones((N, 1))), ValueError, "pair"),
    ],
)
def test_factored_gradients_bad_input_in_sketch_and_step(data, G, exc, match):
    with pytest.raises(exc, match=match):
        uu.sketch(G, 1)
    U = data[0].copy()
    before = U.copy()
    with pytest.raises(exc, match=match):
        uu.step(U, G, out=U)
    np.testing.assert_array_equal(U, before)


@pytest.mark.parametrize(
    ("kwargs", "G", "exc", "match"),
    [
        ({}, [[0.0] * N] * N, TypeError, "G must be an array .* got list"),
        ({}, 0.5, TypeError, "G must be an array .* got float"),
        ({}, np.full((N, N), np.inf), uu.NonFiniteError, "G contains NaN or Inf"),
        ({}, (np.ones((N + 1, 1)), np.ones((N, 1))), ValueError, r"G\[0\] has shape \(7, 1\) but U is 6 x 6"),
        ({"rank": N + 1}, np.ones((N, N)), ValueError, "1 <= rank <= 6; got 7"),
        ({"rng": "seed"}, np.ones((N, N)), TypeError, "rng must be"),
        ({"drift": "every 10"}, np.ones((N, N)), TypeError, "drift must be a DriftControl"),
        ({"drift": 10}, np.ones((N, N)), TypeError, "drift must be a DriftControl"),
        ({"out": np.zeros((N, N), np.float32)}, np.ones((N, N)), TypeError, "out has dtype float32"),
    ],
)
def test_more_bad_step_arguments_leave_U_and_out_untouched(data, kwargs, G, exc, match):
    U = data[0].copy()
    before = U.copy()
    out = kwargs.get("out", U)
    out_before = out.copy()
    kwargs = {"out": U, **kwargs}
    with pytest.raises(exc, match=match):
        uu.step(U, G, **kwargs)
    np.testing.assert_array_equal(U, before)
    np.testing.assert_array_equal(out, out_before)


@pytest.mark.parametrize("fn", [uu.project, uu.transport])
def test_torch_tensor_on_an_unsupported_device_is_rejected(data, fn):
    torch = pytest.importorskip("torch")
    U, A, B = data
    out = U.copy()
    with pytest.raises(TypeError, match="U is a torch tensor on device meta; only cpu and cuda are supported"):
        fn(torch.empty((N, N), dtype=torch.float64, device="meta"), A, B, out=out)
    np.testing.assert_array_equal(out, U)


# --- inputs that are not errors: what the library does instead -------------------------------
@pytest.mark.parametrize("fn", [uu.project, uu.transport])
def test_non_contiguous_view_updated_in_place(fn):
    rng = np.random.default_rng(21)
    big = np.zeros((160, 160))
    view = big[::2, ::2]  # 80 x 80, strided: not contiguous in either order
    view[...] = uu.random_unitary(80, dtype=np.float64, rng=rng)
    U0 = view.copy()
    A, B = 0.1 * rng.standard_normal((80, 2)), rng.standard_normal((80, 2))
    assert fn(view, A, B, out=view) is view
    np.testing.assert_allclose(view, fn(U0, A, B), atol=1e-13)
    assert not big[1::2].any()  # the rows in between were not touched


def test_mixed_array_libraries_return_U_s_library(data):
    torch = pytest.importorskip("torch")
    U, A, B = data
    result = uu.project(U, torch.from_numpy(A), B)
    assert isinstance(result, np.ndarray)
    np.testing.assert_allclose(result, uu.project(U, A, B), atol=1e-15)
    result = uu.transport(torch.from_numpy(U.copy()), A, torch.from_numpy(B))
    assert isinstance(result, torch.Tensor)


def test_tensor_requiring_grad_is_detached_and_updated_in_place(data):
    torch = pytest.importorskip("torch")
    U, A, B = data
    T = torch.from_numpy(U.copy()).requires_grad_(False)
    expected = uu.transport(U, A, B)
    assert uu.transport(T, A, B, out=T) is T
    np.testing.assert_allclose(T.numpy(), expected, atol=1e-15)
    W = torch.from_numpy(U.copy()).requires_grad_(True)
    np.testing.assert_allclose(uu.project(W, A, B).numpy(), uu.project(U, A, B), atol=1e-15)


@pytest.mark.parametrize("fn", [project_dense, transport_dense])
@pytest.mark.parametrize("which", ["U", "A", "B"])
def test_dense_references_reject_non_finite_input(data, fn, which):
    args = dict(zip("UAB", (x.copy() for x in data), strict=True))
    args[which][0, 0] = np.nan
    with pytest.raises(uu.NonFiniteError, match=f"{which} contains NaN or Inf"):
        fn(args["U"], args["A"], args["B"])


@pytest.mark.parametrize("backend_option", ["auto", "numba", "numpy"])
@pytest.mark.parametrize("fn", [uu.project, uu.transport])
@pytest.mark.parametrize("where", [(0, 0), (299, 150)])
def test_non_finite_U_detected_on_every_kernel_path(backend_option, fn, where):
    """N = 300 takes the fused Numba path under "auto"/"numba" (finiteness seen through U^H A), even
    when A has zero entries; a stack of 16 small matrices takes the batched kernel."""
    U = uu.random_unitary(300, dtype=np.float32, rng=2)
    U[where] = np.nan
    A = np.zeros((300, 1), np.float32)
    A[5] = 1.0
    B = np.ones((300, 1), np.float32)
    before = U.copy()
    stack = uu.random_unitary(8, dtype=np.float64, batch_shape=(16,), rng=3)
    stack[7, 2, 3] = np.inf
    stack_before = stack.copy()
    with uu.options(backend=backend_option):
        with pytest.raises(uu.NonFiniteError):
            fn(U, A, B, out=U)
        with pytest.raises(uu.NonFiniteError):
            fn(stack, np.ones((16, 8, 1)), np.ones((16, 8, 1)), out=stack)
    np.testing.assert_array_equal(U, before)
    np.testing.assert_array_equal(stack, stack_before)
