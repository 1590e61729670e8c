r"""Optimizers: SGD with momentum, RMSprop and Adam for Euclidean parameters, and projUNN for unitary ones.

A Euclidean optimizer turns a gradient into an additive step (its :meth:`~Optimizer.direction`)
and applies it in place.  :class:`UnitaryOptimizer` asks a Euclidean optimizer for the step of the
unitary parameter U, sketches it to rank k, ``step ~= A B^H`` (:func:`unitary_update.sketch`), and
applies it with :func:`unitary_update.project` (projUNN-D) or :func:`unitary_update.transport`
(projUNN-T), so U stays unitary at every step; the sketch, the update and the optional drift
control are one :func:`unitary_update.step` call.  For plain SGD (no momentum) a factored gradient
``(X, Y)`` is sketched without forming the N x N matrix.

Complex parameters are handled as pairs of real numbers (as PyTorch does): the moment estimates of
RMSprop and Adam are kept separately for the real and imaginary parts.  Gradients follow the
convention ``dL/dRe + i dL/dIm``.

All state lives in :meth:`~Optimizer.state_dict` (arrays and scalars, including the sketch
generator's state), so a checkpoint restores a run exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._config import get_options
from ._sketch import SKETCH_METHODS
from ._step import UPDATES
from ._step import step as _step
from ._validation import (
    NonFiniteError,
    cast_to,
    check_choice,
    check_drift,
    check_finite,
    check_float,
    check_float_dtype,
    check_int,
    check_no_internal_overlap,
    check_square,
    max_abs,
    overlaps,
)
from ._xp import array_namespace, hconj, mark_written, to_compute
from .random import normalize_rng

__all__ = ["OPTIMIZERS", "SGD", "Adam", "Optimizer", "RMSprop", "UnitaryOptimizer", "make_optimizer"]


def _real_view(x: Any) -> Any:
    """The real and imaginary parts of a contiguous complex array as a real array (a view)."""
    if x.dtype.kind != "c":
        return x
    xp = array_namespace(x)
    x = xp.ascontiguousarray(x)
    return x.view(np.float32 if x.dtype == np.complex64 else np.float64)


class Optimizer:
    """Base class: per-parameter state, :meth:`direction`, :meth:`step`, state (de)serialisation.

    Subclasses (:class:`SGD`, :class:`RMSprop`, :class:`Adam`) define the update rule; use one of
    them or :func:`make_optimizer`.

    Every call is all or nothing: gradients are validated (an array of a floating dtype, the
    shape of the parameter and of the stored moments, finite while ``check_finite`` is on)
    before anything changes; the new moments and steps are computed out of place and committed
    last, so a call that raises leaves the moments, step counts and parameters exactly as they
    were.

    Parameters
    ----------
    lr : float
        Learning rate, finite and >= 0.

    Raises
    ------
    TypeError
        If ``lr`` is not a real number.
    ValueError
        If ``lr`` is not finite or is negative.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.optim import SGD
    >>> opt = SGD(0.1, momentum=0.5)
    >>> params = {"w": np.array([1.0, 1.0])}
    >>> opt.step(params, {"w": np.array([1.0, -1.0])})
    >>> params["w"]
    array([0.9, 1.1])
    >>> opt.direction("w", np.array([1.0, -1.0]))   # momentum: m = 0.5 m + g
    array([-0.15,  0.15])
    >>> state = opt.state_dict()
    >>> sorted(state)
    ['meta', 'w/m']
    >>> fresh = SGD(0.1, momentum=0.5)
    >>> fresh.load_state_dict(state)
    >>> fresh.t
    {'w': 2}
    """

    _BUFFERS: tuple[str, ...] = ()  # the names of the per-parameter moment buffers of the rule
    # whether the step count changes the step (Adam's bias correction): then a count without its
    # buffers cannot be loaded, since zero moments with a stale count give a wrong step
    _COUNT_SCALES_STEP = False

    def __init__(self, lr: float) -> None:
        self.lr = check_float(lr, "lr", low=0)
        self.state: dict[str, dict[str, Any]] = {}
        self.t: dict[str, int] = {}

    def _rule(self, g: Any, state: dict[str, Any], t: int) -> tuple[Any, dict[str, Any]]:  # pragma: no cover
        """The direction and the new buffers for a real gradient ``g``; must not modify ``state``."""
        raise NotImplementedError

    def _check_grad(self, name: str, grad: Any) -> Any:
        """``grad`` as a NumPy/CuPy array, checked against the state stored for ``name``."""
        label = f"grad for {name!r}"
        g, _ = to_compute(grad, label)
        check_float_dtype(g, label)
        real = _real_dtype(g.dtype)
        shape = tuple(g.shape) if g.dtype.kind != "c" else ((*g.shape[:-1], 2 * g.shape[-1]) if g.ndim else (2,))
        for key, buf in self.state.get(name, {}).items():
            if tuple(buf.shape) != shape or buf.dtype != real:
                raise ValueError(
                    f"{label} has shape {tuple(g.shape)} and dtype {g.dtype}, which does not match the "
                    f"optimizer's state {name}/{key} (shape {tuple(buf.shape)}, dtype {buf.dtype}; complex "
                    "gradients are stored as pairs of reals)"
                )
        check_finite(g, label)
        return g

    def _compute(self, name: str, grad: Any) -> tuple[Any, dict[str, Any], int]:
        """Validate, then compute (direction, new buffers, new step count) without committing."""
        g = self._check_grad(name, grad)
        state = self.state.get(name, {})
        t = self.t.get(name, 0) + 1
        xp = array_namespace(g)
        with np.errstate(over="ignore", invalid="ignore"):
            if g.dtype.kind == "c":
                real, new = self._rule(_real_view(g.reshape(1) if g.ndim == 0 else g), state, t)
                direction = xp.ascontiguousarray(real).view(g.dtype).reshape(g.shape)
            else:
                direction, new = self._rule(g, state, t)
        if get_options().check_finite and not all(_all_finite(x) for x in (direction, *new.values())):
            raise NonFiniteError(
                f"grad for {name!r} is too large for {g.dtype}: {type(self).__name__}'s step or moments "
                f"overflow (largest |entry| {float(max_abs(xp, g)):.3g}, lr = {self.lr!r}; a smaller lr or "
                "gradient fixes it); nothing was changed"
            )
        return direction, new, t

    def _commit(self, name: str, new: dict[str, Any], t: int) -> None:
        state = self.state.setdefault(name, {})
        for key, value in new.items():
            if key in state and state[key].shape == value.shape and state[key].dtype == value.dtype:
                state[key][...] = value  # in place: no new allocation of the buffer
            else:
                state[key] = value
        self.t[name] = t

    def direction(self, name: str, grad: Any) -> Any:
        """The additive step for parameter ``name`` given its gradient; advances the state.

        Parameters
        ----------
        name : str
            Key of the parameter's state (moments, step count).
        grad : array, any shape, real or complex
            Gradient of the loss with respect to the parameter (``dL/dRe + i dL/dIm`` when
            complex).

        Returns
        -------
        array, same shape and dtype as ``grad``
            A new array, the step to add to the parameter (``p + direction`` descends).

        Raises
        ------
        TypeError
            If ``grad`` is not an array of a floating dtype.
        ValueError
            If ``grad``'s shape or dtype differs from the state stored for ``name``.
        NonFiniteError
            If ``grad`` contains NaN or Inf, or the step or moments would overflow (while
            ``check_finite`` is on).  Nothing is changed.
        """
        direction, new, t = self._compute(name, grad)
        self._commit(name, new, t)
        return direction

    def step(self, params: dict[str, Any], grads: dict[str, Any], names: Any = None) -> None:
        """In place ``params[p] += direction(p, grads[p])`` for each name in ``names`` (default: all grads).

        All or nothing: every gradient and parameter is checked and every direction computed
        before the first parameter or moment is written.  Directions are computed before any
        parameter is written, so gradients that share memory with parameters are read intact.

        Parameters
        ----------
        params : dict of str to array
            The parameters, updated in place.
        grads : dict of str to array
            Their gradients, each of the parameter's shape.
        names : iterable of str, optional
            The parameters to update (default: every key of ``grads``).

        Raises
        ------
        KeyError
            If a name has no parameter or no gradient.
        TypeError
            If a parameter or gradient is not an array of a floating dtype, or a gradient is
            complex while its parameter is real.
        ValueError
            If a gradient's shape differs from its parameter's, a parameter is read-only, has
            overlapping memory, or shares memory with another parameter or with the optimizer's
            state.
        NonFiniteError
            If a gradient contains NaN or Inf (while ``check_finite`` is on).
        """
        names = list(grads if names is None else names)
        planned: list[tuple[str, Any, Any]] = []
        for name in names:
            if name not in params:
                raise KeyError(f"no parameter {name!r} in params (keys: {sorted(params)})")
            if name not in grads:
                raise KeyError(f"no gradient {name!r} in grads (keys: {sorted(grads)})")
            label = f"params[{name!r}]"
            p, _ = to_compute(params[name], label, writable=True)
            check_float_dtype(p, label)
            g, _ = to_compute(grads[name], f"grads[{name!r}]")
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"grads[{name!r}] has shape {tuple(g.shape)} but {label} has {tuple(p.shape)}")
            if getattr(g.dtype, "kind", "") == "c" and p.dtype.kind != "c":
                raise TypeError(f"grads[{name!r}] is complex ({g.dtype}) but {label} is real ({p.dtype})")
            flags = getattr(p, "flags", None)
            if flags is not None and not getattr(flags, "writeable", True):
                raise ValueError(f"{label} is read-only")
            check_no_internal_overlap(p, label)
            for other_name, other, _ in planned:
                if overlaps(p, other):
                    raise ValueError(f"{label} shares memory with params[{other_name!r}]; each would be updated twice")
            for key, buf in ((f"{n}/{k}", b) for n, st in self.state.items() for k, b in st.items()):
                if overlaps(p, buf):
                    raise ValueError(f"{label} shares memory with the optimizer's state {key}")
            planned.append((name, p, g))
        results = []
        for name, p, g in planned:
            direction, new, t = self._compute(name, g)
            # a step in a wider dtype than the parameter's (float64 grad, float32 param) must fit it
            # (a device array with check_finite off is cast unchecked: no host read on a hot path)
            if get_options().check_finite or array_namespace(direction) is np:
                direction = cast_to(direction, p.dtype, f"the step for params[{name!r}]", f"params[{name!r}]")
            else:
                direction = direction.astype(p.dtype, copy=False)
            results.append((name, p, direction, new, t))
        # everything that can fail has run: commit moments, step counts, then the parameters
        for name, p, direction, new, t in results:
            self._commit(name, new, t)
            p += direction
            mark_written(params[name])  # torch: bump the version counter, as an in-place op would

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state, for a checkpoint.

        Returns
        -------
        dict of str to array or str
            Copies of the buffers under ``"<param>/<buffer>"`` keys plus ``"meta"``: a JSON
            string of the scalars (step counts, learning rate, type).  A snapshot: later steps
            do not change it, so it restores the buffers and step counts of one moment.
        """
        out: dict[str, Any] = {f"{p}/{k}": v.copy() for p, st in self.state.items() for k, v in st.items()}
        out["meta"] = json.dumps({"t": self.t, "lr": self.lr, "type": type(self).__name__})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (arrays are copied).

        All or nothing: everything is read and checked before the optimizer changes.

        Parameters
        ----------
        state : dict of str to array or str
            As returned by :meth:`state_dict` of an optimizer of the same type (a ``"meta"``
            value may also be a 0-d string array, as read back from an ``.npz`` file).

        Raises
        ------
        ValueError
            If ``state`` was saved by an optimizer of another type, or its ``"meta"`` entry is
            missing or malformed (a step count that is not an integer >= 0), a key is not
            ``"<param>/<buffer>"`` with one of this optimizer's buffers, a parameter lacks one of
            its buffers or has buffers of different shapes, a buffer has NaN/Inf
            (:class:`~unitary_update.NonFiniteError`, while ``check_finite`` is on) or a
            negative second moment, a parameter with buffers has a step count of 0, or (Adam,
            whose step depends on the count) a parameter with a step count has no buffers.
        TypeError
            If a buffer is not an array of a real floating dtype (float32 or float64).
        """
        if "meta" not in state:
            raise ValueError("state has no 'meta' entry; expected what state_dict returned")
        try:
            meta = json.loads(str(state["meta"]))
            kind = meta["type"]
            t = {str(k): check_int(v, f"step count t[{k!r}] (in meta)", low=0) for k, v in meta["t"].items()}
            lr = check_float(meta["lr"], "lr (in meta)", low=0)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"state's 'meta' entry is malformed ({type(err).__name__}: {err})") from None
        if kind != type(self).__name__:
            raise ValueError(f"state is for a {kind} optimizer, not {type(self).__name__}")
        buffers: dict[str, dict[str, Any]] = {}
        for key, value in state.items():
            if key == "meta":
                continue
            if not isinstance(key, str) or "/" not in key:
                raise ValueError(f"state key {key!r} is not '<param>/<buffer>'")
            p, buf = key.rsplit("/", 1)
            if buf not in self._BUFFERS:
                expected = ", ".join(repr(b) for b in self._BUFFERS) or "none"
                raise ValueError(
                    f"state key {key!r}: {type(self).__name__} has no buffer {buf!r} (its buffers: {expected})"
                )
            label = f"state[{key!r}]"
            array, _ = to_compute(value, label)
            check_float_dtype(array, label)
            if array.dtype.kind == "c":
                raise TypeError(f"{label} has dtype {array.dtype}; buffers are real (float32 or float64)")
            check_finite(array, label)
            if buf == "v" and array.size and float(array_namespace(array).min(array)) < 0:
                raise ValueError(f"{label} (a second moment) has negative entries; expected >= 0")
            buffers.setdefault(p, {})[buf] = array_namespace(array).array(array, copy=True)
        for p, bufs in buffers.items():
            missing = [b for b in self._BUFFERS if b not in bufs]
            if missing:
                raise ValueError(
                    f"state has {sorted(bufs)} for {p!r} but not {missing}; expected all of {list(self._BUFFERS)}"
                )
            layouts = {(tuple(b.shape), b.dtype) for b in bufs.values()}
            if len(layouts) > 1:
                raise ValueError(f"state's buffers for {p!r} differ in shape or dtype: {sorted(map(str, layouts))}")
            if t.get(p, 0) < 1:
                raise ValueError(f"state has buffers for {p!r} but its step count t[{p!r}] (in meta) is {t.get(p, 0)}")
        for p, count in t.items():
            if count > 0 and self._COUNT_SCALES_STEP and p not in buffers:
                raise ValueError(
                    f"state has the step count t[{p!r}] = {count} (in meta) but no buffers for {p!r}; "
                    f"{type(self).__name__} keeps {list(self._BUFFERS)} for every parameter it has stepped, "
                    "and its step depends on the count (a state saved by another optimizer, or edited)"
                )
        self.t, self.lr, self.state = t, lr, buffers


def _real_dtype(dtype: Any) -> Any:
    dt = np.dtype(dtype)
    return np.dtype(np.float32 if dt == np.complex64 else np.float64) if dt.kind == "c" else dt


def _all_finite(x: Any) -> bool:
    """Whether every entry is finite, by two reductions (no temporary of x's size)."""
    if x.size == 0:
        return True
    xp = array_namespace(x)
    return bool(xp.isfinite(xp.max(x))) and bool(xp.isfinite(xp.min(x)))


class SGD(Optimizer):
    r"""Gradient descent with (heavy-ball) momentum: ``m <- mu m + g``, step ``-lr m``.

    Parameters
    ----------
    lr : float
        Learning rate, finite and >= 0.
    momentum : float, default 0
        ``mu`` in [0, 1).

    Raises
    ------
    TypeError
        If a setting is not a real number.
    ValueError
        If a setting is out of its range (the message names it and the range).

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.optim import SGD
    >>> p = {"w": np.array([1.0, 2.0])}
    >>> SGD(0.5).step(p, {"w": np.array([1.0, 1.0])}); p["w"]
    array([0.5, 1.5])
    """

    _BUFFERS = ("m",)

    def __init__(self, lr: float, momentum: float = 0.0) -> None:
        super().__init__(lr)
        self.momentum = check_float(momentum, "momentum", low=0, high=1, open_high=True)

    def _rule(self, g: Any, state: dict[str, Any], t: int) -> tuple[Any, dict[str, Any]]:
        if self.momentum == 0:
            return -self.lr * g, {}
        m = g.copy() if "m" not in state else state["m"] * self.momentum + g
        return -self.lr * m, {"m": m}


class RMSprop(Optimizer):
    r"""RMSprop (PyTorch's form): ``v <- alpha v + (1 - alpha) g^2``, step ``-lr g / (sqrt(v) + eps)``.

    Parameters
    ----------
    lr : float
        Learning rate, finite and >= 0.
    alpha : float, default 0.99
        Smoothing constant, in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, finite and > 0.

    Raises
    ------
    TypeError
        If a setting is not a real number.
    ValueError
        If a setting is out of its range (the message names it and the range).

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.optim import RMSprop
    >>> opt = RMSprop(0.1)
    >>> d = opt.direction("w", np.array([2.0, -3.0]))   # first step: -lr g / (0.1 |g|)
    >>> np.round(d, 6)
    array([-1.,  1.])
    """

    _BUFFERS = ("v",)

    def __init__(self, lr: float, alpha: float = 0.99, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.alpha = check_float(alpha, "alpha", low=0, high=1, open_high=True)
        self.eps = check_float(eps, "eps", low=0, open_low=True)

    def _rule(self, g: Any, state: dict[str, Any], t: int) -> tuple[Any, dict[str, Any]]:
        xp = array_namespace(g)
        v = state["v"] * self.alpha if "v" in state else xp.zeros_like(g)
        v += (1 - self.alpha) * (g * g)
        return (-self.lr) * g / (xp.sqrt(v) + self.eps), {"v": v}


class Adam(Optimizer):
    r"""Adam: bias-corrected first and second moments, step ``-lr m_hat / (sqrt(v_hat) + eps)``.

    Parameters
    ----------
    lr : float
        Learning rate, finite and >= 0.
    betas : tuple of two floats, default (0.9, 0.999)
        Decay rates of the two moments, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, finite and > 0.

    Raises
    ------
    TypeError
        If a setting is not a real number, or ``betas`` is not a sequence.
    ValueError
        If a setting is out of its range, or ``betas`` does not have exactly two entries.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.optim import Adam
    >>> np.round(Adam(0.01).direction("w", np.array([5.0, -0.1])), 6)   # first step: -lr sign(g)
    array([-0.01,  0.01])
    """

    _BUFFERS = ("m", "v")
    _COUNT_SCALES_STEP = True

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(lr)
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence):
            raise TypeError(
                f"betas must be a pair of numbers (beta1, beta2), each in [0, 1); got {betas!r} of type "
                f"{type(betas).__name__}"
            )
        if len(betas) != 2:
            raise ValueError(f"betas must be exactly two numbers (beta1, beta2), each in [0, 1); got {len(betas)}")
        b1, b2 = (check_float(beta, f"betas[{i}]", low=0, high=1, open_high=True) for i, beta in enumerate(betas))
        self.betas = (b1, b2)
        self.eps = check_float(eps, "eps", low=0, open_low=True)

    def _rule(self, g: Any, state: dict[str, Any], t: int) -> tuple[Any, dict[str, Any]]:
        xp = array_namespace(g)
        b1, b2 = self.betas
        if "m" in state:
            m, v = state["m"] * b1, state["v"] * b2
        else:
            m, v = xp.zeros_like(g), xp.zeros_like(g)
        m += (1 - b1) * g
        v += (1 - b2) * (g * g)
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return (-self.lr) * m_hat / (xp.sqrt(v_hat) + self.eps), {"m": m, "v": v}


_OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam}
OPTIMIZERS = tuple(_OPTIMIZERS)  # the names make_optimizer accepts


def make_optimizer(name: str, lr: float, **options: Any) -> Optimizer:
    """Build ``"sgd" | "rmsprop" | "adam"`` with learning rate ``lr`` (and that class's options).

    Parameters
    ----------
    name : {"sgd", "rmsprop", "adam"}
        The optimizer.
    lr : float
        Learning rate, finite and >= 0.
    **options
        Keyword arguments of that class (``momentum`` for SGD; ``alpha``, ``eps`` for RMSprop;
        ``betas``, ``eps`` for Adam).

    Returns
    -------
    Optimizer
        A new :class:`SGD`, :class:`RMSprop` or :class:`Adam`.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones).

    Examples
    --------
    >>> from unitary_update.optim import make_optimizer
    >>> type(make_optimizer("rmsprop", 1e-3)).__name__
    'RMSprop'
    """
    return _OPTIMIZERS[check_choice(name, OPTIMIZERS, "optimizer", phrasing="one of")](lr, **options)


class UnitaryOptimizer:
    r"""projUNN for a unitary parameter: a Euclidean optimizer's step, sketched to rank k, kept unitary.

    Each :meth:`step` computes the additive step ``D`` of ``base`` (e.g. RMSprop's
    ``-lr g / (sqrt(v) + eps)``), sketches ``D ~= A B^H`` to rank ``rank``, and replaces U in place
    by ``project(U, A, B)`` or ``transport(U, A, B)``.

    Parameters
    ----------
    base : Optimizer
        Supplies the step direction and holds its state (moments) for U.
    rank : int, default 1
        Rank k of the sketch.
    update : {"project", "transport"}
        projUNN-D or projUNN-T.
    sketch : {"randomized", "lsi", "column", "exact"}
        Sketch method (see :func:`unitary_update.sketch`).
    rng : numpy.random.Generator, int or None
        Seed or generator of the sketches; its state is part of :meth:`state_dict`.
    drift : object, optional
        Anything with ``maybe_retract(U, *, step: int) -> bool``, such as
        :class:`unitary_update.DriftControl`; called after each update with the step
        count (1, 2, ...).  Off (None) by default.

    Raises
    ------
    ValueError
        For an unknown ``update`` or ``sketch``, or ``rank < 1``.
    TypeError
        If ``base`` is not an :class:`Optimizer`, ``rank`` is not an integer or ``drift`` has no
        ``maybe_retract``.

    Notes
    -----
    Cost per step: the base optimizer's O(N^2) elementwise work, the sketch (O(N^2 k), or
    O(N m k) for a factored gradient with SGD) and the O(N^2 k) update.

    Examples
    --------
    >>> import numpy as np, unitary_update as uu
    >>> from unitary_update.optim import RMSprop, UnitaryOptimizer
    >>> U = uu.random_unitary(16, dtype=np.float64, rng=0)
    >>> opt = UnitaryOptimizer(RMSprop(1e-2), rank=2, update="transport", rng=1)
    >>> opt.step(U, np.random.default_rng(2).standard_normal((16, 16)))
    >>> uu.unitarity_error(U) < 1e-12
    True
    """

    def __init__(
        self,
        base: Optimizer,
        *,
        rank: int = 1,
        update: str = "project",
        sketch: str = "randomized",
        rng: np.random.Generator | int | None = None,
        drift: Any = None,
    ) -> None:
        if not isinstance(base, Optimizer):
            raise TypeError(f"base must be an Optimizer (SGD, RMSprop, Adam); got {type(base).__name__}")
        self.base = base
        self.update = check_choice(update, UPDATES, "update", phrasing="either")
        self.sketch = check_choice(sketch, SKETCH_METHODS, "sketch", phrasing="one of")
        check_drift(drift)
        self.rank = check_int(rank, "rank", low=1)
        self.rng = normalize_rng(rng)
        self.drift = drift
        self.steps = 0

    def step(self, U: Any, grad: Any, name: str = "W") -> None:
        """Update ``U`` in place from its gradient (dense N x N, or a factored pair ``(X, Y)``).

        All or nothing: U and the gradient are checked, and the base rule's new moments
        computed, before anything changes; the moments, step counts and the sketch generator
        are committed only after U has been updated.  When the call raises, U, the base
        optimizer's state, :attr:`steps` and the generator are exactly as before.  The drift
        policy runs last, on the updated U.

        Parameters
        ----------
        U : array, shape (N, N)
            The unitary (or orthogonal) parameter, updated in place.
        grad : array, shape (N, N), or tuple of two arrays of shape (N, m)
            The gradient of the loss with respect to ``U``, dense or factored as
            ``(X, Y)`` with gradient ``X @ Y^H``.
        name : str, default "W"
            Keys the base optimizer's state for this parameter.

        Raises
        ------
        TypeError
            If U or the gradient is not an array of a floating dtype, or the gradient is
            complex while U is real.
        ValueError
            If shapes do not match, U is read-only or has overlapping memory, or the gradient
            (or U) contains NaN or Inf.
        """
        Uc, _ = to_compute(U, "U", writable=True)
        n = check_square(Uc, "U")
        flags = getattr(Uc, "flags", None)  # U is written in place: writable, no internal overlap
        if flags is not None and not getattr(flags, "writeable", True):
            raise ValueError("U is read-only; UnitaryOptimizer.step updates U in place")
        check_no_internal_overlap(Uc, "U")
        X: Any = None
        Y: Any = None
        G: Any = None
        if isinstance(grad, tuple):
            if len(grad) != 2:
                raise ValueError(f"a factored grad must be a pair (X, Y) meaning X @ Y^H; got a tuple of {len(grad)}")
            X, Y = (to_compute(part, f"grad[{i}]")[0] for i, part in enumerate(grad))
            for x, label in ((X, "grad[0] (X)"), (Y, "grad[1] (Y)")):
                check_float_dtype(x, label)
                if x.ndim < 2 or x.shape[-2] != n:
                    raise ValueError(f"{label} has shape {tuple(x.shape)}; expected (..., {n}, m) for U of size {n}")
                if x.dtype.kind == "c" and Uc.dtype.kind != "c":
                    raise TypeError(f"{label} is complex ({x.dtype}) but U is real ({Uc.dtype})")
                check_finite(x, label)
            if X.shape[-1] != Y.shape[-1]:
                raise ValueError(f"grad's X and Y must have the same number of columns; got {X.shape}, {Y.shape}")
            try:  # U is updated in place: X Y^H must broadcast to U's batch exactly
                batch = np.broadcast_shapes(Uc.shape[:-2], X.shape[:-2], Y.shape[:-2])
            except ValueError:
                batch = None
            if batch != tuple(Uc.shape[:-2]):
                raise ValueError(
                    f"grad's batch dimensions must broadcast to U's: U {tuple(Uc.shape)}, X {tuple(X.shape)}, "
                    f"Y {tuple(Y.shape)}"
                )
        else:
            G, _ = to_compute(grad, "grad")
            check_float_dtype(G, "grad")
            if tuple(G.shape) != tuple(Uc.shape):
                raise ValueError(f"grad has shape {tuple(G.shape)} but U has {tuple(Uc.shape)}")
            if G.dtype.kind == "c" and Uc.dtype.kind != "c":
                raise TypeError(f"grad is complex ({G.dtype}) but U is real ({Uc.dtype})")
        new: dict[str, Any] = {}
        if isinstance(grad, tuple) and isinstance(self.base, SGD) and self.base.momentum == 0:
            # plain SGD: the step -lr X Y^H is sketched from its factors, never formed
            direction: Any = ((-self.base.lr) * X, Y)
            base_t = self.base.t.get(name, 0) + 1
        else:
            if isinstance(grad, tuple):
                with np.errstate(over="ignore", invalid="ignore"):
                    G = X @ hconj(Y)
                if get_options().check_finite and not _all_finite(G):
                    raise ValueError(f"grad X @ Y^H overflows {G.dtype}: its factors are too large; scale them down")
            direction, new, base_t = self.base._compute(name, G)
            direction = _in_dtype(direction, Uc.dtype)
        t = self.steps + 1
        # the update: step restores the generator if it raises; U is written only on success
        _step(U, direction, rank=self.rank, update=self.update, sketch=self.sketch, rng=self.rng, out=U)
        self.base._commit(name, new, base_t)
        self.steps = t
        if self.drift is not None:
            self.drift.maybe_retract(U, step=t)

    def state_dict(self) -> dict[str, Any]:
        """The state of the optimizer, for a checkpoint.

        Returns
        -------
        dict of str to array or str
            The base optimizer's :meth:`Optimizer.state_dict` plus ``"unitary_meta"``: a JSON
            string of the step count and the sketch generator's state.
        """
        out = self.base.state_dict()
        out["unitary_meta"] = json.dumps({"steps": self.steps, "rng": self.rng.bit_generator.state}, default=_jsonable)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict of str to array or str
            As returned by :meth:`state_dict` (string values may be 0-d string arrays).

        Raises
        ------
        ValueError
            If an entry is missing or malformed (nothing is changed).
        """
        state = dict(state)
        if "unitary_meta" not in state:
            raise ValueError("state has no 'unitary_meta' entry; expected what UnitaryOptimizer.state_dict returned")
        try:
            meta = json.loads(str(state.pop("unitary_meta")))
            steps = check_int(meta["steps"], "steps (in unitary_meta)", low=0)
            probe = type(self.rng.bit_generator)()  # the generator's own kind (PCG64, MT19937, ...)
            probe.state = meta["rng"]  # checks the generator state before committing
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"state's 'unitary_meta' entry is malformed ({type(err).__name__}: {err})") from None
        self.base.load_state_dict(state)  # all or nothing itself
        self.steps = steps
        self.rng.bit_generator.state = meta["rng"]


def _jsonable(x: Any) -> Any:
    """JSON for the NumPy values inside a bit generator's state (MT19937's key array, NumPy ints)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"Object of type {type(x).__name__} is not JSON serializable")


def _in_dtype(direction: Any, dtype: Any) -> Any:
    """The base rule's step in U's dtype; kept in its own (wider) dtype if casting would overflow.

    A step too large for U's dtype is handed to :func:`unitary_update.step` as it is: the sketch
    and the update rescale its factors before casting them to U's dtype.
    """
    if direction.dtype == dtype:
        return direction
    xp = array_namespace(direction)
    if direction.size and float(max_abs(xp, direction)) > float(np.finfo(dtype).max):
        return direction
    with np.errstate(under="ignore"):
        return direction.astype(dtype)
