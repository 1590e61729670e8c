"""Small updates on one BLAS thread (``_threads.SERIAL_MAX_WORK``) against the same updates on all threads.

Usage (from the repository root): ``python docs/benchmarks/serial_small_updates.py [--repeat 7]``.
Prints, for N in {128, 190, 256, 384, 512}, k in {1, 4, 8, 16}, float32 and complex64, project
and transport with ``out=U``: the best time per call with the library's policy (an update below
``SERIAL_MAX_WORK`` multiply-adds runs on one BLAS thread) and with the policy switched off
(``SERIAL_MAX_WORK = 0``: every product may use all BLAS threads), and their ratio.  The two
settings alternate round by round in one process, so both see the same machine.  Rows at or above
the threshold run the same code in both columns (a check of the timing noise).  Run it once on an
idle machine and once while other processes hold the cores; say which in the table.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

import unitary_update as uu
from unitary_update import _lowrank, _threads
from unitary_update.bench._timing import alternating_step, per_call_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="rounds per setting (best is kept)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    policy = _threads.SERIAL_MAX_WORK
    print("N k dtype update | work / SERIAL_MAX_WORK | policy (us) | all threads (us) | all / policy")
    for dt in (np.float32, np.complex64):
        for n in (128, 190, 256, 384, 512):
            for k in (1, 4, 8, 16):
                U = uu.random_unitary(n, dtype=dt, rng=rng)
                A = (rng.standard_normal((n, k)) * 1e-3).astype(dt)
                B = rng.standard_normal((n, k)).astype(dt)
                work = n * n * min(n, 2 * k) * (4 if np.dtype(dt).kind == "c" else 1)
                calls = max(5, int(4e6 / work))
                for kind in ("project", "transport"):
                    call = alternating_step(functools.partial(getattr(uu, kind)), U, A, B)
                    best = {"policy": float("inf"), "all": float("inf")}
                    try:
                        for _ in range(args.repeat):
                            for setting, limit in (("policy", policy), ("all", 0)):
                                _lowrank.SERIAL_MAX_WORK = limit
                                call()  # untimed: the first call after a switch
                                best[setting] = min(best[setting], per_call_us(call, calls))
                    finally:
                        _lowrank.SERIAL_MAX_WORK = policy
                    ours, every = best["policy"], best["all"]
                    row = f"{n} {k} {np.dtype(dt).name} {kind} | {work / policy:.2f}"
                    print(f"{row} | {ours:.0f} | {every:.0f} | {every / ours:.2f}", flush=True)


if __name__ == "__main__":
    main()
