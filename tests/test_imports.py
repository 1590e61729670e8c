"""The package's import structure: no cycles, the core apart from its applications, no shadowing.

Each module is imported first in a fresh interpreter (as SciPy's ``test_import_cycles`` does):
a cycle between two modules shows up only when one of them is imported first, which a single
test process, having imported everything already, can never see.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import unitary_update

PACKAGE_DIR = Path(unitary_update.__file__).parent
APPLICATION_ROOMS = ("models", "experiments", "bench", "cli")


def _all_modules() -> list[str]:
    names = ["unitary_update"]
    for info in pkgutil.walk_packages(unitary_update.__path__, "unitary_update."):
        names.append(info.name)
    return sorted(names)


MODULES = _all_modules()


def _imported_package_modules(path: Path, module: str) -> set[str]:
    """The absolute names of the package modules that ``path`` imports (statically, at any depth)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("unitary_update"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("unitary_update"):
                submodules = {f"{target}.{alias.name}" for alias in node.names}
                found.update(submodules)
                if not submodules <= set(MODULES):  # ``from . import _kernels`` needs only the submodule
                    found.add(target)
    return found


def _source(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    return Path(spec.origin)


def test_every_module_is_found():
    # a guard on the walk itself: the rooms of the layout are all there
    for room in ("_kernels", "_lowrank", "optim", *APPLICATION_ROOMS):
        assert f"unitary_update.{room}" in MODULES


# The framework integrations and the libraries they need: without them, importing the integration
# must fail with the one-line MissingExtraError that names the extra, and nothing else.
INTEGRATIONS = {"unitary_update.jax": ("jax", "optax"), "unitary_update.torch": ("torch",)}


def _missing_extra(module: str) -> bool:
    return any(
        (module == prefix or module.startswith(prefix + "."))
        and any(getattr(importlib.util.find_spec(library), "origin", None) is None for library in libraries)
        for prefix, libraries in INTEGRATIONS.items()
    )


def test_every_module_imports_first_in_a_fresh_interpreter():
    def run(module: str) -> tuple[str, int, str]:
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
        return module, proc.returncode, proc.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, MODULES))
    failures = [(m, err) for m, rc, err in results if rc != 0 and not _missing_extra(m)]
    assert not failures, "\n\n".join(f"import {m} failed:\n{err}" for m, err in failures)
    wrong = [(m, err) for m, rc, err in results if _missing_extra(m) and not (rc != 0 and "MissingExtraError" in err)]
    assert not wrong, "\n\n".join(f"import {m} without its extra:\n{err}" for m, err in wrong)


def test_the_core_imports_none_of_the_applications():
    # ``__main__`` (``python -m unitary_update``) is the command line's entry point: it belongs to cli
    core = [m for m in MODULES if m.split(".")[1:2] and m.split(".")[1] not in (*APPLICATION_ROOMS, "__main__")]
    core.append("unitary_update")
    for module in core:
        bad = {
            name
            for name in _imported_package_modules(_source(module), module)
            if name.split(".")[1:2] and name.split(".")[1] in APPLICATION_ROOMS
        }
        assert not bad, f"{module} (the core) imports {sorted(bad)}"


def test_import_unitary_update_loads_no_application_module():
    code = "import sys, unitary_update; print(sorted(m for m in sys.modules if m.startswith('unitary_update.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for room in APPLICATION_ROOMS:
        assert f"'unitary_update.{room}" not in loaded


@pytest.mark.parametrize("module", ["unitary_update._kernels", "unitary_update.models._kernels"])
def test_numba_kernel_modules_are_leaves(module):
    imported = _imported_package_modules(_source(module), module)
    allowed = {"unitary_update._config", "unitary_update._xp"} if module.startswith("unitary_update.models") else set()
    allowed |= {f"{a}.{n}" for a in allowed for n in ("use_numba", "array_namespace")}
    assert imported <= allowed, f"{module} imports {sorted(imported - allowed)}"


def test_no_public_name_shadows_a_submodule():
    for info in pkgutil.iter_modules(unitary_update.__path__):
        attr = getattr(unitary_update, info.name, None)
        assert attr is None or type(attr).__name__ == "module", (
            f"unitary_update.{info.name} is {attr!r}, hiding the submodule of the same name"
        )


def test_no_import_cycles_in_the_source():
    # The static graph, function-level (lazy) imports included: a lazy import that closes a cycle
    # passes the fresh-interpreter test above but still ties two modules into one.
    graph = {
        module: {name for name in _imported_package_modules(_source(module), module) if name in MODULES} - {module}
        for module in MODULES
    }
    # a module importing its own package's __init__ (e.g. ``import unitary_update as uu`` in a
    # bench helper) reaches only what that __init__ imports, which the graph already holds
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target] if target in path else [module, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def test_no_test_folder_shadows_a_library():
    # pyproject's pythonpath puts tests/ on sys.path: a folder tests/jax would import as an empty
    # namespace package named jax wherever JAX is not installed
    libraries = {"jax", "jaxlib", "optax", "torch", "cupy", "numba", "scipy", "numpy", "matplotlib", "hypothesis"}
    tests_dir = Path(__file__).parent
    assert not {p.name for p in tests_dir.iterdir() if p.is_dir()} & libraries
