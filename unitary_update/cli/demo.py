"""One projUNN-D and one projUNN-T step beside the dense methods (the default command).

A step of rank --rank on an N x N matrix (N = 1024 by default) next to the dense O(N^3) polar
factor and matrix exponential: prints, for each update, the time of the low-rank step and of the
dense method (best of a few runs), the speed-up, the relative error against the dense result and
the unitarity error.  This is what python -m unitary_update runs without a command.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

from ..bench._timing import best_time
from ._common import DTYPES, non_negative_int, positive_int

__all__ = ["add_arguments", "run"]


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def add_arguments(parser: argparse.ArgumentParser) -> None:  # numpydoc ignore=PR01,EX01
    """Add ``--n``, ``--rank``, ``--dtype``, ``--seed`` and ``--repeat``."""
    parser.add_argument("--n", type=positive_int, default=1024, help="matrix size N (default 1024)")
    parser.add_argument("--rank", type=positive_int, default=1, help="rank k of the step (default 1)")
    parser.add_argument("--dtype", default="float64", choices=DTYPES)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--repeat", type=positive_int, default=3, help="timed runs of each method; the best is shown")


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def run(args: argparse.Namespace) -> int:  # numpydoc ignore=PR01,RT01
    """Run one step of each update beside the dense methods; print the table.

    Examples
    --------
    >>> from unitary_update.cli import main
    >>> main(["demo", "--n", "32", "--rank", "2", "--dtype", "complex128", "--repeat", "1"])  # doctest: +ELLIPSIS
    projUNN demo: N = 32, rank 2, complex128; best of 1 runs each
    update ...
    0
    """
    import unitary_update as uu
    from unitary_update.reference import project_dense, transport_dense

    rng = np.random.default_rng(args.seed)
    n, dtype = args.n, args.dtype
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    G = -0.1 * rng.standard_normal((n, n)).astype(dtype) / np.sqrt(n)
    A, B = uu.sketch(G, args.rank, rng=rng)
    print(f"projUNN demo: N = {n}, rank {args.rank}, {dtype}; best of {args.repeat} runs each")
    print(f"{'update':<10} {'low-rank':>11} {'dense':>11} {'speed-up':>9} {'rel. error':>11} {'unitarity':>10}")
    for name, fast, dense in (("project", uu.project, project_dense), ("transport", uu.transport, transport_dense)):
        result = fast(U, A, B)
        reference = dense(U, A, B)
        t_fast = best_time(functools.partial(fast, U, A, B), args.repeat)
        t_dense = best_time(functools.partial(dense, U, A, B), max(1, args.repeat // 2))
        err = float(np.linalg.norm(result - reference) / np.linalg.norm(reference))
        print(
            f"{name:<10} {t_fast * 1e3:9.2f}ms {t_dense * 1e3:9.1f}ms {t_dense / t_fast:8.0f}x "
            f"{err:11.1e} {uu.unitarity_error(result):10.1e}"
        )
    return 0
