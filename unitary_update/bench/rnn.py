"""Timing one copy-task training step beside a plain NumPy RNN step, in one process, as ratios.

Three steps of the same shape (copy task, float32, ``T = delay + 20``) are timed back to back:

``projunn``
    The library's training step: forward, hand-written BPTT, RMSprop on V, b, O, c and the
    projUNN update of W (RMSprop direction, rank-k randomized sketch, ``project`` or
    ``transport``): exactly what ``python -m unitary_update train copy`` runs per step.
``euclidean``
    The same forward and BPTT with a plain RMSprop update of W (no sketch, W leaves the
    manifold): ``projunn / euclidean`` is the overhead of keeping W unitary.
``plain_numpy``
    A straightforward NumPy RNN step of the same shape with no projUNN and no fused kernels:
    ``h_t = modrelu(W h_{t-1} + V x_t)`` with ``@`` and NumPy ufuncs per step, the textbook BPTT,
    and an SGD update of every parameter.
``torch_autograd``
    The same model written in PyTorch (same parameters, modReLU, sequence cross-entropy), its
    gradient by autograd and a ``torch.optim.RMSprop`` step of every parameter: what a PyTorch
    user would run, with the same thread count (``torch.set_num_threads``), in the same process.
    Skipped, with a note, without torch.

:func:`breakdown` splits the ``projunn`` step into its parts: the forward pass (with the loss),
BPTT (with the gradients of V, b, O, c and the factors of dL/dW), the dense dL/dW, the finite
checks, the RMSprop direction of W, its sketch and the projUNN update.

Run it with ``python -m unitary_update bench-rnn`` (``--threads`` sets the BLAS threads through
threadpoolctl; default 1).  The figures are the best of ``repeat`` timed steps after one warm-up.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Callable
from typing import Any

import numpy as np

from .._extras import require
from ..experiments.tasks import CopyTask
from ..models.urnn import URNN
from ..optim import RMSprop, UnitaryOptimizer
from ._timing import best_time

__all__ = ["KINDS", "PlainRNN", "breakdown", "make_step", "run_benchmark", "torch_step"]

KINDS = ("projunn", "euclidean", "plain_numpy", "torch_autograd")


class PlainRNN:
    """A textbook NumPy modReLU RNN (real), for comparison: per-step ``@`` and ufuncs, SGD update.

    Parameters
    ----------
    model : URNN
        A real model whose parameters are copied.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.models.urnn import URNN
    >>> from unitary_update.bench.rnn import PlainRNN
    >>> from unitary_update.experiments.tasks import CopyTask
    >>> model = URNN(10, 8, 10, rng=0)
    >>> model.params["O"][...] = np.random.default_rng(1).standard_normal((10, 8))
    >>> x, y = CopyTask(3).batch(4, rng=2)
    >>> plain = PlainRNN(model)
    >>> bool(np.isclose(plain.train_step(x, y, lr=0.0), model.evaluate(x, y)["loss"]))
    True
    """

    def __init__(self, model: URNN) -> None:
        self.p = {k: np.array(v) for k, v in model.params.items()}

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float = 1e-3) -> float:
        """Forward, BPTT and ``p -= lr * grad`` for a sequence readout with cross-entropy.

        Parameters
        ----------
        x : numpy.ndarray, shape (batch, T, input_size)
            Input sequences.
        y : numpy.ndarray of int, shape (batch, T)
            Class labels at every step.
        lr : float, default 1e-3
            Learning rate of the plain SGD update (0 leaves the parameters unchanged).

        Returns
        -------
        float
            The mean cross-entropy before the update.
        """
        W, V, b, out_w, c = (self.p[k] for k in ("W", "V", "b", "O", "c"))
        batch, T, _ = x.shape
        hs = [np.zeros((batch, W.shape[0]), dtype=W.dtype)]
        zs = []
        for t in range(T):
            z = hs[-1] @ W.T + x[:, t] @ V.T
            zs.append(z)
            hs.append(np.sign(z) * np.maximum(np.abs(z) + b, 0))
        H = np.stack(hs[1:], axis=1)  # (batch, T, N)
        logits = H @ out_w.T + c
        m = logits.max(-1, keepdims=True)
        e = np.exp(logits - m)
        p = e / e.sum(-1, keepdims=True)
        onehot = np.eye(out_w.shape[0], dtype=p.dtype)[y]
        loss = float(-np.mean(np.sum(onehot * np.log(np.maximum(p, 1e-30)), -1)))
        d = (p - onehot) / (batch * T)
        grads = {"O": np.einsum("btc,btn->cn", d, H), "c": d.sum((0, 1))}
        gH = d @ out_w
        gW, gV, gb = np.zeros_like(W), np.zeros_like(V), np.zeros_like(b)
        carry = np.zeros_like(hs[0])
        for t in range(T - 1, -1, -1):
            g = gH[:, t] + carry
            z = zs[t]
            active = (np.abs(z) + b) > 0
            gb += np.sum(g * np.sign(z) * active, axis=0)
            gz = g * active
            gW += gz.T @ hs[t]
            gV += gz.T @ x[:, t]
            carry = gz @ W
        grads.update({"W": gW, "V": gV, "b": gb})
        for k, g in grads.items():
            self.p[k] -= lr * g.astype(self.p[k].dtype)
        return loss


def torch_step(model: URNN, lr: float = 1e-3) -> Callable[[Any, Any], float]:
    """One autograd PyTorch training step of the same real model: forward, ``backward``, RMSprop.

    Parameters
    ----------
    model : URNN
        A real model with a sequence readout and cross-entropy; its parameters are copied into
        PyTorch tensors (the model itself is not changed).
    lr : float, default 1e-3
        Learning rate of the ``torch.optim.RMSprop`` that updates every parameter.

    Returns
    -------
    callable
        ``step(x, y) -> float``: one training step on NumPy ``(x, y)`` (labels ``< 0`` are
        ignored, as in :class:`~unitary_update.models.urnn.URNN`), returning the loss.

    Raises
    ------
    MissingExtraError
        If torch is not installed (the ``torch`` extra).

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.bench.rnn import torch_step
    >>> from unitary_update.experiments.tasks import CopyTask
    >>> from unitary_update.models.urnn import URNN
    >>> model = URNN(10, 8, 10, rng=0)
    >>> x, y = CopyTask(3).batch(4, rng=1)
    >>> loss = torch_step(model, lr=0.0)(x, y)  # doctest: +SKIP
    >>> bool(np.isclose(loss, model.evaluate(x, y)["loss"], rtol=1e-4))  # doctest: +SKIP
    True
    """
    torch = require("torch", "bench-rnn's torch_autograd step")
    if model.params["W"].dtype.kind == "c" or model.output != "sequence" or model.loss != "cross_entropy":
        raise ValueError("torch_step: needs a real model with output='sequence' and loss='cross_entropy'")
    params = {k: torch.tensor(np.array(v), requires_grad=True) for k, v in model.params.items()}
    opt = torch.optim.RMSprop(list(params.values()), lr=lr)
    W, V, b, out_w, c = (params[k] for k in ("W", "V", "b", "O", "c"))

    def step(x: Any, y: Any) -> float:
        xs = torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 0, 1)))  # (T, batch, input)
        labels = torch.from_numpy(np.where(y < 0, -100, y).astype(np.int64))
        h = torch.zeros(x.shape[0], W.shape[0], dtype=W.dtype)
        states = []
        for t in range(xs.shape[0]):
            z = h @ W.T + xs[t] @ V.T
            h = torch.sign(z) * torch.relu(z.abs() + b)
            states.append(h)
        logits = torch.stack(states, dim=1) @ out_w.T + c  # (batch, T, output)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def breakdown(
    model: URNN, x: Any, y: Any, *, rank: int = 1, update: str = "project", repeat: int = 3
) -> dict[str, float]:
    """Seconds of each part of a ``projunn`` training step (best of ``repeat``; the model is not changed).

    Parameters
    ----------
    model : URNN
        The model (its W is copied for the update).
    x, y : array
        One batch.
    rank : int, default 1
        Rank of the sketch.
    update : {"project", "transport"}
        The projUNN update.
    repeat : int, default 3
        Timed calls per part.

    Returns
    -------
    dict
        ``forward`` (forward pass and loss: :meth:`~URNN.evaluate`), ``backward`` (BPTT and the
        gradients of V, b, O, c: ``loss_and_grads(factored=True)`` less the forward pass),
        ``weight_grad`` (the dense dL/dW from its factors: ``loss_and_grads`` less
        ``loss_and_grads(factored=True)``), these three with the ``check_finite`` option off;
        ``checks`` (what that option adds to ``loss_and_grads``: finite checks of x, the
        parameters and the results), ``direction`` (RMSprop's step for W), ``sketch`` (rank-k
        factors of it) and ``update`` (``project``/``transport`` in place).  The first four add
        up to ``loss_and_grads``.

    Examples
    --------
    >>> from unitary_update.bench.rnn import breakdown
    >>> from unitary_update.experiments.tasks import CopyTask
    >>> from unitary_update.models.urnn import URNN
    >>> x, y = CopyTask(3).batch(4, rng=1)
    >>> sorted(breakdown(URNN(10, 8, 10, rng=0), x, y, repeat=1))
    ['backward', 'checks', 'direction', 'forward', 'sketch', 'update', 'weight_grad']
    """
    import unitary_update as uu

    # unchecked, so that the check of the factored result (O(T batch N)) is not counted as BPTT
    with uu.options(check_finite=False):
        forward = best_time(functools.partial(model.evaluate, x, y), repeat, warmup=True)
        factored = best_time(functools.partial(model.loss_and_grads, x, y, factored=True), repeat, warmup=True)
        unchecked = best_time(functools.partial(model.loss_and_grads, x, y), repeat, warmup=True)
    both = best_time(functools.partial(model.loss_and_grads, x, y), repeat, warmup=True)
    _, grads = model.loss_and_grads(x, y)
    rms = RMSprop(1e-3 / 32)
    W = np.array(model.params["W"])
    direction = best_time(lambda: rms.direction("W", grads["W"]), repeat, warmup=True)
    D = rms.direction("W", grads["W"])
    sketch = best_time(lambda: uu.sketch(D, rank, rng=0), repeat, warmup=True)
    A, B = uu.sketch(D, rank, rng=0)
    fn = getattr(uu, update)
    step = best_time(lambda: fn(W, A, B, out=W), repeat, warmup=True)
    return {
        "forward": forward,
        "backward": max(factored - forward, 0.0),
        "weight_grad": max(unchecked - factored, 0.0),
        "checks": max(both - unchecked, 0.0),
        "direction": direction,
        "sketch": sketch,
        "update": step,
    }


def make_step(kind: str, model: URNN, rank: int = 1, update: str = "project") -> Callable[[Any, Any], float]:
    """A closure running one training step of ``kind`` (``projunn``, ``euclidean``, ``plain_numpy``).

    Parameters
    ----------
    kind : {"projunn", "euclidean", "plain_numpy", "torch_autograd"}
        ``projunn``: RMSprop on V, b, O, c and projUNN (:class:`~unitary_update.optim.UnitaryOptimizer`)
        on W.  ``euclidean``: RMSprop on every parameter (W leaves the unitary group).
        ``plain_numpy``: :meth:`PlainRNN.train_step` on a copy of the parameters.
        ``torch_autograd``: :func:`torch_step` (needs torch).
    model : URNN
        The model, updated in place by each call (a copy for ``plain_numpy``).
    rank : int, default 1
        Rank of the projUNN update.
    update : {"project", "transport"}
        projUNN-D or projUNN-T.

    Returns
    -------
    callable
        ``step(x, y) -> float``: one training step on the batch ``(x, y)``, returning the loss.

    Raises
    ------
    MissingExtraError
        For ``torch_autograd`` when torch is not installed (the ``torch`` extra).

    Examples
    --------
    >>> from unitary_update.bench.rnn import make_step
    >>> from unitary_update.experiments.tasks import CopyTask
    >>> from unitary_update.models.urnn import URNN
    >>> import unitary_update as uu
    >>> model = URNN(10, 8, 10, rng=0)
    >>> step = make_step("projunn", model, rank=2)
    >>> x, y = CopyTask(3).batch(4, rng=1)
    >>> isinstance(step(x, y), float), bool(uu.unitarity_error(model.params["W"]) < 1e-4)
    (True, True)
    """
    if kind == "plain_numpy":
        plain = PlainRNN(model)
        return lambda x, y: plain.train_step(x, y)
    if kind == "torch_autograd":
        return torch_step(model)
    opt = RMSprop(1e-3)
    w_opt = UnitaryOptimizer(RMSprop(1e-3 / 32), rank=rank, update=update, rng=0)
    w_plain = RMSprop(1e-3 / 32)

    def step(x: Any, y: Any) -> float:
        loss, grads = model.loss_and_grads(x, y)
        if kind == "projunn":
            w_opt.step(model.params["W"], grads.pop("W"))
        else:
            w_plain.step(model.params, {"W": grads.pop("W")})
        opt.step(model.params, grads)
        return loss

    return step


def run_benchmark(
    *,
    delay: int = 1000,
    hidden: int = 190,
    batch: int = 128,
    rank: int = 1,
    update: str = "project",
    repeat: int = 3,
    threads: int | None = None,
    json_path: str | None = None,
    kinds: tuple[str, ...] = KINDS,
    parts: bool = True,
) -> dict[str, Any]:
    """Time the steps of :mod:`this module <unitary_update.bench.rnn>`; print and return the results.

    Parameters
    ----------
    delay, hidden, batch, rank : int
        Copy-task delay (sequence ``delay + 20``), hidden size, batch size, sketch rank.
    update : {"project", "transport"}
        The projUNN update.
    repeat : int
        Timed repetitions per kind (the best is reported).
    threads : int, optional
        The BLAS thread count in force (recorded only; set it with threadpoolctl).
    json_path : str, optional
        Also write the results there.
    kinds : tuple of str
        Which steps to time (``torch_autograd`` is left out, with a note, when torch is missing).
    parts : bool, default True
        Also time the parts of the ``projunn`` step (:func:`breakdown`).

    Returns
    -------
    dict
        ``seconds`` and ``steps_per_s`` per kind, ``ratio_to_plain_numpy``,
        ``torch_autograd_over_projunn`` (the speed-up over the PyTorch step, when both ran),
        ``breakdown`` (seconds per part), ``notes``, the settings (``torch_threads``: PyTorch's
        intra-op threads, None when it did not run) and the machine.

    Examples
    --------
    >>> from unitary_update.bench.rnn import run_benchmark
    >>> r = run_benchmark(delay=2, hidden=8, batch=4, repeat=1)  # doctest: +ELLIPSIS
    copy step ...
    >>> sorted(r["seconds"])  # doctest: +SKIP
    ['euclidean', 'plain_numpy', 'projunn', 'torch_autograd']
    >>> sorted(r["breakdown"])
    ['backward', 'checks', 'direction', 'forward', 'sketch', 'update', 'weight_grad']
    """
    task = CopyTask(delay)
    x, y = task.batch(batch, rng=0)
    results: dict[str, float] = {}
    notes: list[str] = []
    torch_threads = None

    def fresh_model() -> URNN:
        model = URNN(10, hidden, 10, dtype=np.float32, rng=0)
        model.params["O"][...] = np.random.default_rng(1).standard_normal(model.params["O"].shape) * 0.1
        return model

    for kind in kinds:
        if kind == "torch_autograd":
            try:
                torch = require("torch", "bench-rnn's torch_autograd step")
            except ImportError as err:
                notes.append(f"torch_autograd skipped: {err}")
                continue
            torch_before = torch.get_num_threads()
            if threads is not None:
                torch.set_num_threads(threads)
            torch_threads = torch.get_num_threads()
            try:
                step = make_step(kind, fresh_model(), rank=rank, update=update)
                results[kind] = best_time(functools.partial(step, x, y), repeat, warmup=True)
            finally:
                torch.set_num_threads(torch_before)
            continue
        step = make_step(kind, fresh_model(), rank=rank, update=update)
        results[kind] = best_time(functools.partial(step, x, y), repeat, warmup=True)
    parts_s = breakdown(fresh_model(), x, y, rank=rank, update=update, repeat=repeat) if parts else {}
    base = results.get("plain_numpy")
    out = {
        "task": f"copy T={task.length} (delay {delay}), hidden {hidden}, batch {batch}, rank {rank}, {update}, float32",
        "seconds": results,
        "steps_per_s": {k: 1 / v for k, v in results.items()},
        "ratio_to_plain_numpy": {k: v / base for k, v in results.items()} if base else {},
        "torch_autograd_over_projunn": (
            results["torch_autograd"] / results["projunn"] if {"torch_autograd", "projunn"} <= results.keys() else None
        ),
        "breakdown": parts_s,
        "notes": notes,
        "repeat": repeat,
        "blas_threads": threads,
        "torch_threads": torch_threads,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
    }
    print(f"copy step ({out['task']}), best of {repeat}, BLAS threads {threads}")
    for kind, seconds in results.items():
        ratio = f"  {seconds / base:5.2f}x plain NumPy" if base else ""
        print(f"  {kind:<14} {seconds * 1e3:9.1f} ms  {1 / seconds:7.2f} steps/s{ratio}")
    if out["torch_autograd_over_projunn"] is not None:
        print(
            f"  torch_autograd / projunn: {out['torch_autograd_over_projunn']:.2f} "
            f"(above 1: projunn is faster; torch threads {torch_threads})"
        )
    if parts_s:
        print("  projunn step, by part: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in parts_s.items()))
    for note in notes:
        print(f"  note: {note}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1)
    return out
