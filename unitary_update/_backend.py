"""The one seam between array backends.

Everything backend-specific lives here; the numerical modules are written once against a
NumPy-style namespace ``xp`` (``numpy`` or ``cupy``) that this module hands them.

* :func:`to_compute` / :func:`from_compute` move the caller's arrays to the compute namespace at
  the public boundary and back.  NumPy and CuPy arrays pass through untouched; PyTorch and JAX
  tensors cross by DLPack, without copies (a CPU tensor becomes a NumPy view of the same memory,
  a CUDA tensor a CuPy view).
* :func:`add_lowrank_` performs the in-place rank-r update ``U += P @ W^H`` with BLAS ``gemm``
  (``beta = 1``) on the CPU and ``cupy.matmul`` on the GPU, so no N x N temporary is created.
* :func:`standard_normal` / :func:`uniform` draw seeded random numbers directly on the array's
  device from a host :class:`numpy.random.Generator`.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "Options",
    "add_lowrank_",
    "array_namespace",
    "compute_context",
    "from_compute",
    "get_namespace",
    "get_options",
    "is_cupy",
    "mark_written",
    "normalize_rng",
    "options",
    "set_options",
    "standard_normal",
    "to_compute",
    "to_namespace",
    "uniform",
]


# --------------------------------------------------------------------------------------------
# Library-wide options
# --------------------------------------------------------------------------------------------
class Options:
    """Library-wide settings; change them with :func:`set_options` or :func:`options`.

    Attributes
    ----------
    backend : {"auto", "numba", "numpy"}
        CPU kernels: ``"numba"`` uses the compiled kernels of :mod:`unitary_update._kernels`
        where they exist, ``"numpy"`` their pure NumPy/BLAS twins, ``"auto"`` (default) Numba
        where the benchmarks show it wins.
    check_finite : bool
        Check inputs for NaN/Inf before writing anything (default True).  On CuPy this costs one
        device-to-host read of a single flag per call; set False in a GPU hot path that must never
        synchronise.
    """

    __slots__ = ("backend", "check_finite")

    def __init__(self) -> None:
        self.backend = "auto"
        self.check_finite = True

    def __repr__(self) -> str:
        return f"Options(backend={self.backend!r}, check_finite={self.check_finite!r})"


_OPTIONS = Options()
_BACKENDS = ("auto", "numba", "numpy")


def get_options() -> Options:
    """Return the live library options object (read it, change it with :func:`set_options`).

    Returns
    -------
    Options
        The object the library reads its settings from; its attributes are live, not a copy.

    Examples
    --------
    >>> import unitary_update as uu
    >>> uu.get_options()
    Options(backend='auto', check_finite=True)
    """
    return _OPTIONS


def set_options(*, backend: str | None = None, check_finite: bool | None = None) -> None:
    """Change library-wide options.

    Parameters
    ----------
    backend : {"auto", "numba", "numpy"}, optional
        Which CPU kernels to use (see :class:`Options`).
    check_finite : bool, optional
        Whether public functions check their inputs for NaN/Inf.

    Raises
    ------
    ValueError
        If ``backend`` is not one of the valid names.

    Examples
    --------
    >>> import unitary_update as uu
    >>> uu.set_options(check_finite=False)
    >>> uu.get_options().check_finite
    False
    >>> uu.set_options(check_finite=True)
    """
    if backend is not None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}; got {backend!r}")
        _OPTIONS.backend = backend
    if check_finite is not None:
        _OPTIONS.check_finite = bool(check_finite)


@contextlib.contextmanager
def options(*, backend: str | None = None, check_finite: bool | None = None) -> Iterator[Options]:
    """Context manager that sets options for the duration of a ``with`` block.

    The previous values are restored on exit, also when the block raises.

    Parameters
    ----------
    backend : {"auto", "numba", "numpy"}, optional
        Which CPU kernels to use inside the block (see :class:`Options`).
    check_finite : bool, optional
        Whether public functions check their inputs for NaN/Inf inside the block.

    Yields
    ------
    Options
        The live options object, with the new values set.

    Raises
    ------
    ValueError
        If ``backend`` is not one of the valid names.

    Examples
    --------
    >>> import unitary_update as uu
    >>> with uu.options(backend="numpy"):
    ...     uu.get_options().backend
    'numpy'
    """
    saved = (_OPTIONS.backend, _OPTIONS.check_finite)
    set_options(backend=backend, check_finite=check_finite)
    try:
        yield _OPTIONS
    finally:
        _OPTIONS.backend, _OPTIONS.check_finite = saved


# --------------------------------------------------------------------------------------------
# Namespaces and conversion at the public boundary
# --------------------------------------------------------------------------------------------
def _module_root(x: Any) -> str:
    return type(x).__module__.split(".", 1)[0]


def is_cupy(xp: ModuleType) -> bool:
    """True when ``xp`` is the CuPy module."""
    return xp.__name__ == "cupy"


def array_namespace(*arrays: Any) -> ModuleType:
    """Return the compute namespace (``numpy`` or ``cupy``) of already-converted arrays.

    Raises
    ------
    TypeError
        If the arrays mix NumPy and CuPy.
    """
    if all(type(a) is np.ndarray for a in arrays if a is not None):
        return np  # the common case, decided without string work
    names = {_module_root(a) for a in arrays if a is not None}
    if names <= {"numpy"}:
        return np
    if names == {"cupy"}:
        return sys.modules["cupy"]
    raise TypeError(f"arrays from different libraries cannot be mixed: {sorted(names)}")


_DLPACK_ERRORS = (BufferError, TypeError, RuntimeError, ValueError)


def _torch_to_compute(x: Any, name: str, *, writable: bool) -> Any:
    """A torch tensor as a NumPy (CPU) or CuPy (CUDA) view of the same memory.

    ``requires_grad`` is dropped by :meth:`torch.Tensor.detach` (a view, no copy).  A tensor with
    the conjugate or negative bit set is a lazy view whose memory does not hold its values
    (DLPack refuses the first and, in torch 2.x, silently exports the un-negated memory of the
    second): as an input it is materialised (one copy), as ``out`` it is an error because the
    result could not land in the caller's tensor.  Non-contiguous (strided) tensors cross as
    strided views, without a copy.
    """
    if x.requires_grad:
        x = x.detach()
    if str(x.layout) != "torch.strided":
        raise TypeError(f"{name} is a torch tensor with layout {x.layout}; only dense (strided) tensors are supported")
    lazy = [bit for bit, on in (("conjugate", x.is_conj()), ("negative", x.is_neg())) if on]
    if lazy:
        if writable:
            raise ValueError(
                f"{name} is a torch tensor with the {' and '.join(lazy)} bit set (a lazy view such as x.conj()); "
                f"it cannot be written in place: pass a tensor that owns its values (x.resolve_conj().resolve_neg())"
            )
        x = x.resolve_conj().resolve_neg()
    device = x.device.type
    if device not in ("cpu", "cuda"):
        raise TypeError(f"{name} is a torch tensor on device {x.device}; only cpu and cuda are supported")
    try:
        if device == "cuda":
            import cupy

            return cupy.from_dlpack(x)
        return np.from_dlpack(x)
    except _DLPACK_ERRORS as err:
        raise TypeError(
            f"{name} is a torch tensor of dtype {x.dtype} that cannot be shared by DLPack ({err}); "
            "expected float32, float64, complex64 or complex128"
        ) from None


def _jax_to_compute(x: Any, name: str, *, writable: bool) -> Any:
    if writable:
        raise TypeError(
            f"{name} is a JAX array; JAX arrays are immutable and cannot be updated in place: "
            "call without out= and use the returned array"
        )
    devices = x.devices()
    if len(devices) != 1:
        raise TypeError(f"{name} is a JAX array sharded over {len(devices)} devices; expected one device")
    platform = next(iter(devices)).platform
    if platform not in ("cpu", "gpu", "cuda"):
        raise TypeError(f"{name} is a JAX array on platform {platform!r}; only cpu and gpu (CUDA) are supported")
    try:
        if platform == "cpu":
            return np.from_dlpack(x)
        import cupy

        return cupy.from_dlpack(x)
    except _DLPACK_ERRORS as err:
        raise TypeError(f"{name} is a JAX array of dtype {x.dtype} that cannot be shared by DLPack ({err})") from None


def to_compute(x: Any, name: str, *, writable: bool = False) -> tuple[Any, str]:
    """Convert ``x`` to a NumPy or CuPy array without copying.

    Returns the array and the name of the caller's library (``"numpy"``, ``"cupy"``, ``"torch"``
    or ``"jax"``), which :func:`from_compute` uses to hand results back.

    Interop rules (see ``docs/gpu.md``):

    * NumPy and CuPy arrays pass through untouched.
    * torch tensors (CPU or CUDA) cross by DLPack as views of the same memory, strided or not;
      ``requires_grad`` is dropped (``detach``, a view).  Lazy conjugate/negative views are
      materialised when read and rejected when ``writable`` (the ``out=`` argument).
    * JAX arrays (CPU or GPU, one device) cross by DLPack for reading; they are immutable, so
      ``writable=True`` raises TypeError.

    Parameters
    ----------
    x : array
        The caller's array.
    name : str
        The argument's name, for error messages.
    writable : bool, default False
        True for an ``out=`` argument: the returned array must alias ``x``'s memory.

    Raises
    ------
    TypeError
        If ``x`` is not an array (a list, a Python scalar, ...), lives on an unsupported device,
        has a dtype DLPack cannot share, or is an immutable JAX array with ``writable=True``.
    ValueError
        If ``writable`` and ``x`` is a lazy conjugate/negative torch view.
    """
    if type(x) is np.ndarray:
        return x, "numpy"
    root = _module_root(x)
    if root == "numpy" and isinstance(x, np.ndarray):
        return x, "numpy"
    if root == "cupy":
        return x, "cupy"
    if root == "torch":
        return _torch_to_compute(x, name, writable=writable), "torch"
    if root in ("jax", "jaxlib"):
        return _jax_to_compute(x, name, writable=writable), "jax"
    raise TypeError(
        f"{name} must be an array (numpy.ndarray, cupy.ndarray, or a torch/jax tensor); got {type(x).__name__}"
    )


def from_compute(x: Any, library: str) -> Any:
    """Hand a NumPy/CuPy result back as the caller's kind of array (zero-copy via DLPack).

    torch gets a tensor on the array's device (no gradient history: the library is not
    differentiable); JAX gets a ``jax.Array`` (JAX may copy to meet its alignment rules, a
    strided result is made contiguous first because JAX only imports compact strides, and
    without ``jax_enable_x64`` it holds float64 data as float32, as for any JAX array).
    """
    if library in ("numpy", "cupy"):
        return x
    if library == "torch":
        import torch

        return torch.from_dlpack(x)
    if library == "jax":
        import jax.numpy as jnp

        if not (x.flags.c_contiguous or x.flags.f_contiguous):
            # JAX imports only compact DLPack strides (a permutation of a dense buffer): one copy
            x = array_namespace(x).ascontiguousarray(x)
        return jnp.from_dlpack(x)
    raise AssertionError(library)  # pragma: no cover


def mark_written(x: Any) -> None:
    """Tell the caller's library that ``x`` was written in place behind its back.

    For torch this bumps the tensor's version counter (O(1)), exactly as an in-place torch op
    under :func:`torch.no_grad` would, so autograd still detects a tensor that was saved for
    backward and then modified.  Other libraries need nothing.
    """
    if _module_root(x) == "torch":
        import torch

        torch.autograd.graph.increment_version(x)


def compute_context(x: Any) -> contextlib.AbstractContextManager[Any]:
    """The device (and stream) that work on the caller's array ``x`` must run on.

    * CuPy array: its device (so that temporaries are allocated beside it on multi-GPU hosts).
    * torch CUDA tensor: its device and torch's *current stream* on it, wrapped as a
      :class:`cupy.cuda.ExternalStream`, so that the CuPy kernels are ordered after the torch
      work that produced the inputs and before the torch work that reads the results, without
      any host synchronisation.
    * anything on the CPU: a no-op context.
    """
    root = _module_root(x)
    if root == "cupy":
        return x.device
    if root == "torch" and x.device.type == "cuda":
        import cupy
        import torch

        stream = torch.cuda.current_stream(x.device)
        stack = contextlib.ExitStack()
        stack.enter_context(cupy.cuda.Device(x.device.index))
        stack.enter_context(cupy.cuda.ExternalStream(stream.cuda_stream, x.device.index))
        return stack
    return contextlib.nullcontext()


def get_namespace(device: str) -> ModuleType:
    """The compute namespace for a device name: ``numpy`` for ``"cpu"``, ``cupy`` for a GPU.

    For command-line tools and model code that choose where to run (``--device gpu``).

    Parameters
    ----------
    device : str
        ``"cpu"``, or ``"gpu"`` / ``"cuda"`` / ``"cuda:<index>"`` (the index selects the current
        CuPy device).

    Returns
    -------
    module
        :mod:`numpy` or :mod:`cupy`.

    Raises
    ------
    ValueError
        For an unknown device name.
    RuntimeError
        If a GPU is asked for but CuPy is not installed or sees no device.

    Examples
    --------
    >>> from unitary_update._backend import get_namespace
    >>> get_namespace("cpu").__name__
    'numpy'
    """
    name = str(device).lower()
    if name == "cpu":
        return np
    base, _, index = name.partition(":")
    if base not in ("gpu", "cuda") or (index and not index.isdigit()):
        raise ValueError(f"device must be 'cpu', 'gpu', 'cuda' or 'cuda:<index>'; got {device!r}")
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # ImportError, or CUDA driver errors without a GPU
        raise RuntimeError(f"device {device!r} needs CuPy and a CUDA GPU: {err}") from None
    if count == 0 or (index and int(index) >= count):
        raise RuntimeError(f"device {device!r} is not available: CuPy sees {count} GPU(s)")
    if index:
        cupy.cuda.Device(int(index)).use()
    return cupy


def to_namespace(x: Any, xp: ModuleType) -> Any:
    """Move a NumPy/CuPy array to ``xp`` (host <-> device copy only when the namespaces differ)."""
    if xp is np:
        return x.get() if _module_root(x) == "cupy" else np.asarray(x)
    return xp.asarray(x)


# --------------------------------------------------------------------------------------------
# Seeded randomness on the array's device
# --------------------------------------------------------------------------------------------
def normalize_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Turn ``rng`` (Generator, integer seed or None) into a :class:`numpy.random.Generator`.

    Raises
    ------
    TypeError
        If ``rng`` is none of these.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
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


# --------------------------------------------------------------------------------------------
# In-place rank-r update U += P @ W^H
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _gemm(dtype: np.dtype) -> Any:
    from scipy.linalg.blas import get_blas_funcs

    return get_blas_funcs("gemm", dtype=dtype)


def _gemm_inplace_(U: np.ndarray, P: np.ndarray, W: np.ndarray) -> bool:
    """``U += P @ W^H`` for one contiguous N x N matrix by BLAS gemm with beta = 1.

    Returns False (and does nothing) when ``U`` is not contiguous in either order.
    """
    gemm = _gemm(U.dtype)
    complex_ = U.dtype.kind == "c"
    if U.flags.f_contiguous:
        # column-major: C = U, C <- P @ W^H + C
        res = gemm(1.0, P, W, beta=1.0, c=U, trans_b=2 if complex_ else 1, overwrite_c=1)
    elif U.flags.c_contiguous:
        # row-major: BLAS sees U^T; U^T <- conj(W) @ P^T + U^T
        Wc = W.conj() if complex_ else W
        res = gemm(1.0, Wc, P, beta=1.0, c=U.T, trans_b=1, overwrite_c=1)
    else:
        return False
    if not np.shares_memory(res, U):  # pragma: no cover - f2py copied: never expected
        U[...] = res.T if U.flags.c_contiguous and not U.flags.f_contiguous else res
    return True


_CHUNK_BYTES = 8 << 20  # bound on the temporary of the batched NumPy update


def add_lowrank_(U: Any, P: Any, W: Any) -> None:
    """In place: ``U += P @ W^H`` with ``U: (..., N, N)``, ``P, W: (..., N, r)``.

    NumPy: a single matrix, or each matrix of a stack of matrices of 1 MiB or more, is updated by
    BLAS gemm with beta = 1 (extra memory O(N r)); a stack of smaller matrices by batched
    ``matmul`` in chunks whose temporary stays under 8 MiB, so there is no per-matrix Python
    loop for stacks of small matrices.  CuPy: cuBLAS gemm with beta = 1 for N >= 64 (see
    :func:`_cupy_gemm_inplace_`), else ``matmul`` then ``+=`` on the device.
    """
    xp = array_namespace(U)
    if xp is not np:
        if not (is_cupy(xp) and _cupy_gemm_inplace_(U, P, W)):
            U += P @ xp.conj(xp.swapaxes(W, -1, -2))
        return
    if U.ndim == 2:
        if not _gemm_inplace_(U, np.ascontiguousarray(P), np.ascontiguousarray(W)):
            U += P @ np.conj(W).T
        return
    batch = U.shape[:-2]
    P = np.broadcast_to(P, (*batch, *P.shape[-2:]))
    W = np.broadcast_to(W, (*batch, *W.shape[-2:]))
    if U[(0,) * len(batch)].nbytes >= (1 << 20):
        for idx in np.ndindex(batch):
            if not _gemm_inplace_(U[idx], np.ascontiguousarray(P[idx]), np.ascontiguousarray(W[idx])):
                U[idx] += P[idx] @ np.conj(W[idx]).T
        return
    flatU = U.reshape(-1, *U.shape[-2:])  # a view for contiguous stacks
    if not np.shares_memory(flatU, U):
        U += P @ np.conj(np.swapaxes(W, -1, -2))
        return
    flatP = P.reshape(-1, *P.shape[-2:])
    flatWH = np.conj(np.swapaxes(W, -1, -2)).reshape(-1, W.shape[-1], W.shape[-2])
    step = max(1, _CHUNK_BYTES // max(1, flatU[0].nbytes))
    for start in range(0, len(flatU), step):
        flatU[start : start + step] += flatP[start : start + step] @ flatWH[start : start + step]


_CUPY_GEMM_MIN_N = 64  # below this a batched matmul (one launch) beats a loop of gemm launches


def _cupy_gemm_inplace_(U: Any, P: Any, W: Any) -> bool:
    """CuPy: ``U += P @ W^H`` by cuBLAS gemm with beta = 1: one read and one write of U, no N x N temporary.

    ``cupy.matmul`` followed by ``+=`` would write an N x N temporary and read it back (two extra
    passes over U's size, the difference between 3 and 5 passes in the memory floor).  Only
    ``'N'``/``'T'`` operations are passed to :func:`cupy.cublas.gemm` (the conjugate goes on the
    thin factor), and U is presented to cuBLAS in column-major form: ``U`` itself when it is
    Fortran-ordered, ``U^T`` when it is C-ordered; a strided (non-contiguous) matrix gets a
    ``matmul`` instead.  Returns False (nothing done) for N < 64, where one batched ``matmul``
    is cheaper than a loop of launches.  Enqueues only: no synchronisation.
    """
    if U.shape[-1] < _CUPY_GEMM_MIN_N:
        return False
    try:
        from cupy import cublas
    except ImportError:  # pragma: no cover - very old CuPy
        return False
    batch = U.shape[:-2]
    P = P if P.shape[:-2] == batch else _broadcast_xp(P, batch)
    W = W if W.shape[:-2] == batch else _broadcast_xp(W, batch)
    complex_ = U.dtype.kind == "c"
    for idx in np.ndindex(batch):
        u, p, w = U[idx], P[idx], W[idx]
        wc = w.conj() if complex_ else w
        if u.flags.f_contiguous:
            # column-major U: U <- P @ conj(W)^T + U
            cublas.gemm("N", "T", p, wc, out=u, alpha=1.0, beta=1.0)
        elif u.flags.c_contiguous:
            # row-major U: its transpose is column-major; U^T <- conj(W) @ P^T + U^T
            cublas.gemm("N", "T", wc, p, out=u.T, alpha=1.0, beta=1.0)
        else:  # a strided view (e.g. a torch tensor's transpose of a slice): matmul on the device
            u += p @ wc.T
    return True


def _broadcast_xp(x: Any, batch: tuple[int, ...]) -> Any:
    import cupy

    return cupy.broadcast_to(x, (*batch, *x.shape[-2:]))
