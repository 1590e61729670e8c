"""Two processes under DistributedDataParallel (gloo, file rendezvous): bit-identical unitary weights."""

from __future__ import annotations

import importlib
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_two_ranks_stay_bit_identical_and_match_one_process(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the spawned children import the example by name
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    example = importlib.import_module("torch_ddp")
    kwargs = {"steps": 4, "batch": 16, "hidden": 12, "seed": 3}
    example.launch(2, tmp_path, **kwargs)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = example.train(**kwargs)  # one process, the whole global batch

    assert torch.equal(rank0["W"], rank1["W"])  # bit-identical replicas
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name
    W0 = example.OrthogonalRNN(12, seed=3).W.detach()
    assert float((rank0["W"] - W0).abs().max()) > 1e-3  # it trained
    torch.testing.assert_close(rank0["W"], single["W"], rtol=0, atol=1e-5)
    for name, value in single["state"].items():
        torch.testing.assert_close(rank0["state"][name], value, rtol=0, atol=1e-5)
    # each rank's loss is the loss of its half of the global batch; their mean is the one-process loss
    np.testing.assert_allclose((np.array(rank0["losses"]) + rank1["losses"]) / 2, single["losses"], rtol=1e-5)
    W = rank0["W"].double().numpy()
    assert np.linalg.norm(W.T @ W - np.eye(12)) < 1e-5
