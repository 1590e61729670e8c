"""All or nothing: a stateful call that raises leaves every piece of state exactly as it was.

Optimizers (moments, step counts, learning rate, the sketch generator), UnitaryOptimizer, the
drift policy (its call counter, retractions, last estimate, probe generator and cached probes)
and ``step(..., out=)`` (out, U and a Generator rng) are compared in full before and after
failing calls.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest

import unitary_update as uu
from unitary_update.optim import SGD, Adam, RMSprop, UnitaryOptimizer

N = 6


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict)
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    elif isinstance(a, np.random.Generator):
        assert a.bit_generator.state == b.bit_generator.state
    else:
        assert a == b, (a, b)


def full_state(opt: Any) -> Any:
    """state_dict (arrays copied) plus every attribute, generators by their state."""
    state = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in opt.state_dict().items()}
    attrs = {k: v for k, v in vars(opt).items() if k not in ("base", "state", "drift")}
    attrs = copy.deepcopy(attrs)
    return state, attrs


BASES = [
    lambda: SGD(0.1),
    lambda: SGD(0.1, momentum=0.9),
    lambda: RMSprop(0.01),
    lambda: Adam(0.01),
]
IDS = ["sgd", "momentum", "rmsprop", "adam"]


def _bad_grads(g: np.ndarray) -> list[tuple[Any, type[BaseException]]]:
    nan = g.copy()
    nan[1, 2] = np.nan
    return [
        (nan, uu.NonFiniteError),
        (np.full_like(g, np.inf), uu.NonFiniteError),
        (g[:, :-1], ValueError),  # wrong shape
        (g.astype(np.complex128), TypeError),  # complex gradient, real parameter
        (g.astype(int), TypeError),
        (g.tolist(), TypeError),
    ]


@pytest.mark.parametrize("make", BASES, ids=IDS)
def test_failing_optimizer_steps_change_nothing(make):
    rng = np.random.default_rng(0)
    opt = make()
    params = {"w": rng.standard_normal((N, N)), "b": rng.standard_normal(N)}
    grads = {"w": rng.standard_normal((N, N)), "b": rng.standard_normal(N)}
    opt.step(params, grads)
    for bad, exc in _bad_grads(grads["w"]):
        before, p_before = full_state(opt), {k: v.copy() for k, v in params.items()}
        with pytest.raises(exc):
            opt.step(params, {"b": grads["b"], "w": bad})  # "b" is valid and comes first
        assert_same(full_state(opt), before)
        assert_same(params, p_before)
    # the optimizer still works and matches a twin that never saw the failures
    twin = make()
    twin_params = {"w": params["w"].copy(), "b": params["b"].copy()}
    twin.load_state_dict(opt.state_dict())
    opt.step(params, grads)
    twin.step(twin_params, grads)
    assert_same(params, twin_params)


@pytest.mark.parametrize("make", [lambda: RMSprop(0.01), lambda: Adam(0.01)], ids=["rmsprop", "adam"])
def test_gradient_whose_square_overflows_is_refused_with_the_reason(make):
    opt = make()
    p = {"w": np.ones(3)}
    opt.step(p, {"w": np.ones(3)})
    before, p_before = full_state(opt), p["w"].copy()
    with pytest.raises(uu.NonFiniteError, match="grad for 'w' is too large for float64"):
        opt.step(p, {"w": np.full(3, 1e200)})
    assert_same(full_state(opt), before)
    np.testing.assert_array_equal(p["w"], p_before)


def test_an_overflowing_learning_rate_is_named_in_the_message():
    opt = SGD(1e308)
    with pytest.raises(uu.NonFiniteError, match=r"largest \|entry\| 10, lr = 1e\+308"):
        opt.direction("w", np.full(3, 10.0))
    assert opt.t == {}


def test_direction_that_fails_does_not_advance_the_step_count():
    opt = Adam(0.01)
    opt.direction("w", np.ones(4))
    with pytest.raises(ValueError, match="does not match the optimizer's state w/m"):
        opt.direction("w", np.ones(5))
    assert opt.t == {"w": 1}
    np.testing.assert_allclose(opt.state["w"]["m"], 0.1)


def test_parameter_problems_are_found_before_anything_is_written():
    opt = SGD(0.1, momentum=0.5)
    params = {"a": np.ones(3), "b": np.ones(3)}
    params["b"].flags.writeable = False
    before = full_state(opt)
    with pytest.raises(ValueError, match=r"params\['b'\] is read-only"):
        opt.step(params, {"a": np.ones(3), "b": np.ones(3)})
    assert_same(full_state(opt), before)
    np.testing.assert_array_equal(params["a"], 1.0)
    with pytest.raises(KeyError, match="no parameter 'c'"):
        opt.step(params, {"a": np.ones(3), "c": np.ones(3)})
    np.testing.assert_array_equal(params["a"], 1.0)


@pytest.mark.parametrize("make", BASES, ids=IDS)
def test_failing_unitary_optimizer_steps_change_nothing(make):
    U = uu.random_unitary(N, dtype=np.float64, rng=1)
    drift = uu.DriftControl(every=1)
    opt = UnitaryOptimizer(make(), rank=2, update="transport", rng=2, drift=drift)
    rng = np.random.default_rng(3)
    opt.step(U, rng.standard_normal((N, N)))
    g = rng.standard_normal((N, N))
    U_nan = U.copy()
    U_nan[0, 0] = np.nan
    read_only = U.copy()
    read_only.flags.writeable = False
    cases = (
        [(U, bad, exc) for bad, exc in _bad_grads(g)]
        + [
            (U, (g[:, :2], g[:, :3]), ValueError),  # factored, mismatched columns
            (U, (g[:, :2], np.full((N, 2), np.nan)), uu.NonFiniteError),
            (U, (g, g, g), ValueError),
            (U_nan, g, uu.NonFiniteError),  # found by the update, after the sketch drew from rng
            (read_only, g, ValueError),
            (np.lib.stride_tricks.as_strided(np.zeros(N), (N, N), (0, 8)), g, ValueError),
        ]
    )
    for target, bad, exc in cases:
        before, drift_before, U_before = full_state(opt), copy.deepcopy(vars(drift)), target.copy()
        base_before = full_state(opt.base)
        with pytest.raises(exc):
            opt.step(target, bad)
        assert_same(full_state(opt), before)
        assert_same(full_state(opt.base), base_before)
        assert_same(vars(drift), drift_before)
        np.testing.assert_array_equal(target, U_before)
    big = UnitaryOptimizer(make(), rank=N + 1, rng=0)
    before = full_state(big)
    with pytest.raises(ValueError, match="rank must satisfy"):
        big.step(U.copy(), g)
    assert_same(full_state(big), before)


def test_drift_control_failing_calls_change_nothing():
    policy = uu.DriftControl(every=4, check_every=1, rng=5)
    U = 1.001 * uu.random_unitary(N, dtype=np.float64, rng=6)
    policy.maybe_retract(U.copy())
    nan = U.copy()
    nan[2, 2] = np.nan
    read_only = U.copy()
    read_only.flags.writeable = False
    cases = [
        (nan, {}, uu.NonFiniteError),  # the estimate sees NaN
        (read_only, {}, ValueError),  # due (estimate above tol), but U cannot be written
        (nan, {"step": 8}, uu.NonFiniteError),  # due by `every`, the retraction sees NaN
        (U.copy(), {"step": -1}, ValueError),
        (U.copy(), {"step": 2.0}, TypeError),
        (U[:, :-1].copy(), {}, ValueError),
        (U.tolist(), {}, TypeError),
        (uu.random_unitary(N + 2, dtype=np.float32, rng=0) * np.float32(np.nan), {}, uu.NonFiniteError),
    ]
    for target, kwargs, exc in cases:
        before = copy.deepcopy(vars(policy))
        kept = np.array(target, copy=True) if isinstance(target, np.ndarray) else None
        with pytest.raises(exc):
            policy.maybe_retract(target, **kwargs)
        assert_same(vars(policy), before)
        if kept is not None:
            np.testing.assert_array_equal(target, kept)
    assert policy.retractions == 1
    assert policy.maybe_retract(U) is True  # estimated above tol: retracted
    assert (policy._calls, policy.retractions) == (2, 2)  # the failures advanced no counter


def test_step_with_out_restores_the_generator_on_failure():
    U = uu.random_unitary(N, dtype=np.float64, rng=7)
    U[1, 1] = np.inf
    gen = np.random.default_rng(8)
    before = gen.bit_generator.state
    kept = U.copy()
    with pytest.raises(uu.NonFiniteError, match="U contains NaN or Inf"):
        uu.step(U, np.ones((N, N)), rank=2, rng=gen, out=U)
    assert gen.bit_generator.state == before
    np.testing.assert_array_equal(U, kept)
    good = uu.random_unitary(N, dtype=np.float64, rng=7)
    for out in (np.zeros((N + 1, N + 1)), np.zeros((N, N), dtype=np.float32)):
        with pytest.raises((ValueError, TypeError), match="out"):
            uu.step(good, np.ones((N, N)), rng=gen, out=out)
        assert gen.bit_generator.state == before
        np.testing.assert_array_equal(out, 0)


def test_sketch_restores_the_generator_when_it_fails(monkeypatch):
    gen = np.random.default_rng(9)
    before = gen.bit_generator.state

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(np.linalg, "svd", broken)
    with pytest.raises(uu.SingularUpdateError, match="randomized sketch of G failed"):
        uu.sketch(np.ones((5, 5)), 1, rng=gen)
    assert gen.bit_generator.state == before


def _adam_state() -> dict[str, Any]:
    opt = Adam(0.01)
    opt.step({"w": np.ones(3)}, {"w": np.arange(3.0)})
    return opt.state_dict()


def _meta(**t: Any) -> str:
    return json.dumps({"t": t, "lr": 0.01, "type": "Adam"})


@pytest.mark.parametrize(
    ("change", "exc", "match"),
    [
        ({"meta": _meta(w=-3)}, ValueError, r"step count t\['w'\]"),
        ({"meta": _meta(w=1.5)}, ValueError, r"step count t\['w'\]"),
        ({"meta": _meta(w=True)}, ValueError, r"step count t\['w'\]"),
        ({"meta": _meta(w=0)}, ValueError, r"t\['w'\] \(in meta\) is 0"),
        ({"w/m": np.full(3, np.nan)}, uu.NonFiniteError, r"state\['w/m'\] contains NaN"),
        ({"w/v": -np.ones(3)}, ValueError, r"state\['w/v'\] \(a second moment\) has negative entries"),
        ({"w/m": np.ones(3, complex)}, TypeError, r"state\['w/m'\] has dtype complex128; buffers are real"),
        ({"w/m": np.ones(2)}, ValueError, "buffers for 'w' differ in shape"),
        ({"w/zzz": np.ones(3)}, ValueError, "Adam has no buffer 'zzz'"),
        ({"w/v": None}, ValueError, r"state has \['m'\] for 'w' but not \['v'\]"),
    ],
)
def test_load_state_dict_checks_step_counts_and_buffers_before_changing_anything(change, exc, match):
    # each of these was accepted before and made every later step fail (or KeyError 'v')
    state = {k: v for k, v in {**_adam_state(), **change}.items() if v is not None}
    opt = Adam(0.01)
    opt.step({"w": np.ones(3)}, {"w": np.ones(3)})
    before = copy.deepcopy((opt.state, opt.t, opt.lr))
    with pytest.raises(exc, match=match):
        opt.load_state_dict(state)
    assert_same((opt.state, opt.t, opt.lr), before)
    opt.load_state_dict(_adam_state())  # the untouched state loads and steps
    opt.step({"w": np.ones(3)}, {"w": np.ones(3)})


@pytest.mark.parametrize("bit_generator", [np.random.MT19937, np.random.Philox, np.random.PCG64])
def test_unitary_optimizer_state_round_trips_any_bit_generator(bit_generator):
    # an MT19937 state (its key is an array) made state_dict raise TypeError before
    a = UnitaryOptimizer(SGD(0.1), rng=np.random.Generator(bit_generator(1)))
    U = uu.random_unitary(N, dtype=np.float64, rng=0)
    a.step(U, np.ones((N, N)))
    b = UnitaryOptimizer(SGD(0.1), rng=np.random.Generator(bit_generator(2)))
    b.load_state_dict(a.state_dict())
    assert b.steps == 1
    assert b.rng.random() == a.rng.random()
    other = UnitaryOptimizer(SGD(0.1), rng=np.random.Generator(np.random.SFC64(3)))
    with pytest.raises(ValueError, match="unitary_meta"):  # another generator's state: refused first
        other.load_state_dict(a.state_dict())
    assert other.steps == 0
    assert other.base.t == {}
    assert other.rng.random() == np.random.Generator(np.random.SFC64(3)).random()  # generator untouched


@pytest.mark.parametrize("kind", ["read-only", "overlapping"])
@pytest.mark.parametrize("caller", ["UnitaryOptimizer", "DriftControl"])
def test_in_place_callers_name_u_for_a_bad_u(caller, kind):
    # the user passed U, not out: the message names U (it said "out is read-only" before)
    base = uu.random_unitary(N, dtype=np.float64, rng=3)
    if kind == "read-only":
        U = base.copy()
        U.flags.writeable = False
    else:
        U = np.lib.stride_tricks.as_strided(base, (2, N, N), (0, *base.strides))
    before = np.array(U)
    call = {
        "UnitaryOptimizer": lambda: UnitaryOptimizer(SGD(0.1), rng=0).step(U, np.ones(U.shape)),
        "DriftControl": lambda: uu.DriftControl(every=1).maybe_retract(U),
    }[caller]
    with pytest.raises(ValueError, match="U is read-only" if kind == "read-only" else "U has overlapping memory"):
        call()
    np.testing.assert_array_equal(U, before)
