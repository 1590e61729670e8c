"""Plots of a training run: its loss curves against the memoryless baseline (``loss.png``)."""

from __future__ import annotations

import os
from pathlib import Path

from .._extras import pyplot
from .checkpoints import read_metrics
from .config import load_config
from .tasks import task_class

__all__ = ["plot_run"]


def plot_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Draw the training and held-out loss of a run against its memoryless baseline, as a PNG.

    For permuted MNIST the held-out accuracy is drawn too, on a second axis.

    Parameters
    ----------
    run_dir : str or path-like
        A run directory with ``metrics.jsonl``.
    out : str or path-like, optional
        The PNG to write (default ``run_dir/loss.png``).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    FileNotFoundError
        If the run has no metrics.
    ValueError
        If a record of ``metrics.jsonl`` is not a run's record (split "train" or "eval", a
        numeric loss), or ``config.json`` cannot be read back.
    ImportError
        If matplotlib is not installed (the ``plot`` extra: ``pip install "unitary_update[plot]"``).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from unitary_update.experiments.train import plot_run
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "metrics.jsonl").write_text(
    ...     '{"split": "train", "step": 10, "loss": 0.5, "baseline": 0.167}\\n'
    ...     '{"split": "train", "step": 20, "loss": 0.1, "baseline": 0.167}\\n'
    ... )
    >>> plot_run(d).name
    'loss.png'
    """
    plt = pyplot("plot")
    records = read_metrics(run_dir)
    for r in records:
        loss = r.get("loss")
        if r.get("split") not in ("train", "eval") or isinstance(loss, bool) or not isinstance(loss, (int, float)):
            raise ValueError(
                f"{Path(run_dir) / 'metrics.jsonl'}: the record of step {r['step']} is not a run's record "
                f"(a 'split' of 'train' or 'eval' and a numeric 'loss'); got {str(r)[:80]}"
            )
    config_path = Path(run_dir) / "config.json"
    title, classification = Path(run_dir).name, False
    if config_path.is_file():
        cfg = load_config(config_path)
        task = task_class(cfg.task)
        title = f"{task.label(cfg.length)}, N={cfg.resolved_hidden()}, rank {cfg.rank}, {cfg.update}, {cfg.optimizer}"
        classification = task.classification
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for split, style in (("train", "-"), ("eval", "o-")):
        rows = [r for r in records if r["split"] == split]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, ms=3, label=f"{split} loss")
    baseline = next((r["baseline"] for r in records if r.get("baseline") is not None), None)
    if baseline is not None:
        ax.axhline(baseline, color="k", ls="--", lw=1, label=f"memoryless baseline {baseline:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    accuracy = [r for r in records if r["split"] == "eval" and "accuracy" in r]
    if accuracy and classification:  # the held-out accuracy is the result
        acc_ax = ax.twinx()
        acc_ax.plot([r["step"] for r in accuracy], [100 * r["accuracy"] for r in accuracy], "s-", ms=3, color="C3")
        acc_ax.set_ylabel("held-out accuracy (%)", color="C3")
        acc_ax.tick_params(axis="y", colors="C3")
    ax.legend(fontsize=8)
    fig.tight_layout()
    target = Path(out) if out is not None else Path(run_dir) / "loss.png"
    fig.savefig(target)
    plt.close(fig)
    return target
