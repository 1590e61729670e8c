"""The soak benchmark (unitary_update.bench.soak and ``python -m unitary_update soak``), run short."""

from __future__ import annotations

import json

import numpy as np
import pytest

import unitary_update as uu
from unitary_update.bench.soak import soak
from unitary_update.cli import main


def test_soak_records_and_is_reproducible():
    a = soak(n=16, steps=250, update="transport", record_every=100, seed=3)
    b = soak(n=16, steps=250, update="transport", record_every=100, seed=3)
    assert a["step"] == [0, 100, 200, 250]
    assert a["error"] == b["error"]
    assert a["max_error"] == max(a["error"])
    assert a["final_error"] == a["error"][-1]
    assert a["retractions"] == 0


def test_drift_control_bounds_the_float32_drift():
    """1,500 float32 steps at N = 64: uncontrolled drift passes 1e-5; controlled stays at the floor."""
    free = soak(n=64, steps=1500, update="project", record_every=100)
    held = soak(n=64, steps=1500, update="project", record_every=100, drift=uu.DriftControl())
    assert free["final_error"] > 5e-6
    assert held["max_error"] < 64 * np.finfo(np.float32).eps / 2
    assert held["retractions"] >= 1


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"update": "cayley"}, "unknown update 'cayley'"), ({"steps": 0}, "steps and record_every")]
)
def test_soak_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        soak(**kwargs)


def test_cli_soak_prints_a_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "soak.json"
    assert main(["soak", "--n", "8", "--steps", "40", "--record-every", "20", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "project/default" in printed
    assert "transport/none" in printed
    runs = json.loads(path.read_text())
    assert set(runs) == {"project/none", "project/default", "transport/none", "transport/default"}
    assert runs["project/none"]["step"] == [0, 20, 40]
