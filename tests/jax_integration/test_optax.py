"""unitary_update.jax.projunn against UnitaryOptimizer; labels; retraction; the JAX copy-task example."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import unitary_update as uu
from unitary_update.optim import RMSprop, UnitaryOptimizer

_labels = pytest.importorskip("unitary_update.jax._optax")._labels

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")
uj = pytest.importorskip("unitary_update.jax")

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("update", ["project", "transport"])
def test_projunn_matches_unitary_optimizer_and_rmsprop(x64, update):
    """Same gradients, exact sketch: the unitary leaf follows UnitaryOptimizer(RMSprop), the rest RMSprop."""
    n, lr, steps = 10, 0.05, 4
    rng = np.random.default_rng(0)
    U0 = uu.random_unitary(n, dtype=np.float64, rng=rng)
    grads = [rng.standard_normal((n, n)) for _ in range(steps)]
    bias_grads = [rng.standard_normal(n) for _ in range(steps)]

    U = U0.copy()
    opt = UnitaryOptimizer(RMSprop(lr), rank=2, update=update, sketch="exact")
    bias, v = np.zeros(n), np.zeros(n)
    for g, gb in zip(grads, bias_grads, strict=True):
        opt.step(U, g)
        v = 0.99 * v + 0.01 * gb**2
        bias = bias - lr * gb / (np.sqrt(v) + 1e-8)

    tx = uj.projunn(lr, unitary_labels={"U": True, "b": False}, rank=2, update=update, sketch="exact")
    params = {"U": jnp.asarray(U0), "b": jnp.zeros(n)}
    state = tx.init(params)
    apply = jax.jit(lambda p, s, g: _apply(tx, p, s, g))
    for g, gb in zip(grads, bias_grads, strict=True):
        params, state = apply(params, state, {"U": jnp.asarray(g), "b": jnp.asarray(gb)})
    np.testing.assert_allclose(np.asarray(params["U"]), U, atol=1e-12)
    np.testing.assert_allclose(np.asarray(params["b"]), bias, atol=1e-12)
    assert uu.unitarity_error(np.asarray(params["U"])) < 1e-13


def _apply(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_labels_as_callable_or_prefix_and_errors(x32):
    U = jnp.asarray(uu.random_unitary(6, dtype=np.float32, rng=1))
    params = {"rnn": {"W": U, "R": U}, "out": jnp.ones((3, 6))}
    grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
    prefix = {"rnn": True, "out": False}  # one bool for a whole subtree
    assert _labels(prefix, params) == _labels(lambda p: {"rnn": {"R": True, "W": True}, "out": False}, params)
    assert _labels(prefix, params) == [False, True, True]  # leaves in tree order: out, rnn.R, rnn.W
    for labels in (prefix,):
        tx = uj.projunn(0.1, unitary_labels=labels, rank=1, seed=3)
        new, _ = jax.jit(lambda p, s, g, tx=tx: _apply(tx, p, s, g))(params, tx.init(params), grads)
        for name in ("W", "R"):
            assert uu.unitarity_error(np.asarray(new["rnn"][name])) < 1e-5
            assert float(jnp.abs(new["rnn"][name] - U).max()) > 1e-3  # it moved
        # RMSprop's first step: -lr g / sqrt(0.01 g^2) = -10 lr, from 1 to 0
        np.testing.assert_allclose(np.asarray(new["out"]), 0.0, atol=1e-5)

    def update_with(labels, with_params=True):
        tx = uj.projunn(0.1, unitary_labels=labels)
        return tx.update(grads, tx.init(params), params if with_params else None)

    with pytest.raises(
        ValueError, match=r"unitary leaf params\['out'\] must have shape \(\.\.\., N, N\); got \(3, 6\)"
    ):
        update_with({"rnn": True, "out": True})
    with pytest.raises(ValueError, match="needs the parameters"):
        update_with(prefix, with_params=False)
    # 0 x 0 leaves and rank > N are named by init (a step would fail inside the sketch, unnamed)
    empty = {"rnn": {"W": U, "R": jnp.zeros((2, 0, 0))}, "out": jnp.ones((3, 6))}
    with pytest.raises(ValueError, match=r"unitary leaf params\['rnn'\]\['R'\] must have N >= 1"):
        uj.scale_by_projunn(unitary_labels=prefix).init(empty)
    with pytest.raises(ValueError, match=r"params\['rnn'\]\['R'\]: rank must satisfy 1 <= rank <= N = 6; got 7"):
        uj.scale_by_projunn(unitary_labels=prefix, rank=7, check_unitary=False).init(params)
    stack = {"rnn": {"W": U, "R": jnp.zeros((0, 6, 6))}, "out": jnp.ones((3, 6))}  # an empty stack is fine
    tx = uj.scale_by_projunn(unitary_labels=prefix)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, stack), tx.init(stack), stack)
    assert updates["rnn"]["R"].shape == (0, 6, 6)
    # bad labels are found by init already, before any step (both transformations)
    for transformation in (uj.scale_by_projunn, lambda **kw: uj.retract_every(10, **kw)):
        with pytest.raises(ValueError, match=r"unitary leaf params\['out'\] must have shape"):
            transformation(unitary_labels={"rnn": True, "out": True}).init(params)
    with pytest.raises(TypeError, match="unitary_labels must hold Python bools"):
        update_with({"rnn": jnp.array(True), "out": False})
    # None over parameters (it was dropped, and a zip of unequal lengths failed, naming nothing)
    with pytest.raises(TypeError, match=r"unitary_labels must hold Python bools.*got None for a subtree"):
        update_with({"rnn": True, "out": None})
    with pytest.raises(TypeError, match="got None for a subtree"):
        uj.projunn(0.1, unitary_labels={"rnn": {"W": True, "R": None}, "out": False}).init(params)
    # None over an empty subtree (a None in params) is fine
    with_none = {"rnn": {"W": U}, "out": None}
    for labels in ({"rnn": True, "out": None}, {"rnn": True, "out": False}):
        assert _labels(labels, with_none) == [True]
    with pytest.raises(ValueError, match="unitary_labels must be a pytree of bools"):
        update_with({"rnn": True})
    with pytest.raises(TypeError, match=r"base must be an optax\.GradientTransformation"):
        uj.projunn(0.1, unitary_labels=prefix, base="adam")
    with pytest.raises(ValueError, match="unknown sketch method"):
        uj.projunn(0.1, unitary_labels=prefix, sketch="svd")


def test_sketch_keys_live_in_the_state_and_change_every_step(x32):
    U = jnp.asarray(uu.random_unitary(8, dtype=np.float32, rng=2))
    params, grads = {"W": U}, {"W": jnp.asarray(np.random.default_rng(3).standard_normal((8, 8)), jnp.float32)}
    tx = uj.scale_by_projunn(unitary_labels={"W": True}, rank=1, update="project", sketch="lsi", seed=5)
    s0 = tx.init(params)
    u1, s1 = tx.update(grads, s0, params)
    u2, s2 = tx.update(grads, s1, params)
    u1b, _ = tx.update(grads, s0, params)
    np.testing.assert_array_equal(np.asarray(u1["W"]), np.asarray(u1b["W"]))  # the state decides the draw
    assert float(jnp.abs(u1["W"] - u2["W"]).max()) > 1e-4  # a new key each step
    assert int(s2.count) == 2


def test_float32_drift_stays_below_1e_5_over_10000_steps_with_retraction(x32):
    n, steps = 8, 10_000
    params = {"W": jnp.asarray(uu.random_unitary(n, dtype=np.float32, rng=4))}
    tx = uj.projunn(1e-2, unitary_labels={"W": True}, rank=1, sketch="lsi", retract_every=100)

    @jax.jit
    def run(params, state, key):
        def body(carry, key):
            p, s = carry
            p, s = _apply(tx, p, s, {"W": jax.random.normal(key, (n, n))})
            return (p, s), None

        return jax.lax.scan(body, (params, state), jax.random.split(key, steps))[0]

    params, state = run(params, tx.init(params), jax.random.key(6))
    W = np.asarray(params["W"])
    assert W.dtype == np.float32
    assert uu.unitarity_error(W) <= 1e-5
    assert int(state[-1].count) == steps  # the retraction's own counter saw every step


def test_retract_every_fires_on_multiples_of_n_only(x32):
    M = jnp.asarray(uu.random_unitary(6, dtype=np.float32, rng=7)) * 1.01  # off the manifold
    params, zero = {"W": M}, {"W": jnp.zeros((6, 6))}
    tx = uj.retract_every(3, unitary_labels={"W": True}, method="newton_schulz")
    state = tx.init(params)
    fired = []
    for _ in range(6):
        updates, state = tx.update(zero, state, params)
        fired.append(bool(jnp.abs(updates["W"]).max() > 0))
    assert fired == [False, False, True, False, False, True]
    assert uu.unitarity_error(np.asarray(M + updates["W"])) < 1e-5


def test_jax_copy_task_example_converges():
    spec = importlib.util.spec_from_file_location("jax_copy_task", EXAMPLES / "jax_copy_task.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    history = example.train(200, delay=10, hidden=32, batch=64, lr=3e-3, seed=0)
    first, last = np.mean(history["loss"][:5]), np.mean(history["loss"][-10:])
    assert last < 0.6 * example.baseline(10), (first, last)  # well below the memoryless baseline
    assert max(history["orthogonality_error"]) < 1e-5


def test_jax_example_without_jax_names_the_extra():
    code = (
        "import runpy, sys; sys.modules['jax'] = None; "
        f"runpy.run_path({str(EXAMPLES / 'jax_copy_task.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == 'this example needs jax and optax: pip install "unitary_update[jax]"\n'


# ---- client code: closures under jit, inject_hyperparams, checkpoints, chains, non-unitary leaves ----
def _unitary_params(n=8, seed=0):
    return {"W": jnp.asarray(uu.random_unitary(n, dtype=np.float32, rng=seed)), "b": jnp.zeros(n)}


def test_concrete_params_closed_over_by_jit_cond_and_scan(x32):
    """A concrete array inside another trace: the finite check defers to the trace instead of failing."""
    params = _unitary_params()
    grads = {"W": 0.01 * jnp.ones((8, 8)), "b": jnp.ones(8)}
    tx = uj.projunn(1e-2, unitary_labels={"W": True, "b": False})
    state = tx.init(params)
    expected, _ = tx.update(grads, state, params)
    closed, _ = jax.jit(lambda g, s: tx.update(g, s, params))(grads, state)
    np.testing.assert_allclose(np.asarray(closed["W"]), np.asarray(expected["W"]), atol=1e-6)
    guarded = optax.apply_if_finite(tx, max_consecutive_errors=2)
    updates, _ = guarded.update(grads, guarded.init(params), params)  # its lax.cond traces the update
    np.testing.assert_allclose(np.asarray(updates["W"]), np.asarray(expected["W"]), atol=1e-6)
    W, G = params["W"], 1e-2 * grads["W"]
    key = jax.random.key(1)
    np.testing.assert_allclose(
        np.asarray(jax.jit(lambda g: uj.step(W, g, key=key))(G)), np.asarray(uj.step(W, G, key=key)), atol=1e-6
    )


def test_inject_hyperparams_with_static_args_and_a_clear_error_without(x32):
    params = _unitary_params()
    grads = {"W": 0.01 * jnp.ones((8, 8)), "b": jnp.ones(8)}
    labels = {"W": True, "b": False}
    with pytest.raises(TypeError, match=r"rank must be a Python integer .*static_args=\('rank', 'seed'"):
        optax.inject_hyperparams(uj.projunn)(learning_rate=1e-2, unitary_labels=labels, rank=2).init(params)
    injected = optax.inject_hyperparams(uj.projunn, static_args=("rank", "seed", "oversampling"))
    tx = injected(learning_rate=1e-2, unitary_labels=labels, rank=2, oversampling=3)
    plain = uj.projunn(1e-2, unitary_labels=labels, rank=2, oversampling=3)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    expected, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["W"]), np.asarray(expected["W"]), atol=1e-6)
    state.hyperparams["learning_rate"] = jnp.asarray(0.0)  # a hyperparameter changed in the state
    frozen, _ = jax.jit(tx.update)(grads, state, params)
    np.testing.assert_allclose(np.asarray(frozen["W"]), 0.0, atol=1e-7)
    with pytest.raises(TypeError, match="oversampling"):
        uj.projunn(1e-2, unitary_labels=labels, sketch="lsi", oversampling=3)


def test_state_converts_to_numpy_and_old_typed_key_states_give_the_same_steps(x32, tmp_path):
    params = _unitary_params()
    grads = {"W": 0.01 * jnp.ones((8, 8)), "b": jnp.ones(8)}
    tx = uj.projunn(1e-2, unitary_labels={"W": True, "b": False}, rank=2)
    state = tx.init(params)
    saved = jax.tree.map(np.asarray, state)  # what NumPy-based checkpointing does
    np.savez(tmp_path / "state.npz", *jax.tree_util.tree_leaves(saved))
    restored = jax.tree.map(jnp.asarray, saved)
    a, _ = tx.update(grads, state, params)
    b, _ = tx.update(grads, restored, params)
    inner = list(state)  # the chain's states: base, learning rate, projUNN
    inner[2] = uj.ProjUNNState(count=inner[2].count, key=jax.random.key(0))  # the state's former form
    c, _ = tx.update(grads, tuple(inner), params)
    for other in (b, c):
        np.testing.assert_array_equal(np.asarray(other["W"]), np.asarray(a["W"]))


def test_init_refuses_a_leaf_that_is_not_unitary(x32):
    params = _unitary_params()
    params["W"] = params["W"] * 1.5
    tx = uj.projunn(1e-2, unitary_labels={"W": True, "b": False})
    with pytest.raises(ValueError, match=r"unitary leaf params\['W'\] is not unitary: \|\|W\^H W - I\|\|_F = "):
        tx.init(params)
    loose = uj.projunn(1e-2, unitary_labels={"W": True, "b": False}, check_unitary=False)
    assert int(loose.init(params)[2].count) == 0
    jax.jit(tx.init)(_unitary_params())  # traced leaves are not checked (and unitary ones pass)


def test_a_unitary_leaf_of_another_dtype_is_named(x32):
    params = {"W": jnp.eye(4, dtype=jnp.bfloat16)}
    with pytest.raises(TypeError, match=r"unitary leaf params\['W'\] has dtype bfloat16"):
        uj.projunn(1e-2, unitary_labels=True).init(params)
