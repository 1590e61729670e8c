"""Diagnostics: how far a matrix is from the unitary manifold."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import check_finite, check_square, quiet_when_unchecked
from ._xp import array_namespace, hconj, to_compute

__all__ = ["unitarity_error"]


@quiet_when_unchecked
def unitarity_error(U: Any) -> float:
    """Largest Frobenius norm ``||U^H U - I||_F`` over a stack of matrices.

    Computed in double precision (float64/complex128) whatever U's dtype, so the error of a
    float32 matrix is measured, not the rounding of the check.  O(N^3) per matrix: a diagnostic,
    not for a hot path (on CuPy it reads one number back to the host).

    Parameters
    ----------
    U : array, shape (..., N, N)
        The matrix or stack of matrices to measure; float32, float64, complex64 or complex128.

    Returns
    -------
    float
        ``max over the batch of ||U^H U - I||_F`` (0.0 for an empty batch; ``inf`` when the
        value exceeds the float64 range, e.g. for a float64 U with entries of 1e160).

    Raises
    ------
    TypeError
        If U is not a floating-point array.
    ValueError
        If U is not a stack of square matrices.
    NonFiniteError
        If U contains NaN or Inf (a ValueError): a NaN matrix has no distance to report.  With
        ``check_finite`` off the value is NaN instead.

    Examples
    --------
    >>> import numpy as np, unitary_update as uu
    >>> uu.unitarity_error(np.eye(3))
    0.0
    >>> round(uu.unitarity_error(2 * np.eye(3)), 6)
    5.196152
    """
    U, _ = to_compute(U, "U")
    n = check_square(U, "U")
    check_finite(U, "U")
    xp = array_namespace(U)
    if U.size == 0:
        return 0.0
    V = U.astype(xp.complex128 if U.dtype.kind == "c" else xp.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        E = hconj(V) @ V - xp.eye(n)
        # Frobenius norm scaled by the largest entry: no overflow of |E|^2 for huge (finite) E
        scale = xp.max(xp.abs(E), axis=(-2, -1), keepdims=True)
        safe = xp.where((scale > 0) & xp.isfinite(scale), scale, 1.0)
        norms = safe[..., 0, 0] * xp.sqrt(xp.sum(xp.abs(E / safe) ** 2, axis=(-2, -1)))
        # V^H V itself overflowed: inf (a complex product's inf - inf also gives NaN here)
        norms = xp.where(xp.isfinite(scale[..., 0, 0]), norms, xp.inf)
        # NaN or Inf in, NaN out (reached only with check_finite off): not the inf of an overflow
        norms = xp.where(xp.isfinite(V).all(axis=(-2, -1)), norms, xp.nan)
    return float(xp.max(norms))
