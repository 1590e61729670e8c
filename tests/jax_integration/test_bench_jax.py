"""The JAX-vs-NumPy benchmark and its command, on a tiny grid."""

from __future__ import annotations

import argparse

import pytest

from unitary_update.bench.jax_compare import JaxRow, add_arguments, run, to_markdown
from unitary_update.cli import main

pytest.importorskip("jax")


@pytest.fixture(autouse=True)
def _started_backend(monkeypatch):
    """JAX's CPU backend already running: threads=1 must not change XLA_FLAGS for the whole session."""
    import jax

    jax.devices("cpu")
    monkeypatch.setenv("XLA_FLAGS", "")


def test_run_times_both_paths_for_every_case(x32):
    rows = run([8], [1], ["float32"], repeat=1)
    assert [(r.n, r.k, r.dtype) for r in rows] == [(8, 1, "float32")]
    for r in rows:
        for t in (r.numpy_project_s, r.jax_project_s, r.donated_project_s, r.numpy_transport_s, r.jax_transport_s):
            assert 0 < t < 10
        assert r.project_ratio == pytest.approx(r.jax_project_s / r.numpy_project_s)
    table = to_markdown(rows, "cmd")
    assert table.splitlines()[0] == "`cmd`"
    assert len(table.splitlines()) == 2 + 2 + len(rows)


def test_run_validates_before_timing():
    with pytest.raises(ValueError, match="rank 3 is larger than size 2"):
        run([2], [3])
    with pytest.raises(TypeError, match="dtype"):
        run([4], [1], ["int8"])


def test_command_prints_the_table(capsys, x32):
    assert main(["bench-jax", "--sizes", "8", "--ranks", "1", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("`python -m unitary_update bench-jax --sizes 8 --ranks 1 --repeat 1`")
    assert "| 8 | 1 | float32 |" in out
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).sizes == [256, 1024, 4096]
    assert isinstance(JaxRow(1, 1, "float32", 1.0, 1.0, 1.0, 1.0, 1.0, 1.0).transport_ratio, float)
    import os

    assert os.environ["XLA_FLAGS"] == ""  # the backend had started: the flags were left alone
