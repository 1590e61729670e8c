"""One projUNN step: sketch the update direction to rank k, project or transport, then drift control.

:func:`step` is the library's one composition of the three; :class:`unitary_update.optim.UnitaryOptimizer`
and :meth:`unitary_update.models.conv.OrthogonalConv2d.step` call it, handing their own step
counter to the drift policy through :func:`drift_at`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._sketch import SKETCH_METHODS, FactorsOverflowError
from ._sketch import sketch as _sketch
from ._update import project, transport
from ._validation import check_choice, check_drift, check_out, check_rank, check_square, quiet_when_unchecked
from ._xp import compute_context, is_jax, to_compute

__all__ = ["UPDATES", "drift_at", "step"]

UPDATES = ("project", "transport")
_UPDATE_FUNCTIONS = {"project": project, "transport": transport}


@quiet_when_unchecked
def step(
    U: Any,
    G: Any,
    *,
    rank: int = 1,
    update: str = "transport",
    sketch: str = "randomized",
    rng: np.random.Generator | int | None = None,
    out: Any = None,
    drift: Any = None,
) -> Any:
    """Apply the additive direction ``G`` to U, kept unitary: sketch ``G ~= A B^H``, then update.

    ``G`` is the step itself (for gradient descent pass ``-learning_rate * gradient``);
    ``update="project"`` returns ``polar(U + A B^H)`` and ``update="transport"`` returns
    ``U expm(skew(U^H A B^H))``.

    Parameters
    ----------
    U : array, shape (..., N, N)
        Unitary or orthogonal matrix (or stack).
    G : array, shape (..., N, N), or tuple (X, Y)
        The step direction, dense or factored as ``X @ Y^H`` with ``X, Y: (..., N, m)``.
    rank : int, default 1
        Rank k of the sketch, ``1 <= k <= N``.
    update : {"transport", "project"}
        projUNN-T or projUNN-D.
    sketch : {"randomized", "lsi", "column", "exact"}
        Sketch method (see :func:`unitary_update.sketch`).
    rng : numpy.random.Generator, int or None
        Seed or generator for the sketch.
    out : array, optional
        ``out=U`` updates in place (the rules of :func:`unitary_update.project`); ``out`` is
        checked before the sketch runs.  G sharing memory with ``out`` is safe: the sketch
        reads G completely before anything is written.
    drift : DriftControl, optional
        Drift policy (:class:`unitary_update.DriftControl`, or any object with a
        ``maybe_retract(U)`` method) applied to the result after the update; the policy counts
        the steps itself.  Default None: no drift control, the result is exactly the update.
        ``uu.DriftControl()`` (defaults) keeps float32 matrices within a unitarity error of
        about ``N eps / 4`` indefinitely (``2 N eps`` in double precision); without it the
        error of a float32 matrix grows like a random walk, about ``4e-7 sqrt(t)`` after t
        steps at N = 128 (``1.3e-4`` after 100,000 steps, for both updates;
        ``python -m unitary_update soak``).

    Returns
    -------
    array, shape (..., N, N)
        The updated unitary matrix, in U's dtype and array library.

    Raises
    ------
    TypeError
        For non-array inputs, non-floating dtypes, a complex G with a real U, or a ``drift``
        without a ``maybe_retract`` method.
    ValueError
        For mismatched shapes, a rank out of range, unknown ``update`` or ``sketch`` names, or
        NaN/Inf in any input (nothing is written).
    SingularUpdateError
        If LAPACK fails to converge (not expected for finite input).

    Notes
    -----
    All or nothing: when the call raises, U, ``out`` and a Generator ``rng`` are as they were
    (the generator's state is restored).  ``drift`` runs after the update has been written.

    Cost: the sketch (O(N^2 k) for a dense G, O(N m k) for a factored one) plus the update
    (O(N^2 k)).  With ``drift``: the policy's estimate (O(N^2)) on the steps it checks and an
    O(N^3) retraction on the rare steps it retracts.

    Examples
    --------
    >>> import numpy as np, unitary_update as uu
    >>> U = uu.random_unitary(32, dtype=np.float64, rng=0)
    >>> grad = np.random.default_rng(1).standard_normal((32, 32))
    >>> V = uu.step(U, -0.01 * grad, rank=2, update="project", rng=2)
    >>> uu.unitarity_error(V) < 1e-12
    True
    >>> drift = uu.DriftControl(every=10)              # re-unitarise every 10th call
    >>> for _ in range(10):
    ...     _ = uu.step(U, -0.01 * grad, rng=3, out=U, drift=drift)
    >>> drift.retractions
    1
    """
    check_drift(drift)
    update = check_choice(update, UPDATES, "update")
    sketch = check_choice(sketch, SKETCH_METHODS, "sketch method")
    if is_jax(U, G, out):  # JAX arrays and tracers stay in JAX; rng may also be a JAX PRNG key
        from .jax import _core as _jax_core

        numpy_gen = rng if isinstance(rng, np.random.Generator) else None
        saved_jax: Any = None if numpy_gen is None else numpy_gen.bit_generator.state
        try:
            return _jax_core.public_step(U, G, rank, update, sketch, rng, out, drift)
        except BaseException:
            if numpy_gen is not None:
                numpy_gen.bit_generator.state = saved_jax  # as on the NumPy path: a failed step draws nothing
            raise
    with compute_context(U):  # one device and stream for the checks, the sketch and the update
        Uc, _ = to_compute(U, "U")
        n = check_square(Uc, "U")
        parts = G if isinstance(G, tuple) else (G,)
        batches: list[tuple[int, ...]] = [tuple(Uc.shape[:-2])]
        names: list[str] = []
        full_shapes: list[tuple[int, ...]] = []
        for i, part in enumerate(parts):
            name = "G" if len(parts) == 1 else f"G[{i}]"
            Gc, _ = to_compute(part, name)
            names.append(name)
            full_shapes.append(tuple(Gc.shape))
            if Gc.ndim >= 2 and Gc.shape[-2] != n:
                raise ValueError(f"{name} has shape {tuple(Gc.shape)} but U is {n} x {n}")
            if not isinstance(G, tuple) and Gc.ndim >= 2 and Gc.shape[-1] != n:
                raise ValueError(f"G has shape {tuple(Gc.shape)} but U is {n} x {n}")
            if getattr(Gc.dtype, "kind", "") == "c" and Uc.dtype.kind != "c":
                raise TypeError(f"{name} is complex ({Gc.dtype}) but U is real ({Uc.dtype})")
            batches.append(tuple(Gc.shape[:-2]) if Gc.ndim >= 2 else ())
        check_rank(rank, n)
        batch = _broadcast(batches)
        if batch is None and len(parts) <= 2 and _broadcast(batches[1:]) is not None:
            # G's batch against U's (X against Y, or a bad pair, is reported by the sketch, naming them)
            found = ", ".join(f"{name} {shape}" for name, shape in zip(names, full_shapes, strict=True))
            raise ValueError(f"batch dimensions do not broadcast: U {tuple(Uc.shape)}, {found}")
        if out is not None:  # out is checked before the sketch draws from rng
            target, _ = to_compute(out, "out", writable=True)
            if batch is not None:
                check_out(target, Uc, (*batch, n, n))
        generator = rng if isinstance(rng, np.random.Generator) else None
        saved: Any = None if generator is None else generator.bit_generator.state
        try:
            try:
                A, B = _sketch(G, rank, method=sketch, rng=rng)
            except FactorsOverflowError:
                # a factored G = X Y^H beyond the square of single precision's range: its factors fit
                # in double precision, and the update rescales double factors for a single-precision U
                wide = _widened(G)
                if wide is None:
                    raise
                A, B = _sketch(wide, rank, method=sketch, rng=rng)  # the failed try restored rng
            result = _UPDATE_FUNCTIONS[update](U, A, B, out=out)
        except BaseException:
            if generator is not None:
                generator.bit_generator.state = saved  # a failed step leaves the generator as it was
            raise
        if drift is not None:
            drift.maybe_retract(result)
        return result


def _broadcast(batches: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The broadcast of the batch shapes, or None when they do not broadcast."""
    try:
        return tuple(np.broadcast_shapes(*batches))
    except ValueError:
        return None


def _widened(G: Any) -> Any:
    """A factored single-precision G as float64/complex128 NumPy/CuPy arrays (O(N m)); None otherwise."""
    if not isinstance(G, tuple):
        return None
    parts = [to_compute(part, "G")[0] for part in G]
    if any(np.dtype(p.dtype) not in (np.float32, np.complex64) for p in parts):
        return None
    return tuple(p.astype(np.complex128 if p.dtype.kind == "c" else np.float64) for p in parts)


class _AtStep:
    """A drift policy called with the caller's step number: ``maybe_retract(U)`` passes ``step=``."""

    __slots__ = ("policy", "step")

    def __init__(self, policy: Any, step: int) -> None:
        self.policy, self.step = policy, step

    def maybe_retract(self, U: Any) -> Any:
        return self.policy.maybe_retract(U, step=self.step)


def drift_at(policy: Any, step: int) -> Any:
    """``policy`` (an object with ``maybe_retract(U, *, step)``) as the ``drift`` of :func:`step`, at ``step``.

    For callers that keep their own step counter (an optimizer, a layer); None stays None.
    """
    return None if policy is None else _AtStep(policy, step)
