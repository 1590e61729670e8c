"""The one timing helper of the benchmarks: the best wall time of several calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["alternating_step", "best_time", "per_call_us"]


def best_time(fn: Callable[[], Any], repeat: int, *, warmup: bool = False) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` (after one untimed call when ``warmup``)."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def per_call_us(call: Callable[[], Any], calls: int) -> float:
    """Wall time of one round of ``calls`` calls of ``call``, per call, in microseconds."""
    return best_time(lambda: [call() for _ in range(calls)], 1) / calls * 1e6


def alternating_step(update: Callable[..., Any], U: Any, A: Any, B: Any) -> Callable[[], Any]:
    """A call of ``update(U, A, B, out=U)`` whose step alternates sign, ``+A`` then ``-A``, call by call.

    Repeating one step ``A B^H`` drives U towards the maximiser of ``Re tr(U^H A B^H)``, where
    ``U^H A`` is parallel to B: a degenerate basis that no training step sees (the updates then
    take their slower rank-deficient paths).  Alternating the sign keeps U near where it
    started, so every timed call sees a generic step.
    """
    factors = (A, -A)
    calls = [0]

    def call() -> Any:
        calls[0] += 1
        return update(U, factors[calls[0] % 2], B, out=U)

    return call
