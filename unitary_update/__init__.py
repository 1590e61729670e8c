"""unitary_update: O(kN^2) updates that keep a matrix exactly unitary (projUNN).

* :func:`project` (projUNN-D): the closest unitary matrix to ``U + A B^H``.
* :func:`transport` (projUNN-T): ``U expm(skew(U^H A B^H))``.
* :func:`sketch`: rank-k factors ``A, B`` of a gradient, dense or factored.
* :func:`step`: sketch, then update.
* :func:`random_unitary`, :func:`unitarity_error`: Haar samples and the distance to the manifold.
* :func:`retract`, :class:`DriftControl`: back onto the manifold after rounding drift.

Dense O(N^3) references live in :mod:`unitary_update.reference`, the Euclidean and unitary
optimizers in :mod:`unitary_update.optim`.  Applications have rooms of their own, none of them
imported here: :mod:`unitary_update.models` (the unitary RNN, orthogonal convolutions),
:mod:`unitary_update.experiments` (tasks, training, plots), :mod:`unitary_update.bench` and
:mod:`unitary_update.cli`.
"""

from importlib.metadata import PackageNotFoundError, version

from ._config import get_options, options, set_options
from ._retract import DriftControl, retract
from ._sketch import sketch
from ._step import step
from ._update import project, transport
from ._validation import NonFiniteError, SingularUpdateError
from .metrics import unitarity_error
from .random import random_unitary

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
