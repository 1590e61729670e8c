"""bench-rnn: the PyTorch autograd baseline computes the same model, and the breakdown adds up."""

from __future__ import annotations

import numpy as np
import pytest

from unitary_update.bench.rnn import breakdown, run_benchmark, torch_step
from unitary_update.experiments.tasks import CopyTask
from unitary_update.models.urnn import URNN


def _model() -> URNN:
    model = URNN(10, 8, 10, dtype=np.float32, rng=0)
    model.params["O"][...] = np.random.default_rng(1).standard_normal(model.params["O"].shape) * 0.5
    return model


def test_torch_step_is_the_same_model():
    pytest.importorskip("torch")
    model = _model()
    x, y = CopyTask(3).batch(4, rng=1)
    before = {k: np.array(v) for k, v in model.params.items()}
    step = torch_step(model, lr=1e-2)
    # the loss of the first step is the model's own (NumPy forward, independent code)
    assert np.isclose(step(x, y), model.evaluate(x, y)["loss"], rtol=1e-4)
    # the PyTorch copy trains (RMSprop with autograd gradients) and never touches the model
    losses = [step(x, y) for _ in range(20)]
    assert losses[-1] < losses[0]
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])


def test_torch_step_refuses_other_models():
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="output='sequence'"):
        torch_step(URNN(2, 4, 3, output="last", rng=0))


def test_breakdown_parts_leave_the_model_unchanged():
    model = _model()
    x, y = CopyTask(3).batch(4, rng=1)
    W = model.params["W"].copy()
    parts = breakdown(model, x, y, rank=2, update="transport", repeat=1)
    assert set(parts) == {"forward", "backward", "weight_grad", "checks", "direction", "sketch", "update"}
    assert all(v >= 0 for v in parts.values())
    assert parts["forward"] > 0
    np.testing.assert_array_equal(model.params["W"], W)


def test_run_benchmark_has_the_torch_baseline():
    pytest.importorskip("torch")
    r = run_benchmark(delay=2, hidden=8, batch=4, repeat=1, threads=1)
    assert set(r["seconds"]) == {"projunn", "euclidean", "plain_numpy", "torch_autograd"}
    assert r["torch_threads"] == 1  # the same thread count as the BLAS
    assert r["torch_autograd_over_projunn"] == pytest.approx(r["seconds"]["torch_autograd"] / r["seconds"]["projunn"])


def test_run_benchmark_notes_a_missing_torch(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    r = run_benchmark(delay=2, hidden=8, batch=4, repeat=1, parts=False)
    assert "torch_autograd" not in r["seconds"]
    assert any("unitary_update[torch]" in note for note in r["notes"])
    assert "note: torch_autograd skipped" in capsys.readouterr().out
