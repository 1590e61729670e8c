"""Time a copy-task training step beside a plain NumPy step and the PyTorch autograd step.

Four steps of the same shape (copy task, float32, sequence length delay + 20) are timed back to
back in one process, with the same thread count: the library's training step (forward,
hand-written BPTT, RMSprop and the projUNN update of W), the same with a plain RMSprop update of W
(the overhead of keeping W unitary), a textbook NumPy RNN step with SGD, and the same model in
PyTorch (autograd, torch.optim.RMSprop; skipped without torch); printed as times, steps per
second and ratios, with the library's step split into its parts."""

from __future__ import annotations

import argparse

from ._common import UPDATES, blas_threads, call, check_output_path, positive_int

__all__ = ["add_arguments", "run"]


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def add_arguments(parser: argparse.ArgumentParser) -> None:  # numpydoc ignore=PR01,EX01
    """Add the copy task's shape, the update, the timing settings and ``--json``."""
    parser.add_argument(
        "--length", dest="delay", type=positive_int, default=1000, help="copy delay T (sequence T + 20)"
    )
    parser.add_argument("--hidden", type=positive_int, default=190, help="hidden size N (default 190)")
    parser.add_argument(
        "--batch-size", dest="batch", type=positive_int, default=128, help="sequences per step (default 128)"
    )
    parser.add_argument("--rank", type=positive_int, default=1)
    parser.add_argument("--update", default="project", choices=UPDATES)
    parser.add_argument("--repeat", type=positive_int, default=3, help="timed steps per kind; the best is kept")
    parser.add_argument("--threads", type=positive_int, default=1, help="BLAS threads (default 1)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results to this JSON file")


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def run(args: argparse.Namespace) -> int:  # numpydoc ignore=PR01,RT01
    """Time the steps; print the table.

    Examples
    --------
    >>> from unitary_update.cli import main
    >>> main(["bench-rnn", "--length", "2", "--hidden", "8", "--batch-size", "4"])  # doctest: +ELLIPSIS
    copy step (copy T=22 (delay 2), hidden 8, batch 4, rank 1, project, float32), best of 3, BLAS threads 1
    ...
    0
    """
    from ..bench.rnn import run_benchmark

    check_output_path(args.json_path, "--json")
    with blas_threads(args.threads):
        call(run_benchmark, args)
    return 0
