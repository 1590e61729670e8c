"""Fixtures of the torch tests: one torch thread (tiny tensors; the CI machine has 2 cores)."""

from __future__ import annotations

import pytest

try:
    import torch
except ImportError:  # the test modules skip themselves (pytest.importorskip)
    torch = None


@pytest.fixture(autouse=True)
def one_torch_thread():
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
