"""In-place unitary initialisers for torch tensors, in the style of :mod:`torch.nn.init`.

Each fills a tensor of shape (..., N, N) with independent unitary (complex dtype) or orthogonal
(real dtype) matrices, drawn with the library's seeded NumPy generators in double precision and
copied into the tensor's memory (on its device), and returns the tensor.  Without ``rng`` the
seed comes from torch's default generator, so ``torch.manual_seed`` reproduces the draw, as it
does for :mod:`torch.nn.init`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import unitary_update as uu
from unitary_update.random import normalize_rng

__all__ = ["cayley_", "henaff_", "orthogonal_"]

_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.complex64: np.complex64,
          torch.complex128: np.complex128}  # fmt: skip


def torch_seed(generator: Any = None) -> int:
    """A non-negative 63-bit seed drawn from ``generator`` (a ``torch.Generator``; None: torch's default one).

    The library's own generators are NumPy's; drawing their seed from torch's makes
    ``torch.manual_seed(s)`` reproduce everything random that a torch user did not seed
    explicitly.
    """
    device = None if generator is None else generator.device  # a CUDA generator draws on its device
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64, generator=generator, device=device))


def _numpy_rng(rng: Any) -> np.random.Generator:
    """The NumPy generator of an initialiser's ``rng``: a Generator or int as given, else seeded from torch."""
    if rng is None or isinstance(rng, torch.Generator):
        return np.random.default_rng(torch_seed(rng))
    return normalize_rng(rng)


def _check(tensor: Any, name: str) -> tuple[tuple[int, ...], int]:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: tensor must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.dtype not in _NUMPY:
        raise ValueError(f"{name}: tensor has dtype {tensor.dtype}; expected float32, float64, complex64 or complex128")
    if tensor.ndim < 2 or tensor.shape[-1] != tensor.shape[-2] or tensor.shape[-1] == 0:
        raise ValueError(f"{name}: tensor must have shape (..., N, N) with N >= 1; got {tuple(tensor.shape)}")
    return tuple(tensor.shape[:-2]), int(tensor.shape[-1])


def _fill(tensor: Any, name: str, rng: Any, draw: Callable[[int, np.random.Generator], np.ndarray]) -> Any:
    batch, n = _check(tensor, name)
    gen = _numpy_rng(rng)
    count = int(np.prod(batch, dtype=np.int64))
    values = np.stack([draw(n, gen) for _ in range(count)]) if count else np.zeros((0, n, n))
    values = values.reshape(*batch, n, n).astype(_NUMPY[tensor.dtype])
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(values))
    return tensor


def _rotation_blocks(n: int, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    W = np.eye(n)
    idx = np.arange(0, n - 1, 2)
    W[idx, idx] = W[idx + 1, idx + 1] = cos
    W[idx, idx + 1] = sin
    W[idx + 1, idx] = -sin
    return W


def orthogonal_(tensor: Any, *, rng: np.random.Generator | int | torch.Generator | None = None) -> Any:
    """Fill ``tensor`` in place with Haar-random orthogonal (real) or unitary (complex) matrices.

    Parameters
    ----------
    tensor : torch.Tensor, shape (..., N, N)
        float32, float64, complex64 or complex128; each N x N matrix of a stack is drawn
        independently (:func:`unitary_update.random_unitary`).
    rng : numpy.random.Generator, int, torch.Generator or None
        Seed or generator; a ``torch.Generator``, or None for torch's default one, gives the
        seed (so ``torch.manual_seed`` reproduces the result).

    Returns
    -------
    torch.Tensor
        ``tensor`` itself.

    Raises
    ------
    TypeError
        If ``tensor`` is not a torch tensor or ``rng`` is not a generator, an int or None.
    ValueError
        If ``tensor`` is not a (stack of) square matrix of one of the four dtypes.

    Notes
    -----
    Cost O(N^3) per matrix (a QR decomposition, in double precision on the host).

    Examples
    --------
    >>> import torch, unitary_update as uu
    >>> from unitary_update.torch import orthogonal_
    >>> W = orthogonal_(torch.empty(3, 8, 8, dtype=torch.complex64), rng=0)
    >>> uu.unitarity_error(W) < 1e-5
    True
    """
    batch, n = _check(tensor, "orthogonal_")
    gen = _numpy_rng(rng)
    values = uu.random_unitary(n, dtype=_NUMPY[tensor.dtype], batch_shape=batch, rng=gen)
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(values))
    return tensor


def henaff_(tensor: Any, *, rng: np.random.Generator | int | torch.Generator | None = None) -> Any:
    r"""Fill ``tensor`` in place with Henaff's block-diagonal rotations (Henaff, Szlam, LeCun 2016).

    Each matrix is ``expm(S)`` for a block-diagonal skew-symmetric S with 2 x 2 blocks
    ``[[0, theta], [-theta, 0]]``, ``theta`` uniform in ``[-pi, pi]``: independent plane rotations
    (a last 1 x 1 block of 1 when N is odd).  Real orthogonal, also for a complex tensor.

    Parameters
    ----------
    tensor : torch.Tensor, shape (..., N, N)
        float32, float64, complex64 or complex128.
    rng : numpy.random.Generator, int, torch.Generator or None
        Seed or generator; a ``torch.Generator``, or None for torch's default one, gives the
        seed (so ``torch.manual_seed`` reproduces the result).

    Returns
    -------
    torch.Tensor
        ``tensor`` itself.

    Raises
    ------
    TypeError
        If ``tensor`` is not a torch tensor or ``rng`` is not a generator, an int or None.
    ValueError
        If ``tensor`` is not a (stack of) square matrix of one of the four dtypes.

    Notes
    -----
    Cost O(N^2) per matrix (writing it; the rotations are closed form).  For a single matrix and
    the same seed, the matrix of ``unitary_update.models.urnn.init_recurrent(N, "henaff", rng=seed)``.

    Examples
    --------
    >>> import torch, unitary_update as uu
    >>> from unitary_update.torch import henaff_
    >>> W = henaff_(torch.empty(6, 6), rng=0)
    >>> uu.unitarity_error(W) < 1e-6, float(W[0, 2])   # 2 x 2 rotation blocks on the diagonal
    (True, 0.0)
    """

    def draw(n: int, gen: np.random.Generator) -> np.ndarray:
        theta = gen.uniform(-np.pi, np.pi, n // 2)
        return _rotation_blocks(n, np.cos(theta), np.sin(theta))

    return _fill(tensor, "henaff_", rng, draw)


def cayley_(tensor: Any, *, rng: np.random.Generator | int | torch.Generator | None = None) -> Any:
    r"""Fill ``tensor`` in place with Helfrich's Cayley initialisation (Helfrich, Willmott, Ye 2018).

    Each matrix is the Cayley transform ``(I + S)^{-1} (I - S)`` of a block-diagonal
    skew-symmetric S with 2 x 2 blocks ``[[0, s], [-s, 0]]``, ``s = -sqrt((1 - cos u) / (1 + cos
    u))`` and ``u`` uniform in ``[0, pi / 2]``: rotations by angles in ``[0, pi / 2]`` (the
    transform in closed form, block by block).  Real orthogonal, also for a complex tensor.

    Parameters
    ----------
    tensor : torch.Tensor, shape (..., N, N)
        float32, float64, complex64 or complex128.
    rng : numpy.random.Generator, int, torch.Generator or None
        Seed or generator; a ``torch.Generator``, or None for torch's default one, gives the
        seed (so ``torch.manual_seed`` reproduces the result).

    Returns
    -------
    torch.Tensor
        ``tensor`` itself.

    Raises
    ------
    TypeError
        If ``tensor`` is not a torch tensor or ``rng`` is not a generator, an int or None.
    ValueError
        If ``tensor`` is not a (stack of) square matrix of one of the four dtypes.

    Notes
    -----
    Cost O(N^2) per matrix.  For a single matrix and the same seed, the matrix (to rounding) of
    ``unitary_update.models.urnn.init_recurrent(N, "cayley", rng=seed)``.

    Examples
    --------
    >>> import torch, unitary_update as uu
    >>> from unitary_update.torch import cayley_
    >>> W = cayley_(torch.empty(2, 5, 5, dtype=torch.float64), rng=0)
    >>> uu.unitarity_error(W) < 1e-12
    True
    """

    def draw(n: int, gen: np.random.Generator) -> np.ndarray:
        u = gen.uniform(0, np.pi / 2, n // 2)
        s = -np.sqrt((1 - np.cos(u)) / (1 + np.cos(u)))
        # (I + S)^{-1} (I - S) of one block [[0, s], [-s, 0]]: [[1 - s^2, -2 s], [2 s, 1 - s^2]] / (1 + s^2)
        return _rotation_blocks(n, (1 - s * s) / (1 + s * s), -2 * s / (1 + s * s))

    return _fill(tensor, "cayley_", rng, draw)
