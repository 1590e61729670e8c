"""The GPU benchmark's measurement, ratio and table logic, run on NumPy at small N."""

from __future__ import annotations

import numpy as np
import pytest

from unitary_update.bench import gpu as _bench_gpu
from unitary_update.bench.gpu import BenchRow, memory_floor_seconds, run, target_lines, to_markdown
from unitary_update.cli import main


def test_memory_floor_counts_passes_over_U_bytes():
    assert memory_floor_seconds(8192, "complex64", bandwidth=8 * 8192**2, passes=3) == pytest.approx(3.0)
    assert memory_floor_seconds(10, np.float64, bandwidth=800.0, passes=1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        memory_floor_seconds(10, "float32", bandwidth=0.0)


def test_run_times_every_case_and_computes_ratios_from_the_timer():
    calls = []

    def timer(fn, repeat, warmup):  # runs the timed call, reports a fixed time per kind of call
        fn()
        calls.append(repeat)
        return 2e-3 if repeat == 1 else 1e-3  # dense_repeat = 1, repeat = 3

    rows, bandwidth = run(
        np, [8, 16], ["float32", "complex64"], [1, 2], repeat=3, dense_repeat=1, bandwidth=1e9, timer=timer
    )
    assert bandwidth == 1e9
    assert [(r.n, r.dtype, r.k) for r in rows] == [
        (n, d, k) for n in (8, 16) for d in ("float32", "complex64") for k in (1, 2)
    ]
    # per (N, dtype): 2 updates per k, the dense pair once
    assert calls.count(3) == 2 * len(rows)
    assert calls.count(1) == 2 * 4
    row = rows[-1]
    assert row.floor_s == pytest.approx(3 * 16 * 16 * 8 / 1e9)
    assert row.project_floor_ratio == pytest.approx(1e-3 / row.floor_s)
    assert row.transport_speedup == pytest.approx(2.0)


def test_run_with_the_real_timer_measures_bandwidth_and_keeps_U_unitary():
    rows, bandwidth = run(np, [32], ["float64"], [1, 4], repeat=2)
    assert bandwidth > 0
    assert len(rows) == 2
    for r in rows:
        assert min(r.project_s, r.transport_s, r.dense_project_s, r.dense_transport_s, r.floor_s) > 0


def _row(n, k, project_s, transport_s, dense_s=1.0, floor_s=1e-3):
    return BenchRow(n, "float32", k, project_s, transport_s, dense_s, dense_s, floor_s)


def test_targets_are_judged_at_the_largest_N_and_k_1():
    rows = [_row(1024, 1, 1.0, 1.0), _row(8192, 1, 2e-3, 9e-3), _row(8192, 16, 1.0, 1.0)]
    lines = target_lines(rows)
    assert len(lines) == 2
    assert "project: 2.00x the floor, 500x faster than dense -> meets" in lines[0]
    assert "transport: 9.00x the floor, 111x faster than dense -> misses" in lines[1]


def test_markdown_table_has_device_command_and_one_line_per_row():
    rows = [_row(1024, 1, 2e-3, 3e-3), _row(1024, 16, 4e-3, 5e-3)]
    command = "python -m unitary_update bench-gpu"
    text = to_markdown(rows, device="NVIDIA H100 80GB HBM3", command=command, bandwidth=3e12)
    assert "- device: NVIDIA H100 80GB HBM3" in text
    assert "- command: `python -m unitary_update bench-gpu`" in text
    assert "3000.0 GB/s" in text
    table = [line for line in text.splitlines() if line.startswith("| 1024 |")]
    assert table == [
        "| 1024 | float32 | 1 | 2 | 3 | 1000 | 1000 | 1 | 2.00 | 3.00 | 500 | 333 |",
        "| 1024 | float32 | 16 | 4 | 5 | 1000 | 1000 | 1 | 4.00 | 5.00 | 250 | 200 |",
    ]


def test_cli_bench_gpu_on_the_cpu_writes_the_table(tmp_path, capsys):
    out = tmp_path / "bench.md"
    argv = ["bench-gpu", "--device", "cpu", "--sizes", "16", "--ranks", "1", "2", "--repeat", "1", "--output", str(out)]
    assert main(argv) == 0
    text = out.read_text()
    assert f"`python -m unitary_update {' '.join(argv)}`" in text
    assert sum(line.startswith("| 16 |") for line in text.splitlines()) == 4  # 2 dtypes x 2 ranks
    assert "bench-gpu on CPU" in capsys.readouterr().out


def test_cli_bench_gpu_rejects_ranks_above_sizes(capsys):
    assert main(["bench-gpu", "--device", "cpu", "--sizes", "4", "--ranks", "8"]) == 2
    assert "every rank must be <= every size" in capsys.readouterr().err


def test_device_name_on_numpy():
    assert _bench_gpu.device_name(np).startswith("CPU")
