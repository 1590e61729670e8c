"""Batched updates of the per-frequency stacks of an orthogonal convolution (issue 8, acceptance 2).

A convolution with C channels on an n x n image is F ~ n^2 / 2 independent C x C unitary
matrices; one training step updates all of them.  Each figure has its baselines beside it as
values of the ``method`` parameter: ``batched`` (one ``uu.project`` / ``uu.transport`` call on
the (F, C, C) stack), ``loop`` (F single-matrix calls) and ``dense`` (the batched dense polar
factor from ``numpy.linalg.svd``, or the matrix exponential from ``numpy.linalg.eigh``).
``ConvUpdateSpeedup.track_*`` report the ratios measured in one process.

BLAS runs single-threaded (threadpoolctl, set in ``setup``, restored in ``teardown``), for
NumPy's and SciPy's OpenBLAS alike: SciPy's is a separate library, imported at the top of this
module so that the limit sees it.
"""

from __future__ import annotations

import timeit
from typing import ClassVar

import scipy.linalg  # noqa: F401  (loads SciPy's own OpenBLAS now, so threadpool_limits in setup covers it)
from threadpoolctl import threadpool_limits

from unitary_update.conv_demo import update_methods

__all__ = ["ConvUpdate", "ConvUpdateSpeedup"]

STACKS = {"1024x16": (1024, 16), "64x128": (64, 128)}


class ConvUpdate:
    """Wall time of one update of the whole stack."""

    params = (list(STACKS), ["transport", "project"], [1, 4], ["batched", "loop", "dense"])
    param_names: ClassVar[list[str]] = ["stack", "update", "rank", "method"]
    timeout = 300

    def setup(self, stack, update, rank, method):
        self._limits = threadpool_limits(limits=1)
        F, C = STACKS[stack]
        self.fn = update_methods(F, C, update=update, rank=rank, dtype="complex128")[method]
        self.fn()  # warm-up: Numba compilation and caches stay out of the timing

    def teardown(self, stack, update, rank, method):
        self._limits.restore_original_limits()

    def time_update(self, stack, update, rank, method):
        self.fn()


class ConvUpdateSpeedup:
    """Speed-up of the batched call over each baseline, timed in the same process (best of 3)."""

    params = (list(STACKS), ["transport", "project"], [1, 4])
    param_names: ClassVar[list[str]] = ["stack", "update", "rank"]
    timeout = 300
    unit = "ratio"

    def setup(self, stack, update, rank):
        self._limits = threadpool_limits(limits=1)
        F, C = STACKS[stack]
        self.methods = update_methods(F, C, update=update, rank=rank, dtype="complex128")
        for fn in self.methods.values():
            fn()

    def teardown(self, stack, update, rank):
        self._limits.restore_original_limits()

    def _best(self, name):
        return min(timeit.repeat(self.methods[name], number=1, repeat=3))

    def track_loop_over_batched(self, stack, update, rank):
        return self._best("loop") / self._best("batched")

    def track_dense_over_batched(self, stack, update, rank):
        return self._best("dense") / self._best("batched")
