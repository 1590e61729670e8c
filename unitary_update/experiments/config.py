"""The settings of a training run (:class:`TrainConfig`), stored as ``config.json`` in its directory."""

from __future__ import annotations

import dataclasses

import numpy as np

from .tasks import TASK_CLASSES, Task

__all__ = ["TrainConfig"]


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run (stored as ``config.json`` in the run directory).

    Every parameter is also an attribute of the same name.

    Parameters
    ----------
    task : {"copy", "adding", "pmnist"}
        The task (see :mod:`unitary_update.experiments.tasks`).
    length : int or None
        Copy: the delay T (sequence length T + 20; default 100).  Adding: the sequence length
        (default 200).  Ignored for pmnist (784).
    steps : int
        Total number of training steps (a resumed run continues up to it).
    batch_size, hidden_size : int
        ``hidden_size`` None picks the paper's size (copy 190, adding and pmnist 170).
    complex : bool
        Complex (unitary) instead of real (orthogonal) recurrent matrix.
    init : str
        Initialiser of W (``henaff``, ``cayley``, ``haar``, ``identity``).
    dtype : {"float32", "float64"}
        Real precision of the model.
    optimizer : {"rmsprop", "adam", "sgd"}
        Optimizer for the Euclidean parameters and the direction of W.
    lr : float
        Learning rate of V, b, O, c; W gets ``lr / w_lr_divisor`` (the paper: RMSprop, 32).
    w_lr_divisor : float
        Divides ``lr`` for the recurrent matrix W (default 32).
    lr_milestones : tuple of int
        Steps at which both learning rates are multiplied by ``lr_gamma`` (like PyTorch's
        ``MultiStepLR``): from step ``s`` on, the rates are ``lr * lr_gamma**m`` with ``m`` the
        number of milestones ``<= s``.  Default ``()``: constant rates.
    lr_gamma : float
        The factor applied at each milestone, in (0, 1] (default 0.1).
    momentum : float
        SGD momentum.
    rank : int
        Rank k of the sketched W update.
    update : {"project", "transport"}
        projUNN-D or projUNN-T.
    sketch : str
        Sketch method of :func:`unitary_update.sketch`.
    retract_every : int
        Re-unitarise W every this many steps with :class:`unitary_update.DriftControl`
        (0: never, the default).
    seed : int
        Seeds the model, the data and the sketches.
    eval_every, eval_size : int
        Held-out evaluation period (steps) and size (sequences / test images).
    checkpoint_every, log_every : int
        Checkpoint and metrics periods (steps).
    time_limit_s : float or None
        Stop (with a checkpoint) after this much wall-clock time in this process.
    mnist_dir : str
        Folder of the MNIST IDX files.
    device : str
        Where the model trains: ``"cpu"`` (NumPy, the default) or ``"gpu"`` / ``"cuda:<i>"``
        (CuPy).  The model and the data are always generated on the host from the seed, so a run
        starts from the same state on either device, and checkpoints hold host arrays, so a run
        can be resumed on the other device.

    Examples
    --------
    >>> import dataclasses
    >>> from unitary_update.experiments.train import TrainConfig
    >>> cfg = TrainConfig(task="adding", length=50, steps=200)
    >>> cfg.resolved_hidden(), cfg.optimizer, cfg.lr
    (170, 'rmsprop', 0.001)
    >>> dataclasses.replace(cfg, hidden_size=64).resolved_hidden()
    64
    """

    task: str = "copy"
    length: int | None = None
    steps: int = 1000
    batch_size: int = 128
    hidden_size: int | None = None
    complex: bool = False
    init: str = "henaff"
    dtype: str = "float32"
    optimizer: str = "rmsprop"
    lr: float = 1e-3
    w_lr_divisor: float = 32.0
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    momentum: float = 0.0
    rank: int = 1
    update: str = "project"
    sketch: str = "randomized"
    retract_every: int = 0
    seed: int = 0
    eval_every: int = 100
    eval_size: int = 256
    checkpoint_every: int = 500
    log_every: int = 10
    time_limit_s: float | None = None
    mnist_dir: str = "../shared/data/mnist"
    device: str = "cpu"

    def __post_init__(self) -> None:
        milestones = tuple(self.lr_milestones)  # a list when read back from config.json
        if any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in milestones) or list(
            milestones
        ) != sorted(set(milestones)):
            raise ValueError(f"lr_milestones must be increasing positive step numbers; got {self.lr_milestones!r}")
        self.lr_milestones = tuple(int(m) for m in milestones)
        if not (0 < self.lr_gamma <= 1):
            raise ValueError(f"lr_gamma must be in (0, 1]; got {self.lr_gamma!r}")

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier of training step ``step + 1`` (after ``step`` completed steps).

        Parameters
        ----------
        step : int
            The number of completed steps.

        Returns
        -------
        float
            ``lr_gamma ** m``, ``m`` the number of milestones ``<= step``.

        Examples
        --------
        >>> from unitary_update.experiments.train import TrainConfig
        >>> cfg = TrainConfig(lr_milestones=(100, 200), lr_gamma=0.5)
        >>> cfg.lr_factor(99), cfg.lr_factor(100), cfg.lr_factor(250)
        (1.0, 0.5, 0.25)
        """
        return float(self.lr_gamma ** sum(step >= m for m in self.lr_milestones))

    def resolved_hidden(self) -> int:
        """The hidden size of the run: ``hidden_size``, or the paper's size for the task when None.

        Returns
        -------
        int
            ``hidden_size`` if set, else the task's ``hidden_size``: 190 (copy), 170 (adding,
            pmnist).
        """
        return int(self.hidden_size or TASK_CLASSES.get(self.task, Task).hidden_size)
