"""Draw a run's loss curves against its memoryless baseline to RUN_DIR/loss.png.

The training loss (averaged over each log period) and the held-out loss, on a log scale, with the
loss of a model without memory as a dashed line; for permuted MNIST the held-out accuracy too.
Needs matplotlib (the plot extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UsageError

__all__ = ["add_arguments", "run"]


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def add_arguments(parser: argparse.ArgumentParser) -> None:  # numpydoc ignore=PR01,EX01
    """Add the run directory and ``--out``."""
    parser.add_argument("run_dir", help="a run directory written by the train command")
    parser.add_argument("--out", default=None, help="the image to write (default RUN_DIR/loss.png)")


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def run(args: argparse.Namespace) -> int:  # numpydoc ignore=PR01,RT01
    """Draw the run's plot; print the path of the image.

    Raises
    ------
    UsageError
        If ``run_dir`` holds no ``metrics.jsonl``.
    ImportError
        If matplotlib is not installed.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from unitary_update.cli import main
    >>> run_dir = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (run_dir / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 0.5, "baseline": 0.2}')
    >>> main(["plot", str(run_dir)])  # doctest: +ELLIPSIS
    /.../loss.png
    0
    """
    from ..experiments.plots import plot_run

    if not (Path(args.run_dir) / "metrics.jsonl").is_file():
        raise UsageError(f"{args.run_dir} is not a run directory (no metrics.jsonl)")
    try:
        print(plot_run(args.run_dir, args.out))
    except ValueError as err:  # a metrics.jsonl or config.json that is not a run's
        raise UsageError(str(err)) from None
    return 0
