"""Library options: which CPU kernels run and whether inputs are checked for NaN/Inf.

Options are per thread and per asyncio task (a :class:`contextvars.ContextVar`); new threads
start from the defaults.

:func:`get_options`, :func:`set_options` and the :func:`options` context manager are public
(re-exported by :mod:`unitary_update`); :func:`use_numba` is how kernels read the choice.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["Options", "get_options", "options", "set_options", "use_numba"]


class Options:
    """Library settings; change them with :func:`set_options` or :func:`options`.

    An ``Options`` object is immutable: :func:`set_options` and :func:`options` install a new
    one in the current context (see :func:`set_options` for how threads and asyncio tasks see
    them).

    Attributes
    ----------
    backend : {"auto", "numba", "numpy"}
        CPU kernels: ``"numba"`` uses the compiled kernels of :mod:`unitary_update._kernels`
        where they exist, ``"numpy"`` their pure NumPy/BLAS twins, ``"auto"`` (default) Numba
        where the benchmarks show it wins.
    check_finite : bool
        Check inputs for NaN/Inf before writing anything (default True).  On CuPy this costs one
        device-to-host read of a single flag per call; set False in a GPU hot path that must never
        synchronise.
    """

    __slots__ = ("backend", "check_finite")
    backend: str
    check_finite: bool

    def __init__(self, backend: str = "auto", check_finite: bool = True) -> None:
        object.__setattr__(self, "backend", backend)
        object.__setattr__(self, "check_finite", check_finite)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"Options are immutable; use unitary_update.set_options({name}=...) or "
            f"unitary_update.options({name}=...) to change {name}"
        )

    def __repr__(self) -> str:
        return f"Options(backend={self.backend!r}, check_finite={self.check_finite!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Options):
            return NotImplemented
        return (self.backend, self.check_finite) == (other.backend, other.check_finite)

    def __hash__(self) -> int:
        return hash((self.backend, self.check_finite))


_DEFAULTS = Options()
# The options in force.  A ContextVar is per thread and per asyncio task: a ``with options(...)``
# block, or set_options, in one thread or task is invisible to the others.  A new thread starts
# with an empty context, i.e. from the library defaults (_DEFAULTS); an asyncio task starts from
# a copy of the context that created it.
_CURRENT: contextvars.ContextVar[Options] = contextvars.ContextVar("unitary_update_options", default=_DEFAULTS)
_BACKENDS = ("auto", "numba", "numpy")


def get_options() -> Options:
    """Return the options in force in the current thread / asyncio task.

    Returns
    -------
    Options
        The current (immutable) options object; change options with :func:`set_options` or
        :func:`options`.

    Examples
    --------
    >>> import unitary_update as uu
    >>> uu.get_options()
    Options(backend='auto', check_finite=True)
    """
    return _CURRENT.get()


def _changed(backend: str | None, check_finite: bool | None) -> Options:
    current = _CURRENT.get()
    # backend is checked here, not by _validation.check_choice: _validation reads these options
    if backend is not None and (not isinstance(backend, str) or backend not in _BACKENDS):
        raise ValueError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}; got {backend!r}")
    if check_finite is not None and not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(
            f"check_finite must be True or False; got {check_finite!r} of type {type(check_finite).__name__}"
        )
    return Options(
        current.backend if backend is None else backend,
        current.check_finite if check_finite is None else bool(check_finite),
    )


def set_options(*, backend: str | None = None, check_finite: bool | None = None) -> None:
    """Change the options of the current thread (or asyncio task) from now on.

    Options live in a :class:`contextvars.ContextVar`: ``set_options`` changes them for the
    calling thread (and for asyncio tasks it creates afterwards, which copy its context), not for
    other threads.  Every new :class:`threading.Thread` starts from the library defaults
    (``backend="auto"``, ``check_finite=True``), whatever other threads have set; call
    ``set_options`` (or use :func:`options`) inside the thread to change them there.

    Parameters
    ----------
    backend : {"auto", "numba", "numpy"}, optional
        Which CPU kernels to use (see :class:`Options`).
    check_finite : bool, optional
        Whether public functions check their inputs for NaN/Inf.

    Raises
    ------
    ValueError
        If ``backend`` is not one of the valid names.
    TypeError
        If ``check_finite`` is not a bool.

    Examples
    --------
    >>> import unitary_update as uu
    >>> uu.set_options(check_finite=False)
    >>> uu.get_options().check_finite
    False
    >>> uu.set_options(check_finite=True)
    """
    _CURRENT.set(_changed(backend, check_finite))


@contextlib.contextmanager
def options(*, backend: str | None = None, check_finite: bool | None = None) -> Iterator[Options]:
    """Context manager that sets options for the duration of a ``with`` block.

    The previous options are restored on exit, also when the block raises, so a
    :func:`set_options` call inside the block lasts until the block exits.  The block's options
    are local to the thread (or asyncio task) that runs it: two threads with overlapping blocks
    each see only their own (see :func:`set_options`).  Blocks are exited in the reverse order of
    entry, as ``with`` statements and :class:`contextlib.ExitStack` do; exiting an outer block
    by hand before an inner one restores, at the inner one's exit, what was in force when the
    inner one was entered.  A generator suspended inside a block leaves its options in force for
    its caller until it resumes (true of every context-variable setting in Python).

    Parameters
    ----------
    backend : {"auto", "numba", "numpy"}, optional
        Which CPU kernels to use inside the block (see :class:`Options`).
    check_finite : bool, optional
        Whether public functions check their inputs for NaN/Inf inside the block.

    Yields
    ------
    Options
        The options in force inside the block.

    Raises
    ------
    ValueError
        If ``backend`` is not one of the valid names.
    TypeError
        If ``check_finite`` is not a bool.

    Examples
    --------
    >>> import unitary_update as uu
    >>> with uu.options(backend="numpy"):
    ...     uu.get_options().backend
    'numpy'
    """
    new = _changed(backend, check_finite)
    token = _CURRENT.set(new)
    try:
        yield new
    finally:
        try:
            _CURRENT.reset(token)
        except ValueError:  # exited in another context (e.g. a generator finished elsewhere)
            _CURRENT.set(token.old_value if token.old_value is not contextvars.Token.MISSING else _DEFAULTS)


def use_numba(auto: bool) -> bool:
    """Whether to run a Numba kernel: forced by ``backend="numba"|"numpy"``, else ``auto``."""
    backend = _CURRENT.get().backend
    if backend == "auto":
        return auto
    return backend == "numba"
