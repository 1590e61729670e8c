r"""The shared machinery of projUNN-D and projUNN-T.

Notation (the paper's symbols, used throughout the numerical code)

=========  ==================  ==========================================================
symbol     shape               meaning
=========  ==================  ==========================================================
``U``      (..., N, N)         the unitary (complex) or orthogonal (real) matrix
``A, B``   (..., N, k)         rank-k factors of the additive update ``A B^H``
``A_hat``  (..., N, k)         ``U^H A``
``W``      (..., N, r)         orthonormal basis of ``span[B, A_hat]``, ``r = min(N, 2k)``
``R``      (..., r, 2k)        ``[B, A_hat] = W R`` (thin Householder QR)
``b, a``   (..., r, k)         ``W^H B = R[:, :k]`` and ``W^H A_hat = R[:, k:]``
``D``      (..., r, r)         the r x r core minus the identity, ``F - I``
=========  ==================  ==========================================================

Both updates have the same shape.  Because ``U`` is unitary, ``U^H (U + A B^H) = I + A_hat B^H``
and ``skew(U^H A B^H) = (A_hat B^H - B A_hat^H) / 2`` both act as the identity (respectively as
zero) on the orthogonal complement of ``span W`` and map ``span W`` into itself.  In the basis
``W`` they reduce to r x r matrices:

* project (projUNN-D):  ``U^H M = I + W (T - I) W^H`` with ``T = I + a b^H``, so
  ``polar(M) = U polar(U^H M) = U + (U W)(polar(T) - I) W^H``.  ``polar(T)`` is taken from the
  SVD ``T = X S Y^H`` as ``X Y^H``; this is the same Hermitian-core computation as
  ``(T^H T)^{-1/2} = (I + C)^{-1/2}`` with ``C = a b^H + b a^H + b (a^H a) b^H`` but does not
  square the condition number, and it stays defined when ``U + A B^H`` is singular (then any
  polar factor is a nearest unitary matrix; the SVD picks one).
* transport (projUNN-T):  ``skew(U^H A B^H) = W K W^H`` with the skew-Hermitian
  ``K = (a b^H - b a^H) / 2``, so ``U expm(W K W^H) = U + (U W)(expm(K) - I) W^H``.  ``expm(K)`` is
  computed from the Hermitian eigenproblem ``-iK = V diag(theta) V^H``:
  ``expm(K) - I = V diag(expm1(i theta)) V^H``, real for real inputs.

Cost: ``A_hat`` and ``U W`` are two products of U with thin blocks (O(N^2 k)); the QR is
O(N k^2); the r x r core O(k^3); and the final ``U += (U W D) W^H`` is one rank-r BLAS update.
Extra memory is O(N k).  The r x r cores are solved in double precision (float64/complex128)
whatever the input dtype: they are tiny, and this keeps huge or tiny updates (1e-30 .. 1e30)
free of overflow; the result is cast back to U's dtype.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ._backend import add_lowrank_

__all__ = ["apply_update", "basis", "project_core", "transport_core"]


def _hermitian_transpose(xp: ModuleType, x: Any) -> Any:
    return xp.conj(xp.swapaxes(x, -1, -2))


def basis(xp: ModuleType, U: Any, A: Any, B: Any) -> tuple[Any, Any, Any]:
    """Return ``W, a, b``: the orthonormal basis of ``span[B, U^H A]`` and the factors in it.

    Shapes: ``W (..., N, r)``, ``a, b (..., r, k)`` with ``r = min(N, 2k)``.  Householder QR
    gives an orthonormal ``W`` even when ``[B, A_hat]`` is rank deficient (A or B zero,
    ``A_hat`` parallel to ``B``): no rank decision is needed.
    """
    k = A.shape[-1]
    # U^H A as conj(U^T conj(A)): the conjugate lands on the thin blocks, and U^T is a view, so no
    # N x N temporary is made (xp.conj(U^T) would copy all of U: two extra passes over memory)
    U_t = xp.swapaxes(U, -1, -2)
    A_hat = xp.conj(U_t @ xp.conj(A)) if U.dtype.kind == "c" else U_t @ A
    batch = np.broadcast_shapes(A_hat.shape[:-2], B.shape[:-2])
    X = xp.concatenate(
        [xp.broadcast_to(B, (*batch, *B.shape[-2:])), xp.broadcast_to(A_hat, (*batch, *A_hat.shape[-2:]))],
        axis=-1,
    )
    W, R = xp.linalg.qr(X, mode="reduced")
    return W, R[..., :, k:], R[..., :, :k]


def _core_dtype(dtype: Any) -> Any:
    return np.complex128 if np.dtype(dtype).kind == "c" else np.float64


def project_core(xp: ModuleType, a: Any, b: Any) -> Any:
    """``polar(I + a b^H) - I`` for the r x r core of projUNN-D (computed in double precision)."""
    dt = _core_dtype(a.dtype)
    a = a.astype(dt)
    b = b.astype(dt)
    r = a.shape[-2]
    eye = xp.eye(r, dtype=dt)
    T = eye + a @ _hermitian_transpose(xp, b)
    X, _, Yh = xp.linalg.svd(T)
    return X @ Yh - eye


def transport_core(xp: ModuleType, a: Any, b: Any) -> Any:
    """``expm(K) - I`` with ``K = (a b^H - b a^H)/2`` for projUNN-T, via ``eigh(-iK)``."""
    real = a.dtype.kind != "c"
    a = a.astype(np.complex128)
    b = b.astype(np.complex128)
    ab = a @ _hermitian_transpose(xp, b)
    K = 0.5 * (ab - _hermitian_transpose(xp, ab))
    H = -1j * K
    H = 0.5 * (H + _hermitian_transpose(xp, H))  # exactly Hermitian
    theta, V = xp.linalg.eigh(H)
    # expm1(i theta) = (cos theta - 1) + i sin theta, accurate for small theta
    e = -2.0 * xp.sin(0.5 * theta) ** 2 + 1j * xp.sin(theta)
    D = (V * e[..., None, :]) @ _hermitian_transpose(xp, V)
    return D.real if real else D


def apply_update(xp: ModuleType, U: Any, W: Any, D: Any, out: Any) -> None:
    """``out = U + (U W) D W^H``; ``out`` already holds ``U`` (or is ``U``).

    ``U W`` is computed before ``out`` is written, so ``out=U`` is safe.  Extra memory is
    O(N r): ``U W`` and ``P = (U W) D``.
    """
    D = D.astype(U.dtype)
    P = (U @ W) @ D
    add_lowrank_(out, P, W)
