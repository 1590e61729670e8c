"""Numba kernels, each with its pure-NumPy twin named beside it.

Every compiled kernel here (``*_numba``) has a NumPy reference (``*_numpy``, beside it or in
:mod:`unitary_update._lowrank`) computing the same thing, and ``tests/test_kernels.py`` checks
that the two agree.  Which one runs is chosen in :mod:`unitary_update._lowrank` by
:func:`unitary_update._config.use_numba` from the library option ``backend``
(``"auto" | "numba" | "numpy"``, see :func:`unitary_update.set_options`); ``"auto"`` picks Numba
only where ``asv_benches`` shows it wins.  Validation and dispatch live in the public wrappers,
never in the kernels.  This module is a leaf: it imports nothing of the package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba
import numpy as np
from numba.extending import overload

__all__ = [
    "PARALLEL_SINGLE_MIN_BYTES",
    "REAL_CORE_IMAG_TOL",
    "adjoint_matmul_numba",
    "adjoint_matmul_numpy",
    "batched_update_numba",
    "fused_update_numba",
]


# ---- section: low-rank update kernels (fused U W + rank update; batched small matrices) ------
#
# Large N (memory bound): a projUNN step reads U twice and writes it once.
#   * adjoint_matmul: A_hat = U^H A in one streaming pass over the rows of U; NaN/Inf anywhere in
#     U propagates into A_hat (the loop never skips a zero of A, unlike reference BLAS), so a
#     finiteness check of the small A_hat replaces a separate pass over U.
#   * fused_update: for each row i, p = U[i] W, then out[i] = U[i] + (p D) W^H while the row is
#     still in cache: one read and one write of U instead of two reads and one read-write.
# Stacks of small matrices (the convolution case): batched_update does the whole step per matrix
# (A_hat, Gram-Schmidt basis, r x r core by Jacobi rotations, rank update) in one parallel loop.

_ROW_BLOCK = 64
_PARALLEL_MIN_BYTES = 4 << 20
# A single matrix's kernels go parallel only from 32 MiB (float32 N >= 2900): there the work on
# one thread (7 ms at N = 4096, k = 1) dwarfs the ~3 ms a parallel region can lose waiting for a
# core right after BLAS work, and alone it is 2x faster; below, one thread is faster in a
# training loop (see _threads_for).
PARALLEL_SINGLE_MIN_BYTES = 32 << 20


@numba.njit(cache=True, nogil=True, parallel=True)
def _adjoint_matmul_numba(U, A, nthreads):  # pragma: no cover - compiled
    n, k = A.shape
    nchunks = min(nthreads, max(1, n // _ROW_BLOCK))
    partial = np.zeros((nchunks, k, n), dtype=U.dtype)
    for c in numba.prange(nchunks):
        lo = c * n // nchunks
        hi = (c + 1) * n // nchunks
        acc = partial[c]
        for i in range(lo, hi):
            for col in range(k):
                a = A[i, col]
                for j in range(n):
                    acc[col, j] += np.conj(U[i, j]) * a
    out = np.empty((n, k), dtype=U.dtype)
    for col in range(k):
        for j in range(n):
            total = partial[0, col, j]
            for c in range(1, nchunks):
                total += partial[c, col, j]
            out[j, col] = total
    return out


@contextlib.contextmanager
def _threads_for(work_bytes: int, *, parallel: bool = True) -> Iterator[int]:
    """Numba threads for one kernel call: all of them for large parallel work, else one.

    Starting a parallel region waits for every worker thread.  Right after BLAS work (as in any
    training loop: the backward pass runs just before the update) OpenBLAS's idle threads keep
    spinning for a while, and on two cores a Numba worker then waits for a time slice: a
    parallel kernel that takes 0.1 ms alone took 3.9 ms after one ``U @ X`` (N = 1024, k = 1;
    docs/benchmarks/cpu_grid.md).  Stacks below 4 MiB, and single matrices (``parallel=False``)
    below 32 MiB, therefore run on the calling thread alone, without a second thread pool
    beside BLAS's.
    """
    saved = numba.get_num_threads()
    threads = saved if work_bytes >= (_PARALLEL_MIN_BYTES if parallel else PARALLEL_SINGLE_MIN_BYTES) else 1
    numba.set_num_threads(threads)
    try:
        yield threads
    finally:
        numba.set_num_threads(saved)


def adjoint_matmul_numba(U: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``U^H @ A`` for a C-contiguous N x N ``U``; one pass over U; NaN/Inf always propagate (see ``_threads_for``)."""
    with _threads_for(U.nbytes, parallel=False) as threads:
        return _adjoint_matmul_numba(U, A, threads)


def adjoint_matmul_numpy(U: np.ndarray, A: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`adjoint_matmul_numba`: ``U^H @ A`` by BLAS, without copying U."""
    if U.dtype.kind != "c":
        return U.T @ A
    return np.conj(U.T @ np.conj(A))


@numba.njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})
def _fused_update_numba(U, W, D, out):  # pragma: no cover - compiled
    """``out = U + (U W) D W^H`` row by row (C-contiguous U and out; ``out`` may be ``U``).

    ``fastmath`` allows only re-association and FMA contraction, so that the row dot products
    vectorise (as BLAS's do); NaN and Inf semantics are untouched.
    """
    n, r = W.shape
    Wt = np.ascontiguousarray(W.T)  # r x N: rows of W^T are contiguous
    Wh = np.conj(Wt)  # r x N: W^H
    nblocks = (n + _ROW_BLOCK - 1) // _ROW_BLOCK
    for blk in numba.prange(nblocks):
        p = np.empty(r, dtype=U.dtype)
        q = np.empty(r, dtype=U.dtype)
        for i in range(blk * _ROW_BLOCK, min(n, (blk + 1) * _ROW_BLOCK)):
            for col in range(r):
                acc = U.dtype.type(0)
                for j in range(n):
                    acc += U[i, j] * Wt[col, j]
                p[col] = acc
            for col in range(r):
                acc = U.dtype.type(0)
                for m in range(r):
                    acc += p[m] * D[m, col]
                q[col] = acc
            if out is not U:
                for j in range(n):
                    out[i, j] = U[i, j]
            for col in range(r):
                qc = q[col]
                for j in range(n):
                    out[i, j] += qc * Wh[col, j]


def fused_update_numba(U: np.ndarray, W: np.ndarray, D: np.ndarray, out: np.ndarray) -> None:
    """``out = U + (U W) D W^H`` with one read and one write of U (threads: ``_threads_for``)."""
    with _threads_for(U.nbytes, parallel=False):
        _fused_update_numba(U, W, D, out)


# -- small dense helpers for the batched kernel (complex128 cores, any r) --------------------
@numba.njit(cache=True, nogil=True, inline="always")
def _abs2(x):  # pragma: no cover - compiled
    return x.real * x.real + x.imag * x.imag


@numba.njit(cache=True, nogil=True)
def _one_sided_jacobi(G, V):  # pragma: no cover - compiled
    """Rotate the columns of G (and V alike) until they are mutually orthogonal (Hestenes).

    On return ``G_in @ V_in_total = G`` with V unitary; used for the SVD-based polar factor and,
    on a shifted positive semidefinite matrix, for Hermitian eigenvectors.
    """
    m = G.shape[1]
    rows = G.shape[0]
    for _sweep in range(30):
        rotated = False
        for p in range(m - 1):
            for q in range(p + 1, m):
                alpha = 0.0
                beta = 0.0
                gamma = 0j
                for i in range(rows):
                    alpha += _abs2(G[i, p])
                    beta += _abs2(G[i, q])
                    gamma += np.conj(G[i, p]) * G[i, q]
                g = abs(gamma)
                if g <= 1e-15 * np.sqrt(alpha * beta) or g == 0.0:
                    continue
                zeta = (beta - alpha) / (2.0 * g)
                t = (1.0 if zeta >= 0 else -1.0) / (abs(zeta) + np.sqrt(1.0 + zeta * zeta))
                if abs(t) > 1e-15:  # a sweep of rotations this small changes nothing: converged
                    rotated = True
                c = 1.0 / np.sqrt(1.0 + t * t)
                s = c * t
                phase = np.conj(gamma / g)  # e^{-i phi}
                for i in range(rows):
                    gp = G[i, p]
                    gq = G[i, q] * phase
                    G[i, p] = c * gp - s * gq
                    G[i, q] = s * gp + c * gq
                for i in range(m):
                    vp = V[i, p]
                    vq = V[i, q] * phase
                    V[i, p] = c * vp - s * vq
                    V[i, q] = s * vp + c * vq
        if not rotated:
            break


@numba.njit(cache=True, nogil=True, inline="always")
def _orthogonalize_row(M, j, basis, count, zero, coefficients):  # pragma: no cover - compiled
    """Gram-Schmidt twice: subtract from row ``M[j]`` its projections on the orthonormal rows
    ``M[basis[:count]]`` (in that order), accumulating in ``zero``'s type.

    Adds each projection coefficient into ``coefficients[basis[b]]`` unless ``coefficients`` is
    None.  Returns ``(||M[j]||^2 before, ||M[j]|| after)``.  Inlined, so that it compiles with
    the caller's ``fastmath`` flags.
    """
    n = M.shape[1]
    before = 0.0
    for i in range(n):
        before += _abs2(M[j, i])
    for _twice in range(2):
        for b in range(count):
            p = basis[b]
            proj = zero
            for i in range(n):
                proj += np.conj(M[p, i]) * M[j, i]
            if coefficients is not None:
                coefficients[p] += proj
            for i in range(n):
                M[j, i] -= proj * M[p, i]
    norm = 0.0
    for i in range(n):
        norm += _abs2(M[j, i])
    return before, np.sqrt(norm)


@numba.njit(cache=True, nogil=True)
def _orthonormalize_columns(X, order):  # pragma: no cover - compiled
    """Gram-Schmidt twice on the columns of X taken in ``order``; dependent columns are replaced
    by unit vectors completing the basis (so X becomes unitary when square)."""
    rows, m = X.shape
    Xt = X.T  # the columns of X as rows (a view)
    for idx in range(m):
        j = order[idx]
        for _attempt in range(rows + 1):
            before, norm = _orthogonalize_row(Xt, j, order, idx, 0j, None)
            if norm > 1e-8 * np.sqrt(before) and norm > 1e-300:
                for i in range(rows):
                    X[i, j] /= norm
                break
            # dependent: restart from the next unit vector
            for i in range(rows):
                X[i, j] = 0j
            X[_attempt % rows, j] = 1.0


@numba.njit(cache=True, nogil=True)
def _polar_minus_identity(T, D, G, V, s, order):  # pragma: no cover - compiled
    """D = polar(T) - I for a small complex T, via one-sided Jacobi (defined for singular T).

    ``G, V`` (m x m complex128), ``s`` (m float64) and ``order`` (m int64) are workspaces.
    """
    m = T.shape[0]
    for i in range(m):
        for j in range(m):
            G[i, j] = T[i, j]
            V[i, j] = 1.0 if i == j else 0.0
    _one_sided_jacobi(G, V)
    for j in range(m):
        acc = 0.0
        for i in range(m):
            acc += _abs2(G[i, j])
        s[j] = np.sqrt(acc)
        order[j] = j
    for a in range(1, m):  # insertion sort: decreasing singular values
        b = a
        while b > 0 and s[order[b]] > s[order[b - 1]]:
            order[b], order[b - 1] = order[b - 1], order[b]
            b -= 1
    _orthonormalize_columns(G, order)  # G -> X, the left singular vectors
    for i in range(m):
        for j in range(m):
            acc = 0j
            for c in range(m):
                acc += G[i, c] * np.conj(V[j, c])
            D[i, j] = acc - (1.0 if i == j else 0.0)


@numba.njit(cache=True, nogil=True)
def _expm_skew_minus_identity(K, D, G, V, e, order):  # pragma: no cover - compiled
    """D = expm(K) - I for a small skew-Hermitian K, from the eigenvectors of H = -iK.

    H + c I (c > ||H||_F) is positive definite, so the one-sided Jacobi rotations that
    orthogonalise its columns diagonalise it; the eigenvalues are Rayleigh quotients.
    ``G, V`` (m x m complex128), ``e`` (m complex128) and ``order`` (m int64) are workspaces.
    """
    m = K.shape[0]
    shift = 0.0
    for i in range(m):
        for j in range(m):
            shift += _abs2(K[i, j])
    shift = np.sqrt(shift) + 1.0
    for i in range(m):
        order[i] = i
        for j in range(m):
            G[i, j] = -1j * K[i, j] + (shift if i == j else 0.0)
            V[i, j] = 1.0 if i == j else 0.0
    _one_sided_jacobi(G, V)
    _orthonormalize_columns(V, order)
    for j in range(m):
        theta = 0j
        for i in range(m):
            hv = 0j
            for c in range(m):
                hv += -1j * K[i, c] * V[c, j]
            theta += np.conj(V[i, j]) * hv
        th = theta.real
        e[j] = complex(-2.0 * np.sin(0.5 * th) ** 2, np.sin(th))
    for i in range(m):
        for j in range(m):
            acc = 0j
            for c in range(m):
                acc += V[i, c] * e[c] * np.conj(V[j, c])
            D[i, j] = acc


# Imaginary parts of a real transport core above this are not rounding (also used by _lowrank).
REAL_CORE_IMAG_TOL = 1e-13


@numba.njit(cache=True, nogil=True)
def _max_abs_imag(D):  # pragma: no cover - compiled
    largest = 0.0
    for i in range(D.shape[0]):
        for j in range(D.shape[1]):
            largest = max(largest, abs(D[i, j].imag))
    return largest


def _is_real(like):  # pragma: no cover - only used inside compiled code
    """True for a real scalar ``like`` (a compile-time constant in the kernel)."""
    return not isinstance(like, complex)


@overload(_is_real)
def _is_real_overload(like):  # pragma: no cover - typing-time
    real = not isinstance(like, numba.types.Complex)
    return lambda like: real


def _as_dtype_of(value, like):  # pragma: no cover - only used inside compiled code
    """``value`` converted to the type of ``like`` (the real part for a real ``like``)."""
    return value if isinstance(like, complex) else value.real


@overload(_as_dtype_of)
def _as_dtype_of_overload(value, like):  # pragma: no cover - typing-time
    if isinstance(like, numba.types.Complex):
        return lambda value, like: value
    return lambda value, like: value.real


@numba.njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})
def _batched_update_numba(U, A, B, transport, out, nthreads):  # pragma: no cover - compiled
    """The whole projUNN step for each matrix of a stack, in one parallel loop.

    ``U, out: (F, n, n)``, ``A, B: (F, n, k)`` in U's dtype (``out`` may be ``U``);
    ``transport`` selects projUNN-T, else projUNN-D.  Per matrix: ``A_hat = U^H A``; an
    orthonormal basis W of ``[B, A_hat]`` by Gram-Schmidt twice (dependent columns become zero,
    so the r x r core acts as the identity there); the core (``polar(I + a b^H) - I`` or
    ``expm(K) - I``) in complex128 by Jacobi rotations; ``out = U + (U W) D W^H``.  Products
    with U run in U's dtype, like the BLAS path.
    """
    F, n, _ = U.shape
    k = A.shape[2]
    r = 2 * k
    zero = U.dtype.type(0)
    nchunks = min(F, 4 * nthreads)
    for c in numba.prange(nchunks):
        Wt = np.empty((r, n), dtype=U.dtype)  # rows: basis vectors (W^T)
        R = np.empty((r, r), dtype=np.complex128)
        core = np.empty((r, r), dtype=np.complex128)
        D = np.empty((r, r), dtype=np.complex128)
        Dc = np.empty((r, r), dtype=U.dtype)
        UW = np.empty(r, dtype=U.dtype)
        P = np.empty(r, dtype=U.dtype)
        kept = np.empty(r, dtype=np.int64)
        G = np.empty((r, r), dtype=np.complex128)
        V = np.empty((r, r), dtype=np.complex128)
        sv = np.empty(r, dtype=np.float64)
        ev = np.empty(r, dtype=np.complex128)
        order = np.empty(r, dtype=np.int64)
        for f in range(c * F // nchunks, (c + 1) * F // nchunks):
            u = U[f]
            # rows of Wt: [B, U^H A]^T
            for col in range(k):
                for i in range(n):
                    Wt[col, i] = B[f, i, col]
                    Wt[k + col, i] = zero
            for i in range(n):
                for col in range(k):
                    a = A[f, i, col]
                    for j in range(n):
                        Wt[k + col, j] += np.conj(u[i, j]) * a
            # Gram-Schmidt twice, R = W^H [B, A_hat]; dependent columns dropped (zero rows of Wt)
            for i in range(r):
                for j in range(r):
                    R[i, j] = 0j
            count = 0
            for j in range(r):
                before, norm = _orthogonalize_row(Wt, j, kept, count, zero, R[:, j])
                if norm > 1e-5 * np.sqrt(before) and norm > 0.0:
                    kept[count] = j
                    count += 1
                    R[j, j] = norm
                    inv = 1.0 / norm
                    for i in range(n):
                        Wt[j, i] *= inv
                else:
                    for i in range(n):
                        Wt[j, i] = zero
            # a = R[:, k:], b = R[:, :k];  core = a b^H
            for i in range(r):
                for j in range(r):
                    ab = 0j
                    for col in range(k):
                        ab += R[i, k + col] * np.conj(R[j, col])
                    core[i, j] = ab
            if transport:
                for i in range(r):
                    for j in range(r):
                        R[i, j] = 0.5 * (core[i, j] - np.conj(core[j, i]))  # K
                _expm_skew_minus_identity(R, D, G, V, ev, order)
                if _is_real(zero) and _max_abs_imag(D) > REAL_CORE_IMAG_TOL:
                    # A real K has a real expm(K); the imaginary rounding of a large rotation
                    # (eps * angle) means its real part is off the rotation group by as much:
                    # replace I + Re D by its polar factor, the nearest rotation (as NumPy does).
                    for i in range(r):
                        for j in range(r):
                            core[i, j] = D[i, j].real + (1.0 if i == j else 0.0)
                    _polar_minus_identity(core, D, G, V, sv, order)
            else:
                for i in range(r):
                    core[i, i] += 1.0
                _polar_minus_identity(core, D, G, V, sv, order)
            for i in range(r):
                for j in range(r):
                    Dc[i, j] = _as_dtype_of(D[i, j], zero)
            # row by row: p = u[i] W, P = p D, out[i] = u[i] + P W^H
            for i in range(n):
                for j in range(r):
                    acc = zero
                    for m in range(n):
                        acc += u[i, m] * Wt[j, m]
                    UW[j] = acc
                for j in range(r):
                    acc = zero
                    for m in range(r):
                        acc += UW[m] * Dc[m, j]
                    P[j] = acc
                for j in range(n):
                    out[f, i, j] = u[i, j]
                for m in range(r):
                    pm = P[m]
                    for j in range(n):
                        out[f, i, j] += pm * np.conj(Wt[m, j])


def batched_update_numba(U: np.ndarray, A: np.ndarray, B: np.ndarray, transport: bool, out: np.ndarray) -> None:
    """The whole projUNN step per matrix of a C-contiguous stack (see ``_batched_update_numba``)."""
    with _threads_for(U.nbytes, parallel=U.shape[0] >= 16) as threads:
        _batched_update_numba(U, A, B, transport, out, threads)
