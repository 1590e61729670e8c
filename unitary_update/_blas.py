"""In-place products ``C += A @ B`` by BLAS gemm with ``beta = 1``, through NumPy's own BLAS.

One read and one write of C and no temporary of C's size.  The products run in the BLAS library
that NumPy's ``matmul`` and ``numpy.linalg`` use (:func:`numpy_cblas_gemm`, reached through
``ctypes``), so that an update never wakes two BLAS thread pools: NumPy and SciPy wheels each
bundle their own OpenBLAS, and when both run multi-threaded products in turn their idle, spinning
threads take the two cores from each other (measured: the rank-32 update of a 512 x 512 matrix
after ``U @ W`` took 10 ms instead of 0.24 ms at two threads; docs/benchmarks/cpu_grid.md).
Where NumPy's BLAS exposes no CBLAS ``gemm`` that this module recognises (and passes a
self-test), SciPy's ``gemm`` (:func:`gemm`) is used instead.  CuPy arrays go to
:func:`cupy.cublas.gemm`.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

from ._xp import array_namespace, hconj, is_cupy

__all__ = ["add_lowrank_", "addmm_", "gemm", "numpy_cblas_gemm"]


@functools.lru_cache(maxsize=8)
def gemm(dtype: np.dtype) -> Any:
    """SciPy's BLAS ``gemm`` for ``dtype`` (cached: the look-up costs microseconds per call)."""
    from scipy.linalg.blas import get_blas_funcs

    return get_blas_funcs("gemm", dtype=dtype)


# CBLAS enums (row-major calls only)
_ROW_MAJOR, _NO_TRANS, _TRANS, _CONJ_TRANS = 101, 111, 112, 113
# (symbol prefix, suffix, integer type) of the CBLAS gemm in the BLAS builds NumPy ships with:
# scipy-openblas64 (NumPy's wheels), an ILP64 OpenBLAS, and a plain LP64 CBLAS.
_CBLAS_NAMES = (
    ("scipy_cblas_", "64_", ctypes.c_int64),
    ("cblas_", "64_", ctypes.c_int64),
    ("cblas_", "", ctypes.c_int),
)
_PREFIX = {
    np.dtype(np.float32): "s",
    np.dtype(np.float64): "d",
    np.dtype(np.complex64): "c",
    np.dtype(np.complex128): "z",
}
_SCALAR = {"s": ctypes.c_float, "d": ctypes.c_double}


def _numpy_blas_handle() -> Any:
    import importlib

    try:
        umath = importlib.import_module("numpy._core._multiarray_umath")
    except ImportError:  # pragma: no cover - NumPy 1.x
        umath = importlib.import_module("numpy.core._multiarray_umath")
    # dlsym on the extension's handle also searches the libraries it links: NumPy's BLAS
    return ctypes.CDLL(umath.__file__)


@functools.lru_cache(maxsize=8)
def numpy_cblas_gemm(dtype: np.dtype) -> Any:
    """A row-major CBLAS ``?gemm`` of the BLAS library NumPy uses, for ``dtype``; None if unavailable.

    Returns ``call(trans_a, trans_b, m, n, k, A, lda, B, ldb, C, ldc)`` computing
    ``C <- op(A) op(B) + C`` in place (``alpha = beta = 1``; pointers are NumPy arrays that the
    caller keeps alive).  The symbol is looked up through NumPy's ``_multiarray_umath``
    extension (so it is the very library ``matmul`` calls) under the names NumPy's builds use,
    and checked once on a small product against ``matmul``; any failure gives None, and the
    callers fall back to SciPy's ``gemm``.
    """
    dtype = np.dtype(dtype)
    ch = _PREFIX.get(dtype)
    if ch is None:
        return None
    try:
        lib = _numpy_blas_handle()
    except OSError:  # pragma: no cover - a static build
        return None
    for prefix, suffix, int_t in _CBLAS_NAMES:
        fn = getattr(lib, f"{prefix}{ch}gemm{suffix}", None)
        if fn is None:
            continue
        if ch in _SCALAR:
            scalar_t: Any = _SCALAR[ch]
            one: Any = scalar_t(1.0)
        else:
            scalar_t = ctypes.c_void_p  # complex alpha and beta are passed by pointer
            one = np.ones(1, dtype=dtype)
        fn.restype = None
        vp = ctypes.c_void_p
        fn.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            int_t,
            int_t,
            int_t,
            scalar_t,
            vp,
            int_t,
            vp,
            int_t,
            scalar_t,
            vp,
            int_t,
        ]
        alpha = one if ch in _SCALAR else one.ctypes.data

        def call(
            ta: int,
            tb: int,
            m: int,
            n: int,
            k: int,
            A: np.ndarray,
            lda: int,
            B: np.ndarray,
            ldb: int,
            C: np.ndarray,
            ldc: int,
            _fn: Any = fn,
            _alpha: Any = alpha,
            _keep: Any = one,
        ) -> None:
            _fn(_ROW_MAJOR, ta, tb, m, n, k, _alpha, A.ctypes.data, lda, B.ctypes.data, ldb, _alpha, C.ctypes.data, ldc)

        if _self_test(call, dtype):
            return call
    return None


def _self_test(call: Any, dtype: np.dtype) -> bool:
    """Whether ``call`` computes a small ``C += A @ B^H`` exactly as ``matmul`` does."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 4)).astype(dtype)
    B = rng.standard_normal((5, 4)).astype(dtype)
    if dtype.kind == "c":
        A = A + 1j * rng.standard_normal((3, 4)).astype(dtype)
        B = B - 1j * rng.standard_normal((5, 4)).astype(dtype)
    C = rng.standard_normal((3, 5)).astype(dtype)
    expected = C + A @ hconj(B)
    try:
        call(_NO_TRANS, _CONJ_TRANS if dtype.kind == "c" else _TRANS, 3, 5, 4, A, 4, B, 4, C, 5)
    except Exception:  # pragma: no cover - a foreign ABI
        return False
    return bool(np.allclose(C, expected, rtol=1e-5, atol=1e-5))


def _operand(X: np.ndarray, conj: bool) -> tuple[np.ndarray, int, int]:
    """``(array, op, ld)`` presenting 2-D ``X`` (or ``conj(X)``) to a row-major gemm without a copy if possible."""
    item = X.itemsize
    m, n = X.shape
    s0, s1 = X.strides
    if not conj and (s1 == item or n == 1) and s0 % item == 0 and s0 // item >= max(1, n):
        return X, _NO_TRANS, s0 // item
    if (s0 == item or m == 1) and s1 % item == 0 and s1 // item >= max(1, m):
        # X is the transpose of a row-major (n x m) matrix: ask for its (conjugate) transpose
        return X, (_CONJ_TRANS if conj else _TRANS), s1 // item
    Y = np.ascontiguousarray(np.conj(X) if conj else X)
    return Y, _NO_TRANS, max(1, n)


def addmm_(C: np.ndarray, A: np.ndarray, B: np.ndarray, *, conj_b: bool = False) -> None:
    """In place: ``C += A @ B`` (``C += A @ conj(B)`` with ``conj_b``) for 2-D NumPy arrays, by one gemm.

    ``C`` (m x n) must be C- or Fortran-contiguous; ``A`` (m x k) and ``B`` (k x n) may be any
    views with unit stride along one axis (a transpose ``W.T`` costs no copy; ``conj_b`` with
    a transposed ``B`` is BLAS's conjugate transpose, also without a copy).  All in C's dtype.
    Runs in NumPy's BLAS (:func:`numpy_cblas_gemm`), else in SciPy's.
    """
    m, n = C.shape
    k = A.shape[1]
    if m == 0 or n == 0 or k == 0:
        return
    if not (C.flags.c_contiguous or C.flags.f_contiguous):  # pragma: no cover - callers check
        raise ValueError("addmm_: C must be C- or Fortran-contiguous")
    call = numpy_cblas_gemm(C.dtype)
    if call is None:
        _scipy_addmm_(C, A, B, conj_b)
        return
    if not C.flags.c_contiguous:
        # C Fortran-ordered: C^T (row-major) += B^T A^T
        if conj_b:
            B = np.conj(B)  # O(k n): B is the thin factor
        A, B, C = B.T, A.T, C.T
        m, n, conj_b = n, m, False
    a, ta, lda = _operand(A, False)
    b, tb, ldb = _operand(B, conj_b)
    ldc = C.strides[0] // C.itemsize if m > 1 else max(1, n)
    call(ta, tb, m, n, k, a, lda, b, ldb, C, ldc)


def _scipy_addmm_(C: np.ndarray, A: np.ndarray, B: np.ndarray, conj_b: bool) -> None:
    """``C += A @ (conj(B) if conj_b else B)`` by SciPy's gemm with beta = 1 (C contiguous)."""
    gemm_ = gemm(C.dtype)
    if conj_b:
        B = np.conj(B)
    if C.flags.f_contiguous:
        res = gemm_(1.0, A, B, beta=1.0, c=C, overwrite_c=1)
        target = C
    else:
        res = gemm_(1.0, B.T, A.T, beta=1.0, c=C.T, overwrite_c=1)
        target = C.T
    if not np.shares_memory(res, target):  # pragma: no cover - f2py copied: never expected
        target[...] = res


def _gemm_inplace_(U: np.ndarray, P: np.ndarray, W: np.ndarray) -> bool:
    """``U += P @ W^H`` for one contiguous N x N matrix by BLAS gemm with beta = 1.

    Returns False (and does nothing) when ``U`` is not contiguous in either order.
    """
    if not (U.flags.c_contiguous or U.flags.f_contiguous):
        return False
    addmm_(U, P, W.T, conj_b=U.dtype.kind == "c")
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
        if not _gemm_inplace_(U, P, W):  # addmm_ copies an operand only if BLAS cannot read it as is
            U += P @ hconj(W)
        return
    batch = U.shape[:-2]
    P = np.broadcast_to(P, (*batch, *P.shape[-2:]))
    W = np.broadcast_to(W, (*batch, *W.shape[-2:]))
    if U[(0,) * len(batch)].nbytes >= (1 << 20):
        for idx in np.ndindex(batch):
            if not _gemm_inplace_(U[idx], P[idx], W[idx]):
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
