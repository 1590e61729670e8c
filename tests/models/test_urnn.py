"""The unitary RNN: gradients against finite differences, the forward pass against a plain loop, API checks."""

from __future__ import annotations

import numpy as np
import pytest

import unitary_update as uu
from unitary_update.models.urnn import INITS, URNN, init_recurrent


def make_model(complex_, output, loss, *, n=6, inputs=3, outputs=4, seed=1):
    model = URNN(inputs, n, outputs, complex=complex_, output=output, loss=loss, rng=seed)
    rng = np.random.default_rng(seed + 100)
    # move away from the zero readout and the near-zero bias of the initialisation, so every
    # gradient is non-trivial and units are both active and inactive
    model.params["O"][...] = rng.standard_normal(model.params["O"].shape)
    model.params["b"][...] = rng.uniform(-0.5, 0.3, n)
    model.params["c"][...] = rng.standard_normal(outputs)
    return model


def make_data(model, batch=3, T=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, T, model.input_size))
    steps = (T,) if model.output == "sequence" else ()
    if model.loss == "cross_entropy":
        y = rng.integers(0, model.output_size, (batch, *steps))
    else:
        y = rng.standard_normal((batch, *steps, model.output_size))
    return x, y


def numerical_grads(model, x, y, h=1e-6):
    """Central differences of the loss; complex entries as dL/dRe + i dL/dIm."""
    out = {}
    for name, p in model.params.items():
        num = np.zeros(p.shape, dtype=p.dtype)
        units = (1.0, 1j) if p.dtype.kind == "c" else (1.0,)
        for idx in np.ndindex(p.shape):
            for unit in units:
                old = p[idx]
                p[idx] = old + h * unit
                plus = model.evaluate(x, y)["loss"]
                p[idx] = old - h * unit
                minus = model.evaluate(x, y)["loss"]
                p[idx] = old
                num[idx] += (plus - minus) / (2 * h) * unit
        out[name] = num
    return out


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("output", ["sequence", "last"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_gradients_match_finite_differences(complex_, output, loss):
    model = make_model(complex_, output, loss)
    x, y = make_data(model)
    value, grads = model.loss_and_grads(x, y)
    assert value == pytest.approx(model.evaluate(x, y)["loss"], rel=1e-14)
    numeric = numerical_grads(model, x, y)
    for name, p in model.params.items():
        assert grads[name].shape == p.shape, name
        assert grads[name].dtype == p.dtype, name
        err = np.linalg.norm(grads[name] - numeric[name]) / np.linalg.norm(numeric[name])
        assert err < 1e-6, (name, err)


def reference_forward(model, x):
    """The model's definition, one sequence and one step at a time (independent of the buffers)."""
    p = model.params
    W, V, b, out_w, c = p["W"], p["V"], p["b"], p["O"], p["c"]
    outs = []
    for seq in x:
        h = np.zeros(model.hidden_size, dtype=W.dtype)
        logits = []
        for xt in seq:
            z = W @ h + V @ xt
            mag = np.abs(z)
            h = np.where(mag > 0, np.maximum(mag + b, 0) * z / np.where(mag > 0, mag, 1), 0)
            read = np.concatenate([h.real, h.imag]) if model.complex else h
            logits.append(out_w @ read + c)
        outs.append(np.array(logits) if model.output == "sequence" else logits[-1])
    return np.array(outs)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("output", ["sequence", "last"])
@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_forward_matches_step_by_step_reference(complex_, output, kernels):
    model = make_model(complex_, output, "cross_entropy", n=9)
    x, _ = make_data(model, batch=4, T=7)
    with uu.options(backend=kernels):
        got = model.forward(x)
    np.testing.assert_allclose(got, reference_forward(model, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_numba_and_numpy_kernels_give_the_same_gradients(complex_):
    model = make_model(complex_, "sequence", "cross_entropy", n=12)
    x, y = make_data(model, batch=5, T=9)
    with uu.options(backend="numba"):
        loss_a, ga = model.loss_and_grads(x, y)
    with uu.options(backend="numpy"):
        loss_b, gb = model.loss_and_grads(x, y)
    assert loss_a == pytest.approx(loss_b, rel=1e-13)
    for name in ga:
        np.testing.assert_allclose(ga[name], gb[name], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_factored_recurrent_gradient(complex_):
    model = make_model(complex_, "last", "mse")
    x, y = make_data(model, batch=4, T=6)
    _, dense = model.loss_and_grads(x, y)
    dW = dense["W"].copy()
    _, factored = model.loss_and_grads(x, y, factored=True)
    X, Y = factored["W"]
    assert X.shape == Y.shape == (6, 4 * 6)
    np.testing.assert_allclose(X @ Y.conj().T, dW, rtol=1e-12, atol=1e-14)
    A, B = uu.sketch((X, Y), 6, method="exact")
    np.testing.assert_allclose(A @ B.conj().T, dW, rtol=1e-9, atol=1e-12)


def test_float32_model_stays_float32_and_matches_float64():
    m64 = make_model(False, "sequence", "cross_entropy", n=16)
    m32 = URNN(3, 16, 4, dtype=np.float32, rng=1)
    for k, v in m64.params.items():
        m32.params[k][...] = v
    x, y = make_data(m64, batch=3, T=8)
    l64, g64 = m64.loss_and_grads(x, y)
    l32, g32 = m32.loss_and_grads(x.astype(np.float32), y)
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:
        assert g32[k].dtype == np.float32, k
        np.testing.assert_allclose(g32[k], g64[k], rtol=2e-3, atol=1e-5 * np.abs(g64[k]).max())


def test_unlabelled_positions_are_ignored():
    model = make_model(False, "sequence", "cross_entropy")
    x, y = make_data(model)
    y_masked = y.copy()
    y_masked[:, :3] = -1
    loss, _ = model.loss_and_grads(x, y_masked)
    logits = model.forward(x)[:, 3:]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, y[:, 3:, None], -1).mean()
    assert loss == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("method", INITS)
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_initialisers_are_unitary(method, complex_):
    W = init_recurrent(11, method, complex=complex_, rng=3)
    assert W.dtype == (np.complex128 if complex_ else np.float64)
    np.testing.assert_allclose(W.conj().T @ W, np.eye(11), atol=1e-12)
    np.testing.assert_array_equal(W, init_recurrent(11, method, complex=complex_, rng=3))


def test_initial_loss_is_uninformed():
    model = URNN(10, 8, 10, rng=0)
    x, y = make_data(model, T=30)
    assert model.evaluate(x, y)["loss"] == pytest.approx(np.log(10), rel=1e-12)


def test_shapes_and_dtypes_of_params():
    model = URNN(3, 5, 2, complex=True, dtype=np.float32, rng=0)
    p = model.params
    assert p["W"].shape == (5, 5)
    assert p["W"].dtype == np.complex64
    assert p["V"].shape == (5, 3)
    assert p["V"].dtype == np.complex64
    assert p["b"].dtype == np.float32
    assert p["O"].shape == (2, 10)
    assert p["c"].shape == (2,)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"output": "all"}, ValueError, "output must be one of"),
        ({"loss": "hinge"}, ValueError, "loss must be one of"),
        ({"init": "random"}, ValueError, "init must be one of"),
        ({"dtype": np.int32}, TypeError, "dtype must be float32 or float64"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        URNN(2, 3, 2, **kwargs)


def test_bad_sizes():
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        URNN(2, 0, 2)


def test_bad_inputs_name_the_argument():
    model = URNN(3, 4, 2, rng=0)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, T, 3\)"):
        model.forward(np.zeros((2, 5, 4)))
    with pytest.raises(TypeError, match="x must be real"):
        model.forward(np.zeros((2, 5, 3), dtype=complex))
    with pytest.raises(ValueError, match=r"y must have shape \(2, 5\)"):
        model.loss_and_grads(np.zeros((2, 5, 3)), np.zeros((2,), dtype=int))
    with pytest.raises(TypeError, match="integer class labels"):
        model.loss_and_grads(np.zeros((2, 5, 3)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="labels in y must be < output_size"):
        model.loss_and_grads(np.zeros((2, 5, 3)), np.full((2, 5), 2))
