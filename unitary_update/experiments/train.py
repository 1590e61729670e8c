"""Training a :class:`~unitary_update.models.urnn.URNN` with projUNN: the loop, metrics, checkpoints, resume, plots.

A run lives in one directory:

``config.json``
    The :class:`TrainConfig` of the run (a resumed run reads it back).
``metrics.jsonl``
    One JSON object per line: ``{"split": "train", "step", "loss", "baseline", "elapsed_s",
    "steps_per_s"}`` every ``log_every`` steps (loss averaged over those steps) and
    ``{"split": "eval", "step", "loss", "baseline", "accuracy"?}`` on held-out data every
    ``eval_every`` steps.
``checkpoint.npz``
    All parameters, both optimizers' states (moments, step counts, the sketch generator's state),
    the seed and the step; written every ``checkpoint_every`` steps, at the end, and on Ctrl-C.
``loss.png``
    Written by :func:`plot_run`.

Reproducibility: the training batch of step ``s`` is drawn from ``default_rng([seed, 1, s])``
(permuted MNIST: batch ``s`` of a per-epoch shuffle seeded by ``[seed, epoch]``), the held-out set
from ``default_rng([seed, 2])``, the model from ``seed`` and the sketches from a generator whose
state is checkpointed; so ``--resume`` continues with exactly the losses of an uninterrupted run
(same machine and BLAS threads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._config import options
from .._xp import array_namespace, get_namespace, to_namespace
from ..models.urnn import URNN
from ..optim import Optimizer, UnitaryOptimizer, make_optimizer
from .tasks import PermutedMNIST, Task, make_task

__all__ = [
    "TrainConfig",
    "build",
    "load_checkpoint",
    "plot_run",
    "read_metrics",
    "save_checkpoint",
    "to_device",
    "train",
]

_DEFAULT_HIDDEN = {"copy": 190, "adding": 170, "pmnist": 170}


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
        Total number of training steps (a resumed run continues up to it).
    batch_size, hidden_size : int
        ``hidden_size`` None picks the paper's size (copy 190, adding and pmnist 170).
    complex : bool
        Complex (unitary) instead of real (orthogonal) recurrent matrix.
    init : str
        Initialiser of W (``henaff``, ``cayley``, ``haar``, ``identity``).
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
    dtype: str = "float32"
    optimizer: str = "rmsprop"
    lr: float = 1e-3
    w_lr_divisor: float = 32.0
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    momentum: float = 0.0
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
        milestones = tuple(self.lr_milestones)  # a list when read back from config.json
        if any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in milestones) or list(
            milestones
        ) != sorted(set(milestones)):
            raise ValueError(f"lr_milestones must be increasing positive step numbers; got {self.lr_milestones!r}")
        self.lr_milestones = tuple(int(m) for m in milestones)
        if not (0 < self.lr_gamma <= 1):
            raise ValueError(f"lr_gamma must be in (0, 1]; got {self.lr_gamma!r}")

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
            ``hidden_size`` if set, else 190 (copy), 170 (adding, pmnist) or 128.
        """
        return int(self.hidden_size or _DEFAULT_HIDDEN.get(self.task, 128))


def build(config: TrainConfig) -> tuple[Task, URNN, Optimizer, UnitaryOptimizer]:
    """The task, the model and the two optimizers of a run, all seeded from ``config.seed``.

    Parameters
    ----------
    config : TrainConfig
        The run's settings.

    Returns
    -------
    task : Task
        The task (:func:`unitary_update.experiments.tasks.make_task`).
    model : URNN
        The model, initialised from ``config.seed``.
    opt : Optimizer
        The optimizer of the Euclidean parameters (V, b, O, c), learning rate ``config.lr``.
    w_opt : UnitaryOptimizer
        The projUNN optimizer of W (learning rate ``config.lr / config.w_lr_divisor``).

    Raises
    ------
    ValueError
        For an invalid setting (task, length, optimizer, update, sketch, dtype, ...).
    FileNotFoundError
        For pmnist, if an MNIST file is missing from ``config.mnist_dir``.

    Examples
    --------
    >>> from unitary_update.experiments.train import TrainConfig, build
    >>> task, model, opt, w_opt = build(TrainConfig(task="copy", length=5, hidden_size=8))
    >>> model.params["W"].shape, type(opt).__name__, w_opt.update
    ((8, 8), 'RMSprop', 'project')
    """
    task = make_task(config.task, length=config.length, mnist_dir=config.mnist_dir)
    model = URNN(
        task.input_size,
        config.resolved_hidden(),
        task.output_size,
        complex=config.complex,
        output=task.output,
        loss=task.loss,
        init=config.init,
        dtype=np.dtype(config.dtype),
        rng=config.seed,
    )
    extra = {"momentum": config.momentum} if config.optimizer == "sgd" else {}
    opt = make_optimizer(config.optimizer, config.lr, **extra)
    w_base = make_optimizer(config.optimizer, config.lr / config.w_lr_divisor, **extra)
    drift = None
    if config.retract_every:
        from .._retract import DriftControl

        drift = DriftControl(every=config.retract_every, tol=None)
    w_opt = UnitaryOptimizer(
        w_base,
        rank=config.rank,
        update=config.update,
        sketch=config.sketch,
        rng=np.random.default_rng([config.seed, 3]),
        drift=drift,
    )
    return task, model, opt, w_opt


def _train_batch(task: Task, config: TrainConfig, step: int) -> tuple[Any, Any]:
    if isinstance(task, PermutedMNIST):
        return task.epoch_batch(step, config.batch_size, config.seed)
    return task.batch(config.batch_size, np.random.default_rng([config.seed, 1, step]))


def _eval_set(task: Task, config: TrainConfig) -> tuple[Any, Any]:
    if isinstance(task, PermutedMNIST):
        return task.split("test", config.eval_size)
    return task.batch(config.eval_size, np.random.default_rng([config.seed, 2]))


def evaluate(model: URNN, x: Any, y: Any, chunk: int = 512) -> dict[str, float]:
    """Loss and accuracy over ``(x, y)`` in chunks of ``chunk`` sequences (bounded memory)."""
    totals: dict[str, float] = {}
    for start in range(0, len(x), chunk):
        part = model.evaluate(x[start : start + chunk], y[start : start + chunk])
        weight = len(x[start : start + chunk]) / len(x)
        for key, value in part.items():
            totals[key] = totals.get(key, 0.0) + weight * value
    return totals


# --------------------------------------------------------------------------------------------
# Checkpoints and metrics
# --------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, model: URNN, opt: Optimizer, w_opt: UnitaryOptimizer, meta: dict[str, Any]) -> None:
    """Write parameters, optimizer states and ``meta`` (step, seed, ...) atomically to ``path`` (npz).

    Parameters
    ----------
    path : pathlib.Path
        The ``.npz`` file to write (written to a temporary file next to it, then renamed).
    model : URNN
        The model whose parameters are saved.
    opt : Optimizer
        The optimizer of the Euclidean parameters.
    w_opt : UnitaryOptimizer
        The optimizer of W.
    meta : dict
        JSON-serialisable scalars (step, seed, elapsed time, ...).

    Raises
    ------
    OSError
        If the file cannot be written.
    TypeError
        If ``meta`` is not JSON-serialisable.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> from unitary_update.experiments.train import TrainConfig, build, load_checkpoint, save_checkpoint
    >>> cfg = TrainConfig(task="adding", length=6, hidden_size=8)
    >>> task, model, opt, w_opt = build(cfg)
    >>> x, y = task.batch(4, rng=0)
    >>> loss, grads = model.loss_and_grads(x, y)
    >>> w_opt.step(model.params["W"], grads.pop("W")); opt.step(model.params, grads)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.npz"
    >>> save_checkpoint(path, model, opt, w_opt, {"step": 1, "seed": 0})
    >>> _, fresh, fresh_opt, fresh_w_opt = build(cfg)
    >>> load_checkpoint(path, fresh, fresh_opt, fresh_w_opt)
    {'step': 1, 'seed': 0}
    >>> bool(np.array_equal(fresh.params["W"], model.params["W"])), fresh_w_opt.steps
    (True, 1)
    """
    arrays: dict[str, Any] = {f"param/{k}": _to_host(v) for k, v in model.params.items()}
    arrays.update({f"opt/{k}": _to_host(v) for k, v in opt.state_dict().items()})
    arrays.update({f"wopt/{k}": _to_host(v) for k, v in w_opt.state_dict().items()})
    arrays["meta"] = np.asarray(json.dumps(meta))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: URNN, opt: Optimizer, w_opt: UnitaryOptimizer) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint` in place; return its ``meta``.

    Parameters
    ----------
    path : pathlib.Path
        The ``.npz`` file written by :func:`save_checkpoint`.
    model : URNN
        Receives the parameters (copied into its arrays, which must have the saved shapes).
    opt : Optimizer
        Receives the Euclidean optimizer's state (same type as when saved).
    w_opt : UnitaryOptimizer
        Receives the state of the optimizer of W.

    Returns
    -------
    dict
        The ``meta`` passed to :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If an optimizer is of another type than the saved one, or a parameter's shape differs.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> from unitary_update.experiments.train import TrainConfig, build, load_checkpoint, save_checkpoint
    >>> cfg = TrainConfig(task="adding", length=6, hidden_size=8)
    >>> task, model, opt, w_opt = build(cfg)
    >>> x, y = task.batch(4, rng=0)
    >>> loss, grads = model.loss_and_grads(x, y)
    >>> w_opt.step(model.params["W"], grads.pop("W")); opt.step(model.params, grads)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.npz"
    >>> save_checkpoint(path, model, opt, w_opt, {"step": 1, "seed": 0})
    >>> _, fresh, fresh_opt, fresh_w_opt = build(cfg)
    >>> load_checkpoint(path, fresh, fresh_opt, fresh_w_opt)
    {'step': 1, 'seed': 0}
    >>> bool(np.array_equal(fresh.params["W"], model.params["W"])), fresh_w_opt.steps
    (True, 1)
    """
    with np.load(path) as data:
        groups: dict[str, dict[str, Any]] = {"param": {}, "opt": {}, "wopt": {}}
        for key in data.files:
            if key == "meta":
                continue
            group, name = key.split("/", 1)
            value = data[key]
            groups[group][name] = value.item() if value.dtype.kind == "U" else value
        meta = json.loads(str(data["meta"]))
    for name, value in groups["param"].items():
        model.params[name][...] = to_namespace(value, array_namespace(model.params[name]))
    opt.load_state_dict(groups["opt"])
    w_opt.load_state_dict(groups["wopt"])
    _move_moments(opt, w_opt, array_namespace(model.params["W"]))
    return meta


def _to_host(value: Any) -> Any:
    """A NumPy copy of a device array (checkpoints hold host arrays); strings and NumPy as they are."""
    return value if isinstance(value, str) else to_namespace(value, np)


def _move_moments(opt: Optimizer, w_opt: UnitaryOptimizer, xp: Any) -> None:
    """Move both optimizers' buffers to the namespace ``xp`` (no copy when they are already there)."""
    for optimizer in (opt, w_opt.base):
        for buffers in optimizer.state.values():
            for key, value in buffers.items():
                buffers[key] = to_namespace(value, xp)


def to_device(model: URNN, opt: Optimizer, w_opt: UnitaryOptimizer, xp: Any) -> None:
    """Move a model's parameters and both optimizers' states to the namespace ``xp`` (NumPy or CuPy).

    Parameters
    ----------
    model : URNN
        Its ``params`` are replaced by arrays of ``xp`` (a host-device copy when the namespace
        changes, else the same arrays).
    opt, w_opt : Optimizer, UnitaryOptimizer
        Their moment buffers are moved the same way.
    xp : module
        The target namespace: :mod:`numpy`, or :mod:`cupy` (see
        :func:`unitary_update._xp.get_namespace`).

    Raises
    ------
    MemoryError
        From CuPy (``cupy.cuda.memory.OutOfMemoryError`` is a ``MemoryError``) when the device
        cannot hold the parameters and moments; arrays already moved stay moved.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.experiments.train import TrainConfig, build, to_device
    >>> task, model, opt, w_opt = build(TrainConfig(task="adding", length=6, hidden_size=8))
    >>> to_device(model, opt, w_opt, np)
    >>> type(model.params["W"]).__name__
    'ndarray'
    """
    for name, value in model.params.items():
        model.params[name] = to_namespace(value, xp)
    _move_moments(opt, w_opt, xp)


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` as a list of dicts.

    Parameters
    ----------
    run_dir : str or path-like
        A run directory (see :func:`train`).

    Returns
    -------
    list of dict
        One dict per line of ``metrics.jsonl``, in order.

    Raises
    ------
    FileNotFoundError
        If the run has no ``metrics.jsonl``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from unitary_update.experiments.train import read_metrics
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 0.5}\\n')
    >>> read_metrics(d)[0]["loss"]
    0.5
    """
    path = Path(run_dir) / "metrics.jsonl"
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class _Progress:
    """A one-line progress bar on stderr: steps, loss, baseline, steps/s."""

    def __init__(self, total: int, baseline: float, enabled: bool) -> None:
        self.total, self.baseline, self.enabled = total, baseline, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.last = 0.0

    def update(self, step: int, loss: Any, rate: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last = now
        loss = float(loss)  # a device read on a GPU: at most every 0.2 s
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        text = f"[{bar}] {step}/{self.total} loss {loss:.4f} baseline {self.baseline:.4f} {rate:.2f} steps/s"
        sys.stderr.write(("\r" + text) if self.tty else text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def train(
    config: TrainConfig | None,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    steps: int | None = None,
    time_limit_s: float | None = None,
    progress: bool = True,
    on_step: Callable[[int, Any], None] | None = None,
    device: str | None = None,
    lr_milestones: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Train a unitary RNN with projUNN on ``config.task``, writing metrics and checkpoints to ``run_dir``.

    Parameters
    ----------
    config : TrainConfig or None
        The run's settings; None with ``resume=True`` reads ``run_dir/config.json``.
    run_dir : str or path-like
        Output directory (created).
    resume : bool, default False
        Continue from ``run_dir/checkpoint.npz``: parameters, optimizer states and step are
        restored, metrics after the checkpoint's step are dropped, and training continues to
        ``steps`` (default: the configured total).
    steps : int, optional
        Override the total number of steps (e.g. to extend a resumed run).
    time_limit_s : float, optional
        Override the configured wall-clock limit of this process (seconds).
    progress : bool, default True
        Show a progress bar on stderr.
    on_step : callable, optional
        Called as ``on_step(step, loss)`` after each completed step (used by tests); ``loss`` is
        a float on the CPU and a 0-d device array on a GPU.
    device : str, optional
        Override ``config.device`` (e.g. to resume a CPU run on a GPU).
    lr_milestones : tuple of int, optional
        Override ``config.lr_milestones`` (e.g. to add a learning-rate drop when extending a
        resumed run; milestones at or before the checkpoint's step apply from the first step).

    Returns
    -------
    dict
        ``{"step", "status" ("completed" | "interrupted" | "time_limit"), "train_loss",
        "eval"}`` (the last evaluation's metrics).

    Raises
    ------
    FileNotFoundError
        On ``resume`` without a checkpoint, or for missing MNIST files.
    FloatingPointError
        If the loss becomes NaN or infinite (the last checkpoint is kept).  On the CPU every
        step's loss is checked; on a GPU the mean loss is checked every ``log_every`` steps.
    ValueError, RuntimeError
        For an unknown device, or a GPU device without CuPy and a GPU.

    Notes
    -----
    Ctrl-C (SIGINT) finishes the current step, writes a checkpoint and returns with status
    ``"interrupted"``.  On a GPU (``device="gpu"``) the parameters and optimizer states live on
    the device; each batch is generated on the host and copied over; the loop runs with the
    ``check_finite`` option off, and the only reads of device values are the logged mean loss
    (every ``log_every`` steps), evaluations, checkpoints and the progress bar (at most every
    0.2 s), so the GPU is not made to wait on every step.

    The W update uses the factored gradient ``(X, Y)`` (no N x N gradient) when the optimizer is
    plain SGD, and the dense gradient otherwise (RMSprop and Adam act on its entries).

    Examples
    --------
    >>> import tempfile
    >>> from unitary_update.experiments.train import TrainConfig, train
    >>> cfg = TrainConfig(task="adding", length=6, steps=3, hidden_size=8, batch_size=4, eval_size=8)
    >>> train(cfg, tempfile.mkdtemp(), progress=False)["status"]
    'completed'
    """
    run = Path(run_dir)
    config_path, ckpt_path, metrics_path = run / "config.json", run / "checkpoint.npz", run / "metrics.jsonl"
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_path}")
        if config is None:
            config = TrainConfig(**json.loads(config_path.read_text()))
    if config is None:
        raise ValueError("config is required unless resume=True")
    if steps is not None:
        config = dataclasses.replace(config, steps=int(steps))
    if device is not None:
        config = dataclasses.replace(config, device=str(device))
    if lr_milestones is not None:
        config = dataclasses.replace(config, lr_milestones=tuple(lr_milestones))
    xp = get_namespace(config.device)  # before anything is written: a bad device fails here
    run.mkdir(parents=True, exist_ok=True)
    if time_limit_s is not None:
        config = dataclasses.replace(config, time_limit_s=float(time_limit_s))
    task, model, opt, w_opt = build(config)
    start, elapsed_before = 0, 0.0
    if resume:
        resumed = load_checkpoint(ckpt_path, model, opt, w_opt)
        start, elapsed_before = int(resumed["step"]), float(resumed.get("elapsed_s", 0.0))
        kept = [r for r in read_metrics(run) if r["step"] <= start] if metrics_path.is_file() else []
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    else:
        metrics_path.write_text("")
    config_path.write_text(json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    to_device(model, opt, w_opt, xp)

    factored = config.optimizer == "sgd" and config.momentum == 0
    x_eval, y_eval = _eval_set(task, config)
    interrupted = False

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    bar = _Progress(config.steps, task.baseline, progress)
    t0 = time.perf_counter()
    window: list[float] = []
    last_eval: dict[str, float] = {}
    status, step, loss = "completed", start, math.nan

    def meta() -> dict[str, Any]:
        return {"step": step, "seed": config.seed, "elapsed_s": elapsed_before + time.perf_counter() - t0}

    def log(record: dict[str, Any]) -> None:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def run_eval() -> None:
        nonlocal last_eval
        from ..metrics import unitarity_error

        last_eval = evaluate(model, x_eval, y_eval)
        drift = float(unitarity_error(model.params["W"]))
        log({"split": "eval", "step": step, **last_eval, "baseline": task.baseline, "unitarity_error": drift})

    on_device = xp is not np
    # On a GPU the finiteness checks inside the updates would read the device every step.
    checks = (lambda: options(check_finite=False)) if on_device else contextlib.nullcontext
    try:
        if start == 0 and config.eval_every:
            run_eval()
        while step < config.steps:
            x, y = _train_batch(task, config, step)
            if on_device:
                x, y = xp.asarray(x), xp.asarray(y)
            factor = config.lr_factor(step)
            opt.lr, w_opt.base.lr = config.lr * factor, config.lr / config.w_lr_divisor * factor
            with checks():
                loss, grads = model.loss_and_grads(x, y, factored=factored)
                if not on_device and not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {step + 1}; last checkpoint kept")
                w_opt.step(model.params["W"], grads.pop("W"))
                opt.step(model.params, grads)
            step += 1
            window.append(loss)
            rate = (step - start) / max(time.perf_counter() - t0, 1e-9)
            if step % config.log_every == 0 or step == config.steps:
                mean_loss = float(xp.mean(xp.stack(window))) if on_device else float(np.mean(window))
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"loss became {mean_loss} by step {step}; last checkpoint kept")
                log(
                    {
                        "split": "train",
                        "step": step,
                        "loss": mean_loss,
                        "baseline": task.baseline,
                        "elapsed_s": round(meta()["elapsed_s"], 3),
                        "steps_per_s": round(rate, 4),
                    }
                )
                window = []
            if config.eval_every and step % config.eval_every == 0:
                run_eval()
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save_checkpoint(ckpt_path, model, opt, w_opt, meta())
            bar.update(step, loss, rate)
            if on_step is not None:
                on_step(step, loss)
            if interrupted:
                status = "interrupted"
                break
            if config.time_limit_s is not None and time.perf_counter() - t0 > config.time_limit_s:
                status = "time_limit"
                break
        if status == "completed" and config.eval_every and step % config.eval_every:
            run_eval()
        save_checkpoint(ckpt_path, model, opt, w_opt, meta())
    finally:
        bar.update(step, loss, (step - start) / max(time.perf_counter() - t0, 1e-9), force=True)
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return {"step": step, "status": status, "train_loss": float(loss), "eval": last_eval}


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
def plot_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Draw the training and held-out loss of a run against its memoryless baseline, as a PNG.

    For permuted MNIST the held-out accuracy is drawn too, on a second axis.

    Parameters
    ----------
    run_dir : str or path-like
        A run directory with ``metrics.jsonl``.
    out : str or path-like, optional
        The PNG to write (default ``run_dir/loss.png``).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    FileNotFoundError
        If the run has no metrics.
    ImportError
        If matplotlib is not installed (``pip install unitary_update[plot]``).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from unitary_update.experiments.train import plot_run
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "metrics.jsonl").write_text(
    ...     '{"split": "train", "step": 10, "loss": 0.5, "baseline": 0.167}\\n'
    ...     '{"split": "train", "step": 20, "loss": 0.1, "baseline": 0.167}\\n'
    ... )
    >>> plot_run(d).name
    'loss.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    config_path = Path(run_dir) / "config.json"
    title = Path(run_dir).name
    if config_path.is_file():
        cfg = TrainConfig(**json.loads(config_path.read_text()))
        length = "" if cfg.task == "pmnist" else f" {'delay' if cfg.task == 'copy' else 'length'} {cfg.length}"
        title = f"{cfg.task}{length}, N={cfg.resolved_hidden()}, rank {cfg.rank}, {cfg.update}, {cfg.optimizer}"
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for split, style in (("train", "-"), ("eval", "o-")):
        rows = [r for r in records if r["split"] == split]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, ms=3, label=f"{split} loss")
    baseline = next((r["baseline"] for r in records if r.get("baseline") is not None), None)
    if baseline is not None:
        ax.axhline(baseline, color="k", ls="--", lw=1, label=f"memoryless baseline {baseline:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    accuracy = [r for r in records if r["split"] == "eval" and "accuracy" in r]
    if accuracy and title.startswith("pmnist"):  # classification: the held-out accuracy is the result
        acc_ax = ax.twinx()
        acc_ax.plot([r["step"] for r in accuracy], [100 * r["accuracy"] for r in accuracy], "s-", ms=3, color="C3")
        acc_ax.set_ylabel("held-out accuracy (%)", color="C3")
        acc_ax.tick_params(axis="y", colors="C3")
    ax.legend(fontsize=8)
    fig.tight_layout()
    target = Path(out) if out is not None else Path(run_dir) / "loss.png"
    fig.savefig(target)
    plt.close(fig)
    return target
