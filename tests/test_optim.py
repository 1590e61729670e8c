"""Optimizers: Euclidean ones against torch.optim, the unitary one against its definition."""

from __future__ import annotations

import json

import numpy as np
import pytest

import unitary_update as uu
from unitary_update.optim import SGD, Adam, RMSprop, UnitaryOptimizer, make_optimizer

CASES = [
    (lambda: SGD(0.1), lambda torch, p: torch.optim.SGD(p, lr=0.1)),
    (lambda: SGD(0.1, momentum=0.9), lambda torch, p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (lambda: RMSprop(0.01), lambda torch, p: torch.optim.RMSprop(p, lr=0.01, alpha=0.99, eps=1e-8)),
    (lambda: Adam(0.01), lambda torch, p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8)),
]


@pytest.mark.parametrize(("ours", "theirs"), CASES, ids=["sgd", "momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_matches_torch_optim(ours, theirs, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shape = (4, 3)

    def draw():
        x = rng.standard_normal(shape)
        return (x + 1j * rng.standard_normal(shape)).astype(dtype) if dtype == np.complex128 else x

    p0 = draw()
    params = {"w": p0.copy()}
    tp = torch.tensor(p0.copy(), requires_grad=True)
    opt, topt = ours(), theirs(torch, [tp])
    for _ in range(5):
        g = draw()
        opt.step(params, {"w": g})
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(params["w"], tp.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    grads = [{"w": rng.standard_normal(5)} for _ in range(6)]
    a, b = Adam(0.01), Adam(0.01)
    pa, pb = {"w": np.ones(5)}, {"w": np.ones(5)}
    for g in grads[:3]:
        a.step(pa, g)
        b.step(pb, g)
    state = a.state_dict()
    c = Adam(0.5)
    c.load_state_dict(state)
    for g in grads[3:]:
        a.step(pa, g)
        c.step(pb, g)
    np.testing.assert_array_equal(pa["w"], pb["w"])
    with pytest.raises(ValueError, match="state is for a Adam optimizer, not RMSprop"):
        RMSprop(0.1).load_state_dict(state)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: SGD(-1.0), "lr must be finite and >= 0"),
        (lambda: SGD(0.1, momentum=1.0), r"momentum must lie in \[0, 1\)"),
        (lambda: Adam(0.1, betas=(0.9, 1.0)), r"betas\[1\] must lie in \[0, 1\)"),
        (lambda: make_optimizer("lbfgs", 0.1), "optimizer must be one of"),
        (lambda: UnitaryOptimizer(SGD(0.1), update="cayley"), "update must be 'project' or 'transport'"),
        (lambda: UnitaryOptimizer(SGD(0.1), sketch="svd"), "sketch must be one of"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_unitary_optimizer_type_errors():
    with pytest.raises(TypeError, match="base must be an Optimizer"):
        UnitaryOptimizer("rmsprop")
    with pytest.raises(TypeError, match="drift must have a method maybe_retract"):
        UnitaryOptimizer(SGD(0.1), drift=object())


@pytest.mark.parametrize("update", ["project", "transport"])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_unitary_step_is_the_sketched_base_direction(update, dtype):
    n = 12
    U = uu.random_unitary(n, dtype=dtype, rng=0)
    rng = np.random.default_rng(1)
    G = rng.standard_normal((n, n)).astype(dtype)
    expected_D = RMSprop(0.05).direction("W", G)
    A, B = uu.sketch(expected_D, 2, method="exact")
    expected = (uu.project if update == "project" else uu.transport)(U, A, B)
    opt = UnitaryOptimizer(RMSprop(0.05), rank=2, update=update, sketch="exact", rng=0)
    opt.step(U, G)
    np.testing.assert_allclose(U, expected, rtol=1e-12, atol=1e-12)
    assert uu.unitarity_error(U) < 1e-12


def test_factored_sgd_gradient_equals_dense():
    n, m = 10, 30
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((n, m)), rng.standard_normal((n, m))
    U1 = uu.random_unitary(n, dtype=np.float64, rng=3)
    U2 = U1.copy()
    UnitaryOptimizer(SGD(0.01), rank=3, sketch="exact").step(U1, (X, Y))
    UnitaryOptimizer(SGD(0.01), rank=3, sketch="exact").step(U2, X @ Y.T)
    np.testing.assert_allclose(U1, U2, rtol=1e-12, atol=1e-12)
    # with momentum the factored gradient is formed densely, same first step
    U3 = uu.random_unitary(n, dtype=np.float64, rng=3)
    UnitaryOptimizer(SGD(0.01, momentum=0.5), rank=3, sketch="exact").step(U3, (X, Y))
    np.testing.assert_allclose(U3, U2, rtol=1e-12, atol=1e-12)


class StubDrift:
    """Records the calls of the duck-typed drift-control interface."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def maybe_retract(self, U, *, step):
        due = step % 2 == 0
        self.calls.append((step, due))
        if due:
            U *= 1.0  # a real retraction would re-unitarise here
        return due


def test_drift_control_is_called_after_each_update():
    U = uu.random_unitary(8, dtype=np.float64, rng=0)
    drift = StubDrift()
    opt = UnitaryOptimizer(SGD(0.1), drift=drift, rng=1)
    for _ in range(3):
        opt.step(U, np.random.default_rng(2).standard_normal((8, 8)))
    assert drift.calls == [(1, False), (2, True), (3, False)]


def test_no_drift_control_by_default():
    assert UnitaryOptimizer(SGD(0.1)).drift is None


@pytest.mark.parametrize("make", [lambda: Adam(0.01), lambda: UnitaryOptimizer(RMSprop(0.01), rank=2, rng=0)])
def test_state_dict_is_a_snapshot_that_later_steps_leave_alone(make):
    """Restoring a state_dict taken in memory before more steps gives the moments *and* step counts of then."""
    U = uu.random_unitary(6, dtype=np.float64, rng=3)
    grads = [np.random.default_rng(i).standard_normal((6, 6)) for i in range(4)]

    def step(opt, W, g):
        if isinstance(opt, UnitaryOptimizer):
            opt.step(W, g)
        else:
            opt.step({"W": W}, {"W": g})

    a, Ua = make(), U.copy()
    step(a, Ua, grads[0])
    checkpoint = a.state_dict()
    Ub = Ua.copy()
    step(a, Ua, grads[1])  # a later step: the checkpoint must not follow it
    b = make()
    b.load_state_dict(checkpoint)
    for g in grads[2:]:
        step(a, Ua, g)
    reference, Ur = make(), U.copy()
    for g in (grads[0], *grads[2:]):
        step(reference, Ur, g)
    for g in grads[2:]:
        step(b, Ub, g)
    np.testing.assert_array_equal(Ub, Ur)  # b continued from the checkpoint, as if step 1 never happened


def test_unitary_state_dict_restores_sketch_generator():
    n = 10
    G = np.random.default_rng(0).standard_normal((n, n))
    a = UnitaryOptimizer(RMSprop(0.01), rng=5)
    Ua = uu.random_unitary(n, dtype=np.float64, rng=1)
    a.step(Ua, G)
    state = a.state_dict()
    b = UnitaryOptimizer(RMSprop(0.01), rng=99)
    b.load_state_dict(state)
    Ub = Ua.copy()
    a.step(Ua, G)
    b.step(Ub, G)
    np.testing.assert_array_equal(Ua, Ub)
    assert b.steps == 2


# ---- settings validated at construction: the field and the accepted range (issue 13, item 6) ----
BAD_SETTINGS = [
    (lambda: SGD(float("nan")), ValueError, r"lr must be finite and >= 0; got nan"),
    (lambda: SGD(float("inf")), ValueError, r"lr must be finite and >= 0"),
    (lambda: SGD("0.1"), TypeError, r"lr must be a real number"),
    (lambda: SGD(True), TypeError, r"lr must be a real number"),
    (lambda: SGD(0.1, momentum=-0.1), ValueError, r"momentum must lie in \[0, 1\)"),
    (lambda: SGD(0.1, momentum=1.5), ValueError, r"momentum must lie in \[0, 1\)"),
    (lambda: RMSprop(0.1, alpha=1.5), ValueError, r"alpha must lie in \[0, 1\); got 1.5"),
    (lambda: RMSprop(0.1, alpha=1.0), ValueError, r"alpha must lie in \[0, 1\)"),
    (lambda: RMSprop(0.1, alpha=-0.5), ValueError, r"alpha must lie in \[0, 1\)"),
    (lambda: RMSprop(0.1, eps=0.0), ValueError, r"eps must be finite and > 0"),
    (lambda: RMSprop(0.1, eps=float("nan")), ValueError, r"eps must be finite and > 0"),
    (lambda: Adam(0.1, betas=(0.9,)), ValueError, r"betas must be exactly two numbers .*; got 1"),
    (lambda: Adam(0.1, betas=(0.9, 0.99, 0.999)), ValueError, r"betas must be exactly two numbers .*; got 3"),
    (lambda: Adam(0.1, betas=0.9), TypeError, r"betas must be a pair of numbers"),
    (lambda: Adam(0.1, betas="ab"), TypeError, r"betas must be a pair of numbers"),
    (lambda: Adam(0.1, betas=(1.0, 0.999)), ValueError, r"betas\[0\] must lie in \[0, 1\)"),
    (lambda: Adam(0.1, betas=(0.9, -0.1)), ValueError, r"betas\[1\] must lie in \[0, 1\)"),
    (lambda: Adam(0.1, betas=(0.9, None)), TypeError, r"betas\[1\] must be a real number"),
    (lambda: Adam(0.1, eps=-1e-8), ValueError, r"eps must be finite and > 0"),
    (lambda: UnitaryOptimizer(SGD(0.1), rank=0), ValueError, r"rank must be >= 1; got 0"),
    (lambda: UnitaryOptimizer(SGD(0.1), rank=1.5), TypeError, r"rank must be an integer"),
    (lambda: UnitaryOptimizer(SGD(0.1), rank=True), TypeError, r"rank must be an integer"),
    (lambda: UnitaryOptimizer(SGD(0.1), rng="seed"), TypeError, r"rng must be a numpy.random.Generator"),
    (lambda: UnitaryOptimizer(SGD(0.1), drift=3), TypeError, r"drift must be a DriftControl"),
    (lambda: uu.DriftControl(every=0), ValueError, r"every must be >= 1"),
    (lambda: uu.DriftControl(every=True), TypeError, r"every must be an integer"),
    (lambda: uu.DriftControl(check_every=1.5), TypeError, r"check_every must be an integer"),
    (lambda: uu.DriftControl(tol=float("inf")), ValueError, r"tol must be a positive finite number"),
    (lambda: uu.DriftControl(method="svd"), ValueError, r"unknown retraction method 'svd'"),
    (lambda: uu.DriftControl(rng=-2), ValueError, r"rng must be a non-negative integer seed"),
    (lambda: SGD(10**400), ValueError, r"lr must be finite and >= 0; got inf"),  # not OverflowError
    (lambda: RMSprop(0.1, alpha=-(10**400)), ValueError, r"alpha must lie in \[0, 1\)"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_SETTINGS)
def test_settings_are_validated_at_construction(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_lr_zero_is_allowed_and_freezes_the_parameter():
    p = {"w": np.ones(3)}
    Adam(0.0).step(p, {"w": np.arange(3.0)})
    np.testing.assert_array_equal(p["w"], 1.0)


def test_a_step_count_without_buffers_is_refused_where_the_count_scales_the_step():
    # Adam with a stepped parameter whose moments are gone would restart from zero moments with
    # a stale count (its bias correction then shrinks the step): refused, not silently wrong
    opt = Adam(0.1)
    opt.direction("w", np.array([1.0, -2.0, 3.0]))
    meta = opt.state_dict()["meta"]
    fresh = Adam(0.1)
    with pytest.raises(ValueError, match=r"step count t\['w'\] = 1 \(in meta\) but no buffers for 'w'"):
        fresh.load_state_dict({"meta": meta})
    phantom = json.dumps({**json.loads(meta), "t": {"w": 1, "q": 5}})
    with pytest.raises(ValueError, match=r"t\['q'\] = 5"):
        fresh.load_state_dict({**opt.state_dict(), "meta": phantom})
    assert fresh.t == {}
    assert fresh.state == {}
    # SGD and RMSprop do not use the count: a state of SGD without momentum loads into SGD with
    # momentum (whose buffer starts from the next gradient, as for a new parameter)
    plain = SGD(0.1)
    plain.direction("w", np.ones(3))
    for again in (SGD(0.1), SGD(0.1, momentum=0.9)):
        again.load_state_dict(plain.state_dict())
        assert again.t == {"w": 1}
    rms = RMSprop(0.1)
    rms.load_state_dict({"meta": json.dumps({"t": {"w": 2}, "lr": 0.1, "type": "RMSprop"})})
    np.testing.assert_allclose(rms.direction("w", np.ones(3)), RMSprop(0.1).direction("w", np.ones(3)))


def test_load_state_dict_is_all_or_nothing():
    opt = Adam(0.01)
    opt.step({"w": np.ones(3)}, {"w": np.ones(3)})
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in opt.state_dict().items()}
    bad_states = [
        {"w/m": np.zeros(3)},  # no meta
        {**opt.state_dict(), "meta": "{not json"},
        {**opt.state_dict(), "w/v": np.zeros(3, dtype=int)},
        {**opt.state_dict(), "novalue": np.zeros(3)},
    ]
    for bad in bad_states:
        with pytest.raises((ValueError, TypeError)):
            opt.load_state_dict(bad)
        after = opt.state_dict()
        assert after.keys() == before.keys()
        for key, value in before.items():
            np.testing.assert_array_equal(after[key], value)
    unitary = UnitaryOptimizer(Adam(0.01), rng=0)
    state = unitary.state_dict()
    steps, rng_state = unitary.steps, unitary.rng.bit_generator.state
    with pytest.raises(ValueError, match="unitary_meta"):
        unitary.load_state_dict({**state, "unitary_meta": '{"steps": -1, "rng": {}}'})
    assert (unitary.steps, unitary.rng.bit_generator.state) == (steps, rng_state)
