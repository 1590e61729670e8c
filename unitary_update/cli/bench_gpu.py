"""GPU timings of projUNN-D/T against the dense method and the memory floor.

For N in {1024, 4096, 8192}, float32 and complex64, k in {1, 16}: a markdown table of times and
ratios (update / floor, dense / update), headed by the device and the command line; see
docs/gpu.md.  Needs CuPy and a CUDA GPU (the gpu extra); --device cpu runs the same code on
NumPy, as a dry run.
"""

from __future__ import annotations

import argparse

from ..bench.gpu import add_arguments
from ._common import check_device, check_output_path

__all__ = ["add_arguments", "run"]


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def run(args: argparse.Namespace) -> int:  # numpydoc ignore=PR01,RT01
    """Run the GPU benchmark (or its dry run on the CPU); print the table.

    Examples
    --------
    >>> from unitary_update.cli import main
    >>> main(["bench-gpu", "--device", "cpu", "--sizes", "16", "--ranks", "1"])  # doctest: +ELLIPSIS
    bench-gpu on CPU ...
    | 16 | complex64 | 1 | ...
    0
    """
    from ..bench.gpu import main

    check_device(args.device, "bench-gpu")
    check_output_path(args.output, "--output")
    main(args, "python -m unitary_update " + " ".join(args.argv))
    return 0
