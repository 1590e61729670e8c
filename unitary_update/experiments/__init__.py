"""Experiments with the unitary RNN and the orthogonal convolution.

* :mod:`~unitary_update.experiments.tasks`: the copy-memory, adding and permuted-MNIST tasks.
* :mod:`~unitary_update.experiments.datasets`: MNIST from IDX files.
* :mod:`~unitary_update.experiments.train`: the training loop and resume
  (``python -m unitary_update train``), over :mod:`~unitary_update.experiments.config` (the
  settings of a run), :mod:`~unitary_update.experiments.checkpoints` (checkpoints and the
  metrics log) and :mod:`~unitary_update.experiments.plots` (``python -m unitary_update plot``).
* :mod:`~unitary_update.experiments.conv_mnist`: a deep orthogonal convolutional network on MNIST
  (``python -m unitary_update conv-demo``).

Nothing here is imported by ``import unitary_update``; the names live in the submodules, except
:class:`CheckpointError` (the one error type of :func:`~unitary_update.experiments.checkpoints.load_checkpoint`),
which is also importable from here.
"""

from ._errors import CheckpointError

__all__ = ["CheckpointError"]
