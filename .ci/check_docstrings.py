"""Validate the numpydoc docstrings of every public name in the package.

Usage, from the repository root: ``python .ci/check_docstrings.py [package]`` (default
``unitary_update``).  Exits 1 listing ``module.name: CODE message`` for each violation, 0 when all
are clean.

What is checked
    Every module of the package is imported (found by walking the package, so modules added later
    are covered without touching this file), except private ones (any dotted part starting with
    ``_``; the package's ``__init__`` counts as the package itself).  For each public module, each
    name in its ``__all__`` that is a function, class or method-bearing object is validated once,
    under the first public path it is found at (``unitary_update.options`` for an object defined
    in ``unitary_update._backend``); a Numba dispatcher is validated through its Python function.
    Classes are validated together with their own public methods (all checks but ``EX01``: the
    class's Examples show them in use) and properties (``GL08``, ``SS01``).  Constants and other
    data in ``__all__`` are skipped.  A public module without ``__all__`` (``AL01``) or one that
    fails to import (``IM01``; optional dependencies must be imported lazily) is a violation.

The checks (:data:`CHECKS`), chosen so that a docstring says what a user needs to call the
function correctly, while style (summary wording, punctuation) is left to review:
    ``GL06`` unknown section, ``GL07`` sections out of order, ``GL08`` no docstring, ``GL10`` a reST
    directive without ``::``, ``SS01`` no one-line summary, ``PR01`` an undocumented parameter,
    ``PR02`` a documented parameter that does not exist, ``PR04`` a parameter without a type,
    ``PR07`` a parameter without a description, ``PR10`` ``name: type`` without a space before the
    colon, ``RT01`` no Returns section for a function that returns a value, ``RT03`` a return
    value without a description, ``YD01`` no Yields section for a generator, ``EX01`` no Examples
    section, and one check of our own, ``RS01``: a ``raise`` statement in the function's own body
    (not counting ``raise`` with no exception, ``AssertionError`` or ``NotImplementedError``)
    without a Raises section.

Exemptions
    A trailing ``# numpydoc ignore=CODE[,CODE...]`` comment on the ``def``/``class`` line skips
    those codes for that object, as numpydoc's own pre-commit hook does; each exemption should
    say why in the line above it.

Baseline (a ratchet)
    ``.ci/docstrings_baseline.txt`` lists known violations as ``qualified.name: CODE`` lines, for
    code that was merged before it passed this check.  They are reported but do not fail; a
    violation not in the file fails, and so does a line of the file that no longer matches a
    violation (delete it), so the file only shrinks.  Never add lines to it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import re
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import numpydoc.validate
from numpydoc.docscrape import NumpyDocString

CHECKS = frozenset(
    {
        "GL06",
        "GL07",
        "GL08",
        "GL10",
        "SS01",
        "PR01",
        "PR02",
        "PR04",
        "PR07",
        "PR10",
        "RT01",
        "RT03",
        "YD01",
        "EX01",
        "RS01",
    }
)
METHOD_CHECKS = CHECKS - {"EX01"}
PROPERTY_CHECKS = frozenset({"GL08", "SS01"})
EXTRA_MESSAGES = {
    "AL01": "public module has no __all__",
    "IM01": "import failed: {error}",
    "RS01": "raises {names} but has no Raises section",
}
BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "docstrings_baseline.txt")
_IGNORE = re.compile(r"#\s*numpydoc\s+ignore\s*=\s*([\w, ]+)")
_NOT_DOCUMENTED_RAISES = {"AssertionError", "NotImplementedError"}


def public_modules(package: str) -> Iterator[tuple[str, Any]]:
    """``(name, module)`` for the package and each public submodule, in name order.

    ``module`` is the exception instead when the import fails.
    """
    root = importlib.import_module(package)
    yield package, root
    names = [info.name for info in pkgutil.walk_packages(root.__path__, prefix=package + ".", onerror=print)]
    for name in sorted(names):
        if any(part.startswith("_") for part in name.split(".")):
            continue
        try:
            yield name, importlib.import_module(name)
        except Exception as error:  # reported as IM01, the walk goes on
            yield name, error


def _inline_ignores(obj: Any) -> set[str]:
    """Codes listed in a ``# numpydoc ignore=...`` comment on the object's def/class line."""
    try:
        lines, _ = inspect.getsourcelines(inspect.unwrap(obj))
    except (OSError, TypeError):
        return set()
    header = []
    for line in lines:  # decorators, then the def/class line(s) up to the colon that opens the body
        header.append(line)
        if line.split("#", 1)[0].rstrip().endswith(":"):
            break
    found: set[str] = set()
    for line in header:
        match = _IGNORE.search(line)
        if match:
            found.update(code.strip() for code in match.group(1).split(",") if code.strip())
    return found


def _raised_names(func: Any) -> set[str]:
    """Names of the exceptions that ``raise`` statements in the function's own body raise."""
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(func)))
    except (OSError, TypeError):
        return set()
    tree = ast.parse(source)
    top = tree.body[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue  # nested definitions are documented (or not) on their own
            if isinstance(child, ast.Raise) and child.exc is not None:
                exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                name = ast.unparse(exc).rsplit(".", 1)[-1]
                if name not in _NOT_DOCUMENTED_RAISES:
                    names.add(name)
            visit(child)

    visit(top)
    return names


def validate(obj: Any, checks: frozenset[str]) -> list[tuple[str, str]]:
    """The ``(code, message)`` violations of one object among ``checks``."""
    # Validate the object itself: by name, ``unitary_update.sketch`` would resolve to the module.
    result = numpydoc.validate.validate(numpydoc.validate.get_doc_object(obj))
    errors = [(code, msg) for code, msg in result["errors"] if code in checks]
    if "RS01" in checks and (inspect.isfunction(inspect.unwrap(obj)) or inspect.ismethod(obj)):
        raised = _raised_names(obj)
        if raised and result["docstring"] and not NumpyDocString(result["docstring"])["Raises"]:
            errors.append(("RS01", EXTRA_MESSAGES["RS01"].format(names=", ".join(sorted(raised)))))
    ignored = _inline_ignores(obj)
    return [(code, msg) for code, msg in errors if code not in ignored]


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    """A class's own public methods and properties (not inherited ones)."""
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member) or isinstance(member, property):
            yield name, member


def targets(package: str) -> Iterator[tuple[str, Any, frozenset[str]]]:
    """``(qualified name, object, checks)`` for every public object, each object once.

    A module-level violation comes as ``(module name, (code, message), frozenset())``.
    """
    seen: set[int] = set()
    for module_name, module in public_modules(package):
        if isinstance(module, BaseException):
            error = f"{type(module).__name__}: {module}"
            yield module_name, ("IM01", EXTRA_MESSAGES["IM01"].format(error=error)), frozenset()
            continue
        names = getattr(module, "__all__", None)
        if names is None:
            yield module_name, ("AL01", EXTRA_MESSAGES["AL01"]), frozenset()
            continue
        for name in names:
            obj = getattr(module, name)
            obj = getattr(obj, "py_func", obj)  # a Numba dispatcher: its Python function
            if not (inspect.isroutine(obj) or inspect.isclass(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            qualname = f"{module_name}.{name}"
            yield qualname, obj, CHECKS
            if inspect.isclass(obj):
                for member_name, member in _members(obj):
                    checks = PROPERTY_CHECKS if isinstance(member, property) else METHOD_CHECKS
                    yield f"{qualname}.{member_name}", member, checks


def read_baseline(path: str) -> set[str]:
    """The ``qualified.name: CODE`` lines of the baseline file (none when it does not exist)."""
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {line.strip() for line in f if line.strip() and not line.startswith("#")}


def main(argv: list[str]) -> int:
    """Validate the package named in ``argv`` (default ``unitary_update``); return the exit code."""
    package = argv[0] if argv else "unitary_update"
    sys.path.insert(0, os.getcwd())  # run from the repository root: check the source tree
    baseline = read_baseline(BASELINE)
    failures = 0
    checked = 0
    known: set[str] = set()

    def report(qualname: str, code: str, message: str) -> None:
        nonlocal failures
        key = f"{qualname}: {code}"
        if key in baseline:
            known.add(key)
            print(f"{qualname}: {code} {message} [baseline]")
        else:
            print(f"{qualname}: {code} {message}")
            failures += 1

    for qualname, obj, checks in targets(package):
        if not checks:  # a module-level violation
            report(qualname, *obj)
            continue
        checked += 1
        for code, message in validate(obj, checks):
            report(qualname, code, message)
    for key in sorted(baseline - known):
        print(f"{key}: fixed or gone; delete this line from {os.path.relpath(BASELINE)}")
        failures += 1
    if known:
        print(f"check_docstrings: {len(known)} known violation(s) in the baseline still to fix")
    print(f"check_docstrings: {checked} public objects of {package} checked against {', '.join(sorted(CHECKS))}")
    if failures:
        print(f"check_docstrings: {failures} violation(s)")
        return 1
    print("check_docstrings: no new violations" if known else "check_docstrings: all clean")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
