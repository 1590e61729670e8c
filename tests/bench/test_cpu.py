"""bench: the k x N grid with the N x 2k GEMM and the memory floor, thread and after-torch columns."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from unitary_update._extras import MissingExtraError
from unitary_update.bench import cpu


def _quiet(line: str) -> None:
    pass


def test_grid_defaults_cover_the_issue_grid():
    assert set(cpu.DEFAULT_SIZES) == {128, 190, 512, 1024, 2048, 4096}
    assert set(cpu.DEFAULT_RANKS) == {1, 4, 16, 64}


def test_rows_have_the_baselines_of_their_own_rank():
    rows = cpu.run([24], ranks=[1, 16], repeat=1, threads=1, log=_quiet, compare_threads=True)
    by_k = {row["k"]: row for row in rows}
    itemsize = np.dtype(np.float32).itemsize
    assert by_k[1]["floor_bytes"] == 24 * 2 * itemsize
    assert by_k[16]["floor_bytes"] == 24 * 24 * itemsize  # 2k capped at N
    for row in rows:
        assert row["gemm2k_s"] > 0
        assert row["project_1thread_s"] > 0
        assert row["transport_1thread_s"] > 0
    table = cpu.format_markdown(rows)
    assert "/ GEMM N x N @ N x 2k" in table
    assert "1 thread" in table
    assert "after torch" not in table
    assert len(table.splitlines()) == 2 + 2 * len(rows)


def test_after_torch_times_the_updates_again():
    pytest.importorskip("torch")
    rows = cpu.run([16], ranks=[1], repeat=1, threads=1, log=_quiet, after_torch=True)
    assert rows[0]["project_after_torch_s"] > 0
    assert rows[0]["transport_after_torch_s"] > 0
    assert "after torch / before" in cpu.format_markdown(rows)


def test_after_torch_without_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtraError, match=r"unitary_update\[torch\]"):
        cpu.run([16], ranks=[1], repeat=1, log=_quiet, after_torch=True)
