"""Collection rules for the source tree (``python -m pytest`` from the repository root).

The doctests of a framework integration (``unitary_update.jax``, ``unitary_update.torch`` and
the modules of ``bench-torch``) import its framework, so they are collected only where that
framework is installed: the `tests` stage of CI installs every extra and runs them; a newcomer's
venv without extras skips their collection.  Importing an integration without its framework is
tested in ``tests/test_imports.py``.
"""

from __future__ import annotations

import importlib.util


def _missing(*libraries: str) -> bool:
    # a namespace package (a bare folder of that name on sys.path) is not the library
    specs = [importlib.util.find_spec(library) for library in libraries]
    return any(spec is None or spec.origin is None for spec in specs)


collect_ignore_glob: list[str] = []
if _missing("jax", "optax"):
    collect_ignore_glob.append("unitary_update/jax/*")
if _missing("torch"):
    collect_ignore_glob += [
        "unitary_update/torch/*",
        "unitary_update/bench/torch_compare.py",
        "unitary_update/cli/bench_torch.py",
    ]
