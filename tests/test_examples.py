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
    W0 = example.OrthogonalRNN(16, seed=1).W.detach().clone()
    history = example.train(steps=200, hidden=16, seed=1)
    first, last = np.mean(history["loss"][:10]), np.mean(history["loss"][-10:])
    assert last < 0.3 * first, (first, last)
    assert max(history["orthogonality_error"]) < 1e-4
    W = history["model"].W.detach()
    assert float((W - W0).norm()) > 1e-2  # W really moved, and stayed orthogonal (float64 check)
    np.testing.assert_allclose(W.double().numpy().T @ W.double().numpy(), np.eye(16), atol=1e-5)
    # the optimizer writes the parameter in place (same storage)
    ptr = W.data_ptr()
    model, opt = history["model"], history["optimizer"]
    (model(torch.randn(4, 5)) ** 2).sum().backward()
    opt.step()
    assert model.W.data_ptr() == ptr


def test_torch_orthogonal_rnn_resumes_bit_exactly(one_torch_thread, tmp_path):
    torch = one_torch_thread
    example = _load("torch_orthogonal_rnn")
    straight = example.train(steps=20, hidden=8, T=4, seed=2)
    ckpt = str(tmp_path / "ckpt.pt")
    first = example.train(steps=10, hidden=8, T=4, seed=2, checkpoint=ckpt)
    resumed = example.train(steps=10, hidden=8, T=4, seed=2, resume=ckpt)
    assert first["loss"] + resumed["loss"] == straight["loss"]
    for a, b in zip(straight["model"].parameters(), resumed["model"].parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["torch_orthogonal_rnn", "torch_ddp"])
def test_torch_example_without_torch_names_the_extra(name):
    code = (
        "import runpy, sys; sys.modules['torch'] = None; "
        f"runpy.run_path({str(EXAMPLES / f'{name}.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == 'this example needs torch: pip install "unitary_update[torch]"\n'
