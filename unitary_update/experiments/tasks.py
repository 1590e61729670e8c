r"""The long-memory benchmarks of the unitary-RNN literature, as seeded batch generators.

Every task answers ``batch(batch_size, rng) -> (x, y)`` with ``x (batch, T, input_size)``
real and ``y`` in the form :meth:`unitary_update.models.urnn.URNN.loss_and_grads` expects, and says how
the model must read out (``output``, ``loss``, sizes) and what a model without memory scores
(``baseline``).

copy memory (:class:`CopyTask`)
    Alphabet of 10 symbols: 0 blank, 1..8 data, 9 marker.  The input is 10 random data symbols,
    ``delay - 1`` blanks, the marker, and 10 more blanks (length ``T = delay + 20``); the target
    is ``delay + 10`` blanks followed by the 10 data symbols.  A memoryless model predicts blanks
    and then guesses uniformly among 8 symbols: cross-entropy ``10 log(8) / (delay + 20)``.
adding (:class:`AddingTask`)
    Two input channels over ``T`` steps: uniform values in [0, 1), and a marker channel with a 1
    at one position of each half.  The target is the sum of the two marked values; predicting
    its mean 1 scores the variance 1/6 ~= 0.167 (mean squared error).
permuted MNIST (:class:`PermutedMNIST`)
    Each 28 x 28 image read one pixel per step (784 steps) in a fixed, seeded permutation of the
    pixel order, standardised by the training set's mean and standard deviation (or raw grey
    levels in [0, 1]); 10 classes read
    at the last step.  Chance level: cross-entropy log 10, accuracy 0.1.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .._validation import check_choice_str
from ..random import normalize_rng

__all__ = [
    "PIXELS",
    "TASKS",
    "TASK_CLASSES",
    "AddingTask",
    "CopyTask",
    "PermutedMNIST",
    "Task",
    "make_task",
    "task_class",
]

PIXELS = ("standardized", "raw")
"""How :class:`PermutedMNIST` presents the grey levels: standardised (mean 0, std 1) or raw in [0, 1]."""


class Task:
    """What the training loop needs to know about a task (see the module documentation).

    The base class of :class:`CopyTask`, :class:`AddingTask` and :class:`PermutedMNIST`.  Class
    attributes: ``name``, ``input_size``, ``output_size``, ``output`` (``"last"`` or
    ``"sequence"``), ``loss`` (``"cross_entropy"`` or ``"mse"``), ``baseline`` (the loss of a
    model without memory), ``length`` (T), ``hidden_size`` (the paper's hidden size for the task,
    the default of a run), ``classification`` (True when the held-out accuracy is the result) and,
    for tasks with a length setting, ``length_name`` and ``default_length``.  Methods:
    :meth:`batch` (a seeded batch) and the two a training run draws from, :meth:`train_batch`
    and :meth:`eval_set`.

    Examples
    --------
    >>> from unitary_update.experiments.tasks import Task, make_task
    >>> task = make_task("adding", length=8)
    >>> isinstance(task, Task), task.output, task.loss, task.length
    (True, 'last', 'mse', 8)
    >>> x, y = task.batch(4, rng=0)
    >>> x.shape, y.shape
    ((4, 8, 2), (4, 1))
    >>> task.label(task.length), task.label()
    ('adding length 8', 'adding length 200')
    """

    name = "task"
    input_size = 1
    output_size = 1
    output = "last"
    loss = "cross_entropy"
    baseline = math.nan
    length = 1
    hidden_size = 128
    classification = False
    length_name: str | None = None
    default_length: int | None = None

    def batch(self, batch_size: int, rng: np.random.Generator | int | None = None) -> tuple[Any, Any]:
        """One batch ``(x, y)``; ``rng`` makes it reproducible.

        Parameters
        ----------
        batch_size : int
            Number of sequences (>= 1).
        rng : numpy.random.Generator, int or None, optional
            Generator or seed; the same seed gives the same batch.

        Returns
        -------
        x : numpy.ndarray, shape (batch_size, T, input_size), float32
            The input sequences.
        y : numpy.ndarray
            The targets, in the form the subclass documents.

        Raises
        ------
        ValueError
            If ``batch_size`` is not an integer >= 1, or the batch would not fit in the
            machine's memory.
        """
        gen = normalize_rng(rng)
        batch_size = _check_size(batch_size, "batch_size")
        _check_fits(batch_size * self.length * (self.input_size * 4 + 8), "batch_size", batch_size)
        return self._draw(batch_size, gen)

    def _draw(self, batch_size: int, gen: np.random.Generator) -> tuple[Any, Any]:
        """The batch of :meth:`batch`, from a checked size and a generator."""
        raise NotImplementedError  # pragma: no cover

    def train_batch(self, batch_size: int, step: int, seed: int) -> tuple[Any, Any]:
        """The training batch of step ``step`` (0-based) of a run seeded by ``seed``.

        Reproducible from the step number alone, so a resumed run sees the batches of an
        uninterrupted one: here ``batch(batch_size, default_rng([seed, 1, step]))``.

        Parameters
        ----------
        batch_size : int
            Number of sequences.
        step : int
            The number of completed training steps.
        seed : int
            The run's seed.

        Returns
        -------
        x, y : numpy.ndarray
            As :meth:`batch` returns them.
        """
        step, seed = _check_size(step, "step", 0), _check_size(seed, "seed", 0)
        return self.batch(batch_size, np.random.default_rng([seed, 1, step]))

    def eval_set(self, size: int, seed: int) -> tuple[Any, Any]:
        """The held-out data of a run seeded by ``seed``: here ``batch(size, default_rng([seed, 2]))``.

        Parameters
        ----------
        size : int
            Number of sequences.
        seed : int
            The run's seed.

        Returns
        -------
        x, y : numpy.ndarray
            As :meth:`batch` returns them.
        """
        return self.batch(size, np.random.default_rng([_check_size(seed, "seed", 0), 2]))

    def check_sizes(self, batch_size: int, eval_size: int) -> None:
        """Check that the task can give training batches and a held-out set of these sizes.

        A run calls it before it writes anything.  Generated tasks accept any size >= 1; a task
        over a finite data set refuses more than it holds.

        Parameters
        ----------
        batch_size : int
            Sequences per training batch.
        eval_size : int
            Held-out sequences.

        Raises
        ------
        ValueError
            Naming ``batch_size`` or ``eval_size`` and the largest size the task can give.
        """
        _check_size(batch_size, "batch_size")
        _check_size(eval_size, "eval_size")

    @classmethod
    def label(cls, length: int | None = None) -> str:
        """The task's name with a length setting, as plot titles show it (``copy delay 100``).

        A class method: it needs no data (a plot of a permuted-MNIST run does not load MNIST).

        Parameters
        ----------
        length : int, optional
            The length setting (copy: the delay; adding: T; None: ``default_length``); ignored
            by tasks without one.

        Returns
        -------
        str
            ``name``, followed by ``length_name`` and the length for tasks with a length setting.
        """
        if cls.length_name is None:
            return cls.name
        return f"{cls.name} {cls.length_name} {cls.default_length if length is None else length}"


def _check_fits(nbytes: int, name: str, value: int) -> None:
    """Refuse, naming ``name``, a batch that no array can hold or that exceeds the machine's memory."""
    try:
        memory = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        memory = np.iinfo(np.intp).max
    if nbytes > min(memory, np.iinfo(np.intp).max):
        raise ValueError(
            f"{name} = {value} is too large: the batch would need {nbytes:,} bytes, more than this machine has"
        )


def _check_size(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


class CopyTask(Task):
    """Copy memory: reproduce 10 symbols after a delay of ``delay`` steps.

    A batch is ``x`` of shape ``(batch_size, T, 10)``, float32 (one-hot input symbols) and ``y``
    of shape ``(batch_size, T)``, int64 (the target symbol, a class label, at every step).

    Parameters
    ----------
    delay : int
        Number of blank steps between the data and the output phase (``T = delay + 20``).

    Attributes
    ----------
    baseline : float
        ``10 log(8) / (delay + 20)``, the cross-entropy of the best memoryless strategy.

    Examples
    --------
    >>> from unitary_update.experiments.tasks import CopyTask
    >>> task = CopyTask(5)
    >>> x, y = task.batch(2, rng=0)
    >>> x.shape, y.shape, task.length
    ((2, 25, 10), (2, 25), 25)
    >>> bool((y[:, -10:] == x[:, :10].argmax(-1)).all())
    True
    """

    name = "copy"
    input_size = output_size = 10
    output = "sequence"
    loss = "cross_entropy"
    hidden_size = 190
    length_name = "delay"
    default_length = 100

    def __init__(self, delay: int) -> None:
        self.delay = _check_size(delay, "delay")
        self.length = self.delay + 20
        self.baseline = 10 * math.log(8) / self.length

    def _draw(self, batch_size: int, gen: np.random.Generator) -> tuple[Any, Any]:
        T = self.length
        data = gen.integers(1, 9, (batch_size, 10))
        symbols = np.zeros((batch_size, T), dtype=np.int64)
        symbols[:, :10] = data
        symbols[:, self.delay + 9] = 9
        y = np.zeros((batch_size, T), dtype=np.int64)
        y[:, -10:] = data
        x = np.zeros((batch_size, T, 10), dtype=np.float32)
        np.put_along_axis(x, symbols[..., None], 1.0, axis=-1)
        return x, y


class AddingTask(Task):
    """Adding problem: the sum of two marked values in a sequence of length ``length``.

    A batch is ``x`` of shape ``(batch_size, T, 2)``, float32 (values in channel 0, markers in
    channel 1) and ``y`` of shape ``(batch_size, 1)``, float32 (the sum of the two marked values).

    Parameters
    ----------
    length : int
        Sequence length T (>= 2).

    Examples
    --------
    >>> import numpy as np
    >>> from unitary_update.experiments.tasks import AddingTask
    >>> x, y = AddingTask(10).batch(3, rng=0)
    >>> x.shape, y.shape
    ((3, 10, 2), (3, 1))
    >>> bool(np.allclose((x[..., 0] * x[..., 1]).sum(1), y[:, 0]))
    True
    """

    name = "adding"
    input_size = 2
    output_size = 1
    output = "last"
    loss = "mse"
    baseline = 1 / 6
    hidden_size = 170
    length_name = "length"
    default_length = 200

    def __init__(self, length: int) -> None:
        self.length = _check_size(length, "length", 2)

    def _draw(self, batch_size: int, gen: np.random.Generator) -> tuple[Any, Any]:
        T = self.length
        half = T // 2
        values = gen.random((batch_size, T)).astype(np.float32)
        first = gen.integers(0, half, batch_size)
        second = gen.integers(half, T, batch_size)
        marks = np.zeros((batch_size, T), dtype=np.float32)
        rows = np.arange(batch_size)
        marks[rows, first] = marks[rows, second] = 1.0
        x = np.stack([values, marks], axis=-1)
        y = (values[rows, first] + values[rows, second])[:, None]
        return x, y


class PermutedMNIST(Task):
    """Permuted pixel-by-pixel MNIST from the IDX files in ``directory``.

    A batch is ``x`` of shape ``(batch_size, 784, 1)``, float32 (pixels in permuted order,
    standardised or raw: ``pixels``) and ``y`` of shape ``(batch_size,)``, int64 (digit labels).

    Parameters
    ----------
    directory : str or path-like
        Folder with the four MNIST IDX files (see :func:`unitary_update.experiments.datasets.load_mnist`);
        nothing is downloaded.
    permutation_seed : int, default 0
        Seed of the fixed pixel permutation.
    pixels : {"standardized", "raw"}, default "standardized"
        ``"standardized"``: grey levels / 255 shifted and scaled by the training set's mean and
        standard deviation (mean 0, std 1 over the training images).  ``"raw"``: grey levels /
        255, in [0, 1] (what torchvision's ``ToTensor`` gives, as in expRNN's script); the
        background is then exactly 0.

    Attributes
    ----------
    train, test : tuple of arrays
        ``(images (n, 784) float32, labels (n,) int64)`` in permuted pixel order.

    Raises
    ------
    FileNotFoundError
        Naming the missing file.
    ValueError
        If ``pixels`` is not one of its choices.

    Notes
    -----
    Batches are drawn by :meth:`batch` (random with replacement) or :meth:`epoch_batch`
    (step ``i`` of a seeded per-epoch shuffle: without replacement, reproducible from the step
    number alone), which is what a training run draws (:meth:`train_batch`); its held-out data
    is the start of the test set (:meth:`eval_set`).  With the files in ``../shared/data/mnist``
    the training images are a reconstruction of the original file (within one grey level; see
    that folder's README).

    Examples
    --------
    >>> from unitary_update.experiments.tasks import PermutedMNIST
    >>> PermutedMNIST("/nonexistent")
    Traceback (most recent call last):
    ...
    FileNotFoundError: MNIST file train-images-idx3-ubyte(.gz) not found in /nonexistent; nothing is downloaded
    """

    name = "pmnist"
    input_size = 1
    output_size = 10
    output = "last"
    loss = "cross_entropy"
    baseline = math.log(10)
    length = 784
    hidden_size = 170
    classification = True

    def __init__(
        self, directory: str | os.PathLike[str], *, permutation_seed: int = 0, pixels: str = "standardized"
    ) -> None:
        from .datasets import load_mnist

        self.pixels = check_choice_str(pixels, PIXELS, "pixels")
        data = load_mnist(directory)
        self.permutation = np.random.default_rng(permutation_seed).permutation(784)
        if pixels == "standardized":
            train = data["train_images"].reshape(-1, 784).astype(np.float32) / 255
            mean, std = float(train.mean()), float(train.std())
            if not std > 0:
                raise ValueError(f"the training images in {directory} are all equal; they cannot be normalised")

        def prepare(images: np.ndarray) -> np.ndarray:
            flat = images.reshape(-1, 784).astype(np.float32)[:, self.permutation] / 255
            return np.ascontiguousarray((flat - mean) / std if pixels == "standardized" else flat)

        self.train = (prepare(data["train_images"]), data["train_labels"].astype(np.int64))
        self.test = (prepare(data["test_images"]), data["test_labels"].astype(np.int64))

    def check_sizes(self, batch_size: int, eval_size: int) -> None:
        """Check that an epoch holds at least one batch and the test set ``eval_size`` images.

        Parameters
        ----------
        batch_size : int
            Images per training batch, at most the number of training images.
        eval_size : int
            Held-out images, at most the number of test images.

        Raises
        ------
        ValueError
            Naming ``batch_size`` or ``eval_size`` and the number of images there are.
        """
        super().check_sizes(batch_size, eval_size)
        n_train, n_test = len(self.train[1]), len(self.test[1])
        if batch_size > n_train:
            raise ValueError(f"batch_size must be <= {n_train}, the number of training images; got {batch_size}")
        if eval_size > n_test:
            raise ValueError(f"eval_size must be <= {n_test}, the number of test images; got {eval_size}")

    def _draw(self, batch_size: int, gen: np.random.Generator) -> tuple[Any, Any]:
        idx = gen.integers(0, len(self.train[1]), batch_size)
        return self.train[0][idx, :, None], self.train[1][idx]

    def epoch_batch(self, step: int, batch_size: int, seed: int) -> tuple[Any, Any]:
        """Batch ``step`` (0-based) of seeded per-epoch shuffles of the training set.

        Parameters
        ----------
        step : int
            Training step (0-based); epoch ``step // (n_train // batch_size)``.
        batch_size : int
            Images per batch (a partial last batch of an epoch is dropped).
        seed : int
            Seeds the shuffles (epoch ``e`` uses ``default_rng([seed, e])``).

        Returns
        -------
        x : numpy.ndarray, shape (batch_size, 784, 1), float32
            Pixels in permuted order (as ``pixels`` says).
        y : numpy.ndarray, shape (batch_size,), int64
            Digit labels.

        Raises
        ------
        ValueError
            If ``batch_size`` is not an integer in [1, number of training images].
        """
        batch_size = _check_size(batch_size, "batch_size")
        step = _check_size(step, "step", 0)
        seed = _check_size(seed, "seed", 0)
        per_epoch = len(self.train[1]) // batch_size
        if per_epoch < 1:
            raise ValueError(
                f"batch_size must be <= {len(self.train[1])}, the number of training images; got {batch_size}"
            )
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(self.train[1]))
        idx = order[i * batch_size : (i + 1) * batch_size]
        return self.train[0][idx, :, None], self.train[1][idx]

    def split(self, which: str, limit: int | None = None) -> tuple[Any, Any]:
        """The first ``limit`` images of the training or the test set.

        Parameters
        ----------
        which : {"train", "test"}
            The split.
        limit : int, optional
            Number of images, >= 0 (default: all; at most all there are).

        Returns
        -------
        x : numpy.ndarray, shape (n, 784, 1), float32
            Normalised pixels in permuted order.
        y : numpy.ndarray, shape (n,), int64
            Digit labels.

        Raises
        ------
        ValueError
            If ``which`` is neither ``"train"`` nor ``"test"``, or ``limit`` is not an integer >= 0.
        """
        if which not in ("train", "test"):
            raise ValueError(f"which must be 'train' or 'test'; got {which!r}")
        if limit is not None:
            limit = _check_size(limit, "limit", 0)
        images, labels = self.train if which == "train" else self.test
        return images[:limit, :, None], labels[:limit]

    def train_batch(self, batch_size: int, step: int, seed: int) -> tuple[Any, Any]:
        """The training batch of step ``step``: :meth:`epoch_batch` (per-epoch shuffles).

        Parameters
        ----------
        batch_size : int
            Number of images.
        step : int
            The number of completed training steps.
        seed : int
            The run's seed.

        Returns
        -------
        x, y : numpy.ndarray
            As :meth:`epoch_batch` returns them.
        """
        return self.epoch_batch(step, batch_size, seed)

    def eval_set(self, size: int, seed: int) -> tuple[Any, Any]:
        """The held-out data of a run: the first ``size`` test images (the same for every seed).

        Parameters
        ----------
        size : int
            Number of images.
        seed : int
            The run's seed (unused: the test set is fixed).

        Returns
        -------
        x, y : numpy.ndarray
            As :meth:`split` returns them.
        """
        return self.split("test", size)


TASK_CLASSES: dict[str, type[Task]] = {"copy": CopyTask, "adding": AddingTask, "pmnist": PermutedMNIST}
"""The task classes by name (class attributes only: building :class:`PermutedMNIST` loads MNIST)."""

TASKS = tuple(TASK_CLASSES)


def make_task(
    name: str,
    *,
    length: int | None = None,
    mnist_dir: Any = None,
    permutation_seed: int = 0,
    pixels: str = "standardized",
) -> Task:
    """Build a task by name: ``copy`` (``length`` = delay), ``adding`` (``length`` = T) or ``pmnist``.

    Parameters
    ----------
    name : {"copy", "adding", "pmnist"}
        The task.
    length : int, optional
        Copy: the delay (default 100).  Adding: the sequence length (default 200).  Ignored for
        pmnist.
    mnist_dir : str or path-like, optional
        Folder of the MNIST IDX files (default ``../shared/data/mnist``); pmnist only.
    permutation_seed : int, default 0
        Seed of the pixel permutation; pmnist only.
    pixels : {"standardized", "raw"}, default "standardized"
        How pmnist presents the grey levels (see :class:`PermutedMNIST`); pmnist only.

    Returns
    -------
    Task
        A :class:`CopyTask`, :class:`AddingTask` or :class:`PermutedMNIST`.

    Raises
    ------
    ValueError
        For an unknown task name or an invalid ``length``.
    FileNotFoundError
        For pmnist, if an MNIST file is missing.

    Examples
    --------
    >>> from unitary_update.experiments.tasks import make_task
    >>> round(make_task("copy", length=1000).baseline, 4)
    0.0204
    """
    if name == "copy":
        return CopyTask(CopyTask.default_length if length is None else length)
    if name == "adding":
        return AddingTask(AddingTask.default_length if length is None else length)
    if name == "pmnist":
        directory = mnist_dir if mnist_dir is not None else "../shared/data/mnist"
        return PermutedMNIST(directory, permutation_seed=permutation_seed, pixels=pixels)
    raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}; got {name!r}")


def task_class(name: str) -> type[Task]:
    """The class of the task called ``name``, without building it (no data is loaded).

    Parameters
    ----------
    name : {"copy", "adding", "pmnist"}
        The task.

    Returns
    -------
    type
        A subclass of :class:`Task`; its class attributes (``hidden_size``, ``classification``,
        :meth:`~Task.label`, ...) describe the task.

    Raises
    ------
    ValueError
        For an unknown task name.

    Examples
    --------
    >>> from unitary_update.experiments.tasks import task_class
    >>> task_class("pmnist").hidden_size, task_class("copy").label(1000)
    (170, 'copy delay 1000')
    """
    if not isinstance(name, str) or name not in TASK_CLASSES:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}; got {name!r}")
    return TASK_CLASSES[name]
