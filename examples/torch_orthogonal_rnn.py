"""Train a small PyTorch RNN whose recurrent weight stays exactly orthogonal; checkpoint and resume.

One :class:`unitary_update.torch.ProjUNN` optimizer trains the whole model: the recurrent matrix
``W`` (hidden x hidden) takes rank-k projUNN steps of an RMSprop direction, in place, and stays
on the orthogonal group; the input and output layers, in a group with ``"unitary": False``, take
plain RMSprop steps.  The optimizer's ``state_dict`` holds the moments, the step counts and the
sketches' random-generator states, so a run resumed from a checkpoint continues bit for bit.

Task ("remember the first value"): a sequence of T = 10 Gaussian numbers; after reading all of it
the network must output the first one.  The information has to survive T applications of ``W``,
which is what orthogonal recurrences are good at.  Mean squared error of always answering 0 is 1.

Run ``python examples/torch_orthogonal_rnn.py`` (a few seconds on a CPU): the loss falls from
about 1 to about 0.1 in 300 steps while ``||W^T W - I||`` stays at float32 rounding (~1e-6).
``--checkpoint ckpt.pt`` saves the run at the end; ``--resume ckpt.pt --steps 100`` continues it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

try:
    import torch
except ModuleNotFoundError as err:
    if err.name != "torch":
        raise
    print('this example needs torch: pip install "unitary_update[torch]"', file=sys.stderr)
    raise SystemExit(2) from None

import unitary_update as uu
from unitary_update.torch import ProjUNN, orthogonal_


class OrthogonalRNN(torch.nn.Module):
    """``h_t = tanh(W h_{t-1} + V x_t + b)``, read out linearly at the end; ``W`` starts Haar-orthogonal."""

    def __init__(self, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.W = torch.nn.Parameter(orthogonal_(torch.empty(hidden, hidden), rng=seed))
        self.V = torch.nn.Linear(1, hidden)
        self.readout = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, T)
        h = x.new_zeros((x.shape[0], self.W.shape[0]))
        for t in range(x.shape[1]):
            h = torch.tanh(h @ self.W.T + self.V(x[:, t : t + 1]))
        return self.readout(h).squeeze(-1)


def make_optimizer(model: OrthogonalRNN, *, rank: int = 1, seed: int = 0) -> ProjUNN:
    """``W`` in a unitary group (projUNN-T, rank ``rank``), everything else in an ordinary one."""
    others = [p for name, p in model.named_parameters() if name != "W"]
    return ProjUNN(
        [{"params": [model.W], "lr": 1e-2}, {"params": others, "unitary": False}],
        lr=1e-2,
        base="rmsprop",
        rank=rank,
        update="transport",
        seed=seed,
    )


def train(
    steps: int = 300,
    T: int = 10,
    hidden: int = 32,
    batch: int = 64,
    rank: int = 1,
    seed: int = 0,
    log_every: int = 0,
    checkpoint: str | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    """Train (from scratch, or from the checkpoint ``resume``); return the history, model and optimizer.

    The returned dict holds ``loss`` and ``orthogonality_error`` (one value per step of this
    call), ``model`` and ``optimizer``.  ``checkpoint`` saves model, optimizer, data generator and
    step count at the end.
    """
    model = OrthogonalRNN(hidden, seed=seed)
    opt = make_optimizer(model, rank=rank, seed=seed)
    data = torch.Generator().manual_seed(seed)
    start = 0
    if resume:
        state = torch.load(resume, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        data.set_state(state["data"])
        start = state["step"]
    history: dict[str, Any] = {"loss": [], "orthogonality_error": []}
    for i in range(start, start + steps):
        x = torch.randn(batch, T, generator=data)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), x[:, 0])
        loss.backward()
        opt.step()
        history["loss"].append(loss.item())
        history["orthogonality_error"].append(uu.unitarity_error(model.W))
        if log_every and (i % log_every == 0 or i == start + steps - 1):
            err = history["orthogonality_error"][-1]
            print(f"step {i:4d}  loss {history['loss'][-1]:.4f}  ||W^T W - I|| = {err:.1e}")
    if checkpoint:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "data": data.get_state()}
        torch.save({**state, "step": start + steps}, Path(checkpoint))
    history.update(model=model, optimizer=opt)
    return history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--T", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="save the run here at the end")
    parser.add_argument("--resume", default=None, help="continue the run saved in this checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a tiny model runs fastest on one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args.steps, args.T, args.hidden, rank=args.rank, seed=args.seed, log_every=25,
          checkpoint=args.checkpoint, resume=args.resume)  # fmt: skip


if __name__ == "__main__":
    main()
