"""U's finiteness checked through ``U^H A`` against a separate pass over U, on the BLAS path.

Usage (from the repository root): ``python docs/benchmarks/finite_check_through_product.py [--repeat 5]``.
Prints, for N in {512, 1024, 2048, 4096}, k in {4, 16, 64}, float32 and complex64, project and
transport with ``out=U``: the best time per call with the library's check (a finite ``U^H A``
with no zero row in A proves U finite: ``_lowrank._adjoint_matmul_checking_U``) and with the
former one (``check_finite(U)``, a pass over U, before ``U^H A``), each also as a ratio to one
N x N by N x 2k GEMM (``U @ X``) timed in the same round.  The two settings and the GEMM
alternate round by round in one process, so all three see the same machine.  Cells on the fused
Numba path (r <= 8 and U of 32 MiB or more) run the same code in both settings: a check of the
noise.  Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

import unitary_update as uu
from unitary_update import _lowrank
from unitary_update._validation import check_finite
from unitary_update.bench._timing import alternating_step, per_call_us


def _pass_over_U_first(xp, U, A):
    """The former check: a pass over U, then ``U^H A``."""
    check_finite(U, "U")
    with np.errstate(over="ignore", invalid="ignore"):
        return _lowrank.adjoint_matmul(xp, U, A)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds per setting (best is kept)")
    parser.add_argument("--n", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--rank", type=int, nargs="+", default=[4, 16, 64])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    through_product = _lowrank._adjoint_matmul_checking_U
    header = "N k dtype update | path | through U^H A (us) | pass over U (us) | pass / through"
    print(f"{header} | through / GEMM | pass / GEMM")
    for dt in (np.float32, np.complex64):
        for n in args.n:
            for k in args.rank:
                U = uu.random_unitary(n, dtype=dt, rng=rng)
                A = (1e-2 * rng.standard_normal((n, k)) / np.sqrt(n)).astype(dt)
                B = rng.standard_normal((n, k)).astype(dt)
                X = rng.standard_normal((n, min(n, 2 * k))).astype(dt)
                calls = max(3, int(2e8 / (n * n * 2 * k * (4 if np.dtype(dt).kind == "c" else 1))))
                for kind in ("project", "transport"):
                    call = alternating_step(functools.partial(getattr(uu, kind)), U, A, B)
                    best = {"through": float("inf"), "pass": float("inf"), "gemm": float("inf")}
                    try:
                        for round_ in range(args.repeat):
                            # the order alternates too: a call right after BLAS work can wait for
                            # the BLAS's idle threads (the fused Numba path, docs/benchmarks/cpu_grid.md)
                            settings = (("through", through_product), ("pass", _pass_over_U_first))
                            for setting, check in settings[:: 1 if round_ % 2 else -1]:
                                _lowrank._adjoint_matmul_checking_U = check
                                call()  # untimed: the first call after a switch
                                best[setting] = min(best[setting], per_call_us(call, calls))
                            best["gemm"] = min(best["gemm"], per_call_us(functools.partial(np.matmul, U, X), calls))
                    finally:
                        _lowrank._adjoint_matmul_checking_U = through_product
                    ours, old, gemm = best["through"], best["pass"], best["gemm"]
                    path = "fused Numba (same code)" if _lowrank._fused_eligible(U, U, min(n, 2 * k)) else "BLAS"
                    row = f"{n} {k} {np.dtype(dt).name} {kind} | {path} | {ours:.0f} | {old:.0f} | {old / ours:.2f}"
                    print(f"{row} | {ours / gemm:.2f} | {old / gemm:.2f}", flush=True)


if __name__ == "__main__":
    main()
