"""unitary_update: O(kN^2) updates that keep a matrix exactly unitary (projUNN).

* :func:`project` (projUNN-D): the closest unitary matrix to ``U + A B^H``.
* :func:`transport` (projUNN-T): ``U expm(skew(U^H A B^H))``.
* :func:`sketch`: rank-k factors ``A, B`` of a gradient, dense or factored.
* :func:`step`: sketch, then update.
* :func:`random_unitary`, :func:`unitarity_error`: Haar samples and the distance to the manifold.
* :func:`retract`, :class:`DriftControl`: back onto the manifold after rounding drift.

Dense O(N^3) references live in :mod:`unitary_update.reference`; orthogonal convolutions
(per-frequency unitary stacks trained with batched updates) in :mod:`unitary_update.conv`.
"""

from importlib.metadata import PackageNotFoundError, version

from ._backend import get_options, options, set_options
from ._validation import NonFiniteError, SingularUpdateError
from .metrics import unitarity_error
from .random import random_unitary
from .retract import DriftControl, retract
from .sketch import sketch
from .step import step
from .update import project, transport

try:
    __version__ = version("unitary_update")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "DriftControl",
    "NonFiniteError",
    "SingularUpdateError",
    "__version__",
    "get_options",
    "options",
    "project",
    "random_unitary",
    "retract",
    "set_options",
    "sketch",
    "step",
    "transport",
    "unitarity_error",
]
