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

from .._validation import check_choice, check_int, unitary_tolerance
from ..metrics import unitarity_error
from . import _core

__all__ = ["ProjUNNState", "RetractState", "projunn", "retract_every", "scale_by_projunn"]


class ProjUNNState(NamedTuple):
    """State of :func:`scale_by_projunn`: the step count and the sketches' PRNG key.

    Parameters
    ----------
    count : jax.Array
        Steps taken (int32 scalar).
    key : jax.Array
        The raw PRNG key data (``uint32``, ``jax.random.key_data``) of the next step's sketches,
        split once per step.  Raw data, as optax's own keyed transformations keep, so that the
        state converts to NumPy (``np.asarray``, ``np.savez``, checkpointers) like any array.

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
    none_over_leaves = []  # a None label over a subtree that holds parameters: no bool for them

    def broadcast(m: Any, p: Any) -> Any:
        if m is None and jax.tree_util.tree_leaves(p):
            none_over_leaves.append(p)
        return jax.tree_util.tree_map(lambda _: m, p)

    try:
        full = jax.tree_util.tree_map(broadcast, labels, params, is_leaf=lambda x: x is None)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"unitary_labels must be a pytree of bools with the structure of params (or a prefix of it), "
            f"or a callable returning one; {err}"
        ) from None
    if none_over_leaves:
        raise TypeError(
            "unitary_labels must hold Python bools (they choose leaves while tracing); got None for a "
            "subtree of params that holds parameters (label it True or False)"
        )
    out = []
    for m in jax.tree_util.tree_leaves(full):
        if not isinstance(m, (bool, np.bool_)):
            raise TypeError(
                f"unitary_labels must hold Python bools (they choose leaves while tracing); got {type(m).__name__}"
            )
        out.append(bool(m))
    return out


def _unitary_leaves(
    unitary_labels: Any, params: Any, updates: Any, who: str, rank: int = 1
) -> tuple[list[Any], list[Any], Any]:
    """The indices of the chosen leaves, their (param, update) pairs, and (treedef, update leaves).

    Each chosen leaf must be a (stack of) N x N matrix with ``1 <= rank <= N``, of a unitary dtype.
    """
    if params is None:
        raise ValueError(f"{who} needs the parameters: call update(updates, state, params)")
    flags = _labels(unitary_labels, params)
    p_leaves, treedef = jax.tree_util.tree_flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    for flag, p, path in zip(flags, p_leaves, _paths(params), strict=True):
        if flag and (jnp.ndim(p) < 2 or p.shape[-1] != p.shape[-2]):
            raise ValueError(f"unitary leaf params{path} must have shape (..., N, N); got {tuple(jnp.shape(p))}")
        if flag and p.shape[-1] == 0:
            raise ValueError(f"unitary leaf params{path} must have N >= 1 (no 0 x 0 matrices); got shape {p.shape}")
        if flag and p.shape[-1] < rank:
            raise ValueError(f"unitary leaf params{path}: rank must satisfy 1 <= rank <= N = {p.shape[-1]}; got {rank}")
        if flag and jnp.result_type(p) not in _UNITARY_DTYPES:
            raise TypeError(
                f"unitary leaf params{path} has dtype {jnp.result_type(p)}; unitary leaves take float32, "
                "float64, complex64 or complex128"
            )
    chosen = [i for i, flag in enumerate(flags) if flag]
    return chosen, [(p_leaves[i], u_leaves[i]) for i in chosen], (treedef, u_leaves)


_UNITARY_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.complex64, np.complex128))


def _paths(params: Any) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _check_unitary_leaves(unitary_labels: Any, params: Any, who: str, rank: int = 1) -> None:
    """ValueError for a chosen leaf that is concrete and not unitary to ``N sqrt(eps)`` (as torch's ProjUNN).

    The updates keep ``W^H W`` as it is (projUNN-T exactly), so a leaf that starts off the
    manifold would stay off it without a word.  Traced leaves (an ``init`` under ``jit``) pass.
    """
    chosen, pairs, _ = _unitary_leaves(unitary_labels, params, params, who, rank)
    paths = _paths(params)
    for i, (p, _) in zip(chosen, pairs, strict=True):
        if _core._is_tracer(p) or p.size == 0:
            continue
        error = unitarity_error(np.asarray(p))
        tol = unitary_tolerance(p.shape[-1], np.finfo(p.dtype).eps)
        if not error <= tol:
            raise ValueError(
                f"unitary leaf params{paths[i]} is not unitary: ||W^H W - I||_F = {error:.3g} > {tol:.3g} "
                "(N sqrt(eps)); start from a unitary matrix (unitary_update.random_unitary, "
                "unitary_update.jax.retract), or pass check_unitary=False"
            )


# hyperparameters that fix shapes or Python control flow: static under optax.inject_hyperparams
_STATIC_ARGS = ("rank", "seed", "retract_every", "oversampling", "power_iterations", "check_unitary")


def _static_int(value: Any, name: str, **bounds: Any) -> int:
    """:func:`check_int`, with the remedy when optax.inject_hyperparams has turned ``value`` into an array."""
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        raise TypeError(
            f"{name} must be a Python integer (it fixes array shapes); got a JAX array. Under "
            f"optax.inject_hyperparams pass static_args={_STATIC_ARGS!r}"
        )
    return check_int(value, name, **bounds)


def _sketch_options(oversampling: Any, power_iterations: Any) -> dict[str, int]:
    named = {"oversampling": oversampling, "power_iterations": power_iterations}
    return {k: _static_int(v, k, low=0) for k, v in named.items() if v is not None}


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, jax.Array) and value.shape == () and not _core._is_tracer(value):
        return bool(value)  # optax.inject_hyperparams turns Python bools into arrays
    raise TypeError(f"{name} must be True or False; got {value!r}")


def scale_by_projunn(
    *,
    unitary_labels: Any,
    rank: int = 1,
    update: str = "transport",
    sketch: str = "randomized",
    seed: int = 0,
    oversampling: int | None = None,
    power_iterations: int | None = None,
    check_unitary: bool = True,
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
    oversampling, power_iterations : int, optional
        Options of the randomized sketch (its defaults when None; an error for other sketches).
    check_unitary : bool, default True
        ``init`` refuses a chosen leaf that is concrete and further than ``N sqrt(eps)`` from
        unitary (``||W^H W - I||_F``): the updates would keep it exactly that far off.

    Returns
    -------
    optax.GradientTransformation
        Its ``update`` needs ``params``.

    Raises
    ------
    TypeError
        For a non-integer ``rank``, ``seed`` or sketch option, or a sketch option the sketch
        does not take; at ``init`` or ``update`` time, for a chosen leaf whose dtype is not
        float32, float64, complex64 or complex128.
    ValueError
        For ``rank < 1`` or an unknown ``update`` or ``sketch``; at ``init`` time for a leaf
        that is not unitary (``check_unitary``); at ``update`` time, when ``params`` is missing
        or a chosen leaf is not square.

    Notes
    -----
    Cost per unitary N x N leaf: the sketch (O(N^2 k)) plus the O(N^2 k) update.

    **Put it last in a chain** (only :func:`retract_every` may follow): its output ``V - U`` is
    what makes ``optax.apply_updates`` land on the unitary V, and any transformation after it
    that scales or averages updates (``optax.scale``, ``optax.ema``,
    ``optax.contrib.reduce_on_plateau``, a schedule) moves the leaf off the manifold.  Place
    such transformations before it: ``optax.chain(base, scale_by_learning_rate(lr),
    reduce_on_plateau(...), scale_by_projunn(...))``.

    Under ``optax.inject_hyperparams`` pass ``static_args=("rank", "seed", "retract_every",
    "oversampling", "power_iterations", "check_unitary")``: they fix shapes or control flow.

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
    rank = _static_int(rank, "rank", low=1)
    seed = _static_int(seed, "seed")
    sketch_options = _sketch_options(oversampling, power_iterations)
    _core._check_options(sketch, sketch_options)
    check_unitary = _as_bool(check_unitary, "check_unitary")

    def init_fn(params: Any) -> ProjUNNState:
        if check_unitary:
            _check_unitary_leaves(unitary_labels, params, "scale_by_projunn", rank)
        else:  # bad labels and shapes fail here, not later
            _unitary_leaves(unitary_labels, params, params, "scale_by_projunn", rank)
        return ProjUNNState(count=jnp.zeros([], jnp.int32), key=jax.random.key_data(jax.random.key(seed)))

    def update_fn(updates: Any, state: ProjUNNState, params: Any = None) -> tuple[Any, ProjUNNState]:
        chosen, pairs, (treedef, u_leaves) = _unitary_leaves(unitary_labels, params, updates, "scale_by_projunn", rank)
        key = state.key  # raw key data; a typed key (states saved before 0.x) is taken as it is
        key, sub = jax.random.split(
            key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)
        )
        u_leaves = list(u_leaves)
        for i, (U, D) in zip(chosen, pairs, strict=True):
            source = _core._Source(jax.random.fold_in(sub, i))
            A, B = _core.sketch_with(D.astype(U.dtype), rank, sketch, source, sketch_options)
            V = _core.update(update, U, A, B)
            u_leaves[i] = V - U
        new_state = ProjUNNState(count=optax.safe_increment(state.count), key=jax.random.key_data(key))
        return treedef.unflatten(u_leaves), new_state

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
    oversampling: int | None = None,
    power_iterations: int | None = None,
    check_unitary: bool = True,
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
    oversampling, power_iterations : int, optional
        Options of the randomized sketch (its defaults when None).
    check_unitary : bool, default True
        ``init`` refuses a unitary leaf that is not unitary to ``N sqrt(eps)``
        (:func:`scale_by_projunn`).

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

    Nothing that rescales updates may follow it in a chain (see :func:`scale_by_projunn`):
    chain schedules and ``reduce_on_plateau`` in front of it, or use ``base``.  Under
    ``optax.inject_hyperparams`` pass the integer and bool options as ``static_args``.

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
            unitary_labels=unitary_labels,
            rank=rank,
            update=update,
            sketch=sketch,
            seed=seed,
            oversampling=oversampling,
            power_iterations=power_iterations,
            check_unitary=check_unitary,
        ),
    ]
    if retract_every is not None:
        retract_every = _static_int(retract_every, "retract_every", low=1)
        parts.append(_retract_every(retract_every, unitary_labels=unitary_labels, method=retract_method))
    else:
        check_choice(retract_method, _core.RETRACT_METHODS, "retraction method")
    return optax.chain(*parts)


_retract_every = retract_every
