"""What a run directory holds besides its configuration: checkpoints and the metrics log.

``checkpoint.npz``
    All parameters, both optimizers' states (moments, step counts, the sketch generator's state)
    and a JSON ``meta`` entry (step, seed, elapsed time), as host arrays: a run saved on a GPU
    resumes on the CPU and the other way round (:func:`to_device` moves the state).
``metrics.jsonl``
    One JSON record per line (:func:`read_metrics`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._xp import array_namespace, to_namespace
from ..models.urnn import URNN
from ..optim import Optimizer, UnitaryOptimizer

__all__ = ["load_checkpoint", "read_metrics", "save_checkpoint", "to_device"]


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
    >>> from unitary_update.experiments.train import TrainConfig, build, save_checkpoint
    >>> _, model, opt, w_opt = build(TrainConfig(task="adding", length=6, hidden_size=8))
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.npz"
    >>> save_checkpoint(path, model, opt, w_opt, {"step": 0, "seed": 0})
    >>> sorted(key for key in np.load(path).files if key.startswith("param/"))
    ['param/O', 'param/V', 'param/W', 'param/b', 'param/c']
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
