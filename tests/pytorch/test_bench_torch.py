"""The bench-torch command: both tables from one run, geotorch optional, one-line user errors."""

from __future__ import annotations

import json
import sys

import pytest

torch = pytest.importorskip("torch")

from unitary_update.cli import main  # noqa: E402

SMALL = ["bench-torch", "--sizes", "16", "--ranks", "1,2", "--repeat", "1", "--delay", "2", "--batch-size", "4",
         "--hidden", "8", "--steps", "4", "--lrs", "1e-3,1e-2", "--eval-every", "2", "--copy-ranks", "1,2"]  # fmt: skip


def test_bench_torch_writes_both_tables_and_consistent_results(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main([*SMALL, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| ProjUNN k=1 | " in out
    assert "| ProjUNN k=2 | " in out
    assert "| torch parametrizations.orthogonal | " in out
    r = json.loads(path.read_text())
    costs = r["step_costs"]
    methods = ["projunn_k1", "projunn_k2", "geotorch", "torch"]
    assert costs["methods"] == methods
    for m in methods:
        seconds = costs["seconds"][m]["16"]
        assert seconds > 0
        assert costs["ratio"][m]["16"] == pytest.approx(seconds / costs["seconds"]["projunn_k1"]["16"])
    copy = r["copy_task"]
    assert copy["methods"] == ["projunn_k1", "projunn_k2", "geotorch", "torch"]
    for m in copy["methods"]:
        runs = copy["runs"][m]
        assert sorted(runs) == ["0.001", "0.01"]
        best = min(runs, key=lambda lr: runs[lr]["final"])
        assert float(best) == copy["best_lr"][m]
        for run in runs.values():
            assert [s for s, _ in run["curve"]] == [2, 4]
            assert run["unitarity_error"] < 1e-4  # every method keeps the weight orthogonal
        target = runs[best]["final"]
        for p in ("projunn_k1", "projunn_k2"):
            curve = copy["runs"][p][str(copy["best_lr"][p])]["curve"]
            expected = next((s for s, loss in curve if loss <= target), None)
            assert copy["steps_to_match"][p][m] == expected


def test_bench_torch_without_geotorch_skips_its_rows(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "geotorch", None)  # as if it were not installed
    assert main([*SMALL, "--no-copy", "--ranks", "1"]) == 0
    out = capsys.readouterr().out
    assert "geotorch.orthogonal" not in out
    assert "note: geotorch is not installed (pip install geotorch): its rows are skipped" in out
    assert "| torch parametrizations.orthogonal |" in out


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--sizes", "0"], "argument --sizes: expected comma-separated positive integers; got '0'"),
        (["--sizes", "8", "--ranks", "16"], "every rank must be <= every size; got ranks [16], sizes [8]"),
        (["--lrs", "-1"], "argument --lrs: expected comma-separated positive numbers"),
    ],
)
def test_bench_torch_mistakes_are_one_line(capsys, words, message):
    assert main(["bench-torch", *words]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_bench_torch_without_torch_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["bench-torch", "--sizes", "16"]) == 2
    assert capsys.readouterr().err.endswith('error: bench-torch needs torch: pip install "unitary_update[torch]"\n')
