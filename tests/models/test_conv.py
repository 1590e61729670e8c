"""Fourier-domain orthogonal convolutions: isometry, adjoint, real structure, gradients, updates.

Independent references: a direct circular convolution by ``np.roll`` from the layer's spatial
kernel, the complex layer built from the real layer's full set of frequency matrices, central
finite differences, and the dense ``expm`` / polar of :mod:`unitary_update.reference`.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ALL_DTYPES

import unitary_update as uu
from unitary_update.models.conv import ConvGradient, OrthogonalConv2d, frequency_layout, maxmin, maxmin_backward
from unitary_update.reference import project_dense, transport_dense

REAL = [np.float32, np.float64]
DOUBLE = [np.float64, np.complex128]
SHAPES = [(1, 1), (1, 4), (2, 2), (3, 5), (4, 4), (5, 6), (6, 7), (8, 8)]


def eps_tol(dtype) -> float:
    """A few hundred ulps of the dtype: 'to dtype precision' for sums over a few hundred entries."""
    return 1e-13 if np.dtype(dtype) in (np.float64, np.complex128) else 3e-6


def data(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def direct_conv(kernel: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y_o[p] = sum_i sum_q k[o, i, q] x_i[p - q], circular, by rolling x (no FFT)."""
    c = kernel.shape[0]
    xp = np.zeros((*x.shape[:-3], c, *x.shape[-2:]), dtype=np.result_type(x, kernel))
    xp[..., : x.shape[-3], :, :] = x
    y = np.zeros_like(xp)
    h_size, w_size = x.shape[-2:]
    for qh in range(h_size):
        for qw in range(w_size):
            shifted = np.roll(xp, (qh, qw), axis=(-2, -1))  # shifted[p] = x[p - q]
            y += np.einsum("oi,...ihw->...ohw", kernel[:, :, qh, qw], shifted)
    return y


# ---------------------------------------------------------------------------------------------
# frequency bookkeeping
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h", range(1, 8))
@pytest.mark.parametrize("w", range(1, 8))
def test_real_layout_counts_every_frequency_once(h, w):
    counts = frequency_layout((h, w))
    assert 2 * counts["complex"] + counts["real"] == h * w
    assert counts["real"] == (1 + (h % 2 == 0)) * (1 + (w % 2 == 0))
    assert counts["half_plane"] == h * (w // 2 + 1)
    layer = OrthogonalConv2d(1, 1, (h, w), init="identity")
    lay = layer._layout
    covered = np.concatenate([lay.paired, lay.self_conjugate, lay.mirror])
    np.testing.assert_array_equal(np.sort(covered), np.arange(counts["half_plane"]))
    wr = w // 2 + 1
    for m, src in zip(lay.mirror, lay.mirror_source, strict=True):
        hm, wm = divmod(int(m), wr)
        hs, ws = divmod(int(lay.paired[src]), wr)
        assert ((hm + hs) % h, (wm + ws) % w) == (0, 0)


def test_complex_layout():
    assert frequency_layout((3, 4), real=False) == {"complex": 12, "real": 0, "half_plane": 12}


# ---------------------------------------------------------------------------------------------
# isometry and adjoint, real and complex
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("c_in", "c"), [(1, 1), (3, 3), (2, 5)])
def test_norm_preserved_and_adjoint_inverts(dtype, shape, c_in, c):
    rng = np.random.default_rng([*shape, c_in, c])
    layer = OrthogonalConv2d(c_in, c, shape, dtype=dtype, rng=rng)
    x = data(rng, (2, 3, c_in, *shape), dtype)
    y = layer(x)
    assert y.shape == (2, 3, c, *shape)
    assert y.dtype == np.dtype(dtype)
    tol = eps_tol(dtype)
    assert abs(np.linalg.norm(y) - np.linalg.norm(x)) <= tol * np.linalg.norm(x)
    per_image = [np.sqrt(np.sum(np.abs(v) ** 2, axis=(-3, -2, -1), dtype=np.float64)) for v in (y, x)]
    np.testing.assert_allclose(per_image[0], per_image[1], rtol=tol)
    back = layer.adjoint(y)
    assert back.shape == x.shape
    assert np.max(np.abs(back - x)) <= tol * np.max(np.abs(x))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_adjoint_is_the_adjoint(dtype):
    """<conv(x), z> == <x, conv^H(z)>, also for a layer that is not unitary (after a Euclidean step)."""
    rng = np.random.default_rng(3)
    layer = OrthogonalConv2d(2, 4, (5, 4), dtype=dtype, rng=rng)
    layer.U += 0.3 * data(rng, layer.U.shape, layer.U.dtype)
    layer.Q += (0.3 * rng.standard_normal(layer.Q.shape)).astype(layer.Q.dtype)
    x = data(rng, (3, 2, 5, 4), dtype)
    z = data(rng, (3, 4, 5, 4), dtype)
    lhs = np.vdot(layer(x), z)
    rhs = np.vdot(x, layer.adjoint(z))
    assert abs(lhs - rhs) <= 30 * eps_tol(dtype) * np.linalg.norm(x) * np.linalg.norm(z)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(3, 4), (4, 5), (6, 6)])
def test_layer_is_the_circular_convolution_of_its_kernel(dtype, shape):
    rng = np.random.default_rng(5)
    layer = OrthogonalConv2d(2, 3, shape, dtype=dtype, rng=rng)
    k = layer.kernel()
    assert k.shape == (3, 3, *shape)
    if np.dtype(dtype).kind == "f":
        assert k.dtype == np.dtype(dtype)  # a real layer has a real kernel
    x = data(rng, (2, 2, *shape), dtype)
    ref = direct_conv(k.astype(np.complex128), x.astype(np.complex128))
    y = layer(x)
    np.testing.assert_allclose(y, ref, atol=50 * eps_tol(dtype))


@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("shape", SHAPES)
def test_real_layer_equals_its_complex_extension(dtype, shape):
    """The real layer is the complex layer of its Hermitian-symmetric full stack, on real inputs."""
    rng = np.random.default_rng(7)
    layer = OrthogonalConv2d(3, 4, shape, dtype=dtype, rng=rng)
    full = layer.frequency_matrices(full=True)
    h_size, w_size = shape
    # Hermitian symmetry, bit for bit, and real self-conjugate matrices
    flip = full[(-np.arange(h_size)) % h_size][:, (-np.arange(w_size)) % w_size]
    np.testing.assert_array_equal(full, flip.conj())
    cdtype = np.complex64 if dtype == np.float32 else np.complex128
    twin = OrthogonalConv2d(3, 4, shape, dtype=cdtype, init="identity")
    twin.U[...] = full.reshape(-1, 4, 4)
    x = data(rng, (2, 3, *shape), dtype)
    y = layer(x)
    assert y.dtype == np.dtype(dtype)
    z = twin(x.astype(cdtype))
    tol = eps_tol(dtype) * 10
    assert np.max(np.abs(z.imag)) <= tol
    np.testing.assert_allclose(y, z.real, atol=tol)


def test_identity_init_is_the_padding():
    layer = OrthogonalConv2d(2, 4, (3, 3), init="identity")
    x = np.random.default_rng(0).standard_normal((2, 3, 3))
    y = layer(x)
    np.testing.assert_allclose(y[:2], x, atol=1e-15)
    np.testing.assert_allclose(y[2:], 0, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# finite-difference gradient checks
# ---------------------------------------------------------------------------------------------
def loss_and_grad(y: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray]:
    """L = Re<c, y> + ||y||^4 / 4 (nonlinear in y, so the check exercises the chain rule)."""
    n2 = float(np.vdot(y, y).real)
    return float(np.vdot(c, y).real) + n2**2 / 4, c + n2 * y


def realdot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.vdot(a, b).real)


@pytest.mark.parametrize("dtype", DOUBLE)
@pytest.mark.parametrize(("c_in", "c", "shape"), [(2, 2, (4, 4)), (1, 3, (3, 5)), (2, 4, (2, 3))])
def test_backward_matches_finite_differences(dtype, c_in, c, shape):
    rng = np.random.default_rng(11)
    layer = OrthogonalConv2d(c_in, c, shape, dtype=dtype, rng=rng)
    # move off the manifold: the gradient formulas must not rely on unitarity
    layer.U += 0.2 * data(rng, layer.U.shape, layer.U.dtype)
    layer.Q += 0.2 * rng.standard_normal(layer.Q.shape)
    x = data(rng, (3, c_in, *shape), dtype)
    c_lin = data(rng, (3, c, *shape), dtype) * 0.1
    _, gy = loss_and_grad(layer(x), c_lin)
    grad_x, grad = layer.backward(x, gy)
    assert isinstance(grad, ConvGradient)
    G_U, G_Q = grad.dense()
    h = 1e-6

    def loss_at(x_=x, U=layer.U, Q=layer.Q):
        saved = layer.U, layer.Q
        layer.U, layer.Q = U, Q
        try:
            return loss_and_grad(layer(x_), c_lin)[0]
        finally:
            layer.U, layer.Q = saved

    for _ in range(3):
        d = data(rng, x.shape, dtype)
        fd = (loss_at(x_=x + h * d) - loss_at(x_=x - h * d)) / (2 * h)
        assert fd == pytest.approx(realdot(grad_x, d), rel=1e-6, abs=1e-8)
        D = data(rng, layer.U.shape, layer.U.dtype)
        fd = (loss_at(U=layer.U + h * D) - loss_at(U=layer.U - h * D)) / (2 * h)
        assert fd == pytest.approx(realdot(G_U, D), rel=1e-6, abs=1e-8)
        if layer.real:
            E = rng.standard_normal(layer.Q.shape)
            fd = (loss_at(Q=layer.Q + h * E) - loss_at(Q=layer.Q - h * E)) / (2 * h)
            assert G_Q.dtype == np.float64
            assert fd == pytest.approx(realdot(G_Q, E), rel=1e-6, abs=1e-8)
        else:
            assert G_Q is None
    assert grad.norm() == pytest.approx(
        np.sqrt(np.linalg.norm(G_U) ** 2 + (np.linalg.norm(G_Q) ** 2 if layer.real else 0))
    )


def test_maxmin_preserves_norm_and_gradient_matches_finite_differences():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 6, 3, 3))
    y = maxmin(x)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-15)
    assert np.all(y[:, 0::2] >= y[:, 1::2])
    np.testing.assert_array_equal(np.sort(y, axis=None), np.sort(x, axis=None))
    g = rng.standard_normal(x.shape)
    gx = maxmin_backward(x, g)
    d = rng.standard_normal(x.shape)
    h = 1e-7
    fd = (realdot(g, maxmin(x + h * d)) - realdot(g, maxmin(x - h * d))) / (2 * h)
    assert fd == pytest.approx(realdot(gx, d), rel=1e-7)
    assert np.linalg.norm(gx) == pytest.approx(np.linalg.norm(g), rel=1e-15)


def test_maxmin_errors():
    with pytest.raises(ValueError, match="even number of channels"):
        maxmin(np.zeros((3, 2, 2)))
    with pytest.raises(TypeError, match="real input"):
        maxmin(np.zeros((2, 2, 2), dtype=np.complex128))
    with pytest.raises(ValueError, match="same shape"):
        maxmin_backward(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


# ---------------------------------------------------------------------------------------------
# training steps: batched project / transport per frequency
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("update", ["transport", "project"])
def test_steps_stay_unitary_and_keep_the_real_structure(dtype, update):
    rng = np.random.default_rng(17)
    layer = OrthogonalConv2d(2, 4, (6, 5), dtype=dtype, rng=rng)
    x = data(rng, (8, 2, 6, 5), dtype)
    target = data(rng, (8, 4, 6, 5), dtype)
    losses = []
    for i in range(6):
        y = layer(x)
        losses.append(0.5 * np.linalg.norm(y - target) ** 2)
        _, grad = layer.backward(x, y - target)
        layer.step(grad, lr=0.02, rank=2, update=update, rng=i)
    assert losses[-1] < losses[0]
    tol = 1e-12 if np.dtype(dtype) in DOUBLE else 2e-5
    assert uu.unitarity_error(layer.U) < tol
    assert layer.U.dtype == np.result_type(dtype, np.complex64)
    if np.dtype(dtype).kind == "f":
        assert layer.Q.dtype == np.dtype(dtype)
        assert uu.unitarity_error(layer.Q) < tol
    y = layer(x)
    assert abs(np.linalg.norm(y) - np.linalg.norm(x)) <= eps_tol(dtype) * np.linalg.norm(x) * 10


@pytest.mark.parametrize("dtype", DOUBLE)
@pytest.mark.parametrize(("update", "dense"), [("transport", transport_dense), ("project", project_dense)])
def test_full_rank_step_matches_dense_update_per_frequency(dtype, update, dense):
    rng = np.random.default_rng(19)
    c = 3
    layer = OrthogonalConv2d(c, c, (4, 3), dtype=dtype, rng=rng)
    x = data(rng, (5, c, 4, 3), dtype)
    _, grad = layer.backward(x, data(rng, (5, c, 4, 3), dtype))
    G_U, G_Q = grad.dense()
    lr = 0.05
    stacks = [(layer.U.copy(), G_U)] + ([(layer.Q.copy(), G_Q)] if layer.real else [])
    expected = [dense(U, -lr * G, np.broadcast_to(np.eye(c), G.shape)) for U, G in stacks]
    layer.step(grad, lr=lr, rank=c, update=update, sketch="exact")
    np.testing.assert_allclose(layer.U, expected[0], atol=1e-12)
    if layer.real:
        np.testing.assert_allclose(layer.Q, expected[1], atol=1e-12)


@pytest.mark.parametrize("dtype", DOUBLE)
def test_euclidean_step_is_plain_gradient_descent(dtype):
    rng = np.random.default_rng(23)
    layer = OrthogonalConv2d(2, 2, (3, 4), dtype=dtype, rng=rng)
    x = data(rng, (4, 2, 3, 4), dtype)
    _, grad = layer.backward(x, data(rng, x.shape, dtype))
    G_U, G_Q = grad.dense()
    U0, Q0 = layer.U.copy(), layer.Q.copy()
    layer.step(grad, lr=0.1, update="euclidean")
    np.testing.assert_allclose(layer.U, U0 - 0.1 * G_U, atol=1e-14)
    if layer.real:
        np.testing.assert_allclose(layer.Q, Q0 - 0.1 * G_Q, atol=1e-14)
        # still a real convolution
        assert layer(x).dtype == np.float64
        full = layer.frequency_matrices(full=True)
        np.testing.assert_array_equal(full[1, 1], full[2, 3].conj())


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_drift_control_retracts_both_stacks_on_the_layer_clock(dtype):
    rng = np.random.default_rng(29)
    layer = OrthogonalConv2d(2, 2, (3, 4), dtype=dtype, rng=rng)
    x = data(rng, (4, 2, 3, 4), dtype)
    stacks = ["U", "Q"] if layer.real else ["U"]
    drift = uu.DriftControl(every=2, tol=None)
    errors = []
    for step in (1, 2):
        _, grad = layer.backward(x, data(rng, x.shape, dtype))
        layer.step(grad, lr=0.1, update="euclidean", drift=drift)  # leaves the manifold
        errors.append(max(uu.unitarity_error(getattr(layer, name)) for name in stacks))
        assert layer.steps == step
    assert errors[0] > 1e-3  # step 1: not due, the Euclidean step's drift stays
    assert errors[1] < 1e-12  # step 2: every stack retracted
    assert drift.retractions == len(stacks)
    with pytest.raises(TypeError, match="drift must be a DriftControl"):
        layer.step(grad, lr=0.1, drift="every 2")
    assert layer.steps == 2  # a refused call is not counted


# ---------------------------------------------------------------------------------------------
# array libraries and errors
# ---------------------------------------------------------------------------------------------
def test_array_libraries(backend):
    if backend.name == "cupy":  # pragma: no cover - needs a GPU
        import cupy

        xp = cupy
    else:
        xp = np
    rng = np.random.default_rng(29)
    ref = OrthogonalConv2d(2, 4, (4, 6), dtype=np.float32, rng=1)
    layer = OrthogonalConv2d(2, 4, (4, 6), dtype=np.float32, rng=1, xp=xp)
    x = rng.standard_normal((3, 2, 4, 6)).astype(np.float32)
    y = backend.to_numpy(layer(backend.asarray(x)))
    np.testing.assert_allclose(y, ref(x), atol=1e-6)
    gx, _ = layer.backward(backend.asarray(x), backend.asarray(y))
    np.testing.assert_allclose(backend.to_numpy(gx), x, atol=1e-5)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"in_channels \(3\) must not exceed out_channels \(2\)"):
        OrthogonalConv2d(3, 2, (4, 4))
    with pytest.raises(TypeError, match="in_channels must be an integer"):
        OrthogonalConv2d(1.5, 2, (4, 4))
    with pytest.raises(ValueError, match="image_shape"):
        OrthogonalConv2d(1, 2, (4, 0))
    with pytest.raises(TypeError, match="dtype is int64"):
        OrthogonalConv2d(1, 2, (4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="unknown init"):
        OrthogonalConv2d(1, 2, (4, 4), init="zeros")
    layer = OrthogonalConv2d(1, 2, (4, 4), rng=0)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 1, 4, 4\)"):
        layer(np.zeros((2, 4, 4)))
    with pytest.raises(TypeError, match="complex"):
        layer(np.zeros((1, 4, 4), dtype=np.complex128))
    with pytest.raises(uu.NonFiniteError, match="x contains NaN"):
        layer(np.full((1, 4, 4), np.nan))
    x = np.ones((2, 1, 4, 4))
    with pytest.raises(ValueError, match="same batch shape"):
        layer.backward(x, np.ones((3, 2, 4, 4)))
    _, grad = layer.backward(x, layer(x))
    U0 = layer.U.copy()
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        layer.step(grad, lr=-1.0)
    with pytest.raises(ValueError, match="rank must satisfy"):
        layer.step(grad, lr=0.1, rank=3)
    with pytest.raises(ValueError, match="unknown update"):
        layer.step(grad, lr=0.1, update="cayley")
    with pytest.raises(TypeError, match="ConvGradient"):
        layer.step((grad.U, grad.Q), lr=0.1)
    other = OrthogonalConv2d(1, 2, (4, 5), rng=0)
    _, wrong = other.backward(np.ones((1, 4, 5)), np.ones((2, 4, 5)))
    with pytest.raises(ValueError, match=r"grad\.U has factor shapes"):
        layer.step(wrong, lr=0.1)
    bad_Q = (grad.Q[0].copy(), grad.Q[1])
    bad_Q[0][0, 0, 0] = np.inf
    with pytest.raises(uu.NonFiniteError, match=r"grad\.Q\[0\]"):
        layer.step(ConvGradient(grad.U, bad_Q), lr=0.1)
    np.testing.assert_array_equal(layer.U, U0)  # nothing written


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_assigning_a_stack_checks_it_and_names_it(dtype):
    layer = OrthogonalConv2d(2, 3, (4, 5), dtype=dtype, rng=0)
    U0, Q0 = layer.U, layer.Q
    with pytest.raises(ValueError, match=rf"U must have shape \({U0.shape[0]}, 3, 3\) for this layer; got \(3, 3\)"):
        layer.U = np.eye(3, dtype=U0.dtype)
    other = np.complex128 if U0.dtype == np.complex64 else np.complex64
    with pytest.raises(TypeError, match=f"U must have dtype {U0.dtype} for this layer; got {np.dtype(other)}"):
        layer.U = U0.astype(other)
    with pytest.raises(TypeError, match="U must be a numpy array"):
        layer.U = U0.tolist()
    with pytest.raises(ValueError, match=r"Q must have shape"):
        layer.Q = np.zeros((Q0.shape[0] + 1, 3, 3), dtype=Q0.dtype)
    assert layer.U is U0  # a refused assignment leaves the stack as it was
    assert layer.Q is Q0
    fresh = U0.copy()
    layer.U = fresh  # the right shape and dtype: kept as given, no copy
    assert layer.U is fresh


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_layer_pickles_and_deep_copies_with_its_stacks(dtype):
    import copy
    import pickle

    layer = OrthogonalConv2d(2, 3, (4, 5), dtype=dtype, rng=0)
    x = np.random.default_rng(1).standard_normal((2, 2, 4, 5)).astype(dtype)
    _, grad = layer.backward(x, layer(x))
    layer.step(grad, lr=1e-2, rank=1, rng=2)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert twin.U is not layer.U
        np.testing.assert_array_equal(twin.U, layer.U)
        np.testing.assert_array_equal(twin.Q, layer.Q)
        assert twin.steps == layer.steps == 1
        np.testing.assert_array_equal(twin(x), layer(x))
        # the copy trains on its own, as the original would: the same step gives the same stacks
        before = layer.U.copy()
        twin.step(grad, lr=1e-2, rank=1, rng=3)
        np.testing.assert_array_equal(layer.U, before)
        assert twin.steps == 2
        reference = copy.deepcopy(layer)
        reference.step(grad, lr=1e-2, rank=1, rng=3)
        np.testing.assert_array_equal(twin.U, reference.U)
        np.testing.assert_array_equal(twin.Q, reference.Q)
        assert not np.array_equal(twin.U, before)
        with pytest.raises(TypeError, match="U must be a numpy array"):
            twin.U = list(twin.U)
    state = layer.__getstate__()
    state["_xp"] = "os"
    with pytest.raises(ValueError, match="namespace must be 'numpy' or 'cupy'; got 'os'"):
        OrthogonalConv2d.__new__(OrthogonalConv2d).__setstate__(state)
