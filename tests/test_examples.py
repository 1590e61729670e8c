"""The examples in ``examples/`` run and do what they say (skipped when their framework is absent)."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_torch_thread():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only add overhead on a shared CI machine
    yield torch
    torch.set_num_threads(threads)


def test_torch_orthogonal_rnn_learns_and_keeps_W_orthogonal(one_torch_thread):
    torch = one_torch_thread
    example = _load("torch_orthogonal_rnn")
    torch.manual_seed(0)
    model = example.OrthogonalRNN(16, seed=1)
    W0 = model.W.detach().clone()
    ptr = model.W.data_ptr()
    history = example.train(steps=200, hidden=16, seed=1)
    first, last = np.mean(history["loss"][:10]), np.mean(history["loss"][-10:])
    assert last < 0.3 * first, (first, last)
    assert max(history["orthogonality_error"]) < 1e-4
    # the optimizer updates the parameter in place (same storage), and W really moved
    opt = example.ProjUNN([model.W], lr=0.1, rank=2)
    (model(torch.randn(4, 5)) ** 2).sum().backward()
    opt.step()
    assert model.W.data_ptr() == ptr
    assert float((model.W.detach() - W0).norm()) > 1e-3
    W = model.W.detach().double().numpy()
    np.testing.assert_allclose(W.T @ W, np.eye(16), atol=1e-5)


def test_torch_example_without_torch_names_the_extra():
    code = (
        "import runpy, sys; sys.modules['torch'] = None; "
        f"runpy.run_path({str(EXAMPLES / 'torch_orthogonal_rnn.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == 'this example needs torch: pip install "unitary_update[torch]"\n'
