"""unitary_update.torch.ProjUNN: agreement with UnitaryOptimizer, torch conventions, state, all-or-nothing."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import unitary_update as uu  # noqa: E402
from unitary_update.optim import SGD, Adam, RMSprop, UnitaryOptimizer  # noqa: E402
from unitary_update.torch import ProjUNN, cayley_, henaff_, orthogonal_  # noqa: E402

BASE_RULES = {
    "rmsprop": ({"alpha": 0.9, "eps": 1e-6}, lambda lr: RMSprop(lr, alpha=0.9, eps=1e-6)),
    "adam": ({"betas": (0.8, 0.95), "eps": 1e-6}, lambda lr: Adam(lr, betas=(0.8, 0.95), eps=1e-6)),
    "sgd": ({"momentum": 0.7}, lambda lr: SGD(lr, momentum=0.7)),
}


def _param(n, dtype=torch.float64, seed=0, batch=()):
    return torch.nn.Parameter(orthogonal_(torch.empty(*batch, n, n, dtype=dtype), rng=seed))


def _grads(shape, dtype, steps, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        g = rng.standard_normal(shape)
        if np.dtype(dtype).kind == "c":
            g = g + 1j * rng.standard_normal(shape)
        out.append(g.astype(dtype))
    return out


def _child_rng(seed, index):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


@pytest.mark.parametrize("base", sorted(BASE_RULES))
@pytest.mark.parametrize("update", ["transport", "project"])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_agrees_with_unitary_optimizer_on_the_same_gradients(base, update, dtype):
    n, lr, steps = 12, 0.02, 15
    options, numpy_base = BASE_RULES[base]
    W = _param(n, getattr(torch, np.dtype(dtype).name), seed=3)
    U = W.detach().numpy().copy()
    opt = ProjUNN([W], lr=lr, base=base, rank=2, update=update, seed=5, **options)
    reference = UnitaryOptimizer(numpy_base(lr), rank=2, update=update, rng=_child_rng(5, 0))
    for g in _grads((n, n), dtype, steps):
        W.grad = torch.from_numpy(g.copy())
        opt.step()
        reference.step(U, g)
    np.testing.assert_allclose(W.detach().numpy(), U, rtol=0, atol=1e-12)
    assert float(np.abs(W.detach().numpy() - _param(n, W.dtype, seed=3).detach().numpy()).max()) > 1e-2  # it moved
    assert opt.state[W]["step"] == steps


def test_ordinary_groups_follow_the_base_rule_and_torch():
    # a "unitary": False group is the library's Euclidean rule, which is torch's RMSprop/Adam/SGD
    rng = np.random.default_rng(0)
    for base, (options, numpy_base) in BASE_RULES.items():
        p = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((3, 5))))
        q = torch.nn.Parameter(p.detach().clone())
        r = {"w": p.detach().numpy().copy()}
        opt = ProjUNN([p], lr=0.01, base=base, unitary=False, **options)
        ref = numpy_base(0.01)
        torch_cls = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[base]
        theirs = torch_cls([q], lr=0.01, **options)
        for g in _grads((3, 5), np.float64, 5):
            p.grad, q.grad = torch.from_numpy(g.copy()), torch.from_numpy(g.copy())
            opt.step()
            theirs.step()
            ref.step(r, {"w": g})
        np.testing.assert_allclose(p.detach().numpy(), r["w"], rtol=0, atol=1e-14)
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=0, atol=1e-12)


def _model(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=True), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    orthogonal_(model[0].weight, rng=seed)
    return model


def _groups(model):
    return [
        {"params": [model[0].weight], "rank": 2},
        {"params": [model[0].bias, *model[2].parameters()], "unitary": False, "lr": 0.05},
    ]


def _train(model, opt, steps, start):
    for i in range(start, start + steps):
        gen = torch.Generator().manual_seed(i)
        x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 2, generator=gen)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _trained(base, steps):
    """The small model and its ProjUNN (seed 7, the base rule's options of BASE_RULES) after ``steps`` steps."""
    model = _model()
    opt = ProjUNN(_groups(model), lr=0.01, base=base, seed=7, **BASE_RULES[base][0])
    _train(model, opt, steps, 0)
    return model, opt


@pytest.mark.parametrize("base", sorted(BASE_RULES))
def test_resume_from_state_dict_is_bit_exact(base):
    options = BASE_RULES[base][0]
    full, _ = _trained(base, 6)
    half, opt_half = _trained(base, 3)
    buffer = io.BytesIO()
    torch.save({"model": half.state_dict(), "optimizer": opt_half.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)  # plain data: loads without unpickling code
    resumed = _model(seed=99)  # different weights and seed: everything comes from the checkpoint
    opt_resumed = ProjUNN(_groups(resumed), lr=0.5, base=base, seed=123, **options)
    resumed.load_state_dict(checkpoint["model"])
    opt_resumed.load_state_dict(checkpoint["optimizer"])
    _train(resumed, opt_resumed, 3, 3)
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert uu.unitarity_error(resumed[0].weight) < 1e-5


@pytest.mark.parametrize("base", sorted(BASE_RULES))
def test_step_count_is_a_tensor_as_in_torch_optimizers_and_int_counts_still_load(base):
    options = BASE_RULES[base][0]
    model, opt = _trained(base, 3)
    other = copy.deepcopy(model)
    reference = torch.optim.Adam(other.parameters())
    other(torch.ones(2, other[0].in_features)).sum().backward()
    reference.step()
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        step = opt.state[p]["step"]
        kind = reference.state[q]["step"]
        assert isinstance(step, torch.Tensor)
        assert step.ndim == kind.ndim == 0
        assert step.dtype == torch.float64  # torch's float32 counts stop at 2^24
        assert step.device.type == "cpu"
        assert step.item() == 3
    # a state saved with int counts (this library before) resumes exactly as the tensor one
    saved = opt.state_dict()
    legacy = copy.deepcopy(saved)
    for entry in legacy["state"].values():
        entry["step"] = int(entry["step"])
    twins = []
    for state in (saved, legacy):
        twin = _model(seed=99)
        twin.load_state_dict(model.state_dict())
        opt_twin = ProjUNN(_groups(twin), lr=0.5, base=base, seed=123, **options)
        opt_twin.load_state_dict(state)
        assert all(isinstance(st["step"], torch.Tensor) for st in opt_twin.state.values())  # before any step
        _train(twin, opt_twin, 2, 3)
        assert opt_twin.state[twin[0].weight]["step"].item() == 5
        twins.append(twin)
    for a, b in zip(twins[0].parameters(), twins[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_step_count_stays_exact_beyond_float32_and_keeps_the_drift_clock(monkeypatch):
    import unitary_update.torch._optim as optim_module

    clock = []
    real_drift_at = optim_module.drift_at
    monkeypatch.setattr(optim_module, "drift_at", lambda policy, t: clock.append(t) or real_drift_at(policy, t))
    W = _param(6, torch.float64)
    opt = ProjUNN([W], lr=0.01, base="sgd", rank=1, seed=0, drift={"every": 2, "tol": None})
    W.grad = torch.ones(6, 6, dtype=torch.float64)
    opt.step()
    state = opt.state_dict()
    for start in (2**24, torch.tensor(2.0**24, dtype=torch.float32)):
        state["state"][0]["step"] = start
        opt.load_state_dict(state)
        clock.clear()
        for _ in range(4):
            W.grad = torch.ones(6, 6, dtype=torch.float64)
            opt.step()
        assert clock == [2**24 + 1, 2**24 + 2, 2**24 + 3, 2**24 + 4]  # drift control's clock goes on
        assert opt.state[W]["step"].item() == 2**24 + 4


@pytest.mark.parametrize(
    "bad", [-1, 2.5, True, "3", torch.tensor(1.5), torch.tensor([1.0, 2.0]), torch.tensor(float("nan"))]
)
def test_a_saved_step_that_is_not_a_count_is_refused_and_changes_nothing(bad):
    model = _model()
    opt = ProjUNN(_groups(model), lr=0.01, base="adam", seed=7)
    _train(model, opt, 2, 0)
    state = copy.deepcopy(opt.state_dict())
    before = copy.deepcopy(state)
    state["state"][0]["step"] = bad
    with pytest.raises(ValueError, match=r"param group 0: parameter 0: saved state 'step' must be a step count"):
        opt.load_state_dict(state)
    assert opt.state[model[0].weight]["step"].item() == 2
    assert opt.state_dict()["param_groups"] == before["param_groups"]


@pytest.mark.parametrize("base", sorted(BASE_RULES))
def test_state_of_another_shape_is_refused_and_leaves_the_optimizer_as_it_was(base):
    options = BASE_RULES[base][0]
    big = torch.nn.Parameter(orthogonal_(torch.empty(8, 8), rng=0))
    opt_big = ProjUNN([big], lr=0.01, base=base, seed=0, **options)
    big.grad = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    opt_big.step()
    small = torch.nn.Parameter(orthogonal_(torch.empty(4, 4), rng=0))
    opt = ProjUNN([small], lr=0.01, base=base, seed=0, **options)
    small.grad = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    opt.step()
    before = copy.deepcopy(opt.state_dict())
    # torch accepts it (same number of parameters); the next step would fail on the moments' shapes
    with pytest.raises(
        ValueError, match=r"parameter 0: saved state '\w+' has shape \(8, 8\) but the parameter has \(4, 4\)"
    ):
        opt.load_state_dict(opt_big.state_dict())
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for key, value in before["state"][0].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(after["state"][0][key], value)
        else:
            assert after["state"][0][key] == value


def test_mixed_groups_keep_only_unitary_groups_unitary():
    model = _model()
    opt = ProjUNN(_groups(model), lr=0.02, base="adam", seed=0)
    before = model[2].weight.detach().clone()
    _train(model, opt, 20, 0)
    assert uu.unitarity_error(model[0].weight) < 1e-5
    assert not torch.equal(before, model[2].weight)
    assert opt.param_groups[1]["lr"] == 0.05
    assert opt.param_groups[0]["lr"] == 0.02
    assert sorted(opt.state[model[0].weight]) == ["exp_avg", "exp_avg_sq", "sketch_rng", "step"]
    assert sorted(opt.state[model[2].weight]) == ["exp_avg", "exp_avg_sq", "step"]


def test_complex_stack_stays_unitary_and_moments_are_per_part():
    W = _param(6, torch.complex64, batch=(3,))
    opt = ProjUNN([W], lr=0.05, base="rmsprop", rank=2, update="project", seed=0)
    g = torch.randn(3, 6, 6, dtype=torch.complex64)
    for _ in range(20):
        W.grad = g.clone()
        opt.step()
    assert uu.unitarity_error(W) < 1e-5
    v = opt.state[W]["square_avg"]
    assert v.dtype == torch.complex64
    expected = (1 - 0.99**20) * torch.complex(g.real**2, g.imag**2)  # real and imaginary parts separately
    torch.testing.assert_close(v, expected, rtol=1e-5, atol=0)


def test_loss_decreases_and_the_sketch_rank_counts():
    # fit an orthogonal Procrustes problem; rank 4 beats rank 1 at equal steps
    target = orthogonal_(torch.empty(16, 16, dtype=torch.float64), rng=1)
    x = torch.randn(64, 16, dtype=torch.float64)
    final = {}
    for rank in (1, 4):
        W = torch.nn.Parameter(torch.eye(16, dtype=torch.float64))
        opt = ProjUNN([W], lr=0.05, base="sgd", momentum=0.5, rank=rank, seed=0)
        for _ in range(60):
            opt.zero_grad()
            loss = ((x @ W.T - x @ target.T) ** 2).mean()
            loss.backward()
            opt.step()
        final[rank] = loss.item()
    assert final[4] < final[1] < 2.0 * 2 * 16 / 16  # E||(W - Q) x||^2 starts near 2 per coordinate


def test_lr_scheduler_changes_the_step():
    def run(schedule):
        W = _param(8, seed=2)
        opt = ProjUNN([W], lr=0.1, base="sgd", seed=0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1) if schedule else None
        deltas = []
        for g in _grads((8, 8), np.float64, 3):
            before = W.detach().clone()
            W.grad = torch.from_numpy(g)
            opt.step()
            deltas.append(float((W.detach() - before).norm()))
            if sched:
                sched.step()
        return deltas, opt.param_groups[0]["lr"]

    plain, lr_plain = run(False)
    scheduled, lr_scheduled = run(True)
    assert plain[0] == scheduled[0]
    assert lr_plain == 0.1
    assert lr_scheduled == pytest.approx(1e-4)
    assert scheduled[2] < 0.05 * plain[2]  # lr 1e-3 vs 1e-1: a step ~100x smaller


def test_closure_maximize_and_zero_grad():
    W = _param(8, seed=4)
    x = torch.randn(32, 8, dtype=torch.float64)
    target = W.detach() @ henaff_(torch.empty(8, 8, dtype=torch.float64), rng=5)  # same component as W
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = ((x @ W.T - x @ target.T) ** 2).mean()
        loss.backward()
        return loss

    opt = ProjUNN([W], lr=0.05, base="adam", seed=0)
    losses = [opt.step(closure).item() for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    assert len(calls) == 30
    opt.zero_grad()
    assert W.grad is None  # torch's default set_to_none

    V = _param(8, seed=4)
    up = ProjUNN([V], lr=0.05, base="adam", seed=0, maximize=True)
    gains = []
    for _ in range(10):
        up.zero_grad()
        loss = ((x @ V.T - x @ target.T) ** 2).mean()
        loss.backward()
        up.step()
        gains.append(loss.item())
    assert gains[-1] > gains[0]
    assert uu.unitarity_error(V) < 1e-12


def test_add_param_group_and_parameter_indices_seed_their_own_streams():
    W1, W2 = _param(6, seed=1), _param(6, seed=2)
    opt = ProjUNN([W1], lr=0.01, seed=11)
    opt.add_param_group({"params": [W2], "rank": 3, "update": "project"})
    assert opt.param_groups[1]["rank"] == 3
    assert opt.param_groups[1]["lr"] == 0.01
    g1, g2 = _grads((6, 6), np.float64, 2)
    U2 = W2.detach().numpy().copy()
    W1.grad, W2.grad = torch.from_numpy(g1), torch.from_numpy(g2)
    opt.step()
    ref = UnitaryOptimizer(RMSprop(0.01), rank=3, update="project", rng=_child_rng(11, 1))
    ref.step(U2, g2)
    np.testing.assert_allclose(W2.detach().numpy(), U2, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match=r"param group 2: parameter 0 has shape \(6,\)"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(6))]})
    assert len(opt.param_groups) == 2  # a rejected group is not added


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -1.0}, ValueError, r"lr must be in \[0, inf\]; got -1.0"),
        ({"lr": float("nan")}, ValueError, "lr must be in"),
        ({"base": "lbfgs"}, ValueError, "base must be one of 'rmsprop', 'adam', 'sgd'; got 'lbfgs'"),
        ({"rank": 0}, ValueError, "rank must be >= 1; got 0"),
        ({"rank": 1.5}, TypeError, "rank must be an integer"),
        ({"rank": 9}, ValueError, r"rank must satisfy 1 <= rank <= N = 8; got 9"),
        ({"update": "rotate"}, ValueError, "update must be one of 'project', 'transport'"),
        ({"sketch": "svd"}, ValueError, "sketch must be one of"),
        ({"momentum": 1.0, "base": "sgd"}, ValueError, r"momentum must be in \[0, 1\); got 1.0"),
        ({"momentum": 0.5}, ValueError, "momentum is an option of base='sgd'"),
        ({"alpha": 1.5}, ValueError, r"alpha must be in \[0, 1\]"),
        ({"betas": (0.9, 1.0)}, ValueError, r"betas\[1\] must be in \[0, 1\)"),
        ({"betas": 0.9}, ValueError, "betas must be a pair"),
        ({"eps": -1e-8}, ValueError, r"eps must be in \[0, inf\]"),
        ({"weight_decay": 0.1}, ValueError, "weight_decay must be 0 in a unitary group"),
        ({"maximize": 1}, TypeError, "maximize must be True or False"),
        ({"drift": uu.DriftControl()}, TypeError, "drift must be None, True"),
        ({"drift": {"every": 0}}, ValueError, "drift: every must be"),
        ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
    ],
)
def test_settings_are_validated_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        ProjUNN([_param(8)], **kwargs)


@pytest.mark.parametrize(
    ("param", "match"),
    [
        (torch.zeros(4, 5), r"parameter 0 has shape \(4, 5\); a unitary group takes square matrices"),
        (torch.zeros(4), r"has shape \(4,\)"),
        (torch.eye(4, dtype=torch.float16), "has dtype torch.float16"),
        (torch.eye(4, dtype=torch.bfloat16), "has dtype torch.bfloat16"),
        (2 * torch.eye(4), r"is not unitary: \|\|W\^H W - I\|\|_F = 6 > "),
    ],
)
def test_unitary_parameters_are_validated(param, match):
    with pytest.raises(ValueError, match=match):
        ProjUNN([torch.nn.Parameter(param)])
    ProjUNN([torch.nn.Parameter(param)], unitary=False)  # fine as an ordinary parameter
    if param.dtype == torch.float32 and param.ndim == 2 and param.shape[0] == param.shape[1]:
        ProjUNN([torch.nn.Parameter(param)], check_unitary=False)


def _snapshot(params, opt):
    return copy.deepcopy(([p.detach().clone() for p in params], opt.state_dict()))


def _assert_same(a, b):
    (pa, sa), (pb, sb) = a, b
    for x, y in zip(pa, pb, strict=True):
        assert torch.equal(x, y)
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for key in sa["state"]:
        assert sa["state"][key].keys() == sb["state"][key].keys()
        for name, value in sa["state"][key].items():
            other = sb["state"][key][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, name


def test_a_failed_step_changes_nothing():
    model = _model()
    W2 = _param(8, seed=3, dtype=torch.float32)
    opt = ProjUNN([*_groups(model), {"params": [W2]}], lr=0.02, seed=0)
    params = [*model.parameters(), W2]
    _train(model, opt, 2, 0)  # moments, step counts and generator states exist
    before = _snapshot(params, opt)

    _train(model, opt, 0, 0)
    (model(torch.randn(4, 8)) ** 2).sum().backward()
    W2.grad = torch.randn(8, 8)
    W2.grad[3, 3] = float("nan")  # the last unitary parameter: checked before anything is written
    with pytest.raises(uu.NonFiniteError, match="param group 2: parameter 0: the gradient contains NaN"):
        opt.step()
    _assert_same(before, _snapshot(params, opt))

    W2.grad = torch.randn(8, 8)
    for group in (0, 2):  # a setting changed to one the library rejects (rank > N), first or last parameter
        opt.param_groups[group]["rank"] = 9
        with pytest.raises(ValueError, match=f"param group {group}: parameter 0: rank must satisfy 1 <= rank <= N = 8"):
            opt.step()
        opt.param_groups[group]["rank"] = before[1]["param_groups"][group]["rank"]
        _assert_same(before, _snapshot(params, opt))
    opt.param_groups[1]["lr"] = -1.0  # e.g. set by hand between steps
    with pytest.raises(ValueError, match=r"param group 1: lr must be in \[0, inf\]"):
        opt.step()
    opt.param_groups[1]["lr"] = 0.05
    _assert_same(before, _snapshot(params, opt))

    model[0].weight.grad[0, 0] = float("inf")  # the first unitary parameter
    with pytest.raises(uu.NonFiniteError, match="param group 0: parameter 0"):
        opt.step()
    _assert_same(before, _snapshot(params, opt))

    # with the check off, a failure inside the library (here: the last parameter's update) still
    # leaves the earlier, staged parameter and every state untouched
    model[0].weight.grad[0, 0] = 0.0
    original = uu.step

    def failing_second(U, G, **kwargs):
        if kwargs.get("out") is not None:
            raise uu.NonFiniteError("simulated failure of the last update")
        return original(U, G, **kwargs)

    import unitary_update.torch._optim as optim_module

    optim_module.uu.step = failing_second
    try:
        with pytest.raises(uu.NonFiniteError, match="simulated"):
            opt.step()
    finally:
        optim_module.uu.step = original
    _assert_same(before, _snapshot(params, opt))
    opt.step()  # and the same step then succeeds
    assert (opt.state[W2]["step"], opt.state[model[0].weight]["step"]) == (1, 3)


def test_float32_stays_unitary_for_10000_steps_with_drift_control():
    W = _param(8, dtype=torch.float32, seed=0)
    # the lsi sketch (one QR per step) keeps the test short; drift does not depend on the sketch
    opt = ProjUNN([W], lr=0.01, base="rmsprop", rank=1, sketch="lsi", seed=0, drift=True)
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(64, 8, 8, generator=gen)
    worst = 0.0
    for i in range(10_000):
        W.grad = grads[i % 64]
        opt.step()
        if i % 500 == 499:
            worst = max(worst, uu.unitarity_error(W))
    exact = W.detach().double().numpy()
    assert worst <= 1e-5
    assert np.linalg.norm(exact.T @ exact - np.eye(8)) <= 1e-5  # an independent, float64 measurement


@pytest.mark.parametrize("init", [orthogonal_, henaff_, cayley_])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
def test_initialisers_fill_unitary_matrices_in_place(init, dtype):
    t = torch.empty(2, 7, 7, dtype=dtype)
    assert init(t, rng=0) is t
    W = t.to(torch.complex128).numpy()
    for M in W:
        np.testing.assert_allclose(M.conj().T @ M, np.eye(7), atol=1e-6)
        s = np.linalg.svd(M, compute_uv=False)
        np.testing.assert_allclose(s, 1, atol=1e-6)
    assert not np.allclose(W[0], W[1])  # independent matrices in a stack
    if init is orthogonal_ and dtype.is_complex:
        assert np.abs(W.imag).max() > 0.1  # complex Haar, not a real matrix
    elif init is not orthogonal_:
        assert np.abs(W.imag).max() == 0  # real rotations


def test_initialisers_match_the_recurrent_initialisers_of_the_models():
    from unitary_update.models.urnn import init_recurrent

    for name, init in (("henaff", henaff_), ("cayley", cayley_)):
        for n in (6, 7):
            t = init(torch.empty(n, n, dtype=torch.float64), rng=3)
            np.testing.assert_allclose(t.numpy(), init_recurrent(n, name, rng=3), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match=r"orthogonal_: tensor must have shape \(\.\.\., N, N\)"):
        orthogonal_(torch.empty(3, 4))


def test_import_without_torch_names_the_extra():
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; import unitary_update.torch"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    message = 'unitary_update.torch needs torch: pip install "unitary_update[torch]"'
    assert last == f"unitary_update._extras.MissingExtraError: {message}"


# ---- client code: copies, lazily conjugated gradients, tensor learning rates -----------------
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_optimizer_continues_exactly_as_the_original(how):
    import pickle

    W = _param(8, dtype=torch.float32, seed=1)
    opt = ProjUNN([W], lr=1e-2, seed=0, check_unitary=False)
    W.grad = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    opt.step()
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    V = twin.param_groups[0]["params"][0]
    assert V is not W
    assert torch.equal(V, W)
    assert twin.check_unitary is False
    grad = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    W.grad, V.grad = grad.clone(), grad.clone()
    opt.step()
    twin.step()
    assert torch.equal(V, W)  # same moments and the same sketch generator state
    twin.add_param_group({"params": [_param(4, dtype=torch.float32, seed=2)]})


def test_lazily_conjugated_gradients_step_like_resolved_ones():
    """autograd returns x @ W.mH's gradient as a conjugate view; the step must read it as its values."""
    W = _param(8, dtype=torch.complex64, seed=3)
    x = torch.randn(4, 8, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    ((x @ W.mH).abs() ** 2).sum().backward()
    assert W.grad.is_conj()
    R = torch.nn.Parameter(W.detach().clone())
    R.grad = W.grad.resolve_conj()
    for base in ("rmsprop", "sgd"):
        ProjUNN([W], lr=1e-2, base=base, seed=0).step()
        ProjUNN([R], lr=1e-2, base=base, seed=0).step()
        assert torch.equal(W, R)
        assert uu.unitarity_error(W.detach().numpy()) < 1e-5


def test_a_conjugate_view_parameter_is_refused_at_construction():
    W0 = orthogonal_(torch.empty(6, 6, dtype=torch.complex64), rng=0)
    with pytest.raises(ValueError, match=r"parameter 0 is a lazy conjugate \(or negative\) view"):
        ProjUNN([torch.nn.Parameter(W0.conj())])


def test_a_tensor_learning_rate_acts_as_its_value():
    W, V = _param(8, seed=4), _param(8, seed=4)
    grad = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    W.grad, V.grad = grad.clone(), grad.clone()
    ProjUNN([W], lr=torch.tensor(0.01, dtype=torch.float64), seed=0).step()
    ProjUNN([V], lr=0.01, seed=0).step()
    assert torch.equal(W, V)
    with pytest.raises(ValueError, match="lr must be in"):
        ProjUNN([_param(4)], lr=torch.tensor(float("nan")))


def test_a_group_made_unitary_between_steps_names_the_parameter():
    b = torch.nn.Parameter(torch.zeros(16))
    opt = ProjUNN([{"params": [b], "unitary": False}], lr=1e-2)
    b.grad = torch.ones(16)
    opt.param_groups[0]["unitary"] = True
    with pytest.raises(ValueError, match=r"param group 0: parameter 0 has shape \(16,\)"):
        opt.step()
    assert torch.equal(b, torch.zeros(16))


def test_a_group_made_unitary_between_steps_is_checked_for_unitarity_at_its_first_step():
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(6, 6))  # square, but not orthogonal
    opt = ProjUNN([{"params": [W], "unitary": False}], lr=1e-2)
    W.grad = torch.randn(6, 6)
    opt.step()  # an ordinary step: W is any matrix
    opt.param_groups[0]["unitary"] = True
    before = _snapshot([W], opt)
    with pytest.raises(ValueError, match=r"param group 0: parameter 0 is not unitary"):
        opt.step()
    _assert_same(before, _snapshot([W], opt))
    with torch.no_grad():
        orthogonal_(W, rng=1)
    opt.step()  # now orthogonal: checked once, then stepped
    assert uu.unitarity_error(W) < 1e-5
    # unitary -> ordinary -> unitary: the ordinary step left the manifold, so W is checked again
    opt.param_groups[0]["unitary"] = False
    W.grad = torch.randn(6, 6)
    opt.step()
    opt.param_groups[0]["unitary"] = True
    with pytest.raises(ValueError, match=r"param group 0: parameter 0 is not unitary"):
        opt.step()
    # check_unitary=False keeps its meaning: no check, the user's responsibility
    V = torch.nn.Parameter(torch.randn(6, 6))
    loose = ProjUNN([{"params": [V], "unitary": False}], lr=1e-2, check_unitary=False)
    loose.param_groups[0]["unitary"] = True
    V.grad = torch.randn(6, 6)
    loose.step()


def test_a_zero_gradient_entry_with_eps_zero_names_the_rule_not_the_gradient():
    W = _param(6, dtype=torch.float32)
    opt = ProjUNN([W], lr=1e-2, eps=0.0, seed=0)
    W.grad = torch.randn(6, 6)
    W.grad[2] = 0.0  # RMSprop: 0 / (sqrt(0) + 0)
    before = _snapshot([W], opt)
    with pytest.raises(uu.NonFiniteError, match=r"param group 0: parameter 0: the rmsprop direction is not finite"):
        opt.step()
    _assert_same(before, _snapshot([W], opt))
    W.grad[2, 3] = float("nan")  # a non-finite gradient is still named as such
    with pytest.raises(uu.NonFiniteError, match=r"param group 0: parameter 0: the gradient contains NaN"):
        opt.step()
    _assert_same(before, _snapshot([W], opt))


def test_an_ordinary_parameter_with_overlapping_memory_is_refused_before_anything_is_written():
    W = _param(4)
    e = torch.nn.Parameter(torch.zeros(1).expand(4))  # four entries, one memory location
    opt = ProjUNN([{"params": [W]}, {"params": [e], "unitary": False}], lr=1e-2, seed=0)
    W.grad, e.grad = torch.randn(4, 4, dtype=W.dtype), torch.ones(4)
    before = _snapshot([W, e], opt)
    with pytest.raises(ValueError, match=r"param group 1: parameter 0 has overlapping memory"):
        opt.step()
    _assert_same(before, _snapshot([W, e], opt))


def test_a_parameter_on_an_unsupported_device_is_named():
    meta = torch.nn.Parameter(torch.empty(4, 4, device="meta"))
    with pytest.raises(ValueError, match=r"param group 0: parameter 0 is on device meta"):
        ProjUNN([meta], check_unitary=False)


def test_torch_manual_seed_reproduces_initialisers_and_unseeded_optimizers():
    def run(seed):
        torch.manual_seed(seed)
        W = torch.nn.Parameter(orthogonal_(torch.empty(8, 8)))
        inits = [henaff_(torch.empty(6, 6)), cayley_(torch.empty(6, 6))]
        opt = ProjUNN([W], lr=0.1, sketch="randomized")  # seed=None: drawn from torch's generator
        for _ in range(3):
            W.grad = torch.randn(8, 8)
            opt.step()
        return [W.detach().clone(), *inits]

    first, again, other = run(0), run(0), run(1)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[1], other[1])
    gen = torch.Generator().manual_seed(5)  # a torch.Generator seeds the draw too
    assert torch.equal(orthogonal_(torch.empty(5, 5), rng=gen), orthogonal_(torch.empty(5, 5), rng=gen.manual_seed(5)))
