"""The unitary RNN: gradients against finite differences, the forward pass against a plain loop, API checks."""

from __future__ import annotations

import numpy as np
import pytest

import unitary_update as uu
from unitary_update.models.urnn import INITS, URNN, init_recurrent


def make_model(complex_, output, loss, *, n=6, inputs=3, outputs=4, seed=1, activation="modrelu"):
    model = URNN(inputs, n, outputs, complex=complex_, output=output, loss=loss, activation=activation, rng=seed)
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


KINDS = [(False, "modrelu"), (True, "modrelu"), (False, "relu")]
KIND_IDS = ["real", "complex", "real-relu"]


@pytest.mark.parametrize(("complex_", "activation"), KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("output", ["sequence", "last"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_gradients_match_finite_differences(complex_, activation, output, loss):
    model = make_model(complex_, output, loss, activation=activation)
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
            if model.activation == "relu":
                h = np.maximum(z + b, 0)
            else:
                h = np.where(mag > 0, np.maximum(mag + b, 0) * z / np.where(mag > 0, mag, 1), 0)
            read = np.concatenate([h.real, h.imag]) if model.complex else h
            logits.append(out_w @ read + c)
        outs.append(np.array(logits) if model.output == "sequence" else logits[-1])
    return np.array(outs)


@pytest.mark.parametrize(("complex_", "activation"), KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("output", ["sequence", "last"])
@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_forward_matches_step_by_step_reference(complex_, activation, output, kernels):
    model = make_model(complex_, output, "cross_entropy", n=9, activation=activation)
    x, _ = make_data(model, batch=4, T=7)
    with uu.options(backend=kernels):
        got = model.forward(x)
    np.testing.assert_allclose(got, reference_forward(model, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("complex_", "activation"), KINDS, ids=KIND_IDS)
def test_numba_and_numpy_kernels_give_the_same_gradients(complex_, activation):
    model = make_model(complex_, "sequence", "cross_entropy", n=12, activation=activation)
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
        ({"activation": "tanh"}, ValueError, "activation must be one of 'modrelu', 'relu'"),
        ({"activation": None}, TypeError, "activation must be one of"),
        ({"activation": "relu", "complex": True}, ValueError, "activation='relu' needs a real model"),
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


def _blas_threads():
    from unitary_update._threads import blas_libraries

    return [lib.num_threads for lib in blas_libraries()]


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("output", ["sequence", "last"])
def test_blocks_on_threads_give_the_one_thread_result(monkeypatch, complex_, output):
    """Batch rows in 3 blocks on 3 threads (forced; the shapes are far below the threshold) give the
    gradients of one block, dense and factored; the BLAS thread limits are restored afterwards."""
    from unitary_update.models import urnn

    model = make_model(complex_, output, "cross_entropy", n=8)
    x, y = make_data(model, batch=7, T=6)
    loss_1, grads_1 = model.loss_and_grads(x, y)
    logits_1 = model.forward(x)
    before = _blas_threads()
    monkeypatch.setattr(urnn, "_threads", lambda T, batch, n: 3)
    loss_3, grads_3 = model.loss_and_grads(x, y)
    assert _blas_threads() == before
    assert loss_3 == pytest.approx(loss_1, rel=1e-13)
    for name in grads_1:
        np.testing.assert_allclose(grads_3[name], grads_1[name], rtol=1e-12, atol=1e-14, err_msg=name)
        assert grads_3[name].flags.c_contiguous, name
    np.testing.assert_allclose(model.forward(x), logits_1, rtol=1e-13, atol=1e-14)
    _, factored = model.loss_and_grads(x, y, factored=True)
    X, Y = factored["W"]
    np.testing.assert_allclose(X @ Y.conj().T, grads_1["W"], rtol=1e-12, atol=1e-14)


def test_concurrent_calls_restore_the_blas_limits(monkeypatch):
    """Models trained from several threads at once, each running its blocks on threads, leave the
    BLAS thread counts as they were (the one-thread limit is counted, not nested)."""
    import threading

    from unitary_update.models import urnn

    monkeypatch.setattr(urnn, "_threads", lambda T, batch, n: 2)
    before = _blas_threads()
    models = [make_model(False, "sequence", "cross_entropy", n=6, seed=s) for s in range(3)]
    x, y = make_data(models[0], batch=4, T=5)
    expected = [m.loss_and_grads(x, y)[1]["W"].copy() for m in models]
    errors = []

    def train(model, want):
        try:
            for _ in range(20):
                np.testing.assert_allclose(model.loss_and_grads(x, y)[1]["W"], want, rtol=1e-12)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=train, args=pair) for pair in zip(models, expected, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert _blas_threads() == before


def test_thread_count_follows_the_blas_limit(monkeypatch):
    from threadpoolctl import threadpool_limits

    from unitary_update.models import urnn

    monkeypatch.setattr(urnn, "_MIN_WORK", 0)
    monkeypatch.setattr(urnn, "os", type("os", (), {"sched_getaffinity": staticmethod(lambda pid: set(range(8)))}))
    with threadpool_limits(limits=1, user_api="blas"):
        assert urnn._threads(10, 128, 8) == 1
    with threadpool_limits(limits=3, user_api="blas"):
        assert urnn._threads(10, 128, 8) == 3
        assert urnn._threads(10, 40, 8) == 2  # blocks of at least _MIN_ROWS rows
        assert urnn._split(0, 40, 3) == [(0, 13), (13, 26), (26, 40)]
    assert urnn._split(1, 1, 2) == []
