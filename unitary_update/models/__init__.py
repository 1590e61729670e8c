"""Models trained with projUNN updates: the hand-written unitary RNN and the orthogonal convolution.

* :class:`URNN` (:mod:`unitary_update.models.urnn`): a recurrent network with a unitary or
  orthogonal recurrent matrix, modReLU activation and hand-written backpropagation through time.
* :class:`OrthogonalConv2d` (:mod:`unitary_update.models.conv`): full-width orthogonal or unitary
  circular convolutions, one unitary matrix per frequency, trained with batched updates.

Their Numba kernels (modReLU, and the fused forward, BPTT and cross-entropy of the RNN) live in
the private leaf module ``_kernels``.
"""

from .conv import OrthogonalConv2d
from .urnn import URNN

__all__ = ["URNN", "OrthogonalConv2d"]
