"""The jitted JAX update against the NumPy path, on the CPU, in one run.

``python -m unitary_update bench-jax`` times, for every N, rank k and dtype, projUNN-D
(``project``) and projUNN-T (``transport``):

* the NumPy path: :func:`unitary_update.project` / :func:`unitary_update.transport` with
  ``out=U`` (in place: BLAS, LAPACK and the fused Numba kernel);
* the JAX path: ``jax.jit(unitary_update.jax.project)`` (and ``transport``) on JAX CPU arrays,
  compiled before timing, each call waited for with ``block_until_ready`` (JAX returns a new
  N x N array: no ``out=``);

and prints a markdown table of the best times and the ratios ``JAX / NumPy`` (below 1: JAX is
faster), headed by the command line.  U is a Householder reflection ``I - 2 v v^T`` (orthogonal,
built in O(N^2): a Haar sample of N = 4096 would cost more than the whole benchmark).  JAX is
imported only when the benchmark runs (the ``jax`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .. import _update
from .._validation import check_dtype, check_int
from ._timing import best_time

__all__ = ["JaxRow", "add_arguments", "main", "run", "to_markdown"]


@dataclasses.dataclass(frozen=True)
class JaxRow:
    """One (N, k, dtype) measurement: seconds per update on each path.

    Parameters
    ----------
    n : int
        Matrix size N.
    k : int
        Rank of the update.
    dtype : str
        The matrices' dtype name.
    numpy_project_s, jax_project_s, donated_project_s : float
        Seconds per projUNN-D update: NumPy in place, jitted JAX, jitted JAX with U donated.
    numpy_transport_s, jax_transport_s, donated_transport_s : float
        Seconds per projUNN-T update: NumPy in place, jitted JAX, jitted JAX with U donated.

    Examples
    --------
    >>> from unitary_update.bench.jax_compare import JaxRow
    >>> row = JaxRow(256, 1, "float32", 0.5, 1.0, 0.5, 0.5, 1.5, 0.25)
    >>> row.project_ratio, row.transport_ratio, row.donated_project_ratio, row.donated_transport_ratio
    (2.0, 3.0, 1.0, 0.5)
    """

    n: int
    k: int
    dtype: str
    numpy_project_s: float
    jax_project_s: float
    donated_project_s: float
    numpy_transport_s: float
    jax_transport_s: float
    donated_transport_s: float

    @property
    def project_ratio(self) -> float:
        """JAX time over NumPy time for projUNN-D."""
        return self.jax_project_s / self.numpy_project_s

    @property
    def transport_ratio(self) -> float:
        """JAX time over NumPy time for projUNN-T."""
        return self.jax_transport_s / self.numpy_transport_s

    @property
    def donated_project_ratio(self) -> float:
        """JAX time with U donated over NumPy time for projUNN-D."""
        return self.donated_project_s / self.numpy_project_s

    @property
    def donated_transport_ratio(self) -> float:
        """JAX time with U donated over NumPy time for projUNN-T."""
        return self.donated_transport_s / self.numpy_transport_s


def _problem(n: int, k: int, dtype: np.dtype, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    U = (np.eye(n) - 2.0 * np.outer(v, v)).astype(dtype)
    A = (0.1 * rng.standard_normal((n, k)) / np.sqrt(n)).astype(dtype)
    B = rng.standard_normal((n, k)).astype(dtype)
    return U, A, B


def _single_threaded_xla() -> None:
    """Ask XLA's CPU backend for one thread, if it has not started yet (it reads XLA_FLAGS once)."""
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


@contextlib.contextmanager
def _limited(threads: int | None) -> Iterator[None]:
    """BLAS and Numba limited to ``threads`` (None: as they are); both restored afterwards."""
    if threads is None:
        yield
        return
    import numba
    import scipy.linalg  # noqa: F401  # load SciPy's own OpenBLAS now, so that the limit reaches it
    from threadpoolctl import threadpool_limits

    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(threads):
            yield
    finally:
        numba.set_num_threads(saved)


def _keys(cases: list[tuple[int, int, np.dtype]]) -> list[tuple[int, int, str]]:
    return [(n, k, dt.name) for n, k, dt in cases]


def run(
    sizes: Sequence[int],
    ranks: Sequence[int],
    dtypes: Sequence[Any] = ("float32",),
    *,
    repeat: int = 5,
    seed: int = 0,
    threads: int | None = 1,
) -> list[JaxRow]:
    """Time both paths for every (N, k, dtype): every NumPy case first, then every JAX case.

    Parameters
    ----------
    sizes : sequence of int
        Matrix sizes N.
    ranks : sequence of int
        Ranks k (at most N).
    dtypes : sequence of dtype, default ("float32",)
        float32, float64, complex64 or complex128 (double precision turns on ``jax_enable_x64``).
    repeat : int, default 5
        Timed calls per measurement; the best is kept.
    seed : int, default 0
        Seed of the test problems.
    threads : int or None, default 1
        BLAS and Numba threads of the NumPy path (threadpoolctl, ``numba.set_num_threads``) and,
        with 1, a single-threaded XLA CPU backend (``XLA_FLAGS``; only when JAX's backends have
        not started yet in this process).  None leaves every thread pool as it is.  On a
        shared or busy machine a multi-threaded BLAS stalls waiting for descheduled threads.

    Returns
    -------
    list of JaxRow
        One row per (N, k, dtype), in that order.

    Raises
    ------
    TypeError
        If an argument is not an integer or a supported dtype.
    ValueError
        If a size, rank or ``repeat`` is out of range.
    unitary_update._extras.MissingExtraError
        If jax or optax is not installed.

    Examples
    --------
    >>> from unitary_update.bench.jax_compare import run
    >>> rows = run([16], [1], repeat=1)  # doctest: +SKIP
    """
    sizes = [check_int(n, "size", low=1) for n in sizes]
    ranks = [check_int(k, "rank", low=1) for k in ranks]
    dts = [check_dtype(d) for d in dtypes]
    repeat = check_int(repeat, "repeat", low=1)
    threads = None if threads is None else check_int(threads, "threads", low=1)
    for n in sizes:
        for k in ranks:
            if k > n:
                raise ValueError(f"rank {k} is larger than size {n}")
    import jax

    from ..jax import _core

    if threads == 1:
        _single_threaded_xla()
    x64 = bool(jax.config.jax_enable_x64)
    if any((d.itemsize == 8 and d.kind == "f") or d.itemsize == 16 for d in dts):
        jax.config.update("jax_enable_x64", True)
    try:
        with _limited(threads):
            return _run(jax, jax.numpy, _core, sizes, ranks, dts, repeat, seed)
    finally:
        jax.config.update("jax_enable_x64", x64)


def _run(
    jax: Any, jnp: Any, _core: Any, sizes: list[int], ranks: list[int], dts: list[np.dtype], repeat: int, seed: int
) -> list[JaxRow]:
    cases = [(n, k, dt) for n in sizes for k in ranks for dt in dts]
    times: dict[tuple[int, int, str], dict[str, float]] = {case_key: {} for case_key in _keys(cases)}
    # NumPy first, then JAX: XLA's CPU thread pool and the BLAS threads would otherwise take turns
    # spinning on the same cores between alternating calls
    for n, k, dt in cases:
        U0, A, B = _problem(n, k, dt, seed)
        for kind in ("project", "transport"):
            U = U0.copy()
            numpy_fn = getattr(_update, kind)
            seconds = best_time(lambda: numpy_fn(U, A, B, out=U), repeat, warmup=True)  # noqa: B023
            times[(n, k, dt.name)][f"numpy_{kind}_s"] = seconds
    cpu = jax.devices("cpu")[0]
    for n, k, dt in cases:
        Uj, Aj, Bj = (jax.device_put(x, cpu) for x in _problem(n, k, dt, seed))
        for kind in ("project", "transport"):
            jitted = jax.jit(getattr(_core, kind))
            jitted(Uj, Aj, Bj).block_until_ready()  # compile
            seconds = best_time(lambda: jitted(Uj, Aj, Bj).block_until_ready(), repeat, warmup=True)  # noqa: B023
            times[(n, k, dt.name)][f"jax_{kind}_s"] = seconds
            donating = jax.jit(getattr(_core, kind), donate_argnums=0)
            current = [jnp.array(Uj)]  # U = f(U, A, B): XLA may write the result into U's buffer

            def donated_call() -> None:
                current[0] = donating(current[0], Aj, Bj)  # noqa: B023
                current[0].block_until_ready()  # noqa: B023

            seconds = best_time(donated_call, repeat, warmup=True)
            times[(n, k, dt.name)][f"donated_{kind}_s"] = seconds
    rows = [JaxRow(n, k, dt.name, **times[(n, k, dt.name)]) for n, k, dt in cases]
    return rows


def to_markdown(rows: Sequence[JaxRow], command: str = "") -> str:
    """The markdown table of :func:`run`'s rows (milliseconds and JAX / NumPy ratios).

    Parameters
    ----------
    rows : sequence of JaxRow
        The measurements.
    command : str, optional
        The command line, printed above the table.

    Returns
    -------
    str
        The table (with a heading line when ``command`` is given).

    Examples
    --------
    >>> from unitary_update.bench.jax_compare import JaxRow, to_markdown
    >>> print(to_markdown([JaxRow(256, 1, "float32", 0.5e-3, 1e-3, 0.5e-3, 0.5e-3, 1.5e-3, 0.25e-3)]))
    | N | k | dtype | project NumPy (ms) | JAX jit (ms) | JAX donated (ms) | JAX / NumPy | donated / NumPy | transport NumPy (ms) | JAX jit (ms) | JAX donated (ms) | JAX / NumPy | donated / NumPy |
    |---|---|---|---|---|---|---|---|---|---|---|---|---|
    | 256 | 1 | float32 | 0.500 | 1.000 | 0.500 | 2.00 | 1.00 | 0.500 | 1.500 | 0.250 | 3.00 | 0.50 |
    """  # noqa: E501
    lines = [f"`{command}`", ""] if command else []
    lines.append(
        "| N | k | dtype | project NumPy (ms) | JAX jit (ms) | JAX donated (ms) | JAX / NumPy | donated / NumPy "
        "| transport NumPy (ms) | JAX jit (ms) | JAX donated (ms) | JAX / NumPy | donated / NumPy |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [str(r.n), str(r.k), r.dtype]
        for kind in ("project", "transport"):
            cells += [f"{1e3 * getattr(r, f'{name}_{kind}_s'):.3f}" for name in ("numpy", "jax", "donated")]
            cells += [f"{getattr(r, f'{kind}_ratio'):.2f}", f"{getattr(r, f'donated_{kind}_ratio'):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the ``bench-jax`` command to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The command's parser.

    Examples
    --------
    >>> import argparse
    >>> from unitary_update.bench.jax_compare import add_arguments
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> parser.parse_args([]).sizes, parser.parse_args([]).ranks
    ([256, 1024, 4096], [1, 16])
    """
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096], help="matrix sizes N")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 16], help="update ranks k")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32"], help="float32, float64, complex64, complex128 (default float32)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per measurement; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="BLAS/Numba threads, and one XLA thread when 1 (default 1)"
    )


def main(args: argparse.Namespace, command: str = "") -> list[JaxRow]:
    """Run the benchmark with the parsed options and print its table.

    Parameters
    ----------
    args : argparse.Namespace
        Options from :func:`add_arguments`.
    command : str, optional
        The command line, printed above the table.

    Returns
    -------
    list of JaxRow
        The measurements.

    Raises
    ------
    MissingExtraError
        If jax is not installed (the ``jax`` extra).

    Examples
    --------
    >>> import argparse
    >>> from unitary_update.bench.jax_compare import add_arguments, main
    >>> parser = argparse.ArgumentParser(); add_arguments(parser)
    >>> rows = main(parser.parse_args(["--sizes", "8", "--ranks", "1"]))  # doctest: +SKIP
    """
    rows = run(args.sizes, args.ranks, args.dtypes, repeat=args.repeat, seed=args.seed, threads=args.threads)
    print(to_markdown(rows, command))
    return rows
