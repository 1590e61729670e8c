"""The settings of a training run (:class:`TrainConfig`), stored as ``config.json`` in its directory.

Every setting is checked when a :class:`TrainConfig` is made (also by :func:`dataclasses.replace`
and when ``config.json`` is read back by :func:`load_config`), so an invalid run fails before
its directory or any file exists.  :data:`RESUMABLE` lists the settings a resumed run may
change; :func:`resume_conflicts` finds the others that differ from a stored run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._sketch import SKETCH_METHODS
from .._step import UPDATES
from .._validation import check_choice_str, check_float, check_int
from ..models.urnn import ACTIVATIONS, INITS
from ..optim import OPTIMIZERS
from .tasks import PIXELS, TASK_CLASSES, TASKS, Task

__all__ = [
    "BIAS_INITS",
    "READOUT_INITS",
    "REAL_DTYPES",
    "RESUMABLE",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "resume_conflicts",
]

REAL_DTYPES = ("float32", "float64")
"""The values of :attr:`TrainConfig.dtype`."""

READOUT_INITS = ("zero", "uniform")
"""The values of :attr:`TrainConfig.readout_init`."""

BIAS_INITS = ("uniform", "zero")
"""The values of :attr:`TrainConfig.bias_init`."""

RESUMABLE = (
    "steps",
    "time_limit_s",
    "device",
    "lr_milestones",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "mnist_dir",
)
"""The settings a resumed run may change: how long it runs, where, the learning-rate milestones,
how often it logs, evaluates and checkpoints, and where the MNIST files are.  Every other setting
defines the model, the optimizers or the data and must equal the stored run's."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run (stored as ``config.json`` in the run directory).

    Every parameter is also an attribute of the same name.

    Parameters
    ----------
    task : {"copy", "adding", "pmnist"}
        The task (see :mod:`unitary_update.experiments.tasks`).
    length : int or None
        Copy: the delay T (sequence length T + 20; default 100).  Adding: the sequence length
        (default 200).  Ignored for pmnist (784).
    steps : int
        Total number of training steps, >= 1 (a resumed run continues up to it).
    batch_size, hidden_size : int
        Both >= 1; ``hidden_size`` None picks the paper's size (copy 190, adding and pmnist 170).
    complex : bool
        Complex (unitary) instead of real (orthogonal) recurrent matrix.
    init : str
        Initialiser of W (``henaff``, ``cayley``, ``haar``, ``identity``).
    input_scale : float
        Multiplies the initial input weights V (Glorot-normal, std ``sqrt(2 / (input + N))``),
        finite and > 0 (default 1).  Sets how strongly the inputs drive the hidden state at the
        start: expRNN's permuted-MNIST script starts about 4x stronger than Glorot (its
        Kaiming-normal V, std sqrt(2), on raw pixels of std 0.31).
    readout_init : {"zero", "uniform"}
        Initial readout O, c: zero (the default; the first loss is then exactly the loss of a
        uniform prediction), or PyTorch's ``nn.Linear`` default, both uniform in
        ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` with ``fan_in`` the readout's width (N; 2N for a
        complex model), drawn from ``default_rng([seed, 4])`` so every other parameter is the
        same as with "zero".
    bias_init : {"uniform", "zero"}
        Initial bias b of the nonlinearity: uniform in [-0.01, 0.01] (the default, expRNN's
        modReLU init) or zero; every other parameter is the same either way.
    activation : {"modrelu", "relu"}
        The RNN's nonlinearity: modReLU (the default) or ReLU with b as input bias (a real model
        only; the projUNN paper's permuted-MNIST RNN uses ReLU).
    pixels : {"standardized", "raw"}
        pmnist: the grey levels standardised to mean 0, std 1 over the training set (the
        default), or raw in [0, 1] as expRNN's script reads them (the background is then 0).
        Other tasks take only the default.
    dtype : {"float32", "float64"}
        Real precision of the model.
    optimizer : {"rmsprop", "adam", "sgd"}
        Optimizer for the Euclidean parameters and the direction of W.
    lr : float
        Learning rate of V, b, O, c; W gets ``lr / w_lr_divisor`` (the paper: RMSprop, 32).
    w_lr_divisor : float
        Divides ``lr`` for the recurrent matrix W (default 32).
    lr_milestones : tuple of int
        Steps at which both learning rates are multiplied by ``lr_gamma`` (like PyTorch's
        ``MultiStepLR``): from step ``s`` on, the rates are ``lr * lr_gamma**m`` with ``m`` the
        number of milestones ``<= s``.  Default ``()``: constant rates.
    lr_gamma : float
        The factor applied at each milestone, in (0, 1] (default 0.1).
    momentum : float
        SGD momentum.
    clip_grad_norm : float or None
        Clip the gradient's global norm before each update, as
        ``torch.nn.utils.clip_grad_norm_`` does: every parameter's gradient (W's Euclidean
        gradient included) is multiplied by ``min(1, clip_grad_norm / (norm + 1e-6))``, ``norm``
        the 2-norm of all of them together.  None (the default): no clipping.
    rank : int
        Rank k of the sketched W update.
    update : {"project", "transport"}
        projUNN-D or projUNN-T.
    sketch : str
        Sketch method of :func:`unitary_update.sketch`.
    retract_every : int
        Re-unitarise W every this many steps with :class:`unitary_update.DriftControl`
        (0: never, the default).
    seed : int
        Seeds the model, the data and the sketches.
    eval_every, eval_size : int
        Held-out evaluation period (steps) and size (sequences / test images).
    checkpoint_every, log_every : int
        Checkpoint and metrics periods (steps).
    time_limit_s : float or None
        Stop (with a checkpoint) after this much wall-clock time in this process.
    mnist_dir : str
        Folder of the MNIST IDX files.
    device : str
        Where the model trains: ``"cpu"`` (NumPy, the default) or ``"gpu"`` / ``"cuda:<i>"``
        (CuPy).  The model and the data are always generated on the host from the seed, so a run
        starts from the same state on either device, and checkpoints hold host arrays, so a run
        can be resumed on the other device.

    Raises
    ------
    TypeError
        If a setting has the wrong type (an integer setting given as a float or a bool,
        ``complex`` not a bool, ``lr_milestones`` not a sequence, ...).
    ValueError
        If a setting is out of its range, each message naming the setting and the range:
        ``steps``, ``batch_size``, ``hidden_size``, ``eval_size``, ``log_every`` >= 1;
        ``length`` >= 1 (adding: >= 2); ``retract_every``, ``seed``, ``eval_every``,
        ``checkpoint_every`` >= 0 (0: never); ``rank`` in [1, hidden size]; ``lr``,
        ``input_scale``, ``w_lr_divisor`` finite and > 0 (and ``lr / w_lr_divisor`` > 0);
        ``lr_gamma`` in (0, 1]; ``momentum`` in [0, 1); ``time_limit_s`` None or finite >= 0;
        ``clip_grad_norm`` None or finite > 0; ``task``, ``init``, ``readout_init``, ``bias_init``,
        ``activation``, ``pixels``, ``dtype``, ``optimizer``, ``update``, ``sketch`` and
        ``device`` one of their choices; ``pixels`` other than "standardized"
        for a task other than pmnist; ``momentum`` other than 0 with an optimizer other than
        "sgd"; ``activation`` "relu" with ``complex``.

    Examples
    --------
    >>> import dataclasses
    >>> from unitary_update.experiments.train import TrainConfig
    >>> cfg = TrainConfig(task="adding", length=50, steps=200)
    >>> cfg.resolved_hidden(), cfg.optimizer, cfg.lr
    (170, 'rmsprop', 0.001)
    >>> dataclasses.replace(cfg, hidden_size=64).resolved_hidden()
    64
    """

    task: str = "copy"
    length: int | None = None
    steps: int = 1000
    batch_size: int = 128
    hidden_size: int | None = None
    complex: bool = False
    init: str = "henaff"
    input_scale: float = 1.0
    readout_init: str = "zero"
    bias_init: str = "uniform"
    activation: str = "modrelu"
    pixels: str = "standardized"
    dtype: str = "float32"
    optimizer: str = "rmsprop"
    lr: float = 1e-3
    w_lr_divisor: float = 32.0
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    momentum: float = 0.0
    clip_grad_norm: float | None = None
    rank: int = 1
    update: str = "project"
    sketch: str = "randomized"
    retract_every: int = 0
    seed: int = 0
    eval_every: int = 100
    eval_size: int = 256
    checkpoint_every: int = 500
    log_every: int = 10
    time_limit_s: float | None = None
    mnist_dir: str = "../shared/data/mnist"
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.task = check_choice_str(self.task, TASKS, "task")
        minimum = 2 if self.task == "adding" else 1
        if self.length is not None:
            meaning = TASK_CLASSES[self.task].length_name or "length"
            expected = f"an integer >= {minimum} (the {self.task} task's {meaning})"
            self.length = check_int(self.length, "length", low=minimum, expected=expected)
        self.steps = check_int(self.steps, "steps", low=1)
        self.batch_size = check_int(self.batch_size, "batch_size", low=1)
        self.hidden_size = None if self.hidden_size is None else check_int(self.hidden_size, "hidden_size", low=1)
        self.complex = _check_bool(self.complex, "complex")
        self.init = check_choice_str(self.init, INITS, "init")
        self.input_scale = check_float(self.input_scale, "input_scale", low=0, open_low=True)
        self.readout_init = check_choice_str(self.readout_init, READOUT_INITS, "readout_init")
        self.bias_init = check_choice_str(self.bias_init, BIAS_INITS, "bias_init")
        self.activation = check_choice_str(self.activation, ACTIVATIONS, "activation")
        if self.activation == "relu" and self.complex:
            raise ValueError("activation 'relu' needs a real model; complex=True takes 'modrelu'")
        self.pixels = check_choice_str(self.pixels, PIXELS, "pixels")
        if self.pixels != "standardized" and self.task != "pmnist":
            raise ValueError(f"pixels applies to the pmnist task only; got pixels={self.pixels!r} for {self.task}")
        self.dtype = check_choice_str(_dtype_name(self.dtype), REAL_DTYPES, "dtype")
        self.optimizer = check_choice_str(self.optimizer, OPTIMIZERS, "optimizer")
        self.lr = check_float(self.lr, "lr", low=0, open_low=True)
        self.w_lr_divisor = check_float(self.w_lr_divisor, "w_lr_divisor", low=0, open_low=True)
        w_lr = self.lr / self.w_lr_divisor
        if not (0 < w_lr < math.inf):
            raise ValueError(
                f"w_lr_divisor must leave W a positive finite learning rate lr / w_lr_divisor; "
                f"got {self.lr!r} / {self.w_lr_divisor!r} = {w_lr!r}"
            )
        milestones = self.lr_milestones
        if isinstance(milestones, (str, bytes, dict, set, frozenset)) or not hasattr(milestones, "__iter__"):
            raise TypeError(f"lr_milestones must be a sequence of step numbers; got {milestones!r}")
        try:
            milestones = tuple(milestones)  # a list when read back from config.json
        except TypeError:  # a 0-d array
            raise TypeError(f"lr_milestones must be a sequence of step numbers; got {milestones!r}") from None
        if any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in milestones) or list(
            milestones
        ) != sorted(set(milestones)):
            raise ValueError(f"lr_milestones must be increasing positive step numbers; got {self.lr_milestones!r}")
        self.lr_milestones = tuple(int(m) for m in milestones)
        self.lr_gamma = check_float(self.lr_gamma, "lr_gamma", low=0, high=1, open_low=True, expected="in (0, 1]")
        self.momentum = check_float(self.momentum, "momentum", low=0, high=1, open_high=True, expected="in [0, 1)")
        if self.momentum != 0 and self.optimizer != "sgd":  # it would be silently unused
            raise ValueError(
                f"momentum applies to optimizer 'sgd' only; got momentum={self.momentum} "
                f"with optimizer {self.optimizer!r}"
            )
        if self.clip_grad_norm is not None:
            self.clip_grad_norm = check_float(self.clip_grad_norm, "clip_grad_norm", low=0, open_low=True)
        hidden = self.resolved_hidden()
        self.rank = check_int(self.rank, "rank", low=1, high=hidden, expected=f"in [1, hidden size = {hidden}]")
        self.update = check_choice_str(self.update, UPDATES, "update")
        self.sketch = check_choice_str(self.sketch, SKETCH_METHODS, "sketch")
        self.retract_every = check_int(self.retract_every, "retract_every", low=0)
        self.seed = check_int(self.seed, "seed", low=0)
        self.eval_every = check_int(self.eval_every, "eval_every", low=0)
        self.eval_size = check_int(self.eval_size, "eval_size", low=1)
        self.checkpoint_every = check_int(self.checkpoint_every, "checkpoint_every", low=0)
        self.log_every = check_int(self.log_every, "log_every", low=1)
        if self.time_limit_s is not None:
            self.time_limit_s = check_float(self.time_limit_s, "time_limit_s", low=0)
        if not isinstance(self.mnist_dir, (str, os.PathLike)):
            raise TypeError(f"mnist_dir must be a path; got {self.mnist_dir!r} of type {type(self.mnist_dir).__name__}")
        self.mnist_dir = os.fspath(self.mnist_dir)
        self.device = _check_device_name(self.device)

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier of training step ``step + 1`` (after ``step`` completed steps).

        Parameters
        ----------
        step : int
            The number of completed steps.

        Returns
        -------
        float
            ``lr_gamma ** m``, ``m`` the number of milestones ``<= step``.

        Examples
        --------
        >>> from unitary_update.experiments.train import TrainConfig
        >>> cfg = TrainConfig(lr_milestones=(100, 200), lr_gamma=0.5)
        >>> cfg.lr_factor(99), cfg.lr_factor(100), cfg.lr_factor(250)
        (1.0, 0.5, 0.25)
        """
        return float(self.lr_gamma ** sum(step >= m for m in self.lr_milestones))

    def resolved_hidden(self) -> int:
        """The hidden size of the run: ``hidden_size``, or the paper's size for the task when None.

        Returns
        -------
        int
            ``hidden_size`` if set, else the task's ``hidden_size``: 190 (copy), 170 (adding,
            pmnist).
        """
        if self.hidden_size is not None:
            return int(self.hidden_size)
        return int(TASK_CLASSES.get(self.task, Task).hidden_size)


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False); got {value!r} of type {type(value).__name__}")
    return bool(value)


def _dtype_name(value: Any) -> Any:
    """``np.float32`` or ``np.dtype("float32")`` as ``"float32"``; anything else as it is (to be refused).

    Only names, dtypes and scalar types are read as dtypes: an array or a number (which NumPy
    would also read as its dtype) is refused.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, (np.dtype, type)):
        return value
    try:
        return np.dtype(value).name
    except TypeError:
        return value


def _check_device_name(device: Any) -> str:
    """``"cpu"``, ``"gpu"``, ``"cuda"`` or ``"cuda:<i>"`` (whether the GPU exists is checked when the run starts)."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a string ('cpu', 'gpu' or 'cuda:<i>'); got {device!r}")
    base, _, index = device.lower().partition(":")
    if (base == "cpu" and ":" not in device) or (base in ("gpu", "cuda") and (not index or index.isdigit())):
        return device
    raise ValueError(f"device must be 'cpu', 'gpu', 'cuda' or 'cuda:<i>'; got {device!r}")


def resume_conflicts(stored: TrainConfig, requested: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The settings outside :data:`RESUMABLE` in which ``requested`` differs from the ``stored`` run.

    Parameters
    ----------
    stored : TrainConfig
        The run's configuration (its ``config.json``).
    requested : TrainConfig
        The configuration asked for on resume.

    Returns
    -------
    dict
        ``{field: (stored value, requested value)}``, in field order; empty when the run can
        resume with ``requested``.

    Raises
    ------
    TypeError
        If ``stored`` or ``requested`` is not a :class:`TrainConfig`.

    Examples
    --------
    >>> import dataclasses
    >>> from unitary_update.experiments.config import TrainConfig, resume_conflicts
    >>> run = TrainConfig(task="adding", hidden_size=16)
    >>> resume_conflicts(run, dataclasses.replace(run, steps=5000, hidden_size=64, optimizer="adam"))
    {'hidden_size': (16, 64), 'optimizer': ('rmsprop', 'adam')}
    """
    for value, name in ((stored, "stored"), (requested, "requested")):
        if not isinstance(value, TrainConfig):
            raise TypeError(f"{name} must be a TrainConfig; got {type(value).__name__}")
    conflicts = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name in RESUMABLE:
            continue
        old, new = getattr(stored, field.name), getattr(requested, field.name)
        if old != new and _resolved(stored, field.name) != _resolved(requested, field.name):
            conflicts[field.name] = (old, new)
    return conflicts


def _resolved(config: TrainConfig, name: str) -> Any:
    """The value a setting takes in the run (None for ``hidden_size`` or ``length``: the task's default)."""
    if name == "hidden_size":
        return config.resolved_hidden()
    if name == "length" and config.length is None:
        return TASK_CLASSES[config.task].default_length
    return getattr(config, name)


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a run's ``config.json`` back, checking every setting.

    Parameters
    ----------
    path : str or path-like
        The ``config.json`` file (or a run directory holding one).

    Returns
    -------
    TrainConfig
        The stored settings (missing ones take their defaults).

    Raises
    ------
    TypeError
        If ``path`` is not a path.
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a JSON object of settings, holds an unknown setting, or a setting is
        invalid; the message names the file and the setting.

    Examples
    --------
    >>> import dataclasses, json, pathlib, tempfile
    >>> from unitary_update.experiments.config import TrainConfig, load_config
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "config.json"
    >>> _ = path.write_text(json.dumps(dataclasses.asdict(TrainConfig(task="adding", steps=7))))
    >>> load_config(path).steps
    7
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a path (str or os.PathLike); got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not a readable JSON file of settings ({err})") from None
    return config_from_dict(stored, str(path))


def config_from_dict(stored: Any, where: str) -> TrainConfig:
    """A :class:`TrainConfig` from the dict of its settings (``dataclasses.asdict``, read from JSON).

    Parameters
    ----------
    stored : dict
        The settings (missing ones take their defaults).
    where : str
        Where they come from, for the messages (a file, a checkpoint entry).

    Returns
    -------
    TrainConfig
        The settings, each checked.

    Raises
    ------
    ValueError
        If ``stored`` is not a dict of settings, holds an unknown setting, or a setting is
        invalid; the message starts with ``where`` and names the setting.

    Examples
    --------
    >>> from unitary_update.experiments.config import config_from_dict
    >>> config_from_dict({"task": "adding", "steps": 7}, "example").steps
    7
    >>> config_from_dict({"task": "adding", "stepz": 7}, "example")
    Traceback (most recent call last):
    ...
    ValueError: example: unknown setting 'stepz'
    """
    if not isinstance(stored, dict):
        raise ValueError(f"{where}: expected a JSON object of settings; got {type(stored).__name__}")
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise ValueError(f"{where}: unknown setting {', '.join(map(repr, unknown))}")
    try:
        return TrainConfig(**stored)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None
