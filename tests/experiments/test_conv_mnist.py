"""The conv benchmark table and the MNIST demo driver, on tiny problems (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from unitary_update.bench.conv import bench_table, update_methods
from unitary_update.cli import main
from unitary_update.experiments.conv_mnist import ConvNet


@pytest.mark.parametrize("update", ["transport", "project"])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_update_methods_agree(update, dtype):
    methods = update_methods(6, 5, update=update, rank=2, dtype=dtype, seed=3)
    results = {name: fn() for name, fn in methods.items()}
    for name in ("batched", "loop"):
        assert results[name].dtype == np.dtype(dtype)
        np.testing.assert_allclose(results[name], results["dense"], atol=1e-12)


def test_bench_table_rows(capsys):
    rows = bench_table(((4, 3),), ranks=(1,), repeat=1)
    assert [(r["F"], r["C"], r["update"]) for r in rows] == [(4, 3, "transport"), (4, 3, "project")]
    for r in rows:
        assert r["loop_ratio"] == pytest.approx(r["loop_s"] / r["batched_s"])
        assert r["numpy_ratio"] == pytest.approx(r["batched_numpy_s"] / r["batched_s"])
    assert "loop/b" in capsys.readouterr().out


def test_network_gradient_norm_is_preserved_through_orthogonal_layers():
    rng = np.random.default_rng(0)
    net = ConvNet(4, 4, (6, 6), constrained=True, seed=1, dtype=np.float64)
    stats = net.train_step(
        rng.standard_normal((8, 1, 6, 6)), rng.integers(0, 10, 8), lr=0.1, lr_classifier=0.1, rank=1, rng=rng
    )
    # layers 2..L and MaxMin are orthogonal, so the activation gradient keeps its norm
    assert stats["grad_first_activation"] == pytest.approx(stats["grad_last_activation"], rel=1e-12)
    assert net.unitarity_error() < 1e-12


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_conv_demo_cli_writes_log_and_plot(tmp_path, fake_mnist, capsys):
    out, png = tmp_path / "log.json", tmp_path / "plot.png"
    argv = ["conv-demo", "--data", str(fake_mnist), "--depth", "2", "--channels", "4", "--steps", "3"]
    argv += ["--batch", "16", "--baseline-lrs", "0.1", "0.01", "--out", str(out), "--plot", str(png)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert len(result["runs"]) == 3
    for run in result["runs"].values():
        assert len(run["log"]["loss"]) == 3
        assert 0 <= run["test_accuracy"] <= 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "final test accuracy" in capsys.readouterr().out
