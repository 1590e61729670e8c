"""Two BLAS threads against one for the products of an update: the in-place rank-r update and ``U @ W``.

Usage (from the repository root, on an idle machine): ``python docs/benchmarks/addmm_threads.py``.
Prints, for N in {128, 190, 256, 384, 512, 768, 1024}, r in {2, 8, 16, 32, 64}, float32 and
complex64, the best-of-5 time per call of ``_blas.addmm_(U, P, W.T)`` (``U += P W^T``) and of
``U @ W`` at the default BLAS threads and inside ``single_threaded_blas``, with their ratio.
"""

from __future__ import annotations

import functools

import numpy as np

from unitary_update._blas import addmm_
from unitary_update._threads import single_threaded_blas
from unitary_update.bench._timing import best_time


def best_us(f, n: int) -> float:
    """Best of 5 timings of ``n`` calls of ``f``, per call in microseconds (one untimed call first)."""
    return best_time(lambda: [f() for _ in range(n)], 5, warmup=True) / n * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    print("N r dtype | addmm 2t, 1t (us) (ratio) | U@W 2t, 1t (us) (ratio)")
    for dt in (np.float32, np.complex64):
        for N in (128, 190, 256, 384, 512, 768, 1024):
            for r in (2, 8, 16, 32, 64):
                U = rng.standard_normal((N, N)).astype(dt)
                W = rng.standard_normal((N, r)).astype(dt)
                P = (rng.standard_normal((N, r)) * 1e-9).astype(dt)
                n = max(5, int(2e7 / (N * N * r)))
                update = functools.partial(addmm_, U, P, W.T)
                product = functools.partial(np.matmul, U, W)
                a2, m2 = best_us(update, n), best_us(product, n)
                with single_threaded_blas(10**12):
                    a1, m1 = best_us(update, n), best_us(product, n)
                row = f"{N} {r} {np.dtype(dt).name} | {a2:.0f} {a1:.0f} ({a2 / a1:.2f})"
                print(f"{row} | {m2:.0f} {m1:.0f} ({m2 / m1:.2f})", flush=True)


if __name__ == "__main__":
    main()
