"""Array namespaces at the public boundary: NumPy and CuPy in, torch and JAX through DLPack.

The numerical modules are written once against a NumPy-style namespace ``xp`` (``numpy`` or
``cupy``) that this module hands them.

* :func:`to_compute` / :func:`from_compute` move the caller's arrays to the compute namespace at
  the public boundary and back.  NumPy and CuPy arrays pass through untouched; PyTorch and JAX
  tensors cross by DLPack, without copies (a CPU tensor becomes a NumPy view of the same memory,
  a CUDA tensor a CuPy view).
* :func:`array_namespace`, :func:`get_namespace`, :func:`compute_context`: which namespace and
  device the work runs on.
* :func:`hconj`: the conjugate transpose of the last two axes, written once for every module.
"""

from __future__ import annotations

import contextlib
import sys
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "array_namespace",
    "compute_context",
    "from_compute",
    "get_namespace",
    "hconj",
    "is_cupy",
    "is_jax",
    "mark_written",
    "to_compute",
    "to_compute_with_out",
    "to_namespace",
]


def _module_root(x: Any) -> str:
    return type(x).__module__.split(".", 1)[0]


def is_cupy(xp: ModuleType) -> bool:
    """True when ``xp`` is the CuPy module."""
    return xp.__name__ == "cupy"


def _flat(arrays: tuple[Any, ...]) -> list[Any]:
    return [y for x in arrays for y in (_flat(x) if isinstance(x, tuple) else [x])]


def _is_jax_tracer(x: Any) -> bool:
    return _module_root(x) in ("jax", "jaxlib") and any(c.__name__.endswith("Tracer") for c in type(x).__mro__)


def is_jax(primary: Any, *others: Any) -> bool:
    """True when the call belongs to the JAX path: ``primary`` is a JAX array or tracer, or any is a tracer.

    ``primary`` is the array whose library the result follows (U, or G for a sketch; a tuple
    ``(X, Y)`` counts as JAX when either part is).  A concrete JAX array among ``others`` next to
    a NumPy U is converted through DLPack like any other foreign array, so the result stays in
    U's library; a tracer cannot be converted, so any tracer sends the call to the JAX path.
    Decided from the types' modules, without importing JAX.  The public functions hand such
    calls to :mod:`unitary_update.jax` (JAX-native, so it also works under ``jax.jit``).
    """
    if any(_module_root(x) in ("jax", "jaxlib") for x in _flat((primary,))):
        return True
    return any(_is_jax_tracer(x) for x in _flat(others))


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
    return _from_dlpack(
        x,
        gpu=device == "cuda",
        what=f"{name} is a torch tensor",
        hint="; expected float32, float64, complex64 or complex128",
    )


def _jax_to_compute(x: Any, name: str, *, writable: bool) -> Any:
    if writable:
        raise TypeError(
            f"{name} is a JAX array; JAX arrays are immutable and cannot be updated in place: call the "
            "functions without out= and use the returned array (optimizers and drift control: "
            "unitary_update.jax's projunn, retract and retract_every)"
        )
    import jax

    if isinstance(x, jax.core.Tracer):  # reached only by the functions that have no JAX twin inside traces
        raise TypeError(
            f"{name} is a traced JAX array (inside jit, vmap or grad); this function needs concrete "
            "values: call it outside the transformation, or use unitary_update.jax (retract, step, "
            "project, transport) inside traced code"
        )
    devices = x.devices()
    if len(devices) != 1:
        raise TypeError(f"{name} is a JAX array sharded over {len(devices)} devices; expected one device")
    platform = next(iter(devices)).platform
    if platform not in ("cpu", "gpu", "cuda"):
        raise TypeError(f"{name} is a JAX array on platform {platform!r}; only cpu and gpu (CUDA) are supported")
    return _from_dlpack(x, gpu=platform != "cpu", what=f"{name} is a JAX array")


def _from_dlpack(x: Any, *, gpu: bool, what: str, hint: str = "") -> Any:
    """``x`` as a CuPy (``gpu``) or NumPy view of the same memory, by DLPack.

    A dtype DLPack cannot share is a TypeError: ``{what} of dtype ... that cannot be shared by
    DLPack (reason){hint}``.
    """
    try:
        if gpu:
            import cupy

            return cupy.from_dlpack(x)
        return np.from_dlpack(x)
    except _DLPACK_ERRORS as err:
        raise TypeError(f"{what} of dtype {x.dtype} that cannot be shared by DLPack ({err}){hint}") from None


def _plain_ndarray(x: np.ndarray, name: str) -> np.ndarray:
    """An ndarray subclass as a plain ndarray view of the same memory (no copy).

    ``np.matrix``, ``np.memmap`` and other subclasses are read (and, as ``out``, written)
    through ``np.asarray``, a view, so every function treats them alike.  Masked arrays are
    refused: their mask would be silently ignored.
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray; its mask would be ignored: pass {name}.filled(value) "
            "or a plain numpy.ndarray"
        )
    view = x.view(np.ndarray)
    return view


def to_compute(x: Any, name: str, *, writable: bool = False) -> tuple[Any, str]:
    """Convert ``x`` to a NumPy or CuPy array without copying.

    Returns the array and the name of the caller's library (``"numpy"``, ``"cupy"``, ``"torch"``
    or ``"jax"``), which :func:`from_compute` uses to hand results back.

    Interop rules (see ``docs/gpu.md``):

    * NumPy and CuPy arrays pass through untouched; ndarray subclasses (``np.matrix``,
      ``np.memmap``, ...) become plain ndarray views of the same memory, and masked arrays are a
      TypeError (the mask would be ignored).
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
    if root == "cupy":
        return x, "cupy"
    if isinstance(x, np.ndarray):
        return _plain_ndarray(x, name), "numpy"
    if root == "torch":
        return _torch_to_compute(x, name, writable=writable), "torch"
    if root in ("jax", "jaxlib"):
        return _jax_to_compute(x, name, writable=writable), "jax"
    raise TypeError(
        f"{name} must be an array (numpy.ndarray, cupy.ndarray, or a torch/jax tensor); got {type(x).__name__}"
    )


def to_compute_with_out(U: Any, out: Any) -> tuple[Any, str, Any, str]:
    """``(U, library, target, out_library)``: :func:`to_compute` of U and of a writable ``out``.

    ``target`` is None (and ``out_library`` empty) without ``out``.  With ``out=U`` the two are
    converted once, so ``U`` is ``target`` itself; an ``out`` must alias the caller's memory
    (lazy torch views and JAX arrays are refused by ``to_compute(..., writable=True)``).
    """
    if out is None:
        return (*to_compute(U, "U"), None, "")
    target, out_library = to_compute(out, "out", writable=True)
    if out is U:
        return target, out_library, target, out_library
    return (*to_compute(U, "U"), target, out_library)


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
    >>> from unitary_update._xp import get_namespace
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


def hconj(x: Any) -> Any:
    """Conjugate transpose of the last two axes, ``x^H`` (a view for real NumPy arrays)."""
    xp = array_namespace(x)
    xt = xp.swapaxes(x, -1, -2)
    if getattr(x.dtype, "kind", "c") != "c":  # NumPy's conj of a real array is a copy: skip it
        return xt
    return xp.conj(xt)
