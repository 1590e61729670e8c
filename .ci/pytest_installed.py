"""Run pytest against the installed ``unitary_update``, after checking that it is the installed one.

Usage: ``python .ci/pytest_installed.py [pytest arguments]`` from a directory that does not hold the
source tree.  The package is imported first and must come from a ``site-packages`` directory with
``__version__`` equal to its installed metadata (and to ``$EXPECTED_VERSION`` when set); because it
stays in ``sys.modules``, every test and doctest in the same process then uses that copy.  The
exit status is pytest's (5 when no tests were collected).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import pytest

import unitary_update

location = Path(unitary_update.__file__).resolve().parent
if "site-packages" not in location.parts:
    sys.exit(f"pytest_installed: unitary_update was imported from {location}, not from site-packages")
expected = os.environ.get("EXPECTED_VERSION", importlib.metadata.version("unitary_update"))
if unitary_update.__version__ != importlib.metadata.version("unitary_update") or unitary_update.__version__ != expected:
    sys.exit(f"pytest_installed: __version__ {unitary_update.__version__!r}, expected {expected!r}")
print(f"pytest_installed: unitary_update {unitary_update.__version__} from {location}")
sys.exit(pytest.main(["-p", "no:cacheprovider", *sys.argv[1:]]))
