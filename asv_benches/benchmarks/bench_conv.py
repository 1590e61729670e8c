"""Batched updates of the per-frequency stacks of an orthogonal convolution, beside their baselines.

A convolution with C channels on an n x n image is F ~ n^2 / 2 independent C x C unitary
matrices; one training step updates all of them.  Each figure has its baselines beside it as
values of the ``method`` parameter: ``batched`` (one ``uu.project`` / ``uu.transport`` call on
the (F, C, C) stack, library options as they are), ``batched_numpy`` (the same with
``backend="numpy"``), ``loop`` (F single-matrix calls) and
``dense`` (the batched dense polar factor from ``numpy.linalg.svd``, or the matrix exponential
from ``numpy.linalg.eigh``).  ``ConvUpdateSpeedup.track_*`` report the ratios measured in one
process.  The cases are those of ``python -m unitary_update conv-bench``
(:func:`unitary_update.bench.conv.update_methods`).

Threads: the suite's setting (:class:`common.Threaded`: 2 BLAS threads, 2 Numba threads).
SciPy's own OpenBLAS (used by the in-place update) is loaded at import here, so the limit
covers it too.
"""

from __future__ import annotations

import timeit

import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS before threadpool_limits runs in setup)

from unitary_update.bench.conv import update_methods

from .common import QUICK, Threaded

__all__ = ["ConvUpdate", "ConvUpdateSpeedup"]

STACKS = {"64x16": (64, 16)} if QUICK else {"1024x16": (1024, 16), "64x128": (64, 128)}
RANKS = [1] if QUICK else [1, 4]


class ConvUpdate(Threaded):
    """Wall time of one update of the whole (F, C, C) stack, complex128."""

    params = (list(STACKS), ["transport", "project"], RANKS, ["batched", "batched_numpy", "loop", "dense"])
    param_names = ["stack", "update", "rank", "method"]
    timeout = 300

    def setup(self, stack: str, update: str, rank: int, method: str) -> None:
        self.setup_threads()
        F, C = STACKS[stack]
        self.fn = update_methods(F, C, update=update, rank=rank, dtype="complex128")[method]
        self.fn()  # warm-up: Numba compilation and caches stay out of the timing

    def time_update(self, stack: str, update: str, rank: int, method: str) -> None:
        self.fn()


class ConvUpdateSpeedup(Threaded):
    """Speed-up of the batched call over each baseline, timed in the same process (best of 3)."""

    params = (list(STACKS), ["transport", "project"], RANKS)
    param_names = ["stack", "update", "rank"]
    timeout = 300
    unit = "ratio"

    def setup(self, stack: str, update: str, rank: int) -> None:
        self.setup_threads()
        F, C = STACKS[stack]
        self.methods = update_methods(F, C, update=update, rank=rank, dtype="complex128")
        for fn in self.methods.values():
            fn()

    def _best(self, name: str) -> float:
        return min(timeit.repeat(self.methods[name], number=1, repeat=3))

    def track_loop_over_batched(self, stack: str, update: str, rank: int) -> float:
        return self._best("loop") / self._best("batched")

    def track_dense_over_batched(self, stack: str, update: str, rank: int) -> float:
        return self._best("dense") / self._best("batched")
