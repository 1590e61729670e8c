"""Input checks and the library's exception classes.

Called once at each public boundary, before anything is computed or written: shapes, dtypes,
batch broadcasting, finiteness and option names.  Messages name the argument, what was found and
what was expected.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Literal, TypeVar

import numpy as np

from ._config import get_options
from ._xp import array_namespace

__all__ = [
    "NonFiniteError",
    "SingularUpdateError",
    "cast_to",
    "check_choice",
    "check_choice_str",
    "check_dtype",
    "check_factor_pair",
    "check_finite",
    "check_float",
    "check_float_dtype",
    "check_int",
    "check_no_internal_overlap",
    "check_out",
    "check_rank",
    "check_sketch_rank",
    "check_square",
    "has_internal_overlap",
    "layout_overlaps",
    "max_abs",
    "overlaps",
    "quiet_when_unchecked",
    "same_view",
    "svd",
    "unitary_tolerance",
    "unshare",
]

FLOAT_DTYPES = (np.float32, np.float64, np.complex64, np.complex128)
_DTYPE_NAMES = "float32, float64, complex64 or complex128"


class NonFiniteError(ValueError):
    """An input contains NaN or Inf (a subclass of :class:`ValueError`).

    Examples
    --------
    >>> import numpy as np, unitary_update as uu
    >>> try:
    ...     uu.project(np.eye(2), np.full((2, 1), np.nan), np.ones((2, 1)))
    ... except ValueError as err:  # NonFiniteError is a ValueError
    ...     print(type(err).__name__, err)
    NonFiniteError A contains NaN or Inf
    """


class SingularUpdateError(np.linalg.LinAlgError):
    """A low-rank problem is singular in a way the library cannot resolve.

    Reserved for future use: :func:`unitary_update.project` resolves a singular
    ``U + A B^H`` by returning a valid nearest unitary matrix instead of raising.

    Examples
    --------
    A subclass of :class:`numpy.linalg.LinAlgError`, so existing handlers catch it:

    >>> import numpy as np, unitary_update as uu
    >>> issubclass(uu.SingularUpdateError, np.linalg.LinAlgError)
    True
    """


def check_float_dtype(x: Any, name: str) -> None:
    """Raise TypeError unless ``x`` has one of the four floating dtypes."""
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; expected {_DTYPE_NAMES}")


def check_square(U: Any, name: str = "U") -> int:
    """Check that ``U`` is a stack of square matrices with a supported dtype; return N."""
    check_float_dtype(U, name)
    if U.ndim < 2 or U.shape[-1] != U.shape[-2]:
        raise ValueError(f"{name} must have shape (..., N, N); got {tuple(U.shape)}")
    if U.shape[-1] == 0:
        raise ValueError(f"{name} is empty (N = 0); expected N >= 1")
    return int(U.shape[-1])


def check_factor_pair(U: Any, A: Any, B: Any, *, cast: bool = True) -> tuple[tuple[int, ...], Any, Any]:
    """Check the rank-k factors against U; return the broadcast batch shape and A, B.

    With ``cast`` (default) A and B are returned in U's dtype; a factor whose entries overflow
    U's dtype (a float64 A of 1e300 with a float32 U) is a ValueError saying so.  With
    ``cast=False`` they are returned as given (the updates rescale them before casting, see
    :func:`unitary_update._lowrank.balance`).

    Raises
    ------
    TypeError
        For non-floating dtypes, or a complex A or B with a real U.
    ValueError
        For shapes that do not match U, batch dimensions that do not broadcast, or (``cast``)
        entries that overflow U's dtype.
    """
    n = U.shape[-1]
    for x, name in ((A, "A"), (B, "B")):
        check_float_dtype(x, name)
        if x.ndim < 2:
            raise ValueError(f"{name} must have shape (..., N, k); got {tuple(x.shape)}")
        if x.shape[-2] != n:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but U is {n} x {n}")
        if x.dtype.kind == "c" and U.dtype.kind != "c":
            raise TypeError(f"{name} is complex ({x.dtype}) but U is real ({U.dtype}); a real U needs real factors")
    if A.shape[-1] != B.shape[-1]:
        raise ValueError(f"A and B must have the same number of columns k; got A {tuple(A.shape)}, B {tuple(B.shape)}")
    if A.shape[-1] < 1:
        raise ValueError(f"A and B must have at least one column; got k = {A.shape[-1]}")
    try:
        batch = np.broadcast_shapes(U.shape[:-2], A.shape[:-2], B.shape[:-2])
    except ValueError:
        raise ValueError(
            f"batch dimensions do not broadcast: U {tuple(U.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}"
        ) from None
    if not cast:
        return batch, A, B
    array_namespace(U, A, B)  # mixing NumPy and CuPy is a TypeError
    return batch, cast_to(A, U.dtype, "A", "U"), cast_to(B, U.dtype, "B", "U")


def cast_to(x: Any, dtype: Any, name: str, owner: str) -> Any:
    """``x`` in ``dtype`` (no copy when it already is); ValueError if its entries overflow ``dtype``.

    The message names the argument and why: ``A overflows float32 (U's dtype): its largest
    entry is 1e+300``.  NaN/Inf already in ``x`` are left to :func:`check_finite`.
    """
    xp = array_namespace(x)
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    if x.size and np.finfo(x.dtype).max > np.finfo(dtype).max:
        largest = float(max_abs(xp, x))
        if math.isfinite(largest) and largest > float(np.finfo(dtype).max):
            raise ValueError(
                f"{name} overflows {dtype.name} ({owner}'s dtype): its largest entry is {largest:.3g}, "
                f"above {float(np.finfo(dtype).max):.3g}; scale it down or use a wider dtype for {owner}"
            )
    with np.errstate(under="ignore"):
        return xp.asarray(x, dtype=dtype)


def max_abs(xp: ModuleType, x: Any, axis: Any = None) -> Any:
    """Largest ``|Re|`` or ``|Im|`` entry (no overflow from ``|z|`` of huge complex entries).

    Reductions only (``max`` and ``-min``): no temporary of x's size.
    """
    parts = (x.real, x.imag) if x.dtype.kind == "c" else (x,)
    result = None
    for p in parts:
        m = xp.maximum(xp.max(p, axis=axis), -xp.min(p, axis=axis))
        result = m if result is None else xp.maximum(result, m)
    return result


def check_out(out: Any, U: Any, shape: tuple[int, ...]) -> None:
    """Check that ``out`` can receive a result of ``shape`` and U's dtype.

    ``out`` must be writable, have no internal overlap (zero or overlapping strides, as from
    ``np.broadcast_to`` or torch's ``expand``: each entry would overwrite another) and be
    either U itself (the same view) or share no memory with U.
    """
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)}; the result has shape {tuple(shape)}")
    if out.dtype != U.dtype:
        raise TypeError(f"out has dtype {out.dtype}; the result has U's dtype {U.dtype}")
    flags = getattr(out, "flags", None)
    if flags is not None and not getattr(flags, "writeable", True):  # CuPy flags have no writeable
        raise ValueError("out is read-only")
    check_no_internal_overlap(out, "out")
    if not same_view(out, U) and overlaps(out, U):
        raise ValueError("out overlaps U without being U; pass out=U for an in-place update")


def check_no_internal_overlap(x: Any, name: str) -> None:
    """ValueError naming ``name`` if two of x's elements may share memory (zero/overlapping strides)."""
    if has_internal_overlap(x):
        raise ValueError(
            f"{name} has overlapping memory (shape {tuple(x.shape)}, strides {tuple(x.strides)}: several "
            f"entries share one memory location, e.g. from broadcast_to or torch's expand); "
            f"{name} cannot be written: pass an array that owns its entries ({name}.copy())"
        )


def has_internal_overlap(x: Any) -> bool:
    """True when two distinct elements of ``x`` may occupy the same memory.

    Sufficient test: with the axes of length > 1 sorted by ``|stride|``, each stride must
    exceed the span of all the smaller axes.  Layouts that fail it but do not overlap (exotic
    interleavings) are reported as overlapping: refusing is safe, writing would not be.
    """
    if x.size <= 1:
        return False
    return layout_overlaps(x.shape, x.strides, x.dtype.itemsize)


def layout_overlaps(shape: Any, strides: Any, itemsize: int) -> bool:
    """:func:`has_internal_overlap` of a strided layout (strides in the unit of ``itemsize``: bytes,
    or elements with ``itemsize=1`` as torch counts them)."""
    axes = sorted((abs(int(st)), int(n)) for st, n in zip(strides, shape, strict=True) if n > 1)
    span = itemsize
    for stride, n in axes:
        if stride < span:
            return True
        span += stride * (n - 1)
    return False


def _data_pointer(x: Any) -> int | None:
    if isinstance(x, np.ndarray):
        return int(x.__array_interface__["data"][0])
    data = getattr(x, "data", None)
    ptr = getattr(data, "ptr", None)
    return None if ptr is None else int(ptr)


def _byte_bounds(x: Any) -> tuple[int, int] | None:
    """``[low, high)`` byte range of x's elements; None for an empty array or an unknown pointer."""
    ptr = _data_pointer(x)
    if ptr is None or x.size == 0:
        return None
    low = high = ptr
    for stride, n in zip(x.strides, x.shape, strict=True):
        if stride < 0:
            low += stride * (n - 1)
        else:
            high += stride * (n - 1)
    return low, high + x.dtype.itemsize


_SHARES_MEMORY_WORK = 1 << 16


def overlaps(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` share at least one memory location.

    NumPy: the bounds test :func:`numpy.may_share_memory`, then, where it says maybe, the exact
    :func:`numpy.shares_memory` (with a work limit; a problem too hard to decide counts as
    overlapping).  CuPy and other libraries: the byte-range test on their data pointers and
    strides (conservative: may report an overlap of interleaved arrays that share none).
    """
    if a is b:
        return a.size > 0
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if not np.may_share_memory(a, b):
            return False
        try:
            return bool(np.shares_memory(a, b, max_work=_SHARES_MEMORY_WORK))  # type: ignore[arg-type]
        except np.exceptions.TooHardError:
            return True
    if isinstance(a, np.ndarray) != isinstance(b, np.ndarray):
        return False  # host and device memory never overlap
    ba, bb = _byte_bounds(a), _byte_bounds(b)
    if ba is None or bb is None:
        return False
    same_device = getattr(getattr(a, "device", None), "id", None) == getattr(getattr(b, "device", None), "id", None)
    return same_device and ba[0] < bb[1] and bb[0] < ba[1]


def unshare(target: Any, arrays: Sequence[Any]) -> list[Any]:
    """Each array that overlaps ``target`` replaced by a copy (the others returned as they are).

    How writing functions read inputs that share memory with their destination: the result is
    the one computed on copies taken before anything is written.
    """
    if target is None:
        return list(arrays)
    result = []
    for x in arrays:
        if x is not None and overlaps(target, x):  # also x is target itself (A = U with k = N, out=U)
            x = array_namespace(x).array(x, copy=True)
        result.append(x)
    return result


def same_view(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are views of exactly the same elements (same start, shape, strides)."""
    if a is b:
        return True
    if type(a) is not type(b) or a.shape != b.shape or a.strides != b.strides or a.dtype != b.dtype:
        return False
    if isinstance(a, np.ndarray):
        return bool(a.__array_interface__["data"][0] == b.__array_interface__["data"][0])
    data_a, data_b = getattr(a, "data", None), getattr(b, "data", None)
    return data_a is not None and data_b is not None and getattr(data_a, "ptr", None) == getattr(data_b, "ptr", 0)


_F = TypeVar("_F", bound=Callable[..., Any])


def quiet_when_unchecked(fn: _F) -> _F:
    """Run ``fn`` with NumPy's invalid/overflow/divide warnings silenced while ``check_finite`` is off.

    With the checks off, NaN/Inf inputs propagate into the result by contract (NaN in, NaN out);
    the floating-point warnings they raise on the way (``invalid value encountered``) are that
    contract, not a problem to report (and would be errors under ``-W error``).  With the checks
    on nothing changes: non-finite input is refused before any arithmetic.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if get_options().check_finite:
            return fn(*args, **kwargs)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def svd(xp: ModuleType, M: Any, *, full_matrices: bool = True) -> tuple[Any, Any, Any]:
    """``xp.linalg.svd(M)``, but NaN factors for a NumPy ``M`` with NaN/Inf, without calling LAPACK.

    LAPACK's SVD (``gesdd``) loops forever on some matrices containing Inf; with
    ``check_finite`` off such input must give NaN (NaN in, NaN out), never hang.  The check is
    one pass over M, negligible next to the SVD's O(n^3).  Other namespaces call the SVD directly.
    """
    if xp is np and not bool(np.isfinite(M).all()):
        m, n = M.shape[-2], M.shape[-1]
        k = min(m, n)
        batch = M.shape[:-2]
        real = np.finfo(M.dtype).dtype
        left = np.full((*batch, m, m if full_matrices else k), np.nan, dtype=M.dtype)
        right = np.full((*batch, n if full_matrices else k, n), np.nan, dtype=M.dtype)
        return left, np.full((*batch, k), np.nan, dtype=real), right
    return xp.linalg.svd(M, full_matrices=full_matrices)


_FINITE_CHUNK = 1 << 16


def _all_finite_numpy(x: np.ndarray) -> bool:
    """``np.isfinite(x).all()`` without a temporary of x's size.

    A large contiguous float array is first tested in one BLAS pass: ``sum x_i^2`` is finite only
    if every entry is (NaN and Inf propagate through the products and the sum; no zero is
    skipped), 2-4x faster than the element test.  When that sum is not finite (a NaN or Inf, or a
    finite sum that overflowed), and for other arrays, the entries are tested in chunks of
    64 Ki elements.
    """
    if x.size <= _FINITE_CHUNK:
        return bool(np.isfinite(x).all())
    if x.flags.c_contiguous or x.flags.f_contiguous:
        flat = x.reshape(-1) if x.flags.c_contiguous else x.T.reshape(-1)
        if flat.dtype.kind in "fc" and flat.dtype.itemsize in (4, 8, 16):
            real = flat.view(flat.real.dtype) if flat.dtype.kind == "c" else flat
            with np.errstate(over="ignore", invalid="ignore"):
                if np.isfinite(np.dot(real, real)):
                    return True
        return all(bool(np.isfinite(flat[i : i + _FINITE_CHUNK]).all()) for i in range(0, flat.size, _FINITE_CHUNK))
    if x.ndim > 2:
        return all(_all_finite_numpy(sub) for sub in x)
    step = max(1, _FINITE_CHUNK // max(1, x.shape[-1]))
    return all(bool(np.isfinite(x[i : i + step]).all()) for i in range(0, x.shape[0], step))


def check_finite(x: Any, name: str) -> None:
    """Raise :class:`NonFiniteError` if ``x`` contains NaN or Inf (when the option is on).

    NumPy arrays are read in chunks so that no temporary of x's size is created.  On CuPy the
    check reads a single flag back to the host: that read waits for every kernel queued before
    it (a device synchronisation, about 10-50 us plus the queued work's latency, once per
    checked array: 3 per update, 4 per :func:`unitary_update.step`).  A GPU hot path that must
    never block sets ``unitary_update.set_options(check_finite=False)``; NaN/Inf then
    propagate into the result instead of raising.
    """
    if not get_options().check_finite:
        return
    xp = array_namespace(x)
    ok = _all_finite_numpy(x) if xp is np else bool(xp.isfinite(x).all())
    if not ok:
        raise NonFiniteError(f"{name} contains NaN or Inf")


def check_int(
    value: Any, name: str, *, low: int | None = None, high: int | None = None, expected: str | None = None
) -> int:
    """Check that ``value`` is an integer (Python or NumPy, not bool) with ``low <= value <= high``.

    Returns it as a Python int.  TypeError names the argument and the type found; ValueError names
    the argument, the range (``rank must satisfy 1 <= rank <= 6``, ``n must be >= 1``, or
    ``{name} must be {expected}`` when ``expected`` is given) and the value found.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r} of type {type(value).__name__}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if expected is not None:
            requirement = f"be {expected}"
        elif low is not None and high is not None:
            requirement = f"satisfy {low} <= {name} <= {high}"
        else:
            requirement = f"be >= {low}" if low is not None else f"be <= {high}"
        raise ValueError(f"{name} must {requirement}; got {value}")
    return value


def unitary_tolerance(n: int, eps: float) -> float:
    """The largest ``||W^H W - I||_F`` an N x N matrix may have to count as unitary when it enters an optimizer.

    ``N sqrt(eps)`` (eps: the machine epsilon of its dtype): far above the rounding of any
    unitary initialiser, far below a matrix that is not one.
    """
    return n * math.sqrt(float(eps))


def check_rank(rank: Any, limit: int, name: str = "rank") -> int:
    """Check that ``rank`` is an integer with 1 <= rank <= limit; return it as int."""
    return check_int(rank, name, low=1, high=limit)


def check_sketch_rank(rank: Any, shape: tuple[int, int]) -> int:
    """:func:`check_rank` against ``min(shape)`` of the N x M gradient G, with an empty G named as such."""
    if 0 in shape:
        raise ValueError(f"G is empty (N x M = {shape[0]} x {shape[1]}); a sketch needs N, M >= 1")
    return check_rank(rank, min(shape))


def check_float(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    expected: str | None = None,
) -> float:
    """Check that ``value`` is a finite real number (not bool) between ``low`` and ``high``.

    The bounds are inclusive unless ``open_low`` / ``open_high``.  Returns it as a Python float.
    TypeError names the argument and the type found; ValueError names the argument, the range
    (``lr must be finite and > 0``, ``betas must lie in [0, 1)``, or ``{name} must be {expected}``
    when ``expected`` is given) and the value found.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range (lr=10**400)
        number = math.inf if str(value)[0] != "-" else -math.inf
    below = low is not None and (number <= low if open_low else number < low)
    above = high is not None and (number >= high if open_high else number > high)
    if not math.isfinite(number) or below or above:
        if expected is not None:
            requirement = f"be {expected}"
        elif low is not None and high is not None:
            requirement = f"lie in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        elif low is not None:
            requirement = f"be finite and {'>' if open_low else '>='} {low}"
        elif high is not None:
            requirement = f"be finite and {'<' if open_high else '<='} {high}"
        else:
            requirement = "be finite"
        raise ValueError(f"{name} must {requirement}; got {number!r}")
    return number


def check_dtype(dtype: Any, name: str = "dtype", *, allowed: Sequence[Any] = FLOAT_DTYPES) -> np.dtype:
    """Check that ``dtype`` (a dtype argument, not an array) is one of ``allowed``; return it as np.dtype.

    TypeError for something that is not a dtype or a dtype outside ``allowed``; the message
    names the argument, the dtype found and the dtypes expected.
    """
    expected = _listing([np.dtype(d).name for d in allowed], quote=False)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} {dtype!r} is not a dtype; {name} must be {expected}") from None
    if dt not in allowed:
        raise TypeError(f"{name} is {dt}; {name} must be {expected}")
    return dt


def check_drift(drift: Any) -> None:
    """Check that ``drift`` is None or a drift policy (an object with ``maybe_retract``)."""
    if drift is not None and not callable(getattr(drift, "maybe_retract", None)):
        raise TypeError(
            f"drift must be a DriftControl or None (drift must have a method maybe_retract); got {type(drift).__name__}"
        )


def _listing(names: Sequence[Any], *, quote: bool = True) -> str:
    """``'a', 'b' or 'c'`` (``quote=False``: ``a, b or c``)."""
    words = [repr(n) if quote else str(n) for n in names]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def check_choice(
    value: Any, valid: Sequence[str], name: str, *, phrasing: Literal["unknown", "one of", "either"] = "unknown"
) -> str:
    """Check that ``value`` is one of ``valid``; the ValueError names the argument and lists the valid names.

    ``phrasing`` words the message: ``"unknown"`` (``unknown sketch method 'svd'; valid:
    'randomized', 'lsi'``), ``"one of"`` (``loss must be one of 'cross_entropy', 'mse'; got
    'hinge'``) or ``"either"`` (``update must be 'project' or 'transport'; got 'cayley'``).
    """
    if value not in valid:
        if phrasing == "one of":
            raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")
        if phrasing == "either":
            raise ValueError(f"{name} must be {_listing(valid)}; got {value!r}")
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(repr, valid))}")
    return str(value)


def check_choice_str(value: Any, valid: Sequence[str], name: str) -> str:
    """:func:`check_choice` ("one of") for a string; anything else (an array, a number) is a TypeError."""
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be one of {', '.join(map(repr, valid))} (a string); "
            f"got {value!r} of type {type(value).__name__}"
        )
    return check_choice(value, valid, name, phrasing="one of")
