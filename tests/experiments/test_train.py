"""Training: exact resume, Ctrl-C checkpoints, seeded learning, metrics, plots and the command line."""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from unitary_update.cli import main
from unitary_update.experiments.tasks import AddingTask, CopyTask
from unitary_update.experiments.train import TrainConfig, build, plot_run, read_metrics, train

SMALL = {"hidden_size": 12, "batch_size": 8, "eval_size": 16, "log_every": 1, "eval_every": 4}


def train_losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


@pytest.mark.parametrize(
    "extra",
    [
        {"task": "copy", "length": 4, "update": "project"},
        {"task": "adding", "length": 6, "update": "transport", "optimizer": "adam", "complex": True},
        {"task": "copy", "length": 3, "optimizer": "sgd", "momentum": 0.0, "sketch": "lsi", "rank": 2},
    ],
    ids=["copy-project-rmsprop", "adding-transport-adam-complex", "copy-sgd-factored"],
)
def test_resumed_run_reproduces_uninterrupted_losses(tmp_path, extra):
    config = TrainConfig(steps=10, checkpoint_every=3, **SMALL, **extra)
    train(config, tmp_path / "full", progress=False)
    first = train(TrainConfig(**{**config.__dict__, "steps": 4}), tmp_path / "split", progress=False)
    assert first["step"] == 4
    resumed = train(None, tmp_path / "split", resume=True, steps=10, progress=False)
    assert resumed["status"] == "completed"
    assert train_losses(tmp_path / "split") == train_losses(tmp_path / "full")
    evals = [r for r in read_metrics(tmp_path / "split") if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 4, 8, 10]
    full = np.load(tmp_path / "full" / "checkpoint.npz")
    split = np.load(tmp_path / "split" / "checkpoint.npz")
    np.testing.assert_array_equal(full["param/W"], split["param/W"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_checkpoints_and_resume_is_exact(tmp_path, signum):
    # SIGTERM (kill, timeout, job schedulers) used to end the process on the spot: no checkpoint
    config = TrainConfig(task="copy", length=4, steps=8, checkpoint_every=100, **SMALL)
    train(config, tmp_path / "full", progress=False)

    def interrupt(step, loss):
        if step == 5:
            signal.raise_signal(signum)

    result = train(config, tmp_path / "cut", progress=False, on_step=interrupt)
    assert result["status"] == "interrupted"
    assert result["signal"] == signum
    assert result["step"] == 5
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are restored
    meta = json.loads(str(np.load(tmp_path / "cut" / "checkpoint.npz")["meta"]))
    assert meta["step"] == 5
    assert meta["seed"] == 0
    # metrics written after the checkpoint would be dropped on resume; simulate a stray line
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"split": "train", "step": 6, "loss": -1.0}) + "\n")
    train(None, tmp_path / "cut", resume=True, progress=False)
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "full")


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(None, tmp_path, resume=True, progress=False)


def test_metrics_and_plot(tmp_path):
    config = TrainConfig(task="adding", length=5, steps=6, **SMALL)
    train(config, tmp_path, progress=False)
    records = read_metrics(tmp_path)
    train_rows = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["baseline"] == pytest.approx(1 / 6) for r in train_rows)
    evals = [r for r in records if r["split"] == "eval"]
    assert all(r["unitarity_error"] < 1e-5 for r in evals)
    png = plot_run(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_retraction_option_keeps_w_unitary(tmp_path):
    config = TrainConfig(task="copy", length=3, steps=4, retract_every=2, dtype="float32", **SMALL)
    *_, w_opt = build(config)
    assert w_opt.drift is not None
    assert w_opt.drift.every == 2
    train(config, tmp_path, progress=False)
    W = np.load(tmp_path / "checkpoint.npz")["param/W"]
    np.testing.assert_allclose(W.T.astype(np.float64) @ W, np.eye(12), atol=1e-5)


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    config = TrainConfig(task="copy", length=3, steps=1000, time_limit_s=0.0, **SMALL)
    result = train(config, tmp_path, progress=False)
    assert result["status"] == "time_limit"
    assert result["step"] == 1
    assert (tmp_path / "checkpoint.npz").is_file()


@pytest.mark.slow
def test_copy_task_learns_far_below_the_memoryless_baseline(tmp_path):
    config = TrainConfig(
        task="copy", length=5, steps=200, hidden_size=32, batch_size=32, lr=1e-2, eval_every=200, eval_size=512
    )
    with threadpool_limits(1):
        result = train(config, tmp_path, progress=False)
    assert result["eval"]["loss"] < CopyTask(5).baseline / 4


@pytest.mark.slow
@pytest.mark.parametrize("update", ["project", "transport"])
def test_adding_task_learns_below_a_tenth_of_the_baseline(tmp_path, update):
    config = TrainConfig(
        task="adding",
        length=8,
        steps=1000,
        hidden_size=32,
        batch_size=64,
        optimizer="adam",
        lr=1e-2,
        update=update,
        eval_every=1000,
        eval_size=512,
    )
    with threadpool_limits(1):
        result = train(config, tmp_path, progress=False)
    assert result["eval"]["loss"] < AddingTask(8).baseline / 10


def test_command_line_train_resume_and_plot(tmp_path, capsys):
    run = str(tmp_path / "run")
    args = ["train", "copy", "--length", "3", "--steps", "4", "--hidden", "8", "--batch-size", "4"]
    assert main([*args, "--eval-size", "8", "--run-dir", run, "--no-progress", "--threads", "1"]) == 0
    assert "completed at step 4" in capsys.readouterr().out
    assert main(["train", "--resume", run, "--steps", "6", "--no-progress"]) == 0
    assert "completed at step 6" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 6
    assert main(["plot", run]) == 0
    assert (tmp_path / "run" / "loss.png").is_file()


def test_command_line_needs_a_task(capsys):
    assert main(["train"]) == 2
    assert "give a task" in capsys.readouterr().err


def test_learning_rate_milestones(tmp_path):
    base = TrainConfig(task="copy", length=4, steps=6, checkpoint_every=100, **SMALL)
    train(base, tmp_path / "constant", progress=False)
    same = TrainConfig(**{**base.__dict__, "lr_milestones": (3,), "lr_gamma": 1.0})
    train(same, tmp_path / "gamma1", progress=False)
    assert train_losses(tmp_path / "gamma1") == train_losses(tmp_path / "constant")
    dropped = TrainConfig(**{**base.__dict__, "lr_milestones": (3,), "lr_gamma": 0.01})
    train(dropped, tmp_path / "dropped", progress=False)
    constant, after = train_losses(tmp_path / "constant"), train_losses(tmp_path / "dropped")
    assert after[:4] == constant[:4]  # steps 1-3 at the full rate; step 4's loss is before its update
    assert after[4:] != constant[4:]
    # a milestone added when a run is extended acts exactly as if it had been there from the start
    train(TrainConfig(**{**base.__dict__, "steps": 3}), tmp_path / "extended", progress=False)
    train(None, tmp_path / "extended", resume=True, steps=6, lr_milestones=(3,), progress=False)
    # lr_gamma is in the config: the resumed run keeps 0.1, so compare against that schedule
    reference = TrainConfig(**{**base.__dict__, "lr_milestones": (3,)})
    train(reference, tmp_path / "reference", progress=False)
    assert train_losses(tmp_path / "extended") == train_losses(tmp_path / "reference")
    assert json.loads((tmp_path / "extended" / "config.json").read_text())["lr_milestones"] == [3]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"lr_milestones": (5, 3)}, "increasing positive"),
        ({"lr_milestones": (0,)}, "increasing positive"),
        ({"lr_milestones": (2.5,)}, "increasing positive"),
        ({"lr_gamma": 0.0}, "lr_gamma"),
        ({"lr_gamma": 2.0}, "lr_gamma"),
    ],
)
def test_learning_rate_schedule_is_validated(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(task="copy", **changes)


def test_command_line_milestones_and_gamma(tmp_path, capsys):
    run = str(tmp_path / "run")
    args = ["train", "copy", "--length", "3", "--steps", "4", "--hidden", "8", "--batch-size", "4", "--eval-size", "8"]
    assert main([*args, "--lr-milestones", "2", "--lr-gamma", "0.5", "--run-dir", run, "--no-progress"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["lr_milestones"], config["lr_gamma"]) == ([2], 0.5)
    assert main(["train", "--resume", run, "--lr-gamma", "0.1"]) == 2
    assert "--lr-gamma 0.1 (the run has 0.5): part of the run's config, cannot change on --resume" in (
        capsys.readouterr().err
    )
    assert main(["train", "--resume", run, "--steps", "5", "--lr-milestones", "2", "4", "--no-progress"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr_milestones"] == [2, 4]


def test_permuted_mnist_run_and_its_plot(tmp_path, fake_mnist):
    config = TrainConfig(task="pmnist", mnist_dir=str(fake_mnist), steps=2, hidden_size=6, batch_size=4, eval_size=8)
    result = train(config, tmp_path, progress=False)
    assert result["status"] == "completed"
    assert 0 <= result["eval"]["accuracy"] <= 1
    assert plot_run(tmp_path).is_file()


def test_a_rejected_setting_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"length must be an integer >= 1 \(the copy task's delay\); got 0"):
        TrainConfig(task="copy", length=0)
    config = TrainConfig(task="copy", length=3)
    config.log_every = 0  # changed after construction: train() checks the settings again
    with pytest.raises(ValueError, match="log_every must be >= 1; got 0"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize(
    ("stderr", "progress", "shown"), [(_Terminal, True, True), (_Terminal, False, False), (io.StringIO, True, False)]
)
def test_progress_bar_only_on_a_terminal_and_logs_unchanged(tmp_path, monkeypatch, stderr, progress, shown):
    monkeypatch.setattr(sys, "stderr", stderr())
    config = TrainConfig(task="copy", length=3, steps=6, **SMALL)
    train(config, tmp_path / "run", progress=progress)
    text = sys.stderr.getvalue()
    assert ("6/6" in text and "loss" in text and "baseline 0.9041" in text) == shown
    assert text == "" or shown
    keys = {r["split"]: set(r) for r in read_metrics(tmp_path / "run")}
    assert keys == {
        "train": {"split", "step", "loss", "baseline", "elapsed_s", "steps_per_s"},
        "eval": {"split", "step", "loss", "accuracy", "baseline", "unitarity_error"},
    }


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 0.5}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'^plot needs matplotlib: pip install "unitary_update\[plot\]"$'):
        plot_run(tmp_path)


@pytest.mark.parametrize("complex_", [False, True])
def test_input_scale_multiplies_only_the_initial_input_weights(complex_):
    base = TrainConfig(task="adding", length=6, complex=complex_, **SMALL)
    _, plain, _, _ = build(base)
    _, scaled, _, _ = build(TrainConfig(**{**base.__dict__, "input_scale": 4.0}))
    assert scaled.params["V"].dtype == plain.params["V"].dtype
    np.testing.assert_allclose(scaled.params["V"], 4.0 * plain.params["V"], rtol=1e-6)
    for name in ("W", "b", "O", "c"):
        np.testing.assert_array_equal(scaled.params[name], plain.params[name])


def test_input_scale_that_overflows_is_refused_before_anything_is_written(tmp_path):
    config = TrainConfig(task="adding", length=6, input_scale=1e300, **SMALL)
    with pytest.raises(ValueError, match="input_scale 1e\\+300 overflows the initial input weights V in float32"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_command_line_input_scale_is_stored_and_not_resumable(tmp_path, capsys):
    run = str(tmp_path / "run")
    common = ["--length", "6", "--hidden", "8", "--batch-size", "4", "--eval-size", "8", "--no-progress"]
    assert main(["train", "adding", "--steps", "2", "--input-scale", "2.5", "--run-dir", run, *common]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["input_scale"] == 2.5
    capsys.readouterr()
    assert main(["train", "--resume", run, "--steps", "3", "--input-scale", "1"]) != 0
    assert "--input-scale 1.0 (the run has 2.5)" in capsys.readouterr().err


def test_command_line_raw_pixels_reach_the_model(tmp_path, fake_mnist, capsys):
    run = tmp_path / "run"
    args = ["train", "pmnist", "--mnist-dir", str(fake_mnist), "--steps", "1", "--hidden", "6", "--batch-size", "4"]
    assert main([*args, "--eval-size", "8", "--pixels", "raw", "--no-progress", "--run-dir", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["pixels"] == "raw"
    task, *_ = build(TrainConfig(**config))
    assert float(task.train[0].min()) >= 0.0
    assert float(task.train[0].max()) <= 1.0
    assert task.pixels == "raw"


def test_relu_activation_reaches_the_model_and_trains(tmp_path):
    config = TrainConfig(task="adding", length=6, steps=3, activation="relu", **SMALL)
    result = train(config, tmp_path / "run", progress=False)
    assert result["status"] == "completed"
    _, model, _, _ = build(config)
    assert model.activation == "relu"
    modrelu_model = build(TrainConfig(task="adding", length=6, **SMALL))[1]
    for m in (model, modrelu_model):
        m.params["O"][...] = 1.0  # the initial readout is zero: read the states
    x, _ = AddingTask(6).batch(4, rng=0)
    assert not np.allclose(model.forward(x), modrelu_model.forward(x))


# ---- run folders that a killed or edited run leaves behind ------------------------------------
def test_a_log_window_that_spans_the_checkpoint_is_logged_as_without_it(tmp_path):
    """The losses since the last log live in the checkpoint: a resumed run logs the same means."""
    config = TrainConfig(task="copy", length=4, steps=10, checkpoint_every=100, **{**SMALL, "log_every": 3})
    train(config, tmp_path / "full", progress=False)

    def interrupt(step, loss):
        if step == 5:  # two steps after the log at 3: the window holds steps 4 and 5
            signal.raise_signal(signal.SIGINT)

    train(config, tmp_path / "cut", progress=False, on_step=interrupt)
    meta = json.loads(str(np.load(tmp_path / "cut" / "checkpoint.npz")["meta"]))
    assert len(meta["window"]) == 2
    train(None, tmp_path / "cut", resume=True, progress=False)
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "full")
    assert [r["step"] for r in read_metrics(tmp_path / "cut") if r["split"] == "train"] == [3, 6, 9, 10]


def test_a_new_run_removes_the_old_checkpoint_before_writing_its_config(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(task="copy", length=4, steps=4, **SMALL), run, progress=False)
    assert (run / "checkpoint.npz").is_file()

    def die(step, loss):
        raise RuntimeError("killed before the first checkpoint")

    other = TrainConfig(task="copy", length=4, steps=50, lr=0.01, checkpoint_every=100, **SMALL)
    with pytest.raises(RuntimeError, match="killed"):
        train(other, run, progress=False, on_step=die)
    assert not (run / "checkpoint.npz").exists()  # no mix of the old weights with the new config
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(None, run, resume=True, progress=False)


def test_a_checkpoint_of_other_settings_than_config_json_is_refused(tmp_path):
    from unitary_update.experiments import CheckpointError

    run = tmp_path / "run"
    train(TrainConfig(task="copy", length=4, steps=4, **SMALL), run, progress=False)
    stored = json.loads((run / "config.json").read_text())
    before = (run / "metrics.jsonl").read_text()
    (run / "config.json").write_text(json.dumps({**stored, "lr": 1.0, "rank": 2}))
    with pytest.raises(CheckpointError, match=r"other settings than this one: lr 0.001 -> 1.0, rank 1 -> 2"):
        train(None, run, resume=True, steps=6, progress=False)
    assert (run / "metrics.jsonl").read_text() == before


def test_milestones_before_the_checkpoint_cannot_change_on_resume(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(task="copy", length=4, steps=4, **SMALL), run, progress=False)
    with pytest.raises(ValueError, match=r"lr_milestones before the checkpoint's step 4 cannot change"):
        train(None, run, resume=True, steps=6, lr_milestones=(2,), progress=False)
    assert json.loads((run / "config.json").read_text())["lr_milestones"] == []
    train(None, run, resume=True, steps=6, lr_milestones=(4,), progress=False)  # from the next step on


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(task="copy", length=4, steps=6, checkpoint_every=100, **SMALL)
    train(config, tmp_path / "full", progress=False)
    train(TrainConfig(**{**config.__dict__, "steps": 4}), run, progress=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 5, "lo')  # a process killed while appending
    with pytest.raises(ValueError, match=r"line .*: not a JSON record"):
        read_metrics(run)
    with pytest.warns(UserWarning, match="a torn last record, dropped"):
        train(None, run, resume=True, steps=6, progress=False)
    assert train_losses(run) == train_losses(tmp_path / "full")


def test_command_line_says_when_the_last_evaluation_was(tmp_path, capsys):
    run = str(tmp_path / "run")
    common = ["--length", "4", "--hidden", "8", "--batch-size", "4", "--eval-size", "8", "--run-dir", run]
    assert main(["train", "copy", "--steps", "3", "--eval-every", "0", *common]) == 0
    assert capsys.readouterr().out.strip() == "completed at step 3 (no held-out evaluation in this run)"
    assert main(["train", "copy", "--steps", "3", "--eval-every", "2", "--time-limit", "0", *common]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("time_limit at step 1: held-out loss ")
    assert out.endswith("(last evaluated at step 0)")


def test_evaluate_in_chunks_weighs_labelled_positions_not_sequences():
    from unitary_update.experiments.train import evaluate

    task, model, _, _ = build(TrainConfig(task="copy", length=3, hidden_size=8))
    x, y = task.batch(6, rng=0)
    y = y.copy()
    y[:4] = -1  # the first four sequences carry no label at all
    y[4, : y.shape[1] // 2] = -1
    whole = model.evaluate(x, y)
    for chunk in (1, 2, 4, 6):
        parts = evaluate(model, x, y, chunk=chunk)
        assert parts["loss"] == pytest.approx(whole["loss"], rel=1e-12)
        assert parts["accuracy"] == pytest.approx(whole["accuracy"], rel=1e-12)
    y[:] = -1
    with pytest.raises(ValueError, match="y has no labelled position"):
        evaluate(model, x, y)


def test_plot_of_a_record_that_is_not_a_runs_is_one_line(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 0.5}\n{"step": 3}\n')
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "the record of step 3 is not a run's record" in err
    assert "Traceback" not in err


# ------------------------------------------------------- readout init and gradient clipping
@pytest.mark.parametrize("complex_", [False, True])
def test_uniform_readout_init_is_torch_linear_default_and_changes_nothing_else(complex_):
    base = TrainConfig(task="adding", length=6, complex=complex_, **SMALL)
    _, plain, _, _ = build(base)
    _, uniform, _, _ = build(TrainConfig(**{**base.__dict__, "readout_init": "uniform"}))
    fan_in = 2 * 12 if complex_ else 12
    bound = 1 / np.sqrt(fan_in)
    for name in ("O", "c"):
        value = uniform.params[name]
        assert value.dtype == plain.params[name].dtype == np.float32
        assert value.shape == plain.params[name].shape
        assert np.all(np.abs(value) <= bound)
        assert not np.any(plain.params[name])
    assert np.abs(uniform.params["O"]).max() > bound / 2  # spread over the range, not a tiny draw
    assert np.all(uniform.params["c"] != 0)
    for name in ("W", "V", "b"):
        np.testing.assert_array_equal(uniform.params[name], plain.params[name])
    _, again, _, _ = build(TrainConfig(**{**base.__dict__, "readout_init": "uniform"}))
    np.testing.assert_array_equal(again.params["O"], uniform.params["O"])


def _reference_global_norm(grads):
    parts = []
    for g in grads.values():
        dense = g[0] @ g[1].conj().T if isinstance(g, tuple) else g
        parts.append(np.abs(np.asarray(dense, dtype=np.complex128)).ravel())
    return float(np.linalg.norm(np.concatenate(parts)))


@pytest.mark.parametrize("factored", [False, True])
@pytest.mark.parametrize("complex_", [False, True])
def test_clip_by_global_norm_matches_torch_rule_on_every_gradient(complex_, factored):
    from unitary_update.experiments.train import clip_by_global_norm

    task, model, _, _ = build(TrainConfig(task="adding", length=6, complex=complex_, **SMALL))
    model.params["O"][...] = 0.3  # a nonzero readout: every gradient is nonzero
    _loss, grads = model.loss_and_grads(*task.batch(8, rng=1), factored=factored)
    norm = _reference_global_norm(grads)
    saved = {k: tuple(x.copy() for x in g) if isinstance(g, tuple) else g.copy() for k, g in grads.items()}
    for max_norm in (norm / 7, 10 * norm):
        clipped = clip_by_global_norm(grads, max_norm)
        scale = min(1.0, max_norm / (norm + 1e-6))
        for k, g in grads.items():
            if isinstance(g, tuple):
                np.testing.assert_array_equal(clipped[k][1], g[1])
                got, want = clipped[k][0] @ clipped[k][1].conj().T, g[0] @ g[1].conj().T
            else:
                got, want = clipped[k], g
            assert (clipped[k][0] if isinstance(g, tuple) else got).dtype == (g[0] if isinstance(g, tuple) else g).dtype
            np.testing.assert_allclose(got, scale * want, rtol=2e-6, atol=1e-7 * np.abs(want).max())
        if max_norm < norm:
            assert _reference_global_norm(clipped) == pytest.approx(max_norm, rel=1e-5)
    for k, g in grads.items():  # the inputs are left as they were
        pairs = zip(g, saved[k], strict=True) if isinstance(g, tuple) else [(g, saved[k])]
        for a, b in pairs:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_by_global_norm_never_zeroes_a_non_finite_gradient(bad):
    from unitary_update.experiments.train import clip_by_global_norm

    grads = {"a": np.array([bad, 1.0], dtype=np.float32), "b": np.array([2.0], dtype=np.float32)}
    clipped = clip_by_global_norm(grads, 1.0)
    assert np.isnan(clipped["b"]).all()
    assert np.isnan(clipped["a"]).all()


def test_clip_by_global_norm_names_a_bad_max_norm_and_takes_no_gradients():
    from unitary_update.experiments.train import clip_by_global_norm

    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_norm must be finite and > 0"):
            clip_by_global_norm({"a": np.ones(2)}, bad)
    with pytest.raises(TypeError, match="max_norm must be a real number"):
        clip_by_global_norm({"a": np.ones(2)}, "1")
    assert clip_by_global_norm({}, 1.0) == {}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
@pytest.mark.parametrize("factor", [0.01, 100.0])
def test_clip_by_global_norm_agrees_with_torch_clip_grad_norm(dtype, factor):
    torch = pytest.importorskip("torch")
    from unitary_update.experiments.train import clip_by_global_norm

    rng = np.random.default_rng(4)
    shapes = {"W": (6, 6), "b": (6,), "c": (2,)}
    grads = {}
    for k, shape in shapes.items():
        g = rng.standard_normal(shape)
        if np.dtype(dtype).kind == "c":
            g = g + 1j * rng.standard_normal(shape)
        grads[k] = g.astype(dtype)
    params = [
        torch.nn.Parameter(torch.zeros(g.shape, dtype=getattr(torch, np.dtype(dtype).name))) for g in grads.values()
    ]
    for p, g in zip(params, grads.values(), strict=True):
        p.grad = torch.from_numpy(g.copy())
    max_norm = factor * _reference_global_norm(grads)
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    ours = clip_by_global_norm(grads, max_norm)
    for p, (k, g) in zip(params, ours.items(), strict=True):
        assert g.dtype == grads[k].dtype
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=3e-7 if dtype != np.float64 else 1e-15)


def test_clip_by_global_norm_keeps_tiny_scales_and_refuses_non_float_gradients():
    from unitary_update.experiments.train import clip_by_global_norm

    # the scale 5e-49 is below float32's range, the result 5e-11 is not
    got = clip_by_global_norm({"a": np.full(4, 1e38, dtype=np.float32)}, 1e-10)["a"]
    np.testing.assert_allclose(got, np.full(4, 5e-11, dtype=np.float32), rtol=1e-6)
    # the scale 2e-8 is below float16's smallest number, the results are not
    got = clip_by_global_norm({"a": np.array([3e4, 4e4], dtype=np.float16)}, 1e-3)["a"]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), [6e-4, 8e-4], rtol=1e-3)
    for bad in (np.array([3, 4]), np.array([True, False]), [3.0, 4.0]):
        with pytest.raises(TypeError, match=r"grads\['a'\] must be a floating or complex array"):
            clip_by_global_norm({"a": bad, "b": np.ones(2)}, 1.0)


def test_clip_by_global_norm_of_huge_finite_gradients_is_finite():
    import warnings

    from unitary_update.experiments.train import clip_by_global_norm

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning leaks either
        X = np.full((3, 2), 1e20, dtype=np.float32)  # X Y^H = 2e40: beyond float32, not beyond double
        clipped = clip_by_global_norm({"W": (X, X.copy()), "b": np.ones(3, dtype=np.float32)}, 1.0)
        dense = clipped["W"][0].astype(np.float64) @ clipped["W"][1].T.astype(np.float64)
        np.testing.assert_allclose(np.linalg.norm(dense), 1.0, rtol=1e-5)
        big = clip_by_global_norm({"a": np.full(3, 1e200), "b": np.full(2, 1e200)}, 2.0)
        np.testing.assert_allclose(np.concatenate([big["a"], big["b"]]), np.full(5, 2 / np.sqrt(5)), rtol=1e-12)


def test_clip_by_global_norm_does_not_overflow_in_float32():
    from unitary_update.experiments.train import clip_by_global_norm

    big = np.full(4, 1e30, dtype=np.float32)  # its squares overflow float32
    clipped = clip_by_global_norm({"a": big}, 1.0)
    np.testing.assert_allclose(clipped["a"], np.full(4, 0.5, dtype=np.float32), rtol=1e-6)


def test_training_step_clips_before_both_optimizers():
    from unitary_update.experiments.train import training_step

    config = TrainConfig(task="adding", length=6, optimizer="sgd", lr=0.05, momentum=0.5, **SMALL)
    task, model, opt, w_opt = build(config)
    model.params["O"][...] = 0.3
    x, y = task.batch(8, rng=2)
    _, grads = model.loss_and_grads(x, y)
    norm = _reference_global_norm(grads)
    before = {k: v.copy() for k, v in model.params.items()}
    training_step(model, opt, w_opt, x, y, clip_grad_norm=norm / 4)
    # SGD's first step with momentum is -lr g: the Euclidean parameters moved by a quarter
    for name in ("V", "b", "O", "c"):
        np.testing.assert_allclose(before[name] - model.params[name], 0.05 * grads[name] / 4, rtol=1e-4, atol=1e-8)
    _, _, _, w_free = build(config)
    W_free = before["W"].copy()
    w_free.step(W_free, grads["W"] / 4)  # W's update saw the clipped gradient too
    np.testing.assert_allclose(model.params["W"], W_free, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="clip_grad_norm must be finite and > 0"):
        training_step(model, opt, w_opt, x, y, clip_grad_norm=0.0)


def test_clipping_and_readout_init_from_the_command_line_are_stored_and_not_resumable(tmp_path, capsys):
    run = str(tmp_path / "run")
    common = ["--length", "6", "--hidden", "8", "--batch-size", "4", "--eval-size", "8", "--no-progress"]
    args = ["--clip-grad-norm", "0.5", "--readout-init", "uniform"]
    assert main(["train", "adding", "--steps", "2", *args, "--run-dir", run, *common]) == 0
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (stored["clip_grad_norm"], stored["readout_init"]) == (0.5, "uniform")
    capsys.readouterr()
    assert main(["train", "--resume", run, "--steps", "3", "--clip-grad-norm", "1"]) != 0
    assert "--clip-grad-norm 1.0 (the run has 0.5)" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--steps", "3"]) == 0


def test_clipped_run_resumes_exactly(tmp_path):
    config = TrainConfig(task="copy", length=4, steps=8, checkpoint_every=3, clip_grad_norm=0.05, **SMALL)
    train(config, tmp_path / "full", progress=False)
    train(TrainConfig(**{**config.__dict__, "steps": 3}), tmp_path / "split", progress=False)
    train(None, tmp_path / "split", resume=True, steps=8, progress=False)
    assert train_losses(tmp_path / "split") == train_losses(tmp_path / "full")


def test_zero_bias_init_changes_only_the_bias_and_is_stored(tmp_path, capsys):
    base = TrainConfig(task="adding", length=6, **SMALL)
    _, plain, _, _ = build(base)
    _, zero, _, _ = build(TrainConfig(**{**base.__dict__, "bias_init": "zero"}))
    assert np.any(plain.params["b"])
    assert not np.any(zero.params["b"])
    assert zero.params["b"].dtype == plain.params["b"].dtype
    for name in ("W", "V", "O", "c"):
        np.testing.assert_array_equal(zero.params[name], plain.params[name])
    run = str(tmp_path / "run")
    common = ["--length", "6", "--hidden", "8", "--batch-size", "4", "--eval-size", "8", "--no-progress"]
    assert main(["train", "adding", "--steps", "2", "--bias-init", "zero", "--run-dir", run, *common]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["bias_init"] == "zero"
    capsys.readouterr()
    assert main(["train", "--resume", run, "--steps", "3", "--bias-init", "uniform"]) != 0
    assert "--bias-init uniform (the run has zero)" in capsys.readouterr().err


def _log(run_dir):
    """The metrics without the wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "steps_per_s")} for r in read_metrics(run_dir)]


def test_extending_a_finished_run_logs_as_the_longer_run_and_a_finished_resume_logs_nothing(tmp_path):
    # A run that ends off its log and eval periods writes end-of-run records (the partial window's
    # mean, an evaluation); extended, those used to stay, and the next record averaged only the
    # new steps; and every resume of a finished run appended one more evaluation
    base = {**SMALL, "log_every": 3, "eval_every": 10}
    config = TrainConfig(task="copy", length=4, steps=17, **base)
    train(dataclasses.replace(config, steps=40), tmp_path / "long", progress=False)
    train(config, tmp_path / "extended", progress=False)
    short = _log(tmp_path / "extended")
    assert [(r["split"], r["step"]) for r in short][-2:] == [("train", 17), ("eval", 17)]  # the end records
    for _ in range(2):  # resuming a finished run: no step, no record, the checkpoint unchanged
        before = (tmp_path / "extended" / "checkpoint.npz").read_bytes()
        result = train(None, tmp_path / "extended", resume=True, progress=False)
        assert result["step"] == 17
        assert result["status"] == "completed"
        assert _log(tmp_path / "extended") == short
        assert (tmp_path / "extended" / "checkpoint.npz").read_bytes() == before
    train(None, tmp_path / "extended", resume=True, steps=40, progress=False)
    assert _log(tmp_path / "extended") == _log(tmp_path / "long")
    np.testing.assert_array_equal(
        np.load(tmp_path / "extended" / "checkpoint.npz")["param/W"],
        np.load(tmp_path / "long" / "checkpoint.npz")["param/W"],
    )


def test_a_second_process_cannot_train_in_the_same_run_dir(tmp_path):
    # two `--resume` of one run interleaved their metrics and overwrote each other's checkpoints
    import subprocess

    config = TrainConfig(task="copy", length=4, steps=2, **SMALL)
    train(config, tmp_path, progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f.fileno(), fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(tmp_path / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (tmp_path / "metrics.jsonl").read_bytes()
        with pytest.raises(OSError, match="is in use by another training process"):
            train(None, tmp_path, resume=True, steps=4, progress=False)
        assert (tmp_path / "metrics.jsonl").read_bytes() == before
    finally:
        holder.kill()
        holder.communicate()
    assert train(None, tmp_path, resume=True, steps=4, progress=False)["step"] == 4  # free again


def test_a_run_stopped_at_its_last_step_gets_its_end_evaluation_once_on_resume(tmp_path):
    base = {**SMALL, "log_every": 3, "eval_every": 10}
    config = TrainConfig(task="copy", length=4, steps=17, **base)
    train(config, tmp_path / "reference", progress=False)

    def interrupt(step, loss):
        if step == 17:
            signal.raise_signal(signal.SIGINT)

    assert train(config, tmp_path / "cut", progress=False, on_step=interrupt)["status"] == "interrupted"
    assert [r["split"] for r in _log(tmp_path / "cut") if r["step"] == 17] == ["train"]  # no end evaluation yet
    for _ in range(2):  # the first resume evaluates, the second writes nothing
        train(None, tmp_path / "cut", resume=True, progress=False)
        assert _log(tmp_path / "cut") == _log(tmp_path / "reference")
    train(None, tmp_path / "cut", resume=True, steps=40, progress=False)
    train(None, tmp_path / "reference", resume=True, steps=40, progress=False)
    assert _log(tmp_path / "cut") == _log(tmp_path / "reference")


def test_a_file_system_without_flock_does_not_stop_training(tmp_path, monkeypatch):
    # some cluster file systems answer flock with ENOSYS or EOPNOTSUPP: the lock is best effort
    import errno
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    result = train(TrainConfig(task="copy", length=4, steps=2, **SMALL), tmp_path, progress=False)
    assert result["status"] == "completed"
    assert result["step"] == 2
