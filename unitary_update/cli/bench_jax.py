"""Time the jitted JAX update against the NumPy path on the CPU (needs the jax extra).

For N in {256, 1024, 4096} and k in {1, 16} (float32 by default): projUNN-D and projUNN-T through
NumPy in place (out=U) and through jax.jit(unitary_update.jax.project / transport) on JAX CPU
arrays (returning a new array, and with U donated), with the ratios JAX / NumPy from the same
run, as a markdown table; see docs/jax.md.  One BLAS, Numba and XLA thread unless --threads says
otherwise.
"""

from __future__ import annotations

import argparse

from ..bench.jax_compare import add_arguments
from ._common import require

__all__ = ["add_arguments", "run"]


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli;
# its example would need the optional jax extra (tests/cli/test_bench_jax.py runs it)
def run(args: argparse.Namespace) -> int:  # numpydoc ignore=PR01,RT01,EX01
    """Run the JAX-vs-NumPy benchmark; print the table."""
    require("jax", "bench-jax")
    from ..bench.jax_compare import main

    main(args, "python -m unitary_update " + " ".join(args.argv))
    return 0
