"""Test helpers shared by the test modules (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

from typing import Any

import numpy as np


def rtol_for(dtype: Any) -> float:
    """Relative tolerance of the precision checks: 1e-10 in double, 1e-4 in single precision."""
    return 1e-4 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-10


def random_factors(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Gaussian array of ``dtype`` (complex: independent real and imaginary parts)."""
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


ALL_DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


def polar_mpmath(M: Any, digits: int) -> np.ndarray:
    """The unitary polar factor of a real or complex mpmath matrix, by an SVD in ``digits`` digits."""
    import mpmath

    with mpmath.workdps(digits):
        X, _, Yh = (mpmath.svd_c if any(isinstance(v, mpmath.mpc) for v in M) else mpmath.svd_r)(M)
        P = X * Yh
        return np.array([[complex(P[i, j]) for j in range(P.cols)] for i in range(P.rows)])


def project_reference_mpmath(U: np.ndarray, A: np.ndarray, B: np.ndarray, digits: int) -> np.ndarray:
    """``polar(U + A B^H)`` from an mpmath SVD in ``digits`` digits (enough to keep U beside a huge ``A B^H``)."""
    import mpmath

    with mpmath.workdps(digits):
        Bh = np.conj(B.T)
        M = mpmath.matrix(U.tolist()) + mpmath.matrix(A.tolist()) * mpmath.matrix(Bh.tolist())
        out = polar_mpmath(M, digits)
    return out if np.iscomplexobj(U) or np.iscomplexobj(A) else out.real


def project_limit_of_huge_steps(U: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``lim_{t -> inf} polar(U + t A B^H)`` (one N x N matrix, A and B of k independent columns), in double precision.

    ``U + t A B^H = U (I + t M)`` with ``M = U^H A B^H = X S Y^H`` of rank k, and
    ``polar(eps I + M)`` tends to ``X_k Y_k^H + Z polar(Z^H Z_R) Z_R^H`` as ``eps -> 0``, with
    ``Z``, ``Z_R`` orthonormal bases of the complements of ``X_k``, ``Y_k``: the identity term
    alone maps the null spaces.  Built from NumPy's SVD and SciPy's polar, independently of the
    library's core (checked against a 440-digit mpmath SVD of ``10^-400 U + A B^H``).
    """
    import scipy.linalg

    wide = np.complex128 if np.iscomplexobj(U) or np.iscomplexobj(A) else np.float64
    U, A, B = (x.astype(wide) for x in (U, A, B))
    X, _, Yh = np.linalg.svd(np.conj(U.T) @ A @ np.conj(B.T))
    k = A.shape[-1]
    Z, Z_R = X[:, k:], np.conj(Yh[k:].T)
    return U @ (X[:, :k] @ Yh[:k] + Z @ scipy.linalg.polar(np.conj(Z.T) @ Z_R)[0] @ np.conj(Z_R.T))


def cupy_gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device (the GPU tests skip otherwise)."""
    try:
        import cupy

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:  # ImportError, or a CUDA driver/runtime error on a machine without a GPU
        return False


def torch_cuda_available() -> bool:
    """True when torch imports with CUDA support and a device (and CuPy is usable beside it)."""
    try:
        import torch

        return bool(torch.cuda.is_available()) and cupy_gpu_available()
    except Exception:
        return False
