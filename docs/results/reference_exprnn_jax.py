"""An expRNN-style reference for the permuted-MNIST study (issue 17), written in JAX.

The same model, data, batches and initial parameters as ``python -m unitary_update train pmnist``
(hidden 170, modReLU, one pixel per step, the fixed permutation and per-epoch shuffles of
:class:`unitary_update.experiments.tasks.PermutedMNIST`), but W is parametrised as expRNN does it:
``W = W_0 expm(A - A^T)`` with ``A`` a free matrix trained by RMSprop (``lr / w_lr_divisor``), autograd
through ``jax.lax.scan``. It answers one question of the study: does the projUNN step hold the
accuracy back against the trivialization that reaches 94.9 % in expRNN's paper, on our data?

Run from the repository root (needs the ``jax`` extra)::

    python docs/results/reference_exprnn_jax.py --epochs 2 --input-scale 4 --w-lr-divisor 8 \
        --output docs/results/reference_exprnn_jax.json

It prints one line per evaluation and writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def make_model(W0, param="expm"):
    """``(recurrent, loss_fn)``: W from its parameters, and the mean cross-entropy with the logits.

    ``recurrent(wp)`` is ``W0 expm(A - A^T)`` for ``param="expm"`` (``wp = {"A": ...}``) or
    ``wp["W"]`` for ``"euclidean"``.  ``loss_fn(wp, ep, x, y)`` runs
    ``h_t = modrelu(W h_{t-1} + V x_t, b)`` from ``h_0 = 0`` over ``x`` of shape
    ``(batch, T, 1)`` and reads out ``O h_T + c`` (``ep`` holds V, b, O, c as
    :class:`unitary_update.models.urnn.URNN` names them); it returns ``(loss, logits)``.
    """
    import jax
    import jax.numpy as jnp

    def recurrent(wp):
        if param == "expm":
            return W0 @ jax.scipy.linalg.expm(wp["A"] - wp["A"].T)
        return wp["W"]

    def loss_fn(wp, ep, x, y):
        W = recurrent(wp)
        xs = jnp.swapaxes(x, 0, 1)  # (T, batch, input)

        def cell(h, xt):
            z = h @ W.T + xt @ ep["V"].T
            return jnp.sign(z) * jax.nn.relu(jnp.abs(z) + ep["b"]), None

        h, _ = jax.lax.scan(cell, jnp.zeros((x.shape[0], W.shape[0]), x.dtype), xs)
        logits = h @ ep["O"].T + ep["c"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), logits

    return recurrent, loss_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--w-lr-divisor", type=float, default=8.0)
    parser.add_argument("--input-scale", type=float, default=4.0)
    parser.add_argument(
        "--readout",
        choices=("zero", "torch"),
        default="zero",
        help="readout init: zero (as unitary_update) or PyTorch's nn.Linear default",
    )
    parser.add_argument(
        "--param",
        choices=("expm", "euclidean"),
        default="expm",
        help="expm: W = W0 expm(A - A^T) (expRNN); euclidean: W free (no constraint)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist-dir", default=os.environ.get("MNIST_DIR", "../shared/data/mnist"))
    parser.add_argument(
        "--time-limit", type=float, default=None, help="stop after this many seconds (at an epoch's end)"
    )
    parser.add_argument("--output", default=None, help="JSON summary, rewritten after every evaluation")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import optax

    from unitary_update.experiments.tasks import PermutedMNIST
    from unitary_update.models.urnn import URNN

    task = PermutedMNIST(args.mnist_dir)
    model = URNN(1, 170, 10, output="last", loss="cross_entropy", dtype=np.float32, rng=args.seed)
    p0 = {k: np.asarray(v) for k, v in model.params.items()}
    p0["V"] = (p0["V"] * np.float32(args.input_scale)).astype(np.float32)
    if args.readout == "torch":  # nn.Linear(170, 10): U(-1/sqrt(170), 1/sqrt(170)) for weight and bias
        bound = 1 / np.sqrt(170)
        gen = np.random.default_rng([args.seed, 7])
        p0["O"] = gen.uniform(-bound, bound, (10, 170)).astype(np.float32)
        p0["c"] = gen.uniform(-bound, bound, 10).astype(np.float32)
    W0 = jnp.asarray(p0["W"])
    euclid = {k: jnp.asarray(p0[k]) for k in ("V", "b", "O", "c")}
    wparam = {"A": jnp.zeros((170, 170), jnp.float32)} if args.param == "expm" else {"W": W0}
    recurrent, loss_fn = make_model(W0, args.param)

    def rms(lr):  # torch.optim.RMSprop(alpha=0.99, eps=1e-8): eps outside the square root
        return optax.chain(optax.scale_by_rms(decay=0.99, eps=1e-8, eps_in_sqrt=False), optax.scale(-lr))

    opt_w, opt_e = rms(args.lr / args.w_lr_divisor), rms(args.lr)
    sw, se = opt_w.init(wparam), opt_e.init(euclid)

    @jax.jit
    def train_step(wp, ep, sw, se, x, y):
        (loss, _), (gw, ge) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(wp, ep, x, y)
        uw, sw = opt_w.update(gw, sw)
        ue, se = opt_e.update(ge, se)
        return optax.apply_updates(wp, uw), optax.apply_updates(ep, ue), sw, se, loss

    @jax.jit
    def eval_chunk(wp, ep, x, y):
        loss, logits = loss_fn(wp, ep, x, y)
        return loss * x.shape[0], jnp.sum(jnp.argmax(logits, axis=1) == y)

    def evaluate(wp, ep):
        xt, yt = task.split("test")
        total, correct = 0.0, 0
        for i in range(0, len(yt), 1000):
            l_, c_ = eval_chunk(wp, ep, jnp.asarray(xt[i : i + 1000]), jnp.asarray(yt[i : i + 1000]))
            total, correct = total + float(l_), correct + int(c_)
        return total / len(yt), correct / len(yt)

    per_epoch = len(task.train[1]) // 128
    steps = round(args.epochs * per_epoch)
    history, t0, losses = [], time.perf_counter(), []
    for step in range(steps):
        x, y = task.train_batch(128, step, args.seed)
        wparam, euclid, sw, se, loss = train_step(wparam, euclid, sw, se, jnp.asarray(x), jnp.asarray(y))
        losses.append(float(loss))
        if (step + 1) % 100 == 0:
            print(
                f"step {step + 1}: train loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        if (step + 1) % per_epoch == 0 or step + 1 == steps:
            held_loss, acc = evaluate(wparam, euclid)
            W = np.asarray(recurrent(wparam), dtype=np.float64)
            row = {
                "step": step + 1,
                "epoch": (step + 1) / per_epoch,
                "test_loss": held_loss,
                "test_accuracy": acc,
                "train_loss_last100": float(np.mean(losses[-100:])),
                "W_moved_fro": float(np.linalg.norm(W - p0["W"])),
                "wall_s": time.perf_counter() - t0,
            }
            history.append(row)
            print(json.dumps(row), flush=True)
            if args.output:
                summary = {
                    "script": "docs/results/reference_exprnn_jax.py",
                    "args": vars(args),
                    "history": history,
                    "jax": jax.__version__,
                    "optax": optax.__version__,
                }
                with open(args.output, "w") as fh:
                    json.dump(summary, fh, indent=1)
            if args.time_limit is not None and time.perf_counter() - t0 > args.time_limit:
                break


if __name__ == "__main__":
    main()
