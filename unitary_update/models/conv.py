r"""Orthogonal (real) and unitary (complex) circular convolutions in the Fourier domain.

A stride-1 circular convolution with C input and C output channels on an H x W image,

.. math::  y_o[p] = \sum_i \sum_q k_{oi}[q] \, x_i[p - q \bmod (H, W)],

is block-diagonalised by the 2-D FFT: with the unitary ("ortho") transform,
:math:`\hat y[f] = K[f] \hat x[f]` at every frequency ``f``, where ``K[f]`` is the C x C matrix of
the (unnormalised) DFT of the kernel at ``f``.  The convolution is orthogonal -- norm-preserving,
inverse equal to adjoint -- exactly when every ``K[f]`` is unitary.  The layer stores those
matrices directly ("full width": the kernel spans the whole image), so training it is a batched
projUNN problem: a stack of F small unitary matrices updated at once by
:func:`unitary_update.project` / :func:`unitary_update.transport`.

Symbols
-------

=====  ==============  ===========================================================================
name   shape           meaning
=====  ==============  ===========================================================================
``K``  (H, W', C, C)   the per-frequency channel-mixing matrices (``W' = W // 2 + 1`` for real
                       layers, ``W`` for complex ones)
``U``  (F, C, C)       the stored complex unitary stack: every frequency of a complex layer; one
                       frequency of each conjugate pair ``{f, -f}`` of a real layer
``Q``  (R, C, C)       the stored real orthogonal stack of a real layer: the R <= 4 self-conjugate
                       frequencies ``f = -f`` (0 or H/2 in each direction)
=====  ==============  ===========================================================================

Real layers keep the Hermitian symmetry of the real FFT exactly: ``K[-f] = conj(K[f])`` holds by
construction (only one of each pair is stored) and the self-conjugate matrices are real, so the
output of a real input is real and is computed with :func:`numpy.fft.rfft2` /
:func:`~numpy.fft.irfft2` over ``H * (W // 2 + 1)`` frequencies.

Gradients follow the convention of the rest of the library: for a real loss L and a complex
parameter ``Z``, the gradient is ``dL/dRe Z + i dL/dIm Z``, so ``-lr * grad`` is the steepest
descent step.  Per frequency the gradient of a mini-batch is ``sum_b g_y[b, f] x[b, f]^H``, which
:meth:`OrthogonalConv2d.backward` returns in factored form (:class:`ConvGradient`), ready for the
factored sketch of :func:`unitary_update.sketch`.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .._config import get_options
from .._sketch import SKETCH_METHODS
from .._step import drift_at
from .._step import step as _step
from .._validation import (
    NonFiniteError,
    check_choice,
    check_drift,
    check_dtype,
    check_finite,
    check_float,
    check_float_dtype,
    check_int,
    check_rank,
    max_abs,
)
from .._xp import array_namespace, from_compute, hconj, is_cupy, to_compute
from ..random import normalize_rng, random_unitary

__all__ = ["CONV_UPDATES", "ConvGradient", "OrthogonalConv2d", "frequency_layout", "maxmin", "maxmin_backward"]

CONV_UPDATES = ("transport", "project", "euclidean")
_INITS = ("haar", "identity")


@dataclass(frozen=True)
class _Layout:
    """Flat frequency indices (into the ``H * W'`` grid) of the stored and derived matrices."""

    shape: tuple[int, int]
    real: bool
    paired: np.ndarray  # stored in U (one of each conjugate pair; every frequency if complex)
    self_conjugate: np.ndarray  # stored in Q (real layers only)
    mirror: np.ndarray  # half-plane frequencies that are the conjugate of a stored one
    mirror_source: np.ndarray  # for each mirror, its position in ``paired``

    @property
    def half_width(self) -> int:
        return self.shape[1] // 2 + 1 if self.real else self.shape[1]


def _layout(shape: tuple[int, int], real: bool) -> _Layout:
    h_size, w_size = shape
    empty = np.zeros(0, dtype=np.intp)
    if not real:
        return _Layout(shape, False, np.arange(h_size * w_size, dtype=np.intp), empty, empty, empty)
    wr = w_size // 2 + 1
    # vectorised over the (H, W') half-plane, in row-major order (a Python loop took minutes on
    # large images before any check could run)
    grid_h, grid_w = np.meshgrid(np.arange(h_size, dtype=np.intp), np.arange(wr, dtype=np.intp), indexing="ij")
    h, w = grid_h.ravel(), grid_w.ravel()
    flat = h * wr + w
    inner = (2 * w) % w_size != 0  # 0 < w < W/2: the conjugate (-h, W - w) lies outside the half-plane
    self_conj = ~inner & ((2 * h) % h_size == 0)  # h in {0, H/2} and w in {0, W/2}: f = -f
    first = ~inner & ~self_conj & (2 * h < h_size)  # first of the pair (h, w), (H - h, w) in such a column
    mirror = ~inner & ~self_conj & ~first
    paired = flat[inner | first]
    position = np.full(h_size * wr, -1, dtype=np.intp)
    position[paired] = np.arange(paired.size, dtype=np.intp)
    mirror_of = ((h_size - h[mirror]) % h_size) * wr + w[mirror]
    return _Layout(shape, True, paired, flat[self_conj], flat[mirror], position[mirror_of])


def frequency_layout(image_shape: tuple[int, int], *, real: bool = True) -> dict[str, int]:
    """How many unitary matrices a layer on ``image_shape`` stores.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)``, both >= 1.
    real : bool, default True
        Real layer (real FFT, Hermitian symmetry) or complex layer.

    Returns
    -------
    dict
        ``complex``: F, the number of complex unitary matrices (``U``);
        ``real``: R, the number of real orthogonal matrices (``Q``);
        ``half_plane``: the number of frequencies the transform computes (``H * (W // 2 + 1)``
        for a real layer, ``H * W`` for a complex one).

    Raises
    ------
    TypeError
        If a size is not an integer.
    ValueError
        If the shape is not a pair of sizes, or a size is below 1.

    Notes
    -----
    For a real layer ``2 F + R = H W``: every frequency is stored once, a conjugate pair as one
    complex matrix, a self-conjugate frequency as a real one.

    Examples
    --------
    >>> from unitary_update.models.conv import frequency_layout
    >>> frequency_layout((14, 14))
    {'complex': 96, 'real': 4, 'half_plane': 112}
    >>> frequency_layout((5, 5), real=False)
    {'complex': 25, 'real': 0, 'half_plane': 25}
    """
    if not isinstance(real, (bool, np.bool_)):
        raise TypeError(f"real must be a bool (True or False); got {real!r} of type {type(real).__name__}")
    layout = _layout(_check_image_shape(image_shape), bool(real))
    h_size = layout.shape[0]
    return {
        "complex": int(layout.paired.size),
        "real": int(layout.self_conjugate.size),
        "half_plane": h_size * layout.half_width,
    }


def _check_image_shape(image_shape: Any) -> tuple[int, int]:
    try:
        h_size, w_size = image_shape
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be a pair (H, W) of positive integers; got {image_shape!r}") from None
    return check_int(h_size, "image_shape H", low=1), check_int(w_size, "image_shape W", low=1)


def _check_name(value: Any, valid: Any, name: str) -> str:
    """:func:`check_choice` for a string; anything else (an array compares elementwise) is a TypeError."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {', '.join(map(repr, valid))}; got {type(value).__name__}")
    return check_choice(value, valid, name)


def _stack_bytes(channels: int, image_shape: tuple[int, int], dtype: np.dtype) -> int:
    """About the bytes of a layer's stacks: ``H W C^2`` complex entries (an exact int, never overflowing)."""
    h_size, w_size = image_shape
    return h_size * w_size * channels * channels * np.result_type(dtype, np.complex64).itemsize


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


def _check_fits(nbytes: int, settings: str) -> None:
    """Refuse, naming ``settings``, parameters that no array can hold or that exceed the machine's memory.

    Without it a huge size ends in NumPy's "array is too big", a MemoryError, or a Python loop
    over every frequency that runs for hours before either.
    """
    memory = _physical_memory()
    limit = np.iinfo(np.intp).max if memory is None else min(memory, np.iinfo(np.intp).max)
    if nbytes > limit:
        size = f"{nbytes / 2**30:.3g} GiB" if nbytes.bit_length() < 1000 else f"about 10^{len(str(nbytes)) - 10} GiB"
        raise ValueError(f"{settings} too large: the parameters would need {size}, more than this machine can hold")


@dataclass(frozen=True)
class ConvGradient:
    """The gradient of a loss with respect to the stacks of an :class:`OrthogonalConv2d`, factored.

    Each field is a pair ``(P, X)`` meaning the gradient ``P @ X^H`` per frequency: the form
    :func:`unitary_update.sketch` takes without forming the C x C matrices.  Made by
    :meth:`OrthogonalConv2d.backward`, consumed by :meth:`OrthogonalConv2d.step`.

    Parameters
    ----------
    U : tuple of arrays, each (F, C, m)
        Gradient with respect to the complex stack ``U`` (complex, the layer's complex dtype).
    Q : tuple of arrays, each (R, C, m), or None
        Gradient with respect to the real stack ``Q`` (real dtype); None for complex layers.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.models.conv import OrthogonalConv2d
    >>> layer = OrthogonalConv2d(2, 2, (4, 4), rng=0)
    >>> x = np.random.default_rng(1).standard_normal((3, 2, 4, 4))
    >>> _, grad = layer.backward(x, layer(x))
    >>> [part.shape for part in grad.U], [part.shape for part in grad.Q]
    ([(6, 2, 3), (6, 2, 3)], [(4, 2, 3), (4, 2, 3)])
    >>> G_U, G_Q = grad.dense()
    >>> G_U.shape, G_Q.dtype
    ((6, 2, 2), dtype('float64'))
    """

    U: tuple[Any, Any]
    Q: tuple[Any, Any] | None

    def dense(self) -> tuple[Any, Any]:
        """The gradients as dense stacks.

        Returns
        -------
        G_U : array, shape (F, C, C)
            ``P @ X^H`` of the ``U`` factors.
        G_Q : array, shape (R, C, C), or None
            The same for ``Q``; None for complex layers.
        """
        G_U = self.U[0] @ hconj(self.U[1])
        G_Q = None if self.Q is None else self.Q[0] @ hconj(self.Q[1])
        return G_U, G_Q

    def norm(self) -> float:
        """Frobenius norm of the gradient over both stacks.

        Returns
        -------
        float
            ``sqrt(||G_U||_F^2 + ||G_Q||_F^2)`` (reads one number back on a GPU).
        """
        xp = array_namespace(*self.U)
        total = 0.0
        for G in self.dense():
            if G is not None:
                total += float(xp.sum(xp.abs(G) ** 2))
        return math.sqrt(total)


class OrthogonalConv2d:
    r"""Full-width orthogonal (real) or unitary (complex) circular convolution, stride 1.

    ``y = conv(x)`` maps ``(..., C_in, H, W)`` to ``(..., C_out, H, W)``: the input channels are
    zero-padded to ``C = C_out`` (an isometry), then every frequency of the 2-D unitary FFT is
    multiplied by its C x C unitary matrix.  For a real dtype the layer is a real orthogonal map
    (real in, real out); for a complex dtype a unitary one.  ``||conv(x)|| = ||x||`` and
    ``adjoint(conv(x)) = x``.

    Parameters
    ----------
    in_channels : int
        ``C_in >= 1``.
    out_channels : int
        ``C_out >= C_in``; ``C_in < C_out`` pads the input with zero channels.
    image_shape : tuple of int
        ``(H, W)``; the convolution is circular over both.
    dtype : dtype, default float64
        float32 or float64 give a real orthogonal layer (``U`` complex64/complex128 and a real
        ``Q``); complex64 or complex128 a unitary layer on complex inputs.
    init : {"haar", "identity"}, default "haar"
        Haar-random matrices at every frequency (a random full-width orthogonal kernel) or the
        identity (the identity map on the padded channels).
    rng : numpy.random.Generator, int or None
        Seed or generator for ``init="haar"``.
    xp : module, optional
        ``numpy`` (default) or ``cupy``: where the parameters live.

    Attributes
    ----------
    U : array, shape (F, C, C), complex
        The stored unitary matrices, one per conjugate pair of frequencies (real layer) or per
        frequency (complex layer).  Modify them in place only with unitary updates.
    Q : array, shape (R, C, C), real
        The real orthogonal matrices of the self-conjugate frequencies; ``R = 0`` for complex
        layers.
    in_channels, out_channels, image_shape, dtype, real
        As given; ``real`` is True for a real dtype.
    steps : int
        The number of completed :meth:`step` calls (the clock of a ``drift`` policy).

    Raises
    ------
    TypeError
        If a channel count or image size is not an integer, ``dtype`` is not one of the four
        floating dtypes, or ``init`` is not a string.
    ValueError
        If ``in_channels > out_channels``, a size is not positive, ``init`` is unknown, ``xp``
        is neither NumPy nor CuPy, or the stacks (``H W C^2`` complex entries) would not fit in
        the machine's memory.

    Notes
    -----
    Forward, adjoint and backward cost two FFTs of the batch, O(C H W log(HW)) per image, plus
    the per-frequency products, O(C^2 H W) per image.  A rank-k update of the stacks
    (:meth:`step`) costs O(F C^2 k) through the batched low-rank updates.

    A layer pickles and deep-copies with its stacks (the namespace is stored by name and
    imported again when it is read back).

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.models.conv import OrthogonalConv2d
    >>> layer = OrthogonalConv2d(1, 4, (6, 6), rng=0)      # 1 channel padded to 4, real
    >>> x = np.random.default_rng(1).standard_normal((2, 1, 6, 6))
    >>> y = layer(x)
    >>> y.shape, y.dtype
    ((2, 4, 6, 6), dtype('float64'))
    >>> bool(np.isclose(np.linalg.norm(y), np.linalg.norm(x)))
    True
    >>> bool(np.allclose(layer.adjoint(y), x))
    True
    >>> grad_x, grad = layer.backward(x, y)            # gradient of ||y||^2 / 2
    >>> layer.step(grad, lr=1e-2, rank=1, rng=2)       # batched projUNN-T on the stacks
    >>> bool(np.isclose(np.linalg.norm(layer(x)), np.linalg.norm(x)))
    True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_shape: tuple[int, int],
        *,
        dtype: Any = np.float64,
        init: str = "haar",
        rng: np.random.Generator | int | None = None,
        xp: ModuleType | None = None,
    ) -> None:
        c_in = check_int(in_channels, "in_channels", low=1)
        c = check_int(out_channels, "out_channels", low=1)
        if c_in > c:
            raise ValueError(
                f"in_channels ({c_in}) must not exceed out_channels ({c}): an orthogonal layer cannot drop channels"
            )
        shape = _check_image_shape(image_shape)
        dt = check_dtype(dtype)
        _check_fits(_stack_bytes(c, shape, dt), f"out_channels = {c} and image_shape = {shape}")
        init = _check_name(init, _INITS, "init")
        xp = np if xp is None else xp
        if not (xp is np or (isinstance(xp, ModuleType) and is_cupy(xp))):
            raise ValueError(f"xp must be the numpy or cupy module; got {xp!r}")
        self.in_channels, self.out_channels, self.image_shape = c_in, c, shape
        self.dtype = dt
        self.real = dt.kind == "f"
        self.complex_dtype = np.result_type(dt, np.complex64)
        self._q_dtype = dt if self.real else np.dtype(np.float64)
        self._xp = xp
        self._layout = _layout(shape, self.real)
        lay = self._layout
        self._index = {
            name: xp.asarray(getattr(lay, name)) for name in ("paired", "self_conjugate", "mirror", "mirror_source")
        }
        n_u, n_q = lay.paired.size, lay.self_conjugate.size
        gen = normalize_rng(rng)  # checked for every init: a bad rng is refused, not ignored
        if init == "identity":
            U = np.broadcast_to(np.eye(c, dtype=self.complex_dtype), (n_u, c, c))
            Q = np.broadcast_to(np.eye(c, dtype=self._q_dtype), (n_q, c, c))
        else:
            U = random_unitary(c, dtype=self.complex_dtype, batch_shape=(n_u,), rng=gen)
            Q = random_unitary(c, dtype=self._q_dtype, batch_shape=(n_q,), rng=gen)
        self.U = xp.asarray(np.array(U, order="C"))  # a writable copy (identity init is a broadcast view)
        self.Q = xp.asarray(np.array(Q, order="C"))
        self.steps = 0  # completed calls of step(); the clock of a DriftControl passed to it

    def __getstate__(self) -> dict[str, Any]:
        """The layer's attributes with the namespace module by name (a module does not pickle)."""
        state = self.__dict__.copy()
        state["_xp"] = self._xp.__name__
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore :meth:`__getstate__`'s attributes, importing the namespace module again."""
        state = dict(state)
        if state.get("_xp") not in ("numpy", "cupy"):
            raise ValueError(
                f"not a pickled OrthogonalConv2d: its namespace must be 'numpy' or 'cupy'; got {state.get('_xp')!r}"
            )
        state["_xp"] = importlib.import_module(state["_xp"])
        self.__dict__.update(state)

    @property
    def U(self) -> Any:
        """The unitary stack of the paired (or, complex layer, all) frequencies: ``(F, C, C)``, complex."""
        return self._U

    @U.setter
    def U(self, value: Any) -> None:
        self._U = self._checked_stack(value, "U", self._layout.paired.size, self.complex_dtype)

    @property
    def Q(self) -> Any:
        """The real orthogonal stack of the self-conjugate frequencies: ``(R, C, C)``; R = 0 for complex layers."""
        return self._Q

    @Q.setter
    def Q(self, value: Any) -> None:
        self._Q = self._checked_stack(value, "Q", self._layout.self_conjugate.size, self._q_dtype)

    def _checked_stack(self, value: Any, name: str, count: int, dtype: np.dtype) -> Any:
        """``value`` if it is a ``(count, C, C)`` array of the layer's namespace and dtype; else an error naming it."""
        try:
            xp = array_namespace(value)
        except TypeError:
            xp = None
        if xp is not self._xp:
            raise TypeError(
                f"{name} must be a {self._xp.__name__} array (the layer's namespace); got {type(value).__name__}"
            )
        c = self.out_channels
        if tuple(value.shape) != (count, c, c):
            raise ValueError(f"{name} must have shape {(count, c, c)} for this layer; got {tuple(value.shape)}")
        if value.dtype != dtype:
            raise TypeError(f"{name} must have dtype {np.dtype(dtype)} for this layer; got {value.dtype}")
        return value

    def __repr__(self) -> str:
        return (
            f"OrthogonalConv2d({self.in_channels}, {self.out_channels}, {self.image_shape}, dtype={self.dtype}, "
            f"U={tuple(self.U.shape)}, Q={tuple(self.Q.shape)})"
        )

    # ---------------------------------------------------------------------------------------
    # the per-frequency matrices
    # ---------------------------------------------------------------------------------------
    def _stack(self) -> Any:
        """``K`` as a flat (H * W', C, C) complex stack, assembled from ``U`` and ``Q``."""
        if not self.real:
            return self.U
        xp, idx = self._xp, self._index
        h_size, c = self.image_shape[0], self.out_channels
        K = xp.empty((h_size * self._layout.half_width, c, c), dtype=self.complex_dtype)
        K[idx["paired"]] = self.U
        if self._layout.mirror.size:
            K[idx["mirror"]] = xp.conj(self.U[idx["mirror_source"]])
        K[idx["self_conjugate"]] = self.Q
        return K

    def frequency_matrices(self, *, full: bool = False) -> Any:
        """The C x C matrix at every frequency, ``K[h, w]``.

        Parameters
        ----------
        full : bool, default False
            For a real layer, all ``H x W`` frequencies (the half-plane completed by
            ``K[-f] = conj(K[f])``) instead of the ``H x (W // 2 + 1)`` the real FFT uses.

        Returns
        -------
        array, shape (H, W or W // 2 + 1, C, C)
            Complex, in the layer's array library.

        Raises
        ------
        TypeError
            If ``full`` is not a bool.

        Examples
        --------
        >>> import numpy as np
        >>> from unitary_update.models.conv import OrthogonalConv2d
        >>> K = OrthogonalConv2d(2, 2, (4, 4), rng=0).frequency_matrices(full=True)
        >>> bool(np.array_equal(K[1, 3], K[3, 1].conj()))     # Hermitian symmetry, exactly
        True
        """
        if not isinstance(full, (bool, np.bool_)):
            raise TypeError(f"full must be a bool (True or False); got {full!r} of type {type(full).__name__}")
        xp = self._xp
        h_size, w_size = self.image_shape
        c = self.out_channels
        K = self._stack().reshape(h_size, self._layout.half_width, c, c)
        if not self.real or not full:
            return K
        wr = self._layout.half_width
        rows = xp.asarray((-np.arange(h_size)) % h_size)
        cols = xp.asarray(np.arange(w_size - wr, 0, -1))
        rest = K[rows][:, cols]  # the conjugate partner (-h, W - w) of every (h, w >= W')
        return xp.concatenate([K, xp.conj(rest)], axis=1)

    def kernel(self) -> Any:
        """The spatial kernel ``k[o, i, h, w]`` of the circular convolution on the padded channels.

        Returns
        -------
        array, shape (C, C, H, W)
            Real for a real layer; ``y_o[p] = sum_i sum_q k[o, i, q] x_i[p - q]``.

        Examples
        --------
        >>> from unitary_update.models.conv import OrthogonalConv2d
        >>> OrthogonalConv2d(1, 2, (3, 4), init="identity").kernel()[:, :, 0, 0]
        array([[1., 0.],
               [0., 1.]])
        """
        xp = self._xp
        K = xp.moveaxis(self.frequency_matrices(), (0, 1), (2, 3))
        if self.real:
            return xp.fft.irfft2(K, s=self.image_shape)
        return xp.fft.ifft2(K)

    # ---------------------------------------------------------------------------------------
    # transforms
    # ---------------------------------------------------------------------------------------
    def _input(self, x: Any, name: str, channels: int) -> tuple[Any, str]:
        x, library = to_compute(x, name)
        check_float_dtype(x, name)
        expected = (channels, *self.image_shape)
        if x.ndim < 3 or tuple(x.shape[-3:]) != expected:
            raise ValueError(f"{name} must have shape (..., {', '.join(map(str, expected))}); got {tuple(x.shape)}")
        if self.real and x.dtype.kind == "c":
            raise TypeError(f"{name} is complex ({x.dtype}) but the layer is real ({self.dtype})")
        if array_namespace(x) is not self._xp:
            raise TypeError(f"{name} lives in {array_namespace(x).__name__} but the layer in {self._xp.__name__}")
        check_finite(x, name)
        # real precisions compared: a float64 x has the itemsize of a complex64 layer, not its range
        if np.finfo(x.dtype).max > np.finfo(self.dtype).max and x.size and get_options().check_finite:
            largest = float(max_abs(self._xp, x))
            if largest > float(np.finfo(self.dtype).max):
                raise ValueError(
                    f"{name} overflows the layer's dtype {self.dtype}: |{name}| reaches {largest:.3g} > "
                    f"{float(np.finfo(self.dtype).max):.3g}"
                )
        return x.astype(self.dtype, copy=False), library

    def _fft(self, x: Any) -> Any:
        """(..., C, H, W) -> frequency-major (F', C, batch) complex."""
        xp = self._xp
        X = xp.fft.rfft2(x, norm="ortho") if self.real else xp.fft.fft2(x, norm="ortho")
        c = x.shape[-3]
        X = X.reshape(-1, c, X.shape[-2] * X.shape[-1])
        return xp.ascontiguousarray(X.transpose(2, 1, 0)).astype(self.complex_dtype, copy=False)

    def _ifft(self, Y: Any, batch: tuple[int, ...]) -> Any:
        xp = self._xp
        h_size, w_size = self.image_shape
        Y = Y.transpose(2, 1, 0).reshape(*batch, Y.shape[1], h_size, self._layout.half_width)
        if self.real:
            return xp.fft.irfft2(Y, s=(h_size, w_size), norm="ortho").astype(self.dtype, copy=False)
        return xp.fft.ifft2(Y, norm="ortho").astype(self.dtype, copy=False)

    def _pad(self, x: Any) -> Any:
        missing = self.out_channels - x.shape[-3]
        if missing == 0:
            return x
        xp = self._xp
        zeros = xp.zeros((*x.shape[:-3], missing, *x.shape[-2:]), dtype=x.dtype)
        return xp.concatenate([x, zeros], axis=-3)

    def forward(self, x: Any) -> Any:
        """``y = conv(x)``.

        Parameters
        ----------
        x : array, shape (..., C_in, H, W)
            Real for a real layer (cast to its dtype); real or complex for a complex layer.

        Returns
        -------
        array, shape (..., C_out, H, W)
            In the layer's dtype and the caller's array library; ``||y|| = ||x||``.

        Raises
        ------
        TypeError
            If x is not a floating array, is complex for a real layer, or lives in another array
            library than the layer.
        ValueError
            If the shape does not end in ``(C_in, H, W)``, x contains NaN or Inf, or a finite x
            overflows the layer's dtype when cast to it (float64 values beyond float32's range).
        """
        x, library = self._input(x, "x", self.in_channels)
        batch = tuple(x.shape[:-3])
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is checked and named below
            Y = self._stack() @ self._fft(self._pad(x))
            y = self._ifft(Y, batch)
        return from_compute(self._finite_output(y, "x"), library)

    __call__ = forward

    def adjoint(self, y: Any) -> Any:
        """``conv^H(y)``, the adjoint; the inverse of :meth:`forward` while the stacks are unitary.

        Parameters
        ----------
        y : array, shape (..., C_out, H, W)
            The output-side signal to map back.

        Returns
        -------
        array, shape (..., C_in, H, W)
            The padded channels are dropped (the adjoint of zero-padding).

        Raises
        ------
        TypeError, ValueError
            As :meth:`forward`.

        Examples
        --------
        >>> import numpy as np
        >>> from unitary_update.models.conv import OrthogonalConv2d
        >>> layer = OrthogonalConv2d(3, 3, (4, 5), dtype=np.complex128, rng=0)
        >>> x = np.random.default_rng(1).standard_normal((3, 4, 5)) + 0j
        >>> bool(np.allclose(layer.adjoint(layer(x)), x))
        True
        """
        y, library = self._input(y, "y", self.out_channels)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is checked and named below
            x = self._adjoint(y)
        return from_compute(self._finite_output(x, "y"), library)

    def _finite_output(self, out: Any, name: str) -> Any:
        """``out``, or ValueError when a finite input overflowed inside the FFTs (entries near the dtype's max)."""
        if get_options().check_finite and out.size and not bool(self._xp.isfinite(out).all()):
            raise ValueError(
                f"{name} overflows inside the layer's FFTs ({self.dtype}): its entries are too close to the "
                f"dtype's largest value {float(np.finfo(self.dtype).max):.3g}; scale {name} down"
            )
        return out

    def _adjoint(self, y: Any) -> Any:
        batch = tuple(y.shape[:-3])
        X = hconj(self._stack()) @ self._fft(y)
        return self._ifft(X, batch)[..., : self.in_channels, :, :]

    def backward(self, x: Any, grad_y: Any) -> tuple[Any, ConvGradient]:
        r"""Gradients of a loss through ``y = conv(x)``, written out by hand.

        With ``X, G`` the unitary FFTs of the (padded) input and of ``grad_y``, the gradient
        with respect to the matrix at a frequency is ``G[f] X[f]^H`` summed over the batch;
        a real layer's complex matrix stands for both ``f`` and ``-f`` (twice that), its real
        matrices get the real part.  ``grad_x`` is the adjoint applied to ``grad_y``.

        Parameters
        ----------
        x : array, shape (..., C_in, H, W)
            The input of the forward pass.
        grad_y : array, shape (..., C_out, H, W)
            ``dL/dy`` (``dL/dRe y + i dL/dIm y`` for a complex layer), same batch shape as x.

        Returns
        -------
        grad_x : array, shape (..., C_in, H, W)
            ``dL/dx``.
        grad : ConvGradient
            Factored gradients for ``U`` and ``Q``, each ``(P, X)`` of shape (stack, C, m)
            with m the flattened batch size.

        Raises
        ------
        TypeError, ValueError
            As :meth:`forward`, and if the batch shapes of x and grad_y differ.

        Notes
        -----
        Two FFTs and one inverse FFT, O(C H W log(HW) + C^2 H W) per image.
        """
        x, library = self._input(x, "x", self.in_channels)
        gy, _ = self._input(grad_y, "grad_y", self.out_channels)
        if tuple(x.shape[:-3]) != tuple(gy.shape[:-3]):
            raise ValueError(
                f"x and grad_y must have the same batch shape; got {tuple(x.shape[:-3])} and {tuple(gy.shape[:-3])}"
            )
        xp, idx = self._xp, self._index
        batch = tuple(x.shape[:-3])
        X = self._fft(self._pad(x))
        G = self._fft(gy)
        grad_x = self._ifft(hconj(self._stack()) @ G, batch)[..., : self.in_channels, :, :]
        if not self.real:
            return from_compute(grad_x, library), ConvGradient((G, X), None)
        paired = idx["paired"]
        grad_U = (2 * G[paired], X[paired])
        sc = idx["self_conjugate"]
        grad_Q = (xp.ascontiguousarray(G[sc].real), xp.ascontiguousarray(X[sc].real))
        return from_compute(grad_x, library), ConvGradient(grad_U, grad_Q)

    # ---------------------------------------------------------------------------------------
    # training
    # ---------------------------------------------------------------------------------------
    def step(
        self,
        grad: ConvGradient,
        *,
        lr: float,
        rank: int = 1,
        update: str = "transport",
        sketch: str = "randomized",
        rng: np.random.Generator | int | None = None,
        drift: Any = None,
    ) -> None:
        r"""One gradient-descent step on the stacks, in place, keeping them unitary.

        Per frequency the step ``-lr * grad`` is sketched to rank k (from its factors, never
        formed) and applied with one batched :func:`unitary_update.project` or
        :func:`unitary_update.transport` call per stack.

        Parameters
        ----------
        grad : ConvGradient
            From :meth:`backward` (of this layer).
        lr : float
            Learning rate, > 0.
        rank : int, default 1
            Rank k of the update at each frequency, ``1 <= k <= C``.
        update : {"transport", "project", "euclidean"}
            projUNN-T, projUNN-D, or a plain unconstrained step ``U -= lr * grad`` (for
            baselines: it leaves the manifold; the Hermitian symmetry of a real layer is still
            kept, so it stays a real convolution).
        sketch : {"randomized", "lsi", "column", "exact"}
            Sketch method (see :func:`unitary_update.sketch`).
        rng : numpy.random.Generator, int or None
            Seed or generator for the sketch.
        drift : DriftControl, optional
            Drift control (:class:`unitary_update.DriftControl`) applied after the update to each
            stack (U, and Q for a real layer), on the layer's step count :attr:`steps`, so a fixed
            schedule ``every=n`` retracts both stacks at the same steps.  Default None.

        Raises
        ------
        TypeError
            If ``grad`` is not a ConvGradient, ``lr`` is not a real number, ``rank`` is not an
            integer, ``drift`` has no ``maybe_retract`` method, ``rng`` is not a generator, seed
            or None, or a gradient factor is not a floating array of the layer's library (or is
            complex for the real stack ``Q``).
        ValueError
            If ``lr`` is not a positive finite number, ``rank`` is out of range, a name is
            unknown, the gradient's shapes do not match the layer, or a stack is read-only.
        NonFiniteError
            (a ValueError) If a gradient factor contains NaN or Inf, or the step overflows,
            while the ``check_finite`` option is on.

        Notes
        -----
        All or nothing: both stacks' results are computed into new arrays and written only
        when both succeeded, so a call that raises leaves ``U``, ``Q``, :attr:`steps` and the
        state of a generator passed as ``rng`` exactly as they were.  An empty batch
        (``m = 0``) is a zero gradient: the stacks stay as they are (up to the drift policy).

        Cost O(F C^2 k + F C m k) for a gradient of batch m (the factored sketch and the
        low-rank updates), against O(F C^3) for dense polar/expm, plus one copy of each stack.
        """
        if not isinstance(grad, ConvGradient):
            raise TypeError(f"grad must be a ConvGradient from OrthogonalConv2d.backward; got {type(grad).__name__}")
        lr = check_float(lr, "lr", low=0, open_low=True, expected="a positive finite number")
        update = _check_name(update, CONV_UPDATES, "update")
        sketch = _check_name(sketch, SKETCH_METHODS, "sketch")
        rank = check_rank(rank, self.out_channels)
        check_drift(drift)
        gen = normalize_rng(rng)
        pairs = [(self.U, self._check_factors(grad.U, self.U, "grad.U"), "U")]
        if self.real:
            if grad.Q is None:
                raise ValueError("grad.Q is None but the layer is real; pass the gradient of this layer")
            pairs.append((self.Q, self._check_factors(grad.Q, self.Q, "grad.Q"), "Q"))
        elif grad.Q is not None:
            raise ValueError("grad.Q must be None for a complex layer (it has no real stack Q)")
        for stack, _, name in pairs:
            flags = getattr(stack, "flags", None)
            if flags is not None and not getattr(flags, "writeable", True):
                raise ValueError(f"the layer's stack {name} is read-only; nothing was written")
        # All or nothing: both results are computed into new arrays before either stack is
        # written, and the generator and the drift policy's state are put back if anything raises.
        saved_rng = gen.bit_generator.state
        saved_drift = copy.deepcopy(drift.__dict__) if hasattr(drift, "__dict__") else None
        policy = drift_at(drift, self.steps + 1)  # the layer's clock: both stacks at the same step
        try:
            results = [
                self._stepped(stack, factors, name, lr, rank, update, sketch, gen, policy)
                for stack, factors, name in pairs
            ]
        except BaseException:
            gen.bit_generator.state = saved_rng
            if saved_drift is not None:
                drift.__dict__.clear()
                drift.__dict__.update(saved_drift)
            raise
        for (stack, _, _), result in zip(pairs, results, strict=True):
            if result is not None:
                stack[...] = result
        self.steps += 1

    def _check_factors(self, factors: Any, stack: Any, name: str) -> tuple[Any, Any]:
        """Check one stack's gradient factors ``(P, X)`` (types, shapes, dtypes, finiteness)."""
        if not isinstance(factors, (tuple, list)) or len(factors) != 2:
            raise TypeError(f"{name} must be a pair (P, X) of arrays; got {type(factors).__name__}")
        P, X = factors
        checked = []
        for part, which in ((P, "[0]"), (X, "[1]")):
            label = name + which
            if not hasattr(part, "dtype") or not hasattr(part, "shape"):
                raise TypeError(f"{label} must be an array; got {type(part).__name__}")
            try:
                library = array_namespace(part).__name__
            except TypeError:  # a torch or JAX tensor, ...
                library = type(part).__module__.split(".")[0]
            if library != self._xp.__name__:
                raise TypeError(f"{label} lives in {library} but the layer in {self._xp.__name__}")
            check_float_dtype(part, label)
            if stack.dtype.kind != "c" and part.dtype.kind == "c":
                raise TypeError(f"{label} is complex ({part.dtype}) but the stack it updates is real ({stack.dtype})")
            if part.ndim != 3 or tuple(part.shape[:2]) != tuple(stack.shape[:2]) or part.shape[2] != P.shape[2]:
                raise ValueError(
                    f"{name} has factor shapes {tuple(P.shape)}, {tuple(X.shape)}; expected (F, C, m) with "
                    f"(F, C) = {tuple(stack.shape[:2])}"
                )
            check_finite(part, label)  # every check runs before the first stack is written
            checked.append(part)
        return checked[0], checked[1]

    def _stepped(
        self,
        stack: Any,
        factors: tuple[Any, Any],
        name: str,
        lr: float,
        rank: int,
        update: str,
        sketch: str,
        gen: np.random.Generator,
        policy: Any,
    ) -> Any:
        """The updated copy of ``stack`` (None for an empty stack); ``stack`` itself is not written."""
        if stack.shape[0] == 0:
            return None
        P, X = factors
        if P.shape[2] == 0:  # an empty batch: a zero gradient, only the drift policy acts
            new = stack.copy()
            if policy is not None:
                policy.maybe_retract(new)
        elif update != "euclidean":
            with np.errstate(over="ignore", invalid="ignore"):
                A = -lr * P
            if not bool(self._xp.isfinite(A).all()):
                # lr times the gradient overflows the stack's dtype: hand the factors over in double
                # precision, where the update rescales them (A B^H = (sA)(B/s)^H) before casting
                wide = np.result_type(P.dtype, np.float64)
                with np.errstate(over="ignore", invalid="ignore"):
                    A = -lr * P.astype(wide)
                if not bool(self._xp.isfinite(A).all()):
                    raise NonFiniteError(
                        f"lr = {lr!r} times the gradient of {name} overflows even in {wide}; nothing was written"
                    )
                X = X.astype(np.result_type(X.dtype, np.float64))
            new = _step(stack, (A, X), rank=rank, update=update, sketch=sketch, rng=gen, drift=policy)
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, by name
                new = stack - lr * (P @ hconj(X)).astype(stack.dtype, copy=False)
            self._finite_step(new, name, lr)  # before the policy, which would blame "U"
            if policy is not None:
                policy.maybe_retract(new)  # a retraction of a finite stack stays finite
            return new
        self._finite_step(new, name, lr)
        return new

    def _finite_step(self, new: Any, name: str, lr: float) -> None:
        """NonFiniteError naming the stack when its new value is not finite (``check_finite`` on)."""
        if get_options().check_finite:
            xp = self._xp
            if not bool(xp.isfinite(new).all()):
                raise NonFiniteError(
                    f"the step of {name} is not finite (lr = {lr!r} times the gradient overflows); nothing was written"
                )


# ---------------------------------------------------------------------------------------------
# a pointwise norm-preserving nonlinearity
# ---------------------------------------------------------------------------------------------
def _check_axis(axis: Any, ndim: int) -> int:
    """``axis`` as a non-negative axis of an ``ndim``-dimensional array (TypeError / ValueError naming it)."""
    axis = check_int(axis, "axis")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must be in [-{ndim}, {ndim}) for x of {ndim} dimensions; got {axis}")
    return axis % ndim


def _pairs(x: Any, axis: int) -> tuple[Any, Any, int]:
    xp = array_namespace(x)
    axis = _check_axis(axis, x.ndim)
    c = x.shape[axis]
    if c % 2:
        raise ValueError(f"maxmin needs an even number of channels along axis {axis}; got {c}")
    split = (*x.shape[:axis], c // 2, 2, *x.shape[axis + 1 :])
    v = xp.reshape(x, split)
    lead = (slice(None),) * (axis + 1)
    first, second = (*lead, 0), (*lead, 1)
    return v[first], v[second], axis  # views, no copies


def maxmin(x: Any, *, axis: int = -3) -> Any:
    """MaxMin (GroupSort with groups of 2): ``(a, b) -> (max(a, b), min(a, b))`` for channel pairs.

    A permutation of the entries of each pair, so it preserves the norm (and, being piecewise
    a permutation, the norm of gradients through it).

    Parameters
    ----------
    x : array, real
        Channels along ``axis`` (an even number), paired as (0, 1), (2, 3), ...
    axis : int, default -3
        The channel axis of ``(..., C, H, W)``.

    Returns
    -------
    array, same shape and dtype as x
        Each channel pair sorted: the larger value first, the smaller second.

    Raises
    ------
    TypeError
        If x is complex (no order) or not floating.
    ValueError
        If the number of channels is odd.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.models.conv import maxmin
    >>> maxmin(np.array([1.0, 3.0, -2.0, -5.0]), axis=0)
    array([ 3.,  1., -2., -5.])
    """
    x, library = to_compute(x, "x")
    _check_real(x)
    xp = array_namespace(x)
    a, b, axis = _pairs(x, axis)
    out = xp.stack([xp.maximum(a, b), xp.minimum(a, b)], axis=axis + 1)
    return from_compute(xp.reshape(out, x.shape), library)


def maxmin_backward(x: Any, grad_y: Any, *, axis: int = -3) -> Any:
    """The gradient through :func:`maxmin`: ``grad_y`` routed back through the same permutation.

    Parameters
    ----------
    x : array
        The input of :func:`maxmin`.
    grad_y : array, same shape
        ``dL/dy``.
    axis : int, default -3
        The channel axis, as given to :func:`maxmin`.

    Returns
    -------
    array
        ``dL/dx`` (ties send the max's gradient to the first entry of the pair).

    Raises
    ------
    TypeError, ValueError
        As :func:`maxmin`, and if the shapes differ.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.models.conv import maxmin_backward
    >>> maxmin_backward(np.array([1.0, 3.0]), np.array([10.0, 20.0]), axis=0)
    array([20., 10.])
    """
    x, library = to_compute(x, "x")
    g, _ = to_compute(grad_y, "grad_y")
    _check_real(x)
    _check_real(g)
    if tuple(x.shape) != tuple(g.shape):
        raise ValueError(f"x and grad_y must have the same shape; got {tuple(x.shape)} and {tuple(g.shape)}")
    xp = array_namespace(x, g)
    a, b, axis = _pairs(x, axis)
    ga, gb, _ = _pairs(g, axis)
    first = a >= b
    out = xp.stack([xp.where(first, ga, gb), xp.where(first, gb, ga)], axis=axis + 1)
    return from_compute(xp.reshape(out, x.shape), library)


def _check_real(x: Any) -> None:
    check_float_dtype(x, "x")
    if x.dtype.kind == "c":
        raise TypeError(f"maxmin needs real input; got {x.dtype}")
