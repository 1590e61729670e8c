"""The update inside a PyTorch process: same results, and neither library's thread settings disturbed."""

from __future__ import annotations

import numpy as np
import pytest

import unitary_update as uu
from unitary_update import _threads

torch = pytest.importorskip("torch")
from unitary_update.torch import ProjUNN  # noqa: E402


def test_update_after_torch_work_is_unchanged_and_leaves_thread_settings_alone():
    rng = np.random.default_rng(0)
    U = uu.random_unitary(300, dtype=np.float32, rng=1)
    A = (1e-2 * rng.standard_normal((300, 16))).astype(np.float32)
    B = rng.standard_normal((300, 16)).astype(np.float32)
    before = uu.project(U, A, B)
    blas_threads = [lib.num_threads for lib in _threads.blas_libraries()]
    torch.set_num_threads(2)  # torch's own pool awake beside NumPy's BLAS
    x = torch.randn(256, 256)
    for _ in range(3):
        x = torch.tanh(x @ x / 16)
    after = uu.project(U, A, B)
    model = torch.nn.Linear(300, 300)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(U))
    optimizer = ProjUNN([{"params": [model.weight]}], lr=1e-3, seed=0)
    model(torch.randn(4, 300)).square().sum().backward()
    optimizer.step()  # an update inside a torch training step
    assert torch.get_num_threads() == 2
    assert [lib.num_threads for lib in _threads.blas_libraries()] == blas_threads
    np.testing.assert_array_equal(after, before)  # the same code path, bit for bit
    assert uu.unitarity_error(model.weight.detach().numpy()) < 1e-5
