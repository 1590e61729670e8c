"""docs/results/reference_exprnn_jax.py models what URNN models (issue 17's expRNN-style reference).

The reference is only a fair comparison if its network is ours: same cell, same readout, same
loss. Its JAX autograd is also an independent check of URNN's hand-written BPTT.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from unitary_update.models.urnn import URNN

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "results" / "reference_exprnn_jax.py"


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("reference_exprnn_jax", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model_and_batch(seed: int):
    model = URNN(1, 12, 10, output="last", loss="cross_entropy", dtype=np.float64, rng=seed)
    gen = np.random.default_rng(seed + 100)
    model.params["O"] = gen.standard_normal((10, 12)) * 0.3  # a nonzero readout: every gradient nonzero
    model.params["c"] = gen.standard_normal(10) * 0.1
    model.params["V"] = model.params["V"] * 4
    x = gen.standard_normal((5, 30, 1))
    y = gen.integers(0, 10, 5)
    return model, x, y


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_loss_and_gradients_match_urnn(reference, x64, seed):
    import jax
    import jax.numpy as jnp

    model, x, y = _model_and_batch(seed)
    loss, grads = model.loss_and_grads(x, y)
    _, loss_fn = reference.make_model(jnp.asarray(model.params["W"]), "euclidean")
    ep = {k: jnp.asarray(model.params[k]) for k in ("V", "b", "O", "c")}
    (ref_loss, _), (gw, ge) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        {"W": jnp.asarray(model.params["W"])}, ep, jnp.asarray(x), jnp.asarray(y)
    )
    np.testing.assert_allclose(float(ref_loss), loss, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gw["W"]), grads["W"], rtol=1e-9, atol=1e-12)
    for name in ("V", "b", "O", "c"):
        np.testing.assert_allclose(np.asarray(ge[name]), grads[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_reference_expm_parametrisation_starts_at_w0_and_stays_orthogonal(reference, x64):
    import jax.numpy as jnp
    from scipy.linalg import expm

    model, _, _ = _model_and_batch(0)
    W0 = model.params["W"]
    recurrent, _ = reference.make_model(jnp.asarray(W0), "expm")
    np.testing.assert_allclose(np.asarray(recurrent({"A": jnp.zeros((12, 12))})), W0, atol=1e-14)
    A = np.random.default_rng(3).standard_normal((12, 12))
    W = np.asarray(recurrent({"A": jnp.asarray(A)}))
    np.testing.assert_allclose(W, W0 @ expm(A - A.T), atol=1e-12)
    np.testing.assert_allclose(W.T @ W, np.eye(12), atol=1e-12)
