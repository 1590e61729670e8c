"""PyTorch, first class: an optimizer that keeps weights unitary, and unitary initialisers.

* :class:`ProjUNN`: a :class:`torch.optim.Optimizer` (parameter groups, ``state_dict``,
  closures, ``maximize``, learning-rate schedulers, DistributedDataParallel) whose unitary
  parameters take rank-k projUNN steps of an RMSprop, Adam or SGD direction, in place, and stay
  unitary (complex) or orthogonal (real) to rounding; ordinary parameters, in groups with
  ``"unitary": False``, take the plain base-rule step.
* :func:`orthogonal_` (Haar), :func:`henaff_` and :func:`cayley_` (the unitary-RNN
  initialisations): fill a tensor of shape (..., N, N) in place, like :mod:`torch.nn.init`.

Needs torch: ``pip install "unitary_update[torch]"``.
"""

from __future__ import annotations

from unitary_update._extras import require

require("torch", "unitary_update.torch")

from ._init import cayley_, henaff_, orthogonal_  # noqa: E402
from ._optim import BASES, ProjUNN  # noqa: E402

__all__ = ["BASES", "ProjUNN", "cayley_", "henaff_", "orthogonal_"]
