"""Unitarity drift over many float32 steps, with and without drift control.

Runs 100,000 random projUNN steps at N = 128 for both updates, each without drift control and with the
default DriftControl(), and prints the unitarity error ||U^H U - I||_F over time (at steps 0, 1,
2, 4, 8, ... and the last record) with the largest and final errors and the number of
retractions.  See docs/robustness.md.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import DTYPES, UPDATES, call, check_output_path, non_negative_int, positive_float, positive_int

__all__ = ["add_arguments", "run"]


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def add_arguments(parser: argparse.ArgumentParser) -> None:  # numpydoc ignore=PR01,EX01
    """Add the matrix, step and record options of the soak."""
    parser.add_argument("--n", type=positive_int, default=128, help="matrix size N (default 128)")
    parser.add_argument("--steps", type=positive_int, default=100_000, help="random steps per run (default 100000)")
    parser.add_argument("--rank", type=positive_int, default=1)
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument(
        "--step-size", type=positive_float, default=1e-2, help="Frobenius norm of each step (default 0.01)"
    )
    parser.add_argument(
        "--record-every", type=positive_int, default=1000, help="record the error every this many steps"
    )
    parser.add_argument("--json", dest="json_path", default=None, help="also write the records to this file")
    parser.add_argument("--seed", type=non_negative_int, default=0)


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def run(args: argparse.Namespace) -> int:  # numpydoc ignore=PR01,RT01
    """Soak both updates with and without the default drift control; print a table.

    Examples
    --------
    >>> from unitary_update.cli import main
    >>> main(["soak", "--n", "8", "--steps", "20", "--record-every", "10"])  # doctest: +ELLIPSIS
    soak: N = 8, 20 steps of rank 1, float32, step norm 0.01, seed 0
    ...
          20 ...
    0
    """
    from .._retract import DriftControl
    from ..bench.soak import soak

    check_output_path(args.json_path, "--json")
    runs: dict[str, Any] = {}
    print(
        f"soak: N = {args.n}, {args.steps} steps of rank {args.rank}, {args.dtype}, "
        f"step norm {args.step_size:g}, seed {args.seed}"
    )
    for update in UPDATES:
        for label, drift in (("none", None), ("default", DriftControl())):
            name = f"{update}/{label}"
            r = runs[name] = call(soak, args, update=update, drift=drift)
            print(
                f"  {name:<18} max error {r['max_error']:.2e}  final {r['final_error']:.2e}  "
                f"retractions {r['retractions']:>5}  {r['seconds']:.1f}s",
                flush=True,
            )
    names = list(runs)
    recorded = runs[names[0]]["step"]
    shown = sorted({i for i in range(len(recorded)) if i == 0 or (i & (i - 1)) == 0} | {len(recorded) - 1})
    print("unitarity_error ||U^H U - I||_F by step (drift control: none / DriftControl() defaults)")
    print(f"{'step':>8} " + " ".join(f"{name:>19}" for name in names))
    for i in shown:
        print(f"{recorded[i]:>8} " + " ".join(f"{runs[name]['error'][i]:>19.2e}" for name in names))
    if args.json_path is not None:
        with open(args.json_path, "w") as f:
            json.dump(runs, f, indent=1)
    return 0
