"""Property-based tests of the promises of issue 13 (hypothesis; CI uses the derandomized ``ci`` profile).

Drawn: the memory layout of ``out`` against U, A, B and G (out=None, out=U, a separate out;
factors that are views of U's elements, views beside U in U's buffer, views of a separate out,
or fresh arrays), scales over the whole range of the dtype (subnormal to near overflow), batch
shapes including 0 and 17 (the batched Numba kernel), the four dtypes, NumPy arrays or torch
tensors over the same memory, and the CPU backend option.  Asserted: the result is unitary and
finite; it is exactly the result computed with the overlapping inputs copied first (the same
layout otherwise, so the same code path); inputs that are not the destination are unchanged; a
destination that partly overlaps U, or overlaps itself, raises ValueError naming ``out`` and
changes nothing; optimizers fed failing gradients end in exactly the state of a twin that
never saw them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unitary_update as uu
from unitary_update.optim import SGD, Adam, RMSprop, UnitaryOptimizer

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
BATCHES = [(), (0,), (3,), (17,), (2, 0)]
FACTOR_KINDS = ["fresh", "view of U", "flat view of U's buffer", "beside U", "view of out"]
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def _tol(dtype: Any, n: int) -> float:
    return 60 * np.sqrt(n) * float(np.finfo(dtype).eps)


def _exponent_range(dtype: Any) -> tuple[int, int]:
    finfo = np.finfo(dtype)
    return int(np.log2(float(finfo.smallest_subnormal))) + 4, int(np.log2(float(finfo.max))) - 4


def _to_kind(x: np.ndarray, kind: str) -> Any:
    if kind == "torch":
        import torch

        return torch.from_numpy(x)  # the same memory (views stay views)
    return x


def _numpy(x: Any) -> np.ndarray:
    return x.numpy() if type(x).__module__.startswith("torch") else np.asarray(x)


class World:
    """U (maybe inside a wider buffer), an optional separate out buffer, and factors A, B."""

    def __init__(self, data: Any, dtype: Any, n: int, k: int, batch: tuple[int, ...]) -> None:
        self.dtype, self.n, self.k, self.batch = dtype, n, k, batch
        count = int(np.prod(batch, dtype=np.int64))
        U = np.zeros((*batch, n, n), dtype=dtype)
        if count:
            U = uu.random_unitary(n, dtype=dtype, batch_shape=batch, rng=data.draw(st.integers(0, 99)))
        # U alone in its buffer (C-contiguous: the Numba kernels' paths) or inside a wider buffer
        self.wide = data.draw(st.booleans(), label="U inside a wider buffer")
        self.U_buf = np.concatenate([U, np.zeros((*batch, n, 2 * k), dtype=dtype)], axis=-1)
        self.out_buf = np.zeros((*batch, n, n + 2 * k), dtype=dtype)
        rng = np.random.default_rng(data.draw(st.integers(0, 99)))
        low, high = _exponent_range(dtype)
        self.recipe = {}
        for name, column in (("A", 0), ("B", k)):
            kind = data.draw(st.sampled_from(FACTOR_KINDS), label=f"{name} kind")
            exponent = data.draw(st.integers(low, high), label=f"{name} exponent") if "of U" not in kind else 0
            values = rng.standard_normal((*batch, n, k)) / 4
            if np.dtype(dtype).kind == "c":
                values = values + 1j * rng.standard_normal((*batch, n, k)) / 4
            values = (values * 2.0**exponent).astype(dtype)
            if kind == "beside U":
                self.U_buf[..., :, n + column : n + column + k] = values
            elif kind == "view of out":
                self.out_buf[..., :, n + column : n + column + k] = values
            self.recipe[name] = (kind, column, values, exponent)

    def arrays(self, out_kind: str, copy_overlapping: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """U, A, B, out as views of fresh copies of the buffers (copy_overlapping: factors that
        overlap the destination replaced by copies, i.e. the copy-based reference)."""
        n, k = self.n, self.k
        U_buf, out_buf = self.U_buf.copy(), self.out_buf.copy()
        U = U_buf[..., :, :n] if self.wide else U_buf[..., :, :n].copy()
        if not self.wide:
            U_buf[..., :, :n] = 0  # the beside columns stay in U_buf, apart from U
        out = {"none": None, "U": U, "separate": out_buf[..., :, :n]}[out_kind]
        factors = []
        for name in ("A", "B"):
            kind, column, values, _ = self.recipe[name]
            if kind == "fresh":
                x = values.copy()
            elif kind == "view of U":
                x = U[..., :, column % n : column % n + min(k, n - column % n)]
                x = x if x.shape[-1] == k else U_buf[..., :, n + column : n + column + k]
            elif kind == "flat view of U's buffer" and not self.wide and n >= k:
                # a C-contiguous factor made of U's leading entries (spans several matrices)
                x = U.reshape(-1)[: U.size * k // n].reshape(*self.batch, n, k)
            elif kind in ("beside U", "flat view of U's buffer"):
                x = U_buf[..., :, n + column : n + column + k]
            else:
                x = out_buf[..., :, n + column : n + column + k]
            overlapping = out is not None and np.shares_memory(x, out)
            factors.append(x.copy() if copy_overlapping and overlapping else x)
        return U, factors[0], factors[1], out


@SETTINGS
@given(data=st.data())
def test_updates_with_drawn_layouts_scales_shapes_and_kinds(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    n = data.draw(st.integers(1, 8), label="n")
    k = data.draw(st.integers(1, 2), label="k")
    batch = data.draw(st.sampled_from(BATCHES), label="batch")
    out_kind = data.draw(st.sampled_from(["none", "U", "separate"]), label="out")
    library = data.draw(st.sampled_from(["numpy", "torch"]), label="library")
    backend = data.draw(st.sampled_from(["auto", "numpy"]), label="backend")
    fn = data.draw(st.sampled_from([uu.project, uu.transport]), label="update")
    if library == "torch":
        pytest.importorskip("torch")
    world = World(data, dtype, n, k, batch)

    U, A, B, out = world.arrays(out_kind, copy_overlapping=False)
    before = {"U": U.copy(), "A": A.copy(), "B": B.copy()}
    with uu.options(backend=backend):
        result = fn(*(_to_kind(x, library) for x in (U, A, B)), out=None if out is None else _to_kind(out, library))
        rU, rA, rB, rout = world.arrays(out_kind, copy_overlapping=True)
        expected = fn(rU, rA, rB, out=rout)
    got = _numpy(result)
    assert got.shape == (*batch, n, n)
    assert got.dtype == dtype
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, _numpy(expected))  # the copy-based result, bit for bit
    if got.size:
        assert uu.unitarity_error(got) <= _tol(dtype, n)
    destination = out if out is not None else None
    for name, x in (("U", U), ("A", A), ("B", B)):
        if destination is None or not np.shares_memory(x, destination):
            np.testing.assert_array_equal(x, before[name], err_msg=f"{name} changed")


@settings(max_examples=15, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    n=st.integers(2, 6),
    layout=st.sampled_from(["partly overlapping U", "zero strides"]),
    fn=st.sampled_from(["project", "transport", "retract", "step"]),
)
def test_bad_destinations_raise_naming_out_and_change_nothing(dtype, n, layout, fn):
    buf = np.zeros((3, n + 1, n + 1), dtype=dtype)
    buf[...] = np.eye(n + 1, dtype=dtype)
    U = buf[:, :n, :n]
    if layout == "partly overlapping U":
        out = buf[:, 1:, 1:]
    else:
        base = np.zeros((n, n), dtype=dtype)
        out = np.lib.stride_tricks.as_strided(base, (3, n, n), (0, *base.strides))
    kept_buf, kept_out = buf.copy(), out.copy()
    A = np.ones((3, n, 1), dtype=dtype)
    calls = {
        "retract": lambda: uu.retract(U, out=out),
        "step": lambda: uu.step(U, np.ones((3, n, n), dtype=dtype), rng=0, out=out),
        "project": lambda: uu.project(U, A, A, out=out),
        "transport": lambda: uu.transport(U, A, A, out=out),
    }
    with pytest.raises(ValueError, match=r"^out "):
        calls[fn]()
    np.testing.assert_array_equal(buf, kept_buf)
    np.testing.assert_array_equal(out, kept_out)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_steps_with_gradients_sharing_memory_with_out(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    n = data.draw(st.integers(1, 8), label="n")
    batch = data.draw(st.sampled_from([(), (0,), (17,)]), label="batch")
    low, high = _exponent_range(dtype)
    exponent = data.draw(st.integers(low, high), label="G exponent")
    g_kind = data.draw(st.sampled_from(["fresh", "U itself", "factored views of U"]), label="G")
    rank = data.draw(st.integers(1, n), label="rank")
    method = data.draw(st.sampled_from(["randomized", "lsi", "column", "exact"]), label="sketch")
    count = int(np.prod(batch, dtype=np.int64))
    U0 = uu.random_unitary(n, dtype=dtype, batch_shape=batch, rng=1) if count else np.zeros((*batch, n, n), dtype)

    def make(U: np.ndarray) -> Any:
        if g_kind == "U itself":
            return U
        if g_kind == "factored views of U":
            return (U[..., :, : (n + 1) // 2], U[..., :, n // 2 :])
        G = np.random.default_rng(2).standard_normal((*batch, n, n)) / 8
        return (G * 2.0**exponent).astype(dtype)

    U = U0.copy()
    G = make(U)
    reference = U0.copy()
    G_copy = tuple(g.copy() for g in make(reference)) if isinstance(G, tuple) else make(reference).copy()
    expected = uu.step(reference, G_copy, rank=rank, sketch=method, rng=3, out=reference)
    uu.step(U, G, rank=rank, sketch=method, rng=3, out=U)
    # strided views of U against contiguous copies: BLAS may round the sketch differently
    np.testing.assert_allclose(U, expected, rtol=0, atol=_tol(dtype, n))
    assert np.all(np.isfinite(U))
    if U.size:
        assert uu.unitarity_error(U) <= _tol(dtype, n)


@settings(max_examples=20, deadline=None)
@given(
    base=st.sampled_from(["sgd", "momentum", "rmsprop", "adam"]),
    events=st.lists(st.sampled_from(["ok", "nan", "inf", "shape", "complex", "huge", "list"]), min_size=1, max_size=6),
    unitary=st.booleans(),
)
def test_failing_calls_leave_optimizers_exactly_like_a_twin_that_never_saw_them(base, events, unitary):
    def build() -> Any:
        rule = {
            "sgd": lambda: SGD(0.1),
            "momentum": lambda: SGD(0.1, momentum=0.9),
            "rmsprop": lambda: RMSprop(0.01),
            "adam": lambda: Adam(0.01),
        }[base]()
        return UnitaryOptimizer(rule, rank=2, rng=0, drift=uu.DriftControl(every=2)) if unitary else rule

    n = 5
    opt, twin = build(), build()
    P = uu.random_unitary(n, dtype=np.float64, rng=4)
    Q = P.copy()
    rng = np.random.default_rng(5)
    for event in events:
        g = rng.standard_normal((n, n))
        bad: Any = {
            "ok": None,
            "nan": np.where(np.eye(n) > 0, np.nan, g),
            "inf": np.full((n, n), -np.inf),
            "shape": g[:, :-1],
            "complex": g + 1j,
            "huge": np.full((n, n), 1e200),
            "list": g.tolist(),
        }[event]
        if bad is None:
            for o, p in ((opt, P), (twin, Q)):
                o.step(p, g) if unitary else o.step({"w": p}, {"w": g})
            continue
        if event == "huge" and base in ("sgd", "momentum"):
            continue  # a valid step for SGD (its direction is representable; the update rescales)
        with pytest.raises((ValueError, TypeError)):
            opt.step(P, bad) if unitary else opt.step({"w": P}, {"w": bad})
    np.testing.assert_array_equal(P, Q)
    ours, theirs = opt.state_dict(), twin.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])
