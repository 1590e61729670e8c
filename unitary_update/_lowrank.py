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

import functools
from types import ModuleType
from typing import Any

import numpy as np

from . import _kernels
from ._blas import add_lowrank_
from ._config import get_options, use_numba
from ._threads import MIN_WORK, SERIAL_MAX_WORK, single_threaded_blas
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
    if xp is np and X.ndim == 2 and X.shape[-1] >= _FAST_MIN_R:
        factors = _cholesky_qr2(X)
        if factors is not None:
            W, R = factors
            return W, R[:, k:], R[:, :k]
    # Householder QR: many BLAS-2 steps on a thin block, faster on one BLAS thread (_threads)
    # (from N = 256 whatever r: OpenBLAS threads the BLAS-2 steps of a 512 x 8 block already)
    with single_threaded_blas(MIN_WORK if xp is np and X.shape[-2] >= 256 else 0):
        W, R = xp.linalg.qr(X, mode="reduced")
    return W, R[..., :, k:], R[..., :, :k]


# CholeskyQR2 is used only while every column of [B, A_hat] keeps at least this sine of an angle
# to the span of the columns before it (the Cholesky factor's diagonal over the column's norm);
# then the first pass leaves W orthonormal to eps * cond << 1 and the second pass to rounding.
_CHOLESKY_MIN_SINE = {4: 1e-4, 8: 1e-7}


@functools.lru_cache(maxsize=4)
def _trtri(dtype: np.dtype) -> Any:
    """LAPACK ``?trtri`` (triangular inverse) for ``dtype``, from SciPy: run only on one BLAS thread."""
    from scipy.linalg.lapack import get_lapack_funcs

    return get_lapack_funcs("trtri", dtype=dtype)


def _cholesky_qr2(X: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``X = W R`` (thin, N x r with r <= N) by CholeskyQR2; None when X is (nearly) rank deficient.

    Two passes of ``G = Y^H Y`` (r x r), ``G = L L^H``, ``Y <- Y L^{-H}``: BLAS-3 products over
    the thin block instead of Householder's many BLAS-2 steps (at N = 1024, r = 128: about 4x
    faster).  The tall products run in X's dtype; the first Gram matrix and ``R`` in double
    precision.  The r x r Cholesky and triangular inverse run on one BLAS thread (SciPy's
    ``trtri`` included, so its separate OpenBLAS never starts a thread pool).  Returns None, for the Householder
    QR to take over, when ``r > N``, when a Cholesky fails, or when a column lies within
    :data:`_CHOLESKY_MIN_SINE` of the span of the others (A or B zero, ``A_hat`` parallel to
    ``B``): there CholeskyQR would lose orthogonality.
    """
    n, r = X.shape
    if r > n or r == 0:
        return None
    min_sine = _CHOLESKY_MIN_SINE[X.real.dtype.itemsize]
    R = np.eye(r, dtype=_core_dtype(X.dtype))
    Y = X
    for first in (True, False):
        # the first Gram matrix in double precision (X may be ill-conditioned); the second, of a
        # nearly orthonormal Y, in Y's dtype
        Yd = Y.astype(_core_dtype(X.dtype)) if first else Y
        G = hconj(Yd) @ Yd
        norms = np.sqrt(np.diagonal(G).real)
        with single_threaded_blas(r**3):  # r x r LAPACK; the tall products above and below use every thread
            try:
                L = np.linalg.cholesky(G)
            except np.linalg.LinAlgError:
                return None
            sines = np.diagonal(L).real / np.where(norms > 0, norms, 1.0)
            if not (norms.min() > 0 and sines.min() > min_sine):  # also False for NaN
                return None
            Linv, info = _trtri(L.dtype)(L, lower=1)  # triangular inverse: r^3/3 flops, not inv's 2 r^3
            if info != 0:  # pragma: no cover - a positive diagonal was checked above
                return None
        Y = Y @ hconj(Linv).astype(Y.dtype, copy=False)
        R = hconj(L).astype(R.dtype, copy=False) @ R
    return Y, R


# Below this r the LAPACK calls (Householder QR, r x r SVD/eigh) take microseconds and win over the
# several NumPy calls of CholeskyQR2, Newton-Schulz and Pade (measured: bench at N = 128, k = 1).
_FAST_MIN_R = 16


def _core_dtype(dtype: Any) -> Any:
    return np.complex128 if np.dtype(dtype).kind == "c" else np.float64


def _powers_of_two(xp: ModuleType, e: Any) -> Any:
    """``2.0 ** e`` in float64 for an integer array ``e`` (0 on underflow; callers keep e <= 1000)."""
    with np.errstate(under="ignore"):
        return xp.ldexp(xp.ones(e.shape, dtype=np.float64), e)


# projUNN-D's identity term for a huge step: no smaller than 2^-900, about the smallest power of two
# the double-precision core still resolves beside entries of order one (measured against mpmath
# and the limit: r = 8-16 cores lose 1e-5 at 2^-1000, equal-norm steps fail from 2^-1100; steps
# whose singular values span 2^500 and more want the term as small as it can be); see
# project_core.  The JAX core has its own, for single precision.
HUGE_STEP_EXPONENT = 900


def project_core(xp: ModuleType, a: Any, b: Any, e: Any = None) -> Any:
    """``polar(I + 2^e a b^H) - I`` for the r x r core of projUNN-D (computed in double precision).

    ``e`` (integer array over the batch, or None for 0) is the scale exponent left out of the
    factors by :func:`balance`.  For ``e > 0`` the core is computed as
    ``polar(2^-e I + a b^H)`` (the polar factor is invariant to positive scaling), so nothing
    overflows at any scale; for ``e < 0`` the term ``2^e a b^H`` underflows gracefully.  The
    identity term is capped at ``eps = 2^-HUGE_STEP_EXPONENT`` (``2^-900``) rather than let
    underflow to 0: the polar factor of ``eps I + a b^H`` tends to a limit as ``eps -> 0``, and
    the map between the null spaces of the rank-deficient ``a b^H`` comes from that term alone.
    Up to the cap the term is exact, so a step whose own singular values span many orders of
    magnitude keeps them all; beyond it the result is within ``eps / sigma_k(a b^H)`` of the
    limit, below rounding unless ``a b^H``'s singular values span more than 2^800.

    On NumPy with ``r >= 16``, a T within ``||T^H T - I||_F <= 1/2`` of the unitary group (every training step of
    moderate size) takes :func:`_newton_schulz_polar`: r x r products only, 5-10x faster than
    the SVD at r = 128; a T of condition number up to 10 takes :func:`_eigh_polar` (half the
    SVD's time).  Other T, and other namespaces, take the SVD ``T = X S Y^H``, ``X Y^H``.
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
        identity_exponent = xp.minimum(xp.maximum(e, 0), HUGE_STEP_EXPONENT)
        T = _powers_of_two(xp, -identity_exponent) * eye + _powers_of_two(xp, xp.minimum(e, 0)) * ab
    if xp is np and r >= _FAST_MIN_R:
        polar = _newton_schulz_polar(T, eye)
        if polar is None:
            polar = _eigh_polar(T, eye)
        if polar is not None:
            return polar - eye
    X, _, Yh = _svd(xp, T)
    D = X @ Yh - eye
    if xp is np and a.shape[-1] < r:
        scale = 0 if e is None else e[..., 0, 0]  # the step is 2^scale a b^H
        # |2^scale a b^H| bounds sigma_k from above: only a step this large can be at its limit
        with np.errstate(divide="ignore"):
            top = scale + np.log2(r * np.max(np.abs(ab), axis=(-2, -1)))
        # (NaN factors, reached with check_finite off, keep the SVD's NaN result)
        if bool(np.any(top > _LIMIT_MIN_EXPONENT)) and bool(np.isfinite(a).all() and np.isfinite(b).all()):
            D = _with_huge_step_limit(a, b, scale, D, eye)
    return D


# a step whose identity term 2^-e is below 2^-56 sigma_k(a b^H) is at its limit to double rounding
_LIMIT_MIN_EXPONENT = 56


def _with_huge_step_limit(a: np.ndarray, b: np.ndarray, scale: Any, D: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """``D`` with the cores of huge steps replaced by ``lim_{eps -> 0} polar(eps I + a b^H) - I``.

    With ``a b^H = X S Y^H`` of rank k < r, the limit is ``X_k Y_k^H + Z polar(Z^H Z_R) Z_R^H``,
    ``Z`` and ``Z_R`` orthonormal bases of the complements of ``range(a)`` and ``range(b)``: the
    identity term alone maps the null spaces.  ``polar(eps I + a b^H)`` is within
    ``eps / sigma_k`` of it, so where ``2^-e / sigma_k < 2^-56`` the limit is the answer to
    double rounding, and it needs no SVD to resolve a term of relative size ``2^-e`` (which
    the SVD of ``T`` cannot, for r of about 40 and more: 0.1-0.2 off).  Entries of the stack
    where ``a b^H`` has rank below k keep the SVD's result.  Cost O(r^3) per matrix, small QRs
    and SVDs; run only when some ``e`` exceeds :data:`_LIMIT_MIN_EXPONENT`.  ``scale`` is ``e``
    over the stack (0 when the factors were not rescaled).
    """
    k = a.shape[-1]
    Qa, Ra = np.linalg.qr(a, mode="complete")
    Qb, Rb = np.linalg.qr(b, mode="complete")
    Uc, s, Vch = np.linalg.svd(Ra[..., :k, :] @ hconj(Rb[..., :k, :]))  # a b^H = Qa_k C Qb_k^H
    Z, Z_R = Qa[..., :, k:], Qb[..., :, k:]
    Pz, _, Qzh = np.linalg.svd(hconj(Z) @ Z_R)
    limit = (Qa[..., :, :k] @ Uc) @ (Vch @ hconj(Qb[..., :, :k])) + Z @ (Pz @ Qzh) @ hconj(Z_R)
    sigma_k = s[..., k - 1]
    with np.errstate(divide="ignore"):
        at_limit = (sigma_k > 0) & (scale + np.log2(sigma_k) > _LIMIT_MIN_EXPONENT)
    return np.where(at_limit[..., None, None], limit - eye, D)


def _frobenius_max(x: np.ndarray) -> float:
    """The largest Frobenius norm over a stack of matrices (NaN propagates)."""
    return float(np.sqrt(np.max(np.sum(np.abs(x) ** 2, axis=(-2, -1)), initial=0.0)))


def _eigh_polar(T: np.ndarray, eye: np.ndarray) -> np.ndarray | None:
    """``polar(T) = T (T^H T)^{-1/2}`` from the Hermitian ``eigh(T^H T)``, or None if T is not well conditioned.

    Squaring T squares its condition number, so this is used only where every eigenvalue of
    ``T^H T`` is at least 1/100 of the largest (cond(T) <= 10); one Newton-Schulz step then
    squares the remaining loss of unitarity.  None (the caller takes the SVD) otherwise, and for
    non-finite T or a LAPACK failure.
    """
    H = hconj(T) @ T
    try:
        lam, V = np.linalg.eigh(0.5 * (H + hconj(H)))
    except np.linalg.LinAlgError:
        return None
    if not bool(np.all((lam[..., 0] >= 1e-2 * lam[..., -1]) & (lam[..., 0] > 0))):  # also False for NaN
        return None
    Y = T @ ((V * (1.0 / np.sqrt(lam))[..., None, :]) @ hconj(V))
    return Y @ (1.5 * eye - 0.5 * (hconj(Y) @ Y))


def _newton_schulz_polar(T: np.ndarray, eye: np.ndarray) -> np.ndarray | None:
    """The polar factor of each T of a stack by Newton-Schulz, or None where it is not the fast way.

    ``Y <- Y (3 I - Y^H Y) / 2`` converges quadratically to ``polar(T)`` when
    ``||T^H T - I||_2 < 1``; it is run only from ``||T^H T - I||_F <= 1/2`` (at most six
    iterations to double precision) and stopped one step after ``||Y^H Y - I||_F <= 1e-8``, which
    leaves rounding error only.
    None (the caller takes the SVD) when T is farther from unitary, non-finite, or does not
    converge in 8 iterations.
    """
    E = hconj(T) @ T - eye
    err = _frobenius_max(E)
    if not err <= 0.5:
        return None
    Y = T
    for _ in range(8):
        if err <= 1e-8:  # quadratic convergence: one more step reaches rounding (~0.75 err^2)
            return Y @ (eye - 0.5 * E)
        Y = Y @ (eye - 0.5 * E)
        E = hconj(Y) @ Y - eye
        err = _frobenius_max(E)
    return None


# Angles beyond 2^1000 radians are known to no digit (eps * theta >> 2 pi); capping the exponent
# keeps theta finite, so the core is still a rotation.
_MAX_ANGLE_EXPONENT = 1000


def transport_core(xp: ModuleType, a: Any, b: Any, e: Any = None) -> Any:
    """``expm(K) - I`` with ``K = 2^e (a b^H - b a^H)/2`` for projUNN-T.

    On NumPy with ``r >= 16``, a K of 1-norm up to ``2^6 theta_13`` (about 340) with no exponent apart takes
    :func:`_expm_minus_identity_pade`: Pade products and one solve in double precision, real
    for real inputs.  Otherwise ``expm(K)`` comes from ``eigh(-iK)``; the exponent ``e`` (see
    :func:`project_core`) then scales the eigenvalues of the unit-scale ``K``, exactly, and
    exponents above 1000 are capped (the angle is then known to no digit).
    """
    real = a.dtype.kind != "c"
    if xp is np and e is None and a.shape[-2] >= _FAST_MIN_R:
        dt = _core_dtype(a.dtype)
        ab = a.astype(dt) @ hconj(b.astype(dt))
        D = _expm_minus_identity_pade(0.5 * (ab - hconj(ab)))
        if D is not None:
            return D
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


# Pade approximants of expm (Higham, SIAM J. Matrix Anal. Appl. 26 (2005) 1179-1193): the
# numerator coefficients b_j of degree m, and the 1-norm up to which degree m is accurate to
# double precision without scaling.
_PADE_COEFFICIENTS = {
    3: (120.0, 60.0, 12.0, 1.0),
    5: (30240.0, 15120.0, 3360.0, 420.0, 30.0, 1.0),
    7: (17297280.0, 8648640.0, 1995840.0, 277200.0, 25200.0, 1512.0, 56.0, 1.0),
    9: (17643225600.0, 8821612800.0, 2075673600.0, 302702400.0, 30270240.0, 2162160.0, 110880.0, 3960.0, 90.0, 1.0),
    13: (
        64764752532480000.0,
        32382376266240000.0,
        7771770303897600.0,
        1187353796428800.0,
        129060195264000.0,
        10559470521600.0,
        670442572800.0,
        33522128640.0,
        1323241920.0,
        40840800.0,
        960960.0,
        16380.0,
        182.0,
        1.0,
    ),
}
_PADE_THETA = {
    3: 1.495585217958292e-2,
    5: 2.539398330063230e-1,
    7: 9.504178996162932e-1,
    9: 2.097847961257068e0,
    13: 5.371920351148152e0,
}
_PADE_MAX_SQUARINGS = 6


def _expm_minus_identity_pade(K: np.ndarray) -> np.ndarray | None:
    """``expm(K) - I`` for a stack of skew-Hermitian K by scaling and squaring a Pade approximant.

    The diagonal Pade approximant ``r_m(K) = (V - U)^{-1} (V + U)`` (``U`` the odd, ``V`` the
    even part) of a skew-Hermitian K is unitary in exact arithmetic (``V - U = (V + U)^H``), and
    ``r_m(K) - I = 2 (V - U)^{-1} U`` keeps the accuracy of a small K.  Squarings use
    ``D <- D (2 I + D)`` (``(I + D)^2 - I``).  Real K stays real.  Returns None (the caller
    takes ``eigh``) for a non-finite K or a 1-norm above ``2^6 theta_13``.
    """
    norm = float(np.max(np.sum(np.abs(K), axis=-2), initial=0.0))  # the largest 1-norm of the stack
    if not norm <= _PADE_THETA[13] * 2.0**_PADE_MAX_SQUARINGS:
        return None
    squarings = 0
    degree = next((m for m in (3, 5, 7, 9) if norm <= _PADE_THETA[m]), 13)
    if degree == 13 and norm > _PADE_THETA[13]:
        squarings = int(np.ceil(np.log2(norm / _PADE_THETA[13])))
        K = K * 2.0**-squarings
    c = _PADE_COEFFICIENTS[degree]
    eye = np.eye(K.shape[-1], dtype=K.dtype)
    K2 = K @ K
    if degree == 13:
        K4 = K2 @ K2
        K6 = K4 @ K2
        odd = K @ (K6 @ (c[13] * K6 + c[11] * K4 + c[9] * K2) + c[7] * K6 + c[5] * K4 + c[3] * K2 + c[1] * eye)
        even = K6 @ (c[12] * K6 + c[10] * K4 + c[8] * K2) + c[6] * K6 + c[4] * K4 + c[2] * K2 + c[0] * eye
    else:
        powers = [eye, K2]
        for _ in range(2, degree // 2 + 1):
            powers.append(powers[-1] @ K2)
        odd = K @ sum(c[2 * j + 1] * P for j, P in enumerate(powers))
        even = sum(c[2 * j] * P for j, P in enumerate(powers))
    D = 2.0 * np.linalg.solve(even - odd, odd)
    for _ in range(squarings):
        D = D @ (2.0 * eye + D)
    return D


# LAPACK's gesdd runs the QR iteration of gesvd up to this size (SMLSIZ), divide and conquer above
_GESDD_QR_MAX = 25


def _svd(xp: ModuleType, T: Any) -> tuple[Any, Any, Any]:
    """``svd(T)``; NaN factors for a non-finite T (reached only with check_finite off), else errors wrapped.

    On NumPy a finite core with r > 25 goes to LAPACK's ``gesvd`` (QR iteration, one call per
    matrix of a stack), not NumPy's ``gesdd``: divide and conquer (which ``gesdd`` uses from
    r = 26 on; below, both run the same QR iteration, batched by NumPy) resolves small singular
    values only to ``eps`` times the largest, and a huge projUNN-D step's core
    ``2^-e I + a b^H`` needs its tiny identity term resolved (with ``gesdd``, r = 32-64 and
    ``|A B^H|`` beyond about ``2^40`` times U's scale gave a unitary matrix 0.2 off the polar
    factor).  The cores of ordinary steps rarely get here (Newton-Schulz or ``eigh`` from
    r = 16).
    """
    if xp is np and T.shape[-1] > _GESDD_QR_MAX and bool(np.isfinite(T).all()):
        import scipy.linalg

        try:
            if T.ndim == 2:
                return scipy.linalg.svd(T, lapack_driver="gesvd", check_finite=False)
            parts = [
                scipy.linalg.svd(t, lapack_driver="gesvd", check_finite=False) for t in T.reshape(-1, *T.shape[-2:])
            ]
            return tuple(np.stack(p).reshape(*T.shape[:-2], *p[0].shape) for p in zip(*parts, strict=True))
        except (np.linalg.LinAlgError, ValueError) as err:
            raise SingularUpdateError(f"the SVD of the r x r core did not converge ({err})") from None
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


def _as_stack(x: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """``x`` broadcast to ``batch`` as a C-contiguous ``(count, rows, cols)`` stack (a view when it can be)."""
    if x.ndim == 2 and len(batch) <= 1 and int(np.prod(batch, dtype=np.int64)) == 1 and x.flags.c_contiguous:
        return x[None]  # one matrix: no broadcast, no copy
    return np.ascontiguousarray(np.broadcast_to(x, (*batch, *x.shape[-2:])).reshape(-1, *x.shape[-2:]))


def _batched_kernel_wins(count: int, n: int, k: int) -> bool:
    """Whether the one-call Numba kernel beats the BLAS path: stacks of many small matrices.

    conv-bench: NumPy wins from k = 4.  Single small matrices stay on the BLAS path although the
    kernel is about 2x faster there (N = 128, k = 1: 66 against 118 us): compiling it costs
    about 8 s per dtype on first use, which a user calling ``project`` once would pay.
    """
    return count >= 16 and n <= 64 and k <= 2


def _fused_eligible(U: Any, target: Any, r: int) -> bool:
    """Whether the fused Numba path (one streaming pass for ``A_hat``, one fused row pass) wins.

    Measured (bench, alternating steps): from N = 256 at r <= 4; at r <= 8 only where the
    kernels run in parallel (U of 32 MiB or more, ``_kernels._threads_for``), since on one
    thread the BLAS path's two threads win there.
    """
    n = U.shape[-1]
    auto = n >= 256 and (r <= 4 or (r <= 8 and U.nbytes >= _kernels.PARALLEL_SINGLE_MIN_BYTES))
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
    finiteness of U, which is checked here before anything is written: through ``A_hat = U^H A``
    (:func:`_adjoint_matmul_checking_U`; on the fused Numba path NaN/Inf in U always reach it),
    by a separate pass over U where that proves nothing.  Paths:

    * stacks of small matrices (NumPy, Numba): :func:`_kernels.batched_update_numba`;
    * large single matrices (NumPy, Numba): one streaming pass for ``A_hat`` plus the fused
      row-block update;
    * otherwise (NumPy BLAS/LAPACK, CuPy): batched ``matmul``/``qr``/``svd``/``eigh`` and the
      in-place rank update of :func:`_blas.add_lowrank_`.

    The last two run on one BLAS thread when the rank-r update, the largest product, is below
    :data:`_threads.SERIAL_MAX_WORK` real multiply-adds (NumPy only).
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
        and use_numba(_batched_kernel_wins(count, n, k))
        # the kernel writes as it goes: U must be finite and of unitary size (|U_ij| <= 2^S; the
        # two reductions replace the NaN check), else the NumPy path checks and raises first
        and (not get_options().check_finite or _moderate(U, _SAFE_EXPONENT[U.real.dtype.itemsize]))
        # with check_finite off, NaN/Inf factors must still give NaN (the kernel would skip them):
        # they take the NumPy path (a pass over the thin A and B only, O(N k))
        and (get_options().check_finite or bool(np.isfinite(A).all() and np.isfinite(B).all()))
    ):
        U3, A3, B3 = (_as_stack(x, shape[:-2]) for x in (U, A, B))
        if target is None:
            target = np.empty(shape, dtype=U.dtype)
        out3 = target.reshape(-1, n, n)
        _kernels.batched_update_numba(U3 if target is not U else out3, A3, B3, kind == "transport", out3)
        return target
    r = min(n, 2 * k)
    # a small update runs on one BLAS thread, all of it (_threads.SERIAL_MAX_WORK): its largest
    # product, the rank-r update, is count N^2 r multiply-adds (4 real ones each when complex)
    work = count * n * n * r * (4 if U.dtype.kind == "c" else 1)
    with single_threaded_blas(work if xp is np and work < SERIAL_MAX_WORK else 0):
        return _update_by_products(xp, kind, U, A, B, e, target, shape, count, r)


def _update_by_products(
    xp: ModuleType,
    kind: str,
    U: Any,
    A: Any,
    B: Any,
    e: Any,
    target: Any,
    shape: tuple[int, ...],
    count: int,
    r: int,
) -> Any:
    """:func:`lowrank_update` once A and B are balanced, off the batched Numba kernel: its other paths.

    ``count`` is the number of matrices in ``shape``, ``r = min(N, 2k)`` the basis width.
    """
    fused = xp is np and _fused_eligible(U, target, r)
    if fused:
        A_hat = _kernels.adjoint_matmul_numba(U, A)
        if get_options().check_finite and not np.isfinite(A_hat).all():
            check_finite(U, "U")
            raise _too_large_U()
    else:
        A_hat = _adjoint_matmul_checking_U(xp, U, A)
    with np.errstate(over="ignore", invalid="ignore"):
        W, a, b = basis(xp, U, A, B, A_hat)
        # the r x r core: small LAPACK work, faster on one BLAS thread (_threads)
        with single_threaded_blas(count * r**3 if xp is np else 0):
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


def _adjoint_matmul_checking_U(xp: ModuleType, U: Any, A: Any) -> Any:
    """``U^H A``, with U's finiteness checked (:class:`NonFiniteError` naming U), mostly for free.

    When every row of A has a nonzero entry, a NaN or Inf anywhere in U reaches ``U^H A``: its
    product with a nonzero real or complex number is Inf or NaN, and every BLAS multiplies it
    (a reference BLAS skips only zero entries of the right operand).  A finite ``U^H A`` (N x k)
    then proves U finite, and the N x N pass of :func:`check_finite` is skipped: 0.2-0.4 of one
    N x N by N x 2k GEMM at N = 1024-4096, k = 4-16.  That pass still runs when A has a zero row
    (a sparse gradient) or ``U^H A`` is not finite (NaN/Inf in U, or a finite U too large for its
    dtype, which the caller's later checks report).  One flag is read back (one device sync).
    """
    with np.errstate(over="ignore", invalid="ignore"):  # a U far too large: checked by the caller
        A_hat = adjoint_matmul(xp, U, A)
    if get_options().check_finite and not bool(xp.all(xp.isfinite(A_hat)) & xp.all(xp.any(A != 0, axis=-1))):
        check_finite(U, "U")
    return A_hat


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
