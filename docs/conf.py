"""Sphinx configuration for the unitary_update documentation.

Build (warnings are errors; the tutorials and examples execute during the build)::

    python -m sphinx -W --keep-going -b html -d docs/_build/doctrees docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest -d docs/_build/doctrees docs docs/_build/doctest
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # the source tree, so the docs describe the code next to them

os.environ.setdefault("MPLBACKEND", "Agg")

import scipy.linalg  # noqa: E402, F401  (load SciPy's own OpenBLAS now, so that the limit below covers it)
from threadpoolctl import threadpool_limits  # noqa: E402

import unitary_update  # noqa: E402

# The executed examples run with one BLAS thread: NumPy and SciPy each load an OpenBLAS, and two
# spinning thread pools on a small shared machine (CI has 2 cores) make timings erratic and slow.
# Timings printed on these pages say so.
threadpool_limits(1)

project = "unitary_update"
author = "unitary_update developers"
copyright = "2026, unitary_update developers"
release = unitary_update.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 shipped in the wheel, copied to _static/mathjax: no CDN
    "numpydoc",
    "uu_docs",  # docs/_ext/uu_docs.py: executed blocks, markdown tables, build-time API checks
]

# Pages kept out of the build.
exclude_patterns = [
    "_build",
]
templates_path = ["_templates"]
root_doc = "index"
nitpicky = False

# ---- HTML: a responsive theme that loads nothing from the network --------------------------------
# The built pages must work opened from disk with no network: the theme ships its fonts and icons,
# MathJax comes from the sphinx-mathjax-offline wheel (.ci/check_offline_docs.py checks both).
html_theme = "pydata_sphinx_theme"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_title = f"unitary_update {release}"
html_theme_options = {
    "navbar_center": [],  # the site is small: the whole table of contents is in the left sidebar
    "navigation_with_keys": False,
    "show_toc_level": 2,  # right sidebar: the page's sections and subsections
    "footer_start": ["copyright"],
    "footer_center": [],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"**": ["sidebar-nav-full"]}  # docs/_templates/sidebar-nav-full.html

# ---- API reference ------------------------------------------------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = False  # a module's public names are its __all__
autodoc_default_options = {"members": False}
autodoc_typehints = "none"  # the numpydoc sections state types and shapes
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Public functions that cannot raise, so need no Raises section (checked by docs/_ext/uu_docs.py).
uu_docs_raises_nothing = [
    "unitary_update.get_options",
    # formatters and benchmark drivers that raise nothing of their own
    "unitary_update.bench.cpu.format_markdown",
    "unitary_update.bench.jax_compare.add_arguments",
    "unitary_update.bench.jax_compare.to_markdown",
    "unitary_update.bench.rnn.breakdown",
    "unitary_update.bench.rnn.run_benchmark",
]

# ---- Math: macros defined once, used by the theory page and the docstrings ----------------------
# MathJax 3 from the local copy (the sphinx-mathjax-offline extension above puts it in _static).
mathjax_path = "mathjax/tex-chtml.js"
mathjax3_config = {
    "tex": {
        "macros": {
            "H": r"{\mathsf H}",  # conjugate transpose: A^\H
            "Ahat": r"\hat{A}",
            "Id": r"I",
            "Span": r"\operatorname{span}",
            "skew": r"\operatorname{skew}",
            "herm": r"\operatorname{herm}",
            "polar": r"\operatorname{polar}",
            "expm": r"\operatorname{expm}",
            "diag": r"\operatorname{diag}",
            "tr": r"\operatorname{tr}",
            "bigO": r"\mathcal{O}",
            "UN": r"\mathrm{U}(N)",
            "ON": r"\mathrm{O}(N)",
            "SON": r"\mathrm{SO}(N)",
            "C": r"\mathbb{C}",
            "R": r"\mathbb{R}",
            "norm": [r"\lVert #1 \rVert", 1],
        }
    }
}

# ---- Doctests: `python -m sphinx -b doctest` runs every >>> example, docstrings included ---------
doctest_global_setup = "import numpy as np\nimport unitary_update as uu"
doctest_test_doctest_blocks = "default"
