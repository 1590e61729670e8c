"""One copy-task training step of the unitary RNN, beside its baselines.

``kind`` is the parameter that puts the baseline beside the figure (see
:mod:`unitary_update.bench.rnn`): ``projunn`` (the library's step: forward, BPTT, RMSprop and the
rank-1 projUNN update of W), ``euclidean`` (the same step with a plain RMSprop update of W) and
``plain_numpy`` (a textbook NumPy RNN step of the same shape, no projUNN).  Paper size: copy task
T = 1000 + 20, hidden 190, batch 128, rank 1, float32.  BLAS runs on one thread (threadpoolctl) so
figures do not depend on what else the machine runs; ``track_ratio_to_plain_numpy`` reports
``projunn`` / ``plain_numpy`` measured in one process.
"""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from unitary_update.bench.rnn import make_step
from unitary_update.experiments.tasks import CopyTask
from unitary_update.models.urnn import URNN

SIZES = {"paper": (1000, 190, 128), "small": (100, 64, 32)}


def _setup_step(kind, size, update="project"):
    delay, hidden, batch = SIZES[size]
    x, y = CopyTask(delay).batch(batch, rng=0)
    model = URNN(10, hidden, 10, dtype=np.float32, rng=0)
    model.params["O"][...] = np.random.default_rng(1).standard_normal(model.params["O"].shape) * 0.1
    step = make_step(kind, model, rank=1, update=update)
    step(x, y)  # warm-up: Numba compilation and work buffers
    return step, x, y


class CopyTrainingStep:
    params = (["projunn", "euclidean", "plain_numpy"], ["small", "paper"])
    param_names = ("kind", "size")
    number = 1
    repeat = 3
    warmup_time = 0
    timeout = 600

    def setup(self, kind, size):
        self._limits = threadpool_limits(limits=1, user_api="blas")
        self.step, self.x, self.y = _setup_step(kind, size)

    def teardown(self, kind, size):
        self._limits.restore_original_limits()

    def time_step(self, kind, size):
        self.step(self.x, self.y)


class CopyTrainingStepTransport:
    params = (["small", "paper"],)
    param_names = ("size",)
    number = 1
    repeat = 3
    warmup_time = 0
    timeout = 600

    def setup(self, size):
        self._limits = threadpool_limits(limits=1, user_api="blas")
        self.step, self.x, self.y = _setup_step("projunn", size, update="transport")

    def teardown(self, size):
        self._limits.restore_original_limits()

    def time_step(self, size):
        self.step(self.x, self.y)


class CopyStepRatio:
    """projUNN step time divided by the plain NumPy step time, both timed here (best of 3)."""

    params = (["small", "paper"],)
    param_names = ("size",)
    unit = "ratio"
    timeout = 900

    def track_ratio_to_plain_numpy(self, size):
        with threadpool_limits(limits=1, user_api="blas"):
            best = {}
            for kind in ("projunn", "plain_numpy"):
                step, x, y = _setup_step(kind, size)
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    step(x, y)
                    times.append(time.perf_counter() - t0)
                best[kind] = min(times)
        return best["projunn"] / best["plain_numpy"]

    track_ratio_to_plain_numpy.unit = "ratio"


class ModReLUKernels:
    """The modReLU forward / backward kernels at one time step of the paper's size (batch 128, N 190)."""

    params = (["numba", "numpy"], ["float32", "complex64"])
    param_names = ("kernel", "dtype")

    def setup(self, kernel, dtype):
        from unitary_update.models import _kernels

        rng = np.random.default_rng(0)
        z = rng.standard_normal((128, 190))
        if dtype == "complex64":
            z = z + 1j * rng.standard_normal((128, 190))
        self.z = z.astype(dtype)
        self.b = rng.uniform(-0.1, 0.1, 190).astype(np.float32)
        self.g = self.z.copy()
        self.db = np.zeros(190)
        self.forward = getattr(_kernels, f"modrelu_{kernel}")
        self.backward = getattr(_kernels, f"modrelu_backward_{kernel}")
        self.forward(self.z.copy(), self.b)  # compile
        self.backward(self.z, self.b, self.g.copy(), self.db)

    def time_forward(self, kernel, dtype):
        self.forward(self.z, self.b)

    def time_backward(self, kernel, dtype):
        self.backward(self.z, self.b, self.g, self.db)
