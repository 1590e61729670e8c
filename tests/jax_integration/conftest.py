"""Fixtures of the JAX tests; without jax or optax the folder is not collected (the jax extra)."""

from __future__ import annotations

import importlib.util

import pytest

_HAVE_JAX = all(importlib.util.find_spec(name) is not None for name in ("jax", "optax"))
collect_ignore_glob = [] if _HAVE_JAX else ["test_*.py"]


def _flag(value: bool):
    import jax

    before = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", value)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.fixture
def x64():
    """``jax_enable_x64`` on for the test (float64/complex128 stay double), the previous state after."""
    yield from _flag(True)


@pytest.fixture
def x32():
    """``jax_enable_x64`` off for the test (JAX's default: single precision everywhere)."""
    yield from _flag(False)
