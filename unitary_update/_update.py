r"""projUNN-D (:func:`project`) and projUNN-T (:func:`transport`): O(kN^2) unitary updates.

Both take a unitary (or real orthogonal) ``U`` and a rank-k update ``A B^H`` and return a unitary
matrix near ``U + A B^H``; the machinery they share lives in :mod:`unitary_update._lowrank`.
"""

from __future__ import annotations

from typing import Any

from . import _lowrank
from ._validation import (
    check_factor_pair,
    check_finite,
    check_out,
    check_square,
    quiet_when_unchecked,
    same_view,
    unshare,
)
from ._xp import array_namespace, compute_context, from_compute, is_jax, mark_written, to_compute, to_compute_with_out

__all__ = ["project", "transport"]


def _prepare(U: Any, A: Any, B: Any, out: Any) -> tuple[Any, Any, Any, Any, str, tuple[int, ...]]:
    """Convert and validate (nothing is written here): U, A, B, out, the library, the shape."""
    U, library, target, _ = to_compute_with_out(U, out)
    A, _ = to_compute(A, "A")
    B, _ = to_compute(B, "B")
    n = check_square(U, "U")
    batch, A, B = check_factor_pair(U, A, B, cast=False)  # cast after rescaling: _lowrank.balance
    shape = (*batch, n, n)
    if target is not None:
        check_out(target, U, shape)
        if same_view(target, U):
            target = U
        A, B = unshare(target, (A, B))  # a factor that shares memory with out is read from a copy
    for x, name in ((A, "A"), (B, "B")):
        check_finite(x, name)  # U's finiteness is checked by _lowrank.lowrank_update
    return U, A, B, target, library, shape


def _update(kind: str, U: Any, A: Any, B: Any, out: Any) -> Any:
    if is_jax(U, A, B, out):  # JAX arrays and tracers stay in JAX (jit, vmap, any device)
        from .jax import _core as _jax_core

        return _jax_core.public_update(kind, U, A, B, out)
    with compute_context(U):
        U_c, A_c, B_c, target, library, shape = _prepare(U, A, B, out)
        xp = array_namespace(U_c, A_c, B_c)
        result = _lowrank.lowrank_update(xp, kind, U_c, A_c, B_c, target, shape)
        if out is not None:
            mark_written(out)  # torch: bump the version counter, as an in-place op would
            return out
        return from_compute(result, library)


@quiet_when_unchecked
def project(U: Any, A: Any, B: Any, *, out: Any = None) -> Any:
    r"""projUNN-D: the closest unitary matrix to ``U + A B^H``.

    Returns the unitary polar factor of :math:`M = U + A B^H`, the unitary matrix nearest to
    :math:`M` in every unitarily invariant norm.  With :math:`\hat A = U^H A` and an orthonormal
    basis :math:`W` of :math:`\operatorname{span}[B, \hat A]`,
    :math:`\operatorname{polar}(M) = U + (UW)(\operatorname{polar}(T) - I)W^H` where
    :math:`T = I + (W^H \hat A)(W^H B)^H` is only :math:`r \times r`, :math:`r = \min(N, 2k)`.

    Parameters
    ----------
    U : array, shape (..., N, N)
        Unitary (complex) or orthogonal (real) matrix or stack of them; float32, float64,
        complex64 or complex128.
    A, B : array, shape (..., N, k)
        Factors of the update ``A @ B^H``; any ``k >= 1``.  Cast to U's dtype; complex factors
        with a real U are an error.  Batch dimensions broadcast like :func:`numpy.matmul`.
    out : array, optional
        Where to write the result; ``out=U`` updates U in place.  Must have the result's shape
        and U's dtype, be writable, and be U itself or share no memory with U; an ``out`` whose
        entries share memory (zero strides, ``np.broadcast_to``, torch ``expand``) is a
        ValueError.  A or B sharing memory with ``out`` (e.g. a view into U with ``out=U``)
        are read from copies taken first, so the result is the one computed on copies.
        Without ``out`` no input is modified.

    Returns
    -------
    array, shape (broadcast batch, N, N)
        The polar factor, with U's dtype, in the caller's array library (``out`` itself when
        given).

    Raises
    ------
    TypeError
        If an argument is not an array, has an integer/boolean dtype, or is complex while U is
        real.
    ValueError
        If shapes do not match or batch dimensions do not broadcast.
    NonFiniteError
        If U, A or B contains NaN or Inf (a ValueError; nothing is written).
    SingularUpdateError
        If LAPACK fails to converge on the r x r core (not expected for finite input).

    Notes
    -----
    Cost O(N^2 k) time and O(N k) extra memory with ``out=U``.  Every finite A and B is
    handled, whatever their dtype and scale: they are balanced by powers of two
    (``A B^H = (2^s A)(2^-s B)^H``, exact) before being cast to U's dtype, and a product out of
    the dtype's range keeps its exponent apart from the r x r core (``polar(2^-e I + a b^H)``),
    so 1e160 factors in float64 or 1e38 in float32 give a unitary result, not NaN.  When ``U + A B^H`` is singular
    its polar factor is not unique; a valid nearest unitary matrix is returned (the one given by
    the SVD of T).  If A or B is zero, U is returned unchanged.  The derivation assumes U is
    unitary: the result is ``U + (U W)(polar(T) - I) W^H``, which for a U that has drifted by
    ``d = ||U^H U - I||`` differs from the polar factor of ``U + A B^H`` by O(d) and keeps U's
    own drift (it does not retract U; :func:`retract` or :class:`DriftControl` do).  A U far
    from unitary gives a result far from unitary, without an error.

    Examples
    --------
    >>> import numpy as np, scipy.linalg, unitary_update as uu
    >>> U = uu.random_unitary(6, rng=0)
    >>> rng = np.random.default_rng(1)
    >>> A = rng.standard_normal((6, 1)); B = rng.standard_normal((6, 1))
    >>> V = uu.project(U, A, B)
    >>> bool(np.allclose(V, scipy.linalg.polar(U + A @ B.T)[0]))
    True
    >>> uu.unitarity_error(V) < 1e-13
    True
    """
    return _update("project", U, A, B, out)


@quiet_when_unchecked
def transport(U: Any, A: Any, B: Any, *, out: Any = None) -> Any:
    r"""projUNN-T: ``U expm(skew(U^H A B^H))``, the update transported along the manifold.

    The Euclidean step ``A B^H`` is projected onto the tangent space at U (the skew-Hermitian part
    of :math:`U^H A B^H`) and followed along the exponential map.  In the orthonormal basis
    :math:`W` of :math:`\operatorname{span}[B, \hat A]`, :math:`\hat A = U^H A`, the skew part is
    :math:`W K W^H` with an :math:`r \times r` skew-Hermitian K, so the result is
    :math:`U + (UW)(\exp K - I)W^H`, with :math:`\exp K` from the Hermitian eigenproblem of
    :math:`-iK`.

    Parameters
    ----------
    U : array, shape (..., N, N)
        Unitary (complex) or orthogonal (real) matrix or stack of them; float32, float64,
        complex64 or complex128.
    A, B : array, shape (..., N, k)
        Factors of the update ``A @ B^H``; any ``k >= 1``.  Batch dimensions broadcast.
    out : array, optional
        Where to write the result; ``out=U`` updates U in place (the rules of
        :func:`project`: A or B overlapping ``out`` are read from copies).

    Returns
    -------
    array, shape (broadcast batch, N, N)
        ``U @ expm(skew(U^H A B^H))`` with U's dtype (real for real U; det(U) is preserved).

    Raises
    ------
    TypeError
        If an argument is not an array, has an integer/boolean dtype, or is complex while U is
        real.
    ValueError
        If shapes do not match or batch dimensions do not broadcast.
    NonFiniteError
        If U, A or B contains NaN or Inf (nothing is written).
    SingularUpdateError
        If LAPACK fails to converge on the r x r core (not expected for finite input).

    Notes
    -----
    Cost O(N^2 k) time and O(N k) extra memory with ``out=U``.  Factors of any finite scale
    are handled as in :func:`project`; an angle above ``2^1000`` radians (known to no digit) is
    capped, so the result is still a rotation.  If A or B is zero, or
    ``U^H A B^H`` is Hermitian (no tangent component), U is returned unchanged.

    Examples
    --------
    >>> import numpy as np, scipy.linalg, unitary_update as uu
    >>> U = uu.random_unitary(6, dtype=np.float64, rng=0)
    >>> rng = np.random.default_rng(1)
    >>> A = rng.standard_normal((6, 2)); B = rng.standard_normal((6, 2))
    >>> V = uu.transport(U, A, B)
    >>> X = U.T @ A @ B.T
    >>> bool(np.allclose(V, U @ scipy.linalg.expm((X - X.T) / 2)))
    True
    """
    return _update("transport", U, A, B, out)
