"""RNN kernels (modReLU, ReLU, the fused recurrence): each Numba kernel against its NumPy twin and the definition."""

from __future__ import annotations

import numpy as np
import pytest

from unitary_update.models import _kernels

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


def sample(dtype, shape=(7, 13), seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        z = z + 1j * rng.standard_normal(shape)
    z[0, :3] = 0  # exact zeros: modrelu must be 0 there, without NaN
    real = np.float32 if dtype in (np.float32, np.complex64) else np.float64
    b = rng.uniform(-1.0, 0.5, shape[1]).astype(real)
    return z.astype(dtype), b


def definition(z, b):
    mag = np.abs(z)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mag > 0, np.maximum(mag + b, 0) * z / mag, 0).astype(z.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["modrelu_numba", "modrelu_numpy"])
def test_modrelu_matches_definition(dtype, kernel):
    z, b = sample(dtype)
    expected = definition(z, b)
    getattr(_kernels, kernel)(z, b)
    rtol = 1e-6 if dtype in (np.float32, np.complex64) else 1e-14
    np.testing.assert_allclose(z, expected, rtol=rtol, atol=rtol)
    assert np.all(z[0, :3] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", ["relu_numba", "relu_numpy"])
def test_relu_matches_definition(dtype, kernel):
    z, b = sample(dtype)
    expected = np.maximum(z + b, 0)
    getattr(_kernels, kernel)(z, b)
    assert z.dtype == dtype
    np.testing.assert_array_equal(z, expected)
    assert np.any(z == 0)
    assert np.any(z > 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_modrelu_backward_twins_agree(dtype):
    z, b = sample(dtype, seed=1)
    h = z.copy()
    _kernels.modrelu_numpy(h, b)
    g = sample(dtype, seed=2)[0]
    g1, g2 = g.copy(), g.copy()
    db1, db2 = np.zeros(b.shape), np.zeros(b.shape)
    _kernels.modrelu_backward_numba(h, b, g1, db1)
    _kernels.modrelu_backward_numpy(h, b, g2, db2)
    rtol = 1e-5 if dtype in (np.float32, np.complex64) else 1e-13
    np.testing.assert_allclose(g1, g2, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(db1, db2, rtol=rtol, atol=rtol)
    assert np.all(g1[h == 0] == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_modrelu_backward_matches_finite_differences(dtype):
    z, b = sample(dtype, shape=(3, 5), seed=3)
    z[0, :3] = 0.7  # keep away from the kink at zero for differences
    g_out = sample(dtype, shape=(3, 5), seed=4)[0]

    def loss(z_, b_):
        h_ = z_.copy()
        _kernels.modrelu_numpy(h_, b_)
        return float(np.sum((np.conj(g_out) * h_).real))  # dL/dRe h + i dL/dIm h = g_out

    h = z.copy()
    _kernels.modrelu_numpy(h, b)
    g, db = g_out.copy(), np.zeros(5)
    _kernels.modrelu_backward_numba(h, b, g, db)
    eps = 1e-7
    units = (1.0, 1j) if np.dtype(dtype).kind == "c" else (1.0,)
    for idx in np.ndindex(z.shape):
        num = 0
        for unit in units:
            zp, zm = z.copy(), z.copy()
            zp[idx] += eps * unit
            zm[idx] -= eps * unit
            num += (loss(zp, b) - loss(zm, b)) / (2 * eps) * unit
        assert abs(num - g[idx]) < 1e-6, idx
    for j in range(5):
        bp, bm = b.copy(), b.copy()
        bp[j] += eps
        bm[j] -= eps
        assert abs((loss(z, bp) - loss(z, bm)) / (2 * eps) - db[j]) < 1e-6, j


def test_dispatch_follows_backend_option():
    import unitary_update as uu

    z, b = sample(np.float64)
    a, c = z.copy(), z.copy()
    with uu.options(backend="numba"):
        _kernels.modrelu_(a, b)
    with uu.options(backend="numpy"):
        _kernels.modrelu_(c, b)
    np.testing.assert_array_equal(a, c)


# ---- the fused recurrence (forward, BPTT) and the cross-entropy: Numba against the NumPy twins ----
def rnn_problem(dtype, S, T=5, batch=6, n=7, inputs=3, outputs=4, seed=5):
    rng = np.random.default_rng(seed)
    complex_ = np.dtype(dtype).kind == "c"
    real = np.float32 if dtype in (np.float32, np.complex64) else np.float64

    def draw(*shape, cplx=complex_):
        a = rng.standard_normal(shape)
        return (a + 1j * rng.standard_normal(shape) if cplx else a).astype(dtype if cplx else real)

    W = draw(n, n) / float(np.sqrt(n))
    V = draw(n, inputs)
    out_w = draw(outputs, 2 * n if complex_ else n, cplx=False)
    b = rng.uniform(-0.8, 0.3, n).astype(real)  # units both active and inactive
    c = draw(outputs, cplx=False)
    xt = draw(T, batch, inputs, cplx=False)
    D = draw(S, batch, outputs, cplx=False)
    return W, V, out_w, b, c, xt, D


BLOCKS = [(0, 2), (2, 6)]  # two row blocks, as two threads would run them
TOL = {np.float32: 2e-5, np.complex64: 2e-5, np.float64: 1e-12, np.complex128: 1e-12}


FORWARD_KINDS = [(dtype, False) for dtype in DTYPES] + [(np.float32, True), (np.float64, True)]


@pytest.mark.parametrize(
    ("dtype", "relu"), FORWARD_KINDS, ids=[np.dtype(d).name + ("-relu" if r else "") for d, r in FORWARD_KINDS]
)
@pytest.mark.parametrize("S", [5, 1], ids=["sequence", "last"])
def test_rnn_forward_twins_agree(dtype, relu, S):
    W, V, out_w, b, c, xt, _ = rnn_problem(dtype, S)
    T, batch = xt.shape[:2]
    Vx, Ro = _kernels.real_maps(V, out_w)
    H1, H2 = np.zeros((2, T + 1, batch, W.shape[0]), dtype=dtype)
    L1, L2 = np.empty((2, S, batch, out_w.shape[0]), dtype=out_w.dtype)
    for lo, hi in BLOCKS:
        _kernels.rnn_forward_numba(H1, xt, W, b, Vx, Ro, c, L1, lo, hi, relu=relu)
    _kernels.rnn_forward_numpy(H2, xt, W, b, Vx, Ro, c, L2, 0, batch, relu=relu)
    if relu:
        assert np.all(H1 >= 0)
    tol = TOL[dtype]
    np.testing.assert_allclose(H1, H2, rtol=tol, atol=tol)
    np.testing.assert_allclose(L1, L2, rtol=tol, atol=tol)
    assert np.any(H1[1:] == 0)
    assert np.any(H1[1:] != 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S", [5, 1], ids=["sequence", "last"])
@pytest.mark.parametrize("conj", [False, True])
def test_rnn_backward_twins_agree(dtype, S, conj):
    W, V, out_w, b, c, xt, D = rnn_problem(dtype, S)
    T, batch = xt.shape[:2]
    n = W.shape[0]
    Vx, Ro = _kernels.real_maps(V, out_w)
    H = np.zeros((T + 1, batch, n), dtype=dtype)
    _kernels.rnn_forward_numpy(
        H, xt, W, b, Vx, Ro, c, np.empty((S, batch, out_w.shape[0]), dtype=out_w.dtype), 0, batch
    )
    out = []
    for kernel, blocks in ((_kernels.rnn_backward_numba, BLOCKS), (_kernels.rnn_backward_numpy, [(0, batch)])):
        G = np.full((T, batch, n), np.nan, dtype=dtype)  # every entry is written
        dV, dO, db = np.zeros(Vx.shape), np.zeros(Ro.shape), np.zeros(n)
        for lo, hi in blocks:
            kernel(H, G, xt, W, b, Ro, D, lo, hi, dV, dO, db, conj=conj)
        dW = np.zeros((n, n), dtype=dtype)
        _kernels.rnn_weight_grad(G, H, 1, T, dW)
        out.append((G, dV, dO, db, dW))
    tol = TOL[dtype]
    for got, expected in zip(*out, strict=True):
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_twins_agree(dtype):
    rng = np.random.default_rng(6)
    L = (rng.standard_normal((4, 5, 6)) * 3).astype(dtype)
    L[0, 0] = [400, -400, 0, 1, 2, 3]  # a confident position: clipped probabilities, flushed gradients
    y = rng.integers(0, 6, (5, 4)).T  # time-major view with strides, like the model's
    y[1, 2] = y[3, 0] = -1  # unlabelled
    y[0, 0] = 0
    count = int(np.sum(y >= 0))
    expected_total, expected_correct, expected_d = _kernels.cross_entropy_numpy(L.copy(), y, count)
    got = [_kernels.cross_entropy_numba(L, y, s0, s1, count) for s0, s1 in ((0, 1), (1, 4))]
    tol = 2e-6 if dtype == np.float32 else 1e-13
    assert sum(t for t, _ in got) == pytest.approx(float(expected_total), rel=tol)
    assert sum(k for _, k in got) == int(expected_correct)
    np.testing.assert_allclose(L, expected_d, rtol=tol, atol=tol * 1e-3)
    assert np.all(L[1, 2] == 0)
    assert np.all(L[3, 0] == 0)
    assert L[0, 0, 1] == 0  # below the floor: flushed
