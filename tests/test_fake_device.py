"""The device code paths, run on every machine through a CuPy stand-in (``tests/fake_cupy.py``).

On a GPU machine ``tests/test_gpu.py`` runs the same code on real CuPy; without one, the code
behind ``xp is not np`` (cuBLAS in-place update, top-k by argmax, device generators, the RNN on a
device, ``train --device gpu``, checkpoints of device arrays) would never run in CI.  The stand-in
keeps NumPy's arithmetic but follows CuPy's rules about the host, and counts every read of a
device value to the host (a synchronisation on a real GPU), so these tests also show which calls
never wait for the device.  Skipped where real CuPy is installed (``test_gpu.py`` covers it there).
"""

from __future__ import annotations

import importlib.util
import json

import fake_cupy
import numpy as np
import pytest
from helpers import ALL_DTYPES, random_factors, rtol_for

import unitary_update as uu
from unitary_update.experiments.train import TrainConfig, build, load_checkpoint, train
from unitary_update.models.urnn import URNN

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("cupy") is not None, reason="real CuPy installed: tests/test_gpu.py runs this code"
)


@pytest.fixture
def cp(monkeypatch: pytest.MonkeyPatch):
    return fake_cupy.install(monkeypatch)


def _rel(x, ref) -> float:
    return float(np.linalg.norm(np.asarray(x) - ref) / np.linalg.norm(ref))


# --- the library's updates ------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize(("n", "k"), [(8, 1), (100, 3)])  # n >= 64 takes the cuBLAS gemm path
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("update", ["project", "transport"])
def test_updates_on_device_match_numpy_without_host_reads(cp, update, dtype, n, k, order):
    rng = np.random.default_rng(n + k)
    U0 = np.asarray(uu.random_unitary(n, dtype=dtype, rng=rng), order=order)
    A0, B0 = random_factors(rng, (n, k), dtype) / np.sqrt(n), random_factors(rng, (n, k), dtype)
    fn = getattr(uu, update)
    expected = fn(U0, A0, B0)
    U = cp.asarray(U0, order=order)
    with uu.options(check_finite=False), fake_cupy.forbid_host_reads():
        result = fn(U, cp.asarray(A0), cp.asarray(B0), out=U)
    assert type(result) is cp.ndarray
    assert result is U
    assert result.dtype == dtype
    assert _rel(U.get(), expected) < 20 * rtol_for(dtype)


def test_finiteness_check_is_the_documented_host_read(cp):
    """With ``check_finite`` on (the default) the update reads the device: the probe sees it."""
    rng = np.random.default_rng(0)
    U = cp.asarray(uu.random_unitary(16, dtype=np.float64, rng=rng))
    A, B = cp.asarray(rng.standard_normal((16, 1))), cp.asarray(rng.standard_normal((16, 1)))
    with pytest.raises(fake_cupy.HostRead), fake_cupy.forbid_host_reads():
        uu.project(U, A, B)


@pytest.mark.parametrize("method", ["randomized", "lsi", "column", "exact"])
def test_sketch_and_step_on_device_without_host_reads(cp, method):
    rng = np.random.default_rng(1)
    n, k = 70, 2
    X, Y = rng.standard_normal((n, k)), rng.standard_normal((n, k))
    G = X @ Y.T
    U0 = uu.random_unitary(n, dtype=np.float64, rng=rng)
    with uu.options(check_finite=False), fake_cupy.forbid_host_reads():
        A, B = uu.sketch(cp.asarray(G), k, method=method, rng=3)
        U = cp.asarray(U0)
        uu.step(U, cp.asarray(-0.1 * G), rank=k, sketch=method, rng=3, out=U)
    assert type(A) is cp.ndarray
    assert type(B) is cp.ndarray
    # a rank-k gradient is recovered exactly by every method
    assert _rel((A @ B.T).get(), G) < 1e-10
    expected = uu.step(U0, -0.1 * G, rank=k, sketch=method, rng=3)
    assert _rel(U.get(), expected) < 1e-10
    assert uu.unitarity_error(U.get()) < 1e-12


# --- the RNN on a device --------------------------------------------------------------------------
@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize(("output", "loss"), [("sequence", "cross_entropy"), ("last", "mse")])
def test_urnn_on_device_matches_cpu_without_host_reads(cp, complex_, output, loss):
    model = URNN(3, 8, 4, complex=complex_, output=output, loss=loss, rng=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 6, 3))
    y = rng.integers(-1, 4, (5, 6)) if loss == "cross_entropy" else rng.standard_normal((5, 4))
    model.params["O"][...] = rng.standard_normal(model.params["O"].shape)
    cpu_loss, cpu_grads = model.loss_and_grads(x, y)
    for name, value in model.params.items():
        model.params[name] = cp.asarray(value)
    with uu.options(check_finite=False), fake_cupy.forbid_host_reads():
        dev_loss, dev_grads = model.loss_and_grads(cp.asarray(x), cp.asarray(y))
    assert type(dev_loss) is cp.ndarray  # left on the device
    assert dev_loss.shape == ()
    assert float(dev_loss) == pytest.approx(cpu_loss, rel=1e-12)
    for name, grad in cpu_grads.items():
        assert type(dev_grads[name]) is cp.ndarray
        assert dev_grads[name].dtype == grad.dtype
        np.testing.assert_allclose(dev_grads[name].get(), grad, rtol=1e-10, atol=1e-12)


def test_urnn_on_device_checks_labels_while_check_finite_is_on(cp):
    model = URNN(1, 4, 3, output="last", rng=0)
    for name, value in model.params.items():
        model.params[name] = cp.asarray(value)
    x, y = cp.asarray(np.zeros((2, 5, 1))), cp.asarray(np.array([0, 3]))
    with pytest.raises(ValueError, match="output_size = 3"):
        model.loss_and_grads(x, y)


# --- train --device gpu ---------------------------------------------------------------------------
def _config(**changes) -> TrainConfig:
    base = {
        "task": "copy",
        "length": 4,
        "steps": 8,
        "hidden_size": 12,
        "batch_size": 8,
        "dtype": "float64",
        "sketch": "exact",  # the same W update on both devices (randomized sketches draw on the device)
        "eval_every": 4,
        "eval_size": 16,
        "log_every": 2,
        "checkpoint_every": 4,
    }
    return TrainConfig(**{**base, **changes})


def _losses(run_dir) -> list[tuple[str, int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["split"], r["step"], r["loss"]) for r in rows]


@pytest.mark.parametrize("update", ["project", "transport"])
def test_train_on_device_matches_cpu(cp, tmp_path, update):
    train(_config(update=update), tmp_path / "cpu", progress=False)
    result = train(_config(update=update, device="gpu"), tmp_path / "gpu", progress=False)
    assert result["status"] == "completed"
    assert isinstance(result["train_loss"], float)
    cpu, gpu = _losses(tmp_path / "cpu"), _losses(tmp_path / "gpu")
    assert [r[:2] for r in gpu] == [r[:2] for r in cpu]
    np.testing.assert_allclose([r[2] for r in gpu], [r[2] for r in cpu], rtol=1e-9)
    assert json.loads((tmp_path / "gpu" / "config.json").read_text())["device"] == "gpu"


def test_train_on_device_reads_the_host_only_at_log_points(cp, tmp_path):
    reads: dict[int, int] = {}

    def on_step(step, loss):
        reads[step] = fake_cupy.HOST_READS["count"]

    cfg = _config(steps=9, log_every=3, eval_every=0, checkpoint_every=0, device="gpu")
    train(cfg, tmp_path / "run", progress=False, on_step=on_step)
    between = {s: reads[s] - reads[s - 1] for s in range(2, 10)}
    assert all(between[s] == 0 for s in between if s % 3), between  # steps with no log: no host read
    assert all(between[s] >= 1 for s in (3, 6, 9)), between  # the logged mean loss is read


def test_clipped_training_on_device_matches_cpu_without_extra_host_reads(cp, tmp_path):
    reads: dict[int, int] = {}

    def on_step(step, loss):
        reads[step] = fake_cupy.HOST_READS["count"]

    clipped = {"clip_grad_norm": 0.05, "readout_init": "uniform", "eval_every": 0, "checkpoint_every": 0}
    train(_config(steps=9, log_every=3, **clipped), tmp_path / "cpu", progress=False)
    train(_config(steps=9, log_every=3, device="gpu", **clipped), tmp_path / "gpu", progress=False, on_step=on_step)
    cpu, gpu = _losses(tmp_path / "cpu"), _losses(tmp_path / "gpu")
    np.testing.assert_allclose([r[2] for r in gpu], [r[2] for r in cpu], rtol=1e-9)
    free = {**clipped, "clip_grad_norm": None}
    train(_config(steps=9, log_every=3, **free), tmp_path / "free", progress=False)
    assert [r[2] for r in _losses(tmp_path / "free")][1:] != [r[2] for r in cpu][1:]  # the clipping acted
    between = {s: reads[s] - reads[s - 1] for s in range(2, 10)}
    assert all(between[s] == 0 for s in between if s % 3), between


def test_checkpoints_of_a_device_run_hold_host_arrays_and_resume_on_either_device(cp, tmp_path):
    full = tmp_path / "full"
    train(_config(device="gpu"), full, progress=False)
    part = tmp_path / "part"
    train(_config(device="gpu", steps=4), part, progress=False)
    with np.load(part / "checkpoint.npz") as data:
        assert all(type(data[key]) is np.ndarray for key in data.files)
    # resume the device run on the CPU: same losses as the uninterrupted device run
    train(None, part, resume=True, steps=8, progress=False, device="cpu")
    np.testing.assert_allclose([r[2] for r in _losses(part)], [r[2] for r in _losses(full)], rtol=1e-9)
    # and a checkpoint loads into a model that lives on the device
    _, model, opt, w_opt = build(_config())
    for name, value in model.params.items():
        model.params[name] = cp.asarray(value)
    meta = load_checkpoint(part / "checkpoint.npz", model, opt, w_opt)
    assert meta["step"] == 8
    assert type(model.params["W"]) is cp.ndarray
    assert all(type(v) is cp.ndarray for st in opt.state.values() for v in st.values())


def test_unknown_device_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match="device must be"):
        train(_config(device="tpu"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
