"""Hostile settings, checkpoints and steps in the experiments: refused by name, nothing half done.

References: the whole state (parameters, both optimizers' ``state_dict``s, the sketch
generator's state, the run directory's bytes) captured before a failing call and compared
exactly after it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import unitary_update as uu
from unitary_update.cli import main
from unitary_update.experiments import CheckpointError
from unitary_update.experiments.checkpoints import FORMAT_VERSION, load_checkpoint, save_checkpoint
from unitary_update.experiments.config import RESUMABLE, TrainConfig, load_config, resume_conflicts
from unitary_update.experiments.train import build, evaluate, train, training_step

SMALL = {"task": "adding", "length": 6, "steps": 2, "hidden_size": 8, "batch_size": 4, "eval_size": 8}


# ------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"log_every": 0}, ValueError, "log_every must be >= 1; got 0"),
        ({"w_lr_divisor": 0}, ValueError, "w_lr_divisor must be finite and > 0"),
        ({"w_lr_divisor": float("inf")}, ValueError, "w_lr_divisor must be finite and > 0"),
        ({"input_scale": 0}, ValueError, "input_scale must be finite and > 0"),
        ({"input_scale": float("nan")}, ValueError, "input_scale must be finite and > 0"),
        ({"input_scale": "big"}, TypeError, "input_scale must be a real number"),
        ({"clip_grad_norm": 0}, ValueError, "clip_grad_norm must be finite and > 0"),
        ({"clip_grad_norm": float("inf")}, ValueError, "clip_grad_norm must be finite and > 0"),
        ({"clip_grad_norm": "1"}, TypeError, "clip_grad_norm must be a real number"),
        ({"readout_init": "normal"}, ValueError, "readout_init must be one of 'zero', 'uniform'"),
        ({"readout_init": None}, TypeError, "readout_init must be one of"),
        ({"bias_init": "ones"}, ValueError, "bias_init must be one of 'uniform', 'zero'"),
        ({"pixels": "raw"}, ValueError, "pixels applies to the pmnist task only; got pixels='raw' for adding"),
        ({"pixels": "normalised"}, ValueError, "pixels must be one of 'standardized', 'raw'"),
        ({"pixels": None}, TypeError, "pixels must be one of"),
        ({"activation": "tanh"}, ValueError, "activation must be one of 'modrelu', 'relu'"),
        ({"activation": "relu", "complex": True}, ValueError, "activation 'relu' needs a real model"),
        ({"lr": 1e-300, "w_lr_divisor": 1e300}, ValueError, "w_lr_divisor must leave W a positive"),
        ({"hidden_size": 0}, ValueError, "hidden_size must be >= 1; got 0"),
        ({"steps": -5}, ValueError, "steps must be >= 1; got -5"),
        ({"steps": 0}, ValueError, "steps must be >= 1; got 0"),
        ({"steps": 2.0}, TypeError, "steps must be an integer"),
        ({"eval_size": 0}, ValueError, "eval_size must be >= 1; got 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"lr": float("nan")}, ValueError, "lr must be finite and > 0"),
        ({"lr": -1e-3}, ValueError, "lr must be finite and > 0"),
        ({"lr": "fast"}, TypeError, "lr must be a real number"),
        ({"rank": 0}, ValueError, r"rank must be in \[1, hidden size = 8\]; got 0"),
        ({"rank": 9}, ValueError, r"rank must be in \[1, hidden size = 8\]; got 9"),
        ({"rank": 1.5}, TypeError, "rank must be an integer"),
        ({"rank": True}, TypeError, "rank must be an integer"),
        ({"task": "parity"}, ValueError, "task must be one of 'copy', 'adding', 'pmnist'"),
        ({"optimizer": "lbfgs"}, ValueError, "optimizer must be one of"),
        ({"update": "cayley"}, ValueError, "update must be one of"),
        ({"sketch": "svd"}, ValueError, "sketch must be one of"),
        ({"init": "zeros"}, ValueError, "init must be one of"),
        ({"dtype": "float16"}, ValueError, "dtype must be one of 'float32', 'float64'"),
        ({"device": "tpu"}, ValueError, "device must be 'cpu', 'gpu'"),
        ({"complex": 1}, TypeError, "complex must be a bool"),
        ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\)"),
        # RMSprop and Adam have no momentum: it was silently unused
        (
            {"momentum": 0.9},
            ValueError,
            "momentum applies to optimizer 'sgd' only; got momentum=0.9 with optimizer 'rmsprop'",
        ),
        ({"momentum": 0.5, "optimizer": "adam"}, ValueError, "momentum applies to optimizer 'sgd' only"),
        ({"lr_gamma": 0}, ValueError, r"lr_gamma must be in \(0, 1\]"),
        ({"lr_milestones": (3, 2)}, ValueError, "lr_milestones must be increasing"),
        ({"lr_milestones": 5}, TypeError, "lr_milestones must be a sequence"),
        ({"retract_every": -1}, ValueError, "retract_every must be >= 0"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"checkpoint_every": -1}, ValueError, "checkpoint_every must be >= 0"),
        ({"eval_every": -1}, ValueError, "eval_every must be >= 0"),
        ({"time_limit_s": float("nan")}, ValueError, "time_limit_s must be finite"),
        ({"length": 1}, ValueError, r"length must be an integer >= 2 \(the adding task's length\)"),
        ({"mnist_dir": 3}, TypeError, "mnist_dir must be a path"),
        # hostile values: integers too large for a float, arrays and numbers where names belong
        ({"lr": 10**400}, ValueError, r"lr must be finite and > 0; got inf"),
        ({"momentum": -(10**400)}, ValueError, r"momentum must (lie|be) in \[0, 1\); got -inf"),
        ({"time_limit_s": 10**400}, ValueError, r"time_limit_s must be (a )?finite"),
        ({"lr_milestones": np.array(3)}, TypeError, "lr_milestones must be a sequence"),
        ({"lr_milestones": {4: 5}}, TypeError, "lr_milestones must be a sequence"),
        ({"dtype": np.ones(2)}, TypeError, r"dtype must be one of 'float32', 'float64' \(a string\)"),
        ({"dtype": np.float64(1.0)}, TypeError, "dtype must be one of"),
        ({"task": np.array(["copy", "adding"])}, TypeError, "task must be one of"),
        ({"optimizer": 5}, TypeError, "optimizer must be one of"),
    ],
)
def test_every_setting_is_checked_at_construction_by_name(tmp_path, changes, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**{**SMALL, **changes})
    # and a setting changed after construction is caught by train() before the folder exists
    config = TrainConfig(**SMALL)
    for name, value in changes.items():
        setattr(config, name, value)
    with pytest.raises(error, match=match):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_hidden_size_none_is_the_papers_and_values_are_normalised():
    assert TrainConfig(task="copy").resolved_hidden() == 190
    assert TrainConfig(task="copy", hidden_size=1, rank=1).resolved_hidden() == 1
    config = TrainConfig(dtype=np.float64, lr=1, lr_milestones=[np.int64(3)], mnist_dir=Path("data"))
    assert (config.dtype, config.lr, config.lr_milestones, config.mnist_dir) == ("float64", 1.0, (3,), "data")
    json.dumps(dataclasses.asdict(config))  # what is stored is plain JSON


def test_load_config_names_the_file_and_the_setting(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**SMALL, "hidden": 64}))
    with pytest.raises(ValueError, match=r"config\.json: unknown setting 'hidden'"):
        load_config(path)
    path.write_text(json.dumps({**SMALL, "log_every": 0}))
    with pytest.raises(ValueError, match=r"config\.json: log_every must be >= 1; got 0"):
        load_config(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not a readable JSON file"):
        load_config(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_config(tmp_path)


def test_pmnist_sizes_beyond_the_data_are_refused_before_writing(tmp_path, fake_mnist):
    base = {"task": "pmnist", "steps": 1, "hidden_size": 4, "mnist_dir": str(fake_mnist), "eval_size": 8}
    with pytest.raises(ValueError, match="batch_size must be <= 256, the number of training images; got 300"):
        train(TrainConfig(**base, batch_size=300), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="eval_size must be <= 64, the number of test images; got 65"):
        train(TrainConfig(**{**base, "eval_size": 65}, batch_size=4), tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_evaluate_checks_its_arguments():
    task, model, _, _ = build(TrainConfig(**SMALL))
    x, y = task.batch(4, rng=0)
    with pytest.raises(ValueError, match="chunk must be an integer >= 1; got 0"):
        evaluate(model, x, y, chunk=0)
    with pytest.raises(ValueError, match="x must hold at least one sequence"):
        evaluate(model, x[:0], y[:0])
    with pytest.raises(ValueError, match="same number of sequences"):
        evaluate(model, x, y[:2])


# --------------------------------------------------------------------------------- resume
def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def test_resume_refuses_a_config_that_conflicts_with_the_stored_run(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**SMALL), run, progress=False)
    before = _files(run)
    changed = TrainConfig(**{**SMALL, "hidden_size": 16, "rank": 3, "optimizer": "adam", "steps": 4})
    with pytest.raises(ValueError, match=r"hidden_size 8 -> 16, optimizer 'rmsprop' -> 'adam', rank 1 -> 3") as info:
        train(changed, run, resume=True, progress=False)
    assert "may change only " + ", ".join(RESUMABLE) in str(info.value)
    assert _files(run) == before
    # steps below the checkpoint's: refused, nothing changed
    with pytest.raises(ValueError, match="steps must be >= the checkpoint's step 2"):
        train(None, run, resume=True, steps=1, progress=False)
    assert _files(run) == before
    # the resumable settings may change, and the run continues
    relaxed = TrainConfig(**{**SMALL, "steps": 3, "log_every": 1, "eval_every": 0, "checkpoint_every": 1})
    assert train(relaxed, run, resume=True, progress=False)["step"] == 3
    assert load_config(run).log_every == 1


def test_resume_conflicts_compare_resolved_values():
    stored = TrainConfig(task="copy")
    assert resume_conflicts(stored, TrainConfig(task="copy", hidden_size=190, length=100, steps=9)) == {}
    assert resume_conflicts(stored, TrainConfig(task="copy", hidden_size=64)) == {"hidden_size": (None, 64)}


# ------------------------------------------------------------------------------ checkpoints
def _state(model, opt, w_opt) -> dict:
    state = {f"param/{k}": np.array(v, copy=True) for k, v in model.params.items()}
    state.update({f"opt/{k}": np.array(v, copy=True) for k, v in opt.state_dict().items()})
    state.update({f"wopt/{k}": np.array(v, copy=True) for k, v in w_opt.state_dict().items()})
    return state


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert np.array_equal(a[key], b[key], equal_nan=a[key].dtype.kind in "fc"), key


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of a real (RMSprop, float32 by default) run after 2 steps, its config and its arrays."""
    run = tmp_path_factory.mktemp("saved")
    config = TrainConfig(**{**SMALL, "dtype": "float64"})
    train(config, run, progress=False)
    with np.load(run / "checkpoint.npz") as data:
        arrays = {key: data[key] for key in data.files}
    return config, run / "checkpoint.npz", arrays


def _write(path: Path, arrays: dict) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _tampered(arrays: dict, kind: str) -> tuple[dict, str]:
    """A copy of ``arrays`` with one entry broken; the key the error must name."""
    a = dict(arrays)
    W = a["param/W"]
    if kind == "W scalar":
        a["param/W"] = W[0, :1].reshape(())
    elif kind == "W row":
        a["param/W"] = W[:1]
    elif kind == "W complex":
        a["param/W"] = W.astype(np.complex128)
    elif kind == "W float32":
        a["param/W"] = W.astype(np.float32)
    elif kind == "W nan":
        a["param/W"] = np.where(np.eye(len(W), dtype=bool), np.nan, W)
    elif kind == "W scaled":
        a["param/W"] = W * (1 + 1e-4)
    elif kind == "W int":
        a["param/W"] = np.eye(len(W), dtype=np.int64)
    elif kind == "W huge member":  # refused from the zip directory, before it is decompressed
        a["param/W"] = np.zeros((1000, 1000))
    elif kind == "V inf":
        a["param/V"] = np.full_like(a["param/V"], np.inf)
    elif kind == "moment shape":
        a["opt/V/v"] = a["opt/V/v"][:, :0]
        return a, "opt/V/v"
    elif kind == "moment negative":
        a["opt/V/v"] = -np.abs(a["opt/V/v"]) - 1
        return a, "opt/V/v"
    elif kind == "moment nan":
        a["wopt/W/v"] = np.full_like(a["wopt/W/v"], np.nan)
        return a, "wopt/W/v"
    elif kind == "unknown key":
        a["param/Z"] = W
        return a, "param/Z"
    elif kind == "unknown group":
        a["extra"] = np.zeros(1)
        return a, "extra"
    elif kind == "unknown buffer":
        a["opt/V/m"] = a["opt/V/v"]
        return a, "opt/V/m"
    elif kind.startswith("missing "):
        key = kind.split(" ", 1)[1]
        del a[key]
        return a, key
    elif kind == "optimizer type":
        meta = json.loads(str(a["opt/meta"]))
        a["opt/meta"] = np.asarray(json.dumps({**meta, "type": "Adam"}))
        return a, "opt/meta"
    elif kind == "step counts":
        meta = json.loads(str(a["opt/meta"]))
        a["opt/meta"] = np.asarray(json.dumps({**meta, "t": {"Q": 1}}))
        return a, "opt/meta"
    elif kind == "rng state":
        a["wopt/unitary_meta"] = np.asarray(json.dumps({"steps": 2, "rng": {"bit_generator": "MT19937"}}))
        return a, "wopt/unitary_meta"
    elif kind == "meta step":
        a["meta"] = np.asarray(json.dumps({"step": -1, "seed": 0}))
        return a, "meta"
    elif kind == "meta not json":
        a["meta"] = np.asarray("{step")
        return a, "meta"
    elif kind in _JSON_EDITS:
        key, field, value = _JSON_EDITS[kind]
        meta = json.loads(str(a[key]))
        if isinstance(field, tuple):  # a nested field
            meta[field[0]][field[1]] = value
        else:
            meta[field] = value
        a[key] = np.asarray(json.dumps(meta))
        return a, key
    elif kind == "meta nested too deeply":
        a["meta"] = np.asarray("[" * 100_000 + "]" * 100_000)
        return a, "meta"
    elif kind == "newer format":
        a["format_version"] = np.asarray(FORMAT_VERSION + 1)
        return a, "format_version"
    elif kind == "format type":
        a["format_version"] = np.asarray("2")
        return a, "format_version"
    else:
        raise AssertionError(kind)
    return a, "param/W" if kind.startswith("W") else "param/V"


_JSON_EDITS = {
    # kind: (entry, field, value): values that JSON holds but the optimizers or the loop cannot use
    "lr too large for a float": ("opt/meta", "lr", 10**400),
    "step count too large": ("opt/meta", ("t", "V"), 10**400),
    "unknown optimizer field": ("opt/meta", "betas", [0.9, 0.999]),
    "W steps too large": ("wopt/unitary_meta", "steps", 2**63),
    "unknown unitary field": ("wopt/unitary_meta", "drift", 1),
    "rng state of floats": ("wopt/unitary_meta", ("rng", "has_uint32"), 0.5),
    "elapsed too large for a float": ("meta", "elapsed_s", 10**400),
    "step too large": ("meta", "step", 10**30),
}

KINDS = [
    *_JSON_EDITS,
    "meta nested too deeply",
    "W scalar",
    "W row",
    "W complex",
    "W float32",
    "W nan",
    "W scaled",
    "W int",
    "W huge member",
    "V inf",
    "moment shape",
    "moment negative",
    "moment nan",
    "unknown key",
    "unknown group",
    "unknown buffer",
    "missing param/b",
    "missing opt/meta",
    "missing opt/O/v",
    "missing wopt/unitary_meta",
    "missing meta",
    "optimizer type",
    "step counts",
    "rng state",
    "meta step",
    "meta not json",
    "newer format",
    "format type",
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_tampered_checkpoint_is_one_error_naming_file_and_key_and_loads_nothing(tmp_path, saved, kind):
    config, _, arrays = saved
    broken, key = _tampered(arrays, kind)
    path = _write(tmp_path / "checkpoint.npz", broken)
    _, model, opt, w_opt = build(config)
    before = _state(model, opt, w_opt)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model, opt, w_opt)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert info.value.key == key
    assert info.value.path == str(path)
    _assert_same(before, _state(model, opt, w_opt))


@pytest.mark.parametrize("cut", [0, 10, 100, 0.5, -30])
def test_a_truncated_or_corrupt_file_names_the_path(tmp_path, saved, cut):
    config, original, _ = saved
    data = original.read_bytes()
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut] if cut >= 0 else data[:cut])
    _, model, opt, w_opt = build(config)
    before = _state(model, opt, w_opt)
    with pytest.raises(CheckpointError, match=f"^{path}: "):
        load_checkpoint(path, model, opt, w_opt)
    _assert_same(before, _state(model, opt, w_opt))


def test_flipped_bytes_and_objects_are_refused(tmp_path, saved):
    config, original, arrays = saved
    data = bytearray(original.read_bytes())
    with zipfile.ZipFile(original) as archive:
        info = archive.getinfo("param/W.npy")
    data[info.header_offset + 200] ^= 0xFF  # inside W's data: the zip's CRC no longer matches
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(data))
    _, model, opt, w_opt = build(config)
    with pytest.raises(CheckpointError, match=r"flipped\.npz: param/W: unreadable"):
        load_checkpoint(path, model, opt, w_opt)
    with_object = {**arrays, "param/b": np.array([None, 1], dtype=object)}
    path = _write(tmp_path / "objects.npz", with_object)  # np.savez pickles it; loading never unpickles
    with pytest.raises(CheckpointError, match=r"objects\.npz: param/b: holds Python objects"):
        load_checkpoint(path, model, opt, w_opt)


def test_a_complex_run_refuses_a_real_checkpoint(tmp_path, saved):
    config, path, _ = saved
    _, model, opt, w_opt = build(dataclasses.replace(config, complex=True))
    with pytest.raises(CheckpointError, match=r"param/\w: has dtype float64; the model's \w has dtype complex128"):
        load_checkpoint(path, model, opt, w_opt)


def test_a_file_from_before_versioning_is_migrated_and_checked(tmp_path, saved):
    config, path, arrays = saved
    legacy = {key: value for key, value in arrays.items() if key != "format_version"}
    legacy_path = _write(tmp_path / "legacy.npz", legacy)
    _, model, opt, w_opt = build(config)
    _, ref_model, ref_opt, ref_w_opt = build(config)
    assert load_checkpoint(legacy_path, model, opt, w_opt) == load_checkpoint(path, ref_model, ref_opt, ref_w_opt)
    _assert_same(_state(model, opt, w_opt), _state(ref_model, ref_opt, ref_w_opt))
    broken, _ = _tampered(legacy, "W row")
    with pytest.raises(CheckpointError, match="param/W: has shape"):
        load_checkpoint(_write(tmp_path / "legacy_bad.npz", broken), model, opt, w_opt)


def test_saved_files_carry_the_format_version_and_no_pickle(saved):
    _, path, arrays = saved
    assert int(arrays["format_version"]) == FORMAT_VERSION
    assert all(not value.dtype.hasobject for value in arrays.values())
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def test_resume_from_a_tampered_checkpoint_is_one_line_naming_it(tmp_path, saved, capsys):
    config, _original, arrays = saved
    run = tmp_path / "run"
    train(config, run, progress=False)
    broken, _ = _tampered(arrays, "W complex")
    _write(run / "checkpoint.npz", broken)
    before = _files(run)
    assert main(["train", "--resume", str(run), "--steps", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{run / 'checkpoint.npz'}: param/W: has dtype complex128" in err[0]
    assert _files(run) == before


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from unitary_update.experiments.train import TrainConfig, build, save_checkpoint

    path = Path(sys.argv[1])
    config = TrainConfig(task="adding", length=2, hidden_size=int(sys.argv[2]), dtype="float64", optimizer="sgd")
    _, model, opt, w_opt = build(config)
    W0 = model.params["W"].copy()
    k = 0
    while True:
        k += 1
        model.params["W"][...] = np.roll(W0, k, axis=0)  # a row permutation: still orthogonal
        model.params["V"][...] = k
        save_checkpoint(path, model, opt, w_opt, {"step": k, "seed": 0})
        if k == 1:
            print("ready", flush=True)
    """
)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed or removed meanwhile
        return 0


def test_a_writer_killed_mid_write_leaves_the_previous_complete_checkpoint(tmp_path):
    hidden = 700  # W and V of about 4 MB each in float64: most of the loop's time is spent writing
    path = tmp_path / "checkpoint.npz"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(hidden)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # kill while a temporary file is half written
            if any(_size(tmp) > 0 for tmp in tmp_path.glob(".checkpoint.npz.*.tmp")):
                break
            time.sleep(0.0002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    config = TrainConfig(task="adding", length=2, hidden_size=hidden, dtype="float64", optimizer="sgd")
    _, model, opt, w_opt = build(config)
    W0 = model.params["W"].copy()
    meta = load_checkpoint(path, model, opt, w_opt)  # complete, valid: the last save that finished
    k = meta["step"]
    assert k >= 1
    assert np.array_equal(model.params["W"], np.roll(W0, k, axis=0))
    assert np.all(model.params["V"] == k)
    # the next save replaces it and removes the killed writer's temporary file
    save_checkpoint(path, model, opt, w_opt, {"step": k + 1, "seed": 0})
    assert not list(tmp_path.glob("*.tmp"))


def test_save_refuses_non_json_meta_and_keeps_the_previous_file(tmp_path, saved):
    config, original, _ = saved
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(original.read_bytes())
    _, model, opt, w_opt = build(config)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        save_checkpoint(path, model, opt, w_opt, {"step": 1, "elapsed_s": float("nan")})
    assert path.read_bytes() == original.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


# --------------------------------------------------------------------------- training step
@pytest.fixture
def stepped():
    """A model and its optimizers after one good step (so every moment exists), and a batch."""
    task, model, opt, w_opt = build(TrainConfig(**SMALL))
    x, y = task.batch(4, rng=0)
    training_step(model, opt, w_opt, x, y)
    return model, opt, w_opt, x, y


def test_a_step_whose_second_update_fails_is_rolled_back_exactly(stepped):
    # W's update succeeds, then the update of V, b, O, c fails (a moment of the wrong shape)
    model, opt, w_opt, x, y = stepped
    opt.state["V"]["v"] = opt.state["V"]["v"][:, :1].copy()
    before = _state(model, opt, w_opt)
    rng_before = w_opt.rng.bit_generator.state
    with pytest.raises(ValueError, match="V"):  # the error names the parameter
        training_step(model, opt, w_opt, x, y)
    _assert_same(before, _state(model, opt, w_opt))
    assert w_opt.rng.bit_generator.state == rng_before


def test_a_step_whose_w_update_fails_is_rolled_back_exactly(stepped):
    model, opt, w_opt, x, y = stepped
    w_opt.base.state["W"]["v"][0, 0] = np.nan  # W's direction becomes NaN: the update refuses it
    before = _state(model, opt, w_opt)
    with pytest.raises(ValueError, match="W"):
        training_step(model, opt, w_opt, x, y)
    _assert_same(before, _state(model, opt, w_opt))


def test_a_step_with_bad_data_changes_nothing_and_the_next_good_one_works(stepped):
    model, opt, w_opt, x, y = stepped
    before = _state(model, opt, w_opt)
    bad_x = x.copy()
    bad_x[0, 0, 0] = np.inf
    with pytest.raises(uu.NonFiniteError, match=r"^x contains NaN or Inf$"):
        training_step(model, opt, w_opt, bad_x, y)
    with pytest.raises(ValueError, match=r"y must have shape \(4, 1\)"):
        training_step(model, opt, w_opt, x, y[:1])
    _assert_same(before, _state(model, opt, w_opt))
    training_step(model, opt, w_opt, x, y)
    assert w_opt.steps == 2
    assert uu.unitarity_error(model.params["W"]) < 1e-5


# ------------------------------------------------------------------------- conv MNIST net
def test_conv_net_step_that_fails_in_a_later_layer_puts_every_layer_back(monkeypatch):
    from unitary_update.experiments.conv_mnist import ConvNet

    net = ConvNet(3, 4, (4, 4), seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    x = np.random.default_rng(2).standard_normal((5, 1, 4, 4))
    labels = np.arange(5) % 10
    before = [(layer.U.copy(), layer.Q.copy(), layer.steps) for layer in net.layers]
    W, b, rng_state = net.W.copy(), net.b.copy(), rng.bit_generator.state

    def fail(*args, **kwargs):
        raise RuntimeError("the last layer's step failed")

    monkeypatch.setattr(net.layers[-1], "step", fail)  # the first two layers have stepped by then
    with pytest.raises(RuntimeError, match="last layer"):
        net.train_step(x, labels, lr=0.1, lr_classifier=0.1, rank=1, rng=rng)
    for layer, (U, Q, steps) in zip(net.layers, before, strict=True):
        assert np.array_equal(layer.U, U)
        assert np.array_equal(layer.Q, Q)
        assert layer.steps == steps
    assert np.array_equal(net.W, W)
    assert np.array_equal(net.b, b)
    assert rng.bit_generator.state == rng_state
    with pytest.raises(ValueError, match=r"labels must be classes in \[0, 9\]"):
        net.train_step(x, labels + 10, lr=0.1, lr_classifier=0.1, rank=1, rng=rng)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 3}, "channels must be even"),
        ({"rank": 9}, "rank must satisfy 1 <= rank <= 8"),
        ({"eval_every": 0}, "eval_every must be >= 1"),
        ({"lr": 0.0}, "lr must be finite and > 0"),
    ],
)
def test_conv_mnist_settings_are_checked_before_the_data(tmp_path, kwargs, match):
    from unitary_update.experiments.conv_mnist import train_mnist

    with pytest.raises(ValueError, match=match):
        train_mnist(tmp_path / "no-mnist-here", **kwargs)


def test_corrupt_data_files_name_the_file(tmp_path):
    from unitary_update.experiments.datasets import read_idx
    from unitary_update.experiments.train import read_metrics

    path = tmp_path / "x.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage" * 10)  # a gzip header, then nothing valid
    with pytest.raises(ValueError, match=r"x\.gz cannot be read as an IDX file"):
        read_idx(path)
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "step": 1}\n{"split": "tr')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not a JSON record"):
        read_metrics(tmp_path)


# ------------------------------------------------------------------ hostile arguments (review)
@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"hidden_size": 10**30}, "hidden_size too large: W"),
        ({"hidden_size": 10**6}, "hidden_size too large: the run needs at least"),  # 7 TiB: beyond any machine here
        ({"length": 2**62}, "length, batch_size and hidden_size too large"),
        ({"batch_size": 2**62}, "length, batch_size and hidden_size too large"),
        ({"eval_size": 2**62}, "length and eval_size too large"),
    ],
)
def test_sizes_too_large_for_memory_are_refused_by_name_before_the_run_dir(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        train(TrainConfig(**{**SMALL, **changes}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"run_dir": None}, TypeError, "run_dir must be a path"),
        ({"run_dir": b"run"}, TypeError, "run_dir must be a path"),
        ({"resume": "no"}, TypeError, "resume must be a bool"),
        ({"progress": "no"}, TypeError, "progress must be a bool"),
        ({"on_step": 5}, TypeError, "on_step must be a callable"),
        ({"lr_milestones": 3}, TypeError, "lr_milestones must be a sequence"),
    ],
)
def test_train_checks_its_arguments_before_the_run_dir(tmp_path, kwargs, error, match):
    run = kwargs.pop("run_dir", tmp_path / "run")
    with pytest.raises(error, match=match):
        train(TrainConfig(**SMALL), run, progress=kwargs.pop("progress", False), **kwargs)
    assert not (tmp_path / "run").exists()


def test_training_step_evaluate_and_save_check_their_arguments(tmp_path):
    config = TrainConfig(**SMALL)
    task, model, opt, w_opt = build(config)
    x, y = task.batch(4, rng=0)
    before = _state(model, opt, w_opt)
    with pytest.raises(TypeError, match="factored must be a bool"):
        training_step(model, opt, w_opt, x, y, factored="yes")
    with pytest.raises(TypeError, match="opt must be an Optimizer; got str"):
        training_step(model, "rmsprop", w_opt, x, y)
    with pytest.raises(TypeError, match="x must be an array of sequences; got int"):
        evaluate(model, 5, y)
    _assert_same(before, _state(model, opt, w_opt))
    # save_checkpoint refuses what load_checkpoint would refuse, and writes nothing
    for meta, match in [
        ([1], "meta must be a dict"),
        ({"seed": 0}, "integer 'step'"),
        ({"step": 1, "elapsed_s": -1}, "elapsed_s"),
    ]:
        with pytest.raises(ValueError, match=match):
            save_checkpoint(tmp_path / "c.npz", model, opt, w_opt, meta)
    with pytest.raises(TypeError, match="path must be a path"):
        save_checkpoint(None, model, opt, w_opt, {"step": 0})
    assert list(tmp_path.iterdir()) == []


def test_a_failing_commit_inside_load_checkpoint_puts_everything_back(tmp_path, saved, monkeypatch):
    config, path, _ = saved
    _, model, opt, w_opt = build(config)
    before = _state(model, opt, w_opt)

    def fail(state):
        raise RuntimeError("W optimizer refused its state")

    monkeypatch.setattr(w_opt, "load_state_dict", fail)  # after the parameters and opt were written
    with pytest.raises(RuntimeError, match="refused its state"):
        load_checkpoint(path, model, opt, w_opt)
    _assert_same(before, _state(model, opt, w_opt))


def test_conv_mnist_hostile_arguments_are_refused_by_name(tmp_path):
    from unitary_update.experiments.conv_mnist import ConvNet, downsample, train_mnist

    for kwargs, error, match in [
        ({"depth": 10**30}, ValueError, "depth = 1000.* too large"),  # refused at once, not a loop over layers
        ({"baseline_lrs": 0.1}, TypeError, "baseline_lrs must be a sequence"),
        ({"baseline_lrs": ()}, ValueError, "baseline_lrs must hold at least one"),
        ({"lr": 10**400}, ValueError, "lr must be finite and > 0; got (inf|an integer of 401 digits)"),
        ({"out": tmp_path}, ValueError, "out must be a file to write"),
        ({"out": tmp_path / "missing" / "log.json"}, FileNotFoundError, "out: the folder of"),
        ({"plot": 5}, TypeError, "plot must be a path"),
    ]:
        with pytest.raises(error, match=match):
            train_mnist(tmp_path / "no-mnist-here", **kwargs)
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    for args, error, match in [
        ((images, 0), ValueError, "factor must be >= 1"),
        ((images, 3), ValueError, "factor must divide the image size 28 x 28"),
        ((images, True), TypeError, "factor must be an integer"),
        ((images[0], 2), ValueError, r"images must be a real \(n, H, W\) array"),
    ]:
        with pytest.raises(error, match=match):
            downsample(*args)
    for kwargs, error, match in [
        ({"constrained": "no"}, TypeError, "constrained must be a bool"),
        ({"dtype": np.complex64}, TypeError, "dtype must be float32 or float64"),
    ]:
        with pytest.raises(error, match=match):
            ConvNet(1, 2, (4, 4), **kwargs)
    net = ConvNet(2, 2, (4, 4), dtype=np.float64)
    x, labels = np.random.default_rng(0).standard_normal((3, 1, 4, 4)), np.array([1, 2, 3])
    assert net.predict(x[:0]).shape == (0,)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        net.predict(x, batch=0)
    layers, W, b = [(layer.U.copy(), layer.Q.copy(), layer.steps) for layer in net.layers], net.W.copy(), net.b.copy()
    rng = np.random.default_rng(1)
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator"):
        net.train_step(x, labels, lr=0.1, lr_classifier=0.1, rank=1, rng=3)
    with pytest.raises(ValueError, match=r"lr_classifier = .* overflows float64; nothing was changed"):
        net.train_step(x * 1e6, labels, lr=0.1, lr_classifier=1e308, rank=1, rng=rng)
    for layer, (U, Q, steps) in zip(net.layers, layers, strict=True):
        assert np.array_equal(layer.U, U)
        assert np.array_equal(layer.Q, Q)
        assert layer.steps == steps
    assert np.array_equal(net.W, W)
    assert np.array_equal(net.b, b)


def test_data_files_and_tasks_refuse_hostile_arguments(tmp_path, fake_mnist):
    from unitary_update.experiments.datasets import read_idx
    from unitary_update.experiments.tasks import PermutedMNIST, make_task

    path = tmp_path / "huge.idx"  # a header whose shape product overflows int64
    path.write_bytes(bytes([0, 0, 0x08, 4]) + (2**32 - 1).to_bytes(4, "big") * 4 + bytes(16))
    with pytest.raises(ValueError, match=r"huge\.idx is truncated: header declares shape"):
        read_idx(path)
    task = PermutedMNIST(fake_mnist)
    for call, match in [
        (lambda: task.split("validation"), "which must be 'train' or 'test'; got 'validation'"),
        (lambda: task.split("test", -5), "limit must be an integer >= 0; got -5"),
        (lambda: task.epoch_batch(-1, 4, 0), "step must be an integer >= 0; got -1"),
        (lambda: task.epoch_batch(1.5, 4, 0), "step must be an integer >= 0"),
        (lambda: make_task("adding", length=6).train_batch(4, 0, -1), "seed must be an integer >= 0; got -1"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()


def test_helpers_name_hostile_arguments():
    from unitary_update.experiments.checkpoints import read_metrics, to_device
    from unitary_update.experiments.datasets import load_mnist, read_idx
    from unitary_update.experiments.tasks import make_task, task_class
    from unitary_update.models.urnn import init_recurrent

    _, model, opt, w_opt = build(TrainConfig(**SMALL))
    before = _state(model, opt, w_opt)
    for call, error, match in [
        (lambda: to_device(model, opt, w_opt, "numpy"), TypeError, "xp must be the numpy or cupy module"),
        (lambda: read_metrics(None), TypeError, "run_dir must be a path"),
        (lambda: read_idx(None), TypeError, "path must be a path"),
        (lambda: load_mnist(5), TypeError, "directory must be a path"),
        (lambda: task_class(["copy"]), ValueError, "task must be one of"),
        (lambda: make_task("adding", length=6).batch(2**40), ValueError, "batch_size = 1099511627776 is too large"),
        (lambda: init_recurrent(-1, "henaff"), ValueError, "n must be >= 1; got -1"),
        (lambda: init_recurrent(3, "haar", complex="yes"), TypeError, "complex must be a bool"),
        (lambda: load_config(None), TypeError, "path must be a path"),
        (lambda: resume_conflicts(TrainConfig(**SMALL), {"task": "adding"}), TypeError, "requested must be a"),
    ]:
        with pytest.raises(error, match=match):
            call()
    _assert_same(before, _state(model, opt, w_opt))
