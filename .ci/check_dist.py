"""Check what the built sdist and wheel contain; exit 1 listing every violation.

Usage: ``python .ci/check_dist.py DIST_DIR`` where ``DIST_DIR`` holds exactly one ``*.whl`` and one
``*.tar.gz`` of this project (``python -m build --outdir DIST_DIR``), run from the repository root.

The wheel is what users install: the package and its metadata, nothing else.
    * every entry is under ``unitary_update/`` or ``unitary_update-VERSION.dist-info/``;
    * package files are Python sources (``.py``, ``.pyi``) or the ``py.typed`` marker: no tests
      (``tests/``, ``test_*.py``, ``conftest.py``), no benchmarks, no data files;
    * every Python file of the package in the source tree is there, and ``py.typed`` too;
    * the metadata has the version from pyproject.toml, ``License-Expression: MIT`` and the LICENSE.

The sdist is what a packager rebuilds and tests from.
    * it has pyproject.toml, setup.cfg, README.md, LICENSE, CHANGELOG.md, CONTRIBUTING.md,
      MANIFEST.in and PKG-INFO;
    * every file tracked by git under ``unitary_update/``, ``tests/``, ``docs/`` and ``examples/`` is there (so
      modules, tests and pages added later are covered without editing this script);
    * no build or cache debris (``__pycache__``, ``*.pyc``, ``.venv``, ``docs/_build``, ...).

Both: no file over 1 MiB (data sets are never shipped).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath

PACKAGE = "unitary_update"
MAX_FILE_BYTES = 1 << 20
WHEEL_PACKAGE_SUFFIXES = (".py", ".pyi")
WHEEL_PACKAGE_NAMES = ("py.typed",)
# Folder names that mark tests or benchmark suites.  Not "bench": unitary_update/bench is package code
# (the bench commands), not a benchmark suite.
TEST_OR_BENCH_PARTS = {"tests", "test", "testing", "benchmarks", "asv_benches"}
SDIST_REQUIRED = (
    "pyproject.toml",
    "setup.cfg",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
    "CONTRIBUTING.md",
    "MANIFEST.in",
    "PKG-INFO",
    f"{PACKAGE}/__init__.py",
    f"{PACKAGE}/py.typed",
)
SDIST_TRACKED_DIRS = (f"{PACKAGE}/", "tests/", "docs/", "examples/")
SDIST_TRACKED_EXCLUDE = ("docs/_build/", "docs/api/generated/")
DEBRIS_PARTS = {
    "__pycache__",
    ".git",
    ".venv",
    ".asv",
    ".hypothesis",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "_build",
    "dist",
    "build",
}
DEBRIS_SUFFIXES = (".pyc", ".pyo", ".so.tmp", ".orig", ".rej", "~")


def project_version(pyproject: Path) -> str:
    """The ``version`` of the ``[project]`` table (a regex, so that Python 3.10 needs no tomli)."""
    text = pyproject.read_text()
    table = text.split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', table, re.MULTILINE)
    if match is None:
        raise SystemExit(f"check_dist: no version in the [project] table of {pyproject}")
    return match.group(1)


def tracked_files(repo: Path) -> list[str]:
    """Files git tracks in the repository (POSIX paths relative to its root)."""
    out = subprocess.run(["git", "ls-files"], cwd=repo, check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if (repo / line).is_file()]


def check_wheel(path: Path, version: str, sources: list[str]) -> list[str]:
    """Violations in the wheel at ``path``."""
    problems: list[str] = []
    dist_info = f"{PACKAGE}-{version}.dist-info/"
    with zipfile.ZipFile(path) as zf:
        infos = [info for info in zf.infolist() if not info.is_dir()]
        names = [info.filename for info in infos]
        for info in infos:
            name = info.filename
            parts = PurePosixPath(name).parts
            if info.file_size > MAX_FILE_BYTES:
                problems.append(f"wheel: {name} is {info.file_size} bytes (> {MAX_FILE_BYTES}); no data in the wheel")
            if name.startswith(dist_info):
                continue
            if not name.startswith(f"{PACKAGE}/"):
                problems.append(f"wheel: {name} is outside the package and {dist_info}")
                continue
            leaf = parts[-1]
            if TEST_OR_BENCH_PARTS & set(parts[:-1]) or leaf.startswith("test_") or leaf == "conftest.py":
                problems.append(f"wheel: {name} is a test or benchmark file")
            elif not (leaf.endswith(WHEEL_PACKAGE_SUFFIXES) or leaf in WHEEL_PACKAGE_NAMES):
                problems.append(f"wheel: {name} is not a Python source (data does not belong in the wheel)")
        for source in sources:
            packaged = source.startswith(f"{PACKAGE}/") and source.endswith((".py", "/py.typed"))
            if packaged and source not in names:
                problems.append(f"wheel: {source} from the source tree is missing")
        if f"{dist_info}METADATA" not in names:
            return [*problems, f"wheel: {dist_info}METADATA is missing (wrong version?)"]
        meta = HeaderParser().parsestr(zf.read(f"{dist_info}METADATA").decode())
        if meta["Version"] != version:
            problems.append(f"wheel: METADATA version {meta['Version']} != pyproject.toml version {version}")
        if meta["License-Expression"] != "MIT":
            problems.append(f"wheel: METADATA License-Expression is {meta['License-Expression']!r}, expected 'MIT'")
        if not any(name.startswith(dist_info) and name.endswith("/LICENSE") for name in names):
            problems.append(f"wheel: LICENSE is missing from {dist_info}")
    return problems


def check_sdist(path: Path, version: str, tracked: list[str]) -> list[str]:
    """Violations in the sdist at ``path``."""
    problems: list[str] = []
    prefix = f"{PACKAGE}-{version}/"
    with tarfile.open(path) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
    names = set()
    for member in members:
        if not member.name.startswith(prefix):
            problems.append(f"sdist: {member.name} is outside {prefix}")
            continue
        name = member.name[len(prefix) :]
        names.add(name)
        parts = PurePosixPath(name).parts
        if DEBRIS_PARTS & set(parts[:-1]) or name.endswith(DEBRIS_SUFFIXES):
            problems.append(f"sdist: {name} is build or cache debris")
        if member.size > MAX_FILE_BYTES:
            problems.append(f"sdist: {name} is {member.size} bytes (> {MAX_FILE_BYTES}); data sets are not shipped")
    for required in SDIST_REQUIRED:
        if required not in names:
            problems.append(f"sdist: {required} is missing")
    for source in tracked:
        wanted = source.startswith(SDIST_TRACKED_DIRS) and not source.startswith(SDIST_TRACKED_EXCLUDE)
        if wanted and source not in names:
            problems.append(f"sdist: {source} (tracked by git) is missing")
    return problems


def main(argv: list[str]) -> int:
    """Check the archives in ``argv[0]``; return the exit code."""
    if len(argv) != 1:
        print(__doc__)
        return 2
    dist = Path(argv[0])
    repo = Path.cwd()
    version = project_version(repo / "pyproject.toml")
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"check_dist: expected one wheel and one sdist in {dist}; found {[p.name for p in dist.iterdir()]}")
        return 1
    tracked = tracked_files(repo)
    problems = check_wheel(wheels[0], version, tracked) + check_sdist(sdists[0], version, tracked)
    for problem in problems:
        print(f"check_dist: {problem}")
    for archive in (wheels[0], sdists[0]):
        print(f"check_dist: {archive.name} ({archive.stat().st_size // 1024} KiB)")
    if problems:
        print(f"check_dist: {len(problems)} violation(s)")
        return 1
    print("check_dist: wheel holds only the package and its metadata; sdist holds what a packager needs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
