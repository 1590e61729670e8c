"""``python -m unitary_update conv-bench``: batched updates of a stack of small unitary matrices.

Updates of a stack of F unitary C x C matrices (one per frequency of an orthogonal
convolution, :class:`unitary_update.models.OrthogonalConv2d`): one batched
:func:`~unitary_update.project` / :func:`~unitary_update.transport` call, the same call on the
NumPy/LAPACK path, a Python loop of single-matrix calls, and the dense batched polar factor (SVD) /
matrix exponential, timed in one process and printed as ratios.  :func:`update_methods` is also
what ``asv_benches/benchmarks/bench_conv.py`` times.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._xp import hconj
from ._timing import best_time

__all__ = ["bench_table", "update_methods"]


def update_methods(
    F: int, C: int, *, update: str = "transport", rank: int = 1, dtype: Any = np.complex128, seed: int = 0
) -> dict[str, Callable[[], Any]]:
    """Three ways to apply a rank-k update to each of F unitary C x C matrices.

    Parameters
    ----------
    F, C : int
        Stack size and matrix size.
    update : {"transport", "project"}
        projUNN-T (``U expm(skew(U^H A B^H))``) or projUNN-D (``polar(U + A B^H)``).
    rank : int, default 1
        Columns k of ``A, B``.
    dtype : dtype, default complex128
        Dtype of U, A and B.
    seed : int
        Seed for U (Haar), A and B (Gaussian, scaled so that ``||A B^H|| ~ 0.1``).

    Returns
    -------
    dict of callables
        ``batched``: one library call on the (F, C, C) stack (library options as they are:
        ``backend="auto"`` takes the batched Numba kernels where they exist);
        ``batched_numpy``: the same call with ``backend="numpy"`` (batched NumPy/LAPACK);
        ``loop``: F library calls on single matrices; ``dense``: the batched dense O(C^3) method, the polar factor from
        ``numpy.linalg.svd`` of the stack, or the exponential of the skew-Hermitian stack from
        ``numpy.linalg.eigh`` (``V exp(i theta) V^H``; on stacks of small matrices this is much
        faster than :func:`scipy.linalg.expm`, so it is the stronger baseline).  Each returns the
        (F, C, C) result.

    Examples
    --------
    >>> from unitary_update.bench.conv import update_methods
    >>> import numpy as np
    >>> m = update_methods(8, 4, update="project", rank=2)
    >>> bool(np.allclose(m["batched"](), m["dense"]()) and np.allclose(m["loop"](), m["dense"]()))
    True
    """
    import unitary_update as uu

    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    U = uu.random_unitary(C, dtype=dt, batch_shape=(F,), rng=rng)
    scale = 0.1 / math.sqrt(C)

    def gaussian() -> np.ndarray:
        z = rng.standard_normal((F, C, rank))
        if dt.kind == "c":
            z = z + 1j * rng.standard_normal((F, C, rank))
        return (scale * z).astype(dt)

    A, B = gaussian(), gaussian()
    fast = uu.project if update == "project" else uu.transport

    def batched() -> Any:
        return fast(U, A, B)

    def batched_numpy() -> Any:
        with uu.options(backend="numpy"):
            return fast(U, A, B)

    def loop() -> Any:
        return np.stack([fast(U[f], A[f], B[f]) for f in range(F)])

    def dense() -> Any:
        if update == "project":
            L, _, Rh = np.linalg.svd(U + A @ hconj(B))
            return L @ Rh
        X = hconj(U) @ A @ hconj(B)
        theta, V = np.linalg.eigh(-0.5j * (X - hconj(X)))  # skew(X) = V diag(i theta) V^H
        E = (V * np.exp(1j * theta)[..., None, :]) @ hconj(V)
        return U @ (E.real if dt.kind == "f" else E).astype(dt, copy=False)

    return {"batched": batched, "batched_numpy": batched_numpy, "loop": loop, "dense": dense}


def bench_table(
    cases: tuple[tuple[int, int], ...] = ((1024, 16), (64, 128)),
    *,
    updates: tuple[str, ...] = ("transport", "project"),
    ranks: tuple[int, ...] = (1, 4),
    dtype: Any = np.complex128,
    repeat: int = 5,
    threads: int | None = 1,
) -> list[dict[str, Any]]:
    """Time :func:`update_methods` for every case in one process; print and return the rows.

    Parameters
    ----------
    cases : tuple of (F, C)
        Stack sizes F and matrix sizes C to time.
    updates : tuple of {"transport", "project"}
        The updates to time.
    ranks : tuple of int
        Ranks k of the updates.
    dtype : dtype, default complex128
        Dtype of the matrices.
    repeat : int, default 5
        Each figure is the best of ``repeat`` runs, after one warm-up run.
    threads : int or None, default 1
        BLAS threads, set with threadpoolctl for the whole run, and Numba threads (None: leave
        both as they are); the limit covers NumPy's and SciPy's OpenBLAS (SciPy's is loaded
        first so that it is seen).

    Returns
    -------
    list of dict
        One row per (F, C, update, rank): the four times of :func:`update_methods` in seconds
        and the ratios ``batched_numpy / batched``, ``loop / batched`` and ``dense / batched``,
        plus the backend option in force.

    Examples
    --------
    >>> from unitary_update.bench.conv import bench_table
    >>> rows = bench_table(((4, 8),), updates=("project",), ranks=(1,), repeat=1)  # doctest: +ELLIPSIS
    batched unitary updates, complex128, ...
        F    C  k update ...
        4    8  1 project ...
    >>> len(rows)
    1
    """
    import contextlib

    import unitary_update as uu

    limiter: Any = contextlib.nullcontext()
    if threads is not None:
        # scipy.linalg brings its own OpenBLAS (the in-place gemm of the updates uses it); load it
        # first, or threadpoolctl does not see it and it runs with its default thread count
        import scipy.linalg  # noqa: F401
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=threads)
    import numba

    numba_threads = numba.get_num_threads()
    if threads is not None:  # oversubscribed Numba threads make timings erratic on a loaded machine
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    rows = []
    try:
        with limiter:
            print(
                f"batched unitary updates, {np.dtype(dtype)}, BLAS and Numba threads "
                f"{threads if threads else 'unchanged'}, backend option {uu.get_options().backend!r}; "
                f"best of {repeat} runs each"
            )
            header = (
                f"{'F':>5} {'C':>4} {'k':>2} {'update':<9} {'batched':>10} {'numpy':>10} {'loop':>10} {'dense':>10}"
            )
            print(f"{header} {'numpy/b':>8} {'loop/b':>8} {'dense/b':>8}")
            for F, C in cases:
                for update in updates:
                    for rank in ranks:
                        methods = update_methods(F, C, update=update, rank=rank, dtype=dtype)
                        for fn in methods.values():  # warm up (Numba compilation, caches)
                            fn()
                        t = {name: best_time(fn, repeat) for name, fn in methods.items()}
                        row = {
                            "F": F,
                            "C": C,
                            "rank": rank,
                            "update": update,
                            "dtype": str(np.dtype(dtype)),
                            **{f"{name}_s": value for name, value in t.items()},
                            "numpy_ratio": t["batched_numpy"] / t["batched"],
                            "loop_ratio": t["loop"] / t["batched"],
                            "dense_ratio": t["dense"] / t["batched"],
                            "backend": uu.get_options().backend,
                        }
                        rows.append(row)
                        times = " ".join(f"{t[n] * 1e3:8.2f}ms" for n in ("batched", "batched_numpy", "loop", "dense"))
                        ratios = " ".join(f"{row[n]:7.1f}x" for n in ("numpy_ratio", "loop_ratio", "dense_ratio"))
                        print(f"{F:>5} {C:>4} {rank:>2} {update:<9} {times} {ratios}")
    finally:
        numba.set_num_threads(numba_threads)
    return rows
