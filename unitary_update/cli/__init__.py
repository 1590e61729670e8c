"""Command line: ``python -m unitary_update [demo|soak|bench|bench-gpu|conv-bench|conv-demo|train|plot|bench-rnn]``.

Subcommands
-----------
demo (default)
    One projUNN-D and one projUNN-T step at N = 1024 beside the dense O(N^3) methods: the
    errors against them and the speed ratio.
soak
    100,000 random float32 projUNN steps at N = 128 for both updates, with and without the
    default drift control: the unitarity error over time (see ``docs/robustness.md``).
bench
    Time per step of project and transport (``out=U``) for a grid of N and k, as ratios to one
    GEMM, a copy of U, the in-place BLAS rank update and the dense methods, measured in one run;
    ``--plot FILE.png`` draws time against N on log-log axes.
bench-gpu
    projUNN-D/T on the GPU (CuPy) against the dense GPU methods and the memory floor, for
    N in {1024, 4096, 8192}, float32/complex64, k in {1, 16}: a markdown table of times and
    ratios (see ``docs/gpu.md``); ``--device cpu`` runs the same on NumPy.
conv-bench
    Batched updates of stacks of small unitary matrices (F = 1024 of C = 16, F = 64 of C = 128)
    against a Python loop of single-matrix calls and the dense batched polar/expm, as ratios.
conv-demo
    A deep orthogonal convolutional network on MNIST next to the unconstrained one
    (see :mod:`unitary_update.experiments.conv_mnist`).
train {copy,adding,pmnist}
    Train a unitary RNN with projUNN (see :mod:`unitary_update.experiments.train`); ``--resume RUN_DIR``.
plot RUN_DIR
    Draw a run's loss curves against its baseline to RUN_DIR/loss.png.
bench-rnn
    Time one copy-task training step (forward, BPTT, projUNN update) beside a plain NumPy RNN
    step of the same shape (see :mod:`unitary_update.bench.rnn`).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..bench import gpu as _bench_gpu
from ..bench._timing import best_time

__all__ = ["main"]


def demo(n: int = 1024, rank: int = 1, dtype: str = "float64", seed: int = 0, repeat: int = 3) -> list[dict[str, Any]]:
    """Run one projUNN-D and one projUNN-T step next to the dense methods; print and return rows."""
    import unitary_update as uu
    from unitary_update.reference import project_dense, transport_dense

    rng = np.random.default_rng(seed)
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    G = -0.1 * rng.standard_normal((n, n)).astype(dtype) / np.sqrt(n)
    A, B = uu.sketch(G, rank, rng=rng)
    rows = []
    print(f"projUNN demo: N = {n}, rank {rank}, {dtype}; best of {repeat} runs each")
    print(f"{'update':<10} {'low-rank':>11} {'dense':>11} {'speed-up':>9} {'rel. error':>11} {'unitarity':>10}")
    for name, fast, dense in (("project", uu.project, project_dense), ("transport", uu.transport, transport_dense)):
        result = fast(U, A, B)
        reference = dense(U, A, B)
        t_fast = best_time(functools.partial(fast, U, A, B), repeat)
        t_dense = best_time(functools.partial(dense, U, A, B), max(1, repeat // 2))
        err = float(np.linalg.norm(result - reference) / np.linalg.norm(reference))
        row = {
            "update": name,
            "time_s": t_fast,
            "dense_time_s": t_dense,
            "speedup": t_dense / t_fast,
            "relative_error": err,
            "unitarity_error": uu.unitarity_error(result),
        }
        rows.append(row)
        print(
            f"{name:<10} {t_fast * 1e3:9.2f}ms {t_dense * 1e3:9.1f}ms {t_dense / t_fast:8.0f}x "
            f"{err:11.1e} {row['unitarity_error']:10.1e}"
        )
    return rows


def soak_report(
    n: int = 128,
    steps: int = 100_000,
    rank: int = 1,
    dtype: str = "float32",
    step_size: float = 1e-2,
    record_every: int = 1000,
    seed: int = 0,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Soak both updates with and without the default drift control; print a table, return the runs."""
    import json

    import unitary_update as uu
    from unitary_update.bench.soak import soak

    runs: dict[str, Any] = {}
    print(f"soak: N = {n}, {steps} steps of rank {rank}, {dtype}, step norm {step_size:g}, seed {seed}")
    for update in ("project", "transport"):
        for label, drift in (("none", None), ("default", uu.DriftControl())):
            name = f"{update}/{label}"
            runs[name] = soak(
                n=n,
                steps=steps,
                update=update,
                dtype=dtype,
                rank=rank,
                step_size=step_size,
                drift=drift,
                record_every=record_every,
                seed=seed,
            )
            r = runs[name]
            print(
                f"  {name:<18} max error {r['max_error']:.2e}  final {r['final_error']:.2e}  "
                f"retractions {r['retractions']:>5}  {r['seconds']:.1f}s",
                flush=True,
            )
    names = list(runs)
    steps_recorded = runs[names[0]]["step"]
    shown = sorted({i for i in range(len(steps_recorded)) if i == 0 or (i & (i - 1)) == 0} | {len(steps_recorded) - 1})
    print("unitarity_error ||U^H U - I||_F by step (drift control: none / DriftControl() defaults)")
    print(f"{'step':>8} " + " ".join(f"{name:>19}" for name in names))
    for i in shown:
        print(f"{steps_recorded[i]:>8} " + " ".join(f"{runs[name]['error'][i]:>19.2e}" for name in names))
    if json_path is not None:
        with open(json_path, "w") as f:
            json.dump(runs, f, indent=1)
    return runs


def _bench_command(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    # numpy and scipy each load their own OpenBLAS; two idle pools spinning on 2 cores slow each
    # other down.  A short OPENBLAS_THREAD_TIMEOUT must be set before the libraries load, so the
    # command re-executes itself once with it.
    if "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = "1"
        command = [sys.executable, "-m", "unitary_update", *(sys.argv[1:] if argv is None else argv)]
        os.execv(sys.executable, command)
    from unitary_update.bench import cpu as _bench

    machine = _bench.machine_description(args.threads)
    print(f"# projUNN bench: {machine}")
    command_line = "python -m unitary_update " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.stack:
        table = _bench.format_stack_markdown(_bench.run_stack(threads=args.threads, repeat=args.repeat))
        print(table)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(f"Command: `{command_line}`\n\nMachine: {machine}\n\n{table}")
        return 0
    rows = _bench.run(args.n, args.rank, args.dtype, args.threads, args.repeat, args.dense_max)
    table = _bench.format_markdown(rows)
    print(table)
    ns = sorted({r["n"] for r in rows})
    if len(ns) >= 2:
        ratios = _bench.scaling(rows, ns[0] if 1024 not in ns else 1024, ns[-1])
        print(
            f"scaling time(N={ns[-1]}) / time(N={ns[0] if 1024 not in ns else 1024}): "
            + ", ".join(f"{k} {v:.1f}" for k, v in ratios.items())
        )
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"Command: `{command_line}`\n\nMachine: {machine}\n\n{table}")
    if args.plot:
        _bench.plot(rows, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m unitary_update`` and the ``unitary-update`` script.

    Parameters
    ----------
    argv : sequence of str, optional
        The command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        The process exit status, 0 on success.

    Examples
    --------
    >>> from unitary_update.cli import main
    >>> main(["demo", "--n", "32"])  # doctest: +ELLIPSIS
    projUNN demo: N = 32, rank 1, float64; best of 3 runs each
    update ...
    project ...
    transport ...
    0
    """
    parser = argparse.ArgumentParser(
        prog="python -m unitary_update", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="one projUNN-D and one projUNN-T step beside the dense method")
    p_demo.add_argument("--n", type=int, default=1024)
    p_demo.add_argument("--rank", type=int, default=1)
    p_demo.add_argument("--dtype", default="float64", choices=["float32", "float64", "complex64", "complex128"])
    p_demo.add_argument("--seed", type=int, default=0)
    p_soak = sub.add_parser("soak", help="unitarity drift over many float32 steps, with and without drift control")
    p_soak.add_argument("--n", type=int, default=128)
    p_soak.add_argument("--steps", type=int, default=100_000)
    p_soak.add_argument("--rank", type=int, default=1)
    p_soak.add_argument("--dtype", default="float32", choices=["float32", "float64", "complex64", "complex128"])
    p_soak.add_argument("--step-size", type=float, default=1e-2, help="Frobenius norm of each step")
    p_soak.add_argument("--record-every", type=int, default=1000)
    p_soak.add_argument("--seed", type=int, default=0)
    p_soak.add_argument("--json", dest="json_path", default=None, help="also write the records to this file")
    p_bench = sub.add_parser("bench", help="time projUNN steps against GEMM, copy, rank update and dense baselines")
    p_bench.add_argument("--n", type=int, nargs="+", default=[256, 1024, 2048, 4096], help="matrix sizes N")
    p_bench.add_argument("--rank", type=int, nargs="+", default=[1], help="ranks k")
    p_bench.add_argument("--dtype", default="float32", choices=["float32", "float64", "complex64", "complex128"])
    p_bench.add_argument("--threads", type=int, default=2, help="BLAS and Numba threads (default 2)")
    p_bench.add_argument("--repeat", type=int, default=7, help="repetitions per figure; the best is kept")
    p_bench.add_argument("--dense-max", type=int, default=4096, help="largest N at which dense baselines run")
    p_bench.add_argument("--plot", metavar="FILE.png", help="draw time vs N (log-log) with O(N^2), O(N^3) slopes")
    p_bench.add_argument("--markdown", metavar="FILE.md", help="also write the table (and machine line) here")
    p_bench.add_argument(
        "--stack",
        action="store_true",
        help="time a stack of 4096 16 x 16 complex64 matrices instead (Numba/NumPy/loop)",
    )
    p_bench_gpu = sub.add_parser("bench-gpu", help="GPU timings vs the dense method and the memory floor")
    _bench_gpu.add_arguments(p_bench_gpu)
    p_cb = sub.add_parser("conv-bench", help="batched updates of (F, C, C) stacks vs loop vs dense, as ratios")
    p_cb.add_argument("--dtype", default="complex128", choices=["float32", "float64", "complex64", "complex128"])
    p_cb.add_argument("--ranks", type=int, nargs="+", default=[1, 4])
    p_cb.add_argument("--repeat", type=int, default=5)
    p_cb.add_argument("--threads", type=int, default=1, help="BLAS and Numba threads (0: leave as is)")
    p_cd = sub.add_parser("conv-demo", help="deep orthogonal convolutions on MNIST vs the unconstrained network")
    p_cd.add_argument("--data", default="../shared/data/mnist", help="folder with the MNIST IDX files")
    p_cd.add_argument("--depth", type=int, default=32)
    p_cd.add_argument("--channels", type=int, default=8)
    p_cd.add_argument("--steps", type=int, default=600)
    p_cd.add_argument("--batch", type=int, default=64)
    p_cd.add_argument("--lr", type=float, default=0.1)
    p_cd.add_argument("--lr-classifier", type=float, default=0.1)
    p_cd.add_argument("--rank", type=int, default=2)
    p_cd.add_argument("--baseline-lrs", type=float, nargs="+", default=None, help="lrs of the unconstrained runs")
    p_cd.add_argument("--seed", type=int, default=0)
    p_cd.add_argument("--out", default=None, help="JSON log to write")
    p_cd.add_argument("--plot", default=None, help="PNG to write")
    _add_rnn_commands(sub)
    args = parser.parse_args(argv)
    if args.command in ("train", "plot", "bench-rnn"):
        return _run_rnn_command(args)
    if args.command == "bench":
        return _bench_command(args, argv)
    if args.command == "bench-gpu":
        words = list(sys.argv[1:] if argv is None else argv)
        _bench_gpu.main(args, "python -m unitary_update " + " ".join(words))
        return 0
    if args.command == "soak":
        soak_report(
            n=args.n,
            steps=args.steps,
            rank=args.rank,
            dtype=args.dtype,
            step_size=args.step_size,
            record_every=args.record_every,
            seed=args.seed,
            json_path=args.json_path,
        )
        return 0
    if args.command == "conv-bench":
        from ..bench.conv import bench_table

        bench_table(ranks=tuple(args.ranks), dtype=args.dtype, repeat=args.repeat, threads=args.threads or None)
        return 0
    if args.command == "conv-demo":
        from ..experiments.conv_mnist import train_mnist

        train_mnist(
            args.data,
            depth=args.depth,
            channels=args.channels,
            steps=args.steps,
            batch=args.batch,
            lr=args.lr,
            lr_classifier=args.lr_classifier,
            rank=args.rank,
            baseline_lrs=tuple(args.baseline_lrs) if args.baseline_lrs else None,
            seed=args.seed,
            out=args.out,
            plot=args.plot,
        )
        return 0
    if args.command in (None, "demo"):
        kwargs = (
            {} if args.command is None else {"n": args.n, "rank": args.rank, "dtype": args.dtype, "seed": args.seed}
        )
        demo(**kwargs)
        return 0
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2  # pragma: no cover


# ---- section: RNN commands (train, plot, bench-rnn) -------------------------------------------
def _add_rnn_commands(sub: Any) -> None:
    from ..experiments.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a unitary RNN with projUNN on copy, adding or permuted MNIST")
    p.add_argument("task", nargs="?", choices=["copy", "adding", "pmnist"], help="omit with --resume")
    p.add_argument("--run-dir", default=None, help="output directory (default runs/TASK)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR exactly")
    p.add_argument("--length", type=int, default=None, help="copy: delay T (default 100); adding: length (200)")
    p.add_argument("--steps", type=int, default=None, help=f"total training steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--hidden", type=int, default=None, help="hidden size N (default: copy 190, others 170)")
    p.add_argument("--complex", action="store_true", help="complex unitary W (default: real orthogonal)")
    p.add_argument("--init", default=d.init, choices=["henaff", "cayley", "haar", "identity"])
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"])
    p.add_argument("--optimizer", default=d.optimizer, choices=["rmsprop", "adam", "sgd"])
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of V, b, O, c")
    p.add_argument("--w-lr-divisor", type=float, default=d.w_lr_divisor, help="W's learning rate is lr / this")
    p.add_argument(
        "--lr-milestones",
        type=int,
        nargs="*",
        default=None,
        help="steps at which both learning rates are multiplied by --lr-gamma (with --resume: replaces the run's)",
    )
    p.add_argument(
        "--lr-gamma", type=float, default=None, help=f"learning-rate factor at each milestone (default {d.lr_gamma})"
    )
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--rank", type=int, default=d.rank, help="rank k of the W update")
    p.add_argument("--update", default=d.update, choices=["project", "transport"])
    p.add_argument("--sketch", default=d.sketch, choices=["randomized", "lsi", "column", "exact"])
    p.add_argument("--retract-every", type=int, default=d.retract_every, help="polar retraction period (0: off)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-size", type=int, default=d.eval_size)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--time-limit", type=float, default=None, help="stop (with a checkpoint) after this many seconds")
    p.add_argument("--mnist-dir", default=d.mnist_dir)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads (threadpoolctl; default 1: the per-time-step products are too small to share)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu (NumPy, default) or gpu / cuda:<i> (CuPy); with --resume, moves the run to that device",
    )
    p.add_argument("--no-progress", action="store_true")
    q = sub.add_parser("plot", help="draw a run's loss curves to RUN_DIR/loss.png")
    q.add_argument("run_dir")
    q.add_argument("--out", default=None)
    b = sub.add_parser("bench-rnn", help="time a copy-task training step beside a plain NumPy RNN step")
    b.add_argument("--length", type=int, default=1000, help="copy delay T (sequence T + 20)")
    b.add_argument("--hidden", type=int, default=190)
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--rank", type=int, default=1)
    b.add_argument("--update", default="project", choices=["project", "transport"])
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--threads", type=int, default=1, help="BLAS threads (threadpoolctl)")
    b.add_argument("--json", default=None, help="also write the results to this JSON file")


def _blas_threads(threads: int | None) -> Any:
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def _run_rnn_command(args: argparse.Namespace) -> int:
    if args.command == "plot":
        from ..experiments.train import plot_run

        print(plot_run(args.run_dir, args.out))
        return 0
    if args.command == "bench-rnn":
        from ..bench.rnn import run_benchmark

        with _blas_threads(args.threads):
            run_benchmark(
                delay=args.length,
                hidden=args.hidden,
                batch=args.batch_size,
                rank=args.rank,
                update=args.update,
                repeat=args.repeat,
                threads=args.threads,
                json_path=args.json,
            )
        return 0
    from ..experiments.train import TrainConfig, train

    if args.resume is None and args.task is None:
        raise SystemExit("train: give a task (copy, adding, pmnist) or --resume RUN_DIR")
    if args.resume is not None and args.lr_gamma is not None:
        raise SystemExit("train: --lr-gamma is part of the run's config and cannot change on --resume")
    with _blas_threads(args.threads):
        if args.resume is not None:
            result = train(
                None,
                args.resume,
                resume=True,
                steps=args.steps,
                time_limit_s=args.time_limit,
                progress=not args.no_progress,
                device=args.device,
                lr_milestones=None if args.lr_milestones is None else tuple(args.lr_milestones),
            )
        else:
            config = TrainConfig(
                task=args.task,
                length=args.length,
                steps=args.steps if args.steps is not None else TrainConfig.steps,
                batch_size=args.batch_size,
                hidden_size=args.hidden,
                complex=args.complex,
                init=args.init,
                dtype=args.dtype,
                optimizer=args.optimizer,
                lr=args.lr,
                w_lr_divisor=args.w_lr_divisor,
                lr_milestones=tuple(args.lr_milestones or ()),
                lr_gamma=args.lr_gamma if args.lr_gamma is not None else TrainConfig.lr_gamma,
                momentum=args.momentum,
                rank=args.rank,
                update=args.update,
                sketch=args.sketch,
                retract_every=args.retract_every,
                seed=args.seed,
                eval_every=args.eval_every,
                eval_size=args.eval_size,
                checkpoint_every=args.checkpoint_every,
                log_every=args.log_every,
                time_limit_s=args.time_limit,
                mnist_dir=args.mnist_dir,
                device=args.device or TrainConfig.device,
            )
            result = train(config, args.run_dir or f"runs/{args.task}", progress=not args.no_progress)
    ev = result["eval"]
    extra = f", held-out accuracy {ev['accuracy']:.4f}" if "accuracy" in ev else ""
    print(f"{result['status']} at step {result['step']}: held-out loss {ev.get('loss', float('nan')):.4f}{extra}")
    return 130 if result["status"] == "interrupted" else 0
