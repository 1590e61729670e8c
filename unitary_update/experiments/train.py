"""Training a :class:`~unitary_update.models.urnn.URNN` with projUNN: the loop, its metrics and its resume.

The settings are a :class:`TrainConfig` (:mod:`~unitary_update.experiments.config`); checkpoints
and the metrics log are written by :mod:`~unitary_update.experiments.checkpoints`, plots drawn by
:mod:`~unitary_update.experiments.plots`; all of them are importable from here too.

A run lives in one directory:

``config.json``
    The :class:`TrainConfig` of the run (a resumed run reads it back).
``metrics.jsonl``
    One JSON object per line: ``{"split": "train", "step", "loss", "baseline", "elapsed_s",
    "steps_per_s"}`` every ``log_every`` steps (loss averaged over those steps) and
    ``{"split": "eval", "step", "loss", "accuracy"?, "baseline", "unitarity_error"}`` on
    held-out data every ``eval_every`` steps.
``checkpoint.npz``
    All parameters, both optimizers' states (moments, step counts, the sketch generator's state),
    the seed and the step; written every ``checkpoint_every`` steps, at the end, and on Ctrl-C.
``loss.png``
    Written by :func:`plot_run`.

Reproducibility: the training batch of step ``s`` is drawn from ``default_rng([seed, 1, s])``
(permuted MNIST: batch ``s`` of a per-epoch shuffle seeded by ``[seed, epoch]``), the held-out set
from ``default_rng([seed, 2])`` (the task's :meth:`~unitary_update.experiments.tasks.Task.train_batch`
and :meth:`~unitary_update.experiments.tasks.Task.eval_set`), the model from ``seed`` and the
sketches from a generator whose state is checkpointed; so ``--resume`` continues with exactly the
losses of an uninterrupted run (same machine and BLAS threads).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import numbers
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from tqdm import tqdm

from .._config import options
from .._validation import check_float
from .._xp import array_namespace, get_namespace, hconj
from ..metrics import unitarity_error
from ..models.urnn import URNN
from ..optim import Optimizer, UnitaryOptimizer, make_optimizer
from ._errors import CheckpointError
from .checkpoints import load_checkpoint, read_metrics, save_checkpoint, to_device, write_text_atomic
from .config import RESUMABLE, TrainConfig, config_from_dict, load_config, resume_conflicts
from .plots import plot_run
from .tasks import Task, make_task

__all__ = [
    "RESUMABLE",
    "CheckpointError",
    "TrainConfig",
    "build",
    "clip_by_global_norm",
    "evaluate",
    "load_checkpoint",
    "plot_run",
    "read_metrics",
    "save_checkpoint",
    "to_device",
    "train",
    "training_step",
]


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
        For an invalid setting (task, length, optimizer, update, sketch, dtype, ...), or sizes
        (``hidden_size``, ``length``, ``batch_size``, ``eval_size``) whose arrays no array can
        hold or that need more than the machine's physical memory (the message names them), or an
        ``input_scale`` that overflows the input weights in ``config.dtype``.
    FileNotFoundError
        For pmnist, if an MNIST file is missing from ``config.mnist_dir``.

    Examples
    --------
    >>> from unitary_update.experiments.train import TrainConfig, build
    >>> task, model, opt, w_opt = build(TrainConfig(task="copy", length=5, hidden_size=8))
    >>> model.params["W"].shape, type(opt).__name__, w_opt.update
    ((8, 8), 'RMSprop', 'project')
    """
    task = make_task(config.task, length=config.length, mnist_dir=config.mnist_dir, pixels=config.pixels)
    _check_memory(config, task)
    model = URNN(
        task.input_size,
        config.resolved_hidden(),
        task.output_size,
        complex=config.complex,
        output=task.output,
        loss=task.loss,
        init=config.init,
        activation=config.activation,
        dtype=np.dtype(config.dtype),
        rng=config.seed,
    )
    if config.input_scale != 1.0:
        scaled = model.params["V"] * np.float64(config.input_scale)  # in double: no overflow here
        if not np.abs(scaled).max(initial=0.0) < np.finfo(model.real_dtype).max:
            raise ValueError(
                f"input_scale {config.input_scale!r} overflows the initial input weights V in {config.dtype}"
            )
        model.params["V"] = scaled.astype(model.dtype, copy=False)
    if config.readout_init == "uniform":  # PyTorch's nn.Linear default, from a stream of its own
        readout_rng = np.random.default_rng([config.seed, 4])
        bound = 1.0 / math.sqrt(model.params["O"].shape[1])
        for name in ("O", "c"):
            shape = model.params[name].shape
            model.params[name] = readout_rng.uniform(-bound, bound, shape).astype(model.real_dtype)
    if config.bias_init == "zero":
        model.params["b"] = np.zeros_like(model.params["b"])
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


def _physical_memory() -> int | None:
    """The machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


def _gib(nbytes: int) -> str:
    """A byte count in GiB, also for integers too large for a float."""
    return f"{nbytes / 2**30:.3g} GiB" if nbytes.bit_length() < 1000 else f"about 10^{len(str(nbytes)) - 10} GiB"


def _check_memory(config: TrainConfig, task: Task) -> None:
    """Refuse sizes whose arrays cannot exist, or need more than the machine's memory, by name.

    Called before the model is made and before the run directory exists: without it a huge
    ``hidden_size``, ``length``, ``batch_size`` or ``eval_size`` ends in NumPy's "array is too
    big" or a MemoryError naming no setting, after the run directory was written.
    """
    n, T, n_in = config.resolved_hidden(), int(task.length), int(task.input_size)
    item = np.dtype(config.dtype).itemsize * (2 if config.complex else 1)
    chunk = min(config.eval_size, 512)
    parts = [
        ("hidden_size", n * n * item, f"W ({n} x {n})"),
        ("length, batch_size and hidden_size", 2 * (T + 1) * config.batch_size * n * item, "a step's states"),
        ("length and batch_size", config.batch_size * T * (n_in * 4 + 8), "a training batch"),
        ("length and eval_size", config.eval_size * T * (n_in * 4 + 8), "the held-out set"),
        ("length, eval_size and hidden_size", (T + 1) * chunk * n * item, "an evaluation's states"),
    ]
    sizes = f"length {T}, batch_size {config.batch_size}, eval_size {config.eval_size}, hidden_size {n}"
    for names, nbytes, what in parts:
        if nbytes > np.iinfo(np.intp).max:
            raise ValueError(
                f"{names} too large: {what} would need {_gib(nbytes)}, more than an array can hold ({sizes})"
            )
    total, memory = sum(nbytes for _, nbytes, _ in parts), _physical_memory()
    if memory is not None and total > memory:
        largest = max(parts, key=lambda part: part[1])
        raise ValueError(
            f"{largest[0]} too large: the run needs at least {_gib(total)} ({largest[2]}: "
            f"{_gib(largest[1])}), more than this machine's {_gib(memory)} ({sizes})"
        )


def evaluate(model: URNN, x: Any, y: Any, chunk: int = 512) -> dict[str, float]:
    """Loss and accuracy over ``(x, y)`` in chunks of ``chunk`` sequences (bounded memory).

    Parameters
    ----------
    model : URNN
        The model to evaluate.
    x, y : array
        Inputs and targets, as :meth:`unitary_update.experiments.tasks.Task.batch` returns them.
    chunk : int, default 512
        Sequences per forward pass.

    Returns
    -------
    dict
        The model's metrics (``loss``, and ``accuracy`` for a classification loss), each the
        mean over all of ``x``: over its labelled positions for integer targets (-1: no label),
        over its sequences for real ones, whatever ``chunk``.

    Raises
    ------
    TypeError, ValueError
        For a non-real ``x`` or a shape that does not fit the model (from
        :meth:`~unitary_update.models.urnn.URNN.evaluate`), an empty ``x``, ``x`` and ``y`` of
        different lengths, ``x`` or ``y`` not an array, ``chunk`` not an integer >= 1, or integer
        targets without a labelled position.

    Examples
    --------
    >>> from unitary_update.experiments.train import TrainConfig, build, evaluate
    >>> task, model, _, _ = build(TrainConfig(task="copy", length=3, hidden_size=8))
    >>> sorted(evaluate(model, *task.batch(10, rng=0), chunk=4))
    ['accuracy', 'loss']
    """
    if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1; got {chunk!r}")
    for value, name in ((x, "x"), (y, "y")):
        if not hasattr(value, "__len__") or not hasattr(value, "__getitem__") or getattr(value, "ndim", 1) == 0:
            raise TypeError(f"{name} must be an array of sequences; got {type(value).__name__}")
    if len(x) < 1:
        raise ValueError(f"x must hold at least one sequence; got shape {tuple(getattr(x, 'shape', (len(x),)))}")
    if len(y) != len(x):
        raise ValueError(f"x and y must hold the same number of sequences; got {len(x)} and {len(y)}")
    # each chunk's means weigh by what they average: its labelled positions (integer targets,
    # -1 = no label) or its sequences (real targets)
    labelled = getattr(getattr(y, "dtype", None), "kind", "f") in "iu"
    sums: dict[str, float] = {}
    total = 0
    for start in range(0, len(x), chunk):
        y_part = y[start : start + chunk]
        weight = int((y_part >= 0).sum()) if labelled else len(y_part)
        if weight == 0:
            continue
        part = model.evaluate(x[start : start + chunk], y_part)
        total += weight
        for key, value in part.items():
            sums[key] = sums.get(key, 0.0) + weight * value
    if total == 0:
        raise ValueError("y has no labelled position (every target is -1): there is nothing to evaluate")
    return {key: value / total for key, value in sums.items()}


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
        The run's settings; None with ``resume=True`` reads ``run_dir/config.json``.  On resume
        a given config must equal the stored one except in the settings of :data:`RESUMABLE`
        (steps, time limit, device, milestones, logging, evaluation and checkpoint periods,
        MNIST folder), which then apply.
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
        Show a progress bar (tqdm) on stderr when stderr is a terminal.
    on_step : callable, optional
        Called as ``on_step(step, loss)`` after each completed step (used by tests); ``loss`` is
        a float on the CPU and a 0-d device array on a GPU.
    device : str, optional
        Override ``config.device`` (e.g. to resume a CPU run on a GPU).
    lr_milestones : tuple of int, optional
        Override ``config.lr_milestones`` (e.g. to add a learning-rate drop when extending a
        resumed run).  On resume, milestones before the checkpoint's step cannot be added or
        removed (those steps are taken): ValueError.

    Returns
    -------
    dict
        ``{"step", "status" ("completed" | "interrupted" | "time_limit"), "train_loss",
        "eval", "eval_step", "signal"}``: the metrics of this process's last evaluation and its
        step (``{}`` and None when it evaluated nothing); ``"signal"`` is the number of the
        signal that interrupted the run (SIGINT or SIGTERM, which both checkpoint and stop after
        the current step), else 0.

    Raises
    ------
    FileNotFoundError
        On ``resume`` without a checkpoint, or for missing MNIST files.
    CheckpointError
        (a ValueError) On ``resume``, if the checkpoint is corrupt, tampered or of another run
        (see :func:`load_checkpoint`); nothing in ``run_dir`` is changed.
    TypeError, ValueError
        For an invalid setting or argument (``run_dir`` not a path, ``resume`` or ``progress``
        not a bool, ``on_step`` not callable, sizes beyond the machine's memory: all checked
        before ``run_dir`` is created), on ``resume`` a
        ``config`` that differs from the stored run outside :data:`RESUMABLE` (every such
        setting is listed) or ``steps`` below the checkpoint's step, or a ``config.json`` that
        cannot be read back.
    FloatingPointError
        If the loss becomes NaN or infinite (the last checkpoint is kept).  On the CPU every
        step's loss is checked; on a GPU the mean loss is checked every ``log_every`` steps.
    RuntimeError
        For a GPU device without CuPy and a GPU.
    OSError
        When another process is training in ``run_dir`` (it holds ``run_dir/.lock``).

    Notes
    -----
    Ctrl-C (SIGINT) and SIGTERM finish the current step, write a checkpoint and return with
    status ``"interrupted"``.  On a GPU (``device="gpu"``) the parameters and optimizer states live on
    the device; each batch is generated on the host and copied over; the loop runs with the
    ``check_finite`` option off, and the only reads of device values are the logged mean loss
    (every ``log_every`` steps, also shown by the progress bar), evaluations and checkpoints, so
    the GPU is not made to wait on every step.

    Each step is :func:`training_step`: all or nothing, so a step that raises leaves the
    model and the optimizers as they were after the step before.

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
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a path (str or os.PathLike); got {type(run_dir).__name__}")
    if os.fspath(run_dir) == "":  # Path("") is the working directory: a new run would clear its checkpoint
        raise ValueError("run_dir must not be empty (give a folder; '.' for the working directory)")
    for flag, name in ((resume, "resume"), (progress, "progress")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool (True or False); got {flag!r} of type {type(flag).__name__}")
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be a callable on_step(step, loss) or None; got {type(on_step).__name__}")
    run = Path(run_dir)
    config = _run_config(config, run, bool(resume), steps, time_limit_s, device, lr_milestones)
    xp = get_namespace(config.device)  # before anything is written: a bad device or setting fails here
    task, model, opt, w_opt = build(config)
    task.check_sizes(config.batch_size, config.eval_size)
    run.mkdir(parents=True, exist_ok=True)
    with _exclusive(run):  # one process per run folder
        state = _Run(config, run, task, model, opt, w_opt, xp, resume)
        status = "completed"
        with _interruptible() as interrupted, _progress_bar(config.steps, state.step, task.baseline, progress) as bar:
            if state.step == 0 and config.eval_every:
                state.evaluate()
            while state.step < config.steps:
                state.train_step()
                if _due(state.step, config.log_every) or state.step == config.steps:
                    # at the last step, off the log period: an end-of-run record of the partial window
                    mean = state.log_train(end=not _due(state.step, config.log_every))
                    bar.set_postfix_str(f"loss {mean:.4f} baseline {task.baseline:.4f}", refresh=False)
                if _due(state.step, config.eval_every):
                    state.evaluate()
                if _due(state.step, config.checkpoint_every):
                    state.checkpoint()
                bar.update()
                if on_step is not None:
                    on_step(state.step, state.loss)
                if interrupted():
                    status = "interrupted"
                    break
                if config.time_limit_s is not None and state.seconds() > config.time_limit_s:
                    status = "time_limit"
                    break
            end_eval = status == "completed" and config.eval_every and not _due(state.step, config.eval_every)
            if state.step == state.start and (state.end_eval or not end_eval):
                return _result(state, status, interrupted)  # a resume with nothing left to do: no record
            if end_eval:
                state.evaluate(end=True)
            state.checkpoint()
        return _result(state, status, interrupted)


def _result(state: _Run, status: str, interrupted: Callable[[], int]) -> dict[str, Any]:
    """What :func:`train` returns (see there)."""
    return {
        "step": state.step,
        "status": status,
        "train_loss": float(state.loss),
        "eval": state.last_eval,
        "eval_step": state.last_eval_step,
        "signal": interrupted() if status == "interrupted" else 0,
    }


def clip_by_global_norm(grads: dict[str, Any], max_norm: float) -> dict[str, Any]:
    """The gradients scaled by ``min(1, max_norm / (norm + 1e-6))``, as ``torch.nn.utils.clip_grad_norm_``.

    Parameters
    ----------
    grads : dict
        A model's gradients (:meth:`~unitary_update.models.urnn.URNN.loss_and_grads`): NumPy or
        CuPy arrays, and W's either dense or as its factors ``(X, Y)`` with ``dL/dW = X Y^H``.
    max_norm : float
        The largest global norm kept, > 0.

    Returns
    -------
    dict
        New arrays (the inputs are not changed; no gradients give an empty dict), each in its own
        dtype; ``norm`` is the 2-norm of every entry of every gradient together (``||X Y^H||_F``
        for a factored W), taken in double precision (Notes).  A NaN or infinite norm gives NaN
        gradients (never zeros), which the optimizers refuse.

    Raises
    ------
    ValueError
        If ``max_norm`` is not finite and > 0.
    TypeError
        If ``max_norm`` is not a real number, a gradient is not a floating or complex array
        (named by its key), or the gradients mix NumPy and CuPy arrays.

    Notes
    -----
    The norm is taken in double precision, each gradient divided by its largest magnitude first
    and the norms combined the same way, so that neither float32 nor huge float64 gradients
    overflow it; the
    scaled gradients are multiplied in double and rounded to their dtype once (a tiny scale does
    not underflow).  A factored W gradient's norm comes from the N x N product ``X Y^H`` or, when
    ``T batch < N``, from the two ``T batch`` squared Gram matrices, after double copies of X and
    Y: clipping gives up the factored path's saving.  Nothing is read back to the host: on a GPU the scale stays a
    device scalar.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.experiments.train import clip_by_global_norm
    >>> clipped = clip_by_global_norm({"a": np.array([3.0, 0.0]), "b": np.array([4.0])}, 1.0)
    >>> np.round(clipped["a"], 6), np.round(clipped["b"], 6)
    (array([0.6, 0. ]), array([0.8]))
    """
    max_norm = check_float(max_norm, "max_norm", low=0, open_low=True)
    if not grads:
        return {}
    parts = {k: g if isinstance(g, tuple) else (g,) for k, g in grads.items()}
    for k, arrays in parts.items():
        for a in arrays:
            if getattr(getattr(a, "dtype", None), "kind", None) not in ("f", "c"):
                raise TypeError(f"grads[{k!r}] must be a floating or complex array; got {type(a).__name__} {a!r:.60}")
    xp = array_namespace(*(a for arrays in parts.values() for a in arrays))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        wide = {k: [_widened(a) for a in arrays] for k, arrays in parts.items()}  # each converted once
        norm = _norm_without_overflow(xp, xp.stack([_frobenius(xp, *w) for w in wide.values()]))
        # min(1, NaN) is NaN and max_norm / inf is 0 (then Inf * 0 is NaN): a bad norm never zeroes a gradient
        scale = xp.minimum(xp.asarray(1.0), max_norm / (norm + 1e-6))
        scale = xp.where(xp.isfinite(norm), scale, xp.asarray(np.nan))
        clipped = {}
        for k, arrays in parts.items():
            first = wide[k][0]
            first *= scale  # in double, then rounded once: a tiny scale does not underflow
            first = first.astype(arrays[0].dtype)
            clipped[k] = (first, arrays[1]) if len(arrays) == 2 else first
        return clipped


def _largest(xp: ModuleType, x: Any) -> Any:
    """The largest ``|entry|`` of ``x`` where it is positive and finite, else 1: a safe divisor."""
    largest = xp.abs(x).max() if x.size else xp.zeros((), dtype=np.float64)
    return xp.where((largest > 0) & xp.isfinite(largest), largest, 1.0)


def _norm_without_overflow(xp: ModuleType, d: Any) -> Any:
    """``||d||_F`` of a double array, its entries divided by the largest first: no overflow on the way."""
    unit = _largest(xp, d)
    return unit * xp.sqrt(xp.sum(xp.abs(d / unit) ** 2))


def _frobenius(xp: ModuleType, a: Any, b: Any = None) -> Any:
    """``||a||_F``, or ``||a b^H||_F`` for factors a, b of shape (N, M), double arrays, without overflow.

    The factors are divided by their largest entries first; with fewer columns than rows the norm
    comes from the M x M Gram matrices (``||a b^H||_F^2 = sum((a^H a) * conj(b^H b))``), else from
    the N x N product: the temporary is ``min(N, M)`` squared.
    """
    if b is None:
        return _norm_without_overflow(xp, a)
    ua, ub = _largest(xp, a), _largest(xp, b)
    a, b = a / ua, b / ub
    if a.shape[-1] >= a.shape[-2]:
        return ua * ub * _norm_without_overflow(xp, a @ hconj(b))
    square = xp.sum((hconj(a) @ a) * xp.conj(hconj(b) @ b)).real
    return ua * ub * xp.sqrt(xp.maximum(square, 0.0))


def _widened(a: Any) -> Any:
    """``a`` in double precision (complex128 for a complex array)."""
    return a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)


def _due(step: int, every: int) -> bool:
    """Whether a periodic action (every ``every`` steps; 0: never) falls on ``step``."""
    return bool(every) and step % every == 0


def _run_config(
    config: TrainConfig | None,
    run: Path,
    resume: bool,
    steps: int | None,
    time_limit_s: float | None,
    device: str | None,
    lr_milestones: tuple[int, ...] | None,
) -> TrainConfig:
    """The run's settings: ``config`` (or, on resume without one, ``config.json``) with the overrides.

    On resume a given ``config`` must agree with the stored one outside :data:`RESUMABLE`.
    """
    if resume:
        if not (run / "checkpoint.npz").is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {run / 'checkpoint.npz'}")
        stored_path = run / "config.json"
        if config is None or stored_path.is_file():
            stored = load_config(stored_path)
            if config is None:
                config = stored
            conflicts = resume_conflicts(stored, config)
            if conflicts:
                changes = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in conflicts.items())
                raise ValueError(
                    f"cannot resume {run} with settings that differ from the stored run: {changes}; "
                    f"a resumed run may change only {', '.join(RESUMABLE)}"
                )
    if config is None:
        raise ValueError("config is required unless resume=True")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or None; got {type(config).__name__}")
    overrides: dict[str, Any] = {
        "steps": steps,
        "time_limit_s": time_limit_s,
        "device": device,
        "lr_milestones": lr_milestones,  # TrainConfig checks it (a sequence of step numbers)
    }
    # dataclasses.replace builds a new TrainConfig: every setting (overrides included) is checked again
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def training_step(
    model: URNN,
    opt: Optimizer,
    w_opt: UnitaryOptimizer,
    x: Any,
    y: Any,
    *,
    factored: bool = False,
    clip_grad_norm: float | None = None,
) -> Any:
    """One training step of a URNN, all or nothing: the loss, then both optimizers' updates.

    Parameters
    ----------
    model : URNN
        Its parameters are updated in place.
    opt : Optimizer
        Updates V, b, O and c.
    w_opt : UnitaryOptimizer
        Updates W (and draws its sketch from its generator).
    x, y : array
        A batch, as for :meth:`~unitary_update.models.urnn.URNN.loss_and_grads`.
    factored : bool, default False
        Pass W's gradient to ``w_opt`` as its factors ``(X, Y)`` (plain SGD) instead of dense.
    clip_grad_norm : float, optional
        Clip the gradients' global norm to this (finite, > 0), as
        ``torch.nn.utils.clip_grad_norm_``: see :func:`clip_by_global_norm`.

    Returns
    -------
    float or 0-d array
        The loss before the update (a device array on a GPU).

    Raises
    ------
    FloatingPointError
        If the loss is NaN or infinite (checked on the CPU; nothing is updated).
    TypeError, ValueError
        From the model (bad x or y) or an optimizer, or arguments of the wrong type
        (``factored`` not a bool, ``opt`` not an Optimizer, ...); nothing is updated.

    Notes
    -----
    All or nothing: the parameters, both optimizers' states (moments, step counts, learning
    rates) and W's sketch generator are copied before the step (O(parameters) memory, small
    next to a step's O(T batch N^2) work) and put back exactly when any part of it raises, so a
    failed step can be retried or the run checkpointed as it was.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.experiments.train import TrainConfig, build, training_step
    >>> task, model, opt, w_opt = build(TrainConfig(task="adding", length=6, hidden_size=8))
    >>> W = model.params["W"].copy()
    >>> x, y = task.batch(4, rng=0)
    >>> try:
    ...     training_step(model, opt, w_opt, np.full_like(x, np.nan), y)
    ... except ValueError as err:
    ...     print(err)
    x contains NaN or Inf
    >>> bool(np.array_equal(model.params["W"], W)), w_opt.steps
    (True, 0)
    >>> loss = training_step(model, opt, w_opt, x, y)
    >>> w_opt.steps
    1
    """
    expected = ((model, URNN, "model", "a URNN"), (opt, Optimizer, "opt", "an Optimizer"))
    for value, kind, name, what in (*expected, (w_opt, UnitaryOptimizer, "w_opt", "a UnitaryOptimizer")):
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be {what}; got {type(value).__name__}")
    if not isinstance(factored, (bool, np.bool_)):
        raise TypeError(f"factored must be a bool (True or False); got {factored!r} of type {type(factored).__name__}")
    if clip_grad_norm is not None:
        clip_grad_norm = check_float(clip_grad_norm, "clip_grad_norm", low=0, open_low=True)
    saved = _Snapshot(model, opt, w_opt)
    try:
        loss, grads = model.loss_and_grads(x, y, factored=bool(factored))
        if isinstance(loss, float) and not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss}; nothing was updated")
        if clip_grad_norm is not None:
            grads = clip_by_global_norm(grads, clip_grad_norm)
        w_opt.step(model.params["W"], grads.pop("W"))
        opt.step(model.params, grads)
    except BaseException:
        saved.restore()
        raise
    return loss


class _Snapshot:
    """A copy of a model's parameters and its optimizers' states, to put back after a failed step."""

    def __init__(self, model: URNN, opt: Optimizer, w_opt: UnitaryOptimizer) -> None:
        self.model, self.opt, self.w_opt = model, opt, w_opt
        self.params = {name: (value, value.copy()) for name, value in model.params.items()}
        objects = [opt, w_opt.base] + ([w_opt.drift] if w_opt.drift is not None else [])
        self.objects = [(obj, copy.deepcopy(obj.__dict__)) for obj in objects if hasattr(obj, "__dict__")]
        self.w_attrs = {k: v for k, v in w_opt.__dict__.items() if k not in ("base", "rng", "drift")}
        self.rng_state = w_opt.rng.bit_generator.state

    def restore(self) -> None:
        for name, (array, saved) in self.params.items():
            array[...] = saved
            self.model.params[name] = array
        for obj, attributes in self.objects:
            obj.__dict__.clear()
            obj.__dict__.update(attributes)
        self.w_opt.__dict__.update(self.w_attrs)
        self.w_opt.rng.bit_generator.state = self.rng_state


class _Run:
    """A run between two steps, and what it does at each: train, log, evaluate, checkpoint.

    On construction the run directory is prepared: a fresh run empties ``metrics.jsonl``; a
    resumed one restores ``checkpoint.npz`` and drops the metrics after its step.  Then
    ``config.json`` is written and the model and optimizer states move to ``xp``'s device.
    """

    def __init__(
        self,
        config: TrainConfig,
        run: Path,
        task: Task,
        model: URNN,
        opt: Optimizer,
        w_opt: UnitaryOptimizer,
        xp: Any,
        resume: bool,
    ) -> None:
        self.config, self.task, self.model, self.opt, self.w_opt, self.xp = config, task, model, opt, w_opt, xp
        self.checkpoint_path, self.metrics_path = run / "checkpoint.npz", run / "metrics.jsonl"
        self.start, self.elapsed_before = 0, 0.0
        window: list[Any] = []
        logged_window: list[float] | None = None
        end_eval = False
        if resume:
            meta = load_checkpoint(self.checkpoint_path, model, opt, w_opt)
            self.start, self.elapsed_before = int(meta["step"]), float(meta.get("elapsed_s", 0.0))
            if "seed" in meta and meta["seed"] != config.seed:
                raise CheckpointError(
                    self.checkpoint_path, "meta", f"seed {meta['seed']!r} but the run's config has seed {config.seed}"
                )
            if self.start > config.steps:
                raise ValueError(
                    f"steps must be >= the checkpoint's step {self.start} to resume {run}; got {config.steps}"
                )
            written = self._written_config(meta, run)
            _check_past_milestones(written, config, self.start)
            window = _checked_window(self.checkpoint_path, meta.get("window", []), self.start)
            exists = self.metrics_path.is_file()
            kept = [r for r in read_metrics(run, drop_torn_tail=True) if r["step"] <= self.start] if exists else []
            # a run that ended at its last step logged its partial window and evaluated there, off
            # their periods; extended, it would not have: those records go, and the window (kept
            # in the checkpoint) comes back, so the log matches an uninterrupted longer run
            end_records = {"train": bool(meta.get("logged_window")), "eval": bool(meta.get("end_eval"))}
            if config.steps > self.start:
                kept = [r for r in kept if not (r["step"] == self.start and end_records.get(r["split"]))]
            else:  # nothing left to train: the end records stay, and so do their marks
                logged_window = window if end_records["train"] else None
                window = [] if end_records["train"] else window
                end_eval = end_records["eval"]
            write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        else:
            # another run's checkpoint must not outlive this run's config and metrics (a run that
            # dies before its first checkpoint would leave the two mixed for --resume)
            self.checkpoint_path.unlink(missing_ok=True)
            write_text_atomic(self.metrics_path, "")
        write_text_atomic(run / "config.json", json.dumps(dataclasses.asdict(config), indent=1) + "\n")
        to_device(model, opt, w_opt, xp)
        self.on_device = xp is not np
        # plain SGD acts on the factors (X, Y) of W's gradient; RMSprop and Adam need its entries
        self.factored = config.optimizer == "sgd" and config.momentum == 0
        self.x_eval, self.y_eval = task.eval_set(config.eval_size, config.seed)
        self.step, self.loss = self.start, math.nan
        # the losses since the last log (kept in checkpoints, so a resumed run logs the same means)
        self.window: list[Any] = window
        # the window logged by an end-of-run record (:meth:`log_train` with ``end``), and whether
        # the last evaluation was one: the checkpoint keeps both, for an extending resume
        self.logged_window = logged_window
        self.end_eval = end_eval
        self.last_eval: dict[str, float] = {}
        self.last_eval_step: int | None = None
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        """Wall-clock seconds of training in this process."""
        return time.perf_counter() - self.t0

    def train_step(self) -> None:
        """One step: the step's batch, the learning rates of its schedule, the loss, both updates."""
        config, xp = self.config, self.xp
        x, y = self.task.train_batch(config.batch_size, self.step, config.seed)
        if self.on_device:
            x, y = xp.asarray(x), xp.asarray(y)
        factor = config.lr_factor(self.step)
        lrs = (self.opt.lr, self.w_opt.base.lr)
        self.opt.lr, self.w_opt.base.lr = config.lr * factor, config.lr / config.w_lr_divisor * factor
        # on a GPU the finiteness checks inside the updates would read the device every step
        try:
            with options(check_finite=False) if self.on_device else contextlib.nullcontext():
                loss = training_step(
                    self.model, self.opt, self.w_opt, x, y, factored=self.factored, clip_grad_norm=config.clip_grad_norm
                )
        except FloatingPointError as err:
            self.opt.lr, self.w_opt.base.lr = lrs
            raise FloatingPointError(f"step {self.step + 1}: {err}; {self._checkpoint_note()}") from None
        except BaseException:
            self.opt.lr, self.w_opt.base.lr = lrs
            raise
        self.step += 1
        self.loss = loss
        self.window.append(loss)

    def log_train(self, end: bool = False) -> float:
        """Log the mean training loss since the last log (a device read on a GPU); return it.

        ``end``: an end-of-run record off the log period (the checkpoint keeps its window).
        """
        xp = self.xp
        if self.on_device:  # restored entries of the window are floats, the others device scalars
            mean_loss = float(xp.mean(xp.stack([xp.asarray(v) for v in self.window])))
        else:
            mean_loss = float(np.mean(self.window))
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"loss became {mean_loss} by step {self.step}; {self._checkpoint_note()}")
        self._log(
            {
                "split": "train",
                "step": self.step,
                "loss": mean_loss,
                "baseline": self.task.baseline,
                "elapsed_s": round(self.elapsed_before + self.seconds(), 3),
                "steps_per_s": round((self.step - self.start) / max(self.seconds(), 1e-9), 4),
            }
        )
        self.logged_window = [float(v) for v in self.window] if end else None
        self.window = []
        return mean_loss

    def evaluate(self, end: bool = False) -> None:
        """Evaluate on the held-out set and log it with W's unitarity error (``end``: off the period, at the end)."""
        self.end_eval = end
        self.last_eval = evaluate(self.model, self.x_eval, self.y_eval)
        self.last_eval_step = self.step
        drift = float(unitarity_error(self.model.params["W"]))
        self._log(
            {
                "split": "eval",
                "step": self.step,
                **self.last_eval,
                "baseline": self.task.baseline,
                "unitarity_error": drift,
            }
        )

    def _checkpoint_note(self) -> str:
        """What a failing run leaves to resume from, for its error message."""
        return "last checkpoint kept" if self.checkpoint_path.is_file() else "no checkpoint was written"

    def checkpoint(self) -> None:
        """Write ``checkpoint.npz``; its ``meta`` holds the step, seed, elapsed time, the run's
        settings and the training losses not yet logged."""
        meta = {
            "step": self.step,
            "seed": self.config.seed,
            "elapsed_s": self.elapsed_before + self.seconds(),
            "config": dataclasses.asdict(self.config),
            "window": [float(v) for v in self.window],
        }
        if self.logged_window is not None and not self.window:  # nothing trained since the end record
            meta["window"], meta["logged_window"] = self.logged_window, True
        if self.end_eval and self.last_eval_step == self.step:
            meta["end_eval"] = True
        save_checkpoint(self.checkpoint_path, self.model, self.opt, self.w_opt, meta)

    def _written_config(self, meta: dict[str, Any], run: Path) -> TrainConfig | None:
        """The settings of the run that wrote the checkpoint, checked against this run's.

        Checkpoints written before the settings were stored in them fall back to ``config.json``
        as it was before this resume; None when neither is there.
        """
        if "config" not in meta:
            stored = run / "config.json"
            return load_config(stored) if stored.is_file() else None
        try:
            written = config_from_dict(meta["config"], "its 'config'")
        except ValueError as err:
            raise CheckpointError(self.checkpoint_path, "meta", str(err)) from None
        conflicts = resume_conflicts(written, self.config)
        if conflicts:
            changes = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in conflicts.items())
            raise CheckpointError(
                self.checkpoint_path,
                "meta",
                f"written by a run with other settings than this one: {changes} (config.json edited, or "
                "another run's config in this folder); a resumed run may change only " + ", ".join(RESUMABLE),
            )
        return written

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _check_past_milestones(written: TrainConfig | None, config: TrainConfig, start: int) -> None:
    """ValueError if a resumed run adds or removes a milestone before ``start``, the checkpoint's step.

    Those steps are taken: their learning rates cannot change, so the run would no longer be
    the run of its (new) schedule from the start.  A milestone at ``start`` or later may be added.
    """
    if written is None:
        return
    before = sorted(m for m in written.lr_milestones if m < start)
    after = sorted(m for m in config.lr_milestones if m < start)
    if before != after:
        raise ValueError(
            f"lr_milestones before the checkpoint's step {start} cannot change on resume (those steps ran with "
            f"{before or 'none'}); got {after or 'none'}: add milestones at step {start} or later"
        )


def _checked_window(path: Path, window: Any, step: int) -> list[float]:
    """The checkpoint's training losses not yet logged: a list of at most ``step`` finite floats."""
    if not (
        isinstance(window, list)
        and len(window) <= step
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in window)
    ):
        got = str(window)[:80]
        raise CheckpointError(path, "meta", f"'window' must be a list of at most {step} finite losses; got {got}")
    return [float(v) for v in window]


@contextlib.contextmanager
def _interruptible() -> Iterator[Callable[[], int]]:
    """Ctrl-C (SIGINT) and SIGTERM set a flag that the loop reads between steps, instead of ending the process.

    SIGTERM is what ``kill``, ``timeout`` and cluster schedulers send before they stop a job: the
    loop then finishes its step and checkpoints, as for Ctrl-C.  The callable returns the first
    signal caught (0 for none).  Only in the main thread (where Python delivers signals);
    elsewhere it stays 0.
    """
    caught: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        caught.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _STOP_SIGNALS:
            previous[signum] = signal.signal(signum, on_signal)
    try:
        yield lambda: caught[0] if caught else 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _exclusive(run: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run/.lock`` (POSIX ``flock``) while a process trains in ``run``.

    Two processes training in one folder (two ``--resume`` of the same run) would interleave their
    metrics and overwrite each other's checkpoints: the second is refused.  The lock goes with the
    process, however it ends.  Where ``fcntl`` is missing (Windows), or the file system does not
    support ``flock`` (some cluster file systems: ENOSYS, EOPNOTSUPP, ENOLCK), nothing is locked
    and training goes on: the lock guards against a mistake, it must not stop a run.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(run / ".lock", "a") as handle:
        locked = True
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(f"run_dir {run} is in use by another training process (its .lock is held)") from None
        except OSError:  # no flock on this file system
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _progress_bar(total: int, initial: int, baseline: float, enabled: bool) -> Any:
    """A tqdm bar of training steps on stderr, off when ``enabled`` is False or stderr is no terminal."""
    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        file=sys.stderr,
        disable=None if enabled else True,  # None: off when the file is not a TTY
        dynamic_ncols=True,
        mininterval=0.2,
        postfix=f"baseline {baseline:.4f}",
    )
