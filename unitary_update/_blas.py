"""In-place rank-r updates ``U += P @ W^H`` by BLAS / cuBLAS gemm with ``beta = 1``.

One read and one write of U and no N x N temporary: NumPy arrays go to SciPy's BLAS ``gemm``
(one cached function per dtype, :func:`gemm`), CuPy arrays to :func:`cupy.cublas.gemm`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ._xp import array_namespace, hconj, is_cupy

__all__ = ["add_lowrank_", "gemm"]


@functools.lru_cache(maxsize=8)
def gemm(dtype: np.dtype) -> Any:
    """SciPy's BLAS ``gemm`` for ``dtype`` (cached: the look-up costs microseconds per call)."""
    from scipy.linalg.blas import get_blas_funcs

    return get_blas_funcs("gemm", dtype=dtype)


def _gemm_inplace_(U: np.ndarray, P: np.ndarray, W: np.ndarray) -> bool:
    """``U += P @ W^H`` for one contiguous N x N matrix by BLAS gemm with beta = 1.

    Returns False (and does nothing) when ``U`` is not contiguous in either order.
    """
    gemm_ = gemm(U.dtype)
    complex_ = U.dtype.kind == "c"
    if U.flags.f_contiguous:
        # column-major: C = U, C <- P @ W^H + C
        res = gemm_(1.0, P, W, beta=1.0, c=U, trans_b=2 if complex_ else 1, overwrite_c=1)
    elif U.flags.c_contiguous:
        # row-major: BLAS sees U^T; U^T <- conj(W) @ P^T + U^T
        Wc = W.conj() if complex_ else W
        res = gemm_(1.0, Wc, P, beta=1.0, c=U.T, trans_b=1, overwrite_c=1)
    else:
        return False
    if not np.shares_memory(res, U):  # pragma: no cover - f2py copied: never expected
        U[...] = res.T if U.flags.c_contiguous and not U.flags.f_contiguous else res
    return True


_CHUNK_BYTES = 8 << 20  # bound on the temporary of the batched NumPy update


def add_lowrank_(U: Any, P: Any, W: Any) -> None:
    """In place: ``U += P @ W^H`` with ``U: (..., N, N)``, ``P, W: (..., N, r)``.

    NumPy: a single matrix, or each matrix of a stack of matrices of 1 MiB or more, is updated by
    BLAS gemm with beta = 1 (extra memory O(N r)); a stack of smaller matrices by batched
    ``matmul`` in chunks whose temporary stays under 8 MiB, so there is no per-matrix Python
    loop for stacks of small matrices.  CuPy: cuBLAS gemm with beta = 1 for N >= 64 (see
    :func:`_cupy_gemm_inplace_`), else ``matmul`` then ``+=`` on the device.
    """
    xp = array_namespace(U)
    if xp is not np:
        if not (is_cupy(xp) and _cupy_gemm_inplace_(U, P, W)):
            U += P @ hconj(W)
        return
    if U.ndim == 2:
        if not _gemm_inplace_(U, np.ascontiguousarray(P), np.ascontiguousarray(W)):
            U += P @ hconj(W)
        return
    batch = U.shape[:-2]
    P = np.broadcast_to(P, (*batch, *P.shape[-2:]))
    W = np.broadcast_to(W, (*batch, *W.shape[-2:]))
    if U[(0,) * len(batch)].nbytes >= (1 << 20):
        for idx in np.ndindex(batch):
            if not _gemm_inplace_(U[idx], np.ascontiguousarray(P[idx]), np.ascontiguousarray(W[idx])):
                U[idx] += P[idx] @ hconj(W[idx])
        return
    flatU = U.reshape(-1, *U.shape[-2:])  # a view for contiguous stacks
    if not np.shares_memory(flatU, U):
        U += P @ hconj(W)
        return
    flatP = P.reshape(-1, *P.shape[-2:])
    flatWH = hconj(W).reshape(-1, W.shape[-1], W.shape[-2])
    step = max(1, _CHUNK_BYTES // max(1, flatU[0].nbytes))
    for start in range(0, len(flatU), step):
        flatU[start : start + step] += flatP[start : start + step] @ flatWH[start : start + step]


_CUPY_GEMM_MIN_N = 64  # below this a batched matmul (one launch) beats a loop of gemm launches


def _cupy_gemm_inplace_(U: Any, P: Any, W: Any) -> bool:
    """CuPy: ``U += P @ W^H`` by cuBLAS gemm with beta = 1: one read and one write of U, no N x N temporary.

    ``cupy.matmul`` followed by ``+=`` would write an N x N temporary and read it back (two extra
    passes over U's size, the difference between 3 and 5 passes in the memory floor).  Only
    ``'N'``/``'T'`` operations are passed to :func:`cupy.cublas.gemm` (the conjugate goes on the
    thin factor), and U is presented to cuBLAS in column-major form: ``U`` itself when it is
    Fortran-ordered, ``U^T`` when it is C-ordered; a strided (non-contiguous) matrix gets a
    ``matmul`` instead.  Returns False (nothing done) for N < 64, where one batched ``matmul``
    is cheaper than a loop of launches.  Enqueues only: no synchronisation.
    """
    if U.shape[-1] < _CUPY_GEMM_MIN_N:
        return False
    try:
        from cupy import cublas
    except ImportError:  # pragma: no cover - very old CuPy
        return False
    batch = U.shape[:-2]
    P = P if P.shape[:-2] == batch else _broadcast_xp(P, batch)
    W = W if W.shape[:-2] == batch else _broadcast_xp(W, batch)
    complex_ = U.dtype.kind == "c"
    for idx in np.ndindex(batch):
        u, p, w = U[idx], P[idx], W[idx]
        wc = w.conj() if complex_ else w
        if u.flags.f_contiguous:
            # column-major U: U <- P @ conj(W)^T + U
            cublas.gemm("N", "T", p, wc, out=u, alpha=1.0, beta=1.0)
        elif u.flags.c_contiguous:
            # row-major U: its transpose is column-major; U^T <- conj(W) @ P^T + U^T
            cublas.gemm("N", "T", wc, p, out=u.T, alpha=1.0, beta=1.0)
        else:  # a strided view (e.g. a torch tensor's transpose of a slice): matmul on the device
            u += p @ wc.T
    return True


def _broadcast_xp(x: Any, batch: tuple[int, ...]) -> Any:
    import cupy

    return cupy.broadcast_to(x, (*batch, *x.shape[-2:]))
