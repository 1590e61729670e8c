"""Numba kernels of the unitary RNN (modReLU and ReLU forward and backward, and the whole
recurrence of a block of sequences), each with its NumPy twin.

``tests/models/test_kernels.py`` checks that each kernel agrees with its twin; :func:`modrelu_`,
:func:`relu_` and :func:`modrelu_backward_` dispatch between them by the library option ``backend``, and
:class:`~unitary_update.models.urnn.URNN` chooses between :func:`rnn_forward_numba` /
:func:`rnn_backward_numba` and their twins the same way.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from .._config import use_numba
from .._xp import array_namespace

__all__ = [
    "cross_entropy_numba",
    "cross_entropy_numpy",
    "modrelu_",
    "modrelu_backward_",
    "modrelu_backward_numba",
    "modrelu_backward_numpy",
    "modrelu_numba",
    "modrelu_numpy",
    "relu_",
    "relu_numba",
    "relu_numpy",
    "rnn_backward_numba",
    "rnn_backward_numpy",
    "rnn_forward_numba",
    "rnn_forward_numpy",
    "rnn_weight_grad",
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
#
# ReLU (real models only): h = relu(z, b) = (z + b)_+, the bias inside like an input bias.  Its
# backward is the real modReLU backward above, unchanged: h >= 0, so sign(h) = 1 where the unit is
# active (h > 0), g_z = g_h and dL/db += g_h there; an inactive unit has h = 0 and gets nothing.
# Only the forward kernels differ, by the flag ``relu``.

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


def _relu_loop(z: Any, b: Any) -> None:  # pragma: no cover - compiled
    rows, cols = z.shape
    for i in range(rows):
        for j in range(cols):
            a = z[i, j] + b[j]
            z[i, j] = a if a > 0 else 0


_modrelu_real_numba = _njit(_modrelu_real_loop)
_relu_numba = _njit(_relu_loop)
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


def relu_numba(z: Any, b: Any) -> None:
    """In place ``z <- relu(z + b)`` for a real C-contiguous NumPy ``z (rows, N)``, ``b (N,)``."""
    _relu_numba(z, b)


def relu_numpy(z: Any, b: Any) -> None:
    """NumPy/CuPy twin of :func:`relu_numba`."""
    xp = array_namespace(z)
    z += b
    xp.maximum(z, 0, out=z)


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


def _numba_takes(a: Any) -> bool:
    """Whether the Numba kernels are on (option ``backend``) and can write ``a``: a C-contiguous NumPy array."""
    return _numba is not None and array_namespace(a) is np and a.flags.c_contiguous and use_numba(True)


def modrelu_(z: Any, b: Any) -> None:
    """Dispatch: the Numba kernel for contiguous NumPy arrays when enabled, else the twin."""
    if _numba_takes(z):
        modrelu_numba(z, b)
    else:
        modrelu_numpy(z, b)


def relu_(z: Any, b: Any) -> None:
    """Dispatch for :func:`relu_numba` / :func:`relu_numpy` (real ``z`` only)."""
    if _numba_takes(z):
        relu_numba(z, b)
    else:
        relu_numpy(z, b)


def modrelu_backward_(h: Any, b: Any, g: Any, db: Any) -> None:
    """Dispatch for :func:`modrelu_backward_numba` / :func:`modrelu_backward_numpy`."""
    if _numba_takes(g):
        modrelu_backward_numba(h, b, g, db)
    else:
        modrelu_backward_numpy(h, b, g, db)


# ---- section: the whole recurrence of a block of sequences, forward and backward ------------------
#
# States live time-major in ``H (T + 1, batch, N)`` with ``H[0] = 0``.  One call runs every time
# step for the batch rows ``lo:hi``: the sequences are independent, so disjoint blocks can run on
# separate threads (the Numba kernels release the GIL).  Per step every product is one BLAS call
# (``np.dot``, in Numba SciPy's BLAS) on the step's rows, which stay in cache, and the elementwise
# work is one fused pass, so no Python runs and nothing is allocated between steps:
#
#   forward:  z_t = x_t Vx + h_{t-1} W^T,  h_t = modrelu(z_t),  logits_t = h_t Ro + c
#   backward: dL/dh_t = dL/dlogits_t Ro^T + dL/dz_{t+1} conj(W),  dz_t = modReLU's backward of it,
#             dL/dVx += x_t^T dz_t,  dL/dRo += h_t^T dL/dlogits_t,  dL/db += ...
#
# and ``dL/dW = sum_t dz_t^T conj(h_{t-1})`` afterwards, as a few large products over ranges of time
# steps (:func:`rnn_weight_grad`): faster than one thin product per step (about 60 against 75 ms
# for T = 1020, 64 rows, N = 190, float32, on one core).
#
# The input map and the readout act on real views: ``Hr`` is H for a real model and ``H.view(real)``
# (``[Re h_1, Im h_1, Re h_2, ...]``, width R = 2N) for a complex one, with ``Vx (input, R)`` and
# ``Ro (R, output)`` from :func:`real_maps`; the gradients of V and O come back in that layout.
# Accumulators (dV, dO, db) are float64 and are added to, not overwritten.


def real_view(a: Any) -> Any:
    """``a`` for a real array; its real view (last axis doubled, [Re, Im] interleaved) for a complex one."""
    if a.dtype.kind != "c":
        return a
    return a.view(np.float32 if a.dtype == np.complex64 else np.float64)


def real_maps(V: Any, out_w: Any) -> tuple[Any, Any]:
    """The input map ``Vx (input, R)`` and readout ``Ro (R, output)`` of the real view (C-contiguous).

    ``out_w`` is the readout O.  A real model: ``Vx = V^T``, ``Ro = O^T``.  A complex one (``V (N,
    input)`` complex, ``O (output, 2N)`` reading ``[Re h, Im h]``): columns of Vx and rows of Ro
    interleaved like the real view of h, ``Vx[:, 2j] = Re V[j]``, ``Vx[:, 2j + 1] = Im V[j]``,
    ``Ro[2j] = O[:, j]``, ``Ro[2j + 1] = O[:, N + j]``.  Gradients in this layout read back as
    ``dV = dVx^T`` (complex: ``dVx.view(complex)^T``) and ``dO = dRo^T`` (complex:
    ``[dRo[0::2]^T, dRo[1::2]^T]``).
    """
    xp = array_namespace(V)
    if V.dtype.kind != "c":
        return xp.ascontiguousarray(V.T), xp.ascontiguousarray(out_w.T)
    n = V.shape[0]
    Vx = real_view(xp.ascontiguousarray(V.T))
    Ro = xp.empty((2 * n, out_w.shape[0]), dtype=out_w.dtype)
    Ro[0::2] = out_w[:, :n].T
    Ro[1::2] = out_w[:, n:].T
    return Vx, Ro


def _rnn_forward_real_loop(H, Hr, xt, Wt, b, Vx, Ro, c, L, lo, hi, tmp, relu):  # type: ignore[no-untyped-def]  # pragma: no cover
    T, cols, S = H.shape[0] - 1, H.shape[2], L.shape[0]
    rows, outs = hi - lo, L.shape[2]
    tmp[...] = 0
    for t in range(T):
        z = H[t + 1, lo:hi]
        np.dot(xt[t, lo:hi], Vx, Hr[t + 1, lo:hi])  # V x_t
        if t > 0:  # h_0 = 0: nothing to add at the first step (tmp stays 0)
            np.dot(H[t, lo:hi], Wt, tmp)  # h_{t-1} W^T
        if relu:
            for i in range(rows):
                for j in range(cols):
                    a = z[i, j] + tmp[i, j] + b[j]
                    z[i, j] = a if a > 0 else 0
        else:
            for i in range(rows):
                for j in range(cols):
                    v = z[i, j] + tmp[i, j]
                    a = abs(v) + b[j]
                    if a > 0 and v != 0:
                        z[i, j] = a if v > 0 else -a
                    else:
                        z[i, j] = 0
        s = t - (T - S)
        if s >= 0:
            out = L[s, lo:hi]
            np.dot(Hr[t + 1, lo:hi], Ro, out)
            for i in range(rows):
                for k in range(outs):
                    out[i, k] += c[k]


def _rnn_forward_complex_loop(H, Hr, xt, Wt, b, Vx, Ro, c, L, lo, hi, tmp, relu):  # type: ignore[no-untyped-def]  # pragma: no cover
    T, cols, S = H.shape[0] - 1, H.shape[2], L.shape[0]
    rows, outs = hi - lo, L.shape[2]
    tmp[...] = 0
    for t in range(T):
        z = H[t + 1, lo:hi]
        np.dot(xt[t, lo:hi], Vx, Hr[t + 1, lo:hi])
        if t > 0:
            np.dot(H[t, lo:hi], Wt, tmp)
        for i in range(rows):
            for j in range(cols):
                v = z[i, j] + tmp[i, j]
                m = np.sqrt(v.real * v.real + v.imag * v.imag)
                a = m + b[j]
                scale = a / m if (a > 0 and m > 0) else 0 * m
                z[i, j] = v * scale
        s = t - (T - S)
        if s >= 0:
            out = L[s, lo:hi]
            np.dot(Hr[t + 1, lo:hi], Ro, out)
            for i in range(rows):
                for k in range(outs):
                    out[i, k] += c[k]


def _rnn_backward_real_loop(  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    H, Hr, G, Gr, xt, Wc, b, RoT, D, lo, hi, conj, dV, dO, db, carry, gin, tV, tO
):
    T, cols, S = H.shape[0] - 1, H.shape[2], D.shape[0]
    rows = hi - lo
    carry[...] = 0
    gin[...] = 0
    for t in range(T - 1, -1, -1):
        g = G[t, lo:hi]
        h = H[t + 1, lo:hi]
        s = t - (T - S)
        if s >= 0:  # dL/dh_t from the readout; dL/dRo += h_t^T dL/dlogits_t
            np.dot(D[s, lo:hi], RoT, gin)
            np.dot(Hr[t + 1, lo:hi].T, D[s, lo:hi], tO)
            dO += tO
        for i in range(rows):
            for j in range(cols):  # dL/dh_t = readout + carry; dz_t = that where active
                v = h[i, j]
                a = gin[i, j] + carry[i, j] if v != 0 else 0
                g[i, j] = a
                db[j] += a if v > 0 else -a
        if s == 0 and S < T:  # the only readout of output="last": nothing more to add
            gin[...] = 0
        np.dot(xt[t, lo:hi].T, Gr[t, lo:hi], tV)  # dL/dVx += x_t^T dz_t
        dV += tV
        if t > 0:  # dL/dh_{t-1} gets dz_t W
            np.dot(g, Wc, carry)


def _rnn_backward_complex_loop(  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    H, Hr, G, Gr, xt, Wc, b, RoT, D, lo, hi, conj, dV, dO, db, carry, gin, tV, tO
):
    T, cols, S = H.shape[0] - 1, H.shape[2], D.shape[0]
    rows = hi - lo
    carry[...] = 0
    gin[...] = 0
    for t in range(T - 1, -1, -1):
        g = G[t, lo:hi]
        h = H[t + 1, lo:hi]
        s = t - (T - S)
        if s >= 0:
            np.dot(D[s, lo:hi], RoT, gin)  # real view of dL/dh_t: [dL/dRe h, dL/dIm h] interleaved
            np.dot(Hr[t + 1, lo:hi].T, D[s, lo:hi], tO)
            dO += tO
        for i in range(rows):
            for j in range(cols):
                v = h[i, j]
                cv = carry[i, j]  # conj: conj(dz_{t+1}) W = conj(dz_{t+1} conj(W))
                gv = complex(gin[i, 2 * j], gin[i, 2 * j + 1]) + (cv.conjugate() if conj else cv)
                r = np.sqrt(v.real * v.real + v.imag * v.imag)
                active = r > 0
                inv = 1 / r if active else 0 * r
                ur, ui = v.real * inv, v.imag * inv  # u = h / |h| (0 where inactive)
                p = gv.real * ur + gv.imag * ui  # Re(conj(g) u)
                q = gv.real * ui - gv.imag * ur  # Im(conj(g) u)
                db[j] += p
                sc = b[j] / (r - b[j]) * q if active else 0 * q  # (b / |z|) Im(conj(g) u)
                dz = complex(gv.real + sc * ui, gv.imag - sc * ur) if active else 0 * gv
                g[i, j] = dz.conjugate() if conj else dz
        if s == 0 and S < T:
            gin[...] = 0
        np.dot(xt[t, lo:hi].T, Gr[t, lo:hi], tV)  # (conj: of conj(dz_t))
        dV += tV
        if t > 0:  # dL/dh_{t-1} gets dz_t conj(W)
            np.dot(g, Wc, carry)


_rnn_forward_real_numba = _njit(_rnn_forward_real_loop)
_rnn_forward_complex_numba = _njit(_rnn_forward_complex_loop)
_rnn_backward_real_numba = _njit(_rnn_backward_real_loop)
_rnn_backward_complex_numba = _njit(_rnn_backward_complex_loop)


def rnn_forward_numba(
    H: Any, xt: Any, W: Any, b: Any, Vx: Any, Ro: Any, c: Any, L: Any, lo: int, hi: int, *, relu: bool = False
) -> None:
    """The forward pass of the batch rows ``lo:hi``, in place; releases the GIL (NumPy arrays).

    Parameters
    ----------
    H : array, shape (T + 1, batch, N), C-contiguous
        On exit ``H[t] = h_t`` for these rows (``H[0]`` must be 0).
    xt : array, shape (T, batch, input), C-contiguous
        Time-major inputs, of the model's real dtype.
    W : array, shape (N, N)
        The recurrent matrix (H's dtype).
    b : array, shape (N,)
        The activation's bias (real).
    Vx, Ro : array
        The input map and readout of the real view (:func:`real_maps`).
    c : array, shape (output,)
        The readout bias.
    L : array, shape (S, batch, output), C-contiguous
        On exit the logits of the last S steps (S = T: every step; S = 1: the last).
    lo, hi : int
        The block of batch rows.
    relu : bool, default False
        ``h_t = relu(z_t + b)`` instead of ``modrelu(z_t, b)`` (a real model only; the backward
        pass is the same for both, see the section comment).
    """
    Hr = real_view(H)
    tmp = np.empty((hi - lo, H.shape[2]), dtype=H.dtype)
    Wt = np.ascontiguousarray(W.T, dtype=H.dtype)
    Vx, Ro = (np.ascontiguousarray(a, dtype=Hr.dtype) for a in (Vx, Ro))
    fn = _rnn_forward_complex_numba if H.dtype.kind == "c" else _rnn_forward_real_numba
    fn(H, Hr, xt, Wt, b, Vx, Ro, c, L, lo, hi, tmp, bool(relu))


def rnn_forward_numpy(
    H: Any, xt: Any, W: Any, b: Any, Vx: Any, Ro: Any, c: Any, L: Any, lo: int, hi: int, *, relu: bool = False
) -> None:
    """NumPy/CuPy twin of :func:`rnn_forward_numba` (one ``matmul`` per product and step)."""
    T, S = H.shape[0] - 1, L.shape[0]
    Hr = real_view(H)
    for t in range(T):
        Hr[t + 1, lo:hi] = xt[t, lo:hi] @ Vx
        if t > 0:
            H[t + 1, lo:hi] += H[t, lo:hi] @ W.T
        (relu_numpy if relu else modrelu_numpy)(H[t + 1, lo:hi], b)
        if t >= T - S:
            L[t - (T - S), lo:hi] = Hr[t + 1, lo:hi] @ Ro + c


def rnn_backward_numba(
    H: Any,
    G: Any,
    xt: Any,
    W: Any,
    b: Any,
    Ro: Any,
    D: Any,
    lo: int,
    hi: int,
    dV: Any,
    dO: Any,
    db: Any,
    *,
    conj: bool = False,
) -> None:
    """BPTT of the batch rows ``lo:hi``: ``dL/dz_t`` into G, other gradients added; releases the GIL.

    Parameters
    ----------
    H : array, shape (T + 1, batch, N)
        The states (:func:`rnn_forward_numba`).
    G : array, shape (T, batch, N), C-contiguous
        On exit ``G[t - 1] = dL/dz_t`` for these rows (its conjugate with ``conj``).
    xt, W, b : array
        As :func:`rnn_forward_numba`.
    Ro : array, shape (R, output)
        The readout of the real view (:func:`real_maps`).
    D : array, shape (S, batch, output), C-contiguous
        dL/dlogits of the last S steps.
    lo, hi : int
        The block of batch rows.
    dV : array, shape (input, R), float64
        ``dL/dVx`` is added (with ``conj``: its conjugate, in the real view).
    dO : array, shape (R, output), float64
        ``dL/dRo`` is added.
    db : array, shape (N,), float64
        ``dL/db`` is added.
    conj : bool, default False
        Store ``conj(dL/dz_t)`` (complex models), which makes :func:`rnn_weight_grad` give
        ``conj(dL/dW)`` without a conjugate of H.
    """
    complex_ = H.dtype.kind == "c"
    rows, n = hi - lo, H.shape[2]
    real = real_view(H).dtype
    carry = np.empty((rows, n), dtype=H.dtype)
    gin = np.empty((rows, Ro.shape[0]), dtype=real)
    tV = np.empty(dV.shape, dtype=real)
    tO = np.empty(dO.shape, dtype=real)
    # dz conj(W) for dz, conj(dz) W = conj(dz conj(W)) for conj(dz)
    Wc = np.ascontiguousarray(np.conj(W) if complex_ and not conj else W, dtype=H.dtype)
    RoT = np.ascontiguousarray(Ro.T, dtype=real)
    fn = _rnn_backward_complex_numba if complex_ else _rnn_backward_real_numba
    fn(H, real_view(H), G, real_view(G), xt, Wc, b, RoT, D, lo, hi, bool(conj) and complex_,
       dV, dO, db, carry, gin, tV, tO)  # fmt: skip


def rnn_backward_numpy(
    H: Any,
    G: Any,
    xt: Any,
    W: Any,
    b: Any,
    Ro: Any,
    D: Any,
    lo: int,
    hi: int,
    dV: Any,
    dO: Any,
    db: Any,
    *,
    conj: bool = False,
) -> None:
    """NumPy/CuPy twin of :func:`rnn_backward_numba` (one ``matmul`` per product and step)."""
    xp = array_namespace(H)
    complex_ = H.dtype.kind == "c"
    T, S = H.shape[0] - 1, D.shape[0]
    Hr, Gr = real_view(H), real_view(G)
    Wc = xp.conj(W) if complex_ else W
    for t in range(T - 1, -1, -1):
        g = G[t, lo:hi]
        if t == T - 1:
            g[...] = 0
        if t >= T - S:
            d = D[t - (T - S), lo:hi]
            real_view(g)[...] += d @ Ro.T
            dO += Hr[t + 1, lo:hi].T @ d
        modrelu_backward_numpy(H[t + 1, lo:hi], b, g, db)
        if t > 0:
            G[t - 1, lo:hi] = g @ Wc
        if conj and complex_:
            g[...] = xp.conj(g)
        dV += xt[t, lo:hi].T @ Gr[t, lo:hi]


def rnn_weight_grad(G: Any, H: Any, t0: int, t1: int, out: Any) -> None:
    """``out = sum_{t0 <= t < t1} G[t]^T H[t]``: one ``matmul`` (NumPy releases the GIL in it).

    NumPy's BLAS, not SciPy's (which the Numba kernels call): in this install its product of this
    shape (N x depth times depth x N) ran about 25% faster.  The model runs ranges on several
    threads with every BLAS held to one thread, so the two libraries never run thread pools at once.

    With G from :func:`rnn_backward_numba` the sum over ``1 <= t < T`` is ``dL/dW`` of a real model
    and, with ``conj=True``, ``conj(dL/dW)`` of a complex one (``H[0] = 0`` adds nothing).  Disjoint
    ranges can run on separate threads.
    """
    n = G.shape[2]
    xp = array_namespace(G)
    xp.matmul(G[t0:t1].reshape(-1, n).T, H[t0:t1].reshape(-1, n), out=out)


# ---- section: softmax cross-entropy of the logits, in place ----------------------------------------
#
# Mean softmax cross-entropy over the labelled positions (labels < 0 are ignored) and its gradient,
# written over the logits.  Probabilities below ``floor = tiny / eps`` of the dtype are clipped and
# gradients below it flushed to zero: they change nothing at working precision, and subnormal
# numbers make every BLAS call that touches them tens of times slower (a trained model is confident
# on most positions).


def _cross_entropy_loop(L, y, s0, s1, log_floor, floor, scale, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    batch, C = L.shape[1], L.shape[2]
    total = 0.0
    correct = 0
    for s in range(s0, s1):
        for i in range(batch):
            row = L[s, i]
            lab = y[s, i]
            m, arg = row[0], 0
            for k in range(1, C):
                if row[k] > m:
                    m, arg = row[k], k
            picked = row[lab] if lab >= 0 else m
            e_sum = 0.0
            for k in range(C):
                e = np.exp(max(row[k] - m, log_floor))
                row[k] = e
                e_sum += e
            if lab >= 0:
                total += np.float64(m) + np.log(e_sum) - np.float64(picked)
                correct += arg == lab
                sc = scale
            else:
                lab, sc = 0, 0 * scale
            for k in range(C):
                d = row[k] / e_sum
                if k == lab:
                    d -= 1
                d *= sc
                row[k] = d if abs(d) >= floor else 0
    out[0] = total
    out[1] = correct


_cross_entropy_numba = _njit(_cross_entropy_loop)


def cross_entropy_numba(L: Any, y: Any, s0: int, s1: int, count: int) -> tuple[float, int]:
    """Cross-entropy of the steps ``s0:s1``; their logits are overwritten by ``dL/dlogits``.

    Parameters
    ----------
    L : numpy.ndarray, shape (S, batch, C), C-contiguous
        Time-major logits; on exit, rows ``s0:s1`` hold the gradient of the mean loss.
    y : numpy.ndarray of int, shape (S, batch)
        Labels (negative: ignored); any strides.
    s0, s1 : int
        The steps to work on (disjoint ranges can run on separate threads: the GIL is released).
    count : int
        The number of labelled positions of the whole loss (at least 1).

    Returns
    -------
    total : float
        The sum of the negative log-likelihoods of the labelled positions in ``s0:s1``.
    correct : int
        How many of them have their label as the arg-max logit.
    """
    info = np.finfo(L.dtype)
    floor = info.tiny / info.eps
    out = np.zeros(2)
    _cross_entropy_numba(L, y, s0, s1, L.dtype.type(np.log(floor)), L.dtype.type(floor), L.dtype.type(1.0 / count), out)
    return float(out[0]), int(out[1])


def cross_entropy_numpy(L: Any, y: Any, count: Any) -> tuple[Any, Any, Any]:
    """NumPy/CuPy twin of :func:`cross_entropy_numba` over all steps (``count`` may be a device scalar).

    Returns the sum of the negative log-likelihoods, the number of correct labelled positions (both
    0-d arrays, so that nothing is read from a device) and ``dL/dlogits`` (a new array).
    """
    xp = array_namespace(L)
    info = np.finfo(L.dtype)
    floor = float(info.tiny / info.eps)
    m = xp.max(L, axis=-1, keepdims=True)
    e = xp.exp(xp.maximum(L - m, float(np.log(floor))))
    s = xp.sum(e, axis=-1, keepdims=True)
    mask = y >= 0
    labels = xp.where(mask, y, 0)
    picked = xp.take_along_axis(L, labels[..., None], axis=-1)[..., 0]
    nll = (m[..., 0] + xp.log(s[..., 0]) - picked).astype(np.float64)
    total = xp.sum(xp.where(mask, nll, 0))
    correct = xp.sum((xp.argmax(L, axis=-1) == labels) & mask)
    d = e / s
    d -= xp.arange(L.shape[-1]) == labels[..., None]
    d *= (mask / count).astype(d.dtype)[..., None]
    xp.multiply(d, xp.abs(d) >= floor, out=d)  # not d[mask] = 0: a boolean scatter may sync on CuPy
    return total, correct, d
