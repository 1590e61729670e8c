"""Time projUNN steps against GEMM, copy, rank update and dense baselines.

Time per step of project and transport (out=U) for a grid of N and k, as ratios to baselines
measured in the same run: one N x N @ N x 2k GEMM, one N x N @ N x 2 GEMM, a copy of U, the
in-place BLAS rank update and the dense O(N^3) methods; the table also gives the peak extra memory
of the updates against the memory floor (the N x 2k block U W).  --compare-threads adds each
update at one thread, --after-torch each update again after PyTorch work in the same process.
--plot FILE.png draws time against N on log-log axes (needs matplotlib, the plot extra);
--stack times a stack of 4096 16 x 16 complex64 matrices instead.  The BLAS runs with its
default settings, as in a user's process (the updates use one BLAS library, NumPy's, so no
second idle thread pool competes for the cores).
"""

from __future__ import annotations

import argparse

from ..bench.cpu import DEFAULT_RANKS, DEFAULT_SIZES
from ._common import DTYPES, check_output_path, non_negative_int, positive_int, require

__all__ = ["add_arguments", "run"]


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def add_arguments(parser: argparse.ArgumentParser) -> None:  # numpydoc ignore=PR01,EX01
    """Add the grid (``--n``, ``--rank``, ``--dtype``), the timing settings and the outputs."""
    parser.add_argument("--n", type=positive_int, nargs="+", default=list(DEFAULT_SIZES), help="matrix sizes N")
    parser.add_argument("--rank", type=positive_int, nargs="+", default=list(DEFAULT_RANKS), help="ranks k")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--threads", type=positive_int, default=2, help="BLAS and Numba threads (default 2)")
    parser.add_argument("--repeat", type=positive_int, default=7, help="repetitions per figure; the best is kept")
    parser.add_argument(
        "--dense-max", type=non_negative_int, default=4096, help="largest N at which dense baselines run"
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw time vs N (log-log) with O(N^2), O(N^3) slopes")
    parser.add_argument("--markdown", metavar="FILE.md", help="also write the table (and machine line) here")
    parser.add_argument(
        "--compare-threads", action="store_true", help="also time each update at 1 thread (ratio column)"
    )
    parser.add_argument(
        "--after-torch",
        action="store_true",
        help="then run PyTorch work in this process and time each update again (needs torch)",
    )
    parser.add_argument(
        "--stack",
        action="store_true",
        help="time a stack of 4096 16 x 16 complex64 matrices instead (Numba/NumPy/loop)",
    )


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def run(args: argparse.Namespace) -> int:  # numpydoc ignore=PR01,RT01
    """Measure the grid and print the table.

    Raises
    ------
    ImportError
        With ``--plot``, if matplotlib is not installed, with ``--after-torch`` if torch is not
        (checked before anything is measured).

    Examples
    --------
    A run takes minutes, so it is shown, not run here:

    >>> from unitary_update.cli import main
    >>> main(["bench", "--n", "256", "1024", "--repeat", "3"])  # doctest: +SKIP
    """
    check_output_path(args.plot, "--plot")
    check_output_path(args.markdown, "--markdown")
    if args.plot:
        require("matplotlib", "bench --plot")
    if args.after_torch:
        require("torch", "bench --after-torch")
    from ..bench import cpu

    machine = cpu.machine_description(args.threads)
    print(f"# projUNN bench: {machine}")
    if args.stack:
        table = cpu.format_stack_markdown(cpu.run_stack(threads=args.threads, repeat=args.repeat))
        print(table)
    else:
        rows = cpu.run(
            args.n,
            args.rank,
            args.dtype,
            args.threads,
            args.repeat,
            args.dense_max,
            compare_threads=args.compare_threads,
            after_torch=args.after_torch,
        )
        table = cpu.format_markdown(rows)
        print(table)
        ns = sorted({r["n"] for r in rows})
        if len(ns) >= 2:
            small = 1024 if 1024 in ns else ns[0]
            ratios = cpu.scaling(rows, small, ns[-1])
            print(
                f"scaling time(N={ns[-1]}) / time(N={small}): " + ", ".join(f"{k} {v:.1f}" for k, v in ratios.items())
            )
        if args.plot:
            cpu.plot(rows, args.plot)
            print(f"plot written to {args.plot}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"Command: `python -m unitary_update {' '.join(args.argv)}`\n\nMachine: {machine}\n\n{table}")
    return 0
