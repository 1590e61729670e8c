"""Numba kernels, each with its pure-NumPy twin named beside it.

Every compiled kernel here (``*_numba``) has a NumPy reference (``*_numpy``) computing the same
thing, and ``tests/test_kernels.py`` checks that the two agree.  Which one runs is chosen by
:func:`use_numba` from the library option ``backend`` (``"auto" | "numba" | "numpy"``, see
:func:`unitary_update.set_options`); ``"auto"`` picks Numba only where ``asv_benches`` shows it
wins.  Validation and dispatch live in the public wrappers, never in the kernels.
"""

from __future__ import annotations

from ._backend import get_options

__all__ = ["use_numba"]


def use_numba(auto: bool) -> bool:
    """Whether to run the Numba kernel: forced by ``backend="numba"|"numpy"``, else ``auto``."""
    backend = get_options().backend
    if backend == "auto":
        return auto
    return backend == "numba"


# ---- section: low-rank update kernels (fused U W + rank update; batched small matrices) ------


# ---- section: RNN elementwise kernels (modReLU forward / backward) ----------------------------
