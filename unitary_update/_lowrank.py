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
  ``expm(K) - I = V diag(expm1(i theta)) V^H``, real for real inputs.  For real inputs with
  huge angles (a step of norm ~1e4 or more) the eigenvalues' rounding, ``eps ||K||``, breaks the
  ``+-theta`` pairing that makes this real; the real part is then no longer orthogonal, so it is
  replaced by its nearest rotation (SVD polar factor with determinant +1, r x r).  On CuPy this
  replacement always runs (deciding would need a device-to-host read); it changes a core that is
  already orthogonal only by rounding.

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

from . import _kernels
from ._blas import add_lowrank_
from ._config import get_options, use_numba
from ._validation import NonFiniteError, SingularUpdateError, check_finite, max_abs
from ._validation import svd as guarded_svd
from ._xp import hconj

__all__ = ["adjoint_matmul", "apply_update", "balance", "basis", "lowrank_update", "project_core", "transport_core"]


def adjoint_matmul(xp: ModuleType, U: Any, A: Any) -> Any:
    """``U^H @ A`` without materialising ``U^H`` (for complex U: ``conj(U^T @ conj(A))``)."""
    Ut = xp.swapaxes(U, -1, -2)
    if U.dtype.kind != "c":
        return Ut @ A
    return xp.conj(Ut @ xp.conj(A))


def basis(xp: ModuleType, U: Any, A: Any, B: Any, A_hat: Any = None) -> tuple[Any, Any, Any]:
    """Return ``W, a, b``: the orthonormal basis of ``span[B, U^H A]`` and the factors in it.

    Shapes: ``W (..., N, r)``, ``a, b (..., r, k)`` with ``r = min(N, 2k)``.  Householder QR
    gives an orthonormal ``W`` even when ``[B, A_hat]`` is rank deficient (A or B zero,
    ``A_hat`` parallel to ``B``): no rank decision is needed.  ``A_hat`` may be passed in when
    already computed.
    """
    k = A.shape[-1]
    if A_hat is None:
        A_hat = adjoint_matmul(xp, U, A)
    if A_hat.shape[:-2] == B.shape[:-2]:
        X = xp.concatenate([B, A_hat], axis=-1)
    else:
        batch = np.broadcast_shapes(A_hat.shape[:-2], B.shape[:-2])
        X = xp.concatenate(
            [xp.broadcast_to(B, (*batch, *B.shape[-2:])), xp.broadcast_to(A_hat, (*batch, *A_hat.shape[-2:]))],
            axis=-1,
        )
    W, R = xp.linalg.qr(X, mode="reduced")
    return W, R[..., :, k:], R[..., :, :k]


def _core_dtype(dtype: Any) -> Any:
    return np.complex128 if np.dtype(dtype).kind == "c" else np.float64


def _powers_of_two(xp: ModuleType, e: Any) -> Any:
    """``2.0 ** e`` in float64 for an integer array ``e`` (0 on underflow; callers keep e <= 1000)."""
    with np.errstate(under="ignore"):
        return xp.ldexp(xp.ones(e.shape, dtype=np.float64), e)


def project_core(xp: ModuleType, a: Any, b: Any, e: Any = None) -> Any:
    """``polar(I + 2^e a b^H) - I`` for the r x r core of projUNN-D (computed in double precision).

    ``e`` (integer array over the batch, or None for 0) is the scale exponent left out of the
    factors by :func:`balance`.  For ``e > 0`` the core is computed as
    ``polar(2^-e I + a b^H)`` (the polar factor is invariant to positive scaling), so nothing
    overflows at any scale; for ``e < 0`` the term ``2^e a b^H`` underflows gracefully.
    """
    dt = _core_dtype(a.dtype)
    a = a.astype(dt)
    b = b.astype(dt)
    r = a.shape[-2]
    eye = xp.eye(r, dtype=dt)
    ab = a @ hconj(b)
    if e is None:
        T = eye + ab
    else:
        e = xp.asarray(e)[..., None, None]
        T = _powers_of_two(xp, -xp.maximum(e, 0)) * eye + _powers_of_two(xp, xp.minimum(e, 0)) * ab
    X, _, Yh = _svd(xp, T)
    return X @ Yh - eye


# Angles beyond 2^1000 radians are known to no digit (eps * theta >> 2 pi); capping the exponent
# keeps theta finite, so the core is still a rotation.
_MAX_ANGLE_EXPONENT = 1000


def transport_core(xp: ModuleType, a: Any, b: Any, e: Any = None) -> Any:
    """``expm(K) - I`` with ``K = 2^e (a b^H - b a^H)/2`` for projUNN-T, via ``eigh(-iK)``.

    The exponent ``e`` (see :func:`project_core`) scales the eigenvalues of the unit-scale
    ``K``, exactly; exponents above 1000 are capped (the angle is then known to no digit).
    """
    real = a.dtype.kind != "c"
    a = a.astype(np.complex128)
    b = b.astype(np.complex128)
    ab = a @ hconj(b)
    K = 0.5 * (ab - hconj(ab))
    H = -1j * K
    H = 0.5 * (H + hconj(H))  # exactly Hermitian
    try:
        theta, V = xp.linalg.eigh(H)
    except np.linalg.LinAlgError as err:
        if not bool(xp.isfinite(H).all()):  # NaN in, NaN out (the check_finite=False contract)
            theta, V = xp.full(H.shape[:-1], xp.nan), xp.full(H.shape, xp.nan, dtype=H.dtype)
        else:
            raise SingularUpdateError(
                f"the eigendecomposition of the r x r transport core did not converge ({err})"
            ) from None
    if e is not None:
        theta = theta * _powers_of_two(xp, xp.minimum(xp.asarray(e), _MAX_ANGLE_EXPONENT))[..., None]
    # expm1(i theta) = (cos theta - 1) + i sin theta, accurate for small theta
    e1 = -2.0 * xp.sin(0.5 * theta) ** 2 + 1j * xp.sin(theta)
    D = (V * e1[..., None, :]) @ hconj(V)
    return _nearest_rotation(xp, D) if real else D


def _svd(xp: ModuleType, T: Any) -> tuple[Any, Any, Any]:
    """``svd(T)``; NaN factors for a non-finite T (reached only with check_finite off), else errors wrapped."""
    try:
        return guarded_svd(xp, T)
    except np.linalg.LinAlgError as err:
        if not bool(xp.isfinite(T).all()):  # NaN in, NaN out (the check_finite=False contract)
            nan = xp.full(T.shape, xp.nan, dtype=T.dtype)
            return nan, xp.full(T.shape[:-1], xp.nan), nan
        raise SingularUpdateError(f"the SVD of the r x r core did not converge ({err})") from None


# Factors whose largest entries lie within 2^+-S of 1 go through every path unchanged; others
# are rescaled by powers of two first (exact) so that nothing overflows or underflows.
_SAFE_EXPONENT = {4: 20, 8: 100}


def _exponents(xp: ModuleType, x: Any) -> Any:
    """Per matrix of a stack, the binary exponent e with ``max |x_ij| = f 2^e``, ``f in [0.5, 1)`` (0 for 0)."""
    if x.shape[-1] * x.shape[-2] == 0:
        return xp.zeros(x.shape[:-2], dtype=np.int64)
    m = max_abs(xp, x, axis=(-2, -1))
    exponent = xp.frexp(xp.asarray(m, dtype=np.float64))[1].astype(np.int64)
    return xp.where(xp.isfinite(m), exponent, 0)


def _scaled(xp: ModuleType, x: Any, s: Any, dtype: Any) -> Any:
    """``x * 2^s`` (s an integer array over the batch), exactly, computed in double, cast to ``dtype``."""
    xd = x.astype(_core_dtype(x.dtype))
    s = xp.asarray(s)[..., None, None]
    half = s // 2
    with np.errstate(under="ignore", over="ignore"):
        y = (xd * _powers_of_two(xp, half)) * _powers_of_two(xp, s - half)
        return y.astype(dtype)


def _moderate(x: np.ndarray, limit: int) -> bool:
    """Whether every entry of x is at most ``2^limit`` in magnitude (two global reductions).

    Tiny matrices need no rescaling as long as no factor is large: their product is then far
    below the rounding of U (a subnormal A with ``|B| <= 2^limit`` moves U by less than 1e-30).
    """
    if x.size == 0:
        return True
    parts = (x.real, x.imag) if x.dtype.kind == "c" else (x,)
    bound = 2.0**limit
    return all(bool(p.max() <= bound) and bool(p.min() >= -bound) for p in parts)


def balance(xp: ModuleType, A: Any, B: Any, dtype: Any) -> tuple[Any, Any, Any]:
    """``A, B`` in ``dtype`` with ``A B^H`` unchanged, scaled so that nothing overflows; and an exponent.

    Returns ``(A', B', e)`` with ``A B^H = 2^e A' B'^H`` per matrix of the stack (``e`` None
    means 0).  Factors of moderate size (no entry above ``2^S``, S = 20 for single and 100
    for double precision) are only cast.  Otherwise they are balanced by powers
    of two (exact): ``A B^H = (2^s A)(2^-s B)^H``; when the product itself is out of range its
    exponent ``e`` is kept apart and the r x r cores apply it (:func:`project_core`,
    :func:`transport_core`).  On CuPy the exponent is always kept apart (deciding would read
    a value back to the host).  So a float64 A of 1e300 with a float32 U, or factors of 1e160 in
    float64 (a product of 1e320), give the right unitary answer instead of Inf/NaN.
    """
    limit = _SAFE_EXPONENT[np.dtype(dtype).itemsize if np.dtype(dtype).kind == "f" else np.dtype(dtype).itemsize // 2]
    if xp is np and _moderate(A, limit) and _moderate(B, limit):  # the common case: only cast
        with np.errstate(under="ignore"):
            return A.astype(dtype, copy=False), B.astype(dtype, copy=False), None
    eA, eB = _exponents(xp, A), _exponents(xp, B)
    if xp is not np:  # on a device, deciding would read the exponents back: always rescale (no host read)
        return _scaled(xp, A, -eA, dtype), _scaled(xp, B, -eB, dtype), eA + eB
    e = eA + eB
    if e.size == 0 or int(xp.max(xp.abs(e))) <= 2 * limit:
        half = -((-e) // 2)  # ceil(e / 2)
        return _scaled(xp, A, half - eA, dtype), _scaled(xp, B, e - half - eB, dtype), None
    return _scaled(xp, A, -eA, dtype), _scaled(xp, B, -eB, dtype), e


def _nearest_rotation(xp: ModuleType, D: Any) -> Any:
    """``Q - I`` for the rotation Q nearest to ``I + Re D``; just ``Re D`` when ``Im D`` is rounding."""
    if xp is np and not float(np.max(np.abs(D.imag))) > _kernels.REAL_CORE_IMAG_TOL:
        return D.real
    eye = xp.eye(D.shape[-1], dtype=np.float64)
    X, _, Yh = _svd(xp, eye + D.real)
    flip = xp.where(xp.linalg.det(X) * xp.linalg.det(Yh) < 0, -1.0, 1.0)
    X[..., :, -1] *= flip[..., None]  # smallest singular value's direction: SO(r), det(U) kept
    return X @ Yh - eye


def apply_update(xp: ModuleType, U: Any, W: Any, D: Any, out: Any) -> None:
    """``out = U + (U W) D W^H``, with ``out`` either ``U`` itself or already holding ``U``.

    ``U W`` is computed before ``out`` is written, so ``out=U`` is safe.  Extra memory is
    O(N r): ``U W`` and ``P = (U W) D``.
    """
    D = D.astype(U.dtype)
    P = (U @ W) @ D
    add_lowrank_(out, P, W)


def _fused_eligible(U: Any, target: Any, r: int) -> bool:
    n = U.shape[-1]
    auto = n >= 256 and r <= 8
    return (
        U.ndim == 2
        and U.flags.c_contiguous
        and (target is None or (target.ndim == 2 and target.flags.c_contiguous))
        and use_numba(auto)
    )


def lowrank_update(xp: ModuleType, kind: str, U: Any, A: Any, B: Any, target: Any, shape: tuple[int, ...]) -> Any:
    """Run one projUNN update (``kind`` "project" or "transport") and return the result array.

    ``target`` is where the result goes (``U`` itself for an in-place update, another array, or
    None to allocate one of ``shape``); it must share no memory with A or B (the public
    functions copy an overlapping factor first).  A and B may have any floating dtype: they are
    rescaled and cast to U's dtype by :func:`balance`.  Inputs are validated except for the
    finiteness of U, which is checked here before anything is written -- by a separate pass, or,
    on the fused Numba path, through ``A_hat = U^H A`` (NaN/Inf in U always reach it).  Paths:

    * stacks of small matrices (NumPy, Numba): :func:`_kernels.batched_update_numba`;
    * large single matrices (NumPy, Numba): one streaming pass for ``A_hat`` plus the fused
      row-block update;
    * otherwise (NumPy BLAS/LAPACK, CuPy): batched ``matmul``/``qr``/``svd``/``eigh`` and the
      in-place rank update of :func:`_blas.add_lowrank_`.
    """
    n = U.shape[-1]
    count = int(np.prod(shape[:-2], dtype=np.int64))
    if count == 0:  # an empty stack: nothing to compute or write
        check_finite(U, "U")
        return xp.empty(shape, dtype=U.dtype) if target is None else target
    A, B, e = balance(xp, A, B, U.dtype)
    k = A.shape[-1]
    if (
        e is None
        and xp is np
        and (target is None or target.flags.c_contiguous)
        and use_numba(count >= 16 and n <= 64 and k <= 2)  # conv-bench: NumPy wins from k = 4
        # the kernel writes as it goes: U must be finite and of unitary size (|U_ij| <= 2^S; the
        # two reductions replace the NaN check), else the NumPy path checks and raises first
        and (not get_options().check_finite or _moderate(U, _SAFE_EXPONENT[U.real.dtype.itemsize]))
        # with check_finite off, NaN/Inf factors must still give NaN (the kernel would skip them):
        # they take the NumPy path (a pass over the thin A and B only, O(N k))
        and (get_options().check_finite or bool(np.isfinite(A).all() and np.isfinite(B).all()))
    ):
        U3, A3, B3 = (
            np.ascontiguousarray(np.broadcast_to(x, (*shape[:-2], *x.shape[-2:])).reshape(-1, *x.shape[-2:]))
            for x in (U, A, B)
        )
        if target is None:
            target = np.empty(shape, dtype=U.dtype)
        out3 = target.reshape(-1, n, n)
        _kernels.batched_update_numba(U3 if target is not U else out3, A3, B3, kind == "transport", out3)
        return target
    fused = xp is np and _fused_eligible(U, target, min(n, 2 * k))
    if fused:
        A_hat = _kernels.adjoint_matmul_numba(U, A)
        if get_options().check_finite and not np.isfinite(A_hat).all():
            check_finite(U, "U")
            raise _too_large_U()
    else:
        check_finite(U, "U")
        with np.errstate(over="ignore", invalid="ignore"):  # a U far too large: checked below
            A_hat = adjoint_matmul(xp, U, A)
    with np.errstate(over="ignore", invalid="ignore"):
        W, a, b = basis(xp, U, A, B, A_hat)
        D = project_core(xp, a, b, e) if kind == "project" else transport_core(xp, a, b, e)
    if xp is np and get_options().check_finite and not (np.isfinite(D).all() and np.isfinite(W).all()):
        raise _too_large_U()
    # everything that can fail has run: only now is the target written
    if fused:
        if target is None:
            target = np.empty(shape, dtype=U.dtype)
        _kernels.fused_update_numba(U, W, D.astype(U.dtype), target)
        return target
    if target is None:
        target = xp.empty(shape, dtype=U.dtype)
        target[...] = U
    elif target is not U:
        target[...] = U
    apply_update(xp, U, W, D, target)
    return target


def _too_large_U() -> NonFiniteError:
    return NonFiniteError(
        "U^H A overflows: U's entries are too large for its dtype (U must be unitary, entries of magnitude <= 1)"
    )


# ---- NumPy twins of the Numba kernels in _kernels (the references their tests compare with) ----
def fused_update_numpy(U: np.ndarray, W: np.ndarray, D: np.ndarray, out: np.ndarray) -> None:
    """NumPy twin of :func:`fused_update_numba`: ``U W`` by BLAS, then an in-place BLAS update."""
    P = (U @ W) @ D
    if out is not U:
        out[...] = U
    add_lowrank_(out, P, W)


def batched_update_numpy(U: np.ndarray, A: np.ndarray, B: np.ndarray, transport: bool, out: np.ndarray) -> None:
    """NumPy twin of :func:`batched_update_numba`: the batched NumPy/LAPACK path of ``_lowrank``."""
    W, a, b = basis(np, U, A, B)
    D = transport_core(np, a, b) if transport else project_core(np, a, b)
    if out is not U:
        out[...] = U
    apply_update(np, U, W, D, out)
