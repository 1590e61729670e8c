"""Shared fixtures: the array-backend fixture and dtype-aware tolerances.

``backend`` parametrises a test over every array library that can run here: NumPy always,
PyTorch CPU tensors when torch is installed, JAX CPU arrays when jax is installed (with
``jax_enable_x64`` on, so that float64/complex128 stay double), CuPy when it imports and a GPU
is present.  Tests
build inputs with NumPy and hand them over with ``backend.asarray``; results come back through
``backend.to_numpy``, which also checks that the result is of the backend's kind.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

# CI (.ci/run sets UU_HYPOTHESIS_PROFILE=ci) draws the same examples on every run, so that a red
# build is reproducible and a green one stays green; local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("UU_HYPOTHESIS_PROFILE", "default"))


class Backend:
    """How a test moves NumPy data to one array library and back."""

    def __init__(self, name: str) -> None:
        self.name = name

    def asarray(self, x: np.ndarray) -> Any:
        x = np.ascontiguousarray(x)
        if self.name == "numpy":
            return x.copy()
        if self.name == "torch":
            import torch

            return torch.from_numpy(x.copy())
        if self.name == "jax":
            import jax
            import jax.numpy as jnp

            jax.config.update("jax_enable_x64", True)
            return jnp.asarray(x, device=jax.devices("cpu")[0])
        import cupy

        return cupy.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        if self.name == "numpy":
            assert isinstance(x, np.ndarray), type(x)
            return x
        if self.name == "torch":
            import torch

            assert isinstance(x, torch.Tensor), type(x)
            return x.numpy()
        if self.name == "jax":
            import jax

            assert isinstance(x, jax.Array), type(x)
            assert next(iter(x.devices())).platform == "cpu"
            return np.asarray(x)
        import cupy

        assert isinstance(x, cupy.ndarray), type(x)
        return cupy.asnumpy(x)

    def __repr__(self) -> str:
        return self.name


def _cupy_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


_BACKEND_PARAMS = [
    pytest.param("numpy", id="numpy"),
    pytest.param(
        "torch",
        id="torch",
        marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed"),
    ),
    pytest.param(
        "jax",
        id="jax",
        marks=pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed"),
    ),
    pytest.param("cupy", id="cupy", marks=pytest.mark.skipif(not _cupy_available(), reason="no CuPy GPU")),
]


@pytest.fixture(params=_BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each available array library in turn (see the module docstring)."""
    return Backend(request.param)
