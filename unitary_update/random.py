"""Seeded randomness: Haar-random unitary matrices, and draws on the array's device.

:func:`random_unitary` is public.  :func:`normalize_rng`, :func:`standard_normal` and
:func:`uniform` are the library's one way to turn ``rng`` arguments (Generator, int seed or None)
into samples on the device of the arrays they are used with (NumPy or CuPy): a host
:class:`numpy.random.Generator` seeds a device generator with one integer, so nothing crosses
between host and device.
"""

from __future__ import annotations

import numbers
from types import ModuleType
from typing import Any

import numpy as np

from ._validation import check_dtype, check_int

__all__ = ["random_unitary"]


def random_unitary(
    n: int,
    *,
    dtype: Any = np.complex128,
    batch_shape: tuple[int, ...] = (),
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Haar-distributed random unitary (complex dtype) or orthogonal (real dtype) matrices.

    The QR decomposition of a Gaussian matrix, with the phases of R's diagonal moved into Q
    (Mezzadri 2007), computed in double precision and cast to ``dtype``.

    Parameters
    ----------
    n : int
        Matrix size N >= 1.
    dtype : dtype, default complex128
        float32 or float64 give real orthogonal matrices, complex64 or complex128 unitary ones
        (None: the default, complex128).
    batch_shape : int or tuple of int, default ()
        Leading dimensions of a stack of independent matrices (an int m means ``(m,)``).
    rng : numpy.random.Generator, int or None
        Seed or generator.

    Returns
    -------
    numpy.ndarray, shape (*batch_shape, n, n)
        Independent Haar-random matrices of ``dtype``.

    Raises
    ------
    TypeError
        If ``n`` or an entry of ``batch_shape`` is not an integer, ``batch_shape`` is neither an
        int nor a sequence, or ``dtype`` is not one of the four floating dtypes.
    ValueError
        If ``n < 1`` or ``batch_shape`` has negative entries.

    Examples
    --------
    >>> import numpy as np, unitary_update as uu
    >>> Q = uu.random_unitary(3, dtype=np.float32, batch_shape=(2,), rng=0)
    >>> Q.shape, Q.dtype
    ((2, 3, 3), dtype('float32'))
    >>> bool(np.allclose(Q @ Q.transpose(0, 2, 1), np.eye(3), atol=1e-6))
    True
    """
    n = check_int(n, "n", low=1)
    dt = check_dtype(np.complex128 if dtype is None else dtype)
    if isinstance(batch_shape, numbers.Integral) and not isinstance(batch_shape, bool):
        batch_shape = (batch_shape,)
    if not isinstance(batch_shape, (tuple, list)):
        raise TypeError(f"batch_shape must be an int or a tuple of ints; got {batch_shape!r}")
    batch_shape = tuple(check_int(b, "batch_shape entry", low=0) for b in batch_shape)
    gen = normalize_rng(rng)
    shape = (*batch_shape, n, n)
    Z = gen.standard_normal(shape)
    if dt.kind == "c":
        Z = (Z + 1j * gen.standard_normal(shape)) / np.sqrt(2.0)
    Q, R = np.linalg.qr(Z)
    d = np.diagonal(R, axis1=-2, axis2=-1)
    phase = np.where(d == 0, 1, d / np.where(d == 0, 1, np.abs(d)))
    return (Q * phase[..., None, :]).astype(dt)


def normalize_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Turn ``rng`` (Generator, integer seed or None) into a :class:`numpy.random.Generator`.

    Raises
    ------
    TypeError
        If ``rng`` is none of these.
    ValueError
        If ``rng`` is a negative integer.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"rng must be a non-negative integer seed, a numpy.random.Generator or None; got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None; got {type(rng).__name__}")


def _device_generator(xp: ModuleType, rng: np.random.Generator) -> Any:
    # One host integer seeds a generator that lives on the device: no host-to-device copy.
    return xp.random.default_rng(int(rng.integers(2**63 - 1)))


def standard_normal(xp: ModuleType, rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> Any:
    """Standard normal samples of ``dtype`` (complex: unit variance, i.e. each part var 1/2)."""
    dtype = np.dtype(dtype)
    gen = rng if xp is np else _device_generator(xp, rng)
    real = np.float32 if dtype in (np.float32, np.complex64) else np.float64
    if dtype.kind == "c":
        z = gen.standard_normal((2, *shape), dtype=real)
        return (z[0] + 1j * z[1]).astype(dtype) * np.sqrt(0.5).astype(real)
    return gen.standard_normal(shape, dtype=real)


def uniform(xp: ModuleType, rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> Any:
    """Uniform samples on the open interval (0, 1) in the real dtype ``dtype``."""
    gen = rng if xp is np else _device_generator(xp, rng)
    u = gen.random(shape, dtype=np.dtype(dtype))
    tiny = np.finfo(np.dtype(dtype)).tiny
    return xp.maximum(u, tiny)
