"""GPU benchmark: projUNN-D/T against the dense GPU methods and the memory floor, in one run.

``python -m unitary_update bench-gpu`` times, for every N, dtype and rank k:

* ``project`` and ``transport`` with ``out=U`` (in place) and ``check_finite=False`` (the
  sync-free hot path; see ``docs/gpu.md``);
* the dense O(N^3) methods of :mod:`unitary_update.reference` on the same device (a CuPy SVD
  for the polar factor, a CuPy ``eigh`` for the exponential), measured once per (N, dtype) with
  the first rank: their cost does not depend on k;
* the memory floor: ``passes`` (default 3) passes over U's bytes at the device-to-device copy
  bandwidth measured at the start of the run (a copy reads and writes, so the bandwidth is
  ``2 * bytes / time``).

and writes a markdown table of times and ratios (``update / floor``, ``dense / update``) with the
device name and the command line.  The timing and table logic is written against ``xp`` and runs
on NumPy too (``--device cpu``), which is how it is tested without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .._config import options
from .._validation import FLOAT_DTYPES, check_int
from .._xp import get_namespace, is_cupy
from ..random import normalize_rng, standard_normal

__all__ = ["BenchRow", "add_arguments", "copy_bandwidth", "main", "memory_floor_seconds", "run", "to_markdown"]

Timer = Callable[[Callable[[], Any], int, int], float]
"""``timer(fn, repeat, warmup)`` -> seconds per call (median of ``repeat`` after ``warmup`` calls)."""

TARGET_FLOOR_RATIO = 3.0
TARGET_DENSE_SPEEDUP = 100.0


def _ratio(numerator: str, denominator: str, doc: str) -> Any:
    """A read-only property ``self.<numerator> / self.<denominator>`` with docstring ``doc``."""

    def ratio(self: Any) -> float:
        return float(getattr(self, numerator) / getattr(self, denominator))

    ratio.__doc__ = doc
    return property(ratio)


@dataclasses.dataclass(frozen=True)
class BenchRow:
    """One (N, dtype, k) measurement; times in seconds, and the ratios the table reports.

    Parameters
    ----------
    n : int
        Matrix size N.
    dtype : str
        The matrices' dtype name.
    k : int
        Rank of the update.
    project_s, transport_s : float
        Seconds per in-place projUNN-D and projUNN-T update.
    dense_project_s, dense_transport_s : float
        Seconds per dense polar factor (SVD) and dense exponential (``eigh``).
    floor_s : float
        The memory floor: seconds to stream over U's bytes ``passes`` times.

    Examples
    --------
    >>> from unitary_update.bench.gpu import BenchRow
    >>> row = BenchRow(4096, "float32", 1, 2e-3, 3e-3, 0.5, 0.6, 1e-3)
    >>> row.project_floor_ratio, row.transport_speedup
    (2.0, 200.0)
    """

    n: int
    dtype: str
    k: int
    project_s: float
    transport_s: float
    dense_project_s: float
    dense_transport_s: float
    floor_s: float

    project_floor_ratio = _ratio("project_s", "floor_s", "projUNN-D time over the memory floor (1 would be ideal).")
    transport_floor_ratio = _ratio("transport_s", "floor_s", "projUNN-T time over the memory floor.")
    project_speedup = _ratio("dense_project_s", "project_s", "Dense polar factor time over projUNN-D time.")
    transport_speedup = _ratio("dense_transport_s", "transport_s", "Dense exponential time over projUNN-T time.")


def memory_floor_seconds(n: int, dtype: Any, bandwidth: float, passes: int = 3) -> float:
    """Seconds to stream ``passes`` times over an N x N matrix of ``dtype`` at ``bandwidth`` bytes/s.

    Parameters
    ----------
    n : int
        Matrix size N.
    dtype : dtype-like
        Element type of the matrix.
    bandwidth : float
        Bytes per second.
    passes : int, default 3
        Passes over the matrix (an in-place update reads U, writes U and reads it once more).

    Returns
    -------
    float
        ``passes * n * n * itemsize / bandwidth``.

    Raises
    ------
    ValueError
        If ``bandwidth`` is not positive.

    Examples
    --------
    >>> from unitary_update.bench.gpu import memory_floor_seconds
    >>> memory_floor_seconds(1024, "float32", bandwidth=4 * 1024**2, passes=3)
    3.0
    """
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive; got {bandwidth}")
    return passes * n * n * np.dtype(dtype).itemsize / bandwidth


def make_timer(xp: ModuleType) -> Timer:
    """A timer for the namespace: CUDA events on the current stream for CuPy, ``perf_counter`` for NumPy."""
    if is_cupy(xp):

        def cuda_timer(fn: Callable[[], Any], repeat: int, warmup: int) -> float:
            stream = xp.cuda.get_current_stream()
            for _ in range(warmup):
                fn()
            stream.synchronize()
            times = []
            for _ in range(repeat):
                start, end = xp.cuda.Event(), xp.cuda.Event()
                start.record(stream)
                fn()
                end.record(stream)
                end.synchronize()
                times.append(xp.cuda.get_elapsed_time(start, end) / 1e3)
            return statistics.median(times)

        return cuda_timer

    def host_timer(fn: Callable[[], Any], repeat: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return host_timer


def copy_bandwidth(xp: ModuleType, timer: Timer, nbytes: int = 1 << 30, repeat: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s: ``2 * nbytes / t`` for ``dst[...] = src``.

    Parameters
    ----------
    xp : module
        The array namespace (NumPy or CuPy) whose device is measured.
    timer : callable
        ``timer(fn, repeat, warmup)`` -> seconds per call (see :func:`make_timer`).
    nbytes : int, default 1 GiB
        Size of the copied buffer.
    repeat : int, default 10
        Timed copies (the median is taken).

    Returns
    -------
    float
        Bytes per second (a copy reads and writes each byte once).

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.bench.gpu import copy_bandwidth, make_timer
    >>> copy_bandwidth(np, make_timer(np), nbytes=1 << 16, repeat=3) > 0
    True
    """
    src = xp.ones(max(1, nbytes // 4), dtype=np.float32)
    dst = xp.empty_like(src)

    def copy() -> None:
        dst[...] = src

    return 2 * src.nbytes / timer(copy, repeat, 2)


def device_name(xp: ModuleType) -> str:
    """A readable name of the device the namespace computes on."""
    if is_cupy(xp):
        dev = xp.cuda.Device()
        props = xp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        return f"{name} (device {dev.id}, {props['totalGlobalMem'] / 2**30:.0f} GiB; CuPy {xp.__version__})"
    import platform

    return f"CPU {platform.processor() or platform.machine()} (NumPy {np.__version__})"


def _random_unitary(xp: ModuleType, n: int, dtype: Any, rng: np.random.Generator) -> Any:
    """An N x N unitary on the namespace's device (QR of a Gaussian, in double, on the device)."""
    double = np.complex128 if np.dtype(dtype).kind == "c" else np.float64
    Q, _ = xp.linalg.qr(standard_normal(xp, rng, (n, n), double))
    return Q.astype(dtype)


def run(
    xp: ModuleType,
    sizes: Sequence[int],
    dtypes: Sequence[str],
    ranks: Sequence[int],
    *,
    repeat: int = 10,
    dense_repeat: int = 1,
    passes: int = 3,
    bandwidth: float | None = None,
    timer: Timer | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[list[BenchRow], float]:
    """Measure every (N, dtype, k); return the rows and the copy bandwidth used for the floor.

    Parameters
    ----------
    xp : module
        The array namespace: CuPy (the benchmark) or NumPy (a dry run on the CPU).
    sizes, dtypes, ranks : sequences
        The grid of N, dtype names and k.
    repeat : int, default 10
        Timed calls per update (median, after 2 warm-up calls).
    dense_repeat : int, default 1
        Timed calls per dense method, measured once per (N, dtype) at the first rank.
    passes : int, default 3
        Passes over U in the memory floor.
    bandwidth : float, optional
        Copy bandwidth for the floor (bytes/s); measured with :func:`copy_bandwidth` when None.
    timer : callable, optional
        ``timer(fn, repeat, warmup)`` -> seconds (default :func:`make_timer` of ``xp``).
    seed : int, default 0
        Seed of the random matrices.
    log : callable, optional
        Receives each row as a markdown table line as soon as it is measured.

    Returns
    -------
    rows : list of BenchRow
        One row per (N, dtype, k), in grid order.
    bandwidth : float
        The copy bandwidth used for the floor.

    Raises
    ------
    TypeError, ValueError
        For a size, rank, ``repeat``, ``dense_repeat`` or ``passes`` that is not an integer
        >= 1 (checked before anything is measured).

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.bench.gpu import run
    >>> rows, bandwidth = run(np, [16], ["float64"], [1], repeat=1)
    >>> [(r.n, r.dtype, r.k) for r in rows], bandwidth > 0
    ([(16, 'float64', 1)], True)
    """
    from .. import project, transport
    from ..reference import project_dense, transport_dense

    sizes = [check_int(n, "size", low=1) for n in sizes]
    ranks = [check_int(k, "rank", low=1) for k in ranks]
    repeat = check_int(repeat, "repeat", low=1)
    dense_repeat = check_int(dense_repeat, "dense_repeat", low=1)
    passes = check_int(passes, "passes", low=1)
    timer = timer or make_timer(xp)
    if bandwidth is None:
        bandwidth = copy_bandwidth(xp, timer, nbytes=min(1 << 30, 16 * max(sizes) ** 2))
    rng = normalize_rng(seed)
    rows = []
    with options(check_finite=False):
        for n in sizes:
            for dtype in dtypes:
                U = _random_unitary(xp, n, dtype, rng)
                dense: tuple[float, float] | None = None
                for k in ranks:
                    A = standard_normal(xp, rng, (n, k), dtype) * (1e-2 / math.sqrt(n))
                    B = standard_normal(xp, rng, (n, k), dtype)
                    t_project = timer(functools.partial(project, U, A, B, out=U), repeat, 2)
                    t_transport = timer(functools.partial(transport, U, A, B, out=U), repeat, 2)
                    if dense is None:
                        warm = 1 if n <= 2048 else 0  # an O(N^3) warm-up at large N costs more than it tells
                        dense = (
                            timer(functools.partial(project_dense, U, A, B), dense_repeat, warm),
                            timer(functools.partial(transport_dense, U, A, B), dense_repeat, warm),
                        )
                    row = BenchRow(
                        n=n,
                        dtype=str(np.dtype(dtype)),
                        k=k,
                        project_s=t_project,
                        transport_s=t_transport,
                        dense_project_s=dense[0],
                        dense_transport_s=dense[1],
                        floor_s=memory_floor_seconds(n, dtype, bandwidth, passes),
                    )
                    rows.append(row)
                    if log is not None:
                        log(_format_row(row))
    return rows, bandwidth


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4g}"


def _format_row(row: BenchRow) -> str:
    return (
        f"| {row.n} | {row.dtype} | {row.k} | {_ms(row.project_s)} | {_ms(row.transport_s)} "
        f"| {_ms(row.dense_project_s)} | {_ms(row.dense_transport_s)} | {_ms(row.floor_s)} "
        f"| {row.project_floor_ratio:.2f} | {row.transport_floor_ratio:.2f} "
        f"| {row.project_speedup:.0f} | {row.transport_speedup:.0f} |"
    )


def target_lines(rows: Sequence[BenchRow]) -> list[str]:
    """The performance targets at the largest N with k = 1: within 3x of the floor, >= 100x the dense method.

    Parameters
    ----------
    rows : sequence of BenchRow
        Measured rows.

    Returns
    -------
    list of str
        One markdown bullet per update at the largest N with k = 1, saying whether it meets
        both targets.

    Examples
    --------
    >>> from unitary_update.bench.gpu import BenchRow, target_lines
    >>> target_lines([BenchRow(8192, "float32", 1, 2e-3, 9e-3, 1.0, 1.0, 1e-3)])[0]  # doctest: +ELLIPSIS
    '- N = 8192, float32, k = 1, project: 2.00x the floor, 500x faster than dense -> meets the target ...'
    """
    lines = []
    largest = max((r.n for r in rows), default=0)
    for r in rows:
        if r.n != largest or r.k != 1:
            continue
        for name, ratio, speedup in (
            ("project", r.project_floor_ratio, r.project_speedup),
            ("transport", r.transport_floor_ratio, r.transport_speedup),
        ):
            verdict = "meets" if ratio <= TARGET_FLOOR_RATIO and speedup >= TARGET_DENSE_SPEEDUP else "misses"
            lines.append(
                f"- N = {r.n}, {r.dtype}, k = 1, {name}: {ratio:.2f}x the floor, {speedup:.0f}x faster than dense "
                f"-> {verdict} the target (<= {TARGET_FLOOR_RATIO:g}x, >= {TARGET_DENSE_SPEEDUP:g}x)"
            )
    return lines


def to_markdown(
    rows: Sequence[BenchRow],
    *,
    device: str,
    command: str,
    bandwidth: float,
    passes: int = 3,
    repeat: int = 10,
    dense_repeat: int = 1,
    date: str | None = None,
) -> str:
    """The benchmark table as markdown, headed by the device, the command and the floor's bandwidth.

    Parameters
    ----------
    rows : sequence of BenchRow
        Measured rows, one table line each.
    device : str
        The device's name (:func:`device_name`).
    command : str
        The command line that produced the rows.
    bandwidth : float
        The copy bandwidth of the floor (bytes/s).
    passes, repeat, dense_repeat : int
        The settings of the run, stated in the header.
    date : str, optional
        The date line (default: now, UTC).

    Returns
    -------
    str
        The markdown text: a header list, the table and the targets (:func:`target_lines`).

    Examples
    --------
    >>> from unitary_update.bench.gpu import BenchRow, to_markdown
    >>> rows = [BenchRow(1024, "float32", 1, 2e-3, 3e-3, 1.0, 1.0, 1e-3)]
    >>> text = to_markdown(rows, device="CPU", command="bench-gpu --device cpu", bandwidth=1e9, date="today")
    >>> [line for line in text.splitlines() if line.startswith("| 1024")]
    ['| 1024 | float32 | 1 | 2 | 3 | 1000 | 1000 | 1 | 2.00 | 3.00 | 500 | 333 |']
    """
    date = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## GPU benchmark: projUNN updates vs the dense method and the memory floor",
        "",
        f"- device: {device}",
        f"- command: `{command}`",
        f"- date: {date}",
        f"- memory floor: {passes} passes over U at the measured device-to-device copy bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s",
        f"- updates: `out=U`, `check_finite=False`, median of {repeat} after 2 warm-up calls; "
        f"dense (`unitary_update.reference`, SVD / eigh on the same device): median of {dense_repeat}, "
        "measured at the first k (its cost does not depend on k)",
        "",
        "| N | dtype | k | project ms | transport ms | dense project ms | dense transport ms | floor ms "
        "| project / floor | transport / floor | dense / project | dense / transport |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(_format_row(r) for r in rows),
    ]
    targets = target_lines(rows)
    if targets:
        lines += ["", "Targets:", "", *targets]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the ``bench-gpu`` command to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The command's parser.

    Examples
    --------
    >>> import argparse
    >>> from unitary_update.bench.gpu import add_arguments
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> parser.parse_args(["--sizes", "64"]).sizes, parser.parse_args([]).device
    ([64], 'gpu')
    """
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192], help="matrix sizes N")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "complex64"],
        choices=[np.dtype(t).name for t in FLOAT_DTYPES],
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 16], help="update ranks k")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per update (median)")
    parser.add_argument("--dense-repeat", type=int, default=1, help="timed calls per dense method (median)")
    parser.add_argument("--passes", type=int, default=3, help="passes over U in the memory floor")
    parser.add_argument("--device", default="gpu", help="'gpu' (CuPy, default) or 'cpu' (NumPy: a dry run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the markdown table to this file")


def main(args: argparse.Namespace, command: str) -> str:
    """Run the benchmark described by parsed ``args``; print the table, write it to ``--output``.

    Parameters
    ----------
    args : argparse.Namespace
        The options of :func:`add_arguments`, parsed.
    command : str
        The command line, stated in the table's header.

    Returns
    -------
    str
        The markdown table (:func:`to_markdown`).

    Raises
    ------
    ValueError
        If a size or rank is not positive, or a rank exceeds a size.

    Examples
    --------
    >>> import argparse
    >>> from unitary_update.bench.gpu import add_arguments, main
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> args = parser.parse_args(["--device", "cpu", "--sizes", "16", "--ranks", "1", "--repeat", "1"])
    >>> table = main(args, "bench-gpu --device cpu")  # doctest: +ELLIPSIS
    bench-gpu on CPU ...
    >>> table.count("| 16 |")
    2
    """
    for name in ("sizes", "ranks"):
        if any(v < 1 for v in getattr(args, name)):
            raise ValueError(f"--{name} must be positive integers; got {getattr(args, name)}")
    if any(k > n for k in args.ranks for n in args.sizes):
        raise ValueError(f"every rank must be <= every size; got ranks {args.ranks}, sizes {args.sizes}")
    xp = get_namespace(args.device)
    device = device_name(xp)
    print(f"bench-gpu on {device}", flush=True)
    rows, bandwidth = run(
        xp,
        args.sizes,
        args.dtypes,
        args.ranks,
        repeat=args.repeat,
        dense_repeat=args.dense_repeat,
        passes=args.passes,
        seed=args.seed,
        log=lambda line: print(line, flush=True),
    )
    table = to_markdown(
        rows,
        device=device,
        command=command,
        bandwidth=bandwidth,
        passes=args.passes,
        repeat=args.repeat,
        dense_repeat=args.dense_repeat,
    )
    print(table)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(table)
    return table
