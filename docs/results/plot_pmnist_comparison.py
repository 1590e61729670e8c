"""Held-out accuracy per epoch of permuted-MNIST runs and of the JAX expRNN-style reference, in one plot.

Usage (from the repository root; needs the ``plot`` extra)::

    python docs/results/plot_pmnist_comparison.py docs/results/pmnist_comparison.png \
        docs/results/pmnist17_project docs/results/pmnist17_fullrank \
        --reference docs/results/reference_exprnn_jax.json

Each run folder is read from its ``metrics.jsonl`` (evaluations on the full test set at whole
epochs); the reference from the JSON that ``reference_exprnn_jax.py --output`` writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unitary_update.experiments.checkpoints import read_metrics


def epochs_and_accuracy(run_dir: Path) -> tuple[list[float], list[float]]:
    """``(epochs, accuracy in %)`` of the evaluations of a run folder, the initial one left out."""
    per_epoch = 469  # as docs/results.md counts an epoch of batch 128 (60,000 / 128 = 468.75)
    rows = read_metrics(run_dir)
    evals = sorted(
        {r["step"]: r for r in rows if r["split"] == "eval" and r["step"] > 0}.values(), key=lambda r: r["step"]
    )
    return [r["step"] / per_epoch for r in evals], [100 * r["accuracy"] for r in evals]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--reference", type=Path, action="append", default=[])
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in args.runs:
        config = json.loads((run / "config.json").read_text())
        label = f"{run.name}: {config['update']}, rank {config['rank']}, {config['sketch']}"
        ax.plot(*epochs_and_accuracy(run), label=label, lw=1.2)
    for ref in args.reference:
        history = json.loads(ref.read_text())["history"]
        ax.plot(
            [r["epoch"] for r in history],
            [100 * r["test_accuracy"] for r in history],
            "k--",
            lw=1.2,
            label=f"{ref.stem} (JAX, W = W0 expm(A - A^T), RMSprop on A)",
        )
    ax.axhline(94.3, color="grey", lw=0.8, ls=":")
    ax.text(0.5, 94.35, "paper, projUNN rank 1: 94.3 %", fontsize=8, color="grey")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy, full permuted test set (%)")
    ax.set_ylim(88, 95)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("permuted MNIST, hidden 170, modReLU, input x4, W's rate lr/8")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(args.output)


if __name__ == "__main__":
    main()
