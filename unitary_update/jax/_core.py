r"""The JAX-native core: projUNN-D, projUNN-T, the sketches and one step, written in ``jax.numpy``.

The same mathematics as the NumPy/CuPy path (:mod:`unitary_update._lowrank` and
:mod:`unitary_update._sketch`, whose module docstrings define the symbols): the orthonormal basis
``W`` of ``span[B, U^H A]`` by a thin Householder QR, the r x r core ``D`` (``polar(I + a b^H) - I``
from its SVD for projUNN-D; ``expm(K) - I`` from the Hermitian eigenproblem of ``-iK`` for
projUNN-T, replaced by the nearest rotation for real inputs whose core picked up an imaginary
part), and ``U + (U W) D W^H``.  What differs is what JAX requires:

* functions return new arrays (no ``out=``; JAX arrays are immutable);
* random test matrices come from a JAX PRNG key (or, for the public NumPy-style API, from a
  :class:`numpy.random.Generator`, which reproduces the NumPy path's draws exactly);
* no Python control flow depends on array values, so everything traces under :func:`jax.jit`,
  :func:`jax.vmap` and :func:`jax.grad`; the data-dependent choice of the real transport core
  is a ``jnp.where`` between two r x r results;
* the r x r cores are solved in double precision when ``jax_enable_x64`` is on, in the input's
  precision otherwise (JAX has no float64 then).

Validation (shapes, dtypes, ranks, option names) is static and runs while tracing; finiteness
(:class:`unitary_update.NonFiniteError`) is checked only for concrete arrays, since a traced
value cannot raise -- under ``jit`` NaN/Inf propagate into the result.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import random as _random
from .._config import get_options
from .._kernels import REAL_CORE_IMAG_TOL
from .._lowrank import HUGE_STEP_EXPONENT
from .._validation import (
    NonFiniteError,
    check_choice,
    check_factor_pair,
    check_float_dtype,
    check_int,
    check_sketch_rank,
    check_square,
)

__all__ = [
    "RETRACT_METHODS",
    "SKETCH_METHODS",
    "UPDATES",
    "is_key",
    "project",
    "public_sketch",
    "public_step",
    "public_update",
    "refuse_out",
    "retract",
    "sketch",
    "step",
    "transport",
]

UPDATES = ("project", "transport")
SKETCH_METHODS = ("randomized", "lsi", "column", "exact")
RETRACT_METHODS = ("polar", "newton_schulz")
_METHOD_OPTIONS: dict[str, dict[str, int]] = {
    "randomized": {"oversampling": 8, "power_iterations": 1},
    "lsi": {},
    "column": {},
    "exact": {},
}


# ---- helpers -------------------------------------------------------------------------------------
def _hconj(x: Any) -> Any:
    """Conjugate transpose of the last two axes."""
    return jnp.conj(jnp.swapaxes(x, -1, -2))


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def is_key(x: Any) -> bool:
    """True for a JAX PRNG key: a typed key array (``jax.random.key``) or a raw ``uint32[2]`` key."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not isinstance(x, (jax.Array, jax.core.Tracer)):
        return False
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return bool(dtype == np.uint32 and x.shape == (2,))


def _as_jax(x: Any, name: str) -> Any:
    """``x`` as a JAX array (NumPy arrays are copied to JAX's default device); not arrays: TypeError."""
    if isinstance(x, (jax.Array, jax.core.Tracer)):
        return x
    if isinstance(x, np.ndarray):
        check_float_dtype(x, name)
        return jnp.asarray(x)
    raise TypeError(f"{name} must be an array (a jax.Array or numpy.ndarray); got {type(x).__name__}")


def _check_finite(x: Any, name: str) -> None:
    """NonFiniteError for a concrete array with NaN/Inf (when the option is on); tracers pass."""
    if not get_options().check_finite or _is_tracer(x):
        return
    finite = _all_finite(x)
    if _is_tracer(finite):  # a concrete array inside another trace (jit, cond, scan closing over it)
        return
    if not bool(finite):
        raise NonFiniteError(f"{name} contains NaN or Inf")


@jax.jit
def _all_finite(x: Any) -> Any:
    return jnp.isfinite(x).all()


def _core_dtype(dtype: Any, *, complex_: bool = False) -> Any:
    """Double precision when JAX allows it (``jax_enable_x64``), else the single-precision twin."""
    kind_c = complex_ or np.dtype(dtype).kind == "c"
    return jax.dtypes.canonicalize_dtype(np.complex128 if kind_c else np.float64)


def _check_factors(U: Any, A: Any, B: Any) -> tuple[tuple[int, ...], Any, Any]:
    """:func:`unitary_update._validation.check_factor_pair` on JAX arrays (shapes and dtypes only: traceable).

    The factors keep their dtype here: :func:`_balance` scales them before the cast to U's.
    """
    return check_factor_pair(U, A, B, cast=False)


def _balance(A: Any, B: Any, dtype: Any) -> tuple[Any, Any, Any]:
    """``A', B'`` in ``dtype`` and the exponent ``e`` (per matrix) with ``A B^H = 2^e A' B'^H`` exactly.

    Each factor is divided by the power of two of its largest entry, so ``A'`` and ``B'`` have
    entries of at most 1 and nothing downstream overflows, whatever the factors' scale (the
    NumPy path's :func:`unitary_update._lowrank.balance`; here always, as a traced computation).
    The cores apply ``2^e``.  ``e`` carries no gradient: the scaling is exact.
    """

    def exponent(X: Any) -> Any:
        m = jnp.max(jnp.abs(X), axis=(-2, -1), keepdims=True)
        return jax.lax.stop_gradient(jnp.frexp(jnp.where(m > 0, m, 1))[1])

    eA, eB = exponent(A), exponent(B)
    return _ldexp(A, -eA).astype(dtype), _ldexp(B, -eB).astype(dtype), eA + eB


def _ldexp(X: Any, n: Any) -> Any:
    """``X 2^n`` exactly, for real or complex X (``jnp.ldexp`` takes real arrays only)."""
    if jnp.iscomplexobj(X):
        return jax.lax.complex(jnp.ldexp(X.real, n), jnp.ldexp(X.imag, n))
    return jnp.ldexp(X, n)


# ---- the updates ---------------------------------------------------------------------------------
def _basis(U: Any, A: Any, B: Any, batch: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """``W, a, b``: orthonormal basis of ``span[B, U^H A]`` (thin QR) and the factors in it."""
    k = A.shape[-1]
    A_hat = _hconj(_hconj(A) @ U)  # U^H A as (A^H U)^H: XLA's CPU dot would first copy a transposed U
    X = jnp.concatenate(
        [jnp.broadcast_to(B, (*batch, *B.shape[-2:])), jnp.broadcast_to(A_hat, (*batch, *A_hat.shape[-2:]))],
        axis=-1,
    )
    W, R = jnp.linalg.qr(X, mode="reduced")
    return W, R[..., :, k:], R[..., :, :k]


def _svd_or_nan(M: Any, *, core: bool = False) -> tuple[Any, Any, Any]:
    """``jnp.linalg.svd(M, full_matrices=False)``, NaN factors where a matrix of M has NaN/Inf.

    XLA's SVD does not return on some non-finite matrices (CPU); this one is never handed one,
    so under ``jit`` NaN/Inf propagate as NaN, as documented, instead of hanging.  ``core``:
    M is projUNN-D's square core, factored by :func:`_core_svd`.
    """
    finite = jnp.isfinite(M).all(axis=(-2, -1), keepdims=True)
    safe = jnp.where(finite, M, 0)
    L, s, Rh = _core_svd(safe) if core else jnp.linalg.svd(safe, full_matrices=False)
    return jnp.where(finite, L, jnp.nan), jnp.where(finite[..., 0], s, jnp.nan), jnp.where(finite, Rh, jnp.nan)


def _finite_or_identity(M: Any) -> tuple[Any, Any]:
    """``(M or I where M has NaN/Inf, finite)``: XLA's SVD and eigh never return on a non-finite matrix."""
    finite = jnp.isfinite(M).all(axis=(-2, -1), keepdims=True)
    return jnp.where(finite, M, jnp.eye(M.shape[-1], dtype=M.dtype)), finite


# the largest exponent of projUNN-D's identity term: about the smallest power of two XLA's SVD
# still resolves beside entries of order one, 2^-100 in single precision (measured against
# mpmath and the limit: equal-norm steps fail from about 2^-113, r = 8 cores already at 2^-110;
# steps whose singular values span 2^80 and more want the term as small as it can be), 2^-900 in
# double as on the NumPy path; see _project_core
_HUGE_STEP_EXPONENT = {23: 100, 52: HUGE_STEP_EXPONENT}


def _project_core(a: Any, b: Any, e: Any) -> Any:
    """``polar(I + 2^e a b^H) - I`` from the SVD of the r x r core (NaN where that core is not finite).

    The polar factor does not change under positive scaling, so the core is formed as
    ``2^-max(e, 0) I + 2^min(e, 0) a b^H``: no overflow for huge steps and no underflow of the
    step for tiny ones that matter.  For a huge step the identity term is capped at
    ``eps = 2^-100`` in single and ``2^-900`` in double precision (:data:`_HUGE_STEP_EXPONENT`):
    smaller, XLA's single-precision SVD loses it (from about ``2^-110``) or it underflows, and
    the SVD of the rank-deficient ``a b^H`` alone picks an arbitrary map between its null
    spaces.  The polar factor of ``eps I + a b^H`` tends to a limit as ``eps -> 0`` and is within
    ``eps / sigma_k(a b^H)`` of it; up to the cap the term is exact.
    """
    dt = _core_dtype(a.dtype)
    a, b = a.astype(dt), b.astype(dt)
    eye = jnp.eye(a.shape[-2], dtype=dt)
    one = jnp.ones((), jnp.finfo(dt).dtype)  # real: ldexp takes no complex arrays
    identity_exponent = jnp.clip(e, 0, _HUGE_STEP_EXPONENT[jnp.finfo(dt).nmant])
    T = jnp.ldexp(one, -identity_exponent) * eye + jnp.ldexp(one, jnp.minimum(e, 0)) * (a @ _hconj(b))
    X, _, Yh = _svd_or_nan(T, core=True)  # NaN where T is not finite
    return X @ Yh - eye


_SVD_QR = getattr(getattr(jax.lax.linalg, "SvdAlgorithm", None), "QR", None)  # JAX >= 0.5


def _core_svd(T: Any) -> tuple[Any, Any, Any]:
    """The SVD of a square core, by the QR iteration on CPU from r = 26 where JAX offers the choice.

    The default (divide and conquer on CPU) resolves small singular values only to ``eps`` times
    the largest, and a huge projUNN-D step's core ``2^-e I + a b^H`` needs its tiny identity
    term: with it, r = 32-64 and ``|A B^H|`` beyond about ``2^40`` times U's scale gave a unitary
    matrix 0.2-0.4 off the polar factor (as NumPy's ``gesdd``, see ``_lowrank._svd``).
    """
    # only where the default is divide and conquer: CPU, r > 25 (below, LAPACK's gesdd runs the
    # same QR iteration; GPU defaults are Jacobi or QR, and batched Jacobi is far faster there)
    if _SVD_QR is None or T.shape[-1] <= 25 or jax.default_backend() != "cpu":
        return jnp.linalg.svd(T)
    U, s, Vh = jax.lax.linalg.svd(T, full_matrices=False, algorithm=_SVD_QR)
    return U, s, Vh


def _transport_core(a: Any, b: Any, e: Any) -> Any:
    """``expm(K) - I``, ``K = 2^e (a b^H - b a^H) / 2``, via ``eigh(-iK)``; real for real inputs.

    The eigenproblem is solved for ``2^-e K`` (entries of order one) and its angles scaled by
    ``2^e``; angles beyond the core dtype's range are clipped to it (any unitary answer is
    then as good as another: their rounding alone exceeds 2 pi many times over).
    """
    real = a.dtype.kind != "c"
    dt = _core_dtype(a.dtype, complex_=True)
    a, b = a.astype(dt), b.astype(dt)
    ab = a @ _hconj(b)
    K = 0.5 * (ab - _hconj(ab))
    H = -1j * K
    H, finite = _finite_or_identity(0.5 * (H + _hconj(H)))  # exactly Hermitian
    theta, V = jnp.linalg.eigh(H)
    big = jnp.finfo(theta.dtype).max
    theta = jnp.clip(jnp.ldexp(theta, e[..., 0]), -big, big)
    z = -2.0 * jnp.sin(0.5 * theta) ** 2 + 1j * jnp.sin(theta)  # expm1(i theta), accurate for small theta
    D = jnp.where(finite, (V * z[..., None, :]) @ _hconj(V), jnp.nan)
    return _nearest_rotation(D) if real else D


def _nearest_rotation(D: Any) -> Any:
    """``Re D``, or ``Q - I`` for the rotation Q nearest to ``I + Re D`` when ``Im D`` is more than rounding.

    The choice is a ``jnp.where`` (no value-dependent Python branch, so this traces) with the
    NumPy path's threshold in double precision, scaled by the precision ratio for single-precision
    cores.  The SVD is fed a matrix with distinct singular values when its branch is not taken,
    so that gradients through the common branch stay finite (the polar factor of a matrix whose
    singular values are all 1 has no finite SVD derivative).
    """
    Dr = D.real
    r = D.shape[-1]
    eye = jnp.eye(r, dtype=Dr.dtype)
    tol = REAL_CORE_IMAG_TOL if Dr.dtype == np.float64 else REAL_CORE_IMAG_TOL * _EPS_RATIO
    use = jnp.max(jnp.abs(D.imag), axis=(-2, -1), keepdims=True) > tol
    safe = jnp.diag(jnp.arange(1, r + 1, dtype=Dr.dtype))
    X, _, Yh = jnp.linalg.svd(jnp.where(use, eye + Dr, safe))
    flip = jnp.where(jnp.linalg.det(X) * jnp.linalg.det(Yh) < 0, -1.0, 1.0).astype(Dr.dtype)
    X = X.at[..., :, -1].multiply(flip[..., None])  # smallest singular value's direction: SO(r)
    return jnp.where(use, X @ Yh - eye, Dr)


_EPS_RATIO = float(np.finfo(np.float32).eps / np.finfo(np.float64).eps)


def _refined_single_precision_core(D: Any) -> Any:
    """A single-precision core ``D`` (``I + D`` unitary) moved onto the unitary group to rounding of D.

    Without x64 the cores come from single-precision SVD/eigh, and ``I + D`` is unitary only to
    a few times ``eps``, an error every step passes on to U (the NumPy path's double-precision
    cores do not).  One Newton-Schulz step ``Q <- Q - Q E / 2`` with ``E = Q^H Q - I``, and E
    formed as ``D + D^H + D^H D``, without the cancellation of ``Q^H Q - I`` for a small step,
    squares that error: over 300 float32 steps U then drifts about half as much (N = 8-256,
    k = 1-4).  Double-precision cores are returned unchanged.
    """
    if jnp.finfo(D.dtype).bits > 32:
        return D
    E = D + _hconj(D) + _hconj(D) @ D
    return D - 0.5 * E - 0.5 * (D @ E)


def _validate_update(U: Any, A: Any, B: Any) -> tuple[Any, Any, Any, tuple[int, ...]]:
    U, A, B = _as_jax(U, "U"), _as_jax(A, "A"), _as_jax(B, "B")
    check_square(U, "U")
    batch, A, B = _check_factors(U, A, B)
    for x, name in ((U, "U"), (A, "A"), (B, "B")):
        _check_finite(x, name)
    return U, A, B, batch


@functools.partial(jax.jit, static_argnames=("kind", "batch"))
def _lowrank_update(U: Any, A: Any, B: Any, *, kind: str, batch: tuple[int, ...]) -> tuple[Any, Any]:
    """``(U + (U W) D W^H, finite)`` (jitted: one compilation per shape, also for eager calls).

    ``finite`` says whether the thin ``P = (U W) D`` and ``W`` are finite: an O(N r) check that
    finite inputs gave a finite step (they do unless U is far from unitary).
    """
    A, B, e = _balance(A, B, U.dtype)
    W, a, b = _basis(U, A, B, batch)
    D = _refined_single_precision_core((_project_core if kind == "project" else _transport_core)(a, b, e))
    D = D.astype(U.dtype)
    P = (U @ W) @ D
    finite = jnp.isfinite(P).all() & jnp.isfinite(W).all()
    r = W.shape[-1]
    if r > _FUSED_MAX_R:
        return U + P @ _hconj(W), finite
    # small r: r outer products summed elementwise, which XLA fuses into one pass over U (and,
    # when U is donated, writes in place); a dot would add an N x N temporary and a second pass.
    # The small terms are summed first and added to U once, so each entry of U is rounded once
    # (adding them to U one by one rounded it r times: U drifted up to 1.4x faster, r = 8)
    Wc = jnp.conj(W)
    step = P[..., :, 0:1] * Wc[..., None, :, 0]
    for m in range(1, r):
        step = step + P[..., :, m : m + 1] * Wc[..., None, :, m]
    return U + step, finite


_FUSED_MAX_R = 8


def refuse_out(out: Any, drift: Any = None) -> None:
    """The public API's ``out=`` (and ``drift=``) with JAX inputs: JAX arrays are immutable."""
    if out is not None:
        if isinstance(out, (jax.Array, jax.core.Tracer)):
            raise TypeError(
                "out is a JAX array; JAX arrays are immutable and cannot be updated in place: "
                "call without out= and use the returned array"
            )
        raise TypeError(
            f"out is a {type(out).__name__} but the inputs are JAX arrays, computed in JAX: "
            "call without out= and use the returned JAX array"
        )
    if drift is not None:
        raise TypeError(
            "drift cannot retract JAX arrays in place (they are immutable): call without drift= and "
            "use unitary_update.jax.retract, or unitary_update.jax.retract_every with optax"
        )


def public_update(kind: str, U: Any, A: Any, B: Any, out: Any) -> Any:
    """:func:`unitary_update.project` / ``transport`` on JAX arrays (``out`` is refused)."""
    refuse_out(out)
    return update(kind, U, A, B)


def update(kind: str, U: Any, A: Any, B: Any) -> Any:
    """``project`` or ``transport`` (``kind``) on JAX arrays: validation, then the update."""
    U, A, B, batch = _validate_update(U, A, B)
    V, finite = _lowrank_update(U, A, B, kind=kind, batch=batch)
    if not _is_tracer(finite) and get_options().check_finite and not bool(finite):
        # finite inputs give a finite result unless U is far from unitary (U^H A overflows)
        raise NonFiniteError(
            "U^H A overflows: U's entries are too large for its dtype (U must be unitary, entries of magnitude <= 1)"
        )
    return V


def project(U: Any, A: Any, B: Any) -> Any:
    r"""projUNN-D in JAX: the closest unitary matrix to ``U + A B^H``.

    The JAX twin of :func:`unitary_update.project` (same mathematics: the polar factor of the
    r x r core ``I + a b^H`` in the basis ``W`` of ``span[B, U^H A]``, ``r = min(N, 2k)``);
    functional, so it works under :func:`jax.jit` and :func:`jax.vmap`.

    Parameters
    ----------
    U : jax.Array, shape (..., N, N)
        Unitary (complex) or orthogonal (real) matrix or stack; float32, float64, complex64 or
        complex128.
    A, B : jax.Array, shape (..., N, k)
        Factors of the update ``A @ B^H``; cast to U's dtype (complex factors with a real U are
        an error).  Batch dimensions broadcast like ``matmul``.

    Returns
    -------
    jax.Array, shape (broadcast batch, N, N)
        The polar factor of ``U + A B^H``, with U's dtype.

    Raises
    ------
    TypeError
        For a non-array, a non-floating dtype, or complex factors with a real U.
    ValueError
        For mismatched shapes or batch dimensions that do not broadcast.
    NonFiniteError
        For NaN/Inf in a concrete (not traced) input.

    Notes
    -----
    Cost O(N^2 k) time and O(N k) extra memory (plus the new N x N result).  A zero A or B
    returns U unchanged; a singular ``U + A B^H`` gives one of its nearest unitary matrices.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np, scipy.linalg, unitary_update as uu
    >>> from unitary_update import jax as uj
    >>> U = jnp.asarray(uu.random_unitary(6, dtype=np.float32, rng=0))
    >>> A, B = jnp.ones((6, 1)), jnp.arange(6.0).reshape(6, 1) / 10
    >>> V = jax.jit(uj.project)(U, A, B)
    >>> bool(np.allclose(V, scipy.linalg.polar(np.asarray(U + A @ B.T))[0], atol=1e-5))
    True
    """
    return update("project", U, A, B)


def transport(U: Any, A: Any, B: Any) -> Any:
    r"""projUNN-T in JAX: ``U expm(skew(U^H A B^H))``.

    The JAX twin of :func:`unitary_update.transport` (the exponential of the r x r skew core
    from the Hermitian eigenproblem of ``-iK``); functional, jittable and vmappable.

    Parameters
    ----------
    U : jax.Array, shape (..., N, N)
        Unitary or orthogonal matrix or stack.
    A, B : jax.Array, shape (..., N, k)
        Factors of the update ``A @ B^H``.

    Returns
    -------
    jax.Array, shape (broadcast batch, N, N)
        ``U @ expm(skew(U^H A B^H))`` with U's dtype (real stays real, det(U) is preserved).

    Raises
    ------
    TypeError
        For a non-array, a non-floating dtype, or complex factors with a real U.
    ValueError
        For mismatched shapes or batch dimensions that do not broadcast.
    NonFiniteError
        For NaN/Inf in a concrete (not traced) input.

    Notes
    -----
    Cost O(N^2 k) time and O(N k) extra memory.  A zero A or B returns U unchanged.

    Examples
    --------
    >>> import jax.numpy as jnp, numpy as np, scipy.linalg, unitary_update as uu
    >>> from unitary_update import jax as uj
    >>> U = jnp.asarray(uu.random_unitary(5, dtype=np.float32, rng=0))
    >>> A, B = jnp.ones((5, 1)), jnp.arange(5.0).reshape(5, 1) / 10
    >>> V = uj.transport(U, A, B)
    >>> X = np.asarray(U.T @ A @ B.T)
    >>> bool(np.allclose(V, np.asarray(U) @ scipy.linalg.expm((X - X.T) / 2), atol=1e-5))
    True
    """
    return update("transport", U, A, B)


# ---- the sketches --------------------------------------------------------------------------------
class _Source:
    """Where random test matrices come from: a JAX key, or a NumPy Generator (the NumPy path's draws)."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def normal(self, shape: tuple[int, ...], dtype: Any) -> Any:
        if isinstance(self.rng, np.random.Generator):
            return jnp.asarray(_random.standard_normal(np, self.rng, shape, dtype))
        return jax.random.normal(self.rng, shape, dtype)

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Any:
        dtype = jax.dtypes.canonicalize_dtype(dtype)
        if isinstance(self.rng, np.random.Generator):
            u = jnp.asarray(_random.uniform(np, self.rng, shape, np.float64)).astype(dtype)
            return jnp.maximum(u, jnp.finfo(dtype).tiny)
        tiny = jnp.finfo(dtype).tiny
        return jax.random.uniform(self.rng, shape, dtype, minval=tiny, maxval=1.0)


def _orth(x: Any) -> Any:
    return jnp.linalg.qr(x, mode="reduced")[0]


class _Dense:
    """G given as an array."""

    def __init__(self, G: Any) -> None:
        self.G, self.arrays = G, (G,)
        self.shape, self.dtype, self.batch = G.shape[-2:], G.dtype, G.shape[:-2]

    def matmul(self, x: Any) -> Any:
        return self.G @ x

    def rmatmul(self, q: Any) -> Any:
        return _hconj(self.G) @ q

    def column_norms2(self) -> Any:
        dt = _core_dtype(np.float64)
        return jnp.sum(jnp.abs(self.G).astype(dt) ** 2, axis=-2)

    def columns(self, idx: Any) -> Any:
        idx = jnp.broadcast_to(idx[..., None, :], (*self.batch, self.shape[0], idx.shape[-1]))
        return jnp.take_along_axis(self.G, idx, axis=-1)

    def svd(self) -> tuple[Any, Any, Any]:
        L, s, Rh = _svd_or_nan(self.G)
        return L, s, _hconj(Rh)


class _Factored:
    """G = X Y^H, never formed."""

    def __init__(self, X: Any, Y: Any) -> None:
        self.X, self.Y, self.arrays = X, Y, (X, Y)
        self.batch = np.broadcast_shapes(X.shape[:-2], Y.shape[:-2])
        self.shape, self.dtype = (X.shape[-2], Y.shape[-2]), X.dtype

    def matmul(self, x: Any) -> Any:
        return self.X @ (_hconj(self.Y) @ x)

    def rmatmul(self, q: Any) -> Any:
        return self.Y @ (_hconj(self.X) @ q)

    def column_norms2(self) -> Any:
        Rx = jnp.linalg.qr(self.X, mode="r")
        Z = (Rx @ _hconj(self.Y)).astype(_core_dtype(self.dtype))
        return jnp.sum(jnp.abs(Z) ** 2, axis=-2)

    def columns(self, idx: Any) -> Any:
        Y = jnp.broadcast_to(self.Y, (*self.batch, *self.Y.shape[-2:]))
        idx = jnp.broadcast_to(idx[..., :, None], (*self.batch, idx.shape[-1], Y.shape[-1]))
        return self.X @ _hconj(jnp.take_along_axis(Y, idx, axis=-2))

    def svd(self) -> tuple[Any, Any, Any]:
        Qx, Rx = jnp.linalg.qr(self.X, mode="reduced")
        Qy, Ry = jnp.linalg.qr(self.Y, mode="reduced")
        Lc, s, Rch = _svd_or_nan(Rx @ _hconj(Ry))
        return Qx @ Lc, s, Qy @ _hconj(Rch)


def _split(L: Any, s: Any, R: Any, rank: int) -> tuple[Any, Any]:
    """Balanced factors ``A = L_k sqrt(s_k)``, ``B = R_k sqrt(s_k)``, zero-padded to ``rank``."""
    root = jnp.sqrt(s[..., :rank]).astype(L.dtype)[..., None, :]
    A, B = L[..., :, :rank] * root, R[..., :, :rank] * root
    missing = rank - A.shape[-1]
    if missing > 0:  # static: a factored G of rank m < k
        A = jnp.concatenate([A, jnp.zeros((*A.shape[:-1], missing), dtype=A.dtype)], axis=-1)
        B = jnp.concatenate([B, jnp.zeros((*B.shape[:-1], missing), dtype=B.dtype)], axis=-1)
    return A, B


def _randomized(op: Any, rank: int, omega: Any, power_iterations: int) -> tuple[Any, Any]:
    Q = _orth(op.matmul(omega))
    for _ in range(power_iterations):
        Q = _orth(op.matmul(_orth(op.rmatmul(Q))))
    Z = op.rmatmul(Q)  # G^H Q; G ~= Q Z^H
    Lz, s, Rzh = _svd_or_nan(Z)
    return _split(Q @ _hconj(Rzh), s, Lz, rank)


def _lsi(op: Any, R: Any) -> tuple[Any, Any]:
    V = _orth(op.rmatmul(R))
    return op.matmul(V), V


def _column(op: Any, rank: int, u: Any) -> tuple[Any, Any]:
    norms2 = op.column_norms2()
    tiny = jnp.finfo(norms2.dtype).tiny
    gumbel = -jnp.log(-jnp.log(u))
    keys = jnp.log(jnp.maximum(norms2, tiny)) + gumbel
    _, idx = jax.lax.top_k(keys, rank)  # largest first; ties to the lower index, as NumPy's sort
    Q = _orth(op.columns(idx))
    return Q, op.rmatmul(Q)


def _exact(op: Any, rank: int) -> tuple[Any, Any]:
    L, s, R = op.svd()
    return _split(L, s, R, rank)


def _as_operator(G: Any) -> Any:
    if isinstance(G, tuple):
        if len(G) != 2:
            raise ValueError(f"a factored G must be a pair (X, Y) meaning G = X @ Y^H; got a tuple of {len(G)}")
        X, Y = _as_jax(G[0], "G[0] (X)"), _as_jax(G[1], "G[1] (Y)")
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
        _check_finite(X, "X")
        _check_finite(Y, "Y")
        dtype = jnp.result_type(X.dtype, Y.dtype)
        return _Factored(X.astype(dtype), Y.astype(dtype))
    G = _as_jax(G, "G")
    check_float_dtype(G, "G")
    if G.ndim < 2:
        raise ValueError(f"G must have shape (..., N, M) or be a pair (X, Y); got shape {tuple(G.shape)}")
    _check_finite(G, "G")
    return _Dense(G)


def _check_options(method: str, options: dict[str, Any]) -> tuple[str, dict[str, int]]:
    method = check_choice(method, SKETCH_METHODS, "sketch method")
    valid = _METHOD_OPTIONS[method]
    for key, value in options.items():
        if key not in valid:
            listed = ", ".join(valid) or "none"
            raise TypeError(f"unknown option {key!r} for sketch method {method!r}; valid options: {listed}")
        check_int(value, f"option {key}", low=0, expected="a non-negative integer")
    return method, {k: int(v) for k, v in {**valid, **options}.items()}


def _source(method: str, rng: Any, name: str) -> _Source:
    """The random source: a JAX key, an int seed (-> ``jax.random.key``), or a NumPy Generator."""
    if method == "exact":
        return _Source(None)
    if is_key(rng) or isinstance(rng, np.random.Generator):
        return _Source(rng)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        # non-negative, as numpy.random.default_rng requires on the NumPy path (and the same seed
        # must mean the same thing on both)
        return _Source(jax.random.key(check_int(rng, f"{name} (an int seed)", low=0)))
    raise TypeError(
        f"{name} must be a JAX PRNG key (jax.random.key(seed)) or an int seed for sketch method "
        f"{method!r}; got {type(rng).__name__}"
    )


def _draw(op: Any, method: str, rank: int, oversampling: int, source: _Source) -> Any:
    """The random test matrix of ``method`` (None for ``exact``), drawn outside the jitted compute."""
    n, m = op.shape
    if method == "randomized":
        return source.normal((*op.batch, m, min(rank + oversampling, n, m)), op.dtype)
    if method == "lsi":
        return source.normal((*op.batch, n, rank), op.dtype)
    if method == "column":
        return source.uniform((*op.batch, m), np.float64)
    return None


@functools.partial(jax.jit, static_argnames=("method", "rank", "power_iterations"))
def _sketch_compute(arrays: tuple[Any, ...], draw: Any, *, method: str, rank: int, power_iterations: int) -> Any:
    """The sketch's arithmetic (jitted: one compilation per shape, also for eager calls)."""
    op = _Dense(*arrays) if len(arrays) == 1 else _Factored(*arrays)
    if method == "randomized":
        return _randomized(op, rank, draw, power_iterations)
    if method == "lsi":
        return _lsi(op, draw)
    if method == "column":
        return _column(op, rank, draw)
    return _exact(op, rank)


def sketch_with(G: Any, rank: int, method: str, source: _Source, options: dict[str, Any]) -> tuple[Any, Any]:
    """The sketch from an already chosen random source (used by :func:`sketch` and the public API)."""
    method, opts = _check_options(method, options)
    op = _as_operator(G)
    rank = check_sketch_rank(rank, op.shape)
    draw = _draw(op, method, rank, opts["oversampling"] if method == "randomized" else 0, source)
    power = opts["power_iterations"] if method == "randomized" else 0
    A, B = _sketch_compute(op.arrays, draw, method=method, rank=rank, power_iterations=power)
    return A, B


def public_sketch(G: Any, rank: int, method: str, rng: Any, options: dict[str, Any]) -> tuple[Any, Any]:
    """:func:`unitary_update.sketch` on JAX arrays: ``rng`` a JAX key, or a Generator/int/None (NumPy draws)."""
    check_choice(method, SKETCH_METHODS, "sketch method")
    source = _Source(rng) if is_key(rng) else _Source(_random.normalize_rng(rng))
    return sketch_with(G, rank, method, source, options)


def sketch(G: Any, rank: int, *, method: str = "randomized", key: Any = None, **options: int) -> tuple[Any, Any]:
    r"""Rank-``rank`` factors ``A, B`` with ``G ~= A @ B^H``, in JAX, from a PRNG key.

    The JAX twin of :func:`unitary_update.sketch`: the same four methods (randomized
    Halko-Martinsson-Tropp, lsi, column sampling, exact truncated SVD) on a dense or factored G,
    with the random test matrix drawn from ``key``.  ``rank``, ``method`` and the options are
    static (Python values); jit with ``static_argnames=("rank", "method")``.

    Parameters
    ----------
    G : jax.Array, shape (..., N, M), or tuple (X, Y)
        The matrix to approximate, dense or factored as ``X @ Y^H`` (never formed).
    rank : int
        Number of columns k of A and B, ``1 <= k <= min(N, M)``.
    method : {"randomized", "lsi", "column", "exact"}
        The approximation.
    key : jax.Array or int
        A JAX PRNG key (``jax.random.key(seed)``, or a raw ``uint32[2]`` key), or an int seed;
        required except for ``"exact"``.
    **options : int
        ``randomized`` only: ``oversampling`` (default 8) and ``power_iterations`` (default 1).

    Returns
    -------
    A : jax.Array, shape (..., N, rank)
        The left factor, in G's dtype.
    B : jax.Array, shape (..., M, rank)
        The right factor, in G's dtype.

    Raises
    ------
    TypeError
        For a non-array G, a non-floating dtype, a missing or invalid ``key``, or an unknown
        option.
    ValueError
        For bad shapes, ``rank`` out of range, an unknown method, or NaN/Inf in a concrete G.

    Notes
    -----
    Cost as for :func:`unitary_update.sketch`: O(N^2 (k + p)(1 + 2q)) for ``randomized`` on a
    dense N x N G, O(N^2 k) for ``lsi`` and ``column``, O(N^3) for ``exact``.

    Examples
    --------
    >>> import jax, numpy as np
    >>> from unitary_update import jax as uj
    >>> G = jax.random.normal(jax.random.key(0), (20, 2)) @ jax.random.normal(jax.random.key(1), (2, 20))
    >>> A, B = uj.sketch(G, 2, key=jax.random.key(2))
    >>> bool(np.allclose(A @ B.T, G, atol=1e-4))
    True
    """
    method, _ = _check_options(method, options)
    return sketch_with(G, rank, method, _source(method, key, "key"), options)


# ---- one step ------------------------------------------------------------------------------------
def _check_direction(U: Any, G: Any) -> None:
    n = check_square(U, "U")
    parts = G if isinstance(G, tuple) else (G,)
    for i, part in enumerate(parts):
        name = "G" if len(parts) == 1 else f"G[{i}]"
        part = _as_jax(part, name)
        if part.ndim >= 2 and part.shape[-2] != n:
            raise ValueError(f"{name} has shape {tuple(part.shape)} but U is {n} x {n}")
        if not isinstance(G, tuple) and part.ndim >= 2 and part.shape[-1] != n:
            raise ValueError(f"G has shape {tuple(part.shape)} but U is {n} x {n}")
        if getattr(part.dtype, "kind", "") == "c" and U.dtype.kind != "c":
            raise TypeError(f"{name} is complex ({part.dtype}) but U is real ({U.dtype})")


def step_with(U: Any, G: Any, rank: int, update_: str, method: str, source: _Source) -> Any:
    """One step from an already chosen random source (used by :func:`step` and the public API)."""
    update_ = check_choice(update_, UPDATES, "update")
    method = check_choice(method, SKETCH_METHODS, "sketch method")
    U = _as_jax(U, "U")
    _check_direction(U, G)
    A, B = sketch_with(G, rank, method, source, {})
    return update(update_, U, A, B)


def public_step(U: Any, G: Any, rank: int, update_: str, method: str, rng: Any, out: Any, drift: Any) -> Any:
    """:func:`unitary_update.step` on JAX arrays (``rng``: JAX key, or Generator/int/None)."""
    refuse_out(out, drift)
    check_choice(update_, UPDATES, "update")
    check_choice(method, SKETCH_METHODS, "sketch method")
    source = _Source(rng) if is_key(rng) else _Source(_random.normalize_rng(rng))
    return step_with(U, G, rank, update_, method, source)


def step(
    U: Any, G: Any, *, rank: int = 1, update: str = "transport", sketch: str = "randomized", key: Any = None
) -> Any:
    """Apply the additive direction ``G`` to U, kept unitary: sketch ``G ~= A B^H``, then update.

    The JAX twin of :func:`unitary_update.step` (without ``out`` and ``drift``: see
    :func:`retract` and :func:`unitary_update.jax.retract_every` for drift control).

    Parameters
    ----------
    U : jax.Array, shape (..., N, N)
        Unitary or orthogonal matrix (or stack).
    G : jax.Array, shape (..., N, N), or tuple (X, Y)
        The step itself (``-learning_rate * gradient``), dense or factored.
    rank : int, default 1
        Rank k of the sketch (static).
    update : {"transport", "project"}
        projUNN-T or projUNN-D (static).
    sketch : {"randomized", "lsi", "column", "exact"}
        Sketch method (static).
    key : jax.Array or int
        PRNG key (or int seed) of the sketch; required except for ``sketch="exact"``.

    Returns
    -------
    jax.Array, shape (..., N, N)
        The updated unitary matrix, in U's dtype.

    Raises
    ------
    TypeError
        For non-array inputs, non-floating dtypes, a complex G with a real U, or a missing key.
    ValueError
        For mismatched shapes, a rank out of range, unknown names, or NaN/Inf in concrete inputs.

    Notes
    -----
    Cost: the sketch (O(N^2 k) for a dense G) plus the O(N^2 k) update.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np, unitary_update as uu
    >>> from unitary_update import jax as uj
    >>> U = jnp.asarray(uu.random_unitary(16, dtype=np.float32, rng=0))
    >>> G = -0.01 * jax.random.normal(jax.random.key(1), (16, 16))
    >>> V = jax.jit(uj.step, static_argnames=("rank", "update", "sketch"))(U, G, rank=2, key=jax.random.key(2))
    >>> uu.unitarity_error(np.asarray(V)) < 1e-5
    True
    """
    method = check_choice(sketch, SKETCH_METHODS, "sketch method")
    return step_with(U, G, rank, update, method, _source(method, key, "key"))


# ---- retraction ----------------------------------------------------------------------------------
def retract(U: Any, *, method: str = "polar") -> Any:
    """Back onto the manifold: the nearest unitary matrix (``"polar"``) or two Newton-Schulz steps.

    Parameters
    ----------
    U : jax.Array, shape (..., N, N)
        A (nearly) unitary matrix or stack.
    method : {"polar", "newton_schulz"}
        ``"polar"``: the unitary polar factor ``X Y^H`` from the SVD ``U = X S Y^H`` (O(N^3), any
        U), refined by one Newton-Schulz step (XLA's single-precision SVD alone leaves it several
        times the rounding error off the manifold).  ``"newton_schulz"``: two steps of
        ``X <- X (3 I - X^H X) / 2`` (matrix products only, fast on accelerators; for U within
        about 0.5 of the manifold, where it converges quadratically).

    Returns
    -------
    jax.Array, shape (..., N, N)
        The retracted matrix, in U's dtype.

    Raises
    ------
    TypeError
        For a non-array or a non-floating dtype.
    ValueError
        For a non-square U or an unknown method.
    NonFiniteError
        For a concrete U with NaN or Inf (``check_finite`` on); under ``jit`` the result is NaN.

    Examples
    --------
    >>> import jax.numpy as jnp, numpy as np, unitary_update as uu
    >>> from unitary_update import jax as uj
    >>> M = jnp.asarray(uu.random_unitary(8, dtype=np.float32, rng=0)) * 1.001
    >>> uu.unitarity_error(np.asarray(uj.retract(M))) < 1e-5
    True
    """
    method = check_choice(method, RETRACT_METHODS, "retraction method")
    U = _as_jax(U, "U")
    check_square(U, "U")
    _check_finite(U, "U")
    return _retract(U, method=method)


@functools.partial(jax.jit, static_argnames=("method",))
def _retract(U: Any, *, method: str) -> Any:
    if method == "polar":
        # polar(U) = polar(2^-e U): scaled to entries of at most 1, so the SVD never overflows
        m = jnp.max(jnp.abs(U), axis=(-2, -1), keepdims=True)
        e = jax.lax.stop_gradient(jnp.frexp(jnp.where(jnp.isfinite(m) & (m > 0), m, 1))[1])
        X, _, Yh = _svd_or_nan(_ldexp(U, -e))
        # XLA's single-precision SVD leaves X Y^H off the manifold by several times the rounding
        # of a product (N = 64: 1e-5, against 3e-7 from the NumPy path's double-precision SVD);
        # one Newton-Schulz step, which squares that distance, brings it down to rounding
        return _newton_schulz(X @ Yh, steps=1)
    return _newton_schulz(U, steps=2)


def _newton_schulz(X: Any, *, steps: int) -> Any:
    """``steps`` iterations of ``X <- X (3 I - X^H X) / 2`` (towards the polar factor of X).

    Written as the correction ``X - X E / 2`` with ``E = X^H X - I``: the product ``X E`` is
    small, so its rounding is negligible and each entry is rounded about once, which leaves
    ``||X^H X - I||_F`` near ``sqrt(N) eps`` instead of the ``N eps`` of ``X (3 I - X^H X) / 2``.
    """
    eye = jnp.eye(X.shape[-1], dtype=X.dtype)
    for _ in range(steps):
        X = X - 0.5 * (X @ (_hconj(X) @ X - eye))
    return X
