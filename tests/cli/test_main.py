"""The command line: the table of commands, plain help, choices from the library, one-line user errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys

import pytest

import unitary_update.cli as cli
from unitary_update._sketch import SKETCH_METHODS
from unitary_update._step import UPDATES
from unitary_update.cli import COMMANDS, main
from unitary_update.cli.train import _flag
from unitary_update.experiments.config import TrainConfig
from unitary_update.experiments.tasks import TASKS
from unitary_update.models.urnn import INITS
from unitary_update.optim import _OPTIMIZERS

RST_MARKUP = re.compile(r"``|:(mod|func|class|meth|data|attr):`")


def _subparsers():
    parser = cli._parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return parser, action.choices


def test_every_command_module_has_the_protocol():
    assert cli.DEFAULT_COMMAND in COMMANDS
    for name, module in COMMANDS.items():
        assert module.__doc__.split("\n", 1)[1].startswith("\n"), name  # a one-line summary, then the text
        assert callable(module.add_arguments), name
        assert callable(module.run), name


@pytest.mark.parametrize("words", [["--help"], *([name, "--help"] for name in COMMANDS)], ids=lambda w: w[0])
def test_help_is_plain_text(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(words)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m unitary_update")
    assert not RST_MARKUP.search(text), RST_MARKUP.search(text)
    assert not re.search(r"\b(issue|acceptance)\b", text, re.IGNORECASE)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name, module in COMMANDS.items():
        assert name in text
        assert module.__doc__.split()[0] in text


def test_no_command_runs_the_demo_with_its_defaults(monkeypatch):
    seen = []
    monkeypatch.setattr(COMMANDS["demo"], "run", lambda args: seen.append(args) or 0)
    assert main([]) == 0
    (args,) = seen
    assert (args.command, args.n, args.rank, args.dtype) == ("demo", 1024, 1, "float64")


def test_choices_come_from_the_library():
    _, commands = _subparsers()
    options = {a.dest: a for a in commands["train"]._actions}
    assert tuple(options["task"].choices) == TASKS
    assert tuple(options["update"].choices) == UPDATES
    assert tuple(options["sketch"].choices) == SKETCH_METHODS
    assert tuple(options["optimizer"].choices) == tuple(_OPTIMIZERS)
    assert tuple(options["init"].choices) == INITS
    rnn = {a.dest: a for a in commands["bench-rnn"]._actions}
    assert tuple(rnn["update"].choices) == UPDATES


def test_train_has_an_option_for_every_setting():
    _, commands = _subparsers()
    options = {a.dest: a.option_strings for a in commands["train"]._actions}
    for field in dataclasses.fields(TrainConfig):
        if field.name != "task":
            assert options[field.name] == [_flag(field.name)], field.name


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert lines[0].startswith("python -m unitary_update")
    return lines[0]


TRAIN = ["train", "copy", "--length", "3", "--steps", "2", "--hidden", "8", "--batch-size", "4", "--no-progress"]


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["bogus"], "invalid choice: 'bogus'"),
        (["demo", "--n", "thirty"], "argument --n: must be an integer >= 1; got 'thirty'"),
        (["demo", "--repeat", "0"], "argument --repeat: must be an integer >= 1; got '0'"),  # was: "best of 0 runs"
        (["demo", "--seed", "-1"], "argument --seed: must be an integer >= 0; got '-1'"),
        (["soak", "--step-size", "nan"], "argument --step-size: must be a finite number > 0; got 'nan'"),
        (["bench-rnn", "--threads", "0"], "argument --threads: must be an integer >= 1; got '0'"),  # was: a traceback
        (["demo", "--n", "100000000"], "out of memory: Unable to allocate"),  # was: a traceback
        (
            ["bench-gpu", "--device", "cpu", "--sizes", "8", "--ranks", "1", "--passes", "0"],
            "passes must be >= 1; got 0",
        ),
        (["train", "copy", "--update", "sideways"], "argument --update: invalid choice"),
        (["demo", "--n", "8", "--rank", "20"], "rank must satisfy 1 <= rank <= 8"),
        (["soak", "--update", "x"], "unrecognized arguments"),
        (["soak", "--n", "4", "--steps", "0"], "argument --steps: must be an integer >= 1; got '0'"),
        ([*TRAIN, "--length", "0"], "length must be an integer >= 1 (the copy task's delay); got 0"),
        ([*TRAIN, "--lr-gamma", "2"], "lr_gamma must be in (0, 1]"),
        ([*TRAIN, "--device", "tpu"], "device must be 'cpu', 'gpu'"),
        (["train"], "give a task (copy, adding, pmnist) or --resume RUN_DIR"),
        (["train", "pmnist", "--mnist-dir", "{tmp}/nowhere"], "MNIST file train-images-idx3-ubyte(.gz) not found"),
        (["train", "--resume", "{tmp}/nowhere"], "cannot resume: no checkpoint at"),
        (["plot", "{tmp}/nowhere"], "is not a run directory (no metrics.jsonl)"),
        (["conv-demo", "--data", "{tmp}/nowhere"], "MNIST file train-images-idx3-ubyte(.gz) not found"),
        (["bench-gpu", "--device", "cpu", "--sizes", "0"], "--sizes must be positive integers"),
        ([*TRAIN, "--threads", "0"], "argument --threads: must be an integer >= 1; got '0'"),
        ([*TRAIN, "--hidden", "1000000"], "hidden_size too large: the run needs at least"),  # was: a traceback
        ([*TRAIN, "--lr", "1e400"], "lr must be finite and > 0; got inf"),
        ([*TRAIN, "--run-dir", ""], "run_dir must not be empty"),  # was: a run in the working directory
        # output files whose folder is missing are refused before a benchmark runs (was: after it)
        (["bench", "--n", "8", "--rank", "1", "--markdown", "{tmp}/nowhere/x.md"], "the folder"),
        (["bench-rnn", "--length", "2", "--hidden", "8", "--json", "{tmp}/nowhere/x.json"], "the folder"),
        (["soak", "--n", "8", "--steps", "2", "--json", "{tmp}/nowhere/x.json"], "does not exist"),
        (
            ["bench-gpu", "--device", "cpu", "--sizes", "8", "--ranks", "1", "--output", "{tmp}/nowhere/t.md"],
            "--output",
        ),
    ],
)
def test_a_users_mistake_is_one_line_and_exit_2(tmp_path, capsys, words, message):
    assert main([w.format(tmp=tmp_path) for w in words]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    "error",
    [ValueError("bad\nvalue"), TypeError("wrong type"), FileNotFoundError(2, "No such file or directory", "x.npz")],
)
def test_library_errors_of_a_setting_become_one_line(monkeypatch, capsys, error):
    def fail(args):
        raise error

    monkeypatch.setattr(COMMANDS["demo"], "run", fail)
    assert main(["demo"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("python -m unitary_update demo: error: ")
    assert line.endswith(("bad value", "wrong type", "No such file or directory: x.npz"))


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            FloatingPointError("step 3: loss is nan; last checkpoint kept"),
            "loss is nan; last checkpoint kept (try a smaller --lr)",
        ),
        (MemoryError("Unable to allocate 9 GiB"), "out of memory (Unable to allocate 9 GiB): try a smaller --hidden"),
    ],
)
def test_a_diverged_or_out_of_memory_run_is_one_line(tmp_path, monkeypatch, capsys, error, line):
    import unitary_update.experiments.train as training

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(training, "train", fail)
    assert main([*TRAIN, "--run-dir", str(tmp_path / "run")]) == 2
    assert line in _one_error_line(capsys)


def test_a_bug_still_shows_its_traceback(monkeypatch):
    monkeypatch.setattr(COMMANDS["demo"], "run", lambda args: {}["missing"])
    with pytest.raises(KeyError):
        main(["demo"])


def test_resume_refuses_settings_of_the_run(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main([*TRAIN, "--run-dir", run]) == 0
    capsys.readouterr()
    stored = (tmp_path / "run" / "config.json").read_text()
    assert main(["train", "--resume", run, "--hidden", "16", "--rank", "2", "--optimizer", "adam"]) == 2
    line = _one_error_line(capsys)
    assert (
        "--hidden 16 (the run has 8), --optimizer adam (the run has rmsprop), --rank 2 (the run has 1): "
        "part of the run's config, cannot change on --resume; may change on resume: --steps, --time-limit, "
        "--device, --lr-milestones, --log-every, --eval-every, --checkpoint-every, --mnist-dir, --threads, "
        "--no-progress"
    ) in line
    assert main(["train", "adding", "--resume", run]) == 2
    assert "TASK adding (the run has copy)" in _one_error_line(capsys)
    assert main(["train", "--resume", run, "--run-dir", str(tmp_path / "other")]) == 2
    assert "give one run directory" in _one_error_line(capsys)
    assert main(["train", "--resume", run, "--rank", "9"]) == 2  # out of range and a conflict: both said
    assert "--rank 9 (the run has 1)" in _one_error_line(capsys)
    assert (tmp_path / "run" / "config.json").read_text() == stored  # refused: nothing written
    # the run's own values, the task included, and the resumable settings are accepted
    again = ["train", "copy", "--resume", run, "--hidden", "8", "--steps", "3", "--log-every", "1", "--no-progress"]
    assert main(again) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["steps"], config["log_every"], config["hidden_size"]) == (3, 1, 8)


@pytest.fixture
def no_execv(monkeypatch):
    def execv(*args):  # no command may replace the process (pytest) it runs in
        raise AssertionError(f"os.execv{args}")

    monkeypatch.setattr(os, "execv", execv)


@pytest.mark.parametrize(
    ("library", "words", "line"),
    [
        ("matplotlib", ["plot", "{run}"], 'plot needs matplotlib: pip install "unitary_update[plot]"'),
        (
            "matplotlib",
            ["bench", "--plot", "x.png"],
            'bench --plot needs matplotlib: pip install "unitary_update[plot]"',
        ),
        (
            "matplotlib",
            ["conv-demo", "--data", "{tmp}/nowhere", "--plot", "x.png"],
            'conv-demo --plot needs matplotlib: pip install "unitary_update[plot]"',
        ),
        ("cupy", ["bench-gpu"], 'bench-gpu needs cupy: pip install "unitary_update[gpu]"'),
        ("cupy", [*TRAIN, "--device", "gpu"], 'train --device gpu needs cupy: pip install "unitary_update[gpu]"'),
    ],
)
def test_a_missing_extra_is_named_in_one_line(tmp_path, monkeypatch, capsys, no_execv, library, words, line):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 0.5}\n')
    monkeypatch.setitem(sys.modules, library, None)  # as if it were not installed
    assert main([w.format(run=run, tmp=tmp_path) for w in words]) == 2
    assert _one_error_line(capsys).endswith(": error: " + line)
    assert not (run / "loss.png").exists()


def test_train_stopped_by_sigterm_checkpoints_exits_143_and_resumes(tmp_path):
    # what `kill`, `timeout` and job schedulers send: it used to end the process on the spot,
    # losing every step since the last checkpoint (and before the first one, the run itself)
    import signal
    import subprocess
    import time

    run = tmp_path / "run"
    base = [sys.executable, "-m", "unitary_update", "train"]
    small = ["--hidden", "8", "--batch-size", "4", "--eval-size", "4", "--no-progress", "--threads", "1"]
    process = subprocess.Popen(
        [
            *base,
            "copy",
            "--length",
            "4",
            "--steps",
            "1000000",
            "--log-every",
            "1",
            "--eval-every",
            "100000",
            "--checkpoint-every",
            "100000",
            "--run-dir",
            str(run),
            *small,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    import numpy as np

    step = json.loads(str(np.load(run / "checkpoint.npz")["meta"]))["step"]
    assert step >= 4
    resumed = subprocess.run(
        [*base, "--resume", str(run), "--steps", str(step + 2), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"completed at step {step + 2}" in resumed.stdout
