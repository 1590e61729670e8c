"""Train a unitary RNN with projUNN on copy, adding or permuted MNIST.

The run directory (--run-dir, default runs/TASK) receives config.json, metrics.jsonl (training
loss every --log-every steps, held-out loss every --eval-every steps) and checkpoint.npz (every
--checkpoint-every steps, at the end and on Ctrl-C or SIGTERM).  --resume RUN_DIR continues a
run exactly where its checkpoint left it, with the run's own settings: a setting given again with
another value than the run's is refused, except --steps, --time-limit, --device, --lr-milestones,
--log-every, --eval-every, --checkpoint-every and --mnist-dir (and --threads,
--no-progress).  A progress bar is shown on a terminal (--no-progress:
never).  Permuted MNIST reads the IDX files from --mnist-dir; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..experiments.config import BIAS_INITS, READOUT_INITS, RESUMABLE, TrainConfig, load_config, resume_conflicts
from ..experiments.tasks import PIXELS
from ..models.urnn import ACTIVATIONS
from ._common import (
    INITS,
    OPTIMIZERS,
    REAL_DTYPES,
    SKETCH_METHODS,
    TASKS,
    UPDATES,
    UsageError,
    blas_threads,
    check_device,
    positive_int,
)

__all__ = ["RESUME_FLAGS", "add_arguments", "run"]

_FLAGS = {"hidden_size": "--hidden", "time_limit_s": "--time-limit"}  # the others: --name-with-dashes


def _flag(setting: str) -> str:
    """The option that sets the :class:`TrainConfig` field ``setting`` (``hidden_size``: ``--hidden``)."""
    return _FLAGS.get(setting, "--" + setting.replace("_", "-"))


RESUME_FLAGS = (*(_flag(name) for name in RESUMABLE), "--threads", "--no-progress")
"""The options that may differ from the stored run on ``--resume``: the settings of
:data:`~unitary_update.experiments.config.RESUMABLE` and the options that are no settings."""


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def add_arguments(parser: argparse.ArgumentParser) -> None:  # numpydoc ignore=PR01,EX01
    """Add the options of the ``train`` command to ``parser``.

    Every option that sets a field of :class:`~unitary_update.experiments.config.TrainConfig`
    is left out of the parsed namespace when it is not given (so a resumed run can tell what was
    asked for); its default is the field's.
    """
    d = TrainConfig()

    def setting(name: str, help: str | None = None, **kwargs: Any) -> None:
        default = getattr(d, name)
        shown = default is not None and default != () and not isinstance(default, bool)
        parser.add_argument(
            _flag(name),
            dest=name,
            default=argparse.SUPPRESS,
            help=f"{help} (default {default})" if shown else help,
            **kwargs,
        )

    parser.add_argument("task", nargs="?", choices=TASKS, help="omit with --resume")
    parser.add_argument("--run-dir", default=None, help="output directory (default runs/TASK)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR exactly")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help=(
            "threads (default 1); from 2 the RNN splits its batch over that many cores "
            "(docs/benchmarks/rnn_step.md); gradients then differ from another count by rounding, "
            "so resume with the same count to continue bit for bit"
        ),
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    setting("length", "copy: the delay T (default 100); adding: the sequence length (default 200)", type=int)
    setting("steps", "total training steps", type=int)
    setting("batch_size", "sequences per step", type=int)
    setting("hidden_size", "hidden size N (default: copy 190, adding and pmnist 170)", type=int)
    setting("complex", "complex unitary W (default: real orthogonal)", action="store_true")
    setting("init", "initialiser of W", choices=INITS)
    setting("activation", "the RNN's nonlinearity (relu: real models only)", choices=ACTIVATIONS)
    setting("input_scale", "multiplies the initial input weights V (Glorot-normal)", type=float)
    setting(
        "readout_init",
        "initial readout O, c: zero, or uniform in +-1/sqrt(fan_in) (PyTorch's nn.Linear default)",
        choices=READOUT_INITS,
    )
    setting("bias_init", "initial bias b of the nonlinearity: uniform in +-0.01 (expRNN's) or zero", choices=BIAS_INITS)
    setting("pixels", "pmnist: grey levels standardised (mean 0, std 1) or raw in [0, 1]", choices=PIXELS)
    setting("dtype", "real precision of the model", choices=REAL_DTYPES)
    setting("optimizer", "optimizer of V, b, O, c and of W's direction", choices=OPTIMIZERS)
    setting("lr", "learning rate of V, b, O, c", type=float)
    setting("w_lr_divisor", "W's learning rate is lr / this", type=float)
    setting(
        "lr_milestones",
        "steps at which both learning rates are multiplied by --lr-gamma",
        type=int,
        nargs="*",
        metavar="STEP",
    )
    setting("lr_gamma", "learning-rate factor at each milestone", type=float)
    setting("momentum", "SGD momentum", type=float)
    setting(
        "clip_grad_norm",
        "clip the global norm of all gradients (W's Euclidean one included) to this, as "
        "torch.nn.utils.clip_grad_norm_ (default: no clipping)",
        type=float,
        metavar="MAX_NORM",
    )
    setting("rank", "rank k of the W update", type=int)
    setting("update", "projUNN-D (project) or projUNN-T (transport)", choices=UPDATES)
    setting("sketch", "sketch method of the W update", choices=SKETCH_METHODS)
    setting("retract_every", "re-unitarise W every this many steps (0: never)", type=int)
    setting("seed", "seeds the model, the data and the sketches", type=int)
    setting("eval_every", "held-out evaluation period in steps", type=int)
    setting("eval_size", "held-out sequences (pmnist: test images)", type=int)
    setting("checkpoint_every", "checkpoint period in steps", type=int)
    setting("log_every", "training-loss log period in steps", type=int)
    setting("time_limit_s", "stop (with a checkpoint) after this many seconds", type=float, metavar="SECONDS")
    setting("mnist_dir", "folder of the MNIST IDX files", metavar="DIR")
    setting("device", "cpu (NumPy) or gpu / cuda:<i> (CuPy, the gpu extra)")


# numpydoc ignore: every command's parameters and return value are documented in unitary_update.cli
def run(args: argparse.Namespace) -> int:  # numpydoc ignore=PR01,RT01
    """Train (or resume) the run described by the parsed options; print how it ended.

    Raises
    ------
    UsageError
        Without a task and without ``--resume``, or with ``--resume`` and a setting whose value
        differs from the stored run's outside :data:`RESUME_FLAGS` (every such flag is listed,
        with the run's value and the flags that may change), or a ``--run-dir`` other than
        the resumed one; also when the run diverges (FloatingPointError: the loss became NaN
        or infinite) or runs out of memory, so that these end in one line too.

    Examples
    --------
    >>> import tempfile
    >>> from unitary_update.cli import main
    >>> run_dir = tempfile.mkdtemp()
    >>> main(["train", "adding", "--length", "6", "--steps", "3", "--hidden", "8", "--run-dir", run_dir])
    ... # doctest: +ELLIPSIS
    completed at step 3: held-out loss ...
    0
    >>> main(["train", "--resume", run_dir, "--steps", "5"])  # doctest: +ELLIPSIS
    completed at step 5: held-out loss ...
    0
    """
    from ..experiments.train import train

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    settings.pop("task", None)
    if "lr_milestones" in settings:
        settings["lr_milestones"] = tuple(settings["lr_milestones"])
    progress = not args.no_progress
    with blas_threads(args.threads):
        try:
            if args.resume is not None:
                config = _resumed_config(args, settings)
                check_device(config.device, f"train --device {config.device}")
                result = train(config, args.resume, resume=True, progress=progress)
            else:
                if args.task is None:
                    raise UsageError(f"give a task ({', '.join(TASKS)}) or --resume RUN_DIR")
                check_device(settings.get("device"), f"train --device {settings.get('device')}")
                config = TrainConfig(task=args.task, **settings)
                result = train(config, f"runs/{args.task}" if args.run_dir is None else args.run_dir, progress=progress)
        except FloatingPointError as err:  # the run diverged: a learning rate too large for the data
            raise UsageError(f"{err} (try a smaller --lr)") from None
        except MemoryError as err:
            raise UsageError(
                f"out of memory ({str(err) or 'MemoryError'}): "
                "try a smaller --hidden, --batch-size, --eval-size or --length"
            ) from None
    ev, at = result["eval"], result["eval_step"]
    if at is None:
        print(f"{result['status']} at step {result['step']} (no held-out evaluation in this run)")
    else:
        extra = f", held-out accuracy {ev['accuracy']:.4f}" if "accuracy" in ev else ""
        when = "" if at == result["step"] else f" (last evaluated at step {at})"
        print(f"{result['status']} at step {result['step']}: held-out loss {ev['loss']:.4f}{extra}{when}")
    # the shell's convention for a process stopped by a signal: 130 after Ctrl-C, 143 after SIGTERM
    return 128 + result["signal"] if result["status"] == "interrupted" else 0


def _resumed_config(args: argparse.Namespace, settings: dict[str, Any]) -> TrainConfig:
    """The stored run's config with the settings given again; a setting that conflicts is a UsageError.

    A setting given with the stored run's value is accepted; one outside
    :data:`~unitary_update.experiments.config.RESUMABLE` with another value is refused, with
    every conflicting flag and the flags that may change listed in one line.
    """
    run = Path(args.resume)
    if args.run_dir is not None and Path(args.run_dir).resolve() != run.resolve():
        raise UsageError(f"--run-dir {args.run_dir} differs from --resume {args.resume}: give one run directory")
    if not (run / "checkpoint.npz").is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {run / 'checkpoint.npz'}")
    stored = load_config(run / "config.json")
    given = dict(settings)
    if args.task is not None:
        given["task"] = args.task
    try:
        requested = dataclasses.replace(stored, **given)
    except (TypeError, ValueError) as err:
        conflicts = [name for name in given if name not in RESUMABLE and given[name] != getattr(stored, name)]
        if not conflicts:
            raise
        raise _conflict(conflicts, given, stored, f" ({err})") from None
    conflicts = list(resume_conflicts(stored, requested))
    if conflicts:
        raise _conflict(conflicts, given, stored, "")
    return requested


def _conflict(names: list[str], given: dict[str, Any], stored: TrainConfig, why: str) -> UsageError:
    """The one-line refusal of settings that differ from the stored run's."""
    order = [f.name for f in dataclasses.fields(TrainConfig)]
    listed = ", ".join(
        f"{'TASK' if name == 'task' else _flag(name)} {_shown(given[name])} "
        f"(the run has {_shown(getattr(stored, name))})"
        for name in sorted(names, key=order.index)
    )
    return UsageError(
        f"{listed}: part of the run's config, cannot change on --resume{why}; "
        f"may change on resume: {', '.join(RESUME_FLAGS)}"
    )


def _shown(value: Any) -> str:
    """A setting's value as it would be typed on the command line."""
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) or "(none)"
    return str(value)
