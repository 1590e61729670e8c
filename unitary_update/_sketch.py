r"""Rank-k sketches of a gradient: ``G ~= A B^H``.

``G`` is either a dense array ``(..., N, M)`` or a factored pair ``(X, Y)`` meaning
``G = X Y^H`` with ``X: (..., N, m)`` and ``Y: (..., M, m)`` -- the form in which gradients of
linear layers arrive (a sum of outer products over time steps and batch).  Every method touches
G only through products with thin blocks (:class:`_Dense` / :class:`_Factored`), so a dense G is
read but never copied, and a factored G costs O((N + M) m k) without forming the N x M matrix
or copying X or Y: extra memory O((N + M + m) k) for every method but ``exact``, whose QRs of X
and Y take O((N + M) m).

Methods
-------
randomized
    Halko-Martinsson-Tropp range finder: ``Y = G Omega`` with a Gaussian ``Omega`` of
    ``k + oversampling`` columns, ``power_iterations`` rounds of ``G G^H`` re-orthonormalised
    by QR in between, then the SVD of the small ``Q^H G``, truncated to rank k.
lsi
    The paper's random-projection ("LSI") approximation: the row space of ``R^H G`` for a
    Gaussian ``R`` with k columns; ``G ~= (G V) V^H`` with V an orthonormal basis of it.  (The
    paper's code orthonormalises through the SVD of ``R^H G G^H R`` and divides by the square
    roots of its singular values plus an absolute 1e-6, which also shrinks small steps; a QR
    gives the same subspace without squaring the condition number and without that damping.)
column
    Norm-weighted column sampling: k distinct columns drawn with probability proportional to
    their squared norms (Gumbel top-k, as the reference the paper cites), ``G ~= Q Q^H G`` with
    Q an orthonormal basis of the sampled columns.  (The paper's code samples in proportion to
    the norms; see docs/theory.rst.)
exact
    Truncated SVD, the optimal rank-k approximation (dense: O(N M min(N, M)); factored: QR of
    X and Y and the SVD of the m x m core -- the one method whose extra memory on a factored G
    is O((N + M) m), not O((N + M) k)).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ._config import get_options
from ._lowrank import _SAFE_EXPONENT, _exponents, _moderate, _scaled
from ._validation import (
    SingularUpdateError,
    check_choice,
    check_finite,
    check_float_dtype,
    check_int,
    check_sketch_rank,
    max_abs,
    quiet_when_unchecked,
)
from ._validation import svd as guarded_svd
from ._xp import array_namespace, compute_context, from_compute, hconj, is_cupy, is_jax, to_compute
from .random import normalize_rng, standard_normal, uniform

__all__ = ["SKETCH_METHODS", "sketch"]

SKETCH_METHODS = ("randomized", "lsi", "column", "exact")
_METHOD_OPTIONS: dict[str, dict[str, int]] = {
    "randomized": {"oversampling": 8, "power_iterations": 1},
    "lsi": {},
    "column": {},
    "exact": {},
}


def _orth(xp: ModuleType, x: Any) -> Any:
    return xp.linalg.qr(x, mode="reduced")[0]


class _Dense:
    """G given as an array; products never copy it (``G^H Q = conj(G^T conj(Q))``)."""

    def __init__(self, xp: ModuleType, G: Any) -> None:
        self.xp, self.G = xp, G
        self.shape, self.dtype, self.batch = G.shape[-2:], G.dtype, G.shape[:-2]

    def matmul(self, x: Any) -> Any:  # G @ x
        return self.G @ x

    def rmatmul(self, q: Any) -> Any:  # G^H @ q
        xp = self.xp
        if self.dtype.kind != "c":
            return xp.swapaxes(self.G, -1, -2) @ q
        return xp.conj(xp.swapaxes(self.G, -1, -2) @ xp.conj(q))

    def column_norms2(self, rank: int) -> Any:
        """Squared column norms, accumulated in float64 (no copy of G, no overflow)."""
        xp, G = self.xp, self.G
        parts = (G.real, G.imag) if self.dtype.kind == "c" else (G,)
        return sum(xp.einsum("...ij,...ij->...j", p, p, dtype=xp.float64) for p in parts)

    def columns(self, idx: Any) -> Any:  # G[..., :, idx] with idx (..., k)
        xp = self.xp
        idx = xp.broadcast_to(idx[..., None, :], (*self.batch, self.shape[0], idx.shape[-1]))
        return xp.take_along_axis(self.G, idx, axis=-1)

    def svd(self) -> tuple[Any, Any, Any]:
        L, s, Rh = guarded_svd(self.xp, self.G, full_matrices=False)  # Inf: NaN, not a LAPACK hang
        return L, s, hconj(Rh)


class _Factored:
    """G = (2^sx X)(2^sy Y)^H, never formed; X and Y are copied only by :meth:`svd` (``exact``).

    ``sx``, ``sy``: integer exponents over X's and Y's stacks (None: 0), left out of X and Y by
    :func:`_rescaled` so that scaling them needs no copy; every product scales its thin operand
    instead (``(2^s X) t = X (2^s t)``, the same numbers as with a scaled copy of X).  Every
    product goes through :func:`_ah_matmul` (``X^H q`` as ``conj(X^T conj(q))``: the conjugate is
    taken of the thin operand, not of X or Y, whose ``np.conj`` would be a copy even for real
    arrays), so the extra memory of a product is that of its thin operands and result.
    """

    def __init__(self, xp: ModuleType, X: Any, Y: Any, sx: Any = None, sy: Any = None) -> None:
        self.xp, self.X, self.Y, self.sx, self.sy = xp, X, Y, sx, sy
        self.batch = np.broadcast_shapes(X.shape[:-2], Y.shape[:-2])
        self.shape, self.dtype = (X.shape[-2], Y.shape[-2]), X.dtype

    def _times(self, t: Any, *exponents: Any) -> Any:
        """``2^(sum of exponents) t`` (exponents over the stack; t itself when all are None)."""
        present = [e for e in exponents if e is not None]
        return _ldexp(self.xp, t, sum(present[1:], present[0])) if present else t

    def matmul(self, x: Any) -> Any:  # G @ x = X 2^sx (Y^H (2^sy x))
        return self.X @ self._times(_ah_matmul(self.xp, self.Y, self._times(x, self.sy)), self.sx)

    def rmatmul(self, q: Any) -> Any:  # G^H @ q = Y 2^sy (X^H (2^sx q))
        return self.Y @ self._times(_ah_matmul(self.xp, self.X, self._times(q, self.sx)), self.sy)

    def column_norms2(self, rank: int) -> Any:
        """Squared column norms ``||X conj(y_j)||^2 = Re sum_b (Y C)_jb conj(Y_jb)``, ``C = X^H X``.

        C is formed a block of ``w`` columns at a time (``C_B = X^H X_B``, m x w, then
        ``Y C_B``, M x w) and the products are reduced into a float64 accumulator: extra memory
        O((M + m) w) with ``w = max(k, 32)`` rather than the m x m Gram matrix, the QR of X
        (a copy of X) or G itself; O(N m^2 + M m^2) work.  The products are in G's dtype (the
        factors are within ``2^+-20`` in single, ``2^+-100`` in double precision, see
        :func:`_rescaled`, so nothing overflows), the sum in float64.
        """
        xp, X, Y, sx, sy = self.xp, self.X, self.Y, self.sx, self.sy
        m = X.shape[-1]
        Y = xp.broadcast_to(Y, (*self.batch, *Y.shape[-2:]))
        total = xp.zeros((*self.batch, Y.shape[-2]), dtype=np.float64)
        width = max(1, min(m, max(rank, _NORM_BLOCK)))  # m = 0 (an empty factor pair): no blocks, zero norms
        for start in range(0, m, width):
            block = slice(start, min(start + width, m))
            C = _ah_matmul(xp, X, self._times(X[..., :, block], sx, sx))  # (2^sx X)^H (2^sx X_B)
            P = Y @ self._times(C, sy)  # (2^sy Y) C_B
            Yb = self._times(Y[..., :, block], sy)
            pairs = ((P.real, Yb.real), (P.imag, Yb.imag)) if self.dtype.kind == "c" else ((P, Yb),)
            for p, y in pairs:
                total += xp.einsum("...jb,...jb->...j", p, y, dtype=np.float64)
        return total

    def columns(self, idx: Any) -> Any:
        xp = self.xp
        Y = xp.broadcast_to(self.Y, (*self.batch, *self.Y.shape[-2:]))
        idx = xp.broadcast_to(idx[..., :, None], (*self.batch, idx.shape[-1], Y.shape[-1]))
        picked = self._times(xp.take_along_axis(Y, idx, axis=-2), self.sx, self.sy)  # k x m rows of Y
        return self.X @ hconj(picked)

    def svd(self) -> tuple[Any, Any, Any]:
        """The SVD of G from the thin QRs of X and Y and the SVD of the m x m core.

        Unlike the other products this takes O((N + M) m) extra memory, not O((N + M) k): the
        QR factors of X and Y (which NumPy computes in double precision for single-precision
        input), and scaled copies of X and Y first when ``sx``, ``sy`` are set.
        """
        xp = self.xp
        Qx, Rx = xp.linalg.qr(self._times(self.X, self.sx), mode="reduced")
        Qy, Ry = xp.linalg.qr(self._times(self.Y, self.sy), mode="reduced")
        Lc, s, Rch = guarded_svd(xp, Rx @ hconj(Ry), full_matrices=False)
        return Qx @ Lc, s, Qy @ hconj(Rch)


_NORM_BLOCK = 32  # columns of X^H X formed at a time by _Factored.column_norms2


def _ldexp(xp: ModuleType, t: Any, e: Any) -> Any:
    """``t 2^e`` in t's dtype, e an integer array over the stack: exact, one rounding if subnormal.

    The same numbers as ``_lowrank._scaled`` (exact in double, then cast), without its
    double-precision temporaries.
    """
    e = xp.asarray(e).astype(np.int32)[..., None, None]  # int32: an ldexp loop on every platform
    if t.dtype.kind != "c":
        return xp.ldexp(t, e)
    out = xp.empty(np.broadcast_shapes(t.shape, e.shape), dtype=t.dtype)
    xp.ldexp(t.real, e, out=out.real)
    xp.ldexp(t.imag, e, out=out.imag)
    return out


def _ah_matmul(xp: ModuleType, a: Any, b: Any) -> Any:
    """``a^H @ b`` for a large ``a`` and a thin ``b``, without a copy of ``a``.

    Real: ``a^T b`` (a transposed view).  Complex: ``conj(a^T conj(b))``, conjugating only the
    thin ``b`` and the result.
    """
    at = xp.swapaxes(a, -1, -2)
    if a.dtype.kind != "c":
        return at @ b
    out = at @ xp.conj(b)
    return xp.conj(out, out=out)


def _split(xp: ModuleType, L: Any, s: Any, R: Any, rank: int) -> tuple[Any, Any]:
    """Balanced factors ``A = L_k sqrt(s_k)``, ``B = R_k sqrt(s_k)``, zero-padded to ``rank``."""
    root = xp.sqrt(s[..., :rank]).astype(L.dtype)[..., None, :]
    A, B = L[..., :, :rank] * root, R[..., :, :rank] * root
    missing = rank - A.shape[-1]
    if missing > 0:
        A = xp.concatenate([A, xp.zeros((*A.shape[:-1], missing), dtype=A.dtype)], axis=-1)
        B = xp.concatenate([B, xp.zeros((*B.shape[:-1], missing), dtype=B.dtype)], axis=-1)
    return A, B


def _randomized(
    xp: ModuleType, op: Any, rank: int, rng: np.random.Generator, oversampling: int, power_iterations: int
) -> tuple[Any, Any]:
    n, m = op.shape
    width = min(rank + oversampling, n, m)
    omega = standard_normal(xp, rng, (*op.batch, m, width), op.dtype)
    Q = _orth(xp, op.matmul(omega))
    for _ in range(power_iterations):
        Q = _orth(xp, op.matmul(_orth(xp, op.rmatmul(Q))))
    Z = op.rmatmul(Q)  # G^H Q, (..., M, width); G ~= Q Z^H
    Lz, s, Rzh = guarded_svd(xp, Z, full_matrices=False)  # Z = Lz s Rz^H  =>  G ~= (Q Rz) s Lz^H
    return _split(xp, Q @ hconj(Rzh), s, Lz, rank)


def _lsi(xp: ModuleType, op: Any, rank: int, rng: np.random.Generator) -> tuple[Any, Any]:
    n, _ = op.shape
    R = standard_normal(xp, rng, (*op.batch, n, rank), op.dtype)
    V = _orth(xp, op.rmatmul(R))  # orthonormal basis of the row space of R^H G
    return op.matmul(V), V


def _column(xp: ModuleType, op: Any, rank: int, rng: np.random.Generator) -> tuple[Any, Any]:
    norms2 = op.column_norms2(rank)
    if xp is np and bool(np.isinf(norms2).any()):
        raise _OutOfRange  # squared norms overflow float64: G is sketched again, rescaled
    tiny = np.finfo(np.float64).tiny
    gumbel = -xp.log(-xp.log(uniform(xp, rng, norms2.shape, np.float64)))
    keys = xp.log(xp.maximum(norms2, tiny)) + gumbel
    idx = _top_k(xp, keys, rank, by_argmax=is_cupy(xp))
    Q = _orth(xp, op.columns(idx))
    return Q, op.rmatmul(Q)


def _top_k(xp: ModuleType, keys: Any, k: int, *, by_argmax: bool) -> Any:
    """Indices of the k largest keys along the last axis, largest first.

    NumPy sorts.  On CuPy a sort goes through Thrust, which may block the host until the sort
    has finished; k rounds of ``argmax`` (a reduction, O(k M), k is small) only enqueue
    kernels.  Both give the same indices (ties resolve to the first index in both).
    """
    if not by_argmax:
        return xp.argsort(-keys, axis=-1)[..., :k]
    flat = keys.reshape(-1, keys.shape[-1]).copy()
    rows = xp.arange(flat.shape[0])
    picked = []
    for _ in range(k):
        i = xp.argmax(flat, axis=-1)
        picked.append(i)
        flat[rows, i] = -xp.inf
    return xp.stack(picked, axis=-1).reshape(*keys.shape[:-1], k)


def _exact(xp: ModuleType, op: Any, rank: int) -> tuple[Any, Any]:
    L, s, R = op.svd()
    return _split(xp, L, s, R, rank)


def _as_operator(G: Any) -> tuple[Any, str]:
    """Validate G (dense or factored) and wrap it; return the operator and the caller's library."""
    if isinstance(G, tuple):
        if len(G) != 2:
            raise ValueError(f"a factored G must be a pair (X, Y) meaning G = X @ Y^H; got a tuple of {len(G)}")
        (X, library), (Y, _) = to_compute(G[0], "G[0] (X)"), to_compute(G[1], "G[1] (Y)")
        for x, name in ((X, "X"), (Y, "Y")):
            check_float_dtype(x, name)
            if x.ndim < 2:
                raise ValueError(f"{name} must have shape (..., N, m); got {tuple(x.shape)}")
        if X.shape[-1] != Y.shape[-1]:
            raise ValueError(
                f"X and Y must have the same number of columns m; got X {tuple(X.shape)}, Y {tuple(Y.shape)}"
            )
        try:
            np.broadcast_shapes(X.shape[:-2], Y.shape[:-2])
        except ValueError:
            raise ValueError(
                f"batch dimensions of X {tuple(X.shape)} and Y {tuple(Y.shape)} do not broadcast"
            ) from None
        check_finite(X, "X")
        check_finite(Y, "Y")
        xp = array_namespace(X, Y)
        dtype = np.result_type(X.dtype, Y.dtype)
        return _Factored(xp, xp.asarray(X, dtype=dtype), xp.asarray(Y, dtype=dtype)), library
    G, library = to_compute(G, "G")
    check_float_dtype(G, "G")
    if G.ndim < 2:
        raise ValueError(f"G must have shape (..., N, M) or be a pair (X, Y); got shape {tuple(G.shape)}")
    check_finite(G, "G")
    return _Dense(array_namespace(G), G), library


@quiet_when_unchecked
def sketch(
    G: Any, rank: int, *, method: str = "randomized", rng: np.random.Generator | int | None = None, **options: int
) -> tuple[Any, Any]:
    r"""Rank-``rank`` factors ``A, B`` with ``G ~= A @ B^H``.

    Parameters
    ----------
    G : array, shape (..., N, M), or tuple (X, Y)
        The matrix to approximate, dense or factored as ``G = X @ Y^H`` with
        ``X: (..., N, m)``, ``Y: (..., M, m)`` (never formed).
    rank : int
        Number of columns k of A and B, ``1 <= k <= min(N, M)``.  A factored G of rank
        ``m < k`` gives zero columns beyond m (exact) or a basis of its range (others).
    method : {"randomized", "lsi", "column", "exact"}
        The approximation (see the module documentation).
    rng : numpy.random.Generator, int or None
        Seed or generator for the random methods; the same seed gives the same factors.  With a
        JAX G it may also be a JAX PRNG key (the way to pass randomness under ``jax.jit``).
    **options : int
        ``randomized`` only: ``oversampling`` (default 8) and ``power_iterations`` (default 1).

    Returns
    -------
    A : array, shape (..., N, rank)
        The left factor, in G's dtype and array library.
    B : array, shape (..., M, rank)
        The right factor, in G's dtype and array library.

    Raises
    ------
    TypeError
        If G is not an array or pair of arrays, has a non-floating dtype, ``rank`` or an option
        is not an integer, or an option is unknown for the method.
    ValueError
        For bad shapes, ``rank`` out of range, a negative option, an unknown method (the message
        lists the valid ones), a negative integer seed ``rng``, NaN/Inf in G
        (:class:`~unitary_update.NonFiniteError`), or a factored G whose factors would overflow
        G's dtype.
    SingularUpdateError
        If LAPACK fails to converge (not expected for finite input); ``rng`` is left as it was.

    Notes
    -----
    Every finite G is handled at any scale: a G whose entries are far from 1 (beyond
    ``2^+-20`` in single, ``2^+-100`` in double precision) is scaled by a power of two first
    (exact; a dense G is then copied once) and the factors are scaled back, balanced (on CuPy
    only a factored G is rescaled: deciding for a dense G would read a value back to the host).
    An empty
    stack (a batch dimension of 0) gives empty factors.  When the call raises, a Generator
    ``rng`` is left in the state it had.

    Cost with a dense N x N G: randomized O(N^2 (k + p)(1 + 2q)), lsi and column O(N^2 k),
    exact O(N^3).  Factored G: O(N m (k + p)) for randomized and lsi, O(N m^2) for column (its
    column norms come from ``X^H X``, formed 32 columns at a time) and exact.  Extra memory
    O(N (k + p)); for a factored G O((N + m)(k + p)) (column: O((N + m) max(k, 32))), X and Y
    are never copied (nor scaled copies made, unless a factor's largest entry is beyond
    ``2^+-64`` in single or ``2^+-768`` in double precision, or G is on a GPU), except by
    ``exact``, which needs the thin QRs of X and Y: O(N m) extra memory.

    Examples
    --------
    >>> import numpy as np, unitary_update as uu
    >>> rng = np.random.default_rng(0)
    >>> G = rng.standard_normal((50, 2)) @ rng.standard_normal((2, 50))   # exactly rank 2
    >>> A, B = uu.sketch(G, 2, method="randomized", rng=1)
    >>> A.shape, B.shape
    ((50, 2), (50, 2))
    >>> bool(np.allclose(A @ B.T, G))
    True
    >>> X, Y = rng.standard_normal((50, 7)), rng.standard_normal((50, 7))
    >>> A, B = uu.sketch((X, Y), 3, method="exact")    # never forms X @ Y.T
    """
    if is_jax(G):  # JAX arrays and tracers stay in JAX; rng may also be a JAX PRNG key
        from .jax import _core as _jax_core

        return _jax_core.public_sketch(G, rank, method, rng, options)
    method = check_choice(method, SKETCH_METHODS, "sketch method")
    valid = _METHOD_OPTIONS[method]
    for key, value in options.items():
        if key not in valid:
            listed = ", ".join(valid) or "none"
            raise TypeError(f"unknown option {key!r} for sketch method {method!r}; valid options: {listed}")
        check_int(value, f"option {key}", low=0, expected="a non-negative integer")
    with compute_context(G[0] if isinstance(G, tuple) and G else G):
        op, library = _as_operator(G)
        rank = check_sketch_rank(rank, op.shape)
        rng = normalize_rng(rng)
        xp = op.xp
        if any(d == 0 for d in op.batch):  # an empty stack: empty factors, no draw from rng
            A = xp.zeros((*op.batch, op.shape[0], rank), dtype=op.dtype)
            B = xp.zeros((*op.batch, op.shape[1], rank), dtype=op.dtype)
            return from_compute(A, library), from_compute(B, library)
        op, e = _rescaled(op)
        saved = rng.bit_generator.state

        def run(op: Any) -> tuple[Any, Any]:
            if method == "randomized":
                opts = {**valid, **options}
                return _randomized(xp, op, rank, rng, int(opts["oversampling"]), int(opts["power_iterations"]))
            if method == "lsi":
                return _lsi(xp, op, rank, rng)
            if method == "column":
                return _column(xp, op, rank, rng)
            return _exact(xp, op, rank)

        try:
            A = B = None
            if e is None and isinstance(op, _Dense) and xp is np:
                # a dense NumPy G is tried as it is (no extra pass over G); thin factors out of the
                # safe range (or non-finite, or LAPACK failing) mean G was too large or too small:
                # then G is rescaled by powers of two (one copy) and sketched again
                try:
                    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
                        A, B = run(op)
                except (np.linalg.LinAlgError, _OutOfRange):
                    A = B = None
                if A is None or not _factors_in_range(A, B):
                    rng.bit_generator.state = saved
                    e = _exponents(xp, op.G)
                    op = _Dense(xp, _scaled(xp, op.G, -e, op.dtype))
                    A = B = None
            if A is None:
                A, B = run(op)
            if e is not None:
                A, B = _unscaled(xp, A, B, e)
        except np.linalg.LinAlgError as err:
            if not get_options().check_finite:  # NaN in, NaN out (the check_finite=False contract)
                A = xp.full((*op.batch, op.shape[0], rank), xp.nan, dtype=op.dtype)
                B = xp.full((*op.batch, op.shape[1], rank), xp.nan, dtype=op.dtype)
                return from_compute(A, library), from_compute(B, library)
            rng.bit_generator.state = saved  # a failed call leaves the generator as it was
            raise SingularUpdateError(f"the {method} sketch of G failed: LAPACK did not converge ({err})") from None
        except BaseException:
            rng.bit_generator.state = saved
            raise
        return from_compute(A, library), from_compute(B, library)


def _limit(dtype: Any) -> int:
    dt = np.dtype(dtype)
    return _SAFE_EXPONENT[dt.itemsize if dt.kind == "f" else dt.itemsize // 2]


class FactorsOverflowError(ValueError):
    """The rank-k factors of G overflow G's dtype (``||G||`` above the square of its largest value)."""


class _OutOfRange(Exception):
    """Raised inside a first, unscaled try when G turns out too large for its dtype's arithmetic."""


def _factors_in_range(A: np.ndarray, B: np.ndarray) -> bool:
    """Whether a dense G's factors show it was safely inside its dtype's range (checked on thin arrays).

    ``max|A_i| max|B_i|`` estimates G's scale per matrix; it must be finite and at least 40 binary
    orders of magnitude from overflow and from the subnormals (float32: 2^-85 .. 2^88), or zero.
    """
    if A.size == 0 or B.size == 0:
        return True
    finfo = np.finfo(A.dtype)
    mA, mB = max_abs(np, A, axis=(-2, -1)), max_abs(np, B, axis=(-2, -1))
    if not (np.isfinite(mA).all() and np.isfinite(mB).all()):
        return False
    e = _exponents(np, A) + _exponents(np, B)
    inside = (e >= finfo.minexp + 40) & (e <= finfo.maxexp - 40)
    return bool(np.all(inside | (mA == 0) | (mB == 0)))


def _rescaled(op: Any) -> tuple[Any, Any]:
    """``op`` scaled by a power of two per matrix when its entries are out of the safe range.

    Returns ``(op', e)`` with ``G = 2^e G'`` (``e`` None: unchanged, no copy).  A dense G is
    copied only in that case.  A factored G is not copied: on NumPy its X and Y keep their own
    exponents, applied to the thin operands of each product (:class:`_Factored`), unless a
    factor's largest entry is beyond ``2^+-64`` in single or ``2^+-768`` in double precision
    (:func:`_lazy_limit`) or the arrays are on a device (deciding would read a value back to the
    host); then X and Y are copied, scaled.
    """
    xp = op.xp
    limit = _limit(op.dtype)
    if isinstance(op, _Dense):
        return op, None  # decided after a first try (NumPy) or not at all (a device: no host read)
    if xp is np and all(_moderate(x, limit) and _not_tiny(x, limit) for x in (op.X, op.Y)):
        return op, None
    eX, eY = _exponents(xp, op.X), _exponents(xp, op.Y)
    if xp is np and all(e.size == 0 or int(np.abs(e).max()) <= _lazy_limit(op.dtype) for e in (eX, eY)):
        return _Factored(xp, op.X, op.Y, -eX, -eY), eX + eY  # no copies: products scale thin operands
    return _Factored(xp, _scaled(xp, op.X, -eX, op.dtype), _scaled(xp, op.Y, -eY, op.dtype)), eX + eY


_LAZY_LIMIT = {4: 64, 8: 768}


def _lazy_limit(dtype: Any) -> int:
    """Largest ``|e|`` for which a factored G's scaling ``2^-e`` is left to its thin products.

    The products then scale thin arrays (their significant entries between about ``2^-40`` and
    ``2^20``) by up to ``2^(2|e|)``: within this limit those stay normal numbers, so each product
    gives the same numbers as with scaled copies of X and Y.  Beyond it X and Y are copied, scaled.
    """
    dt = np.dtype(dtype)
    return _LAZY_LIMIT[dt.itemsize if dt.kind == "f" else dt.itemsize // 2]


def _not_tiny(x: np.ndarray, limit: int) -> bool:
    """Whether no matrix of a thin stack is tiny (its largest entry below ``2^-limit``) unless zero."""
    if x.size == 0:
        return True
    m = max_abs(np, x, axis=(-2, -1))
    return bool(np.all((m >= 2.0**-limit) | (m == 0)))


def _unscaled(xp: ModuleType, A: Any, B: Any, e: Any) -> tuple[Any, Any]:
    """``(2^ceil(e/2) A, 2^floor(e/2) B)``: the factors of ``2^e A B^H``, balanced; error if they overflow."""
    half = -((-e) // 2)
    A, B = _scaled(xp, A, half, A.dtype), _scaled(xp, B, e - half, B.dtype)
    if not get_options().check_finite:
        return A, B  # no host read on a device hot path; NaN in, NaN out
    with np.errstate(invalid="ignore"):
        if not (bool(xp.isfinite(A).all()) and bool(xp.isfinite(B).all())):
            raise FactorsOverflowError(
                f"G is too large for {np.dtype(A.dtype).name}: its rank-k factors (each of about sqrt(||G||) in "
                "norm) overflow; scale G down"
            )
    return A, B
