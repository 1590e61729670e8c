"""Optional dependencies: import one, or say in one line which extra installs it.

The package's extras (``pyproject.toml``): ``plot`` (matplotlib), ``torch``, ``jax`` and ``gpu``
(CuPy).  A feature that needs one calls :func:`require` at its start, before any work, so that a
missing library stops it with ``FEATURE needs LIBRARY: pip install "unitary_update[EXTRA]"``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["EXTRAS", "MissingExtraError", "pyplot", "require"]

EXTRAS = {"matplotlib": "plot", "torch": "torch", "jax": "jax", "optax": "jax", "cupy": "gpu"}
"""The extra that installs each optional library."""


class MissingExtraError(ImportError):
    """An optional library is not installed; the message names the extra that installs it."""


def require(library: str, feature: str) -> ModuleType:
    """Import the optional ``library`` that ``feature`` needs, or raise :class:`MissingExtraError`.

    A library that is installed but fails to import for another reason (a missing dependency of
    its own) raises its own error.
    """
    try:
        return importlib.import_module(library)
    except ModuleNotFoundError as err:
        if err.name != library:
            raise
        extra = EXTRAS[library]
        raise MissingExtraError(f'{feature} needs {library}: pip install "unitary_update[{extra}]"') from None


def pyplot(feature: str) -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display)."""
    matplotlib = require("matplotlib", feature)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
