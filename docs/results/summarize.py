"""Summarise run directories into docs/results: a JSON summary and the loss plot of each run.

Usage: python docs/results/summarize.py runs/copy1000_project runs/copy1000_transport ...
       python docs/results/summarize.py --study pmnist_study runs/study_* ...   # one JSON, no plots
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from unitary_update.experiments.train import plot_run, read_metrics

OUT = Path(__file__).resolve().parent


def summarize(run_dir: Path, *, write: bool = True) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    records = read_metrics(run_dir)
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    summary = {
        "run": run_dir.name,
        "config": config,
        "steps_reached": train[-1]["step"] if train else 0,
        "elapsed_s": train[-1]["elapsed_s"] if train else 0.0,
        "baseline": train[-1]["baseline"] if train else None,
        "last_train_loss": train[-1]["loss"] if train else None,
        "evals": [{k: r[k] for k in ("step", "loss", "accuracy", "unitarity_error") if k in r} for r in evals],
    }
    if not write:
        return summary
    (OUT / f"{run_dir.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    png = plot_run(run_dir)
    shutil.copy(png, OUT / f"{run_dir.name}.png")
    return summary


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--study"]:
        name, runs = args[1], args[2:]
        summaries = [summarize(Path(arg), write=False) for arg in runs]
        (OUT / f"{name}.json").write_text(json.dumps(summaries, indent=1) + "\n")
        for s in summaries:
            print(s["run"], s["steps_reached"], round(s["elapsed_s"]), s["evals"][-1] if s["evals"] else {})
        sys.exit()
    for arg in args:
        s = summarize(Path(arg))
        last = s["evals"][-1] if s["evals"] else {}
        print(s["run"], s["steps_reached"], round(s["elapsed_s"]), last)
