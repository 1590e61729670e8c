"""Shared benchmark settings: the parameter grid and thread control.

Every benchmark runs with 2 BLAS threads (threadpoolctl) and 2 Numba threads, the machine kind
the project targets.  With ``UU_ASV_QUICK=1`` (CI) the grids shrink so a ``--quick`` run takes
seconds; the published tables use the full grid.
"""

from __future__ import annotations

import os

import numba
import scipy.linalg  # noqa: F401  # load SciPy's OpenBLAS before threadpoolctl limits it
from threadpoolctl import threadpool_limits

QUICK = os.environ.get("UU_ASV_QUICK", "") not in ("", "0")
THREADS = 2

# The grid where the library is used: recurrent layers (128-512, 190 in the copy task) up to large
# dense layers, ranks 1 (the paper's) to 64.
SIZES = [256] if QUICK else [128, 190, 512, 1024, 2048, 4096]
RANKS = [1] if QUICK else [1, 4, 16, 64]
DTYPES = ["float32"] if QUICK else ["float32", "complex64", "float64"]
DENSE_MAX = 256 if QUICK else 2048  # the dense O(N^3) baselines take minutes beyond this


class Threaded:
    """Mixin: limit BLAS and Numba threads for the duration of each benchmark."""

    def setup_threads(self) -> None:
        self._limits = threadpool_limits(THREADS)
        numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))

    def teardown(self, *params: object) -> None:
        self._limits.unregister()
