"""``python -m unitary_update bench``: one table of projUNN step times against baselines, in one run.

For every N and k of the grid it times, in the same process and with the same thread settings:

* ``project`` and ``transport`` with ``out=U`` (the in-place, O(kN) memory path);
* the baselines: one ``N x N @ N x 2k`` GEMM (the product of U with the update's thin basis, the
  work an update cannot avoid), one ``N x N @ N x 2`` GEMM (a single read of U: the floor of one
  pass), a copy of U (one read + one write), the in-place BLAS rank-2 update ``U += P Q^T`` (what
  the final step of an update costs), and the dense O(N^3) methods (SVD polar factor, ``expm``);
* the peak extra memory of the in-place updates (tracemalloc for NumPy allocations plus the growth
  of the process's peak resident set, which also sees Numba's allocations), against the memory
  floor: the one ``N x 2k`` block ``U W`` an update has to hold;
* optionally (``compare_threads``) each update again at one thread, and (``after_torch``) each
  update again after PyTorch has run work in the same process (its OpenMP pool then competes with
  the BLAS threads for the cores).

Each figure is the best of several repetitions (the dense methods: fewer).  Ratios are what the
table reports; absolute times depend on the machine.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._extras import pyplot, require
from ._timing import alternating_step, best_time

__all__ = ["DEFAULT_RANKS", "DEFAULT_SIZES", "format_markdown", "plot", "run", "torch_work"]


def _peak_extra_bytes(fn: Callable[[], Any]) -> tuple[int, int]:
    """(tracemalloc peak, growth of ru_maxrss) over one call of ``fn``, in bytes."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak, max(0, rss_after - rss_before)


def machine_description(threads: int) -> str:
    """One line naming the CPU, core count and library versions."""
    import numba
    import scipy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {threads} BLAS/Numba threads, OPENBLAS_THREAD_TIMEOUT="
        f"{os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset')}; numpy {np.__version__}, scipy {scipy.__version__}, "
        f"numba {numba.__version__}, Python {platform.python_version()}"
    )


DEFAULT_SIZES = (128, 190, 512, 1024, 2048, 4096)
DEFAULT_RANKS = (1, 4, 16, 64)
UPDATE_NAMES = ("project", "transport")


def torch_work(seconds: float = 0.5) -> None:
    """Run PyTorch work in this process for about ``seconds``: matmuls and an autograd RNN step.

    What a training loop does between two updates: PyTorch's own thread pool (OpenMP) wakes up
    and stays warm, competing for the cores with the BLAS threads of the update that follows.

    Parameters
    ----------
    seconds : float, default 0.5
        How long to keep PyTorch busy (at least one RNN step and one 512 x 512 product run).

    Raises
    ------
    MissingExtraError
        If torch is not installed (the ``torch`` extra).

    Examples
    --------
    >>> from unitary_update.bench.cpu import torch_work
    >>> torch_work(0.01)  # doctest: +SKIP
    """
    torch = require("torch", "bench --after-torch")
    import time

    g = torch.Generator().manual_seed(0)
    W = torch.randn(190, 190, generator=g, requires_grad=True)
    x = torch.randn(50, 128, 190, generator=g)
    big = torch.randn(512, 512, generator=g)
    end = time.perf_counter() + seconds
    while True:
        h = torch.zeros(128, 190)
        for t in range(x.shape[0]):
            h = torch.tanh(x[t] + h @ W)
        h.square().mean().backward()
        big @ big
        if time.perf_counter() >= end:
            break


def _time_updates(U: np.ndarray, A: np.ndarray, B: np.ndarray, repeat: int) -> dict[str, float]:
    """Best time of project and transport with ``out=U`` (U is overwritten)."""
    import unitary_update as uu

    times = {}
    for name in UPDATE_NAMES:
        step = alternating_step(getattr(uu, name), U, A, B)  # a generic step every call
        step()  # warm up (Numba compilation, caches)
        times[name] = best_time(step, repeat)
    return times


def run(
    sizes: Sequence[int] = DEFAULT_SIZES,
    ranks: Sequence[int] = DEFAULT_RANKS,
    dtype: str = "float32",
    threads: int = 2,
    repeat: int = 7,
    dense_max: int = 4096,
    seed: int = 0,
    log: Callable[[str], None] = print,
    *,
    compare_threads: bool = False,
    after_torch: bool = False,
) -> list[dict[str, Any]]:
    """Measure the grid; return one row (a dict of times, ratios and memory) per (N, k).

    Parameters
    ----------
    sizes, ranks : sequences of int
        The grid of N and k.
    dtype : str
        ``float32``, ``float64``, ``complex64`` or ``complex128``.
    threads : int
        BLAS and Numba threads (set through threadpoolctl and ``numba.set_num_threads``).
    repeat : int
        Repetitions per figure (best taken); the dense methods use ``max(1, repeat // 3)``.
    dense_max : int
        Largest N at which the dense O(N^3) baselines are timed (they take minutes above 4096).
    seed : int
        Seed of the random inputs.
    log : callable
        Receives one progress line per measured row.
    compare_threads : bool
        Also time each update at one BLAS/Numba thread (keys ``*_1thread_s``).
    after_torch : bool
        After the grid, run PyTorch work in this process (:func:`torch_work`) and time each update
        of the grid again (keys ``*_after_torch_s``).  Needs torch.

    Returns
    -------
    list of dict
        Keys: ``n, k, dtype, project_s, transport_s, gemm2k_s, gemm_s, copy_s, rank_update_s,
        dense_project_s, dense_transport_s``, the memory figures ``*_peak_traced`` and
        ``*_peak_rss`` (bytes) with ``u_bytes`` and ``floor_bytes`` (the ``N x 2k`` block), and
        the optional ``*_1thread_s`` and ``*_after_torch_s``.

    Raises
    ------
    MissingExtraError
        With ``after_torch``, if torch is not installed (checked before anything is measured).

    Examples
    --------
    >>> from unitary_update.bench.cpu import run
    >>> rows = run([16], ranks=[1, 2], repeat=1, threads=1, log=lambda line: None)
    >>> [(row["n"], row["k"]) for row in rows], rows[0]["project_s"] > 0
    ([(16, 1), (16, 2)], True)
    """
    if after_torch:
        require("torch", "bench --after-torch")
    import numba
    import scipy.linalg  # noqa: F401  # load SciPy's own OpenBLAS now, so the thread limit below reaches it
    from threadpoolctl import threadpool_limits

    import unitary_update as uu
    from unitary_update._blas import add_lowrank_
    from unitary_update.reference import project_dense, transport_dense

    def set_threads(count: int) -> Any:
        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
        return threadpool_limits(count)

    rows = []
    problems = []
    rng = np.random.default_rng(seed)
    with set_threads(threads):
        for n in sizes:
            U = uu.random_unitary(n, dtype=dtype, rng=rng)
            U_copy_target = np.empty_like(U)
            X2 = rng.standard_normal((n, 2)).astype(U.dtype)
            for k in ranks:
                A = (1e-2 * rng.standard_normal((n, k)) / np.sqrt(n)).astype(U.dtype)
                B = rng.standard_normal((n, k)).astype(U.dtype)
                X2k = rng.standard_normal((n, min(n, 2 * k))).astype(U.dtype)
                problems.append((U, A, B))
                row: dict[str, Any] = {
                    "n": n,
                    "k": k,
                    "dtype": dtype,
                    "threads": threads,
                    "u_bytes": U.nbytes,
                    "floor_bytes": X2k.nbytes,
                }
                for name, t in _time_updates(U, A, B, repeat).items():
                    row[f"{name}_s"] = t
                    step = alternating_step(getattr(uu, name), U, A, B)
                    row[f"{name}_peak_traced"], row[f"{name}_peak_rss"] = _peak_extra_bytes(step)
                row["gemm2k_s"] = best_time(functools.partial(np.matmul, U, X2k), repeat)
                row["gemm_s"] = best_time(functools.partial(np.matmul, U, X2), repeat)
                row["copy_s"] = best_time(functools.partial(np.copyto, U_copy_target, U), repeat)
                row["rank_update_s"] = best_time(functools.partial(add_lowrank_, U, 1e-8 * X2, X2.copy()), repeat)
                if n <= dense_max:
                    slow = max(1, repeat // 3)
                    row["dense_project_s"] = best_time(functools.partial(project_dense, U, A, B), slow)
                    row["dense_transport_s"] = best_time(functools.partial(transport_dense, U, A, B), slow)
                else:
                    row["dense_project_s"] = row["dense_transport_s"] = float("nan")
                if compare_threads:
                    with set_threads(1):
                        for name, t in _time_updates(U, A, B, repeat).items():
                            row[f"{name}_1thread_s"] = t
                rows.append(row)
                log(
                    f"N={n} k={k}: project {row['project_s'] * 1e3:.3f} ms, transport "
                    f"{row['transport_s'] * 1e3:.3f} ms, GEMM N x 2k {row['gemm2k_s'] * 1e3:.3f} ms"
                )
        if after_torch:
            torch_work()
            for row, (U, A, B) in zip(rows, problems, strict=True):
                for name, t in _time_updates(U, A, B, repeat).items():
                    row[f"{name}_after_torch_s"] = t
                log(f"N={row['n']} k={row['k']} after torch: project {row['project_after_torch_s'] * 1e3:.3f} ms")
    return rows


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Render the rows of :func:`run` as a markdown table of times and ratios.

    Parameters
    ----------
    rows : sequence of dict
        Rows of :func:`run`.

    Returns
    -------
    str
        A markdown table, two lines per row (project and transport); the columns of the
        optional measurements appear when the rows have them.

    Examples
    --------
    >>> from unitary_update.bench.cpu import format_markdown, run
    >>> table = format_markdown(run([16], ranks=[1], repeat=1, threads=1, log=lambda line: None))
    >>> [line.split(" | ")[:4] for line in table.splitlines()[2:]]
    [['| 16', '1', 'float32', 'project'], ['| 16', '1', 'float32', 'transport']]
    """
    threads = rows[0]["threads"] if rows else 2
    extra_heads = []
    if rows and "project_1thread_s" in rows[0]:
        extra_heads.append(f"{threads} threads / 1 thread")
    if rows and "project_after_torch_s" in rows[0]:
        extra_heads.append("after torch / before")
    head_cells = [
        "N",
        "k",
        "dtype",
        "update",
        "time/step",
        "/ GEMM N x N @ N x 2k",
        "/ GEMM N x N @ N x 2",
        "/ copy of U",
        "/ in-place rank-2 BLAS update",
        "dense time",
        "dense / projUNN",
        "peak extra memory (% of U)",
        "peak extra / floor (N x 2k block)",
        *extra_heads,
    ]
    lines = ["| " + " | ".join(head_cells) + " |", "|" + "---|" * len(head_cells)]
    for row in rows:
        for name in UPDATE_NAMES:
            t = row[f"{name}_s"]
            dense = row[f"dense_{name}_s"]
            extra = max(row[f"{name}_peak_traced"], row[f"{name}_peak_rss"])
            dense_cells = "n/a | n/a" if np.isnan(dense) else f"{dense * 1e3:.1f} ms | {dense / t:.0f}x"
            cells = [
                f"{row['n']}",
                f"{row['k']}",
                row["dtype"],
                name,
                f"{t * 1e3:.3f} ms",
                f"{t / row['gemm2k_s']:.2f}",
                f"{t / row['gemm_s']:.2f}",
                f"{t / row['copy_s']:.2f}",
                f"{t / row['rank_update_s']:.2f}",
                dense_cells,
                f"{extra / row['u_bytes'] * 100:.1f}%",
                f"{extra / row['floor_bytes']:.1f}",
            ]
            if f"{name}_1thread_s" in row:
                cells.append(f"{t / row[f'{name}_1thread_s']:.2f}")
            if f"{name}_after_torch_s" in row:
                cells.append(f"{row[f'{name}_after_torch_s'] / t:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scaling(rows: Sequence[dict[str, Any]], small: int, large: int) -> dict[str, float]:
    """time(large) / time(small) for project and transport (O(N^2) gives (large/small)^2)."""
    by_n = {(r["n"], r["k"]): r for r in rows}
    k = min(r["k"] for r in rows)
    return {name: by_n[large, k][f"{name}_s"] / by_n[small, k][f"{name}_s"] for name in ("project", "transport")}


def plot(rows: Sequence[dict[str, Any]], path: str, title: str = "") -> None:
    """Draw time per step against N on log-log axes with O(N^2) and O(N^3) reference slopes.

    Parameters
    ----------
    rows : sequence of dict
        Rows of :func:`run`; those of the smallest rank are drawn.
    path : str
        The image file to write (its suffix picks the format, e.g. ``.png``).
    title : str, optional
        The figure's title (default: the update, dtype and rank).

    Raises
    ------
    ImportError
        If matplotlib is not installed (the ``plot`` extra).

    Examples
    --------
    >>> import os, tempfile
    >>> from unitary_update.bench.cpu import plot, run
    >>> rows = run([16, 32], ranks=[1], repeat=1, threads=1, log=lambda line: None)
    >>> path = os.path.join(tempfile.mkdtemp(), "time_vs_n.png")
    >>> plot(rows, path)
    >>> os.path.getsize(path) > 0
    True
    """
    plt = pyplot("bench --plot")
    k = min(r["k"] for r in rows)
    sel = sorted((r for r in rows if r["k"] == k), key=lambda r: r["n"])
    n = np.array([r["n"] for r in sel], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    series = [
        ("project", "projUNN-D (project)", "o-"),
        ("transport", "projUNN-T (transport)", "s-"),
        ("gemm", "one N x N @ N x 2 GEMM", "k--"),
        ("dense_project", "dense polar (SVD)", "^:"),
        ("dense_transport", "dense expm", "v:"),
    ]
    for key, label, style in series:
        y = np.array([r[f"{key}_s"] for r in sel])
        ok = np.isfinite(y)
        ax.loglog(n[ok], y[ok], style, label=label)
    t0 = sel[0]["project_s"]
    ax.loglog(n, t0 * (n / n[0]) ** 2, color="0.6", lw=0.8, label="O(N^2) slope")
    d0 = sel[0]["dense_project_s"]
    if np.isfinite(d0):
        ax.loglog(n, d0 * (n / n[0]) ** 3, color="0.3", lw=0.8, label="O(N^3) slope")
    ax.set_xlabel("N")
    ax.set_ylabel("seconds per step")
    ax.set_title(title or f"projUNN step, {sel[0]['dtype']}, k = {k}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_stack(
    count: int = 4096, size: int = 16, rank: int = 1, dtype: str = "complex64", threads: int = 2, repeat: int = 7
) -> list[dict[str, Any]]:
    """Time a stack of ``count`` small matrices: Numba kernel vs NumPy batched path vs a Python loop.

    Returns one row per update with the three times and the largest difference between the
    Numba and NumPy results.
    """
    import numba
    import scipy.linalg  # noqa: F401  # load SciPy's own OpenBLAS before limiting threads
    from threadpoolctl import threadpool_limits

    import unitary_update as uu

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(0)
    U0 = uu.random_unitary(size, dtype=dtype, batch_shape=(count,), rng=rng)
    A = (0.1 * (rng.standard_normal((count, size, rank)) + 1j * rng.standard_normal((count, size, rank)))).astype(dtype)
    B = (rng.standard_normal((count, size, rank)) + 1j * rng.standard_normal((count, size, rank))).astype(dtype)
    rows = []
    with threadpool_limits(threads):
        for name in ("project", "transport"):
            fn = getattr(uu, name)
            U = U0.copy()
            results = {}
            times = {}
            for backend in ("numba", "numpy"):
                with uu.options(backend=backend):
                    results[backend] = fn(U0, A, B)
                    times[backend] = best_time(functools.partial(fn, U, A, B, out=U), repeat)

            def loop(U: np.ndarray = U, fn: Callable[..., Any] = fn) -> None:
                for i in range(count):
                    fn(U[i], A[i], B[i], out=U[i])

            times["loop"] = best_time(loop, max(1, repeat // 3))
            diff = float(np.abs(results["numba"] - results["numpy"]).max())
            rows.append(
                {
                    "update": name,
                    **{f"{k}_s": v for k, v in times.items()},
                    "max_diff": diff,
                    "count": count,
                    "size": size,
                    "rank": rank,
                    "dtype": dtype,
                }
            )
    return rows


def format_stack_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Render :func:`run_stack` rows as a markdown table with the ratios."""
    lines = [
        "| stack | update | Numba kernel | NumPy batched | Python loop of single calls | NumPy / Numba "
        "| loop / Numba | max abs difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['count']} x {r['size']} x {r['size']} {r['dtype']}, k = {r['rank']} | {r['update']} "
            f"| {r['numba_s'] * 1e3:.2f} ms | {r['numpy_s'] * 1e3:.2f} ms | {r['loop_s'] * 1e3:.1f} ms "
            f"| {r['numpy_s'] / r['numba_s']:.1f}x | {r['loop_s'] / r['numba_s']:.0f}x | {r['max_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"
