r"""A unitary recurrent network with hand-written backpropagation through time.

The model (Arjovsky et al. 2016; the projUNN paper's RNN experiments)

.. math::

    z_t = W h_{t-1} + V x_t, \qquad h_t = \operatorname{modrelu}(z_t, b), \qquad h_0 = 0,
    \qquad \operatorname{modrelu}(z, b) = (|z| + b)_+ \, z / |z|,

or, for a real model with ``activation="relu"`` (the projUNN paper's permuted-MNIST RNN),
:math:`h_t = (z_t + b)_+`,

read out as ``logits_t = O h_t + c`` (complex model: ``O [Re h_t, Im h_t] + c``) at every step
(``output="sequence"``) or at the last one (``output="last"``).

=========  ==================  ==========================================================
symbol     shape               meaning
=========  ==================  ==========================================================
``W``      (N, N)              recurrent matrix, orthogonal (real) or unitary (complex)
``V``      (N, input)          input matrix (complex for a complex model)
``b``      (N,)                the activation's bias (modReLU's, or ReLU's input bias), real
``O``      (output, N)         readout; (output, 2N) for a complex model, reading [Re h, Im h]
``c``      (output,)           readout bias
``X, Y``   (N, T batch)        the recurrent gradient in factored form, dL/dW = X Y^H
=========  ==================  ==========================================================

Gradient convention: for a real parameter ``grads[p] = dL/dp``; for a complex parameter
``grads[p] = dL/dRe(p) + i dL/dIm(p)``, so ``p -= lr * grads[p]`` descends in both cases.

Implementation: states are kept time-major in one preallocated buffer ``H (T + 1, batch, N)``.
On NumPy a training step is a few fused Numba kernels (:mod:`unitary_update.models._kernels`), each
over a block of batch rows (the sequences are independent), one block per thread -- as many
threads as the BLAS may use (threadpoolctl limits), the BLAS itself held to one thread meanwhile,
so that exactly that many cores work and no thread pool waits on another:

* forward, per step: ``V x_t``, ``h_{t-1} W^T`` and the readout each one BLAS call on the block's
  rows (cache resident), modReLU fused in one pass; no Python and no allocation between steps;
* the softmax cross-entropy and its gradient, in place over the logits, in one pass;
* BPTT, per step: the readout's gradient, modReLU's backward (it needs only ``h_t``, so no
  pre-activations are stored), the recurrent carry ``dL/dz_t conj(W)`` and the gradients of V,
  O, b, with ``dL/dz_t`` stored in ``G (T, batch, N)``;
* ``dL/dW = G^T conj(H[:-1])`` as one large product per range of time steps.

H and G are reused between calls of the same shape.  On CuPy (and with the option
``backend="numpy"``) the same model runs as array operations: ``V x_t`` and the readout as single
products over all steps, the recurrence one ``matmul`` per step.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

# Imported here, not lazily: SciPy's BLAS is a separate library from NumPy's, and it must be loaded
# before a caller limits BLAS threads (threadpoolctl only sees libraries already loaded).
import scipy.linalg.blas  # noqa: F401

from .._config import get_options, use_numba
from .._threads import blas_libraries, single_threaded_blas
from .._validation import NonFiniteError, check_choice, check_dtype, check_int, overlaps
from .._xp import array_namespace, to_compute
from ..random import normalize_rng
from ._kernels import (
    cross_entropy_numba,
    cross_entropy_numpy,
    modrelu_,
    modrelu_backward_,
    real_maps,
    relu_,
    rnn_backward_numba,
    rnn_forward_numba,
    rnn_weight_grad,
)

__all__ = ["ACTIVATIONS", "INITS", "LOSSES", "OUTPUTS", "URNN", "init_recurrent"]

INITS = ("henaff", "cayley", "haar", "identity")
ACTIVATIONS = ("modrelu", "relu")
"""The values of ``URNN(activation=...)``: modReLU (real or complex) or ReLU (real models only)."""
OUTPUTS = ("sequence", "last")
LOSSES = ("cross_entropy", "mse")


# --------------------------------------------------------------------------------------------
# Initialisers of the recurrent matrix
# --------------------------------------------------------------------------------------------
def _block_skew(n: int, angles: np.ndarray) -> np.ndarray:
    """Block-diagonal skew-symmetric matrix with 2 x 2 blocks [[0, a], [-a, 0]] (last 1 x 1 block 0)."""
    S = np.zeros((n, n))
    idx = np.arange(0, n - 1, 2)
    S[idx, idx + 1] = angles[: len(idx)]
    S[idx + 1, idx] = -angles[: len(idx)]
    return S


def init_recurrent(n: int, method: str, *, complex: bool = False, rng: Any = None) -> np.ndarray:
    """An orthogonal (or unitary) ``n x n`` starting point for the recurrent matrix.

    Parameters
    ----------
    n : int
        Hidden size N.
    method : {"henaff", "cayley", "haar", "identity"}
        ``henaff``: ``expm(S)`` for a block-diagonal skew-symmetric S with angles uniform in
        [-pi, pi] (Henaff et al. 2016), i.e. independent 2 x 2 rotations.  ``cayley``: the Cayley
        transform ``(I + S)^{-1} (I - S)`` of such an S with ``S_{2i, 2i+1} = -sqrt((1 - cos u) /
        (1 + cos u))``, ``u`` uniform in [0, pi / 2] (Helfrich et al. 2018).  ``haar``: Haar random.
        ``identity``: the identity.
    complex : bool, default False
        Return complex128 (a real orthogonal matrix is also unitary; ``haar`` draws a complex
        Haar matrix) instead of float64.
    rng : numpy.random.Generator, int or None
        Seed or generator.

    Returns
    -------
    numpy.ndarray, shape (n, n)
        float64 or complex128, orthogonal / unitary to rounding.

    Raises
    ------
    TypeError
        If ``n`` is not an integer or ``complex`` not a bool.
    ValueError
        For an unknown method or ``n < 1``.

    Notes
    -----
    Cost O(n) for henaff and identity (closed form rotations), O(n^3) for cayley and haar.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.models.urnn import init_recurrent
    >>> W = init_recurrent(5, "henaff", rng=0)
    >>> bool(np.allclose(W @ W.T, np.eye(5)))
    True
    """
    from ..random import random_unitary

    n = check_int(n, "n", low=1)
    check_choice(method, INITS, "init", phrasing="one of")
    if not isinstance(complex, (bool, np.bool_)):
        raise TypeError(f"complex must be a bool; got {complex!r} of type {type(complex).__name__}")
    gen = normalize_rng(rng)
    if method == "henaff":
        theta = gen.uniform(-np.pi, np.pi, n // 2)
        W = np.eye(n)
        idx = np.arange(0, n - 1, 2)
        W[idx, idx] = W[idx + 1, idx + 1] = np.cos(theta)
        W[idx, idx + 1] = np.sin(theta)
        W[idx + 1, idx] = -np.sin(theta)
    elif method == "cayley":
        u = gen.uniform(0, np.pi / 2, n // 2)
        S = _block_skew(n, -np.sqrt((1 - np.cos(u)) / (1 + np.cos(u))))
        eye = np.eye(n)
        W = np.linalg.solve(eye + S, eye - S)
    elif method == "haar":
        return random_unitary(n, dtype=np.complex128 if complex else np.float64, rng=gen)
    else:  # identity
        W = np.eye(n)
    return W.astype(np.complex128) if complex else W


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _memory_limit() -> int:
    """The most bytes the parameters may take: the machine's physical memory (and what an array can hold)."""
    largest = int(np.iinfo(np.intp).max)
    try:
        return min(largest, int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES")))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return largest


def _scalar(xp: ModuleType, value: Any) -> Any:
    """A reduction's result as a Python float on NumPy; left on the device (0-d) elsewhere."""
    return float(value) if xp is np else value


# The recurrence of a NumPy model runs in blocks of batch rows, one per thread (the sequences of a
# batch are independent): as many threads as the BLAS may use, each block at least _MIN_ROWS rows,
# and one thread when T batch N^2 (the multiply-adds of one pass) is below _MIN_WORK.  Meanwhile
# the BLAS libraries are held to one thread each (a process-wide setting, restored afterwards: BLAS
# calls from other threads of the process run on one thread for that time), so that exactly that
# many cores work and no BLAS thread pool competes with the block threads.
_MIN_ROWS = 16
_MIN_WORK = 1 << 24


def _threads(T: int, batch: int, n: int) -> int:
    """How many threads run the recurrence of a (T, batch) problem with N hidden units."""
    if T * batch * n * n < _MIN_WORK or batch < 2 * _MIN_ROWS:
        return 1
    counts = [lib.num_threads for lib in blas_libraries()]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(min(counts, default=1), cpus, batch // _MIN_ROWS))


def _split(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` cut into at most ``parts`` non-empty ranges of nearly equal length."""
    if hi <= lo:
        return []
    parts = max(1, min(parts, hi - lo))
    edges = [lo + (hi - lo) * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(edges))


def _run_blocks(fn: Callable[[int, int, int], None], blocks: list[tuple[int, int]]) -> None:
    """``fn(k, lo, hi)`` for every block ``(lo, hi)``: the first on this thread, the others on
    their own threads (``fn`` releases the GIL), with the BLAS limited to one thread meanwhile."""
    if len(blocks) <= 1:
        for k, (lo, hi) in enumerate(blocks):
            fn(k, lo, hi)
        return
    errors: list[BaseException] = []

    def work(k: int, lo: int, hi: int) -> None:
        try:
            fn(k, lo, hi)
        except BaseException as err:  # pragma: no cover - re-raised below
            errors.append(err)

    with single_threaded_blas():  # the library's one process-wide, counted limit (unitary_update._threads)
        threads = [threading.Thread(target=work, args=(k, lo, hi)) for k, (lo, hi) in enumerate(blocks) if k]
        for thread in threads:
            thread.start()
        try:
            fn(0, *blocks[0])
        finally:
            for thread in threads:
                thread.join()
    if errors:  # pragma: no cover - the kernels raise nothing on valid buffers
        raise errors[0]


class _Workspace:
    """Buffers for one (T, batch) shape: ``H (T + 1, batch, N)`` and ``G (T, batch, N)``."""

    def __init__(self, xp: ModuleType, T: int, batch: int, n: int, dtype: Any) -> None:
        self.H = xp.zeros((T + 1, batch, n), dtype=dtype)
        self.G: Any = None
        self.shape = (T, batch)

    def grad_buffer(self, xp: ModuleType) -> Any:
        if self.G is None:
            T, batch, n = self.H.shape[0] - 1, self.H.shape[1], self.H.shape[2]
            self.G = xp.empty((T, batch, n), dtype=self.H.dtype)
        return self.G


class URNN:
    r"""Unitary RNN with modReLU (or ReLU) activation and hand-written backpropagation through time.

    ``h_t = modrelu(W h_{t-1} + V x_t, b)`` (or ``relu(W h_{t-1} + V x_t + b)``), ``h_0 = 0``,
    read out as ``O h_t + c`` (complex: ``O [Re h_t, Im h_t] + c``) at every step or at the last
    step.

    Parameters
    ----------
    input_size, hidden_size, output_size : int
        Sizes of x_t, h_t (N) and the readout.
    complex : bool, default False
        Complex hidden state with a unitary W (else real with an orthogonal W).
    output : {"sequence", "last"}
        Read out at every step or only after the last one.
    loss : {"cross_entropy", "mse"}
        Mean softmax cross-entropy over labelled positions, or mean squared error.
    init : {"henaff", "cayley", "haar", "identity"}
        Initialiser of W (see :func:`init_recurrent`).
    activation : {"modrelu", "relu"}, default "modrelu"
        modReLU ``(|z| + b)_+ z / |z|`` (Arjovsky et al.), or ReLU ``(z + b)_+`` with b as an input
        bias (real models only; the projUNN paper's permuted-MNIST RNN).
    dtype : {float32, float64}, optional
        Real precision of the model (default float64); a complex model uses complex64 or
        complex128 for W, V and the states.
    rng : numpy.random.Generator, int or None
        Seed or generator of the initialisation.

    Attributes
    ----------
    params : dict of arrays
        ``"W" (N, N)``, ``"V" (N, input)``, ``"b" (N,)`` real, ``"O" (output, N)`` or
        ``(output, 2N)`` for a complex model, ``"c" (output,)``.  Read as they are at each call, so
        they can be updated in place or replaced (e.g. by CuPy arrays to run on a GPU).

    Raises
    ------
    TypeError
        If a size is not an integer, ``complex`` is not a bool, ``dtype`` is not float32 or
        float64, or ``rng`` is not a generator, an int seed or None.
    ValueError
        If a size is below 1, or the parameters would not fit in the machine's memory, or
        ``output``, ``loss``, ``init`` or ``activation`` is unknown (TypeError when not a string), or
        ``activation="relu"`` with ``complex=True``.  ``hidden_size = 1``
        is valid (W is the 1 x 1 matrix ``[[1]]`` or ``[[e^{i theta}]]``).

    Notes
    -----
    One :meth:`loss_and_grads` costs O(T batch N (N + input + output)) time and keeps two
    (T + 1, batch, N) state buffers, reused between calls of the same shape.  Initialisation:
    V Glorot-normal (std ``sqrt(2 / (input + N))``), b uniform in [-0.01, 0.01] (as expRNN), O
    and c zero.  A unitary W keeps the norm of h_t, which grows like sqrt(T) with the inputs, so a
    random readout would start with a loss that grows with T; a zero readout starts at the
    uninformed loss (log C for cross-entropy) for every T, and learned faster on copy and adding
    in a seeded comparison (300 steps, N = 64).

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.models.urnn import URNN
    >>> model = URNN(3, 8, 4, rng=0)
    >>> x = np.random.default_rng(1).standard_normal((2, 5, 3))
    >>> y = np.array([[0, 1, 2, 3, 0], [1, 1, 1, 1, 1]])
    >>> loss, grads = model.loss_and_grads(x, y)
    >>> sorted(grads), grads["W"].shape, model.forward(x).shape
    (['O', 'V', 'W', 'b', 'c'], (8, 8), (2, 5, 4))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        *,
        complex: bool = False,
        output: str = "sequence",
        loss: str = "cross_entropy",
        init: str = "henaff",
        activation: str = "modrelu",
        dtype: Any = None,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        input_size, hidden_size, output_size = (
            check_int(value, name, low=1, expected="a positive integer")
            for value, name in ((input_size, "input_size"), (hidden_size, "hidden_size"), (output_size, "output_size"))
        )
        choices = ((output, OUTPUTS, "output"), (loss, LOSSES, "loss"), (init, INITS, "init"))
        for value, valid, name in (*choices, (activation, ACTIVATIONS, "activation")):
            if not isinstance(value, str):  # an array would compare elementwise
                raise TypeError(f"{name} must be one of {', '.join(map(repr, valid))}; got {type(value).__name__}")
            check_choice(value, valid, name, phrasing="one of")
        self.output, self.loss = str(output), str(loss)
        if not isinstance(complex, (bool, np.bool_)):
            raise TypeError(f"complex must be a bool; got {complex!r} of type {type(complex).__name__}")
        if activation == "relu" and complex:
            raise ValueError("activation='relu' needs a real model (complex=False); a complex model uses 'modrelu'")
        self.activation = str(activation)
        if dtype is not None and not isinstance(dtype, (str, type, np.dtype)):
            raise TypeError(f"dtype must be float32 or float64 (a dtype or its name); got {type(dtype).__name__}")
        real = check_dtype(np.float64 if dtype is None else dtype, allowed=(np.float32, np.float64))
        entries = hidden_size * (hidden_size + input_size) + output_size * (2 * hidden_size + 1)
        nbytes = entries * np.dtype(real).itemsize * (2 if complex else 1)
        if nbytes > _memory_limit():
            raise ValueError(
                f"input_size, hidden_size and output_size too large: the parameters would need about "
                f"10^{len(str(nbytes)) - 1} bytes, more than this machine has (hidden_size {hidden_size})"
            )
        self.complex = bool(complex)
        self.real_dtype = real
        self.dtype = np.dtype(np.complex64 if real == np.float32 else np.complex128) if self.complex else real
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        gen = normalize_rng(rng)
        n = self.hidden_size
        W = init_recurrent(n, init, complex=self.complex, rng=gen)
        std = np.sqrt(2.0 / (input_size + n))  # Glorot
        V = gen.standard_normal((n, input_size)) * std
        if self.complex:
            V = (V + 1j * gen.standard_normal((n, input_size)) * std) / np.sqrt(2.0)
        readout_in = 2 * n if self.complex else n
        out_w = np.zeros((output_size, readout_in))
        self.params: dict[str, Any] = {
            "W": np.ascontiguousarray(W, dtype=self.dtype),
            "V": np.ascontiguousarray(V, dtype=self.dtype),
            "b": gen.uniform(-0.01, 0.01, n).astype(real),
            "O": np.ascontiguousarray(out_w, dtype=real),
            "c": np.zeros(output_size, dtype=real),
        }
        self._workspaces: dict[tuple[Any, ...], _Workspace] = {}

    # ---------------------------------------------------------------------------- validation
    def _expected_params(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """The shape and dtype of every parameter."""
        n, real = self.hidden_size, self.real_dtype
        readout = 2 * n if self.complex else n
        return {
            "W": ((n, n), self.dtype),
            "V": ((n, self.input_size), self.dtype),
            "b": ((n,), real),
            "O": ((self.output_size, readout), real),
            "c": ((self.output_size,), real),
        }

    def _check_params(self, xp: ModuleType) -> None:
        """Every parameter has its shape and dtype and lives with W (they may be replaced); while
        ``check_finite`` is on, every parameter is finite (a NaN weight would reach every output)."""
        expected = self._expected_params()
        if not isinstance(self.params, dict) or set(self.params) != set(expected):
            keys = sorted(self.params) if isinstance(self.params, dict) else type(self.params).__name__
            raise ValueError(f"params must hold exactly {sorted(expected)}; got {keys}")
        for name, (shape, dtype) in expected.items():
            value = self.params[name]
            if not hasattr(value, "dtype") or not hasattr(value, "shape") or _namespace_or_none(value) is not xp:
                raise TypeError(
                    f"params[{name!r}] must be a {xp.__name__} array like params['W']; got {type(value).__name__}"
                )
            if tuple(value.shape) != shape or value.dtype != dtype:
                raise ValueError(
                    f"params[{name!r}] must have shape {shape} and dtype {dtype}; "
                    f"got {tuple(value.shape)} {value.dtype}"
                )
        if not get_options().check_finite:
            return
        for name, value in self.params.items():
            if not bool(xp.isfinite(value).all()):
                raise NonFiniteError(f"params[{name!r}] contains NaN or Inf")

    def _check_x(self, x: Any) -> tuple[ModuleType, Any]:
        W = self.params.get("W") if isinstance(self.params, dict) else None
        if not hasattr(W, "dtype"):
            raise TypeError(f"params['W'] must be an array; got {type(W).__name__}")
        try:
            xp = array_namespace(W)
        except TypeError:  # a torch or JAX tensor: the model's parameters are NumPy or CuPy arrays
            raise TypeError(f"params['W'] must be a NumPy or CuPy array; got {type(W).__name__}") from None
        x = _as_array(xp, x, "x", f"a real array of shape (batch, T, {self.input_size})")
        if x.dtype.kind not in "fiub":
            raise TypeError(f"x must be real (batch, T, input_size); got dtype {x.dtype}")
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"x must have shape (batch, T, {self.input_size}); got {tuple(x.shape)}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(
                f"x must hold at least one sequence of at least one step, shape (batch >= 1, T >= 1, "
                f"{self.input_size}); got {tuple(x.shape)}"
            )
        if x.dtype.kind == "f" and get_options().check_finite:
            # NaN would be mapped to 0 by modReLU (a finite loss) but reach grads["V"]
            if not bool(xp.isfinite(x).all()):
                raise NonFiniteError("x contains NaN or Inf")
            if x.dtype.itemsize > self.real_dtype.itemsize and x.size:
                largest = float(xp.max(xp.abs(x)))
                if largest > float(np.finfo(self.real_dtype).max):
                    raise ValueError(
                        f"x overflows the model's dtype {self.real_dtype}: |x| reaches {largest:.3g} > "
                        f"{float(np.finfo(self.real_dtype).max):.3g}"
                    )
        self._check_params(xp)
        return xp, x

    def _check_y(self, xp: ModuleType, y: Any, batch: int, T: int) -> Any:
        y = _as_array(xp, y, "y", "an array of targets")
        steps = (T,) if self.output == "sequence" else ()
        checked = xp is np or get_options().check_finite
        if self.loss == "cross_entropy":
            expected = (batch, *steps)
            if y.dtype.kind not in "iu":
                raise TypeError(f"y must hold integer class labels of shape {expected}; got dtype {y.dtype}")
            if tuple(y.shape) != expected:
                raise ValueError(f"y must have shape {expected} (integer labels); got {tuple(y.shape)}")
            # The range check reads a device value on CuPy (a synchronisation): there it runs only
            # while the ``check_finite`` option (the switch for checks that read device values) is on.
            if y.size and checked and int(y.max()) >= self.output_size:
                raise ValueError(
                    f"labels in y must be < output_size = {self.output_size} (negative: unlabelled); got {int(y.max())}"
                )
        else:
            expected = (batch, *steps, self.output_size)
            if y.dtype.kind not in "fiu":
                raise TypeError(f"y must be real targets of shape {expected}; got dtype {y.dtype}")
            if tuple(y.shape) != expected:
                raise ValueError(f"y must have shape {expected} (real targets); got {tuple(y.shape)}")
            if get_options().check_finite:
                if y.dtype.kind == "f" and not bool(xp.isfinite(y).all()):
                    raise NonFiniteError("y contains NaN or Inf")
                # the squared error of a target beyond sqrt(max) overflows the loss
                limit = float(np.sqrt(np.finfo(self.real_dtype).max))
                largest = float(xp.max(xp.abs(y.astype(np.float64)))) if y.size else 0.0
                if largest > limit:
                    raise ValueError(
                        f"y is too large for the model's dtype {self.real_dtype}: |y| reaches {largest:.3g}, and "
                        f"squared errors overflow beyond {limit:.3g} (scale the targets down)"
                    )
        return y

    def _unshared(self, xp: ModuleType, x: Any, *targets: Any) -> tuple[Any, ...]:
        """``x`` and ``targets`` with each array that shares memory with the work buffers of this
        call's shape replaced by a copy (the buffers are overwritten while they are read); a
        parameter sharing memory with them is a ValueError."""
        T, batch = x.shape[1], x.shape[0]
        ws = self._workspaces.get((xp.__name__, T, batch, self.dtype, self.hidden_size))
        if ws is None:  # new buffers share memory with nothing
            return (x, *targets)
        buffers = [buf for buf in (ws.H, ws.G) if buf is not None]
        for name, value in self.params.items():
            if any(overlaps(value, buf) for buf in buffers):
                raise ValueError(f"params[{name!r}] shares memory with the model's work buffers")
        return tuple(
            xp.array(a, copy=True) if isinstance(a, type(ws.H)) and any(overlaps(a, buf) for buf in buffers) else a
            for a in (x, *targets)
        )

    def _workspace(self, xp: ModuleType, T: int, batch: int) -> _Workspace:
        key = (xp.__name__, T, batch, self.dtype, self.hidden_size)
        ws = self._workspaces.get(key)
        if ws is None:
            if len(self._workspaces) >= 2:  # keep a training and an evaluation shape
                self._workspaces.pop(next(iter(self._workspaces)))
            ws = self._workspaces[key] = _Workspace(xp, T, batch, self.hidden_size, self.dtype)
        return ws

    # ---------------------------------------------------------------------------- forward
    def _fused(self, xp: ModuleType) -> bool:
        """Whether this call runs the fused Numba kernels (NumPy arrays, ``backend`` not ``"numpy"``)."""
        return xp is np and use_numba(True)

    def _run(self, xp: ModuleType, x: Any) -> tuple[_Workspace, Any, Any]:
        """Fill ``H`` with h_0 .. h_T; return the workspace, time-major x (T, batch, input) and the
        time-major logits (S, batch, output) of the steps read out (S = T or 1)."""
        p = self.params
        W, V, b, out_w, c = p["W"], p["V"], p["b"], p["O"], p["c"]
        batch, T, _ = x.shape
        n = self.hidden_size
        ws = self._workspace(xp, T, batch)
        H = ws.H
        xt = xp.ascontiguousarray(xp.swapaxes(x, 0, 1), dtype=self.real_dtype)  # (T, batch, input)
        H[0] = 0
        if self._fused(xp):
            Vx, Ro = real_maps(V, out_w)
            S = T if self.output == "sequence" else 1
            logits = np.empty((S, batch, self.output_size), dtype=self.real_dtype)
            blocks = _split(0, batch, _threads(T, batch, n))
            relu = self.activation == "relu"
            _run_blocks(lambda k, lo, hi: rnn_forward_numba(H, xt, W, b, Vx, Ro, c, logits, lo, hi, relu=relu), blocks)
            return ws, xt, logits
        pre = H[1:].reshape(T * batch, n)
        xp.matmul(xt.reshape(T * batch, -1).astype(self.dtype, copy=False), V.T, out=pre)
        activate = relu_ if self.activation == "relu" else modrelu_
        for t in range(T):
            if t > 0:
                H[t + 1] += H[t] @ W.T
            activate(H[t + 1], b)
        return ws, xt, self._readout(xp, self._states_read(H))

    def _readout(self, xp: ModuleType, Hs: Any) -> Any:
        """Logits ``(S, batch, output)`` of the states ``Hs (S, batch, N)``."""
        out_w, c = self.params["O"], self.params["c"]
        flat = Hs.reshape(-1, self.hidden_size)
        n = self.hidden_size
        # complex: O [Re h, Im h]
        logits = flat.real @ out_w[:, :n].T + flat.imag @ out_w[:, n:].T if self.complex else flat @ out_w.T
        logits += c
        return logits.reshape(*Hs.shape[:2], self.output_size)

    def _states_read(self, H: Any) -> Any:
        return H[1:] if self.output == "sequence" else H[-1:]

    def forward(self, x: Any) -> Any:
        """Logits: ``(batch, T, output)`` for ``output="sequence"``, ``(batch, output)`` for ``"last"``.

        Parameters
        ----------
        x : array, shape (batch, T, input_size)
            Real inputs: floating, integer or bool (cast to the model's real dtype; a finite
            float64 x beyond float32's range is refused); a NumPy array, a nested list or a
            torch/JAX tensor (read by DLPack, detached).  Other ndarray subclasses are read as
            plain arrays; a masked array is a TypeError.

        Returns
        -------
        array
            The readout, in the model's real dtype.

        Raises
        ------
        TypeError, ValueError
            For a non-real x, a wrong shape or an empty batch or sequence.
        NonFiniteError
            (a ValueError) If x or a parameter contains NaN or Inf while ``check_finite`` is on.

        Examples
        --------
        >>> import numpy as np
        >>> from unitary_update.models.urnn import URNN
        >>> URNN(2, 4, 3, output="last", rng=0).forward(np.ones((5, 7, 2))).shape
        (5, 3)
        """
        xp, x = self._check_x(x)
        (x,) = self._unshared(xp, x)
        _, _, logits = self._run(xp, x)
        return xp.swapaxes(logits, 0, 1) if self.output == "sequence" else logits[0]

    # ---------------------------------------------------------------------------- loss
    def _loss(self, xp: ModuleType, logits: Any, y: Any) -> tuple[Any, Any, dict[str, Any]]:
        """Loss, dL/dlogits (time-major, like logits) and metrics.

        The loss and metrics are Python floats on NumPy and 0-d device arrays on CuPy, so that
        a training step never waits for the device (see :meth:`loss_and_grads`).
        """
        y = xp.swapaxes(y, 0, 1) if self.output == "sequence" else y[None]  # time-major like logits
        if self.loss == "mse":
            diff = logits - xp.asarray(y, dtype=logits.dtype)
            loss = _scalar(xp, xp.mean(diff.astype(np.float64) ** 2))
            return loss, diff * (2.0 / diff.size), {}
        mask = y >= 0
        count = xp.maximum(xp.sum(mask), 1)  # on the device: no host read
        if self._fused(xp):  # in place: logits become dL/dlogits
            count, d = int(count), xp.ascontiguousarray(logits)
            spans = _split(0, d.shape[0], _threads(d.shape[0], d.shape[1], self.hidden_size))
            sums = np.zeros((len(spans), 2))

            def part(i: int, s0: int, s1: int) -> None:
                sums[i] = cross_entropy_numba(d, y, s0, s1, count)

            _run_blocks(part, spans)
            total, correct = sums.sum(axis=0)
        else:
            total, correct, d = cross_entropy_numpy(logits, y, count)
        loss = _scalar(xp, total / count)
        return loss, d, {"accuracy": _scalar(xp, correct / count)}

    def evaluate(self, x: Any, y: Any) -> dict[str, float]:
        """Loss (and accuracy for cross-entropy) on ``(x, y)`` without gradients.

        Parameters
        ----------
        x : array, shape (batch, T, input_size)
            Input sequences (real).
        y : array
            Targets as for :meth:`loss_and_grads`.

        Returns
        -------
        dict
            ``{"loss": float}`` plus ``"accuracy"`` (fraction of labelled positions whose arg-max
            logit is the label) for cross-entropy.  A batch without labelled positions (every
            target -1) gives 0 for both (a sum over nothing; deciding would read the device).

        Raises
        ------
        TypeError, ValueError
            As :meth:`loss_and_grads`, for bad x or y (NaN, overflowing targets, wrong shapes).
        FloatingPointError
            While ``check_finite`` is on: if the loss of finite inputs overflows.

        Examples
        --------
        >>> import numpy as np
        >>> from unitary_update.models.urnn import URNN
        >>> m = URNN(1, 4, 1, output="last", loss="mse", rng=0)
        >>> sorted(m.evaluate(np.zeros((2, 3, 1)), np.zeros((2, 1))))
        ['loss']
        """
        xp, x = self._check_x(x)
        y = self._check_y(xp, y, x.shape[0], x.shape[1])
        x, y = self._unshared(xp, x, y)
        _, _, logits = self._run(xp, x)
        loss, _, metrics = self._loss(xp, logits, y)
        result = {key: float(value) for key, value in {"loss": loss, **metrics}.items()}
        if get_options().check_finite and not math.isfinite(result["loss"]):
            raise FloatingPointError(
                f"the loss is {result['loss']} although x, y and the parameters are finite: the values overflow "
                f"{self.real_dtype} (scale the inputs down)"
            )
        return result

    # ---------------------------------------------------------------------------- backward
    def loss_and_grads(self, x: Any, y: Any, *, factored: bool = False) -> tuple[float, dict[str, Any]]:
        r"""The loss and the gradient of every parameter, by backpropagation through time.

        Parameters
        ----------
        x : array, shape (batch, T, input_size)
            Real inputs: floating, integer or bool (cast to the model's real dtype; a finite
            float64 x beyond float32's range is refused); a NumPy array, a nested list or a
            torch/JAX tensor (read by DLPack, detached).  Other ndarray subclasses are read as
            plain arrays; a masked array is a TypeError.
        y : array
            ``(batch, T)`` integer labels (sequence cross-entropy; negative labels are ignored),
            ``(batch,)`` integer labels (last-step cross-entropy), ``(batch, output_size)`` real
            targets (last-step mse) or ``(batch, T, output_size)`` (sequence mse).
        factored : bool, default False
            If True, ``grads["W"]`` is the pair ``(X, Y)`` with ``dL/dW = X @ Y^H``,
            ``X, Y: (N, T batch)``, instead of the dense N x N array; pass it to
            :func:`unitary_update.sketch` to never form the dense gradient.  X and Y are views of
            the model's work buffers, valid until its next call.

        Returns
        -------
        loss : float or 0-d array
            Mean loss over the labelled positions (cross-entropy; 0, with zero gradients, when
            there are none) or over all target entries (mse): a Python float for a model on
            NumPy; for a model on CuPy a 0-d device array, so that the step never waits for the
            GPU (``float(loss)`` reads it, and waits).
        grads : dict
            Same keys, shapes and dtypes as :attr:`params`; complex entries follow the
            convention ``dL/dRe + i dL/dIm`` (so ``p -= lr * grads[p]`` descends).

        Raises
        ------
        TypeError, ValueError
            For wrong dtypes or shapes of x or y (each message names the argument), an empty
            batch or sequence, or labels ``>= output_size`` (on CuPy the label range is checked
            only while the ``check_finite`` option is on, because it reads the device).
        NonFiniteError
            (a ValueError) While ``check_finite`` is on: if x, real targets y or a parameter
            contain NaN or Inf; a finite float64 x that overflows a float32 model is a
            ValueError naming x.
        FloatingPointError
            While ``check_finite`` is on: if the loss or a gradient of finite inputs overflows.

        Notes
        -----
        Time O(T batch N (N + input + output)); memory two (T + 1, batch, N) buffers.  On CuPy
        nothing here reads a device value to the host unless the ``check_finite`` option is on
        (label range check), so the step is enqueued without waiting for the GPU.

        Examples
        --------
        >>> import numpy as np
        >>> from unitary_update.models.urnn import URNN
        >>> model = URNN(1, 6, 1, output="last", loss="mse", complex=True, rng=0)
        >>> x = np.random.default_rng(0).standard_normal((4, 9, 1)); y = np.ones((4, 1))
        >>> loss, grads = model.loss_and_grads(x, y, factored=True)
        >>> X, Y = grads["W"]
        >>> X.shape, Y.shape, grads["b"].dtype, grads["V"].dtype
        ((6, 36), (6, 36), dtype('float64'), dtype('complex128'))
        """
        if not isinstance(factored, (bool, np.bool_)):
            raise TypeError(
                f"factored must be a bool (True or False); got {factored!r} of type {type(factored).__name__}"
            )
        xp, x = self._check_x(x)
        batch, T, _ = x.shape
        y = self._check_y(xp, y, batch, T)
        x, y = self._unshared(xp, x, y)  # x may be a view of the states buffer, e.g. of grads["W"]
        ws, xt, logits = self._run(xp, x)
        loss, dlogits, _ = self._loss(xp, logits, y)
        backward = self._backward_fused if self._fused(xp) else self._backward
        grads = backward(xp, ws, xt, dlogits, factored)
        if get_options().check_finite:
            _check_results(xp, loss, grads, self.real_dtype)
        return loss, {k: grads[k] for k in ("W", "V", "b", "O", "c")}

    def _backward_fused(self, xp: ModuleType, ws: _Workspace, xt: Any, dlogits: Any, factored: bool) -> dict[str, Any]:
        """Every gradient by the fused Numba BPTT (:func:`~unitary_update.models._kernels.rnn_backward_numba`),
        one block of batch rows per thread."""
        p = self.params
        W, V, b, out_w = p["W"], p["V"], p["b"], p["O"]
        H, real, n = ws.H, self.real_dtype, self.hidden_size
        T, batch = H.shape[0] - 1, H.shape[1]
        D = np.ascontiguousarray(dlogits, dtype=real)
        grads: dict[str, Any] = {"c": D.reshape(-1, self.output_size).sum(axis=0, dtype=np.float64).astype(real)}
        _, Ro = real_maps(V, out_w)
        G = ws.grad_buffer(np)
        conj = self.complex and not factored  # G holds conj(dz): dL/dW without a conjugate of H
        threads = _threads(T, batch, n)
        blocks = _split(0, batch, threads)
        dV = np.zeros((len(blocks), self.input_size, Ro.shape[0]))
        dO = np.zeros((len(blocks), *Ro.shape))
        db = np.zeros((len(blocks), n))

        def block(i: int, lo: int, hi: int) -> None:
            rnn_backward_numba(H, G, xt, W, b, Ro, D, lo, hi, dV[i], dO[i], db[i], conj=conj)

        _run_blocks(block, blocks)
        grads["b"] = db.sum(axis=0).astype(real)
        dVx, dRo = dV.sum(axis=0), dO.sum(axis=0)
        if self.complex:
            dVc = dVx.view(np.complex128)
            grads["V"] = np.ascontiguousarray((np.conj(dVc) if conj else dVc).T, dtype=self.dtype)
            grads["O"] = np.ascontiguousarray(np.concatenate([dRo[0::2].T, dRo[1::2].T], axis=1), dtype=real)
        else:
            grads["V"] = np.ascontiguousarray(dVx.T, dtype=real)
            grads["O"] = np.ascontiguousarray(dRo.T, dtype=real)
        if factored:
            grads["W"] = (G.reshape(T * batch, n).T, H[:-1].reshape(T * batch, n).T)
            return grads
        # dL/dW = sum_t dz_t^T conj(h_{t-1}): one large product per range of steps (h_0 = 0: from t = 1)
        spans = _split(1, T, threads)
        parts = np.zeros((max(len(spans), 1), n, n), dtype=H.dtype)
        if spans:
            _run_blocks(lambda i, t0, t1: rnn_weight_grad(G, H, t0, t1, parts[i]), spans)
        dW = parts.sum(axis=0, dtype=np.complex128 if self.complex else np.float64)
        grads["W"] = (np.conj(dW) if conj else dW).astype(self.dtype)
        return grads

    def _backward(self, xp: ModuleType, ws: _Workspace, xt: Any, dlogits: Any, factored: bool) -> dict[str, Any]:
        """Every gradient by array operations (CuPy, or ``backend="numpy"``): the readout's gradient
        in one product, BPTT one ``matmul`` per step, dV and dW in one product each."""
        p = self.params
        W, b, out_w = p["W"], p["b"], p["O"]
        H, n = ws.H, self.hidden_size
        T, batch = H.shape[0] - 1, H.shape[1]
        Hs = self._states_read(H)
        S = dlogits.shape[0]
        dflat = dlogits.reshape(S * batch, self.output_size)
        grads: dict[str, Any] = {"c": xp.sum(dflat, axis=0, dtype=np.float64).astype(self.real_dtype)}
        hflat = Hs.reshape(S * batch, n)
        G = ws.grad_buffer(xp)
        if self.output == "last":
            G[:-1] = 0
        Gread = G[-S:].reshape(S * batch, n)
        if self.complex:
            grads["O"] = xp.concatenate([dflat.T @ hflat.real, dflat.T @ hflat.imag], axis=1)
            xp.matmul(dflat.astype(self.dtype), (out_w[:, :n] + 1j * out_w[:, n:]).astype(self.dtype), out=Gread)
        else:
            grads["O"] = dflat.T @ hflat
            xp.matmul(dflat, out_w, out=Gread)
        db = xp.zeros(n, dtype=np.float64)
        Wc = xp.conj(W)
        for t in range(T - 1, -1, -1):  # ReLU's backward is real modReLU's (_kernels explains)
            modrelu_backward_(H[t + 1], b, G[t], db)
            if t > 0:
                G[t - 1] += G[t] @ Wc
        grads["b"] = db.astype(self.real_dtype)
        dz = G.reshape(T * batch, n)
        hprev = H[:-1].reshape(T * batch, n)
        grads["V"] = dz.T @ xt.reshape(T * batch, -1).astype(self.dtype, copy=False)
        grads["W"] = (dz.T, hprev.T) if factored else dz.T @ xp.conj(hprev)
        return grads


def _namespace_or_none(value: Any) -> ModuleType | None:
    """The array namespace of ``value`` (NumPy or CuPy), None for anything else."""
    try:
        return array_namespace(value)
    except TypeError:
        return None


def _as_array(xp: ModuleType, value: Any, name: str, expected: str) -> Any:
    """``value`` as an array of ``xp``: NumPy arrays, nested lists, torch/JAX tensors (detached, by
    DLPack).  As in the core (``unitary_update._xp.to_compute``): other ndarray subclasses
    (``np.memmap``, ...) are read as plain arrays, and a masked array is a TypeError naming ``name``
    (its mask would be ignored)."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain array; got {type(value).__name__} (masks are not supported)")
    if isinstance(value, np.ndarray) and type(value) is not np.ndarray and type(value).__module__ != "cupy":
        value = value.view(np.ndarray)
    if type(value).__module__.split(".")[0] in ("torch", "jax", "jaxlib"):
        value, _ = to_compute(value, name)  # a tensor that requires grad is detached, never refused
    try:
        return xp.asarray(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be {expected}; {err}") from None


def _check_results(xp: ModuleType, loss: Any, grads: dict[str, Any], dtype: np.dtype) -> None:
    """Raise FloatingPointError when the loss or a gradient of finite inputs overflowed to NaN or Inf."""
    parts = [("the loss", xp.asarray(loss))]
    for name, value in grads.items():
        if isinstance(value, tuple):
            parts += [(f"grads[{name!r}][{i}]", part) for i, part in enumerate(value)]
        else:
            parts.append((f"grads[{name!r}]", value))
    for label, value in parts:
        if not bool(xp.isfinite(value).all()):
            raise FloatingPointError(
                f"{label} is not finite although the inputs and parameters are: the values overflow {dtype} "
                "(scale the inputs down or lower the learning rate)"
            )
