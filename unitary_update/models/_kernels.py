"""Numba kernels of the unitary RNN (modReLU forward and backward), each with its NumPy twin.

``tests/models/test_kernels.py`` checks that each kernel agrees with its twin; :func:`modrelu_`
and :func:`modrelu_backward_` dispatch between them by the library option ``backend``.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from .._config import use_numba
from .._xp import array_namespace

__all__ = [
    "modrelu_",
    "modrelu_backward_",
    "modrelu_backward_numba",
    "modrelu_backward_numpy",
    "modrelu_numba",
    "modrelu_numpy",
]


# ---- section: RNN elementwise kernels (modReLU forward / backward) ----------------------------
#
# modReLU (Arjovsky et al. 2016): h = modrelu(z, b) = (|z| + b)_+ z / |z|, with h = 0 where z = 0.
# The backward kernels read only h (never z): where h != 0 the unit is active, z / |z| = h / |h| and
# |z| = |h| - b, so the forward pass need not keep its pre-activations.  With the gradient convention
# g = dL/dRe + i dL/dIm, an active unit has
#   real:     g_z = g_h,                                       dL/db += g_h sign(h)
#   complex:  g_z = g_h - (b / |z|) Im(conj(g_h) u) i u,       dL/db += Re(conj(g_h) u),   u = h / |h|
# and an inactive one g_z = 0.  ``db`` is accumulated in float64.

_numba: Any = numba


def _njit(fn: Any) -> Any:
    if _numba is None:  # pragma: no cover
        return None
    return _numba.njit(nogil=True, cache=True)(fn)


def _modrelu_real_loop(z: Any, b: Any) -> None:  # pragma: no cover - compiled
    rows, cols = z.shape
    for i in range(rows):
        for j in range(cols):
            v = z[i, j]
            a = abs(v) + b[j]
            if a > 0 and v != 0:
                z[i, j] = a if v > 0 else -a
            else:
                z[i, j] = 0


def _modrelu_complex_loop(z: Any, b: Any) -> None:  # pragma: no cover - compiled
    rows, cols = z.shape
    for i in range(rows):
        for j in range(cols):  # |z| by sqrt (not hypot) and selects, so the loop vectorises
            v = z[i, j]
            m = np.sqrt(v.real * v.real + v.imag * v.imag)
            a = m + b[j]
            scale = a / m if (a > 0 and m > 0) else 0 * m
            z[i, j] = v * scale


def _modrelu_backward_real_loop(h: Any, b: Any, g: Any, db: Any) -> None:  # pragma: no cover - compiled
    rows, cols = h.shape
    for i in range(rows):
        for j in range(cols):  # branch-free selects, so the loop over j vectorises
            v = h[i, j]
            a = g[i, j] if v != 0 else 0
            g[i, j] = a
            db[j] += a if v > 0 else -a


def _modrelu_backward_complex_loop(h: Any, b: Any, g: Any, db: Any) -> None:  # pragma: no cover - compiled
    rows, cols = h.shape
    for i in range(rows):
        for j in range(cols):
            v = h[i, j]
            r = np.sqrt(v.real * v.real + v.imag * v.imag)
            active = r > 0
            inv = 1 / r if active else 0 * r
            ur, ui = v.real * inv, v.imag * inv  # u = h / |h| (0 where inactive)
            gv = g[i, j]
            p = gv.real * ur + gv.imag * ui  # Re(conj(g) u)
            q = gv.real * ui - gv.imag * ur  # Im(conj(g) u)
            db[j] += p
            s = b[j] / (r - b[j]) * q if active else 0 * q  # (b / |z|) Im(conj(g) u)
            # g - s i u, and 0 where inactive
            g[i, j] = complex(gv.real + s * ui, gv.imag - s * ur) if active else 0 * gv


_modrelu_real_numba = _njit(_modrelu_real_loop)
_modrelu_complex_numba = _njit(_modrelu_complex_loop)
_modrelu_backward_real_numba = _njit(_modrelu_backward_real_loop)
_modrelu_backward_complex_numba = _njit(_modrelu_backward_complex_loop)


def modrelu_numba(z: Any, b: Any) -> None:
    """In place ``z <- modrelu(z, b)`` for a C-contiguous NumPy ``z (rows, N)``, ``b (N,)`` real."""
    (_modrelu_complex_numba if z.dtype.kind == "c" else _modrelu_real_numba)(z, b)


def modrelu_numpy(z: Any, b: Any) -> None:
    """NumPy/CuPy twin of :func:`modrelu_numba` (any array namespace with ``abs``/``where``)."""
    xp = array_namespace(z)
    m = xp.abs(z)
    a = m + b
    if z.dtype.kind == "c":
        scale = xp.where((a > 0) & (m > 0), a / xp.where(m > 0, m, 1), 0)
        z *= scale
    else:
        z[...] = xp.sign(z) * xp.maximum(a, 0)


def modrelu_backward_numba(h: Any, b: Any, g: Any, db: Any) -> None:
    """In place ``g <- dL/dz`` from ``g = dL/dh`` and ``h = modrelu(z, b)``; ``db += dL/db`` (float64)."""
    (_modrelu_backward_complex_numba if h.dtype.kind == "c" else _modrelu_backward_real_numba)(h, b, g, db)


def modrelu_backward_numpy(h: Any, b: Any, g: Any, db: Any) -> None:
    """NumPy/CuPy twin of :func:`modrelu_backward_numba`."""
    xp = array_namespace(h)
    if h.dtype.kind == "c":
        r = xp.abs(h)
        active = r > 0
        u = h / xp.where(active, r, 1)
        p = (xp.conj(g) * u).real
        q = (xp.conj(g) * u).imag
        db += xp.sum(xp.where(active, p, 0), axis=0, dtype=db.dtype)
        s = xp.where(active, b / (r - b) * q, 0)
        g -= s * (1j * u)
        g *= active
    else:
        db += xp.sum(g * xp.sign(h), axis=0, dtype=db.dtype)
        g *= h != 0


def modrelu_(z: Any, b: Any) -> None:
    """Dispatch: the Numba kernel for contiguous NumPy arrays when enabled, else the twin."""
    if _numba is not None and array_namespace(z) is np and z.flags.c_contiguous and use_numba(True):
        modrelu_numba(z, b)
    else:
        modrelu_numpy(z, b)


def modrelu_backward_(h: Any, b: Any, g: Any, db: Any) -> None:
    """Dispatch for :func:`modrelu_backward_numba` / :func:`modrelu_backward_numpy`."""
    if _numba is not None and array_namespace(h) is np and g.flags.c_contiguous and use_numba(True):
        modrelu_backward_numba(h, b, g, db)
    else:
        modrelu_backward_numpy(h, b, g, db)
