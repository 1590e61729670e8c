"""Benchmarks behind the ``bench*`` commands, over one timing helper (``_timing.best_time``).

* :mod:`~unitary_update.bench.cpu`: project and transport against one GEMM, a copy, the in-place
  rank update and the dense methods (``python -m unitary_update bench``).
* :mod:`~unitary_update.bench.gpu`: the same on CuPy against the memory floor (``bench-gpu``).
* :mod:`~unitary_update.bench.rnn`: one RNN training step against a plain NumPy RNN step
  (``bench-rnn``).
* :mod:`~unitary_update.bench.conv`: batched updates of stacks of small matrices (``conv-bench``).
* :mod:`~unitary_update.bench.soak`: unitarity drift over many float32 steps (``soak``).

Nothing here is imported by ``import unitary_update``; timings never appear in the tests.  The
names live in the submodules.
"""

__all__: list[str] = []
