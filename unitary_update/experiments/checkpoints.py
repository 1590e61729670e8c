"""What a run directory holds besides its configuration: checkpoints and the metrics log.

``checkpoint.npz``
    All parameters, both optimizers' states (moments, step counts, the sketch generator's state)
    and a JSON ``meta`` entry (step, seed, elapsed time), as host arrays: a run saved on a GPU
    resumes on the CPU and the other way round (:func:`to_device` moves the state).
``metrics.jsonl``
    One JSON record per line (:func:`read_metrics`).

The checkpoint format (version :data:`FORMAT_VERSION`)
------------------------------------------------------
An uncompressed ``.npz`` (a zip of ``.npy`` members, read with ``allow_pickle=False``; nothing
is pickled) holding:

==========================  ===================================================================
entry                       content
==========================  ===================================================================
``format_version``          0-d int64, :data:`FORMAT_VERSION`
``meta``                    0-d string, JSON ``{"step", "seed", "elapsed_s", ...}``
``param/<name>``            every parameter of the model (W, V, b, O, c), its dtype and shape
``opt/meta``, ``opt/...``   the Euclidean optimizer's :meth:`~unitary_update.optim.Optimizer.state_dict`
``wopt/...``                the W optimizer's :meth:`~unitary_update.optim.UnitaryOptimizer.state_dict`
==========================  ===================================================================

Migration: a file without ``format_version`` was written before the format was versioned
(version 1); its layout is the same, so it is read as version 1 and checked like a current
file.  A file of a newer version than this library's is refused.

:func:`load_checkpoint` checks everything before it writes anything: every entry is expected
(no unknown or missing key), every array has the shape and dtype of what it restores (a complex
W is never cast into a real model), is finite, W is unitary to ``4 sqrt(N eps)`` (``eps`` of the
model's precision), and the optimizers' states fit their parameters.  Every failure is a
:class:`~unitary_update.experiments.CheckpointError` (a ValueError) naming the file and the key,
and leaves the model and the optimizers as they were.  :func:`save_checkpoint` is atomic: an
interrupted write (even ``kill -9``) leaves the previous checkpoint in place.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import numpy as np

from .._xp import array_namespace, is_cupy, to_namespace
from ..metrics import unitarity_error
from ..models.urnn import URNN
from ..optim import Optimizer, UnitaryOptimizer
from ._errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "load_checkpoint",
    "read_metrics",
    "save_checkpoint",
    "to_device",
    "write_text_atomic",
]

FORMAT_VERSION = 2
"""The version of the checkpoint format written by :func:`save_checkpoint` (1: before versioning)."""


def save_checkpoint(path: Path, model: URNN, opt: Optimizer, w_opt: UnitaryOptimizer, meta: dict[str, Any]) -> None:
    """Write parameters, optimizer states and ``meta`` (step, seed, ...) atomically to ``path`` (npz).

    Parameters
    ----------
    path : pathlib.Path
        The ``.npz`` file to write.
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
        If the file cannot be written (the previous checkpoint, if any, is kept).
    TypeError, ValueError
        If ``path``, ``model`` or an optimizer has the wrong type, or ``meta`` is not a dict with
        an integer ``"step"`` >= 0 (and a finite ``"elapsed_s"`` >= 0, if any) or is not
        JSON-serialisable (NaN and Inf are not): a ``meta`` that :func:`load_checkpoint` would
        refuse is never written.

    Notes
    -----
    Atomic: the file is written to a temporary file in the same folder, flushed and
    ``fsync``-ed, renamed over ``path`` with :func:`os.replace`, and the folder is ``fsync``-ed, so
    ``path`` always holds a complete checkpoint, the old one or the new one, even when the
    process is killed mid-write.  Temporary files left by a killed writer
    (``.checkpoint.npz.*.tmp``) are removed by the next successful save.

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
    path = _check_arguments(path, model, opt, w_opt)
    if not isinstance(meta, dict) or not _is_count(meta.get("step")):
        raise ValueError(
            f"meta must be a dict with an integer 'step' in [0, 2^63), as load_checkpoint needs; got {_short(meta)}"
        )
    elapsed = meta.get("elapsed_s", 0.0)
    if not _is_number(elapsed) and not (isinstance(elapsed, float) and not math.isfinite(elapsed)):  # json: NaN, Inf
        raise ValueError(f"meta's 'elapsed_s' must be a finite number >= 0; got {_short(meta['elapsed_s'])}")
    arrays: dict[str, Any] = {f"param/{k}": _to_host(v) for k, v in model.params.items()}
    arrays.update({f"opt/{k}": _to_host(v) for k, v in opt.state_dict().items()})
    arrays.update({f"wopt/{k}": _to_host(v) for k, v in w_opt.state_dict().items()})
    arrays["meta"] = np.asarray(json.dumps(meta, allow_nan=False))
    arrays["format_version"] = np.asarray(FORMAT_VERSION, dtype=np.int64)
    _write_atomic(path, lambda f: np.savez(f, **arrays))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file, fsync and rename.

    A process killed meanwhile leaves the old file or the new one, never a truncated one (a
    truncated ``config.json`` or ``metrics.jsonl`` would stop every later ``--resume``).

    Parameters
    ----------
    path : pathlib.Path
        The file to write (replaced if it exists); its folder must exist.
    text : str
        The new contents.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from unitary_update.experiments.checkpoints import write_text_atomic
    >>> path = Path(tempfile.mkdtemp()) / "config.json"
    >>> write_text_atomic(path, '{"steps": 7}\\n')
    >>> path.read_text()
    '{"steps": 7}\\n'
    """
    _write_atomic(Path(path), lambda f: f.write(text.encode("utf-8")))


def _write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(f)`` into a temporary file, then fsync and rename it over ``path`` (see :func:`save_checkpoint`)."""
    folder = path.parent
    prefix = f".{path.name}."
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; a checkpoint is as readable as the other files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(folder)
    for stale in folder.glob(f"{prefix}*.tmp"):  # left by a writer killed mid-write
        with contextlib.suppress(OSError):
            stale.unlink()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path, model: URNN, opt: Optimizer, w_opt: UnitaryOptimizer) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint` in place; return its ``meta``.

    Everything is checked before anything is written: the model and both optimizers are
    changed only when the whole file is valid for them.

    Parameters
    ----------
    path : pathlib.Path
        The ``.npz`` file written by :func:`save_checkpoint`.
    model : URNN
        Receives the parameters (copied into its arrays).
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
    CheckpointError
        (a ValueError) If the file is truncated or corrupt, of a newer format, has an unknown
        or a missing entry, an array of another shape or dtype than the model's (a complex W
        into a real model, float64 into float32, ...), NaN or Inf, a W that is not unitary to
        ``4 sqrt(N eps)``, or an optimizer state of another type or that does not fit its
        parameters.  The message names the file and the entry.

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
    path = _check_arguments(path, model, opt, w_opt)
    # no entry of a checkpoint of this model is larger than its largest parameter (plus a header;
    # the generator state is JSON text): a member that declares more is refused before it is read
    largest = max(int(value.size) * value.dtype.itemsize for value in model.params.values())
    arrays = _read_npz(path, limit=largest + 2**16)
    version = _format_version(path, arrays)
    arrays = _MIGRATIONS.get(version, _same_layout)(arrays)

    def fail(key: str | None, reason: str) -> CheckpointError:
        return CheckpointError(path, key, reason)

    groups: dict[str, dict[str, Any]] = {"param": {}, "opt": {}, "wopt": {}}
    for key, value in arrays.items():
        if key == "meta":
            continue
        group, _, name = key.partition("/")
        if group not in groups or not name:
            raise fail(
                key, f"unknown entry; a checkpoint holds meta, format_version, {', '.join(g + '/...' for g in groups)}"
            )
        groups[group][name] = value
    if "meta" not in arrays:
        raise fail("meta", "missing")
    meta = _json_object(path, "meta", arrays["meta"])
    step = meta.get("step")
    if not _is_count(step):
        raise fail("meta", f"'step' must be an integer in [0, 2^63); got {_short(step)}")
    if not _is_number(meta.get("elapsed_s", 0.0)):
        raise fail("meta", f"'elapsed_s' must be a finite number >= 0; got {_short(meta.get('elapsed_s'))}")

    params = _checked_params(path, model, groups["param"])
    euclidean = {name: value for name, value in model.params.items() if name != "W"}
    opt_state = _checked_optimizer(path, "opt", opt, groups["opt"], euclidean)
    wopt_state = _checked_unitary_optimizer(path, w_opt, groups["wopt"], model.params["W"])

    # everything is valid: commit (each of these is a copy into arrays of the right shape and dtype);
    # should anything still raise, the model and both optimizers are put back as they were
    saved = _saved_state(model, opt, w_opt)
    try:
        for name, value in params.items():
            model.params[name][...] = to_namespace(value, array_namespace(model.params[name]))
        opt.load_state_dict(opt_state)
        w_opt.load_state_dict(wopt_state)
        _move_moments(opt, w_opt, array_namespace(model.params["W"]))
    except BaseException:
        _restore_state(model, opt, w_opt, saved)
        raise
    return meta


def _saved_state(model: URNN, opt: Optimizer, w_opt: UnitaryOptimizer) -> tuple[Any, ...]:
    """Copies of everything :func:`load_checkpoint` writes, for :func:`_restore_state`."""
    params = {name: (value, value.copy()) for name, value in model.params.items()}
    optimizers = [(o, copy.deepcopy(o.__dict__)) for o in (opt, w_opt.base)]
    return params, optimizers, w_opt.steps, w_opt.rng.bit_generator.state


def _restore_state(model: URNN, opt: Optimizer, w_opt: UnitaryOptimizer, saved: tuple[Any, ...]) -> None:
    params, optimizers, steps, rng_state = saved
    for name, (array, value) in params.items():
        array[...] = value
        model.params[name] = array
    for o, attributes in optimizers:
        o.__dict__.clear()
        o.__dict__.update(attributes)
    w_opt.steps = steps
    w_opt.rng.bit_generator.state = rng_state


_MAX_COUNT = 2**63
"""Step counts and steps stored in a checkpoint are below this (they fit an int64)."""


def _is_count(value: Any) -> bool:
    """Whether a JSON value is a step count: an integer (not a bool) in [0, 2^63)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_COUNT


def _is_number(value: Any) -> bool:
    """Whether a JSON value is a finite number >= 0 that converts to a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return 0 <= float(value) < math.inf
    except OverflowError:  # an integer too large for a float
        return False


def _short(value: Any) -> str:
    """``repr(value)``, cut to 80 characters (a tampered file may hold anything)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_arguments(path: Any, model: Any, opt: Any, w_opt: Any) -> Path:
    """``path`` as a Path; TypeError naming the argument for anything of the wrong type."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a path (str or os.PathLike); got {type(path).__name__}")
    expected = ((model, URNN, "model", "a URNN"), (opt, Optimizer, "opt", "an Optimizer"))
    for value, kind, name, what in (*expected, (w_opt, UnitaryOptimizer, "w_opt", "a UnitaryOptimizer")):
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be {what}; got {type(value).__name__}")
    return Path(path)


def _same_layout(arrays: dict[str, Any]) -> dict[str, Any]:
    """The migration of a format whose layout is the current one: nothing to change."""
    return arrays


_MIGRATIONS = {1: _same_layout}
"""How a file of an older format version becomes the current layout (version 1: unchanged)."""


def _read_npz(path: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """Every member of the ``.npz`` at ``path``, read without pickle; corruption is a CheckpointError.

    A member larger than ``limit`` bytes (uncompressed) is refused before it is decompressed.
    """
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as err:
        raise CheckpointError(path, None, f"not a readable checkpoint (truncated or corrupt: {err})") from None
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for info in archive.infolist():
            member = info.filename
            key = member[:-4] if member.endswith(".npy") else member
            if not member.endswith(".npy"):
                raise CheckpointError(path, key, "unknown entry (not an array)")
            if key in arrays:
                raise CheckpointError(path, key, "appears twice")
            if limit is not None and info.file_size > limit:
                raise CheckpointError(
                    path, key, f"holds {info.file_size} bytes, more than any entry of this model's checkpoint ({limit})"
                )
            try:
                with archive.open(info) as f:
                    _check_header(path, key, f, info.file_size)
                with archive.open(info) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
            except CheckpointError:
                raise
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, TypeError, MemoryError) as err:
                raise CheckpointError(path, key, f"unreadable (truncated or corrupt: {err})") from None
    return arrays


def _check_header(path: Path, key: str, f: Any, size: int) -> None:
    """Refuse an ``.npy`` header whose dtype holds objects or whose data would exceed the member."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return  # read_array checks what it reads
    if dtype.hasobject:
        raise CheckpointError(path, key, f"holds Python objects (dtype {dtype}); a checkpoint holds plain arrays")
    if math.prod(shape) * dtype.itemsize > size:
        raise CheckpointError(path, key, f"declares shape {shape} of {dtype}, more data than the file holds")


def _format_version(path: Path, arrays: dict[str, np.ndarray]) -> int:
    """The file's format version (1 when it has none: written before versioning)."""
    value = arrays.pop("format_version", None)
    if value is None:
        return 1
    if value.shape != () or value.dtype.kind not in "iu":
        raise CheckpointError(path, "format_version", f"must be a 0-d integer; got {value.dtype} {value.shape}")
    version = int(value)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            path, "format_version", f"{version} is newer than this library's {FORMAT_VERSION}; upgrade unitary_update"
        )
    if version < 1:
        raise CheckpointError(path, "format_version", f"must be between 1 and {FORMAT_VERSION}; got {version}")
    return version


def _json_object(path: Path, key: str, value: Any) -> dict[str, Any]:
    """A JSON object stored as a 0-d string array."""
    if not isinstance(value, np.ndarray) or value.shape != () or value.dtype.kind != "U":
        raise CheckpointError(path, key, f"must be a 0-d string of JSON; got {getattr(value, 'dtype', type(value))}")
    try:
        parsed = json.loads(str(value))
    except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: nested too deeply
        raise CheckpointError(path, key, f"not valid JSON ({type(err).__name__}: {str(err)[:100]})") from None
    if not isinstance(parsed, dict):
        raise CheckpointError(path, key, f"must be a JSON object; got {type(parsed).__name__}")
    return parsed


def _unitarity_tolerance(n: int, dtype: np.dtype) -> float:
    """How far from unitary a stored W may be: ``4 sqrt(N eps)``, eps of W's real precision."""
    return 4.0 * math.sqrt(n * float(np.finfo(dtype).eps))


def _checked_array(path: Path, key: str, value: Any, like: Any, what: str) -> np.ndarray:
    """``value`` with the shape and dtype of ``like`` (never cast), finite."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fc":
        raise CheckpointError(path, key, f"must be a floating array; got {getattr(value, 'dtype', type(value))}")
    if value.dtype != like.dtype:
        raise CheckpointError(path, key, f"has dtype {value.dtype}; {what} has dtype {like.dtype} (nothing is cast)")
    if tuple(value.shape) != tuple(like.shape):
        raise CheckpointError(path, key, f"has shape {tuple(value.shape)}; {what} has shape {tuple(like.shape)}")
    if not bool(np.isfinite(value).all()):
        raise CheckpointError(path, key, "contains NaN or Inf")
    return value


def _checked_params(path: Path, model: URNN, stored: dict[str, Any]) -> dict[str, np.ndarray]:
    """The stored parameters, each checked against the model's; W checked for unitarity."""
    _check_keys(path, "param", stored, model.params)
    params = {
        name: _checked_array(path, f"param/{name}", stored[name], target, f"the model's {name}")
        for name, target in model.params.items()
    }
    W = params["W"]
    tol = _unitarity_tolerance(W.shape[-1], np.finfo(W.dtype).dtype)
    error = unitarity_error(W)
    if not error <= tol:
        raise CheckpointError(
            path, "param/W", f"is not unitary: ||W^H W - I||_F = {error:.3g} > {tol:.3g} (4 sqrt(N eps) for {W.dtype})"
        )
    return params


def _check_keys(path: Path, group: str, stored: dict[str, Any], expected: Any) -> None:
    unknown = sorted(set(stored) - set(expected))
    missing = sorted(set(expected) - set(stored))
    if unknown:
        raise CheckpointError(path, f"{group}/{unknown[0]}", f"unknown entry; expected {sorted(expected)}")
    if missing:
        raise CheckpointError(path, f"{group}/{missing[0]}", "missing")


def _reference_state(opt: Optimizer, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """The buffers (names, shapes, dtypes) a copy of ``opt`` keeps after one step on every parameter."""
    probe = copy.copy(opt)
    probe.state, probe.t = {}, {}
    for name, value in params.items():
        probe.direction(name, np.zeros(value.shape, dtype=value.dtype))
    return {key: value for key, value in probe.state_dict().items() if key != "meta"}


def _checked_optimizer(
    path: Path, group: str, opt: Optimizer, stored: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    """The stored state of ``opt`` (its ``state_dict``), checked against the parameters it updates."""
    if "meta" not in stored:
        raise CheckpointError(path, f"{group}/meta", "missing")
    meta_key = f"{group}/meta"
    meta = _json_object(path, meta_key, stored["meta"])
    if meta.get("type") != type(opt).__name__:
        raise CheckpointError(
            path, meta_key, f"is the state of a {meta.get('type')!r} optimizer, not {type(opt).__name__}"
        )
    fields = set(json.loads(str(opt.state_dict()["meta"])))  # what this library's optimizer writes
    unknown = sorted(set(meta) - fields)
    if unknown:
        raise CheckpointError(path, meta_key, f"unknown field {unknown[0]!r}; it holds {', '.join(sorted(fields))}")
    counts = meta.get("t")
    if not isinstance(counts, dict) or any(name not in params or not _is_count(t) for name, t in counts.items()):
        raise CheckpointError(
            path,
            meta_key,
            f"'t' must map parameter names {sorted(params)} to step counts in [0, 2^63); got {_short(counts)}",
        )
    lr = meta.get("lr")
    if not _is_number(lr):
        raise CheckpointError(path, meta_key, f"'lr' must be a finite number >= 0; got {_short(lr)}")
    host = {name: np.empty(value.shape, dtype=value.dtype) for name, value in params.items()}
    reference = _reference_state(opt, host)
    buffers = {key: value for key, value in stored.items() if key != "meta"}
    for key, value in buffers.items():
        if key not in reference:
            raise CheckpointError(
                path, f"{group}/{key}", f"unknown entry; {type(opt).__name__} keeps {sorted(reference)}"
            )
        parameter = key.rsplit("/", 1)[0]
        if not counts.get(parameter, 0):
            raise CheckpointError(path, f"{group}/{key}", f"a buffer of {parameter!r}, whose step count is 0")
        _checked_array(path, f"{group}/{key}", value, reference[key], f"{type(opt).__name__}'s buffer")
        if key.rsplit("/", 1)[1] == "v" and bool((value < 0).any()):
            raise CheckpointError(path, f"{group}/{key}", "a second moment with negative entries")
    for key in reference:
        if counts.get(key.rsplit("/", 1)[0], 0) and key not in buffers:
            raise CheckpointError(path, f"{group}/{key}", "missing")
    return stored


def _checked_unitary_optimizer(path: Path, w_opt: UnitaryOptimizer, stored: dict[str, Any], W: Any) -> dict[str, Any]:
    """The stored state of ``w_opt``: its base optimizer's, its step count and its generator's state."""
    stored = dict(stored)
    if "unitary_meta" not in stored:
        raise CheckpointError(path, "wopt/unitary_meta", "missing")
    meta = _json_object(path, "wopt/unitary_meta", stored.pop("unitary_meta"))
    fields = set(json.loads(str(w_opt.state_dict()["unitary_meta"])))
    unknown = sorted(set(meta) - fields)
    if unknown:
        raise CheckpointError(
            path, "wopt/unitary_meta", f"unknown field {unknown[0]!r}; it holds {', '.join(sorted(fields))}"
        )
    steps = meta.get("steps")
    if not _is_count(steps):
        raise CheckpointError(
            path, "wopt/unitary_meta", f"'steps' must be an integer in [0, 2^63); got {_short(steps)}"
        )
    rng_state = meta.get("rng")
    if not isinstance(rng_state, dict):
        raise CheckpointError(
            path, "wopt/unitary_meta", f"'rng' must be a generator state (an object); got {_short(rng_state)}"
        )
    probe = copy.deepcopy(w_opt.rng)
    kind = type(probe.bit_generator).__name__
    try:
        probe.bit_generator.state = rng_state
    except (TypeError, ValueError, KeyError, OverflowError) as err:
        raise CheckpointError(path, "wopt/unitary_meta", f"'rng' is not a state of {kind} ({err})") from None
    if json.loads(json.dumps(probe.bit_generator.state)) != rng_state:  # e.g. a float where an integer belongs
        raise CheckpointError(path, "wopt/unitary_meta", f"'rng' is not a state of {kind} (a value has the wrong type)")
    _checked_optimizer(path, "wopt", w_opt.base, stored, {"W": W})
    return {**stored, "unitary_meta": json.dumps(meta)}


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
    TypeError
        If ``xp`` is not the numpy or cupy module, or the model or an optimizer has the wrong
        type (nothing is moved).
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
    if not (xp is np or (isinstance(xp, ModuleType) and is_cupy(xp))):
        raise TypeError(f"xp must be the numpy or cupy module; got {xp!r}")
    _check_arguments("", model, opt, w_opt)
    for name, value in model.params.items():
        model.params[name] = to_namespace(value, xp)
    _move_moments(opt, w_opt, xp)


def read_metrics(run_dir: str | os.PathLike[str], *, drop_torn_tail: bool = False) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` as a list of dicts.

    Parameters
    ----------
    run_dir : str or path-like
        A run directory (see :func:`train`).
    drop_torn_tail : bool, default False
        Drop, with a warning, a last line that has no newline and is not a JSON record: what a
        process killed while appending a record leaves (a resumed run drops it).

    Returns
    -------
    list of dict
        One dict per line of ``metrics.jsonl``, in order.

    Raises
    ------
    TypeError
        If ``run_dir`` is not a path.
    FileNotFoundError
        If the run has no ``metrics.jsonl``.
    ValueError
        If a line is not a JSON object with an integer ``step`` (the message names the file
        and the line).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from unitary_update.experiments.train import read_metrics
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 0.5}\\n')
    >>> read_metrics(d)[0]["loss"]
    0.5
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a path (str or os.PathLike); got {type(run_dir).__name__}")
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    with open(path) as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if drop_torn_tail and number == len(lines) and not line.endswith("\n"):
                warnings.warn(f"{path}, line {number}: a torn last record, dropped ({err})", stacklevel=2)
                break
            raise ValueError(f"{path}, line {number}: not a JSON record ({err})") from None
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"{path}, line {number}: expected a JSON object with an integer 'step'")
        records.append(record)
    return records
