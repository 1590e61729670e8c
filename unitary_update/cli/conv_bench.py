"""Batched updates of (F, C, C) stacks against a loop and the dense methods, as ratios.

A stack of F unitary C x C matrices (one per frequency of an orthogonal convolution; F = 1024 of
C = 16 and F = 64 of C = 128) is updated by one batched project / transport call, the same call
on the NumPy/LAPACK path, a Python loop of single-matrix calls and the dense batched polar factor
/ matrix exponential; the times are printed as ratios to the batched call.
"""

from __future__ import annotations

import argparse

from ._common import DTYPES, call, non_negative_int, positive_int

__all__ = ["add_arguments", "run"]


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def add_arguments(parser: argparse.ArgumentParser) -> None:  # numpydoc ignore=PR01,EX01
    """Add ``--dtype``, ``--ranks``, ``--repeat`` and ``--threads``."""
    parser.add_argument("--dtype", default="complex128", choices=DTYPES)
    parser.add_argument("--ranks", type=positive_int, nargs="+", default=[1, 4], help="update ranks k")
    parser.add_argument("--repeat", type=positive_int, default=5, help="repetitions per figure; the best is kept")
    parser.add_argument("--threads", type=non_negative_int, default=1, help="BLAS and Numba threads (0: leave as is)")


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def run(args: argparse.Namespace) -> int:  # numpydoc ignore=PR01,RT01
    """Time the batched updates with the parsed options; print the table.

    Examples
    --------
    The default stacks take a while; :func:`unitary_update.bench.conv.bench_table` times small ones:

    >>> from unitary_update.cli import main
    >>> main(["conv-bench", "--ranks", "1", "--repeat", "3"])  # doctest: +SKIP
    """
    from ..bench.conv import bench_table

    call(bench_table, args, ranks=tuple(args.ranks), threads=args.threads or None)
    return 0
