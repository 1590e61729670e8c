"""ProjUNN (torch optimizer) side by side with geotorch and torch's orthogonal parametrization.

Two tables, ratios measured in this one run: the cost of one training step of a single N x N
orthogonal weight (ProjUNN at ranks 1 and 8 against geotorch.orthogonal and
torch.nn.utils.parametrizations.orthogonal: forward parametrization, backward and optimizer
step), and geotorch's copying-problem model trained with each method (time per step and
held-out loss at equal steps, each method's orthogonal learning rate picked on the same grid).
Needs torch (the torch extra); geotorch is optional (its rows are skipped without it).  See
docs/torch.md.
"""

from __future__ import annotations

import argparse

from ._common import blas_threads, call, check_output_path, positive_float, positive_int, require

__all__ = ["add_arguments", "run"]


def _positive_ints(text: str) -> list[int]:
    """Comma-separated :func:`positive_int` values ('' gives none)."""
    try:
        return [positive_int(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers; got {text!r}") from None


def _positive_floats(text: str) -> list[float]:
    """Comma-separated :func:`positive_float` values, at least one."""
    try:
        values = [positive_float(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers; got {text!r}")
    return values


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def add_arguments(parser: argparse.ArgumentParser) -> None:  # numpydoc ignore=PR01,EX01
    """Add the sizes and ranks of the step-cost table, the copy task's settings, threads and ``--json``."""
    parser.add_argument("--sizes", type=_positive_ints, default=[128, 512, 1024, 2048, 4096],
                        help="comma-separated sizes N of the step-cost table ('' skips it)")  # fmt: skip
    parser.add_argument(
        "--ranks", type=_positive_ints, default=[1, 8], help="comma-separated ProjUNN ranks (default 1,8)"
    )
    parser.add_argument("--repeat", type=positive_int, default=3, help="timed steps per method; the best is kept")
    parser.add_argument("--no-copy", dest="copy", action="store_false", help="skip the copy task")
    parser.add_argument("--delay", type=positive_int, default=50, help="copy delay (sequences of delay + 20)")
    parser.add_argument("--batch-size", dest="batch", type=positive_int, default=64, help="copy-task batch size")
    parser.add_argument("--hidden", type=positive_int, default=190, help="copy-task hidden size (geotorch's: 190)")
    parser.add_argument("--steps", type=positive_int, default=200, help="copy-task training steps")
    parser.add_argument(
        "--lrs", type=_positive_floats, default=[2e-4, 1e-3, 5e-3], help="the grid of orthogonal learning rates"
    )
    parser.add_argument("--eval-every", type=positive_int, default=10, help="held-out loss every this many steps")
    parser.add_argument("--copy-ranks", dest="copy_ranks", type=_positive_ints, default=[1, 8],
                        help="comma-separated ProjUNN ranks of the copy task")  # fmt: skip
    parser.add_argument("--threads", type=positive_int, default=1, help="torch and BLAS threads (default 1)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results to this JSON file")


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def run(args: argparse.Namespace) -> int:  # numpydoc ignore=PR01,RT01
    """Run both measurements; print the tables.

    Raises
    ------
    ValueError
        If a rank exceeds a size (or no rank is given).
    MissingExtraError
        If torch is not installed.

    Examples
    --------
    >>> from unitary_update.cli import main
    >>> main(["bench-torch", "--sizes", "16", "--ranks", "1", "--repeat", "1", "--no-copy"])  # doctest: +ELLIPSIS
    per-step cost of one N x N orthogonal weight ...
    | ProjUNN k=1 | ... (1x) |
    ...
    0
    """
    check_output_path(args.json_path, "--json")
    torch = require("torch", "bench-torch")
    if not args.ranks:
        raise ValueError("--ranks must name at least one rank")
    if any(k > n for k in args.ranks for n in args.sizes):
        raise ValueError(f"every rank must be <= every size; got ranks {args.ranks}, sizes {args.sizes}")
    from ..bench.torch_compare import run_benchmark

    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with blas_threads(args.threads):
            call(run_benchmark, args)
    finally:
        torch.set_num_threads(previous)
    return 0
