r"""optax transformations: projUNN for the unitary leaves of a parameter tree, and periodic retraction.

:func:`projunn` chains three pieces, in the style of ``optax/_src/alias.py``:

1. ``base`` (default ``optax.scale_by_rms(decay=0.99, eps=1e-8, eps_in_sqrt=False)``, PyTorch's
   RMSprop scaling, as :class:`unitary_update.optim.RMSprop`) on every leaf;
2. ``optax.scale_by_learning_rate(learning_rate)``: the Euclidean step, ``-lr * direction``;
3. :func:`scale_by_projunn`: for the leaves chosen by ``unitary_labels`` the step ``D`` is sketched
   to rank k and applied with projUNN-T or projUNN-D, ``V = step(U, D)``, and the update becomes
   ``V - U``; the other leaves keep the base rule's step.

optax applies updates by addition (``optax.apply_updates``: ``U + (V - U)``), which in float32
rounds away from ``V`` by about ``eps |U|`` per step; :func:`retract_every` (or ``projunn(...,
retract_every=n)``) replaces every n-th update of the unitary leaves by ``retract(U + u) - U``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._validation import check_choice, check_int
from . import _core

__all__ = ["ProjUNNState", "RetractState", "projunn", "retract_every", "scale_by_projunn"]


class ProjUNNState(NamedTuple):
    """State of :func:`scale_by_projunn`: the step count and the sketches' PRNG key.

    Parameters
    ----------
    count : jax.Array
        Steps taken (int32 scalar).
    key : jax.Array
        The PRNG key of the next step's sketches (split once per step).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from unitary_update import jax as uj
    >>> state = uj.scale_by_projunn(unitary_labels=True, seed=1).init({"W": jnp.eye(3)})
    >>> int(state.count)
    0
    """

    count: Any
    key: Any


class RetractState(NamedTuple):
    """State of :func:`retract_every`: the step count.

    Parameters
    ----------
    count : jax.Array
        Steps taken (int32 scalar); the retraction runs when it reaches a multiple of n.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from unitary_update import jax as uj
    >>> int(uj.retract_every(10, unitary_labels=True).init({"W": jnp.eye(3)}).count)
    0
    """

    count: Any


def _labels(unitary_labels: Any, params: Any) -> list[bool]:
    """One Python bool per leaf of ``params``: a pytree of bools (a prefix of params) or a callable."""
    labels = unitary_labels(params) if callable(unitary_labels) else unitary_labels
    try:
        full = jax.tree_util.tree_map(
            lambda m, p: jax.tree_util.tree_map(lambda _: m, p), labels, params, is_leaf=lambda x: x is None
        )
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"unitary_labels must be a pytree of bools with the structure of params (or a prefix of it), "
            f"or a callable returning one; {err}"
        ) from None
    out = []
    for m in jax.tree_util.tree_leaves(full):
        if not isinstance(m, (bool, np.bool_)):
            raise TypeError(
                f"unitary_labels must hold Python bools (they choose leaves while tracing); got {type(m).__name__}"
            )
        out.append(bool(m))
    return out


def _unitary_leaves(unitary_labels: Any, params: Any, updates: Any, who: str) -> tuple[list[Any], list[Any], Any]:
    if params is None:
        raise ValueError(f"{who} needs the parameters: call update(updates, state, params)")
    flags = _labels(unitary_labels, params)
    p_leaves, treedef = jax.tree_util.tree_flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for flag, p, path in zip(flags, p_leaves, paths, strict=True):
        if flag and (jnp.ndim(p) < 2 or p.shape[-1] != p.shape[-2]):
            raise ValueError(f"unitary leaf params{path} must have shape (..., N, N); got {tuple(jnp.shape(p))}")
    chosen = [i for i, flag in enumerate(flags) if flag]
    return chosen, [(p_leaves[i], u_leaves[i]) for i in chosen], (treedef, u_leaves)


def scale_by_projunn(
    *,
    unitary_labels: Any,
    rank: int = 1,
    update: str = "transport",
    sketch: str = "randomized",
    seed: int = 0,
    **sketch_options: int,
) -> optax.GradientTransformation:
    r"""Turn the additive steps of unitary leaves into projUNN updates ``step(U, D) - U``.

    For each leaf chosen by ``unitary_labels`` the incoming update ``D`` (already scaled by the
    learning rate and signed: the step to add) is sketched to rank k and applied to the
    parameter U with projUNN-T or projUNN-D (:func:`unitary_update.jax.step`); the outgoing
    update is ``V - U``, so that ``optax.apply_updates`` gives V.  Other leaves pass through.

    Parameters
    ----------
    unitary_labels : pytree of bool, or callable
        ``True`` for the leaves to keep unitary: a pytree with the structure of params (or a
        prefix of it), or a function of params returning one (as in :func:`optax.masked`).
    rank : int, default 1
        Rank k of the sketch.
    update : {"transport", "project"}
        projUNN-T or projUNN-D.
    sketch : {"randomized", "lsi", "column", "exact"}
        Sketch method.
    seed : int, default 0
        Seed of the PRNG key kept in the state; each step splits it, each leaf folds in its
        index.
    **sketch_options : int
        ``oversampling`` and ``power_iterations`` for the randomized sketch.

    Returns
    -------
    optax.GradientTransformation
        Its ``update`` needs ``params``.

    Raises
    ------
    TypeError
        For a non-integer ``rank`` or ``seed``, or an unknown sketch option.
    ValueError
        For ``rank < 1`` or an unknown ``update`` or ``sketch``; at ``update`` time, when
        ``params`` is missing or a chosen leaf is not square.

    Notes
    -----
    Cost per unitary N x N leaf: the sketch (O(N^2 k)) plus the O(N^2 k) update.

    Examples
    --------
    >>> import jax.numpy as jnp, numpy as np, optax, unitary_update as uu
    >>> from unitary_update import jax as uj
    >>> params = {"W": jnp.asarray(uu.random_unitary(8, dtype=np.float32, rng=0)), "b": jnp.zeros(8)}
    >>> tx = uj.scale_by_projunn(unitary_labels={"W": True, "b": False}, rank=2)
    >>> state = tx.init(params)
    >>> steps = {"W": 0.01 * jnp.ones((8, 8)), "b": jnp.ones(8)}
    >>> updates, state = tx.update(steps, state, params)
    >>> new = optax.apply_updates(params, updates)
    >>> uu.unitarity_error(np.asarray(new["W"])) < 1e-5
    True
    """
    update = check_choice(update, _core.UPDATES, "update")
    sketch = check_choice(sketch, _core.SKETCH_METHODS, "sketch method")
    rank = check_int(rank, "rank", low=1)
    seed = check_int(seed, "seed")
    _core._check_options(sketch, sketch_options)

    def init_fn(params: Any) -> ProjUNNState:
        _unitary_leaves(unitary_labels, params, params, "scale_by_projunn")  # bad labels fail here, not later
        return ProjUNNState(count=jnp.zeros([], jnp.int32), key=jax.random.key(seed))

    def update_fn(updates: Any, state: ProjUNNState, params: Any = None) -> tuple[Any, ProjUNNState]:
        chosen, pairs, (treedef, u_leaves) = _unitary_leaves(unitary_labels, params, updates, "scale_by_projunn")
        key, sub = jax.random.split(state.key)
        u_leaves = list(u_leaves)
        for i, (U, D) in zip(chosen, pairs, strict=True):
            source = _core._Source(jax.random.fold_in(sub, i))
            A, B = _core.sketch_with(D.astype(U.dtype), rank, sketch, source, sketch_options)
            V = _core.update(update, U, A, B)
            u_leaves[i] = V - U
        return treedef.unflatten(u_leaves), ProjUNNState(count=optax.safe_increment(state.count), key=key)

    return optax.GradientTransformation(init_fn, update_fn)


def retract_every(n: int, *, unitary_labels: Any, method: str = "polar") -> optax.GradientTransformation:
    """Every ``n``-th step, make the unitary leaves' update land exactly on the manifold.

    On steps ``n, 2n, ...`` the update ``u`` of each chosen leaf U becomes
    ``retract(U + u) - U`` (:func:`unitary_update.jax.retract`); other steps pass through.  Put
    it after :func:`projunn` / :func:`scale_by_projunn` in an ``optax.chain``.  Under ``jit`` the
    choice is a ``lax.cond`` on the step count, so the O(N^3) retraction runs only on those
    steps.

    Parameters
    ----------
    n : int
        Retract every n steps (``n >= 1``).
    unitary_labels : pytree of bool, or callable
        The leaves to retract (as for :func:`scale_by_projunn`).
    method : {"polar", "newton_schulz"}
        The retraction.

    Returns
    -------
    optax.GradientTransformation
        Its ``update`` needs ``params``.

    Raises
    ------
    TypeError
        If ``n`` is not an integer.
    ValueError
        If ``n < 1`` or ``method`` is unknown; at ``update`` time, when ``params`` is missing.

    Notes
    -----
    Float32 matrices updated by addition drift from the manifold like a random walk of
    ``eps`` per step; retracting every 100 steps keeps the unitarity error of small matrices
    near ``N eps`` indefinitely (see ``tests/jax_integration/test_optax.py``).

    Examples
    --------
    >>> import jax.numpy as jnp, numpy as np, optax, unitary_update as uu
    >>> from unitary_update import jax as uj
    >>> params = {"W": jnp.asarray(uu.random_unitary(8, dtype=np.float32, rng=0)) * 1.01}
    >>> tx = uj.retract_every(1, unitary_labels={"W": True})
    >>> updates, _ = tx.update({"W": jnp.zeros((8, 8))}, tx.init(params), params)
    >>> uu.unitarity_error(np.asarray(optax.apply_updates(params, updates)["W"])) < 1e-5
    True
    """
    n = check_int(n, "n", low=1)
    method = check_choice(method, _core.RETRACT_METHODS, "retraction method")

    def init_fn(params: Any) -> RetractState:
        _unitary_leaves(unitary_labels, params, params, "retract_every")  # bad labels fail here, not later
        return RetractState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates: Any, state: RetractState, params: Any = None) -> tuple[Any, RetractState]:
        chosen, pairs, (treedef, u_leaves) = _unitary_leaves(unitary_labels, params, updates, "retract_every")
        count = optax.safe_increment(state.count)
        current = [u for _, u in pairs]

        def retracted() -> list[Any]:
            return [(_core.retract(U + u, method=method) - U).astype(u.dtype) for U, u in pairs]

        if chosen:
            new = jax.lax.cond(count % n == 0, retracted, lambda: current)
            u_leaves = list(u_leaves)
            for i, u in zip(chosen, new, strict=True):
                u_leaves[i] = u
        return treedef.unflatten(u_leaves), RetractState(count=count)

    return optax.GradientTransformation(init_fn, update_fn)


def projunn(
    learning_rate: float | Callable[[Any], Any],
    *,
    unitary_labels: Any,
    base: optax.GradientTransformation | None = None,
    rank: int = 1,
    update: str = "transport",
    sketch: str = "randomized",
    seed: int = 0,
    retract_every: int | None = None,
    retract_method: str = "polar",
    **sketch_options: int,
) -> optax.GradientTransformation:
    r"""projUNN as an optax optimizer: unitary leaves stay unitary, the others follow ``base``.

    ``optax.chain(base, scale_by_learning_rate(learning_rate), scale_by_projunn(...))``, plus
    :func:`retract_every` when ``retract_every`` is given.  Every leaf gets ``base``'s
    direction scaled by ``-learning_rate``; for the leaves chosen by ``unitary_labels`` that
    step ``D`` is sketched to rank k and applied by projUNN-T (``update="transport"``) or
    projUNN-D (``"project"``), and their update is ``step(U, D) - U``.

    Parameters
    ----------
    learning_rate : float or schedule
        The learning rate (a float or an optax schedule of the step count).
    unitary_labels : pytree of bool, or callable
        ``True`` for the leaves to keep unitary (a pytree with the structure of params, or a
        prefix of it, or a function of params returning one, as for :func:`optax.masked`).
    base : optax.GradientTransformation, optional
        The Euclidean preconditioner, *without* the learning rate (e.g.
        ``optax.scale_by_adam()``).  Default: RMSprop scaling
        ``optax.scale_by_rms(decay=0.99, eps=1e-8, eps_in_sqrt=False)``, the rule of
        :class:`unitary_update.optim.RMSprop` (PyTorch's form).
    rank : int, default 1
        Rank k of the sketch.
    update : {"transport", "project"}
        projUNN-T or projUNN-D.
    sketch : {"randomized", "lsi", "column", "exact"}
        Sketch method.
    seed : int, default 0
        Seed of the sketches' PRNG key (kept in the state).
    retract_every : int, optional
        Retract the unitary leaves every this many steps (recommended for float32: optax adds
        updates, which drifts by about ``eps`` per step).
    retract_method : {"polar", "newton_schulz"}
        The retraction used by ``retract_every``.
    **sketch_options : int
        ``oversampling`` and ``power_iterations`` for the randomized sketch.

    Returns
    -------
    optax.GradientTransformation
        Its ``update`` needs ``params``.

    Raises
    ------
    TypeError
        If ``base`` is not a GradientTransformation, or an integer argument is not an integer.
    ValueError
        For an unknown ``update``, ``sketch`` or ``retract_method``, or ``rank < 1``.

    Notes
    -----
    Complex parameters: like every optax rule this adds ``-lr * direction``; ``jax.grad``
    returns the conjugate of the steepest-ascent direction for complex inputs, so pass
    ``jax.tree.map(jnp.conj, grads)`` to descend.  Cost per unitary N x N leaf and step:
    the base rule's O(N^2), the sketch O(N^2 k) and the update O(N^2 k).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np, optax, unitary_update as uu
    >>> from unitary_update import jax as uj
    >>> params = {"W": jnp.asarray(uu.random_unitary(8, dtype=np.float32, rng=0)), "b": jnp.zeros(8)}
    >>> target = jnp.asarray(uu.random_unitary(8, dtype=np.float32, rng=1))
    >>> loss = lambda p: jnp.sum((p["W"] - target) ** 2) + jnp.sum((p["b"] - 1) ** 2)
    >>> tx = uj.projunn(1e-2, unitary_labels=lambda p: {"W": True, "b": False}, rank=2, retract_every=50)
    >>> state = tx.init(params)
    >>> @jax.jit
    ... def train_step(params, state):
    ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...     return optax.apply_updates(params, updates), state
    >>> for _ in range(100):
    ...     params, state = train_step(params, state)
    >>> uu.unitarity_error(np.asarray(params["W"])) < 1e-5
    True
    """
    if base is None:
        base = optax.scale_by_rms(decay=0.99, eps=1e-8, eps_in_sqrt=False)
    elif not isinstance(base, optax.GradientTransformation):
        raise TypeError(f"base must be an optax.GradientTransformation (e.g. optax.scale_by_adam()); got {base!r}")
    parts = [
        base,
        optax.scale_by_learning_rate(learning_rate),
        scale_by_projunn(
            unitary_labels=unitary_labels, rank=rank, update=update, sketch=sketch, seed=seed, **sketch_options
        ),
    ]
    if retract_every is not None:
        parts.append(_retract_every(retract_every, unitary_labels=unitary_labels, method=retract_method))
    else:
        check_choice(retract_method, _core.RETRACT_METHODS, "retraction method")
    return optax.chain(*parts)


_retract_every = retract_every
