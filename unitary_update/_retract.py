r"""Drift control: map a nearly unitary matrix back onto the manifold.

Every low-rank update rounds ``U`` to the working precision, so over many steps ``U`` drifts off
the unitary group like a random walk: in float32 at N = 128 the unitarity error
``||U^H U - I||_F`` grows as about ``4e-7 sqrt(t)`` after t projUNN steps (``1.3e-4`` after
100,000 steps; see ``docs/robustness.md``).  This module puts it back.

* :func:`retract`: the nearest unitary matrix (``"polar"``, by SVD; ``"newton_schulz"``, the
  same polar factor from a few matrix products when U is already close), or the Q factor of a
  QR decomposition with R's diagonal made positive (``"qr"``).
* :class:`DriftControl`: a policy that calls :func:`retract` every ``every`` steps, or when a
  cheap O(N^2) estimate of the unitarity error passes ``tol``; pass it to
  :func:`unitary_update.step` (``drift=``) or call :meth:`DriftControl.maybe_retract` from an
  optimizer.

Newton-Schulz iteration for the polar factor (Higham, *Functions of Matrices*, 2008, sec. 8.3):
``X_{j+1} = X_j (3 I - X_j^H X_j) / 2 = X_j - X_j E_j / 2`` with ``E_j = X_j^H X_j - I``.  A
singular value ``sigma`` of ``X_j`` with ``sigma^2 = 1 + delta`` becomes one with
``sigma'^2 - 1 = -delta^2 (3 - delta) / 4``, so when ``||E_0||_F <= 1/2`` the iteration converges
monotonically and quadratically, ``||E_{j+1}||_F <= (7/8) ||E_j||_F^2``, to the polar factor of
``X_0``.  It stops as soon as that bound is below the unit roundoff (for the drift of a
float32 training run, ``||E_0||_F ~ 1e-5``: after one iteration, two matrix products in all).
"""

from __future__ import annotations

import math
import numbers
from types import ModuleType
from typing import Any, Literal

import numpy as np

from ._config import get_options
from ._validation import (
    NonFiniteError,
    SingularUpdateError,
    check_choice,
    check_finite,
    check_float,
    check_int,
    check_no_internal_overlap,
    check_out,
    check_square,
    quiet_when_unchecked,
)
from ._validation import svd as guarded_svd
from ._xp import array_namespace, from_compute, hconj, mark_written, to_compute, to_compute_with_out
from .random import normalize_rng, standard_normal

__all__ = ["RETRACT_METHODS", "DriftControl", "retract"]

RETRACT_METHODS = ("polar", "newton_schulz", "qr")

# Newton-Schulz runs only from ||X^H X - I||_F <= _NS_RADIUS (the convergence guarantee above);
# from 1/2, float64 precision is reached after 6 iterations, so _NS_MAX_ITER is a safety net.
_NS_RADIUS = 0.5
_NS_CONTRACTION = 0.875
_NS_MAX_ITER = 10


def _double(X: Any) -> Any:
    """X in float64 / complex128 (no copy when it already is)."""
    return X.astype(np.complex128 if X.dtype.kind == "c" else np.float64, copy=False)


def _gram_error(xp: ModuleType, X: Any) -> tuple[Any, float]:
    """``E = X^H X - I`` in double precision and ``max ||E||_F`` over the stack (a host float).

    In single precision the rounding of ``X^H X`` alone is about ``N eps`` (Frobenius), more
    than the drift being removed; accumulated in double, E is exact to float32 rounding and one
    correction lands U at the float32 floor (about ``sqrt(N) eps / 2``).  A NaN or Inf
    (overflow) shows in the returned norm.
    """
    Xd = _double(X)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow shows as Inf/NaN in the norm
        E = hconj(Xd) @ Xd
        n = X.shape[-1]
        idx = xp.arange(n)
        E[..., idx, idx] -= 1
        return E, float(xp.max(xp.linalg.norm(E, axis=(-2, -1))))


def _newton_schulz(xp: ModuleType, U: Any, target: Any) -> bool:
    """Write the polar factor of U into ``target`` by Newton-Schulz; False (nothing written) if too far."""
    E, d = _gram_error(xp, U)
    if not d <= _NS_RADIUS:  # also catches NaN from overflow
        return False
    unit_roundoff = float(np.finfo(U.dtype).eps) / 2
    X = U
    for _ in range(_NS_MAX_ITER):
        XE = X @ E.astype(X.dtype, copy=False)
        if target is not X:
            target[...] = X
        X = target
        XE *= 0.5
        X -= XE
        if _NS_CONTRACTION * d * d <= unit_roundoff:
            return True
        E, d = _gram_error(xp, X)
    # not reached for ||E_0|| <= 1/2 in exact arithmetic; finish by SVD if rounding ever stalls it
    _polar(xp, X, target)  # pragma: no cover
    return True  # pragma: no cover


def _polar(xp: ModuleType, U: Any, target: Any) -> None:
    # in double precision: a float32 LAPACK SVD leaves X Y^H about N eps from unitary
    Ud = _unit_scaled(xp, _double(U))
    try:
        X, _, Yh = guarded_svd(xp, Ud)  # NaN (not a hang) for Inf, reached only with check_finite off
    except np.linalg.LinAlgError as err:
        if not bool(xp.isfinite(Ud).all()):  # NaN in, NaN out (reached only with check_finite off)
            target[...] = xp.nan
            return
        raise SingularUpdateError(f"the SVD of U did not converge ({err}); U was not retracted") from None
    target[...] = X @ Yh


def _unit_scaled(xp: ModuleType, X: Any) -> Any:
    """X with each matrix scaled by a power of two (exact) so that its largest entry is in [0.5, 1).

    The polar factor and the Q of QR (R with a positive diagonal) do not change under positive
    scaling; LAPACK then sees entries near 1 whatever U's scale (1e-300 .. 1e300, subnormal).
    """
    real = np.float32 if X.dtype in (np.float32, np.complex64) else np.float64
    m = xp.max(xp.maximum(xp.abs(X.real), xp.abs(X.imag)) if X.dtype.kind == "c" else xp.abs(X), axis=(-2, -1))
    exponent = xp.frexp(xp.where(m > 0, m, 1).astype(np.float64))[1][..., None, None]
    half = exponent // 2
    with np.errstate(under="ignore", over="ignore"):
        f1 = xp.ldexp(xp.ones(half.shape, dtype=real), -half)
        f2 = xp.ldexp(xp.ones(half.shape, dtype=real), half - exponent)
        return X * f1 * f2


def _qr(xp: ModuleType, U: Any, target: Any) -> None:
    try:
        Q, R = xp.linalg.qr(_unit_scaled(xp, U))
    except np.linalg.LinAlgError as err:  # pragma: no cover - Householder QR does not iterate
        raise SingularUpdateError(f"the QR decomposition of U failed ({err}); U was not retracted") from None
    d = xp.diagonal(R, axis1=-2, axis2=-1)
    magnitude = xp.abs(d)
    with np.errstate(invalid="ignore"):  # NaN in R (check_finite off): NaN out, no warning
        phase = xp.where(magnitude == 0, 1, d / xp.where(magnitude == 0, 1, magnitude))
    target[...] = Q * phase[..., None, :].astype(Q.dtype)


@quiet_when_unchecked
def retract(U: Any, *, method: str = "polar", out: Any = None) -> Any:
    r"""Map a (nearly) unitary matrix onto the unitary (or, for real U, orthogonal) group.

    ``"polar"`` and ``"newton_schulz"`` return the unitary polar factor :math:`Q` of
    :math:`U = Q H` (:math:`H` Hermitian positive semidefinite), the unitary matrix nearest to U
    in every unitarily invariant norm.  ``"qr"`` returns the Q factor of :math:`U = QR` with a
    positive real diagonal in R: also unitary and within :math:`O(\|U^H U - I\|)` of U, but not
    the nearest.

    Parameters
    ----------
    U : array, shape (..., N, N)
        Matrix or stack of matrices; float32, float64, complex64 or complex128.
    method : {"polar", "newton_schulz", "qr"}, default "polar"
        ``"polar"``: SVD ``U = X S Y^H``, result ``X Y^H``, any U.
        ``"newton_schulz"``: the same polar factor by the iteration
        ``X <- X - X (X^H X - I) / 2`` (a few matrix products) when
        ``||U^H U - I||_F <= 1/2`` for every matrix of the stack; otherwise it falls back to
        ``"polar"``.  ``"qr"``: Householder QR with the phases of R's diagonal moved into Q.
    out : array, optional
        Where to write the result; ``out=U`` retracts in place.  Must have U's shape and dtype.

    Returns
    -------
    array, shape (..., N, N)
        The unitary matrix, in U's dtype (real for real U) and array library (``out`` itself
        when given).

    Raises
    ------
    TypeError
        If U or out is not an array, or has an unsupported dtype.
    ValueError
        If U is not a stack of square matrices, ``method`` is unknown, or ``out`` has the wrong
        shape or is read-only.
    NonFiniteError
        If U contains NaN or Inf (a ValueError; nothing is written).

    Notes
    -----
    O(N^3) per matrix.  ``"newton_schulz"`` costs two matrix products per iteration and stops
    once the next error bound ``(7/8) ||X^H X - I||_F^2`` is below the unit roundoff: one
    iteration (two products) for the drift a float32 training run accumulates, at most about
    six from the edge of the convergence region.  Its Gram matrix ``X^H X - I`` is accumulated
    in double precision (in single precision its rounding, about ``N eps``, would exceed the
    drift); the correction ``X (X^H X - I) / 2`` is applied in U's dtype.  It allocates up to
    four N x N temporaries per matrix (U and the Gram matrix in double, their product).
    ``"polar"`` takes the SVD in double precision (float64 / complex128) and casts the result
    back, so that it lands on U's dtype's rounding floor (a float32 LAPACK SVD stays about
    ``N eps`` away); ``"qr"`` works in U's dtype (Householder QR is unitary to working
    precision).  Both allocate what LAPACK needs (a few N x N arrays).  Newton-Schulz reads one
    number per iteration back to the host (on CuPy, a synchronisation).  When any matrix of a
    stack is outside the Newton-Schulz region the whole stack goes through the SVD.  A
    singular U has a non-unique polar factor; a valid one is returned.

    Examples
    --------
    >>> import numpy as np, scipy.linalg, unitary_update as uu
    >>> U = uu.random_unitary(8, dtype=np.float32, rng=0)
    >>> drifted = U + np.float32(1e-4) * np.random.default_rng(1).standard_normal((8, 8), dtype=np.float32)
    >>> uu.unitarity_error(drifted) > 1e-4
    True
    >>> V = uu.retract(drifted, method="newton_schulz")
    >>> uu.unitarity_error(V) < 1e-6
    True
    >>> bool(np.allclose(V, scipy.linalg.polar(drifted.astype(np.float64))[0], atol=1e-6))
    True
    >>> _ = uu.retract(drifted, method="qr", out=drifted)   # in place
    >>> uu.unitarity_error(drifted) < 1e-6
    True
    """
    method = check_choice(method, RETRACT_METHODS, "retraction method")
    U, library, target, _ = to_compute_with_out(U, out)
    check_square(U, "U")
    if target is not None:
        check_out(target, U, tuple(U.shape))
    check_finite(U, "U")
    xp = array_namespace(U)
    if target is None:
        target = xp.empty(U.shape, dtype=U.dtype)
    if U.size == 0:  # an empty stack: nothing to compute
        pass
    elif method == "qr":
        _qr(xp, U, target)
    elif method == "polar" or not _newton_schulz(xp, U, target):
        _polar(xp, U, target)
    if out is not None:
        mark_written(out)  # torch: bump the version counter, as an in-place op would
        return out
    return from_compute(target, library)


class DriftControl:
    r"""Re-unitarise a matrix every ``every`` steps or when its estimated drift passes ``tol``.

    A policy object for long training runs: after each update call
    ``drift.maybe_retract(U, step=t)`` (or pass ``drift=`` to :func:`unitary_update.step`).  It
    retracts U in place with :func:`retract` when ``t`` is a positive multiple of ``every``,
    or, every ``check_every`` steps, when the drift estimate

    .. math:: \hat e(U) = \sqrt{N}\, \frac{\|U^H (U x) - x\|_2}{\|x\|_2}

    for a random probe ``x`` (a new one at every check, fixed by the seed and the step) exceeds
    ``tol``.  For a direction ``x`` uniform on the sphere,
    :math:`\mathbb{E}\,\hat e^2 = \|U^H U - I\|_F^2`, so :math:`\hat e` estimates
    :func:`unitary_update.unitarity_error` from two matrix-vector products, O(N^2).

    Parameters
    ----------
    every : int or None, default None
        Retract unconditionally at every step that is a positive multiple of ``every``; None
        turns the periodic retraction off.
    tol : float, "auto" or None, default "auto"
        Retract when the drift estimate exceeds ``tol`` (in the units of
        :func:`unitary_update.unitarity_error`).  ``"auto"`` is about eight times the error a
        retraction leaves, and well above the estimate's own rounding noise (``~N eps / 10``):
        ``N eps / 4`` in single precision (float32, N = 128: ``3.8e-6``), where the retraction
        accumulates in double and lands near ``N eps / 30``; ``2 N eps`` in double precision
        (float64, N = 128: ``5.7e-14``), where it lands near ``N eps / 4``.  None turns the
        estimate off.
    method : {"newton_schulz", "polar", "qr"}, default "newton_schulz"
        Passed to :func:`retract`.
    check_every : int, default 10
        Compute the estimate only at steps that are multiples of this.
    rng : numpy.random.Generator, int or None, default 0
        Seed of the probe vectors, drawn on U's device: the probe of step t depends only on the
        seed and t, so a run resumed with a new policy of the same seed checks exactly as the
        uninterrupted one.  A probe drawn once and kept would be blind for good to drift along
        the coordinates where it happens to be small; a new one per check sees every direction.

    Attributes
    ----------
    retractions : int
        How many times U has been retracted.
    last_estimate : float or None
        The most recent drift estimate.

    Raises
    ------
    TypeError
        If ``every`` or ``check_every`` is not an integer, or ``tol`` not a number, "auto" or None.
    ValueError
        If ``every`` or ``check_every`` is below 1, ``tol`` is not positive, ``method`` is unknown,
        or both ``every`` and ``tol`` are None.

    Notes
    -----
    With the defaults, 100,000 float32 projUNN steps at N = 128 stay below a unitarity error of
    1e-5 (at most 3.9e-6) for both updates, against 1.3e-4 without drift control
    (``python -m unitary_update soak``, see ``docs/robustness.md``).  Drift grows like a random
    walk, so a float32 matrix is retracted about every ``0.6 N`` steps (every 77 at N = 128);
    each retraction is one Newton-Schulz iteration, two N x N products (``~4 N^3`` flops), which
    amortises to ``~7 N^2`` flops per step: a few percent of a step with a dense gradient (its
    sketch alone is ``~75 N^2`` flops at rank 1), two thirds of a rank-1 update with a factored
    one (``~10 N^2``).  Doubling ``tol`` makes retractions four times rarer.  The estimate costs two
    matrix-vector products and, on CuPy, one synchronisation (a number read to the host) every
    ``check_every`` steps; steps that neither estimate nor retract cost nothing.  Use one policy
    per matrix: the step counter used when ``step`` is not given is the policy's own.

    Examples
    --------
    >>> import numpy as np, unitary_update as uu
    >>> U = uu.random_unitary(64, dtype=np.float32, rng=0)
    >>> drift = uu.DriftControl(every=50)
    >>> rng = np.random.default_rng(1)
    >>> for t in range(1, 101):
    ...     G = (1e-3 * rng.standard_normal((64, 64))).astype(np.float32)
    ...     _ = uu.step(U, G, rank=1, rng=rng, out=U)
    ...     _ = drift.maybe_retract(U, step=t)
    >>> drift.retractions >= 2
    True
    >>> uu.unitarity_error(U) < 1e-5
    True
    """

    def __init__(
        self,
        every: int | None = None,
        tol: float | Literal["auto"] | None = "auto",
        method: str = "newton_schulz",
        *,
        check_every: int = 10,
        rng: np.random.Generator | int | None = 0,
    ) -> None:
        self.every = None if every is None else check_int(every, "every", low=1)
        self.tol: float | Literal["auto"] | None
        if tol is None or (isinstance(tol, str) and tol == "auto"):
            self.tol = tol
        elif isinstance(tol, numbers.Real) and not isinstance(tol, bool):
            self.tol = check_float(
                tol, "tol", low=0, open_low=True, expected="a positive finite number, 'auto' or None"
            )
        else:
            raise TypeError(f"tol must be a positive number, 'auto' or None; got {tol!r}")
        if self.every is None and self.tol is None:
            raise ValueError("DriftControl needs every, tol or both; got every=None and tol=None")
        self.method = check_choice(method, RETRACT_METHODS, "retraction method")
        self.check_every = check_int(check_every, "check_every", low=1)
        self._probe_seed = int(normalize_rng(rng).integers(2**63))
        self._calls = 0
        self.retractions = 0
        self.last_estimate: float | None = None

    def __repr__(self) -> str:
        return (
            f"DriftControl(every={self.every!r}, tol={self.tol!r}, method={self.method!r}, "
            f"check_every={self.check_every!r})"
        )

    def tolerance(self, n: int, dtype: Any) -> float | None:
        """The tolerance in force for an N x N matrix of ``dtype`` (resolves ``"auto"``).

        Parameters
        ----------
        n : int
            Matrix size N.
        dtype : dtype
            The matrix's dtype.

        Returns
        -------
        float or None
            ``tol`` itself, its ``"auto"`` value for this N and dtype, or None when the estimate
            is off.
        """
        if self.tol == "auto":
            dt = np.dtype(dtype)
            return n * float(np.finfo(dt).eps) * (0.25 if dt in (np.float32, np.complex64) else 2.0)
        return self.tol

    def _probe(self, xp: ModuleType, n: int, dtype: Any, index: int) -> Any:
        """The unit probe vector (N x 1) of check ``index``: a function of the seed and the index only."""
        gen = np.random.default_rng(np.random.SeedSequence(self._probe_seed, spawn_key=(index,)))
        x = standard_normal(xp, gen, (n, 1), dtype)
        return x / xp.linalg.norm(x)

    @quiet_when_unchecked
    def estimate(self, U: Any) -> float:
        r"""Estimate ``unitarity_error(U)`` as ``sqrt(N) ||U^H (U x) - x||`` (max over a stack), O(N^2).

        Parameters
        ----------
        U : array, shape (..., N, N)
            The matrix or stack of matrices whose distance to the manifold is estimated.

        Returns
        -------
        float
            The estimate (on CuPy, read back to the host).

        Raises
        ------
        TypeError, ValueError
            If U is not a stack of square floating-point matrices.
        NonFiniteError
            If the estimate is NaN or Inf (U contains NaN or Inf, or overflows); with
            ``check_finite`` off a NaN/Inf U gives a NaN/Inf estimate instead.

        Examples
        --------
        >>> import numpy as np, unitary_update as uu
        >>> drift = uu.DriftControl()
        >>> drift.estimate(1.001 * np.eye(50)) > 1e-2        # unitarity_error is 0.1
        True
        """
        U, _ = to_compute(U, "U")
        n = check_square(U, "U")
        value = self._estimate(U, n, self._calls)
        self.last_estimate = value
        return value

    def _estimate(self, U: Any, n: int, index: int) -> float:
        """The estimate with the probe of check ``index`` (no state changes)."""
        xp = array_namespace(U)
        if U.size == 0:
            return 0.0
        x = self._probe(xp, n, U.dtype, index)
        with np.errstate(over="ignore", invalid="ignore"):
            z = hconj(U) @ (U @ x) - x
            value = math.sqrt(n) * float(xp.max(xp.linalg.norm(z, axis=(-2, -1))))
        if not math.isfinite(value):
            if not get_options().check_finite:
                return value  # NaN/Inf in, NaN/Inf out (check_finite off): no check, no host read of U
            if not bool(xp.isfinite(U).all()):
                raise NonFiniteError("U contains NaN or Inf (its drift estimate is not finite); U was not retracted")
            value = math.inf  # finite U whose drift overflows U's dtype: as far from unitary as it gets
        return value

    @quiet_when_unchecked
    def maybe_retract(self, U: Any, *, step: int | None = None) -> bool:
        """Retract ``U`` in place if the policy says so at this step; return whether it did.

        All or nothing: when the call raises, U and the policy's state (its call counter,
        ``retractions``, ``last_estimate``) are exactly as before.

        Parameters
        ----------
        U : array, shape (..., N, N)
            The matrix, updated in place (any writable array :func:`retract` accepts).
        step : int, optional
            The step number t >= 0 (e.g. the optimizer's counter).  Without it the policy counts
            its own calls: 1, 2, 3, ...

        Returns
        -------
        bool
            True if U was retracted.

        Raises
        ------
        TypeError
            If ``step`` is not an integer, or U is not a floating-point array, or is a JAX array
            (immutable: use :func:`unitary_update.jax.retract`), at every call.
        ValueError
            If ``step`` is negative, U is not square or a lazy torch conjugate/negative view (at
            every call), or (when it is retracted) read-only or with overlapping memory.
        NonFiniteError
            If U contains NaN or Inf when it is estimated or retracted (U is left untouched).
        """
        step = self._calls + 1 if step is None else check_int(step, "step", low=0)
        # writable: a U that could never be retracted in place (a JAX array, a lazy torch view) is
        # refused at once, not on the step where a retraction first falls due
        target, _ = to_compute(U, "U", writable=True)
        n = check_square(target, "U")
        due = self.every is not None and step > 0 and step % self.every == 0
        estimate = None
        if not due and self.tol is not None and step % self.check_every == 0:
            limit = self.tolerance(n, target.dtype)
            estimate = self._estimate(target, n, step)
            due = limit is not None and estimate > limit
        if due:
            # U is written in place: refuse a read-only or self-overlapping U under its own name
            flags = getattr(target, "flags", None)
            if flags is not None and not getattr(flags, "writeable", True):
                raise ValueError(
                    "U is read-only; maybe_retract retracts U in place (retract(U, out=U): out is read-only)"
                )
            check_no_internal_overlap(target, "U")
            retract(U, method=self.method, out=U)
        # commit: nothing below can fail
        self._calls += 1
        if estimate is not None:
            self.last_estimate = estimate
        if due:
            self.retractions += 1
        return bool(due)
