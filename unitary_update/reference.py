r"""Dense O(N^3) reference implementations, the oracle for tests and the baseline for benchmarks.

* :func:`project_dense`: the polar factor of ``U + A B^H`` from a full SVD
  (:func:`scipy.linalg.polar` on NumPy; ``cupy.linalg.svd`` on CuPy).
* :func:`transport_dense`: ``U expm(skew(U^H A B^H))`` with :func:`scipy.linalg.expm` on NumPy;
  on CuPy through the Hermitian eigenproblem of ``-i skew(.)``.

They share nothing with the low-rank code they check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import check_finite
from ._xp import array_namespace, from_compute, hconj, to_compute

__all__ = ["project_dense", "transport_dense"]


def _inputs(U: Any, A: Any, B: Any) -> tuple[Any, Any, Any, Any, str]:
    U, library = to_compute(U, "U")
    A, _ = to_compute(A, "A")
    B, _ = to_compute(B, "B")
    for x, name in ((U, "U"), (A, "A"), (B, "B")):
        check_finite(x, name)  # NaN in, NonFiniteError out: an oracle must not return NaN silently
    xp = array_namespace(U, A, B)
    return xp, U, xp.asarray(A, dtype=U.dtype), xp.asarray(B, dtype=U.dtype), library


def project_dense(U: Any, A: Any, B: Any) -> Any:
    """Polar factor of ``U + A @ B^H`` by a dense SVD, O(N^3).

    Parameters
    ----------
    U : array, shape (..., N, N)
        Unitary or orthogonal matrix (or stack).
    A, B : array, shape (..., N, k)
        Factors of the update.

    Returns
    -------
    array, shape (..., N, N)
        The unitary polar factor, in U's dtype.

    Raises
    ------
    TypeError
        If an argument is not an array (NumPy, CuPy, or a torch/JAX tensor).
    ValueError
        If the shapes do not match (raised by the matrix products).
    NonFiniteError
        If U, A or B contains NaN or Inf.

    Examples
    --------
    >>> import numpy as np, unitary_update as uu
    >>> from unitary_update.reference import project_dense
    >>> U = uu.random_unitary(4, rng=0)
    >>> A = np.ones((4, 1)); B = np.ones((4, 1))
    >>> uu.unitarity_error(project_dense(U, A, B)) < 1e-13
    True
    """
    xp, U, A, B, library = _inputs(U, A, B)
    M = U + A @ hconj(B)
    if xp is np:
        import scipy.linalg

        flat = M.reshape(-1, *M.shape[-2:])
        out = np.stack([scipy.linalg.polar(m)[0] for m in flat]).reshape(M.shape)
    else:
        L, _, Rh = xp.linalg.svd(M)
        out = L @ Rh
    return from_compute(out.astype(U.dtype, copy=False), library)


def transport_dense(U: Any, A: Any, B: Any) -> Any:
    """``U @ expm(skew(U^H A B^H))``, ``skew(X) = (X - X^H)/2``, by a dense exponential, O(N^3).

    Parameters
    ----------
    U : array, shape (..., N, N)
        Unitary or orthogonal matrix (or stack).
    A, B : array, shape (..., N, k)
        Factors of the update.

    Returns
    -------
    array, shape (..., N, N)
        The transported matrix, in U's dtype.

    Raises
    ------
    TypeError
        If an argument is not an array (NumPy, CuPy, or a torch/JAX tensor).
    ValueError
        If the shapes do not match (raised by the matrix products).
    NonFiniteError
        If U, A or B contains NaN or Inf.

    Examples
    --------
    >>> import numpy as np, unitary_update as uu
    >>> from unitary_update.reference import transport_dense
    >>> U = uu.random_unitary(4, dtype=np.float64, rng=0)
    >>> A = np.ones((4, 1)); B = np.arange(4.0)[:, None]
    >>> uu.unitarity_error(transport_dense(U, A, B)) < 1e-13
    True
    """
    xp, U, A, B, library = _inputs(U, A, B)
    X = hconj(U) @ A @ hconj(B)
    S = 0.5 * (X - hconj(X))
    if xp is np:
        import scipy.linalg

        E = scipy.linalg.expm(S)
    else:
        theta, V = xp.linalg.eigh(-1j * S)
        E = (V * xp.exp(1j * theta)[..., None, :]) @ hconj(V)
        E = E.real if U.dtype.kind != "c" else E
    return from_compute((U @ E).astype(U.dtype, copy=False), library)
