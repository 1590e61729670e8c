r"""A deep orthogonal convolutional network on MNIST (``python -m unitary_update conv-demo``).

A deep stack of full-width orthogonal convolutions with MaxMin, and a linear classifier, trained
on MNIST (downsampled to 14 x 14) next to the same network without the constraint; prints
accuracy and the gradient norms at the first layer and writes a JSON log and a PNG.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import pyplot, require
from .._validation import NonFiniteError, check_dtype, check_float, check_int

__all__ = ["ConvNet", "downsample", "train_mnist"]

_PLOT_FEATURE = "train_mnist(plot=...)"


def downsample(images: np.ndarray, factor: int = 2) -> np.ndarray:
    """Average ``factor x factor`` blocks: (n, 28, 28) uint8 -> (n, 28/f, 28/f) float32 in [0, 1].

    Parameters
    ----------
    images : numpy.ndarray, shape (n, H, W), uint8
        The images; H and W divisible by ``factor``.
    factor : int, default 2
        Side of the averaged blocks.

    Returns
    -------
    numpy.ndarray, shape (n, H / factor, W / factor), float32
        The block means scaled to [0, 1].

    Raises
    ------
    TypeError, ValueError
        If ``images`` is not a real (n, H, W) array, or ``factor`` is not an integer >= 1 that
        divides H and W.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.experiments.conv_mnist import downsample
    >>> downsample(np.full((1, 4, 4), 255, dtype=np.uint8)).shape
    (1, 2, 2)
    """
    if not isinstance(images, np.ndarray) or images.ndim != 3 or images.dtype.kind not in "uif":
        raise ValueError(
            f"images must be a real (n, H, W) array; got {getattr(images, 'dtype', type(images).__name__)} "
            f"of shape {getattr(images, 'shape', None)}"
        )
    factor = check_int(factor, "factor", low=1)
    n, h, w = images.shape
    if h % factor or w % factor:
        raise ValueError(f"factor must divide the image size {h} x {w}; got {factor}")
    x = images.reshape(n, h // factor, factor, w // factor, factor).astype(np.float32)
    return x.mean(axis=(2, 4)) / np.float32(255)


def _softmax_xent(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = float(-np.mean(np.log(p[np.arange(n), labels] + 1e-30)))
    p[np.arange(n), labels] -= 1
    return loss, p / n


class ConvNet:
    """``depth`` x [OrthogonalConv2d(C) -> MaxMin], then a linear classifier, with manual backprop.

    Parameters
    ----------
    depth : int
        Number of convolution layers (the first pads 1 input channel to C).
    channels : int
        C, even (MaxMin pairs channels).
    image_shape : tuple of int
        Height and width of the input images.
    constrained : bool
        True: the stacks are updated with batched projUNN (``update``); False: plain gradient
        descent on the same parameters (the network without the constraint).
    seed : int
        Initialisation (the same seed gives the same initial network in both variants).
    dtype : dtype, default float32
        Dtype of all parameters.

    Raises
    ------
    TypeError, ValueError
        If ``depth`` is not an integer >= 1, ``channels`` not an even integer >= 2, ``seed`` not
        an integer >= 0, ``constrained`` not a bool, ``dtype`` not float32 or float64, the
        layers refuse ``image_shape``, or the layers would not fit in the machine's memory.

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.experiments.conv_mnist import ConvNet
    >>> net = ConvNet(2, 4, (6, 6), seed=0)
    >>> logits, _ = net.forward(np.zeros((3, 1, 6, 6), dtype=np.float32))
    >>> logits.shape
    (3, 10)
    >>> net.unitarity_error() < 1e-5
    True
    """

    def __init__(
        self,
        depth: int,
        channels: int,
        image_shape: tuple[int, int],
        *,
        constrained: bool = True,
        seed: int = 0,
        dtype: Any = np.float32,
    ) -> None:
        from ..models.conv import OrthogonalConv2d, _check_fits, _check_image_shape, _stack_bytes

        depth = check_int(depth, "depth", low=1)
        channels = check_int(channels, "channels", low=2)
        if channels % 2:
            raise ValueError(f"channels must be even (MaxMin pairs channels); got {channels}")
        seed = check_int(seed, "seed", low=0)
        if not isinstance(constrained, (bool, np.bool_)):
            raise TypeError(f"constrained must be a bool (True or False); got {constrained!r}")
        dt = check_dtype(dtype)
        if dt.kind != "f":
            raise TypeError(f"dtype must be float32 or float64 (MaxMin orders real values); got {dt}")
        image_shape = _check_image_shape(image_shape)
        _check_fits(
            depth * _stack_bytes(channels, image_shape, dt),
            f"depth = {depth}, channels = {channels} and image_shape = {image_shape}",
        )
        rng = np.random.default_rng(seed)
        self.layers = [
            OrthogonalConv2d(1 if i == 0 else channels, channels, image_shape, dtype=dtype, rng=rng)
            for i in range(depth)
        ]
        features = channels * image_shape[0] * image_shape[1]
        self.W = (rng.standard_normal((features, 10)) / math.sqrt(features)).astype(dtype)
        self.b = np.zeros(10, dtype=dtype)
        self.constrained = bool(constrained)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits and the cache of layer inputs (pre-MaxMin activations included).

        Parameters
        ----------
        x : numpy.ndarray, shape (n, C_in, H, W)
            A batch of images.

        Returns
        -------
        logits : numpy.ndarray, shape (n, 10)
            The classifier's outputs.
        cache : list of numpy.ndarray
            Each layer's input and pre-MaxMin output, then the last activation (for backprop).
        """
        from ..models.conv import maxmin

        cache = []
        h = x
        for layer in self.layers:
            cache.append(h)
            z = layer(h)
            cache.append(z)
            h = maxmin(z)
        cache.append(h)
        return h.reshape(len(h), -1) @ self.W + self.b, cache

    def train_step(
        self, x: np.ndarray, labels: np.ndarray, *, lr: float, lr_classifier: float, rank: int, rng: np.random.Generator
    ) -> dict[str, float]:
        """One SGD step on a mini-batch; returns loss, accuracy and gradient norms.

        Parameters
        ----------
        x : numpy.ndarray, shape (n, C_in, H, W)
            The mini-batch of images.
        labels : numpy.ndarray of int, shape (n,)
            Their classes.
        lr : float
            Learning rate of the convolution stacks.
        lr_classifier : float
            Learning rate of the linear classifier.
        rank : int
            Rank of the projUNN update of each stack (constrained network only).
        rng : numpy.random.Generator
            Randomness of the sketches.

        Returns
        -------
        dict of str to float
            ``loss``, ``accuracy``, and the gradient norms ``grad_first_layer``,
            ``grad_first_activation`` and ``grad_last_activation``.

        Raises
        ------
        TypeError, ValueError
            For labels that are not integer classes in [0, 9] (one per image), a bad image
            batch, a bad learning rate or rank, ``rng`` not a Generator, or a classifier step
            that overflows (NonFiniteError).  All or nothing: when a layer's step raises,
            every layer, the classifier and ``rng`` are left as they were.
        """
        from ..models.conv import maxmin_backward

        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator (its state advances); got {type(rng).__name__}")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" or labels.shape != (len(x),):
            raise ValueError(f"labels must be {len(x)} integer classes; got {labels.dtype} of shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"labels must be classes in [0, 9]; got values in [{labels.min()}, {labels.max()}]")
        logits, cache = self.forward(x)
        loss, g_logits = _softmax_xent(logits, labels)
        h_last = cache[-1]
        g = (g_logits @ self.W.T).reshape(h_last.shape)
        g_W = h_last.reshape(len(h_last), -1).T @ g_logits
        g_b = g_logits.sum(axis=0)
        grads = []
        g_last = float(np.linalg.norm(g))
        g_first_out = 0.0
        for i in range(len(self.layers) - 1, -1, -1):
            h_in, z = cache[2 * i], cache[2 * i + 1]
            g = maxmin_backward(z, g)
            if i == 0:
                g_first_out = float(np.linalg.norm(g))
            g, grad = self.layers[i].backward(h_in, g)
            grads.append(grad)
        grads.reverse()
        first_param = grads[0].norm()
        lr_classifier = check_float(lr_classifier, "lr_classifier", low=0, open_low=True)
        with np.errstate(over="ignore", invalid="ignore"):
            new_W, new_b = self.W - lr_classifier * g_W, self.b - lr_classifier * g_b
        if not (np.isfinite(new_W).all() and np.isfinite(new_b).all()):
            raise NonFiniteError(
                f"lr_classifier = {lr_classifier!r} times the classifier's gradient overflows {self.W.dtype}; "
                "nothing was changed"
            )
        # all or nothing: a layer whose step raises puts every layer, the classifier and rng back
        saved = [(layer.U.copy(), layer.Q.copy(), layer.steps) for layer in self.layers]
        rng_state = rng.bit_generator.state
        try:
            for layer, grad in zip(self.layers, grads, strict=True):
                if self.constrained:
                    layer.step(grad, lr=lr, rank=rank, update="transport", rng=rng)
                else:
                    layer.step(grad, lr=lr, update="euclidean")
        except BaseException:
            for layer, (U, Q, steps) in zip(self.layers, saved, strict=True):
                layer.U[...], layer.Q[...], layer.steps = U, Q, steps
            rng.bit_generator.state = rng_state
            raise
        self.W[...], self.b[...] = new_W, new_b
        return {
            "loss": loss,
            "accuracy": float(np.mean(np.argmax(logits, axis=1) == labels)),
            "grad_first_layer": first_param,
            "grad_first_activation": g_first_out,
            "grad_last_activation": g_last,
        }

    def predict(self, x: np.ndarray, batch: int = 500) -> np.ndarray:
        """Class predictions, in batches.

        Parameters
        ----------
        x : numpy.ndarray, shape (n, C_in, H, W)
            The images.
        batch : int, default 500
            How many images go through the network at once.

        Returns
        -------
        numpy.ndarray of int, shape (n,)
            The predicted classes.
        """
        batch = check_int(batch, "batch", low=1)
        if len(x) == 0:
            return np.zeros(0, dtype=np.intp)
        return np.concatenate([np.argmax(self.forward(x[i : i + batch])[0], axis=1) for i in range(0, len(x), batch)])

    def unitarity_error(self) -> float:
        """Largest ``||K^H K - I||_F`` over all stored frequency matrices of all layers.

        Returns
        -------
        float
            The largest unitarity error.
        """
        import unitary_update as uu

        return max(max(uu.unitarity_error(layer.U), uu.unitarity_error(layer.Q)) for layer in self.layers)


def train_mnist(
    data_dir: str | Path,
    *,
    depth: int = 32,
    channels: int = 8,
    steps: int = 600,
    batch: int = 64,
    lr: float = 0.1,
    lr_classifier: float = 0.1,
    rank: int = 2,
    baseline_lrs: tuple[float, ...] | None = None,
    eval_every: int = 50,
    eval_size: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """Train the orthogonal network and the unconstrained one on 14 x 14 MNIST, side by side.

    Both start from the same weights and see the same mini-batches; the orthogonal one updates
    its per-frequency stacks with batched projUNN-T of rank ``rank``, the other takes plain
    gradient steps.  Returns (and writes to ``out`` as JSON) the per-step logs and the final test
    accuracies on all 10,000 test images; ``plot`` is the PNG to draw.

    Parameters
    ----------
    data_dir : str or path
        Folder with the MNIST IDX files.
    depth, channels : int
        Convolution layers and channels C.
    steps, batch : int
        SGD steps and mini-batch size.
    lr, lr_classifier : float
        Learning rates of the convolution stacks and of the linear classifier.
    rank : int
        Rank of the per-frequency projUNN update.
    baseline_lrs : tuple of float, optional
        Learning rates of the unconstrained runs (default: ``(lr,)``, the same as the
        orthogonal network's); one run each.
    eval_every, eval_size : int
        Test accuracy on the first ``eval_size`` test images every ``eval_every`` steps (at most
        the test set; the returned configuration records the number used).
    seed : int
        Seed of the initial weights and of the mini-batch order.
    out, plot : path, optional
        Where to write the JSON log and the PNG figure (nothing is written when None).

    Returns
    -------
    dict
        The configuration, the per-step logs of each run and the final test accuracies.

    Raises
    ------
    FileNotFoundError
        If an MNIST file is missing from ``data_dir`` (checked before any training).
    TypeError, ValueError
        For a setting out of range, named (``depth``, ``steps``, ``batch``, ``eval_every``,
        ``eval_size`` >= 1; ``channels`` even, >= 2; ``rank`` in [1, channels]; learning rates
        finite and > 0; ``seed`` >= 0), checked before the data is read.
    ImportError
        If ``plot`` is given and matplotlib is not installed (the ``plot`` extra; checked first).

    Examples
    --------
    Needs the MNIST files (nothing is downloaded):

    >>> from unitary_update.experiments.conv_mnist import train_mnist
    >>> result = train_mnist("data/mnist", depth=4, steps=10)  # doctest: +SKIP
    """
    depth, channels = check_int(depth, "depth", low=1), check_int(channels, "channels", low=2)
    if channels % 2:
        raise ValueError(f"channels must be even (MaxMin pairs channels); got {channels}")
    steps, batch = check_int(steps, "steps", low=1), check_int(batch, "batch", low=1)
    lr = check_float(lr, "lr", low=0, open_low=True)
    lr_classifier = check_float(lr_classifier, "lr_classifier", low=0, open_low=True)
    rank = check_int(rank, "rank", low=1, high=channels)
    if baseline_lrs is not None:
        if isinstance(baseline_lrs, (str, bytes)) or not isinstance(baseline_lrs, Iterable):
            raise TypeError(f"baseline_lrs must be a sequence of learning rates or None; got {baseline_lrs!r}")
        baseline_lrs = tuple(check_float(b, "baseline_lrs", low=0, open_low=True) for b in baseline_lrs)
        if not baseline_lrs:
            raise ValueError("baseline_lrs must hold at least one learning rate (None: the same as lr)")
    eval_every, eval_size = check_int(eval_every, "eval_every", low=1), check_int(eval_size, "eval_size", low=1)
    seed = check_int(seed, "seed", low=0)
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a path; got {type(data_dir).__name__}")
    for target, name in ((out, "out"), (plot, "plot")):  # checked now, not after the training
        if target is None:
            continue
        if not isinstance(target, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path or None; got {type(target).__name__}")
        if Path(target).is_dir():
            raise ValueError(f"{name} must be a file to write; {target} is a directory")
        if not Path(target).resolve().parent.is_dir():
            raise FileNotFoundError(f"{name}: the folder of {target} does not exist")
    from ..models.conv import _check_fits, _stack_bytes

    # the layers must fit in memory: checked before the data is read, not by the first ConvNet
    _check_fits(
        depth * _stack_bytes(channels, (14, 14), np.dtype(np.float32)), f"depth = {depth}, channels = {channels}"
    )
    import scipy.linalg  # noqa: F401  (load scipy's OpenBLAS before limiting threads, see bench_table)
    from threadpoolctl import threadpool_limits

    from .datasets import load_mnist

    if plot is not None:  # before training, not after it
        require("matplotlib", _PLOT_FEATURE)
    mnist = load_mnist(data_dir)
    if batch > len(mnist["train_labels"]):
        raise ValueError(f"batch must be <= {len(mnist['train_labels'])}, the number of training images; got {batch}")
    eval_size = min(eval_size, len(mnist["test_labels"]))  # the log records the number of images used
    mean, std = 0.1307, 0.3081
    x_train = ((downsample(mnist["train_images"]) - mean) / std)[:, None].astype(np.float32)
    x_test = ((downsample(mnist["test_images"]) - mean) / std)[:, None].astype(np.float32)
    y_train, y_test = mnist["train_labels"].astype(np.intp), mnist["test_labels"].astype(np.intp)
    shape = x_train.shape[-2:]
    order = np.random.default_rng(seed + 1).permutation(len(x_train))
    runs: dict[str, Any] = {}
    config = {
        "depth": depth,
        "channels": channels,
        "image_shape": list(shape),
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "lr_classifier": lr_classifier,
        "rank": rank,
        "baseline_lrs": list(baseline_lrs or (lr,)),
        "eval_size": eval_size,
        "seed": seed,
    }
    with threadpool_limits(limits=1):
        variants = [(f"orthogonal (projUNN-T, rank {rank}, lr {lr:g})", True, lr)]
        variants += [(f"unconstrained (lr {b:g})", False, b) for b in (baseline_lrs or (lr,))]
        for name, constrained, lr_conv in variants:
            net = ConvNet(depth, channels, shape, constrained=constrained, seed=seed)
            rng = np.random.default_rng(seed + 2)
            log: dict[str, list[float]] = {}
            evals: dict[str, list[float]] = {"step": [], "test_accuracy": [], "unitarity_error": []}
            t0 = time.perf_counter()
            for s in range(steps):
                start = (s * batch) % (len(order) - batch + 1)
                idx = order[start : start + batch]
                stats = net.train_step(
                    x_train[idx], y_train[idx], lr=lr_conv, lr_classifier=lr_classifier, rank=rank, rng=rng
                )
                for key, value in stats.items():
                    log.setdefault(key, []).append(value)
                if s % eval_every == 0 or s == steps - 1:
                    accuracy = float(np.mean(net.predict(x_test[:eval_size]) == y_test[:eval_size]))
                    error = net.unitarity_error()
                    for key, value in (("step", s), ("test_accuracy", accuracy), ("unitarity_error", error)):
                        evals[key].append(value)
                    ratio = stats["grad_first_activation"] / stats["grad_last_activation"]
                    print(
                        f"[{name}] step {s:5d} loss {stats['loss']:.3f} test acc {accuracy:.3f} "
                        f"|dL/dK_1| {stats['grad_first_layer']:.2e} |dL/dh_1|/|dL/dh_L| {ratio:.3f} "
                        f"unitarity {error:.1e}",
                        flush=True,
                    )
            seconds = time.perf_counter() - t0
            accuracy = float(np.mean(net.predict(x_test) == y_test))
            runs[name] = {"log": log, "evals": evals, "test_accuracy": accuracy, "train_seconds": seconds}
            print(f"[{name}] final test accuracy {accuracy:.4f} ({seconds:.0f} s)", flush=True)
    result = {"config": config, "runs": runs}
    if out is not None:
        Path(out).write_text(json.dumps(_rounded(result)))
    if plot is not None:
        _plot(result, Path(plot))
    return result


def _rounded(obj: Any) -> Any:
    """Floats to 5 significant digits, for a compact log."""
    if isinstance(obj, float):
        return float(f"{obj:.5g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def _smooth(values: list[float], window: int = 20) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < window:
        return v
    return np.convolve(v, np.ones(window) / window, mode="valid")


def _plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot(_PLOT_FEATURE)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    for name, run in result["runs"].items():
        log, evals = run["log"], run["evals"]
        loss = _smooth(log["loss"])
        axes[0].plot(np.arange(len(log["loss"]) - len(loss), len(log["loss"])), loss, label=name)
        axes[1].plot(evals["step"], evals["test_accuracy"], marker="o", ms=3, label=name)
        axes[2].semilogy(log["grad_first_layer"], lw=0.6, label=name)
        ratio = np.asarray(log["grad_first_activation"]) / np.asarray(log["grad_last_activation"])
        axes[3].semilogy(ratio, lw=0.6, label=name)
    axes[0].set(title="training loss (20-step mean)", xlabel="step")
    axes[1].set(title=f"test accuracy ({result['config']['eval_size']} images)", xlabel="step")
    axes[2].set(title="|dL/dK| at the first conv layer", xlabel="step")
    axes[3].set(title="|dL/dh_1| / |dL/dh_L| (activations)", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=7)
    c = result["config"]
    fig.suptitle(f"{c['depth']} full-width convolutions + MaxMin, C = {c['channels']}, MNIST 14x14", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
