"""Soak test: unitarity drift over many random projUNN steps, with and without drift control.

``python -m unitary_update soak`` runs :func:`soak` for both updates with and without the default
:class:`~unitary_update.DriftControl` and prints the unitarity error over time; the asv benchmark
``asv_benches/benchmarks/bench_drift.py`` tracks a shorter run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._retract import DriftControl
from .._step import UPDATES
from .._step import step as _step
from .._validation import check_choice
from ..metrics import unitarity_error
from ..random import random_unitary

__all__ = ["soak"]


def soak(
    *,
    n: int = 128,
    steps: int = 100_000,
    update: str = "project",
    dtype: Any = np.float32,
    rank: int = 1,
    step_size: float = 1e-2,
    drift: DriftControl | None = None,
    record_every: int = 1000,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Run ``steps`` random projUNN steps on one N x N matrix and record its unitarity error.

    Each step is :func:`unitary_update.step` (randomized sketch, ``out=U``) with a random
    Gaussian direction ``G = X Y^H`` of rank ``rank`` and Frobenius norm about ``step_size``
    (a learning rate times a gradient; ``1e-2`` is a typical RNN step), drawn from a seeded
    generator, so a run is reproducible.

    Parameters
    ----------
    n : int, default 128
        Matrix size N.
    steps : int, default 100_000
        Number of steps.
    update : {"project", "transport"}
        projUNN-D or projUNN-T.
    dtype : dtype, default float32
        Working precision (float32, float64, complex64 or complex128).
    rank : int, default 1
        Rank of each step.
    step_size : float, default 1e-2
        Frobenius norm of each step, approximately.
    drift : DriftControl, optional
        Drift policy passed to :func:`unitary_update.step`; None measures the uncontrolled drift.
    record_every : int, default 1000
        Measure :func:`unitary_update.unitarity_error` (O(N^3), outside the timed steps) every
        this many steps.
    seed : int, default 0
        Seed of the initial Haar matrix and of the steps.
    progress : callable, optional
        Called as ``progress(step, error)`` at each record.

    Returns
    -------
    dict
        ``"step"`` and ``"error"`` (lists, the records, starting with step 0), ``"max_error"``,
        ``"final_error"``, ``"retractions"`` (0 without drift control) and ``"seconds"`` (wall
        time of the steps alone).

    Raises
    ------
    ValueError
        If ``update`` is unknown or ``steps`` / ``record_every`` is below 1.

    Notes
    -----
    O(steps N^2 rank) plus O(N^3) per record and per retraction.

    Examples
    --------
    >>> from unitary_update.bench.soak import soak
    >>> result = soak(n=16, steps=200, record_every=100)
    >>> result["step"]
    [0, 100, 200]
    >>> result["max_error"] < 1e-5
    True
    """
    update = check_choice(update, UPDATES, "update")
    if steps < 1 or record_every < 1:
        raise ValueError(f"steps and record_every must be >= 1; got {steps} and {record_every}")
    rng = np.random.default_rng(seed)
    U = random_unitary(n, dtype=dtype, rng=rng)
    dt = U.dtype
    scale = np.sqrt(step_size / np.sqrt(rank)) / np.sqrt(n)
    records_step, records_error = [0], [unitarity_error(U)]
    seconds = 0.0
    done = 0
    while done < steps:
        chunk = min(record_every, steps - done)
        t0 = time.perf_counter()
        for _ in range(chunk):
            X = (scale * rng.standard_normal((n, rank))).astype(dt)
            Y = (scale * rng.standard_normal((n, rank))).astype(dt)
            _step(U, (X, Y), rank=rank, update=update, rng=rng, out=U, drift=drift)
        seconds += time.perf_counter() - t0
        done += chunk
        records_step.append(done)
        records_error.append(unitarity_error(U))
        if progress is not None:
            progress(done, records_error[-1])
    return {
        "step": records_step,
        "error": records_error,
        "max_error": max(records_error),
        "final_error": records_error[-1],
        "retractions": 0 if drift is None else drift.retractions,
        "seconds": seconds,
    }
