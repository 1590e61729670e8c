"""The training runs kept in docs/results/<run>/: each checkpoint loads into the model its config builds.

They are there so that a run can be continued exactly on another machine (copy the folder, then
``train --resume``); this checks that what is stored is complete and consistent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unitary_update.experiments.checkpoints import load_checkpoint, read_metrics
from unitary_update.experiments.config import load_config
from unitary_update.experiments.train import build

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
RUNS = sorted(path.parent for path in RESULTS.glob("*/checkpoint.npz"))
MNIST_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


def test_runs_are_kept():
    assert RUNS, f"no run folders with a checkpoint in {RESULTS}"


@pytest.mark.parametrize("run", RUNS, ids=[run.name for run in RUNS])
def test_stored_checkpoint_matches_its_config_and_metrics(run):
    config = load_config(run)
    if config.task == "pmnist":
        if not MNIST_DIR.is_dir():
            pytest.skip("MNIST files not present at ../shared/data/mnist")
        config.mnist_dir = str(MNIST_DIR)
    _, model, opt, w_opt = build(config)
    meta = load_checkpoint(run / "checkpoint.npz", model, opt, w_opt)
    records = read_metrics(run)
    last_logged = max(r["step"] for r in records)  # a run stopped by its time limit checkpoints
    assert last_logged <= meta["step"] < last_logged + config.log_every  # between two log records
    assert meta["seed"] == config.seed
    assert w_opt.steps == meta["step"]
    W = model.params["W"].astype(np.float64)
    assert np.linalg.norm(W.T @ W - np.eye(W.shape[0])) < 1e-3
