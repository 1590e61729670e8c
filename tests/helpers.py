"""Test helpers shared by the test modules (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

from typing import Any

import numpy as np


def rtol_for(dtype: Any) -> float:
    """Relative tolerance of the precision checks: 1e-10 in double, 1e-4 in single precision."""
    return 1e-4 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-10


def random_factors(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Gaussian array of ``dtype`` (complex: independent real and imaginary parts)."""
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


ALL_DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


def cupy_gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device (the GPU tests skip otherwise)."""
    try:
        import cupy

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:  # ImportError, or a CUDA driver/runtime error on a machine without a GPU
        return False


def torch_cuda_available() -> bool:
    """True when torch imports with CUDA support and a device (and CuPy is usable beside it)."""
    try:
        import torch

        return bool(torch.cuda.is_available()) and cupy_gpu_available()
    except Exception:
        return False
