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
from typing import Any

import numpy as np

from ._sketch import SKETCH_METHODS
from ._step import UPDATES, drift_at
from ._step import step as _step
from ._validation import check_choice, check_drift, check_float, check_int
from ._xp import array_namespace, hconj
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

    Parameters
    ----------
    lr : float
        Learning rate (> 0).

    Raises
    ------
    TypeError
        If ``lr`` is not a real number.
    ValueError
        If ``lr`` is not finite and positive.

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

    def __init__(self, lr: float) -> None:
        self.lr = check_float(lr, "lr", low=0, open_low=True)
        self.state: dict[str, dict[str, Any]] = {}
        self.t: dict[str, int] = {}

    def _update(self, name: str, g: Any, state: dict[str, Any], t: int) -> Any:  # pragma: no cover
        raise NotImplementedError

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
        """
        if grad.dtype.kind == "c":
            xp = array_namespace(grad)
            g = xp.ascontiguousarray(grad)
            state = self.state.setdefault(name, {})
            self.t[name] = self.t.get(name, 0) + 1
            real = self._update(name, _real_view(g), state, self.t[name])
            return xp.ascontiguousarray(real).view(grad.dtype)
        state = self.state.setdefault(name, {})
        self.t[name] = self.t.get(name, 0) + 1
        return self._update(name, grad, state, self.t[name])

    def step(self, params: dict[str, Any], grads: dict[str, Any], names: Any = None) -> None:
        """In place ``params[p] += direction(p, grads[p])`` for each name in ``names`` (default: all grads).

        Parameters
        ----------
        params : dict of str to array
            The parameters, updated in place.
        grads : dict of str to array
            Their gradients, each of the parameter's shape.
        names : iterable of str, optional
            The parameters to update (default: every key of ``grads``).
        """
        for name in grads if names is None else names:
            params[name] += self.direction(name, grads[name]).astype(params[name].dtype, copy=False)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state, for a checkpoint.

        Returns
        -------
        dict of str to array or str
            Arrays (the buffers themselves, not copies) under ``"<param>/<buffer>"`` keys plus
            ``"meta"``: a JSON string of the scalars (step counts, learning rate, type).
        """
        out: dict[str, Any] = {f"{p}/{k}": v for p, st in self.state.items() for k, v in st.items()}
        out["meta"] = json.dumps({"t": self.t, "lr": self.lr, "type": type(self).__name__})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (arrays are copied).

        Parameters
        ----------
        state : dict of str to array or str
            As returned by :meth:`state_dict` of an optimizer of the same type (a ``"meta"``
            value may also be a 0-d string array, as read back from an ``.npz`` file).

        Raises
        ------
        ValueError
            If ``state`` was saved by an optimizer of another type.
        """
        meta = json.loads(str(state["meta"]))
        if meta["type"] != type(self).__name__:
            raise ValueError(f"state is for a {meta['type']} optimizer, not {type(self).__name__}")
        self.t = {k: int(v) for k, v in meta["t"].items()}
        self.lr = float(meta["lr"])
        self.state = {}
        for key, value in state.items():
            if key == "meta":
                continue
            p, buf = key.rsplit("/", 1)
            xp = array_namespace(value)
            self.state.setdefault(p, {})[buf] = xp.array(value, copy=True)


class SGD(Optimizer):
    r"""Gradient descent with (heavy-ball) momentum: ``m <- mu m + g``, step ``-lr m``.

    Parameters
    ----------
    lr : float
        Learning rate.
    momentum : float, default 0
        ``mu`` in [0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.optim import SGD
    >>> p = {"w": np.array([1.0, 2.0])}
    >>> SGD(0.5).step(p, {"w": np.array([1.0, 1.0])}); p["w"]
    array([0.5, 1.5])
    """

    def __init__(self, lr: float, momentum: float = 0.0) -> None:
        super().__init__(lr)
        self.momentum = check_float(momentum, "momentum", low=0)
        check_float(momentum, "momentum", high=1, open_high=True, expected="< 1")

    def _update(self, name: str, g: Any, state: dict[str, Any], t: int) -> Any:
        if self.momentum == 0:
            return -self.lr * g
        if "m" not in state:
            state["m"] = g.copy()
        else:
            state["m"] *= self.momentum
            state["m"] += g
        return -self.lr * state["m"]


class RMSprop(Optimizer):
    r"""RMSprop (PyTorch's form): ``v <- alpha v + (1 - alpha) g^2``, step ``-lr g / (sqrt(v) + eps)``.

    Parameters
    ----------
    lr : float
        Learning rate.
    alpha : float, default 0.99
        Smoothing constant.
    eps : float, default 1e-8
        Added to the denominator.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.optim import RMSprop
    >>> opt = RMSprop(0.1)
    >>> d = opt.direction("w", np.array([2.0, -3.0]))   # first step: -lr g / (0.1 |g|)
    >>> np.round(d, 6)
    array([-1.,  1.])
    """

    def __init__(self, lr: float, alpha: float = 0.99, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.alpha = check_float(alpha, "alpha", low=0)
        self.eps = check_float(eps, "eps", low=0)

    def _update(self, name: str, g: Any, state: dict[str, Any], t: int) -> Any:
        xp = array_namespace(g)
        if "v" not in state:
            state["v"] = xp.zeros_like(g)
        v = state["v"]
        v *= self.alpha
        v += (1 - self.alpha) * (g * g)
        return (-self.lr) * g / (xp.sqrt(v) + self.eps)


class Adam(Optimizer):
    r"""Adam: bias-corrected first and second moments, step ``-lr m_hat / (sqrt(v_hat) + eps)``.

    Parameters
    ----------
    lr : float
        Learning rate.
    betas : tuple of float, default (0.9, 0.999)
        Decay rates of the two moments.
    eps : float, default 1e-8
        Added to the denominator.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.optim import Adam
    >>> np.round(Adam(0.01).direction("w", np.array([5.0, -0.1])), 6)   # first step: -lr sign(g)
    array([-0.01,  0.01])
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(lr)
        b1, b2 = (check_float(beta, "betas", low=0, high=1, open_high=True) for beta in betas)
        self.betas = (b1, b2)
        self.eps = check_float(eps, "eps", low=0)

    def _update(self, name: str, g: Any, state: dict[str, Any], t: int) -> Any:
        xp = array_namespace(g)
        b1, b2 = self.betas
        if "m" not in state:
            state["m"], state["v"] = xp.zeros_like(g), xp.zeros_like(g)
        m, v = state["m"], state["v"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return (-self.lr) * m_hat / (xp.sqrt(v_hat) + self.eps)


_OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam}
OPTIMIZERS = tuple(_OPTIMIZERS)  # the names make_optimizer accepts


def make_optimizer(name: str, lr: float, **options: Any) -> Optimizer:
    """Build ``"sgd" | "rmsprop" | "adam"`` with learning rate ``lr`` (and that class's options).

    Parameters
    ----------
    name : {"sgd", "rmsprop", "adam"}
        The optimizer.
    lr : float
        Learning rate (> 0).
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

        Parameters
        ----------
        U : array, shape (N, N)
            The unitary (or orthogonal) parameter, updated in place.
        grad : array, shape (N, N), or tuple of two arrays of shape (N, m)
            The gradient of the loss with respect to ``U``, dense or factored as
            ``(X, Y)`` with gradient ``X @ Y^H``.
        name : str, default "W"
            Keys the base optimizer's state for this parameter.
        """
        if isinstance(grad, tuple) and isinstance(self.base, SGD) and self.base.momentum == 0:
            X, Y = grad  # plain SGD: the step -lr X Y^H is sketched from its factors, never formed
            self.base.t[name] = self.base.t.get(name, 0) + 1
            direction: Any = ((-self.base.lr) * X, Y)
        else:
            if isinstance(grad, tuple):
                X, Y = grad
                grad = X @ hconj(Y)
            direction = self.base.direction(name, grad).astype(U.dtype, copy=False)
        t = self.steps + 1
        _step(
            U,
            direction,
            rank=self.rank,
            update=self.update,
            sketch=self.sketch,
            rng=self.rng,
            out=U,
            drift=drift_at(self.drift, t),
        )
        self.steps = t

    def state_dict(self) -> dict[str, Any]:
        """The state of the optimizer, for a checkpoint.

        Returns
        -------
        dict of str to array or str
            The base optimizer's :meth:`Optimizer.state_dict` plus ``"unitary_meta"``: a JSON
            string of the step count and the sketch generator's state.
        """
        out = self.base.state_dict()
        out["unitary_meta"] = json.dumps({"steps": self.steps, "rng": self.rng.bit_generator.state})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict of str to array or str
            As returned by :meth:`state_dict` (string values may be 0-d string arrays).
        """
        state = dict(state)
        meta = json.loads(str(state.pop("unitary_meta")))
        self.steps = int(meta["steps"])
        self.rng.bit_generator.state = meta["rng"]
        self.base.load_state_dict(state)
