"""Train a small PyTorch RNN whose recurrent weight stays exactly orthogonal, updated by projUNN.

The recurrent matrix ``W`` (hidden x hidden) is updated by :class:`ProjUNN`, a
:class:`torch.optim.Optimizer` whose ``step`` hands ``-lr * grad`` to :func:`unitary_update.step`
with ``out=W``: the tensor is updated in place through DLPack (no copy), by a rank-k projUNN-T
(or projUNN-D) step that keeps it on the orthogonal group.  Everything else (input and output
layers, bias) is trained by :class:`torch.optim.Adam` as usual.

Task ("remember the first value"): a sequence of T = 10 Gaussian numbers; after reading all of it
the network must output the first one.  The information has to survive T applications of ``W``,
which is what orthogonal recurrences are good at.  Mean squared error of always answering 0 is 1.

Run ``python examples/torch_orthogonal_rnn.py`` (a few seconds on a CPU): the loss falls from
about 1 to about 0.03 in 300 steps while ``||W^T W - I||`` stays at float32 rounding (~1e-6).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

import numpy as np

try:
    import torch
except ModuleNotFoundError as err:
    if err.name != "torch":
        raise
    print('this example needs torch: pip install "unitary_update[torch]"', file=sys.stderr)
    raise SystemExit(2) from None

import unitary_update as uu


class ProjUNN(torch.optim.Optimizer):
    """Keep square parameters unitary/orthogonal: each step is a rank-k projUNN update of ``-lr * grad``.

    Parameters
    ----------
    params : iterable of torch.nn.Parameter
        Square (or stacks of square) parameters, unitary/orthogonal at the start.
    lr : float
        Learning rate.
    rank : int
        Rank k of the sketched update.
    momentum : float
        Heavy-ball momentum on the Euclidean gradient (0 disables it).
    update : {"transport", "project"}
        projUNN-T or projUNN-D.
    seed : int
        Seed of the sketches' random numbers.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-2,
        rank: int = 1,
        momentum: float = 0.0,
        update: str = "transport",
        seed: int = 0,
    ) -> None:
        super().__init__(params, {"lr": lr, "rank": rank, "momentum": momentum, "update": update})
        self._rng = np.random.default_rng(seed)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = p.grad
                if group["momentum"]:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = direction.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(direction)
                    direction = buf
                # in place through DLPack: p keeps its storage, its version counter is bumped
                uu.step(p, -group["lr"] * direction, rank=group["rank"], update=group["update"], rng=self._rng, out=p)
        return loss


class OrthogonalRNN(torch.nn.Module):
    """``h_t = tanh(W h_{t-1} + V x_t + b)``, read out linearly at the end; ``W`` starts Haar-orthogonal."""

    def __init__(self, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.W = torch.nn.Parameter(torch.from_numpy(uu.random_unitary(hidden, dtype=np.float32, rng=seed)))
        self.V = torch.nn.Linear(1, hidden)
        self.readout = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, T)
        h = x.new_zeros((x.shape[0], self.W.shape[0]))
        for t in range(x.shape[1]):
            h = torch.tanh(h @ self.W.T + self.V(x[:, t : t + 1]))
        return self.readout(h).squeeze(-1)


def train(
    steps: int = 300, T: int = 10, hidden: int = 32, batch: int = 64, rank: int = 1, seed: int = 0, log_every: int = 0
) -> dict[str, list[float]]:
    """Train; return the loss history and the orthogonality error of W after every step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = OrthogonalRNN(hidden, seed=seed)
    unitary = ProjUNN([model.W], lr=0.05, rank=rank, momentum=0.9, seed=seed)
    others = torch.optim.Adam([p for name, p in model.named_parameters() if name != "W"], lr=1e-2)
    history: dict[str, list[float]] = {"loss": [], "orthogonality_error": []}
    for i in range(steps):
        x = torch.from_numpy(rng.standard_normal((batch, T)).astype(np.float32))
        loss = torch.nn.functional.mse_loss(model(x), x[:, 0])
        unitary.zero_grad()
        others.zero_grad()
        loss.backward()
        unitary.step()
        others.step()
        history["loss"].append(float(loss.detach()))
        history["orthogonality_error"].append(uu.unitarity_error(model.W))
        if log_every and (i % log_every == 0 or i == steps - 1):
            err = history["orthogonality_error"][-1]
            print(f"step {i:4d}  loss {history['loss'][-1]:.4f}  ||W^T W - I|| = {err:.1e}")
    return history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--T", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a tiny model runs fastest on one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args.steps, args.T, args.hidden, rank=args.rank, seed=args.seed, log_every=25)


if __name__ == "__main__":
    main()
