"""JAX: a jittable projUNN core and an optax transformation that keeps chosen matrices unitary.

* :func:`project`, :func:`transport`, :func:`sketch`, :func:`step`, :func:`retract`: the core in
  ``jax.numpy`` (functional, PRNG keys, works under ``jax.jit`` / ``jax.vmap`` on any device).
  :func:`unitary_update.project` and friends dispatch here when given JAX arrays.
* :func:`projunn`: an ``optax.GradientTransformation``: the base rule (RMSprop by default) on
  every leaf, projUNN on the leaves chosen by ``unitary_labels``.
* :func:`scale_by_projunn`, :func:`retract_every`: its building blocks, for ``optax.chain``.

Needs the ``jax`` extra (``pip install "unitary_update[jax]"``: jax and optax).  See ``docs/jax.md``.
"""

from .._extras import require

require("jax", "unitary_update.jax")
require("optax", "unitary_update.jax")  # checked here, so that the error names the extra

from ._core import project, retract, sketch, step, transport  # noqa: E402
from ._optax import ProjUNNState, RetractState, projunn, retract_every, scale_by_projunn  # noqa: E402

__all__ = [
    "ProjUNNState",
    "RetractState",
    "project",
    "projunn",
    "retract",
    "retract_every",
    "scale_by_projunn",
    "sketch",
    "step",
    "transport",
]
