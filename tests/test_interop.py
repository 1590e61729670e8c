"""Zero-copy interop with PyTorch and JAX (CPU), and the CPU-testable logic of the GPU seam.

The core suite runs on torch and JAX through the ``backend`` fixture; this module checks what
the fixture cannot: memory identity (``out=`` updates the caller's tensor in place, inputs are
not copied), autograd bookkeeping, lazy conjugate/negative views, strided tensors, refused
inputs, and the cuBLAS in-place update's layout logic (with a NumPy stand-in for cuBLAS).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from helpers import random_factors

import unitary_update as uu
from unitary_update import _blas, _xp
from unitary_update.reference import project_dense, transport_dense

UPDATES = {"project": (uu.project, project_dense), "transport": (uu.transport, transport_dense)}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _problem(n=72, k=2, dtype=np.complex128, seed=0):
    rng = np.random.default_rng(seed)
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    return U, random_factors(rng, (n, k), dtype) / np.sqrt(n), random_factors(rng, (n, k), dtype)


# --- torch: zero copy ------------------------------------------------------------------------
@pytest.mark.parametrize("update", sorted(UPDATES))
@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_torch_out_is_updated_in_place(torch, update, dtype):
    U0, A0, B0 = _problem(dtype=dtype)
    U = torch.from_numpy(U0.copy())
    ptr = U.data_ptr()
    returned = UPDATES[update][0](U, torch.from_numpy(A0), torch.from_numpy(B0), out=U)
    assert returned is U
    assert U.data_ptr() == ptr
    expected = UPDATES[update][1](U0, A0, B0)
    np.testing.assert_allclose(U.numpy(), expected, atol=200 * np.finfo(dtype).eps)


def test_torch_separate_out_is_written_and_inputs_are_shared_not_copied(torch):
    U0, A0, B0 = _problem()
    U, A = torch.from_numpy(U0.copy()), torch.from_numpy(A0.copy())
    for x in (U, A):  # the compute view is the tensor's own memory
        view, library = _xp.to_compute(x, "x")
        assert library == "torch"
        assert view.ctypes.data == x.data_ptr()
    out = torch.zeros_like(U)
    ptr = out.data_ptr()
    assert uu.transport(U, A, torch.from_numpy(B0), out=out) is out
    assert out.data_ptr() == ptr
    np.testing.assert_allclose(out.numpy(), transport_dense(U0, A0, B0), atol=1e-12)
    np.testing.assert_array_equal(U.numpy(), U0)  # U untouched


def test_torch_result_is_a_cpu_tensor_of_U_dtype(torch):
    U0, A0, B0 = _problem(dtype=np.float32)
    V = uu.project(torch.from_numpy(U0), A0, B0)  # numpy factors with a torch U: result follows U
    assert isinstance(V, torch.Tensor)
    assert V.device.type == "cpu"
    assert V.dtype == torch.float32
    assert not V.requires_grad


def test_torch_sketch_and_step_return_tensors(torch):
    U0, _, _ = _problem(n=40, dtype=np.float64)
    G0 = np.random.default_rng(1).standard_normal((40, 40)) * 0.01
    A, B = uu.sketch(torch.from_numpy(G0), 3, rng=2)
    assert isinstance(A, torch.Tensor)
    assert tuple(B.shape) == (40, 3)
    A_np, B_np = uu.sketch(G0, 3, rng=2)
    np.testing.assert_allclose(A.numpy(), A_np, atol=1e-14)
    np.testing.assert_allclose(B.numpy(), B_np, atol=1e-14)
    U = torch.from_numpy(U0.copy())
    ptr = U.data_ptr()
    assert uu.step(U, torch.from_numpy(G0), rank=3, rng=4, out=U) is U
    assert U.data_ptr() == ptr
    np.testing.assert_allclose(U.numpy(), uu.step(U0, G0, rank=3, rng=4), atol=1e-13)


# --- torch: autograd --------------------------------------------------------------------------
def test_torch_requires_grad_parameter_is_updated_in_place(torch):
    U0, A0, B0 = _problem(dtype=np.float32)
    p = torch.nn.Parameter(torch.from_numpy(U0.copy()))
    version = p._version
    with torch.no_grad():
        uu.transport(p, torch.from_numpy(A0), torch.from_numpy(B0), out=p)
    assert p.requires_grad
    assert p.grad_fn is None
    assert p._version > version  # autograd sees the write, as for an in-place torch op
    np.testing.assert_allclose(p.detach().numpy(), transport_dense(U0, A0, B0), atol=1e-5)
    V = uu.transport(p, A0, B0)  # without out: a plain tensor, no graph
    assert not V.requires_grad


def test_torch_write_to_a_tensor_saved_for_backward_is_detected(torch):
    U0, A0, B0 = _problem(dtype=np.float64)
    p = torch.nn.Parameter(torch.from_numpy(U0.copy()))
    loss = (p * p).sum()  # mul saves p for backward
    with torch.no_grad():
        uu.project(p, A0, B0, out=p)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_torch_parameter_stepped_by_a_numpy_optimizer_is_seen_by_autograd(torch):
    from unitary_update.optim import SGD, Adam, RMSprop

    for opt in (SGD(0.1), RMSprop(0.1), Adam(0.1)):
        p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        loss = (p * p).sum()  # mul saves p for backward
        with torch.no_grad():
            opt.step({"p": p}, {"p": torch.ones(3, dtype=torch.float64)})
        assert not torch.equal(p.detach(), torch.ones(3, dtype=torch.float64))
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()  # was: silently computed from the new values


# --- torch: lazy views and strides -------------------------------------------------------------
def test_torch_conjugate_view_input_is_read_by_value(torch):
    U0, A0, B0 = _problem()
    Uc = torch.from_numpy(U0.conj().copy()).conj()  # lazy view whose values are U0
    assert Uc.is_conj()
    np.testing.assert_allclose(uu.project(Uc, A0, B0).numpy(), project_dense(U0, A0, B0), atol=1e-12)


def test_torch_negative_view_input_is_read_by_value(torch):
    # DLPack exports a negative-bit view's raw memory (the un-negated values): it must be resolved
    rng = np.random.default_rng(3)
    U0, _, B0 = _problem(dtype=np.float64)
    Z = torch.from_numpy(random_factors(rng, (72, 2), np.complex128))
    A_neg = Z.conj().imag  # values -Z.imag, stored as Z.imag with the negative bit
    assert A_neg.is_neg()
    A0 = -Z.imag.numpy()
    np.testing.assert_allclose(uu.transport(U0, A_neg, B0), transport_dense(U0, A0, B0), atol=1e-12)


def test_torch_lazy_view_as_out_is_refused_before_writing(torch):
    U0, A0, B0 = _problem()
    base = torch.from_numpy(U0.conj().copy())
    out = base.conj()
    with pytest.raises(ValueError, match=r"out is a torch tensor with the conjugate bit set"):
        uu.project(out, A0, B0, out=out)
    np.testing.assert_array_equal(base.numpy(), U0.conj())


@pytest.mark.parametrize("update", sorted(UPDATES))
def test_torch_strided_out_is_updated_in_place_without_copy(torch, update):
    """Non-contiguous tensors cross as strided views (no copy); out= a strided view works."""
    U0, A0, B0 = _problem(n=70, dtype=np.float64)
    big = torch.zeros((140, 140), dtype=torch.float64)
    U = big[::2, ::2]
    U.copy_(torch.from_numpy(U0))
    assert not U.is_contiguous()
    ptr = U.data_ptr()
    assert UPDATES[update][0](U, A0, B0, out=U) is U
    assert U.data_ptr() == ptr
    np.testing.assert_allclose(U.numpy(), UPDATES[update][1](U0, A0, B0), atol=1e-12)
    assert torch.count_nonzero(big[1::2, :]) == 0  # the rows in between are untouched
    # a transposed (Fortran-ordered) tensor takes the BLAS path
    Ut = torch.from_numpy(U0.T.copy()).T
    assert not Ut.is_contiguous()
    UPDATES[update][0](Ut, A0, B0, out=Ut)
    np.testing.assert_allclose(Ut.numpy(), UPDATES[update][1](U0, A0, B0), atol=1e-12)


def test_torch_unsupported_dtype_and_device_name_the_argument(torch):
    U0, A0, B0 = _problem(n=8, dtype=np.float32)
    with pytest.raises(TypeError, match=r"^A is a torch tensor of dtype torch.bfloat16"):
        uu.project(U0, torch.from_numpy(A0).to(torch.bfloat16), B0)
    with pytest.raises(TypeError, match=r"^A has dtype float16"):
        uu.project(U0, torch.from_numpy(A0).to(torch.float16), B0)
    with pytest.raises(TypeError, match=r"^U is a torch tensor on device meta"):
        uu.project(torch.empty((8, 8), device="meta"), A0, B0)


# --- JAX ---------------------------------------------------------------------------------------
@pytest.fixture
def jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


@pytest.mark.parametrize("update", sorted(UPDATES))
def test_jax_result_is_a_jax_array_and_out_is_refused(jax, update):
    U0, A0, B0 = _problem(dtype=np.complex128)
    U, A, B = (jax.numpy.asarray(x) for x in (U0, A0, B0))
    V = UPDATES[update][0](U, A, B)
    assert isinstance(V, jax.Array)
    assert V.dtype == np.complex128
    np.testing.assert_allclose(np.asarray(V), UPDATES[update][1](U0, A0, B0), atol=1e-12)
    with pytest.raises(TypeError, match=r"out is a JAX array; JAX arrays are immutable"):
        UPDATES[update][0](U, A, B, out=U)
    with pytest.raises(TypeError, match=r"out is a JAX array"):
        UPDATES[update][0](U0, A0, B0, out=jax.numpy.zeros_like(U))
    np.testing.assert_array_equal(np.asarray(U), U0)


def test_jax_results_with_strides_are_handed_back(jax):
    x = np.arange(24.0).reshape(4, 6)
    for view in (x[:, ::2], x.T, x[::-1]):
        y = _xp.from_compute(view, "jax")
        assert isinstance(y, jax.Array)
        np.testing.assert_array_equal(np.asarray(y), view)


def test_jax_sketch_returns_jax_arrays(jax):
    G0 = np.random.default_rng(0).standard_normal((30, 30))
    A, B = uu.sketch(jax.numpy.asarray(G0), 2, rng=1)
    assert isinstance(A, jax.Array)
    assert isinstance(B, jax.Array)
    np.testing.assert_allclose(np.asarray(A), uu.sketch(G0, 2, rng=1)[0], atol=1e-14)


# --- the seam's helpers -------------------------------------------------------------------------
def test_get_namespace_cpu_and_errors():
    assert _xp.get_namespace("cpu") is np
    assert _xp.get_namespace("CPU") is np
    with pytest.raises(ValueError, match="device must be 'cpu', 'gpu', 'cuda' or 'cuda:<index>'; got 'tpu'"):
        _xp.get_namespace("tpu")
    with pytest.raises(ValueError, match="device must be"):
        _xp.get_namespace("cuda:x")


def test_get_namespace_gpu_without_cupy_gpu_is_a_clear_error():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a CuPy GPU is present")
    except Exception:
        pass
    with pytest.raises(RuntimeError, match=r"device 'gpu' (needs CuPy and a CUDA GPU|is not available)"):
        _xp.get_namespace("gpu")


def test_to_namespace_numpy_round_trip():
    x = np.arange(6.0).reshape(2, 3)
    assert _xp.to_namespace(x, np) is x


def test_compute_context_is_a_no_op_on_the_cpu():
    with _xp.compute_context(np.eye(2)):
        pass


# --- the cuBLAS in-place update, with a NumPy stand-in for cupy.cublas ---------------------------
@pytest.fixture
def fake_cupy(monkeypatch):
    """A ``cupy`` module whose ``cublas.gemm`` is NumPy, checking cuBLAS's column-major contract."""
    calls = []

    def gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
        assert transa in ("N", "T")
        assert transb in ("N", "T")
        assert out.flags.f_contiguous  # cuBLAS writes column-major memory
        opa = a if transa == "N" else a.T
        opb = b if transb == "N" else b.T
        out[...] = alpha * (opa @ opb) + beta * out
        calls.append(out.shape)
        return out

    cupy = types.ModuleType("cupy")
    cupy.cublas = types.SimpleNamespace(gemm=gemm)
    cupy.broadcast_to = np.broadcast_to
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return calls


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_cupy_gemm_inplace_layouts(fake_cupy, layout, dtype):
    rng = np.random.default_rng(0)
    n, r = 80, 4
    U0 = random_factors(rng, (2, n, n), dtype)
    P = random_factors(rng, (2, n, r), dtype)
    W = random_factors(rng, (1, n, r), dtype)  # broadcast over the batch
    if layout == "strided":
        U = np.zeros((2, 2 * n, n), dtype=dtype)[:, ::2, :]
        U[...] = U0
    elif layout == "F":  # each matrix column-major (a batch of transposes)
        U = np.ascontiguousarray(U0.swapaxes(-1, -2)).swapaxes(-1, -2)
    else:
        U = U0.copy()
    assert _blas._cupy_gemm_inplace_(U, P, W)
    expected = U0 + P @ _xp.hconj(W)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(U, expected, rtol=tol, atol=tol)
    assert len(fake_cupy) == (0 if layout == "strided" else 2)  # one gemm per matrix


def test_cupy_gemm_inplace_leaves_small_matrices_to_matmul(fake_cupy):
    U = np.eye(8)
    assert not _blas._cupy_gemm_inplace_(U, np.ones((8, 1)), np.ones((8, 1)))
    np.testing.assert_array_equal(U, np.eye(8))


@pytest.mark.parametrize("batch", [(), (3,), (2, 2)])
def test_top_k_by_argmax_matches_sort(batch):
    """The sync-free top-k used on CuPy picks exactly what the NumPy sort picks."""
    from unitary_update._sketch import _top_k

    keys = np.random.default_rng(0).standard_normal((*batch, 50))
    by_sort = _top_k(np, keys, 7, by_argmax=False)
    by_argmax = _top_k(np, keys, 7, by_argmax=True)
    assert by_argmax.shape == (*batch, 7)
    np.testing.assert_array_equal(by_argmax, by_sort)


def test_drift_control_refuses_a_u_it_could_never_retract_at_the_first_call(torch):
    U0 = uu.random_unitary(8, dtype=np.complex128, rng=0)
    lazy = torch.from_numpy(U0.conj().copy()).conj()
    policy = uu.DriftControl(every=3)
    with pytest.raises(ValueError, match="U is a torch tensor with the conjugate bit set"):
        policy.maybe_retract(lazy, step=1)  # was: False until step 3, then an error naming out
    assert policy.retractions == 0
