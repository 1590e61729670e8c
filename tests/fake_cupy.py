"""A stand-in for CuPy on machines without a GPU: NumPy memory, CuPy's rules about the host.

The library's device code (everything behind ``xp is not np``) runs on CuPy only on a GPU
machine.  To test that code in every CI run, :func:`install` puts this module in
``sys.modules["cupy"]`` (pytest's ``monkeypatch`` takes it out again).  It behaves like CuPy
where that matters to the library:

* arrays are of a separate class, ``fake_cupy.ndarray`` (``type(x).__module__ == "cupy"``, so the
  library's dispatch sees a CuPy array), and every function of the namespace returns that class;
  reductions and indexing give 0-d arrays, never Python or NumPy scalars;
* ``xp.asarray(host_array)`` copies (a host-to-device transfer) and ``x.get()`` copies back;
* ``cublas.gemm`` follows :func:`cupy.cublas.gemm` (``'N'``/``'T'``, ``alpha``, ``beta``, ``out``),
  so the in-place rank-r update's cuBLAS path runs;
* a host read of a device value (``float(x)``, ``int(x)``, ``bool(x)``, ``x.item()``,
  ``x.tolist()``, ``x.get()``) is a synchronisation on a real GPU.  Every one is counted in
  ``HOST_READS``, and inside ``forbid_host_reads()`` it raises :class:`HostRead`, which is how
  the tests show that a hot path never waits for the device.

It is a test double: only what the library calls is modelled, and NumPy does the arithmetic.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np

HOST_READS = {"count": 0}
_FORBID = {"on": False}


class HostRead(AssertionError):
    """A device value was read to the host (a synchronisation on a real GPU)."""


def _host_read(what: str) -> None:
    HOST_READS["count"] += 1
    if _FORBID["on"]:
        raise HostRead(f"{what} reads a device value to the host (a device synchronisation)")


@contextlib.contextmanager
def forbid_host_reads() -> Iterator[None]:
    """Inside this block, reading a device value to the host raises :class:`HostRead`."""
    saved = _FORBID["on"]
    _FORBID["on"] = True
    try:
        yield
    finally:
        _FORBID["on"] = saved


def _wrap(value: Any) -> Any:
    """NumPy results as device arrays (scalars as 0-d arrays, like CuPy)."""
    if isinstance(value, ndarray):
        return value
    if isinstance(value, np.ndarray):
        return value.view(ndarray)
    if isinstance(value, np.generic):
        return np.asarray(value).view(ndarray)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _host(value: Any) -> Any:
    """Device arrays as plain NumPy arrays, for handing to NumPy (no copy, not a host read)."""
    if isinstance(value, ndarray):
        return value.view(np.ndarray)
    if isinstance(value, (tuple, list)):
        return type(value)(_host(v) for v in value)
    return value


class ndarray(np.ndarray):  # CuPy's class name
    """A 'device' array: NumPy memory with CuPy's rules about reading values on the host."""

    __module__ = "cupy"

    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        return _wrap(arr)  # keep 0-d results as arrays, as CuPy does

    def __getitem__(self, key: Any) -> Any:
        return _wrap(super().__getitem__(_host(key)))

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(_host(key), value)

    def __float__(self) -> float:
        _host_read("float()")
        return float(self.view(np.ndarray))

    def __int__(self) -> int:
        _host_read("int()")
        return int(self.view(np.ndarray))

    def __index__(self) -> int:
        _host_read("operator.index()")
        return self.view(np.ndarray).__index__()

    def __bool__(self) -> bool:
        _host_read("bool()")
        return bool(self.view(np.ndarray))

    def item(self, *args: Any) -> Any:
        _host_read("item()")
        return self.view(np.ndarray).item(*args)

    def tolist(self) -> Any:
        _host_read("tolist()")
        return self.view(np.ndarray).tolist()

    def get(self) -> np.ndarray:
        """Copy to the host (``cupy.ndarray.get``)."""
        _host_read("get()")
        return np.array(self.view(np.ndarray), copy=True)

    @property
    def device(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


def asarray(x: Any, dtype: Any = None, order: Any = None) -> ndarray:
    """Device array of ``x``; a host array is copied (a host-to-device transfer)."""
    if isinstance(x, ndarray):
        return x if dtype is None or x.dtype == dtype else x.astype(dtype)
    return np.array(_host(x), dtype=dtype, order=order, copy=True).view(ndarray)


def asnumpy(x: Any) -> np.ndarray:
    """``cupy.asnumpy``: copy a device array to the host."""
    return x.get() if isinstance(x, ndarray) else np.asarray(x)


def _delegate(fn: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return _wrap(fn(*_host(args), **{k: _host(v) for k, v in kwargs.items()}))

    call.__name__ = getattr(fn, "__name__", "function")
    return call


class _Namespace(types.ModuleType):
    """A module whose missing attributes are the matching NumPy functions, returning device arrays."""

    def __init__(self, name: str, numpy_module: Any) -> None:
        super().__init__(name)
        self._numpy_module = numpy_module

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._numpy_module, attr)  # AttributeError for what NumPy lacks, e.g. cublas
        if callable(value) and not isinstance(value, type):
            return _delegate(value)
        return value


class _Generator:
    """``cupy.random.Generator``: draws land on the device."""

    def __init__(self, seed: Any) -> None:
        self._gen = np.random.default_rng(seed)

    def __getattr__(self, attr: str) -> Any:
        return _delegate(getattr(self._gen, attr))


def _gemm(transa: str, transb: str, a: Any, b: Any, out: Any = None, alpha: float = 1.0, beta: float = 0.0) -> Any:
    """``cupy.cublas.gemm``: ``out = alpha op(a) op(b) + beta out`` with op in {'N', 'T'}."""
    ops = {"N": lambda m: m, "n": lambda m: m, "T": lambda m: m.T, "t": lambda m: m.T}
    a_, b_ = ops[transa](_host(a)), ops[transb](_host(b))
    result = alpha * (a_ @ b_)
    if out is None:
        return _wrap(result)
    target = out.view(np.ndarray)
    target[...] = result + (beta * target if beta else 0)
    return out


class _Device:
    def __init__(self, index: int = 0) -> None:
        self.id = index

    def use(self) -> None:
        return None

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def make_module() -> types.ModuleType:
    """A fresh ``cupy`` stand-in module."""
    cupy = _Namespace("cupy", np)
    cupy.ndarray = ndarray
    cupy.asarray = asarray
    cupy.asnumpy = asnumpy
    cupy.linalg = _Namespace("cupy.linalg", np.linalg)
    cupy.random = _Namespace("cupy.random", np.random)
    cupy.random.default_rng = _Generator
    cupy.cublas = types.SimpleNamespace(gemm=_gemm)
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
    cupy.cuda = types.SimpleNamespace(runtime=runtime, Device=_Device)
    cupy.__fake__ = True
    cupy.__spec__ = importlib.machinery.ModuleSpec("cupy", None)  # find_spec("cupy") sees it
    return cupy


def install(monkeypatch: Any) -> types.ModuleType:
    """Put a fresh stand-in into ``sys.modules["cupy"]`` for one test (undone by ``monkeypatch``)."""
    module = make_module()
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setitem(sys.modules, "cupy.cublas", module.cublas)
    HOST_READS["count"] = 0
    return module
