"""ProjUNN side by side with geotorch and torch's orthogonal parametrization, in one run, as ratios.

Two measurements (``python -m unitary_update bench-torch``):

step cost
    The cost of one training step of a single N x N weight kept orthogonal, for a simple loss
    ``sum(W * C)``: :class:`unitary_update.torch.ProjUNN` (rank k, RMSprop base, the weight
    itself is the parameter) against ``geotorch.orthogonal`` and
    ``torch.nn.utils.parametrizations.orthogonal`` (both: the forward parametrization, a matrix
    exponential, its backward, and a :class:`torch.optim.RMSprop` step of the unconstrained
    parameter).  Each timed call is ``zero_grad``, forward, backward, ``step``; the best of
    ``repeat`` calls after one warm-up call (a method whose warm-up call takes over 2 s is timed
    by one more call).
copy task
    geotorch's copying-problem model (``examples/copying_problem.py``: modReLU ExpRNN cell,
    readout at every step, cross-entropy) trained with each method from the same orthogonal
    starting point, the same initial parameters and the same batches: RMSprop at ``1e-3`` for
    the other parameters, the orthogonal learning rate picked per method on the same grid (the
    best final held-out loss).  Reported: time per step and the held-out loss at equal steps.

geotorch is optional (``pip install geotorch``); without it its rows are skipped with a note.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import platform
import statistics
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

from .._extras import require
from ._timing import best_time

__all__ = ["copy_task", "run_benchmark", "step_costs"]


@functools.cache
def _models() -> Any:
    """The torch models, built on first use (torch is optional: this module imports without it).

    ``CopyModel`` is geotorch's copying-problem model (``examples/copying_problem.py`` of
    https://github.com/lezcano/geotorch, MIT licence): an ``ExpRNNCell`` with a modReLU
    non-linearity, a recurrent ``nn.Linear(hidden, hidden, bias=False)`` whose weight is kept
    orthogonal, and a linear readout at every step.  The recurrent weight is kept orthogonal by
    geotorch's ``orthogonal`` parametrization, torch's ``parametrizations.orthogonal``, or no
    parametrization at all and :class:`unitary_update.torch.ProjUNN`.
    """
    import torch
    from torch import nn
    from torch.nn.utils import parametrize

    def orthogonalize(layer: nn.Module, method: str) -> None:
        """Make ``layer.weight`` orthogonal by the parametrization of ``method`` (``projunn``: none)."""
        if method == "geotorch":
            geotorch = importlib.import_module("geotorch")  # optional, untyped: not a static import
            geotorch.orthogonal(layer, "weight")
        elif method == "torch":
            nn.utils.parametrizations.orthogonal(layer, "weight")

    class ModReLU(nn.Module):
        """``sign(z) relu(|z| + b)`` with a learned bias ``b`` (geotorch's ``modrelu``)."""

        def __init__(self, features: int) -> None:
            super().__init__()
            self.b = nn.Parameter(torch.empty(features))
            with torch.no_grad():
                self.b.uniform_(-0.01, 0.01)

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return torch.sign(inputs) * nn.functional.relu(torch.abs(inputs) + self.b)

    class CopyModel(nn.Module):
        """geotorch's copying-problem model: ExpRNN cell (modReLU), linear readout at every step."""

        def __init__(self, alphabet_size: int, hidden_size: int, method: str, W0: torch.Tensor) -> None:
            super().__init__()
            self.hidden_size = hidden_size
            self.recurrent_kernel = nn.Linear(hidden_size, hidden_size, bias=False)
            self.input_kernel = nn.Linear(alphabet_size + 2, hidden_size)
            self.nonlinearity = ModReLU(hidden_size)
            self.lin = nn.Linear(hidden_size, alphabet_size + 1)
            nn.init.kaiming_normal_(self.input_kernel.weight, nonlinearity="relu")
            nn.init.kaiming_normal_(self.lin.weight, nonlinearity="relu")
            nn.init.constant_(self.lin.bias, 0)
            self.method = method
            orthogonalize(self.recurrent_kernel, method)
            if method == "projunn":
                with torch.no_grad():
                    self.recurrent_kernel.weight.copy_(W0)
            else:
                self.recurrent_kernel.weight = W0.clone()  # through the parametrization's right inverse

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            hidden = inputs.new_zeros(inputs.size(0), self.hidden_size)
            outputs = []
            cached = parametrize.cached() if self.method != "projunn" else contextlib.nullcontext()
            with cached:  # a parametrization computes the orthogonal matrix once per forward
                for x in torch.unbind(inputs, dim=1):
                    hidden = self.nonlinearity(self.input_kernel(x) + self.recurrent_kernel(hidden))
                    outputs.append(self.lin(hidden))
            return torch.stack(outputs, dim=1)

        def orthogonal_parameters(self) -> list[Any]:
            """The parameters that the orthogonal learning rate applies to."""
            return list(self.recurrent_kernel.parameters())

    def copy_data(batch: int, delay: int, generator: torch.Generator, alphabet: int = 8, S: int = 10) -> Any:
        """geotorch's copy data: S symbols, ``delay`` blanks, a marker, then recall; one-hot inputs."""
        seq = torch.randint(1, alphabet + 1, (batch, S), generator=generator)
        x = torch.zeros((batch, delay + 2 * S), dtype=torch.long)
        y = torch.zeros_like(x)
        x[:, :S] = seq
        x[:, S + delay] = alphabet + 1
        y[:, S + delay :] = seq
        return nn.functional.one_hot(x, num_classes=alphabet + 2).float(), y

    return types.SimpleNamespace(CopyModel=CopyModel, copy_data=copy_data, orthogonalize=orthogonalize)


_SLOW = 2.0  # seconds: a warm-up call slower than this is timed once more instead of ``repeat`` times


def _time(fn: Callable[[], Any], repeat: int) -> float:
    """Best of ``repeat`` calls after a warm-up; after a warm-up slower than ``_SLOW``, one timed call."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > _SLOW:  # minutes per call (a parametrization at N = 4096): one timed call is enough
        return best_time(fn, 1)
    return best_time(fn, repeat)


def _available(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _methods(ranks: Sequence[int], geotorch: bool) -> list[str]:
    out = [f"projunn_k{k}" for k in ranks]
    if geotorch:
        out.append("geotorch")
    return [*out, "torch"]


def _orthogonal_step(method: str, n: int) -> Callable[[], None]:
    import torch

    from ..torch import ProjUNN, orthogonal_

    orthogonalize = _models().orthogonalize

    gen = torch.Generator().manual_seed(n)
    C = torch.randn(n, n, generator=gen)
    if method.startswith("projunn"):
        W = torch.nn.Parameter(orthogonal_(torch.empty(n, n), rng=0))
        opt: Any = ProjUNN([W], lr=1e-3, base="rmsprop", rank=int(method.rpartition("k")[2]), seed=0)

        def weight() -> Any:
            return W

    else:
        torch.manual_seed(0)
        layer = torch.nn.Linear(n, n, bias=False)
        orthogonalize(layer, method)
        opt = torch.optim.RMSprop(layer.parameters(), lr=1e-3)

        def weight() -> Any:
            return layer.weight

    def step() -> None:
        opt.zero_grad()
        (weight() * C).sum().backward()
        opt.step()

    return step


def step_costs(
    sizes: Sequence[int] = (128, 512, 1024, 2048, 4096), *, ranks: Sequence[int] = (1, 8), repeat: int = 3
) -> dict[str, Any]:
    """Seconds per training step of one N x N orthogonal weight, per method and N, with ratios.

    Parameters
    ----------
    sizes : sequence of int
        The sizes N.
    ranks : sequence of int
        The ranks k of the ProjUNN rows (each ``<= N``).
    repeat : int
        Timed calls per method (the best is kept).

    Returns
    -------
    dict
        ``seconds[method][N]``, ``ratio[method][N]`` (the method's time over the fastest ProjUNN
        row's: how many times slower than ProjUNN), ``methods`` and ``skipped`` (notes).

    Raises
    ------
    MissingExtraError
        If torch is not installed.

    Examples
    --------
    >>> from unitary_update.bench.torch_compare import step_costs
    >>> r = step_costs([16], ranks=[1], repeat=1)
    >>> r["ratio"]["projunn_k1"][16]
    1.0
    """
    require("torch", "bench-torch")
    geotorch = _available("geotorch")
    methods = _methods(ranks, geotorch)
    seconds: dict[str, dict[int, float]] = {m: {} for m in methods}
    for n in sizes:
        for method in methods:
            seconds[method][n] = _time(_orthogonal_step(method, n), repeat)
    base = f"projunn_k{min(ranks)}"
    ratio = {m: {n: seconds[m][n] / seconds[base][n] for n in sizes} for m in methods}
    skipped = [] if geotorch else ["geotorch is not installed (pip install geotorch): its rows are skipped"]
    return {"seconds": seconds, "ratio": ratio, "methods": methods, "sizes": list(sizes), "skipped": skipped}


def _train_copy(
    method: str, lr_orth: float, *, delay: int, batch: int, hidden: int, steps: int, eval_every: int, seed: int,
    held_out: Any,
) -> dict[str, Any]:  # fmt: skip
    import torch

    from ..torch import ProjUNN, henaff_

    CopyModel, copy_data = _models().CopyModel, _models().copy_data

    torch.manual_seed(seed)
    W0 = henaff_(torch.empty(hidden, hidden), rng=seed)  # geotorch's example starts on the torus too
    model = CopyModel(8, hidden, "projunn" if method.startswith("projunn") else method, W0)
    orth = model.orthogonal_parameters()
    others = [p for p in model.parameters() if all(p is not q for q in orth)]
    opt: Any
    if method.startswith("projunn"):
        rank = int(method.rpartition("k")[2])
        groups = [{"params": orth, "lr": lr_orth, "rank": rank}, {"params": others, "unitary": False}]
        opt = ProjUNN(groups, lr=1e-3, base="rmsprop", seed=seed)
    else:
        opt = torch.optim.RMSprop([{"params": others}, {"params": orth, "lr": lr_orth}], lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    data = torch.Generator().manual_seed(seed + 1)
    hx, hy = held_out
    times, curve = [], []
    for step in range(1, steps + 1):
        x, y = copy_data(batch, delay, data)
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x).flatten(0, 1), y.flatten()).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                curve.append((step, loss_fn(model(hx).flatten(0, 1), hy.flatten()).item()))
    with torch.no_grad():
        W = model.recurrent_kernel.weight.double()
        error = float(torch.linalg.matrix_norm(W.T @ W - torch.eye(hidden, dtype=W.dtype)))
    return {
        "seconds_per_step": statistics.median(times[1:] or times),
        "curve": curve,
        "final": curve[-1][1],
        "unitarity_error": error,
    }


def copy_task(
    *,
    delay: int = 50,
    batch: int = 64,
    hidden: int = 190,
    steps: int = 200,
    lrs: Sequence[float] = (2e-4, 1e-3, 5e-3),
    eval_every: int = 10,
    ranks: Sequence[int] = (1,),
    seed: int = 0,
) -> dict[str, Any]:
    """Train geotorch's copying-problem model with each method; pick each one's orthogonal lr on ``lrs``.

    Parameters
    ----------
    delay : int
        Copy delay (sequences of ``delay + 20`` symbols).
    batch : int
        Batch size.
    hidden : int
        Hidden size (geotorch's example: 190).
    steps : int
        Training steps per run.
    lrs : sequence of float
        The grid of orthogonal learning rates (the same for every method).
    eval_every : int
        Held-out loss (256 fixed sequences) every this many steps, and at the end.
    ranks : sequence of int
        The ranks of the ProjUNN rows (methods ``projunn_k<rank>``).
    seed : int
        Seeds the initial parameters, the batches and the sketches.

    Returns
    -------
    dict
        ``runs[method][lr]`` (``seconds_per_step``, ``curve`` of ``(step, held-out loss)``,
        ``final``, ``unitarity_error``), ``best_lr[method]``, ``steps_to_match[projunn][method]``
        (for each ProjUNN row at its best lr: the first evaluated step at which its held-out loss
        is at or below the final one of ``method`` at its best lr, None if never), ``methods``,
        the settings and ``skipped`` (notes).

    Raises
    ------
    MissingExtraError
        If torch is not installed.

    Examples
    --------
    >>> from unitary_update.bench.torch_compare import copy_task
    >>> r = copy_task(delay=2, batch=4, hidden=8, steps=2, lrs=[1e-3], eval_every=1)
    >>> sorted(r["best_lr"]) == sorted(r["methods"])
    True
    """
    torch = require("torch", "bench-torch")
    copy_data = _models().copy_data

    geotorch = _available("geotorch")
    methods = [*(f"projunn_k{k}" for k in ranks), *(["geotorch"] if geotorch else []), "torch"]
    held_out = copy_data(256, delay, torch.Generator().manual_seed(10_000 + seed))
    settings = {"delay": delay, "batch": batch, "hidden": hidden, "steps": steps, "eval_every": eval_every,
                "seed": seed}  # fmt: skip
    runs = {m: {lr: _train_copy(m, lr, held_out=held_out, **settings) for lr in lrs} for m in methods}
    best_lr = {m: min(lrs, key=lambda lr, m=m: float(runs[m][lr]["final"])) for m in methods}  # type: ignore[misc]
    steps_to_match = {
        p: {
            m: next((s for s, loss in runs[p][best_lr[p]]["curve"] if loss <= runs[m][best_lr[m]]["final"]), None)
            for m in methods
        }
        for p in methods
        if p.startswith("projunn")
    }
    skipped = [] if geotorch else ["geotorch is not installed (pip install geotorch): its rows are skipped"]
    return {"runs": runs, "best_lr": best_lr, "steps_to_match": steps_to_match, "methods": methods,
            "lrs": list(lrs), "skipped": skipped, "ranks": list(ranks), **settings}  # fmt: skip


_LABELS = {"geotorch": "geotorch.orthogonal", "torch": "torch parametrizations.orthogonal"}


def _label(method: str) -> str:
    if method.startswith("projunn_k"):
        return f"ProjUNN k={method.rpartition('k')[2]}"
    return _LABELS.get(method, "ProjUNN" if method == "projunn" else method)


def _step_table(r: dict[str, Any]) -> list[str]:
    sizes = r["sizes"]
    lines = [
        "| method | " + " | ".join(f"N = {n}" for n in sizes) + " |",
        "| --- | " + " | ".join("---" for _ in sizes) + " |",
    ]
    for m in r["methods"]:
        cells = [f"{r['seconds'][m][n] * 1e3:.3g} ms ({r['ratio'][m][n]:.3g}x)" for n in sizes]
        lines.append(f"| {_label(m)} | " + " | ".join(cells) + " |")
    return lines


def _copy_table(r: dict[str, Any]) -> list[str]:
    projunn = [m for m in r["methods"] if m.startswith("projunn")]
    others = [m for m in r["methods"] if not m.startswith("projunn")]
    half = r["steps"] // 2
    lines = [
        f"| method | orthogonal lr | time per step | held-out loss at step {half} | at step {r['steps']} | "
        + "".join(f"ProjUNN reaches {_label(m)}'s at step | " for m in others)
        + "unitarity error |",
        "| --- | --- | --- | --- | --- | " + "--- | " * len(others) + "--- |",
    ]
    base = r["runs"][projunn[0]][r["best_lr"][projunn[0]]]["seconds_per_step"]
    for m in r["methods"]:
        run = r["runs"][m][r["best_lr"][m]]
        at_half = min(run["curve"], key=lambda point: abs(point[0] - half))[1]
        reached = []
        for other in others:
            step = r["steps_to_match"][m][other] if m in projunn else None
            reached.append("" if m not in projunn else "not reached" if step is None else str(step))
        lines.append(
            f"| {_label(m)} | {r['best_lr'][m]:g} | {run['seconds_per_step'] * 1e3:.3g} ms "
            f"({run['seconds_per_step'] / base:.2f}x) | {at_half:.4f} | {run['final']:.4f} | "
            + "".join(f"{cell} | " for cell in reached)
            + f"{run['unitarity_error']:.1e} |"
        )
    return lines


def run_benchmark(
    *,
    sizes: Sequence[int] = (128, 512, 1024, 2048, 4096),
    ranks: Sequence[int] = (1, 8),
    repeat: int = 3,
    copy: bool = True,
    delay: int = 50,
    batch: int = 64,
    hidden: int = 190,
    steps: int = 200,
    lrs: Sequence[float] = (2e-4, 1e-3, 5e-3),
    eval_every: int = 10,
    copy_ranks: Sequence[int] = (1, 8),
    threads: int | None = None,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Run :func:`step_costs` and :func:`copy_task`; print both tables (Markdown) and return the results.

    Parameters
    ----------
    sizes : sequence of int
        As :func:`step_costs` (no step-cost table when empty).
    ranks : sequence of int
        As :func:`step_costs`.
    repeat : int
        As :func:`step_costs`.
    copy : bool
        Also run :func:`copy_task`.
    delay : int
        As :func:`copy_task`.
    batch : int
        As :func:`copy_task`.
    hidden : int
        As :func:`copy_task`.
    steps : int
        As :func:`copy_task`.
    lrs : sequence of float
        As :func:`copy_task`.
    eval_every : int
        As :func:`copy_task`.
    copy_ranks : sequence of int
        :func:`copy_task`'s ``ranks``.
    threads : int, optional
        The torch and BLAS thread count in force (recorded only; the command sets it).
    json_path : str, optional
        Also write the results there.

    Returns
    -------
    dict
        ``step_costs`` and ``copy_task`` (each None when not run) and ``machine``.

    Raises
    ------
    MissingExtraError
        If torch is not installed.

    Examples
    --------
    >>> from unitary_update.bench.torch_compare import run_benchmark
    >>> r = run_benchmark(sizes=[16], ranks=[1], repeat=1, copy=False)  # doctest: +ELLIPSIS
    per-step cost of one N x N orthogonal weight ...
    >>> r["copy_task"] is None
    True
    """
    torch = require("torch", "bench-torch")
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, threads {threads}"
    out: dict[str, Any] = {"step_costs": None, "copy_task": None, "machine": machine}
    if sizes:
        r = out["step_costs"] = step_costs(sizes, ranks=ranks, repeat=repeat)
        print(f"per-step cost of one N x N orthogonal weight (float32, zero_grad + forward + backward + step; "
              f"in brackets: x ProjUNN k={min(ranks)}), {machine}")  # fmt: skip
        print("\n".join(_step_table(r)))
        for note in r["skipped"]:
            print(f"note: {note}")
    if copy:
        c = out["copy_task"] = copy_task(delay=delay, batch=batch, hidden=hidden, steps=steps, lrs=lrs,
                                         eval_every=eval_every, ranks=copy_ranks)  # fmt: skip
        print(f"\ncopy task (geotorch's model: delay {delay}, batch {batch}, hidden {hidden}, {steps} steps, "
              f"RMSprop 1e-3; orthogonal lr: the best of {', '.join(f'{lr:g}' for lr in lrs)}; "
              f"in brackets: x ProjUNN k={copy_ranks[0]}), {machine}")  # fmt: skip
        print("\n".join(_copy_table(c)))
        for note in c["skipped"]:
            print(f"note: {note}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out
