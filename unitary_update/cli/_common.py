"""What the command modules share: the user-error type, option choices, and small helpers.

The choices of the options are the library's own constants, so that a new sketch method, update,
optimizer, task or initialiser shows up on the command line without touching it.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .._extras import MissingExtraError, require
from .._sketch import SKETCH_METHODS
from .._step import UPDATES
from .._validation import FLOAT_DTYPES
from .._xp import get_namespace
from ..experiments.tasks import TASKS
from ..models.urnn import INITS
from ..optim import OPTIMIZERS

__all__ = [
    "DTYPES",
    "INITS",
    "OPTIMIZERS",
    "REAL_DTYPES",
    "SKETCH_METHODS",
    "TASKS",
    "UPDATES",
    "MissingExtraError",
    "UsageError",
    "blas_threads",
    "call",
    "check_device",
    "check_output_path",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "require",
]

DTYPES = tuple(np.dtype(t).name for t in FLOAT_DTYPES)
REAL_DTYPES = tuple(name for name in DTYPES if np.dtype(name).kind == "f")

T = TypeVar("T")


class UsageError(Exception):
    """A mistake in what the user asked for: the command prints the message in one line and exits 2.

    ``prog`` is the command it concerns (None: the command being run).
    """

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1 (a repeat count, a size, a rank, a thread count)."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse ``type``: an integer >= 0 (a seed, or a count where 0 means none)."""
    return _bounded_int(text, 0)


def _bounded_int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}; got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0 (a learning rate, a step size)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}")
    return value


def check_output_path(path: str | None, option: str) -> None:
    """Refuse, before any work, an output file whose folder does not exist or that is a folder.

    A benchmark that runs for minutes must not fail only when it writes its table.
    """
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name")
    if not target.parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {target.parent} does not exist")


def call(fn: Callable[..., T], args: argparse.Namespace, **overrides: Any) -> T:
    """Call ``fn`` with the parsed options named like its parameters, and ``overrides``.

    The options of a command that runs one library function are named after that function's
    parameters (``dest=``), so the function's signature is the one list of them.
    """
    kwargs = {name: getattr(args, name) for name in inspect.signature(fn).parameters if hasattr(args, name)}
    return fn(**{**kwargs, **overrides})


def blas_threads(threads: int | None) -> Any:
    """A context that limits the BLAS thread pools to ``threads`` (None: leaves them as they are)."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def check_device(device: str | None, feature: str) -> None:
    """Check that ``feature`` can run on ``device`` (None: the CPU), before any work.

    An unknown name raises ValueError; a GPU without CuPy, MissingExtraError (the ``gpu`` extra);
    a GPU that CuPy does not see, UsageError.
    """
    if device is None:
        return
    try:
        get_namespace(device)
    except RuntimeError as err:
        require("cupy", feature)
        raise UsageError(str(err)) from None
