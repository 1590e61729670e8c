"""Memory overlap: a destination that shares memory with an input.

Every writing function compares its destination with every input exactly (``np.shares_memory``
where the bounds test says maybe): an input that overlaps ``out`` is read from a copy taken
before anything is written, so the result equals the one computed on copies; an ``out`` that
partly overlaps U, or whose own entries share memory, is a ValueError naming ``out``.
"""

from __future__ import annotations

import numpy as np
import pytest

import unitary_update as uu
from unitary_update._validation import has_internal_overlap, overlaps
from unitary_update.optim import SGD, Adam, RMSprop, UnitaryOptimizer

UPDATES = [uu.project, uu.transport]


def _stack(count: int, n: int, dtype, seed: int = 0) -> np.ndarray:
    return uu.random_unitary(n, dtype=dtype, batch_shape=(count,) if count else (), rng=seed)


@pytest.mark.parametrize("backend", ["auto", "numba", "numpy"])
@pytest.mark.parametrize("fn", UPDATES)
@pytest.mark.parametrize("k", [1, 2])
def test_batched_path_with_factors_viewing_out(backend, fn, k):
    """20 matrices of N = 8 (the batched Numba kernel), A and B views into U's buffer, out=U."""
    U = _stack(20, 8, np.float64)
    B = np.random.default_rng(1).standard_normal((20, 8, k))
    buf = np.concatenate([U, B], axis=-1)  # B lives beside U in one buffer (shares no element)
    Uv, Bv = buf[..., :, :8], buf[..., :, 8:]
    A = Uv[..., :, :k]  # a view of U: it changes as U is written
    with uu.options(backend=backend):
        expected = fn(Uv.copy(), A.copy(), Bv.copy())
        result = fn(Uv, A, Bv, out=Uv)
    assert result is Uv
    np.testing.assert_allclose(Uv, expected, rtol=0, atol=1e-13)
    assert uu.unitarity_error(Uv) < 1e-12
    # C-contiguous factors made of U's own buffer (they span several matrices of the stack):
    # the batched kernel would read them while other threads write U (0.1 off without the copy)
    V = U.copy()
    A, B = V.reshape(-1)[: 20 * 8 * k].reshape(20, 8, k), V.reshape(-1)[-20 * 8 * k :].reshape(20, 8, k)
    with uu.options(backend=backend):
        expected = fn(V.copy(), A.copy(), B.copy())
        fn(V, A, B, out=V)
    np.testing.assert_array_equal(V, expected)


@pytest.mark.parametrize("fn", UPDATES)
@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_fused_and_lapack_paths_with_a_view_of_u(fn, dtype):
    """One matrix (the fused Numba kernel under backend="numba", LAPACK under "numpy")."""
    U = _stack(0, 24, dtype, seed=2)
    for backend in ("numba", "numpy"):
        with uu.options(backend=backend):
            work = U.copy()
            A = work[:, 3:5]
            A *= 0.5
            expected = fn(work.copy(), A.copy(), work[:, :2].copy())
            fn(work, A, work[:, :2], out=work)
            np.testing.assert_allclose(work, expected, rtol=0, atol=50 * np.finfo(dtype).eps)


@pytest.mark.parametrize("fn", UPDATES)
def test_factor_viewing_a_separate_out_is_read_before_out_is_written(fn):
    U = _stack(0, 6, np.float64, seed=3)
    rng = np.random.default_rng(4)
    out = rng.standard_normal((6, 6))
    A, B = out[:, :2], out[:, 2:4]  # views into out
    expected = fn(U, A.copy(), B.copy())
    U_before = U.copy()
    fn(U, A, B, out=out)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(U, U_before)


@pytest.mark.parametrize("fn", UPDATES)
def test_interleaved_views_share_no_element_and_are_accepted(fn):
    """U and out interleaved in one buffer: the bounds test says maybe, the exact one says no."""
    buf = np.empty((6, 12))
    U, out = buf[:, ::2], buf[:, 1::2]
    U[...] = _stack(0, 6, np.float64, seed=5)
    out[...] = 0.0
    assert np.may_share_memory(U, out)
    assert not overlaps(U, out)
    A, B = np.ones((6, 1)), np.arange(6.0)[:, None] / 10
    fn(U, A, B, out=out)
    np.testing.assert_allclose(out, fn(U.copy(), A, B), rtol=0, atol=1e-14)


@pytest.mark.parametrize("fn", UPDATES)
def test_out_partly_overlapping_u_is_rejected(fn):
    buf = uu.random_unitary(7, dtype=np.float64, rng=6)
    U, out = buf[:6, :6], buf[1:, 1:]
    before = buf.copy()
    with pytest.raises(ValueError, match="out overlaps U without being U"):
        fn(U, np.ones((6, 1)), np.ones((6, 1)), out=out)
    np.testing.assert_array_equal(buf, before)


def _zero_stride_out(shape: tuple[int, ...]) -> np.ndarray:
    base = np.zeros(shape[1:])
    return np.lib.stride_tricks.as_strided(base, shape, (0, *base.strides))  # writable, zero stride


@pytest.mark.parametrize("call", ["project", "transport", "retract", "step"])
def test_out_with_internal_overlap_is_rejected(call):
    U = _stack(3, 5, np.float64, seed=7)
    out = _zero_stride_out(U.shape)
    assert out.flags.writeable
    assert has_internal_overlap(out)
    before = out.copy()
    A = np.ones((3, 5, 1))
    calls = {
        "retract": lambda: uu.retract(U, out=out),
        "step": lambda: uu.step(U, np.ones((3, 5, 5)), rng=0, out=out),
        "project": lambda: uu.project(U, A, A, out=out),
        "transport": lambda: uu.transport(U, A, A, out=out),
    }
    with pytest.raises(ValueError, match="out has overlapping memory"):
        calls[call]()
    np.testing.assert_array_equal(out, before)


def test_torch_expanded_out_is_rejected():
    torch = pytest.importorskip("torch")
    U = torch.from_numpy(_stack(3, 5, np.float64, seed=8))
    out = torch.zeros(1, 5, 5, dtype=torch.float64).expand(3, 5, 5)
    A = torch.ones(3, 5, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="out has overlapping memory"):
        uu.project(U, A, A, out=out)
    assert torch.count_nonzero(out) == 0


def test_torch_factor_viewing_u_in_place():
    torch = pytest.importorskip("torch")
    U0 = _stack(17, 6, np.float32, seed=9)
    U = torch.from_numpy(U0.copy())
    expected = uu.transport(U0.copy(), U0[..., :, :1].copy(), U0[..., :, 1:2].copy())
    uu.transport(U, U[..., :, :1], U[..., :, 1:2], out=U)
    np.testing.assert_allclose(U.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fn", UPDATES)
def test_factor_that_is_u_itself_with_out_u(fn):
    """A = U (k = N) and out=U: the same object as the destination is read from a copy."""
    for count in (0, 17):
        U = _stack(count, 4, np.float64, seed=16)
        with uu.options(backend="numba"):
            expected = fn(U.copy(), U.copy(), 0.1 * U.copy())
            B = 0.1 * U.copy()
            fn(U, U, B, out=U)
        np.testing.assert_allclose(U, expected, rtol=0, atol=1e-14)


def test_step_with_a_gradient_that_is_u_itself():
    U = _stack(0, 10, np.float64, seed=10)
    expected = uu.step(U.copy(), 0.1 * U.copy(), rank=2, rng=1)
    G = U.view()
    uu.step(U, G, rank=2, rng=1, out=U)  # G is U: the sketch reads G before anything is written
    np.testing.assert_allclose(U, expected, rtol=0, atol=1e-13 * 10)
    V = _stack(0, 10, np.float64, seed=11)
    expected = uu.step(V.copy(), (V[:, :3].copy(), V[:, 3:6].copy()), rank=2, rng=2)
    uu.step(V, (V[:, :3], V[:, 3:6]), rank=2, rng=2, out=V)
    np.testing.assert_allclose(V, expected, rtol=0, atol=1e-13)


def test_retract_out_overlapping_u_partly_is_rejected_and_in_place_works():
    buf = 1.01 * uu.random_unitary(6, dtype=np.float64, rng=12)
    with pytest.raises(ValueError, match="out overlaps U"):
        uu.retract(buf[:5, :5], out=buf[1:, 1:])
    U = buf.copy()
    expected = uu.retract(U.copy())
    uu.retract(U, out=U)
    np.testing.assert_allclose(U, expected, atol=1e-14)


@pytest.mark.parametrize("make", [lambda: SGD(0.1, momentum=0.9), lambda: RMSprop(0.01), lambda: Adam(0.01)])
def test_gradient_aliasing_the_optimizer_state_is_read_intact(make):
    rng = np.random.default_rng(13)
    a, b = make(), make()
    pa, pb = {"w": rng.standard_normal(6)}, None
    pb = {"w": pa["w"].copy()}
    g0 = rng.standard_normal(6)
    a.step(pa, {"w": g0})
    b.step(pb, {"w": g0.copy()})
    buffer = next(v for k, v in a.state_dict().items() if k != "meta")  # a live moment buffer
    g = buffer  # hostile: the gradient is the optimizer's own moment
    b.step(pb, {"w": buffer.copy()})
    a.step(pa, {"w": g})
    np.testing.assert_array_equal(pa["w"], pb["w"])
    for key, value in b.state_dict().items():
        if key != "meta":
            np.testing.assert_array_equal(a.state_dict()[key], value)


def test_gradient_aliasing_another_parameter_is_read_before_it_is_written():
    rng = np.random.default_rng(14)
    x, y = rng.standard_normal(4), rng.standard_normal(4)
    params = {"x": x, "y": y}
    ref = {"x": x.copy(), "y": y.copy()}
    SGD(0.5).step(ref, {"x": ref["y"].copy(), "y": ref["x"].copy()})
    SGD(0.5).step(params, {"x": y, "y": x})  # each gradient is the other parameter
    np.testing.assert_array_equal(params["x"], ref["x"])
    np.testing.assert_array_equal(params["y"], ref["y"])


def test_parameters_sharing_memory_with_each_other_or_the_state_are_rejected():
    opt = SGD(0.1, momentum=0.5)
    w = np.ones(4)
    opt.step({"w": w}, {"w": np.ones(4)})
    m = opt.state["w"]["m"]  # the live buffer (state_dict hands out copies)
    assert not np.shares_memory(opt.state_dict()["w/m"], m)
    state_before = m.copy()
    with pytest.raises(ValueError, match=r"params\['v'\] shares memory with the optimizer's state w/m"):
        opt.step({"w": w, "v": m}, {"w": np.ones(4), "v": np.ones(4)})
    np.testing.assert_array_equal(m, state_before)
    np.testing.assert_array_equal(w, 1 - 0.1)
    both = np.zeros(6)
    with pytest.raises(ValueError, match=r"shares memory with params\['a'\]"):
        SGD(0.1).step({"a": both[:4], "b": both[2:]}, {"a": np.ones(4), "b": np.ones(4)})
    np.testing.assert_array_equal(both, 0)


def test_unitary_optimizer_gradient_that_is_u():
    U = _stack(0, 8, np.float64, seed=15)
    V = U.copy()
    UnitaryOptimizer(Adam(1e-2), rank=2, rng=3).step(V, V.copy())
    UnitaryOptimizer(Adam(1e-2), rank=2, rng=3).step(U, U)
    np.testing.assert_array_equal(U, V)


def test_overlap_helpers():
    x = np.zeros(10)
    assert overlaps(x[:5], x[4:])
    assert not overlaps(x[:5], x[5:])
    assert not overlaps(x[:0], x)
    assert has_internal_overlap(np.broadcast_to(np.zeros(3), (2, 3)))
    assert not has_internal_overlap(np.zeros((3, 4))[:, ::2])
    assert not has_internal_overlap(np.zeros((3, 4)).T)

    class Device:  # a CuPy-like array: a data pointer and byte strides
        def __init__(self, ptr: int, shape, strides) -> None:
            self.data = type("Mem", (), {"ptr": ptr})()
            self.shape, self.strides = shape, strides
            self.size = int(np.prod(shape))
            self.dtype = np.dtype(np.float64)
            self.device = type("Dev", (), {"id": 0})()

    a = Device(1000, (4, 4), (32, 8))
    assert overlaps(a, Device(1000 + 120, (2, 2), (16, 8)))
    assert not overlaps(a, Device(1000 + 128, (2, 2), (16, 8)))
