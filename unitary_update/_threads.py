"""The BLAS thread policy of the updates: their small dense linear algebra runs on one thread.

An update is a few large products with U (``U^H A``, ``U W``, the rank-r update: BLAS-3 calls
that scale with the threads) and some small work on thin or tiny blocks: the Householder QR of the
N x 2k block and the r x r cores (SVD, ``eigh``, Newton-Schulz and Pade products).  OpenBLAS runs
the small LAPACK calls as many tiny multi-threaded steps, each ending in a barrier; with two
threads they took 2-4x *longer* than with one (docs/benchmarks/cpu_grid.md), and far longer
still on a machine where another process holds a core.  :func:`single_threaded_blas` limits the
BLAS libraries to one thread around that work, the way scikit-learn limits BLAS inside its
estimators, through :mod:`threadpoolctl`.

The limit is process-wide (BLAS has no per-thread setting): while one Python thread is inside
the block, BLAS calls of other threads also run on one thread.  Nested and concurrent blocks are
counted, and the saved thread counts are restored when the last one leaves.  The libraries are
looked up once (threadpoolctl scans the loaded libraries, about a millisecond); entering and
leaving a block then costs a few microseconds, so it is used only where the work is larger than
that (:data:`MIN_WORK`).

A whole update whose largest product is below :data:`SERIAL_MAX_WORK` runs on one thread
(:func:`unitary_update._lowrank.lowrank_update`): there a second thread gains nothing even on an
idle machine, and where another process holds a core, OpenBLAS's threads wait for it at the
barrier after every block (the in-place rank-16 update at N = 190: 1,046 us at two threads
against 62 us at one; docs/benchmarks/cpu_grid.md, "When other processes hold the cores").
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["MIN_WORK", "SERIAL_MAX_WORK", "blas_libraries", "single_threaded_blas"]

# Below this many flops (r^3 or N r^2) OpenBLAS runs single-threaded by itself: no limit needed.
MIN_WORK = 1 << 18
# Below this many real multiply-adds per product a second OpenBLAS thread gains nothing on the idle
# 2-core machine (docs/benchmarks/addmm_threads.py) and loses 5-20x when another process holds a core.
SERIAL_MAX_WORK = 1 << 20

_lock = threading.Lock()
_depth = 0
_saved: list[tuple[Any, int]] = []
_libraries: list[Any] | None = None


def blas_libraries() -> list[Any]:
    """threadpoolctl's controllers of the BLAS libraries: NumPy's and SciPy's (which Numba calls).

    Looked up once; SciPy's LAPACK is imported first so that its OpenBLAS is among them.
    """
    global _libraries
    if _libraries is None:
        import scipy.linalg.lapack  # noqa: F401  # load SciPy's OpenBLAS before the scan
        from threadpoolctl import ThreadpoolController

        _libraries = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _libraries


def _set_threads(lib: Any, count: int) -> None:
    """Set a library's thread count from whichever Python thread holds :data:`_lock`.

    threadpoolctl (3.6+) lets only one "controlling" Python thread set OpenBLAS's process-wide
    limit and silently ignores the others; the lock and the count here already serialise the
    changes, so the library's own setter is called directly where threadpoolctl has one.
    """
    setter = getattr(lib, "_real_set_num_threads", None) or lib.set_num_threads
    setter(count)


@contextlib.contextmanager
def single_threaded_blas(work: int = MIN_WORK) -> Iterator[None]:
    """Run the block with every loaded BLAS library limited to one thread (process-wide).

    ``work`` is the block's size in flops; below :data:`MIN_WORK` nothing is changed (OpenBLAS
    does not thread such small calls).  Re-entrant and thread-safe: the thread counts in force
    when the first block was entered are restored when the last one leaves.
    """
    if work < MIN_WORK:
        yield
        return
    global _depth
    with _lock:
        if _depth == 0:
            _saved[:] = [(lib, lib.num_threads) for lib in blas_libraries()]
            for lib, count in _saved:
                if count != 1:
                    _set_threads(lib, 1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for lib, count in _saved:
                    if count != 1:
                        _set_threads(lib, count)
                _saved.clear()
