"""Unitarity drift of float32 projUNN steps, with and without drift control, and the cost of retracting.

``track_*`` benchmarks run a short soak (:func:`unitary_update.bench.soak.soak`: 2,000 random rank-1
steps of Frobenius norm 1e-2 at N = 128, seed 0; 200 with ``UU_ASV_QUICK=1``) and report the
largest unitarity error seen; the full 100,000-step run is ``python -m unitary_update soak``
(``docs/robustness.md``).  ``time_*`` benchmarks time one retraction of a drifted matrix by each
method (the SVD polar factor is the baseline) and one drift estimate;
``Retract.track_unitarity_after`` is the error each method leaves.
"""

from __future__ import annotations

import numpy as np

import unitary_update as uu
from unitary_update.bench.soak import soak

from .common import QUICK, Threaded

__all__ = ["DriftSoak", "Retract"]


class DriftSoak(Threaded):
    """Largest ``||U^T U - I||_F`` over 2,000 float32 steps at N = 128."""

    params = (["project", "transport"], ["none", "default"])
    param_names = ("update", "drift")
    timeout = 600
    processes = 1

    def setup(self, update: str, drift: str) -> None:
        self.setup_threads()

    def _run(self, update: str, drift: str) -> dict:
        policy = None if drift == "none" else uu.DriftControl()
        return soak(n=128, steps=200 if QUICK else 2000, update=update, drift=policy, record_every=100, seed=0)

    def track_max_unitarity_error(self, update: str, drift: str) -> float:
        return float(self._run(update, drift)["max_error"])

    track_max_unitarity_error.unit = "||U^T U - I||_F"

    def track_retractions(self, update: str, drift: str) -> int:
        return int(self._run(update, drift)["retractions"])

    track_retractions.unit = "retractions"


class Retract(Threaded):
    """One retraction of a float32 matrix drifted by ~1e-5 (the state DriftControl retracts in)."""

    params = ([128] if QUICK else [128, 512], ["polar", "newton_schulz", "qr"])
    param_names = ("n", "method")

    def setup(self, n: int, method: str) -> None:
        self.setup_threads()
        rng = np.random.default_rng(0)
        U = uu.random_unitary(n, dtype=np.float32, rng=rng)
        self.M = (U + 1e-5 / n * rng.standard_normal((n, n))).astype(np.float32)
        self.out = np.empty_like(self.M)
        self.policy = uu.DriftControl()

    def time_retract(self, n: int, method: str) -> None:
        uu.retract(self.M, method=method, out=self.out)

    def time_drift_estimate(self, n: int, method: str) -> None:
        self.policy.estimate(self.M)

    def track_unitarity_after(self, n: int, method: str) -> float:
        return float(uu.unitarity_error(uu.retract(self.M, method=method)))

    track_unitarity_after.unit = "||U^T U - I||_F"
