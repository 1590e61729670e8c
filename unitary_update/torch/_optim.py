r""":class:`ProjUNN`: a :class:`torch.optim.Optimizer` whose unitary parameters stay unitary.

Each step of a unitary parameter W is the paper's recipe, the same as
:class:`unitary_update.optim.UnitaryOptimizer`: the base rule (SGD with momentum, RMSprop or Adam)
turns the gradient into an additive direction ``D`` (its moments kept as torch tensors in
``self.state[W]``, on W's device), and :func:`unitary_update.step` sketches ``D ~= A B^H`` to rank
k and replaces W in place by ``project(W, A, B)`` or ``transport(W, A, B)``, through DLPack (a CPU
tensor is updated through a NumPy view of its memory, a CUDA tensor through a CuPy view on torch's
current stream).  Parameters in groups with ``"unitary": False`` get the plain base rule.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.weak import WeakIdKeyDictionary

import unitary_update as uu
from unitary_update._retract import DriftControl
from unitary_update._sketch import SKETCH_METHODS
from unitary_update._step import UPDATES, drift_at
from unitary_update._validation import layout_overlaps
from unitary_update._validation import unitary_tolerance as _unitary_tolerance
from unitary_update.torch._init import torch_seed

__all__ = ["BASES", "ProjUNN"]

BASES = ("rmsprop", "adam", "sgd")
"""The base rules of :class:`ProjUNN` (``base=``)."""

_MOMENTS = {"sgd": ("momentum_buffer",), "rmsprop": ("square_avg",), "adam": ("exp_avg", "exp_avg_sq")}
_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------
def _real(value: Any, name: str, *, low: float, high: float = math.inf, open_low: bool = False,
          open_high: bool = False) -> float:  # fmt: skip
    """A finite real number in the given range, or ValueError/TypeError naming ``name``.

    A one-element real tensor counts as its value (torch optimizers take ``lr=torch.tensor(...)``).
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype.is_floating_point:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    value = float(value)
    below = value < low or (open_low and value == low)
    above = value > high or (open_high and value == high)
    if not math.isfinite(value) or below or above:
        lo, hi = ("(" if open_low else "[") + f"{low:g}", f"{high:g}" + (")" if open_high else "]")
        raise ValueError(f"{name} must be in {lo}, {hi}; got {value!r}")
    return value


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _check_group(group: dict[str, Any], where: str) -> None:
    """Validate the settings of a parameter group (or the defaults); nothing is changed."""
    unitary = group["unitary"]
    if not isinstance(unitary, bool):
        raise TypeError(f"{where}unitary must be True or False; got {unitary!r}")
    _real(group["lr"], f"{where}lr", low=0)
    base = _choice(group["base"], f"{where}base", BASES)
    if isinstance(group["rank"], bool) or not isinstance(group["rank"], numbers.Integral):
        raise TypeError(f"{where}rank must be an integer; got {group['rank']!r}")
    if group["rank"] < 1:
        raise ValueError(f"{where}rank must be >= 1; got {group['rank']}")
    _choice(group["update"], f"{where}update", UPDATES)
    _choice(group["sketch"], f"{where}sketch", SKETCH_METHODS)
    momentum = _real(group["momentum"], f"{where}momentum", low=0, high=1, open_high=True)
    if momentum and base != "sgd":
        raise ValueError(f"{where}momentum is an option of base='sgd' (got base={base!r} with momentum={momentum})")
    _real(group["alpha"], f"{where}alpha", low=0, high=1)
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{where}betas must be a pair (beta1, beta2); got {betas!r}")
    for i, beta in enumerate(betas):
        _real(beta, f"{where}betas[{i}]", low=0, high=1, open_high=True)
    _real(group["eps"], f"{where}eps", low=0)
    decay = _real(group["weight_decay"], f"{where}weight_decay", low=0)
    if decay and unitary:
        raise ValueError(
            f"{where}weight_decay must be 0 in a unitary group (a unitary matrix has a fixed norm); got {decay}"
        )
    if not isinstance(group["maximize"], bool):
        raise TypeError(f"{where}maximize must be True or False; got {group['maximize']!r}")
    _drift_options(group["drift"], f"{where}drift")
    seed = group["seed"]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{where}seed must be a non-negative integer or None; got {seed!r}")


def _drift_options(drift: Any, name: str) -> dict[str, Any] | None:
    """``drift`` as DriftControl keyword arguments (None: off); validated by building one."""
    if drift is None or drift is False:
        return None
    if drift is True:
        return {}
    if isinstance(drift, dict):
        try:
            DriftControl(**drift)
        except TypeError as err:
            raise TypeError(f"{name}: {err}") from None
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        return dict(drift)
    raise TypeError(
        f"{name} must be None, True (unitary_update.DriftControl() defaults) or a dict of DriftControl "
        f"options such as {{'every': 100}}; got {type(drift).__name__} (a DriftControl object cannot be saved "
        "in a state_dict: pass its options)"
    )


def _resolve_seed(seed: Any) -> int:
    """An integer seed; None draws one from torch's default generator (``torch.manual_seed`` reproduces it),
    shared by every rank of an initialised process group."""
    if seed is not None:
        return int(seed)
    entropy = torch_seed()
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        box = [entropy]
        dist.broadcast_object_list(box, src=0)  # the same sketches on every rank
        entropy = int(box[0])
    return entropy


def unitary_tolerance(n: int, dtype: Any) -> float:
    """The largest ``unitarity_error`` a parameter may have when it joins a unitary group: ``N sqrt(eps)``."""
    return _unitary_tolerance(n, torch.finfo(dtype).eps)


def _check_unitary_param(p: Any, where: str, rank: int, check_unitary: bool) -> None:
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{where} must be a torch.Tensor; got {type(p).__name__}")
    if p.dtype not in _DTYPES:
        raise ValueError(
            f"{where} has dtype {p.dtype}; a unitary group takes float32, float64, complex64 or complex128"
        )
    if p.ndim < 2 or p.shape[-1] != p.shape[-2] or p.shape[-1] == 0:
        raise ValueError(
            f"{where} has shape {tuple(p.shape)}; a unitary group takes square matrices or stacks (..., N, N) "
            "(put other parameters in a group with 'unitary': False)"
        )
    if p.layout != torch.strided:
        raise ValueError(f"{where} has layout {p.layout}; only dense tensors can be kept unitary")
    if p.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{where} is on device {p.device}; a unitary group takes cpu and cuda tensors")
    if p.is_conj() or p.is_neg():
        raise ValueError(
            f"{where} is a lazy conjugate (or negative) view, which cannot be updated in its own memory; "
            "make it a parameter of its own: torch.nn.Parameter(W.resolve_conj())"
        )
    n = p.shape[-1]
    if rank > n:
        raise ValueError(f"{where}: rank must satisfy 1 <= rank <= N = {n}; got {rank}")
    if check_unitary and p.numel():
        error = uu.unitarity_error(p.detach())
        tol = unitary_tolerance(n, p.dtype)
        if not error <= tol:
            raise ValueError(
                f"{where} is not unitary: ||W^H W - I||_F = {error:.3g} > {tol:.3g} (N sqrt(eps)); initialise it "
                "with unitary_update.torch.orthogonal_ (or henaff_, cayley_), or pass check_unitary=False"
            )


# ------------------------------------------------------------------------------------------------
# base rules, out of place: nothing is written until the whole step has succeeded
# ------------------------------------------------------------------------------------------------
def _rv(x: Any) -> Any:
    return torch.view_as_real(x) if x.is_complex() else x


def _cv(x: Any, like: Any) -> Any:
    return torch.view_as_complex(x) if like.is_complex() else x


def _library_view(x: Any) -> Any:
    """A CPU tensor as a NumPy view of its memory (converted once here, not by every library call);
    a CUDA tensor as is (the library runs it through CuPy on torch's current stream)."""
    if x.device.type == "cpu" and not x.is_conj() and not x.is_neg():
        return np.from_dlpack(x)
    return x


def _direction(group: dict[str, Any], state: dict[str, Any], p: Any, grad: Any, t: int) -> tuple[dict[str, Any], Any]:
    """The new moments and the additive direction D of the base rule (the order of operations of ``optim.py``)."""
    lr, base = group["lr"], group["base"]
    # autograd hands back lazily conjugated gradients for expressions such as x @ W.mH
    grad = grad.resolve_conj().resolve_neg()
    g = _rv(grad)
    if group["maximize"]:
        g = -g
    if group["weight_decay"]:
        g = g + group["weight_decay"] * _rv(p.detach().resolve_conj().resolve_neg())
    moments: dict[str, Any] = {}
    if base == "sgd":
        mu = group["momentum"]
        if not mu:
            return moments, _cv(g * (-lr), grad)
        old = state.get("momentum_buffer")
        m = g.clone(memory_format=torch.contiguous_format) if old is None else _rv(old) * mu + g
        moments["momentum_buffer"] = _cv(m, grad)
        return moments, _cv(m * (-lr), grad)
    # the operations (and their rounding) of optim.py, with in-place steps on fresh temporaries:
    # four N x N allocations per step instead of eight (the step is memory-bound at large N)
    if base == "rmsprop":
        alpha = group["alpha"]
        old = state.get("square_avg")
        v = torch.mul(g, g).mul_(1 - alpha)  # (1 - alpha) g^2
        if old is not None:
            v = torch.mul(_rv(old), alpha).add_(v)
        moments["square_avg"] = _cv(v, grad)
        return moments, _cv(torch.mul(g, -lr).div_(torch.sqrt(v).add_(group["eps"])), grad)
    b1, b2 = group["betas"]
    old_m, old_v = state.get("exp_avg"), state.get("exp_avg_sq")
    m = torch.mul(g, 1 - b1)
    if old_m is not None:
        m = torch.mul(_rv(old_m), b1).add_(m)
    v = torch.mul(g, g).mul_(1 - b2)
    if old_v is not None:
        v = torch.mul(_rv(old_v), b2).add_(v)
    moments["exp_avg"], moments["exp_avg_sq"] = _cv(m, grad), _cv(v, grad)
    numerator = torch.div(m, 1 - b1**t).mul_(-lr)  # m_hat (-lr)
    return moments, _cv(numerator.div_(torch.div(v, 1 - b2**t).sqrt_().add_(group["eps"])), grad)


# ------------------------------------------------------------------------------------------------
# the optimizer
# ------------------------------------------------------------------------------------------------
class ProjUNN(torch.optim.Optimizer):
    r"""A torch optimizer that keeps unitary (complex) or orthogonal (real) parameters exactly on their group.

    Each :meth:`step` turns every gradient into the base rule's additive direction ``D`` (SGD
    with momentum, RMSprop or Adam, as in :mod:`unitary_update.optim`).  An ordinary parameter
    gets ``p += D``.  A unitary parameter W gets the rank-k projUNN update of ``D``:
    :func:`unitary_update.step` sketches ``D ~= A B^H`` and writes ``project(W, A, B)``
    (projUNN-D, the polar factor of ``W + A B^H``) or ``transport(W, A, B)`` (projUNN-T,
    ``W expm(skew(W^H A B^H))``) into W's own memory, so W stays unitary to rounding at every step.

    Parameters
    ----------
    params : iterable of torch.Tensor or of dict
        Parameters, or parameter groups (dicts with ``"params"`` and any of the options below,
        which override the defaults for that group).  Groups are unitary by default; a group with
        ``"unitary": False`` trains ordinary parameters of any shape with the plain base rule,
        so one optimizer serves a whole model.
    lr : float, default 1e-3
        Learning rate, >= 0 (changed by :mod:`torch.optim.lr_scheduler` schedulers as usual).
    base : {"rmsprop", "adam", "sgd"}, default "rmsprop"
        The base rule: RMSprop ``-lr g / (sqrt(v) + eps)``, ``v <- alpha v + (1 - alpha) g^2``;
        Adam with bias correction; SGD with heavy-ball ``momentum`` (``m <- mu m + g``, ``-lr m``).
    rank : int, default 1
        Rank k of the sketch of D, ``1 <= k <= N`` (unitary groups).
    update : {"transport", "project"}, default "transport"
        projUNN-T or projUNN-D.
    sketch : {"randomized", "lsi", "column", "exact"}, default "randomized"
        How D is sketched (see :func:`unitary_update.sketch`).
    seed : int or None, default None
        Seed of the sketches.  Parameter number ``i`` (counting from 0 over all groups, in the
        order they were added) draws from
        ``numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(i,)))``, its own
        stream, whose state is part of :meth:`state_dict`.  None draws a seed from torch's
        default generator, so ``torch.manual_seed`` reproduces the run; if a
        :mod:`torch.distributed` process group is initialised, rank 0's seed is broadcast so that
        every rank sketches identically.
    momentum : float, default 0
        Heavy-ball momentum in [0, 1), for ``base="sgd"`` only.
    alpha : float, default 0.99
        RMSprop's smoothing constant, in [0, 1].
    betas : tuple of float, default (0.9, 0.999)
        Adam's decay rates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominators of RMSprop and Adam, >= 0.
    weight_decay : float, default 0
        L2 penalty (``g + weight_decay * p``) for ordinary groups; must be 0 in unitary groups.
    maximize : bool, default False
        Ascend the objective instead of descending it.
    drift : None, bool or dict, default None
        Drift control of unitary parameters: None or False (off), True (one
        :class:`unitary_update.DriftControl` with its defaults per parameter) or a dict of
        DriftControl options (``{"every": 100}``); the policy is called after each update with
        the parameter's step count.  Plain data, so that it can be saved with the groups.
    unitary : bool, default True
        The default of the groups' ``"unitary"`` key.
    check_unitary : bool, default True
        When a parameter joins a unitary group (construction, :meth:`add_param_group`), check
        that it is unitary: ``unitarity_error(W) <= N sqrt(eps)`` (float32, N = 64: 0.022);
        one O(N^3) product per parameter.

    Raises
    ------
    ValueError
        For a setting out of its range (the message names it and the range), or a unitary-group
        parameter that is not a square matrix or stack, has another dtype than float32, float64,
        complex64 or complex128, is smaller than ``rank``, or is not unitary.
    TypeError
        For a setting of the wrong type.

    See Also
    --------
    unitary_update.optim.UnitaryOptimizer : The same update for NumPy and CuPy arrays.
    orthogonal_, henaff_, cayley_ : Unitary starting points for torch parameters.

    Notes
    -----
    *State.*  ``self.state[p]`` holds ``"step"`` (a 0-d float64 CPU tensor, as torch's
    optimizers keep it but exact to 2^53 steps; states saved with an int there load too), the
    base rule's moments as tensors of p's dtype and device (``"momentum_buffer"``;
    ``"square_avg"``; ``"exp_avg"``, ``"exp_avg_sq"``; complex parameters as torch does it,
    through :func:`torch.view_as_real`, so the real and imaginary parts have moments of their
    own) and, for unitary parameters, ``"sketch_rng"``: the state of the parameter's NumPy bit
    generator (PCG64's four integers, plain Python data that ``torch.load(weights_only=True)``
    reads).  :meth:`state_dict` and :meth:`load_state_dict` are torch's: a run resumed from a
    checkpoint continues bit for bit.

    *All or nothing.*  A step first checks every gradient (shape; with the library option
    ``check_finite`` on, NaN/Inf in the gradients of unitary parameters:
    :class:`unitary_update.NonFiniteError`), then computes every update out of place, except
    the last unitary parameter's, which :func:`unitary_update.step` writes in place only after
    its own checks, and only then writes parameters, moments, step counts and generator states.
    A step that raises leaves all of them as they were.  With several unitary parameters, the
    updates of all but the last are held until the end (one N x N buffer each).

    *Cost per step* of an N x N unitary parameter: the base rule's O(N^2) elementwise work, the
    sketch (``O(N^2 k)``) and the update (``O(N^2 k)``); memory beyond the moments, O(N k) plus
    the direction D and the sketch's temporaries.  On CUDA, nothing is read back to the host
    while the library option ``check_finite`` is off and drift control uses ``every`` only.

    *Data parallel.*  Under :class:`torch.nn.parallel.DistributedDataParallel` the gradients are
    all-reduced before :meth:`step`, the update is per parameter and the sketches are seeded
    identically on every rank, so the unitary weights stay bit-identical across ranks.

    Examples
    --------
    >>> import torch, unitary_update as uu
    >>> from unitary_update.torch import ProjUNN, orthogonal_
    >>> W = torch.nn.Parameter(orthogonal_(torch.empty(16, 16), rng=0))
    >>> b = torch.nn.Parameter(torch.zeros(16))
    >>> opt = ProjUNN([{"params": [W], "rank": 2}, {"params": [b], "unitary": False}], lr=1e-2, seed=0)
    >>> loss = (W.sum(0) + b).square().sum()
    >>> loss.backward()
    >>> opt.step()
    >>> uu.unitarity_error(W) < 1e-5, sorted(opt.state[W])
    (True, ['sketch_rng', 'square_avg', 'step'])
    """

    param_groups: list[dict[str, Any]]
    state: Any  # collections.defaultdict(dict), keyed by parameter

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        base: str = "rmsprop",
        rank: int = 1,
        update: str = "transport",
        sketch: str = "randomized",
        seed: int | None = None,
        momentum: float = 0.0,
        alpha: float = 0.99,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        maximize: bool = False,
        drift: bool | dict[str, Any] | None = None,
        unitary: bool = True,
        check_unitary: bool = True,
    ) -> None:
        if not isinstance(check_unitary, bool):
            raise TypeError(f"check_unitary must be True or False; got {check_unitary!r}")
        defaults = {
            "lr": lr,
            "base": base,
            "rank": rank,
            "update": update,
            "sketch": sketch,
            "momentum": momentum,
            "alpha": alpha,
            "betas": tuple(betas) if isinstance(betas, list) else betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "drift": drift,
            "unitary": unitary,
            "seed": 0 if seed is None else seed,
        }
        _check_group(defaults, "")
        defaults["seed"] = _resolve_seed(seed)
        self.check_unitary = check_unitary
        # the unitary parameters check_unitary has checked, and those that have taken an ordinary
        # step since (keyed by identity: a tensor's == is elementwise)
        self._verified: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._left_unitary: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._generators: dict[Any, np.random.Generator] = {}
        self._drift: dict[Any, tuple[dict[str, Any], DriftControl]] = {}
        super().__init__(params, defaults)

    def __getstate__(self) -> dict[str, Any]:
        """torch's state (defaults, state, param_groups) and ``check_unitary``: for copy.deepcopy and pickle."""
        state = super().__getstate__()
        state["check_unitary"] = self.check_unitary
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a copied or unpickled optimizer; the per-parameter caches start empty.

        The sketch generators are set from ``state[p]["sketch_rng"]`` at every step, so a copy
        continues exactly as the original would.
        """
        super().__setstate__(state)
        self.__dict__.setdefault("check_unitary", True)
        self._verified = WeakIdKeyDictionary()
        self._left_unitary = WeakIdKeyDictionary()
        self._generators = {}
        self._drift = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (validated first: a rejected group leaves the optimizer as it was).

        Parameters
        ----------
        param_group : dict
            ``"params"`` and any options of :class:`ProjUNN` to override for this group.

        Raises
        ------
        ValueError, TypeError
            As :class:`ProjUNN`, for the group's settings and parameters.
        """
        if isinstance(param_group, dict) and "seed" in param_group and param_group["seed"] is None:
            param_group = {**param_group, "seed": _resolve_seed(None)}
        n_groups = len(self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            if isinstance(group["betas"], list):
                group["betas"] = tuple(group["betas"])
            self._check_group_and_params(group, n_groups)
        except Exception:
            del self.param_groups[n_groups:]
            raise

    def _check_group_and_params(self, group: dict[str, Any], index: int) -> None:
        where = f"param group {index}: "
        _check_group(group, where)
        if group["unitary"]:
            for i, p in enumerate(group["params"]):
                _check_unitary_param(p, f"{where}parameter {i}", group["rank"], self.check_unitary)
            if self.check_unitary:
                self._verified.update(dict.fromkeys(group["params"], True))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict` (torch's format), checking the groups' settings.

        Parameters
        ----------
        state_dict : dict
            As returned by :meth:`state_dict` (``"state"`` and ``"param_groups"``).

        Raises
        ------
        ValueError, TypeError
            If a saved group's settings are invalid, a unitary group holds a parameter that is
            not square, or the state does not match the parameters (torch's checks, and a saved
            moment whose shape is not its parameter's); the optimizer is then unchanged.
        """
        saved_groups, saved_state = self.param_groups, self.state
        super().load_state_dict(state_dict)
        try:
            for i, group in enumerate(self.param_groups):
                if isinstance(group["betas"], list):
                    group["betas"] = tuple(group["betas"])
                _check_group(group, f"param group {i}: ")
                for j, p in enumerate(group["params"]):
                    if group["unitary"]:
                        _check_unitary_param(p, f"param group {i}: parameter {j}", group["rank"], False)
                    for key, value in self.state.get(p, {}).items():
                        if key == "step":
                            _check_step_entry(value, f"param group {i}: parameter {j}: ")
                            continue
                        # torch checks only the number of parameters: a moment saved for another
                        # shape would fail at the next step (or broadcast), so it is refused here
                        if isinstance(value, torch.Tensor) and value.ndim and tuple(value.shape) != tuple(p.shape):
                            raise ValueError(
                                f"param group {i}: parameter {j}: saved state {key!r} has shape "
                                f"{tuple(value.shape)} but the parameter has {tuple(p.shape)}; "
                                "the state_dict belongs to another model"
                            )
            for st in self.state.values():
                if "step" in st:  # an int (saved before) or another dtype: the count's own form
                    st["step"] = _step_tensor(int(st["step"]))
                if "sketch_rng" in st:  # checked, and an own copy: the caller's dict is never written through
                    st["sketch_rng"] = _rng_entry(_pcg64_state(st["sketch_rng"]))
        except Exception:
            self.param_groups, self.state = saved_groups, saved_state
            raise

    def _generator(self, p: Any, state: dict[str, Any], seed: int, index: int) -> np.random.Generator:
        """The parameter's sketch generator, set to the state saved in ``state`` (or freshly seeded)."""
        saved = state.get("sketch_rng")
        gen = self._generators.get(p)
        if gen is None or saved is None:
            fresh = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
            gen = self._generators.setdefault(p, fresh)
            if saved is None:
                saved = _rng_entry(fresh.bit_generator.state)
        gen.bit_generator.state = _pcg64_state(saved)  # every step: a failed step or a load never leaves it stale
        return gen

    def _drift_policy(self, p: Any, options: dict[str, Any] | None) -> DriftControl | None:
        if options is None:
            return None
        cached = self._drift.get(p)
        if cached is None or cached[0] != options:  # a group's drift options may be changed between steps
            cached = self._drift[p] = (dict(options), DriftControl(**options))
        return cached[1]

    def _check_gradients(self) -> list[tuple[dict[str, Any], Any, int, str]]:
        """Every (group, parameter, global index, name) with a gradient, after checking parameters and gradients.

        A parameter in a unitary group is checked again (shape, device, ``rank``): the group may
        have been changed since it joined.  One that was never checked for unitarity (its group
        was made unitary after it joined), or that has taken an ordinary step since, is checked
        for unitarity (``check_unitary``) at its next unitary step.  The finiteness of the
        gradients is checked in :meth:`_step`, through the base rule's direction.
        """
        work: list[tuple[dict[str, Any], Any, int, str]] = []
        index = 0
        for gi, group in enumerate(self.param_groups):
            _check_group(group, f"param group {gi}: ")  # settings may have been changed (schedulers)
            for pi, p in enumerate(group["params"]):
                if p.grad is not None:
                    g = p.grad
                    where = f"param group {gi}: parameter {pi}"
                    if group["unitary"]:
                        # never checked and never stepped as unitary, or stepped as ordinary since
                        first = p not in self._verified and "sketch_rng" not in self.state.get(p, {})
                        check = self.check_unitary and (first or p in self._left_unitary)
                        _check_unitary_param(p, where, group["rank"], check)
                        if check:
                            self._verified[p] = True
                            self._left_unitary.pop(p, None)
                    elif layout_overlaps(p.shape, p.stride(), 1):
                        raise ValueError(
                            f"{where} has overlapping memory (shape {tuple(p.shape)}, strides {tuple(p.stride())}, "
                            "e.g. from expand): it cannot be updated in place; make it a parameter that owns "
                            "its entries (p.clone())"
                        )
                    if g.layout != torch.strided:
                        raise ValueError(f"{where}: sparse gradients ({g.layout}) are not supported")
                    if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                        raise ValueError(
                            f"{where}: gradient of shape {tuple(g.shape)}, {g.dtype} on {g.device} does not match "
                            f"the parameter's {tuple(p.shape)}, {p.dtype} on {p.device}"
                        )
                    work.append((group, p, index, where))
                index += 1
        return work

    @staticmethod
    def _check_direction(group: dict[str, Any], p: Any, direction: Any, where: str) -> None:
        """NonFiniteError naming the parameter when the base rule's direction has NaN or Inf (``check_finite`` on).

        One host read per unitary parameter (uu.step's own check of the direction is then the
        only other); the message tells a non-finite gradient from a rule that made one.
        """
        if not uu.get_options().check_finite or bool(torch.isfinite(direction).all()):
            return
        if not bool(torch.isfinite(p.grad).all()):
            raise uu.NonFiniteError(f"{where}: the gradient contains NaN or Inf; nothing was updated")
        raise uu.NonFiniteError(
            f"{where}: the {group['base']} direction is not finite although the gradient is (lr = {group['lr']!r} "
            f"times the gradient overflows {p.dtype}, or eps = {group['eps']!r} with a zero gradient entry "
            "gives 0 / 0); nothing was updated"
        )

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimization step of every parameter with a gradient; all or nothing.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (called with gradients enabled).

        Returns
        -------
        object
            What ``closure`` returned, or None.

        Raises
        ------
        ValueError
            If a gradient does not match its parameter, a group's settings became invalid, or
            (``check_finite`` on) the gradient of a unitary parameter contains NaN or Inf
            (:class:`unitary_update.NonFiniteError`).  Nothing is changed then.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._step()
        return loss

    def _step(self) -> None:
        work = self._check_gradients()
        last = max((i for i, (group, _, _, _) in enumerate(work) if group["unitary"]), default=-1)
        commits: list[tuple[Any, Any, dict[str, Any], int, Any]] = []
        for i, (group, p, index, where) in enumerate(work):
            if not group["unitary"]:
                continue
            state = self.state.get(p, {})  # get: an entry appears only when the step succeeds
            t = _step_count(state) + 1
            moments, direction = _direction(group, state, p, p.grad, t)
            self._check_direction(group, p, direction, where)
            gen = self._generator(p, state, group["seed"], index)
            policy = self._drift_policy(p, _drift_options(group["drift"], "drift"))
            options = {"rank": group["rank"], "update": group["update"], "sketch": group["sketch"], "rng": gen}
            W, D = _library_view(p.detach()), _library_view(direction)
            if i == last:  # in place: uu.step checks everything before it writes
                uu.step(W, D, **options, out=W, drift=drift_at(policy, t))
                torch.autograd.graph.increment_version(p)  # as an in-place torch op would (W may be a NumPy view)
                new = None
            else:
                new = uu.step(W, D, **options, drift=drift_at(policy, t))
            commits.append((p, new, moments, t, _rng_entry(gen.bit_generator.state)))
        # every unitary update succeeded: write them, then the ordinary parameters (nothing can fail now)
        for p, new, moments, t, rng_state in commits:
            if new is not None:
                p.copy_(torch.from_dlpack(new) if isinstance(new, np.ndarray) else new)
            self.state[p].update(moments)
            self.state[p]["step"] = _step_tensor(t)
            self.state[p]["sketch_rng"] = rng_state
        for group, p, _, _ in work:
            if group["unitary"]:
                continue
            state = self.state[p]
            t = _step_count(state) + 1
            moments, direction = _direction(group, state, p, p.grad, t)
            p.add_(direction)
            self._left_unitary[p] = True  # off the manifold now: checked again if its group turns unitary
            state.update(moments)
            state["step"] = _step_tensor(t)


def _step_tensor(t: int) -> Any:
    """A step count as a 0-d CPU tensor, as torch's optimizers keep it, but float64: exact to 2^53.

    (torch's float32 counts stop at 2^24; here the count is also the clock of drift control.)
    """
    return torch.tensor(float(t), dtype=torch.float64)


def _step_count(state: Mapping[str, Any]) -> int:
    """The step count of a parameter's state (0 when it has none): a 0-d tensor, or an int as saved before."""
    return int(state.get("step", 0))


def _check_step_entry(value: Any, where: str) -> None:
    """Refuse a saved ``"step"`` that is not a count: an integer >= 0, or a 0-d tensor holding one."""
    ok = False
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 and not value.is_complex() and value.dtype != torch.bool:
            number = float(value)
            ok = math.isfinite(number) and number >= 0 and number == int(number)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        ok = int(value) >= 0
    if not ok:
        raise ValueError(f"{where}saved state 'step' must be a step count (an integer >= 0); got {value!r}")


def _rng_entry(state: Mapping[str, Any]) -> dict[str, int]:
    """A PCG64 state as a flat dict of ints: what torch's ``load_state_dict`` passes through unchanged.

    (It rebuilds every iterable it finds in the state, which turns strings into garbage, and casts
    tensors to the parameter's dtype; Python ints survive, and ``torch.load(weights_only=True)``
    reads them.)
    """
    inner = state["state"]
    return {"state": int(inner["state"]), "inc": int(inner["inc"]), "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"])}  # fmt: skip


def _pcg64_state(entry: Any) -> dict[str, Any]:
    """The NumPy ``bit_generator.state`` of a saved ``sketch_rng`` entry (ValueError if malformed)."""
    keys = ("state", "inc", "has_uint32", "uinteger")
    if not isinstance(entry, dict) or sorted(entry) != sorted(keys) or not all(isinstance(entry[k], int) for k in keys):
        raise ValueError(f"sketch_rng must be a dict of the ints {keys} (a PCG64 state); got {entry!r}")
    return {"bit_generator": "PCG64", "state": {"state": entry["state"], "inc": entry["inc"]},
            "has_uint32": entry["has_uint32"], "uinteger": entry["uinteger"]}  # fmt: skip
