"""GPU tests (CuPy): agreement with NumPy, no host synchronisation in the hot path, torch CUDA interop.

Skipped as a whole without CuPy and a CUDA device.  Run on a GPU machine with
``PYTHONPATH=$PWD python -m pytest -q -p no:cacheprovider tests/test_gpu.py`` (see ``docs/gpu.md``).

The synchronisation test enqueues a kernel that spins on the GPU for about two seconds, then calls
the library with ``check_finite=False``: if the call returns while the spinning kernel is still
running (``stream.done`` is False), nothing in it waited for the device.  The same test with
``check_finite=True`` must block, which shows the probe detects a synchronisation.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ALL_DTYPES, cupy_gpu_available, random_factors, rtol_for, torch_cuda_available

import unitary_update as uu
from unitary_update.reference import project_dense, transport_dense

pytestmark = pytest.mark.skipif(not cupy_gpu_available(), reason="no CuPy GPU")

UPDATES = {"project": (uu.project, project_dense), "transport": (uu.transport, transport_dense)}

_SPIN_SOURCE = r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


@pytest.fixture(scope="module")
def cp():
    import cupy

    return cupy


def _spin(cp, seconds: float) -> None:
    """Enqueue one single-thread kernel that keeps the current stream busy for about ``seconds``."""
    kernel = cp.RawKernel(_SPIN_SOURCE, "spin")
    clock_khz = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["clockRate"]
    kernel((1,), (1,), (np.int64(seconds * clock_khz * 1e3),))


def _rel(x, ref) -> float:
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


# --- agreement with NumPy -----------------------------------------------------------------------
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize(("n", "k"), [(8, 1), (100, 3), (512, 1), (512, 16)])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("update", sorted(UPDATES))
def test_cupy_matches_numpy(cp, update, dtype, n, k, order):
    rng = np.random.default_rng(n + k)
    U0 = np.asarray(uu.random_unitary(n, dtype=dtype, rng=rng), order=order)
    A0, B0 = random_factors(rng, (n, k), dtype) / np.sqrt(n), random_factors(rng, (n, k), dtype)
    fast, dense = UPDATES[update]
    expected = fast(U0, A0, B0)
    U = cp.asarray(U0, order=order)
    V = fast(U, cp.asarray(A0), cp.asarray(B0))
    assert isinstance(V, cp.ndarray)
    assert V.dtype == dtype
    assert _rel(cp.asnumpy(V), expected) <= rtol_for(dtype)
    # in place, through the cuBLAS beta = 1 path for n >= 64
    ptr = U.data.ptr
    assert fast(U, cp.asarray(A0), cp.asarray(B0), out=U) is U
    assert U.data.ptr == ptr
    assert _rel(cp.asnumpy(U), expected) <= rtol_for(dtype)
    assert _rel(cp.asnumpy(dense(cp.asarray(U0), cp.asarray(A0), cp.asarray(B0))), dense(U0, A0, B0)) <= rtol_for(dtype)


@pytest.mark.parametrize("method", ["randomized", "lsi", "column", "exact"])
def test_cupy_sketch_and_step_match_numpy(cp, method):
    rng = np.random.default_rng(1)
    n = 300
    G0 = (rng.standard_normal((n, 4)) @ rng.standard_normal((4, n))).astype(np.complex64)  # rank 4
    A, B = uu.sketch(cp.asarray(G0), 4, method=method, rng=2)
    assert isinstance(A, cp.ndarray)
    G = cp.asnumpy(A @ B.conj().T)
    assert _rel(G, G0) < 1e-3
    U0 = uu.random_unitary(n, dtype=np.complex64, rng=3)
    U = cp.asarray(U0)
    uu.step(U, cp.asarray(-1e-3 * G0), rank=4, sketch=method, rng=4, out=U)
    assert uu.unitarity_error(U) < 1e-3


def test_cupy_batched_matches_numpy(cp):
    rng = np.random.default_rng(5)
    U0 = uu.random_unitary(96, dtype=np.float32, batch_shape=(3,), rng=rng)
    A0, B0 = rng.standard_normal((3, 96, 2)).astype(np.float32), rng.standard_normal((1, 96, 2)).astype(np.float32)
    U = cp.asarray(U0)
    uu.transport(U, cp.asarray(A0), cp.asarray(B0), out=U)
    assert _rel(cp.asnumpy(U), uu.transport(U0, A0, B0)) <= 1e-4


# --- no host synchronisation --------------------------------------------------------------------
def _step_problem(cp, n=2048, dtype=np.complex64):
    rng = np.random.default_rng(6)
    U = cp.asarray(uu.random_unitary(n, dtype=dtype, rng=rng))
    G = cp.asarray(-1e-3 * random_factors(rng, (n, n), dtype))
    return U, G


@pytest.mark.parametrize("sketch", ["randomized", "lsi", "column"])
@pytest.mark.parametrize("update", ["project", "transport"])
def test_step_enqueues_without_synchronising(cp, update, sketch):
    U, G = _step_problem(cp)
    stream = cp.cuda.get_current_stream()
    with uu.options(check_finite=False):
        uu.step(U, G, rank=4, update=update, sketch=sketch, rng=0, out=U)  # warm-up: compile, fill the pool
        stream.synchronize()
        _spin(cp, 2.0)
        uu.step(U, G, rank=4, update=update, sketch=sketch, rng=1, out=U)
        still_queued = not stream.done
    stream.synchronize()
    assert still_queued, "step waited for the device: a host synchronisation is in the step path"
    assert uu.unitarity_error(U) < 1e-3


@pytest.mark.parametrize("update", ["project", "transport"])
def test_update_enqueues_without_synchronising(cp, update):
    U, _ = _step_problem(cp, dtype=np.float32)
    rng = np.random.default_rng(7)
    A, B = (
        cp.asarray(rng.standard_normal((2048, 16), dtype=np.float32)),
        cp.asarray(rng.standard_normal((2048, 16), dtype=np.float32)),
    )
    stream = cp.cuda.get_current_stream()
    with uu.options(check_finite=False):
        UPDATES[update][0](U, A * 1e-3, B, out=U)
        stream.synchronize()
        _spin(cp, 2.0)
        UPDATES[update][0](U, A * 1e-3, B, out=U)
        still_queued = not stream.done
    stream.synchronize()
    assert still_queued


def test_the_probe_detects_the_check_finite_synchronisation(cp):
    """With the default check_finite=True the step reads a flag to the host and so must block."""
    U, G = _step_problem(cp)
    stream = cp.cuda.get_current_stream()
    uu.step(U, G, rank=4, rng=0, out=U)
    stream.synchronize()
    _spin(cp, 1.0)
    uu.step(U, G, rank=4, rng=1, out=U)
    assert stream.done


# --- torch CUDA tensors through DLPack ----------------------------------------------------------
@pytest.mark.skipif(not torch_cuda_available(), reason="no torch CUDA build with a GPU")
@pytest.mark.parametrize("update", sorted(UPDATES))
def test_torch_cuda_tensor_in_place_and_result_kind(update):
    import torch

    rng = np.random.default_rng(8)
    U0 = uu.random_unitary(256, dtype=np.complex64, rng=rng)
    A0, B0 = random_factors(rng, (256, 2), np.complex64) / 16, random_factors(rng, (256, 2), np.complex64)
    fast, _ = UPDATES[update]
    expected = fast(U0, A0, B0)
    U = torch.from_numpy(U0.copy()).cuda().requires_grad_()
    A, B = torch.from_numpy(A0).cuda(), torch.from_numpy(B0).cuda()
    V = fast(U, A, B)
    assert isinstance(V, torch.Tensor)
    assert V.device == U.device
    assert _rel(V.cpu().numpy(), expected) <= 1e-4
    ptr = U.data_ptr()
    with torch.no_grad():
        assert fast(U, A, B, out=U) is U
    assert U.data_ptr() == ptr
    assert _rel(U.detach().cpu().numpy(), expected) <= 1e-4


@pytest.mark.skipif(not torch_cuda_available(), reason="no torch CUDA build with a GPU")
def test_torch_cuda_side_stream_is_followed():
    """Work is enqueued on torch's current stream: results are ordered for torch without a sync."""
    import torch

    rng = np.random.default_rng(9)
    U0 = uu.random_unitary(512, dtype=np.float32, rng=rng)
    A0, B0 = rng.standard_normal((512, 1)).astype(np.float32) * 1e-2, rng.standard_normal((512, 1)).astype(np.float32)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        U = torch.from_numpy(U0).cuda(non_blocking=False) * 1.0  # produced on the side stream
        uu.project(U, torch.from_numpy(A0).cuda(), torch.from_numpy(B0).cuda(), out=U)
        V = U.cpu()  # ordered after the update on the same stream
    assert _rel(V.numpy(), uu.project(U0, A0, B0)) <= 1e-4
