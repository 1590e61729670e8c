"""Library-wide options: which CPU kernels run and whether inputs are checked for NaN/Inf.

:func:`get_options`, :func:`set_options` and the :func:`options` context manager are public
(re-exported by :mod:`unitary_update`); :func:`use_numba` is how kernels read the choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["Options", "get_options", "options", "set_options", "use_numba"]


class Options:
    """Library-wide settings; change them with :func:`set_options` or :func:`options`.

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

    def __init__(self) -> None:
        self.backend = "auto"
        self.check_finite = True

    def __repr__(self) -> str:
        return f"Options(backend={self.backend!r}, check_finite={self.check_finite!r})"


_OPTIONS = Options()
_BACKENDS = ("auto", "numba", "numpy")


def get_options() -> Options:
    """Return the live library options object (read it, change it with :func:`set_options`).

    Returns
    -------
    Options
        The object the library reads its settings from; its attributes are live, not a copy.

    Examples
    --------
    >>> import unitary_update as uu
    >>> uu.get_options()
    Options(backend='auto', check_finite=True)
    """
    return _OPTIONS


def set_options(*, backend: str | None = None, check_finite: bool | None = None) -> None:
    """Change library-wide options.

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

    Examples
    --------
    >>> import unitary_update as uu
    >>> uu.set_options(check_finite=False)
    >>> uu.get_options().check_finite
    False
    >>> uu.set_options(check_finite=True)
    """
    if backend is not None:
        # checked here, not by _validation.check_choice: _validation reads these options (no cycle)
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}; got {backend!r}")
        _OPTIONS.backend = backend
    if check_finite is not None:
        _OPTIONS.check_finite = bool(check_finite)


@contextlib.contextmanager
def options(*, backend: str | None = None, check_finite: bool | None = None) -> Iterator[Options]:
    """Context manager that sets options for the duration of a ``with`` block.

    The previous values are restored on exit, also when the block raises.

    Parameters
    ----------
    backend : {"auto", "numba", "numpy"}, optional
        Which CPU kernels to use inside the block (see :class:`Options`).
    check_finite : bool, optional
        Whether public functions check their inputs for NaN/Inf inside the block.

    Yields
    ------
    Options
        The live options object, with the new values set.

    Raises
    ------
    ValueError
        If ``backend`` is not one of the valid names.

    Examples
    --------
    >>> import unitary_update as uu
    >>> with uu.options(backend="numpy"):
    ...     uu.get_options().backend
    'numpy'
    """
    saved = (_OPTIONS.backend, _OPTIONS.check_finite)
    set_options(backend=backend, check_finite=check_finite)
    try:
        yield _OPTIONS
    finally:
        _OPTIONS.backend, _OPTIONS.check_finite = saved


def use_numba(auto: bool) -> bool:
    """Whether to run a Numba kernel: forced by ``backend="numba"|"numpy"``, else ``auto``."""
    backend = _OPTIONS.backend
    if backend == "auto":
        return auto
    return backend == "numba"
