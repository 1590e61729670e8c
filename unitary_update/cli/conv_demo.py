"""Deep orthogonal convolutions on MNIST beside the unconstrained network.

A deep stack of full-width orthogonal convolutions with MaxMin and a linear classifier, trained on
MNIST downsampled to 14 x 14, beside the same network without the constraint (same initial
weights, same batches): prints the test accuracy, the gradient norm at the first layer and the
unitarity error as training goes, and writes a JSON log (--out) and a figure (--plot, needs
matplotlib: the plot extra).  The MNIST IDX files are read from --data; nothing is downloaded.
"""

from __future__ import annotations

import argparse

from ._common import call, non_negative_int, positive_float, positive_int, require

__all__ = ["add_arguments", "run"]


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def add_arguments(parser: argparse.ArgumentParser) -> None:  # numpydoc ignore=PR01,EX01
    """Add the data folder, the network's shape, the training settings and the outputs."""
    parser.add_argument(
        "--data", dest="data_dir", default="../shared/data/mnist", help="folder with the MNIST IDX files"
    )
    parser.add_argument("--depth", type=positive_int, default=32, help="convolution layers (default 32)")
    parser.add_argument("--channels", type=positive_int, default=8, help="channels C (default 8)")
    parser.add_argument("--steps", type=positive_int, default=600)
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--lr", type=positive_float, default=0.1, help="learning rate of the convolutions")
    parser.add_argument("--lr-classifier", type=positive_float, default=0.1)
    parser.add_argument("--rank", type=positive_int, default=2, help="rank of the per-frequency projUNN-T update")
    parser.add_argument(
        "--baseline-lrs", type=positive_float, nargs="+", default=None, help="lrs of the unconstrained runs"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", default=None, help="JSON log to write")
    parser.add_argument("--plot", default=None, help="PNG to write (needs matplotlib)")


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def run(args: argparse.Namespace) -> int:  # numpydoc ignore=PR01,RT01
    """Train both networks with the parsed options; print their progress and final accuracies.

    Raises
    ------
    FileNotFoundError
        If an MNIST file is missing from ``--data``.
    ImportError
        With ``--plot``, if matplotlib is not installed (checked before training).

    Examples
    --------
    >>> from unitary_update.cli import main
    >>> main(["conv-demo", "--data", "/nonexistent"])
    2
    """
    from ..experiments.conv_mnist import train_mnist

    if args.plot is not None:
        require("matplotlib", "conv-demo --plot")
    call(train_mnist, args, baseline_lrs=tuple(args.baseline_lrs) if args.baseline_lrs else None)
    return 0
