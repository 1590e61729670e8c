"""modReLU kernels: each Numba kernel against its NumPy twin and against the definition."""

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
