"""Hostile inputs to the models: all-or-nothing layer steps, checked inputs, validated constructors.

The reference for "nothing changed" is a deep copy of the whole state taken before the failing
call (stacks, step count, generator state), compared bit for bit afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest

import unitary_update as uu
from unitary_update.models.conv import ConvGradient, OrthogonalConv2d, frequency_layout, maxmin
from unitary_update.models.urnn import URNN


def _layer_state(layer: OrthogonalConv2d, gen: np.random.Generator) -> tuple:
    return layer.U.copy(), layer.Q.copy(), layer.steps, gen.bit_generator.state


def _assert_same_state(before: tuple, after: tuple) -> None:
    U0, Q0, steps0, rng0 = before
    U1, Q1, steps1, rng1 = after
    assert np.array_equal(U0, U1)
    assert U0.dtype == U1.dtype
    assert np.array_equal(Q0, Q1)
    assert Q0.dtype == Q1.dtype
    assert steps0 == steps1
    assert rng0 == rng1


@pytest.fixture
def real_layer_and_grad():
    layer = OrthogonalConv2d(2, 4, (4, 4), rng=0)
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4))
    _, grad = layer.backward(x, layer(x))
    return layer, grad


def _bad_q(grad: ConvGradient, kind: str) -> ConvGradient:
    P, X = grad.Q
    if kind == "complex":
        return ConvGradient(grad.U, (P + 0j, X))
    if kind == "nan":
        bad = P.copy()
        bad[-1, -1, -1] = np.nan
        return ConvGradient(grad.U, (bad, X))
    if kind == "shape":
        return ConvGradient(grad.U, (P[:, :-1], X[:, :-1]))
    if kind == "not_array":
        return ConvGradient(grad.U, (P.tolist(), X))
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [
        ("complex", TypeError, r"grad\.Q\[0\] is complex"),
        ("nan", uu.NonFiniteError, r"grad\.Q\[0\] contains NaN"),
        ("shape", ValueError, r"grad\.Q has factor shapes"),
        ("not_array", TypeError, r"grad\.Q\[0\] must be an array"),
    ],
)
@pytest.mark.parametrize("update", ["transport", "project", "euclidean"])
def test_conv_step_that_fails_on_the_second_stack_writes_neither(real_layer_and_grad, kind, error, match, update):
    # the U stack comes first: a bad Q gradient must not leave U updated
    layer, grad = real_layer_and_grad
    gen = np.random.default_rng(7)
    before = _layer_state(layer, gen)
    with pytest.raises(error, match=match):
        layer.step(_bad_q(grad, kind), lr=0.1, rank=2, update=update, rng=gen)
    _assert_same_state(before, _layer_state(layer, gen))
    # and the layer still works: a good step updates both stacks.  (The fixture's loss ||y||^2 / 2
    # is invariant under an orthogonal layer, so its gradient has no tangent component and moves
    # neither stack beyond rounding; a random output gradient does.)
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4))
    _, tangent = layer.backward(x, np.random.default_rng(2).standard_normal(layer(x).shape))
    layer.step(tangent, lr=0.1, rank=2, update="transport", rng=gen)
    assert layer.steps == 1
    assert np.abs(layer.U - before[0]).max() > 1e-6
    assert np.abs(layer.Q - before[1]).max() > 1e-6
    assert uu.unitarity_error(layer.U) < 1e-12
    assert uu.unitarity_error(layer.Q) < 1e-12


def test_conv_euclidean_step_that_overflows_in_the_second_stack_writes_neither(real_layer_and_grad):
    layer, grad = real_layer_and_grad
    P, X = grad.Q
    huge = ConvGradient(grad.U, (np.full_like(P, 1e300), np.full_like(X, 1e300)))  # finite; P X^H is not
    gen = np.random.default_rng(7)
    before = _layer_state(layer, gen)
    with pytest.raises(uu.NonFiniteError, match="the step of Q is not finite"):
        layer.step(huge, lr=0.1, update="euclidean", rng=gen)
    _assert_same_state(before, _layer_state(layer, gen))


def test_conv_step_failing_in_the_drift_policy_of_the_second_stack_is_rolled_back(real_layer_and_grad):
    layer, grad = real_layer_and_grad

    class Flaky:
        """Retracts the first stack, raises on the second."""

        def __init__(self) -> None:
            self.calls = 0

        def maybe_retract(self, U, *, step=None):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("policy failed")
            return False

    gen = np.random.default_rng(3)
    before = _layer_state(layer, gen)
    with pytest.raises(RuntimeError, match="policy failed"):
        layer.step(grad, lr=0.1, rank=1, rng=gen, drift=Flaky())
    _assert_same_state(before, _layer_state(layer, gen))


def test_conv_step_bad_settings_write_nothing(real_layer_and_grad):
    layer, grad = real_layer_and_grad
    gen = np.random.default_rng(0)
    before = _layer_state(layer, gen)
    for kwargs, error in [
        ({"lr": np.nan}, ValueError),
        ({"lr": 0.1, "rank": 5}, ValueError),
        ({"lr": 0.1, "rank": 1.5}, TypeError),
        ({"lr": 0.1, "sketch": "svd"}, ValueError),
        ({"lr": 0.1, "update": "cayley"}, ValueError),
        ({"lr": 0.1, "rng": "seed"}, TypeError),
    ]:
        with pytest.raises(error):
            layer.step(grad, rng=kwargs.pop("rng", gen), **kwargs)
    _assert_same_state(before, _layer_state(layer, gen))


def test_conv_step_on_an_empty_batch_changes_nothing_but_the_clock():
    layer = OrthogonalConv2d(2, 2, (3, 3), rng=0)
    x = np.zeros((0, 2, 3, 3))
    _, grad = layer.backward(x, layer(x))
    U, Q = layer.U.copy(), layer.Q.copy()
    layer.step(grad, lr=0.1)
    assert np.array_equal(layer.U, U)
    assert np.array_equal(layer.Q, Q)
    assert layer.steps == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_channels": 0}, ValueError, "in_channels must be >= 1"),
        ({"out_channels": True}, TypeError, "out_channels must be an integer"),
        ({"image_shape": (0, 3)}, ValueError, "image_shape H must be >= 1"),
        ({"image_shape": 4}, ValueError, r"image_shape must be a pair"),
        ({"dtype": np.float16}, TypeError, "dtype is float16"),
        ({"init": "zeros"}, ValueError, "unknown init"),
        ({"init": "identity", "rng": "x"}, TypeError, "rng must be"),
        ({"xp": object()}, ValueError, "xp must be the numpy or cupy module"),
    ],
)
def test_conv_constructor_names_the_setting(kwargs, error, match):
    args = {"in_channels": 1, "out_channels": 2, "image_shape": (3, 3), **kwargs}
    with pytest.raises(error, match=match):
        OrthogonalConv2d(args.pop("in_channels"), args.pop("out_channels"), args.pop("image_shape"), **args)


# ------------------------------------------------------------------------------------ URNN
def _model(**kwargs):
    return URNN(2, 4, 3, rng=0, **kwargs)


def _batch(T=5, batch=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, T, 2)), rng.integers(0, 3, (batch, T))


@pytest.mark.parametrize("method", ["forward", "evaluate", "loss_and_grads"])
def test_urnn_non_finite_x_is_refused_by_name(method):
    model = _model()
    x, y = _batch()
    x[1, 2, 0] = np.nan  # modReLU maps it to 0: without the check the loss stays finite, grads["V"] gets NaN
    args = (x,) if method == "forward" else (x, y)
    with pytest.raises(uu.NonFiniteError, match=r"^x contains NaN or Inf$"):
        getattr(model, method)(*args)
    with uu.options(check_finite=False):  # the switch turns the check off (the GPU hot path)
        _loss, grads = model.loss_and_grads(x, y)
    assert np.isnan(grads["V"]).any()


@pytest.mark.parametrize(
    ("y", "error", "match"),
    [
        (np.full((3, 5), 3), ValueError, r"labels in y must be < output_size = 3 .*got 3"),
        (np.full((3, 5), 10**12), ValueError, "labels in y must be < output_size"),
        (np.full((3, 5), 1.0), TypeError, "y must hold integer class labels"),
        (np.full((3, 5), True), TypeError, "y must hold integer class labels"),
        (np.zeros((3, 4), dtype=int), ValueError, r"y must have shape \(3, 5\)"),
        (np.ma.masked_array(np.zeros((3, 5), dtype=int)), TypeError, "y must be a plain array"),
    ],
)
def test_urnn_bad_labels_name_the_target(y, error, match):
    x, _ = _batch()
    with pytest.raises(error, match=match):
        _model().loss_and_grads(x, y)


def test_urnn_regression_targets_and_overflowing_inputs():
    model = URNN(2, 4, 3, output="last", loss="mse", rng=0)
    x, _ = _batch()
    with pytest.raises(uu.NonFiniteError, match=r"^y contains NaN or Inf$"):
        model.loss_and_grads(x, np.full((3, 3), np.inf))
    small = URNN(2, 4, 3, dtype=np.float32, rng=0)
    with pytest.raises(ValueError, match="x overflows the model's dtype float32"):
        small.forward(np.full((3, 5, 2), 1e300))


@pytest.mark.parametrize("shape", [(0, 5, 2), (3, 0, 2), (3, 5), (3, 5, 1)])
def test_urnn_empty_or_misshapen_x_is_refused_naming_x(shape):
    with pytest.raises(ValueError, match=r"^x must "):
        _model().forward(np.zeros(shape))


def test_urnn_nan_parameter_is_named():
    model = _model()
    model.params["V"][0, 0] = np.nan
    with pytest.raises(uu.NonFiniteError, match=r"params\['V'\] contains NaN"):
        model.forward(_batch()[0])


@pytest.mark.parametrize("complex_", [False, True])
def test_urnn_hidden_size_one_works(complex_):
    # N = 1: W is a 1 x 1 unitary; gradients checked against central differences of the loss
    model = URNN(2, 1, 3, complex=complex_, rng=0, init="haar")
    model.params["O"][:] = np.random.default_rng(1).standard_normal(model.params["O"].shape)
    x, y = _batch(T=4, batch=2)
    _loss, grads = model.loss_and_grads(x, y)
    assert abs(abs(model.params["W"][0, 0]) - 1) < 1e-15
    b0 = model.params["b"].copy()
    h = 1e-6
    model.params["b"][:] = b0 + h
    up = model.evaluate(x, y)["loss"]
    model.params["b"][:] = b0 - h
    down = model.evaluate(x, y)["loss"]
    model.params["b"][:] = b0
    assert grads["b"][0] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"complex": "yes"}, TypeError, "complex must be a bool"),
        ({"rng": 1.5}, TypeError, "rng must be"),
        ({"dtype": np.complex128}, TypeError, "dtype is complex128"),
        # hostile values found in review: an array name was read as cross-entropy, a number as a dtype
        ({"loss": np.array(["mse"])}, TypeError, "loss must be one of 'cross_entropy', 'mse'; got ndarray"),
        ({"output": ["last"]}, TypeError, "output must be one of"),
        ({"dtype": np.float32(1.0)}, TypeError, r"dtype must be float32 or float64 \(a dtype or its name\)"),
        ({"input_size": 10**400}, ValueError, "input_size, hidden_size and output_size too large"),
        ({"hidden_size": 10**9}, ValueError, "too large: the parameters would need about 10"),
    ],
)
def test_urnn_constructor_names_the_setting(kwargs, error, match):
    args = {"input_size": 2, "hidden_size": 3, "output_size": 2, **kwargs}
    with pytest.raises(error, match=match):
        URNN(args.pop("input_size"), args.pop("hidden_size"), args.pop("output_size"), **args)
    with pytest.raises(TypeError, match="hidden_size must be an integer"):
        URNN(2, 2.0, 2)


# ------------------------------------------------------------------ hostile arguments (review)
def test_conv_inputs_that_overflow_the_layer_dtype_are_refused_by_name():
    for dtype, value in [(np.float32, 1e300), (np.complex64, 1e300 + 0j)]:
        channels = 1 if dtype == np.float32 else 2
        layer = OrthogonalConv2d(channels, 2, (3, 3), dtype=dtype, rng=0)
        x = np.full((2, channels, 3, 3), value)  # float64 / complex128, finite, but not in float32
        with pytest.raises(ValueError, match=f"x overflows the layer's dtype {np.dtype(dtype)}: "):
            layer(x)  # was: a silent array of inf and NaN


def test_conv_float64_input_beyond_a_complex64_layer_and_near_max_inputs_are_refused():
    """float64 has complex64's itemsize but not its range; and the FFT sums of near-max entries overflow."""
    layer = OrthogonalConv2d(1, 2, (3, 3), dtype=np.complex64, rng=0)
    with pytest.raises(ValueError, match="x overflows the layer's dtype complex64: "):
        layer(np.full((1, 1, 3, 3), 1e300))  # was: NaN with RuntimeWarnings only
    for dtype in (np.float32, np.complex64):
        eye = OrthogonalConv2d(2, 2, (3, 3), dtype=dtype, init="identity", rng=0)
        near_max = np.full((1, 2, 3, 3), 2e38, dtype=dtype)
        with pytest.raises(ValueError, match="x overflows inside the layer's FFTs"):
            eye(near_max)  # was: NaN, though y = x
        with pytest.raises(ValueError, match="y overflows inside the layer's FFTs"):
            eye.adjoint(near_max)
        np.testing.assert_allclose(eye(near_max / 1e30), near_max / 1e30, rtol=1e-5)  # moderate: fine


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
@pytest.mark.parametrize("update", ["transport", "project"])
def test_conv_step_whose_lr_times_grad_overflows_the_dtype_stays_finite_and_unitary(dtype, update):
    layer = OrthogonalConv2d(2, 4, (4, 4), dtype=dtype, rng=0)
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4)).astype(dtype)
    _, grad = layer.backward(x, layer(x))
    layer.step(grad, lr=1e300, rank=1, update=update, rng=2)  # was: "X contains NaN or Inf"
    tol = 50 * np.sqrt(4) * np.finfo(np.float32).eps
    assert layer.U.dtype == np.complex64
    assert uu.unitarity_error(layer.U) < tol
    assert layer.Q.size == 0 or uu.unitarity_error(layer.Q) < tol


def test_conv_step_hostile_settings_and_read_only_stacks_write_nothing(real_layer_and_grad):
    layer, grad = real_layer_and_grad
    gen = np.random.default_rng(3)
    before = _layer_state(layer, gen)
    with pytest.raises(ValueError, match=r"lr must be a positive finite number; got (inf|an integer of 401 digits)"):
        layer.step(grad, lr=10**400, rng=gen)
    layer.Q.flags.writeable = False  # the second stack: U was written before the fix
    with pytest.raises(ValueError, match="stack Q is read-only; nothing was written"):
        layer.step(grad, lr=0.1, rng=gen)
    layer.Q.flags.writeable = True
    _assert_same_state(before, _layer_state(layer, gen))
    drift = uu.DriftControl(every=1)
    calls = drift._calls

    layer._check_factors = lambda factors, stack, name: factors  # let a NaN reach the second stack
    bad = ConvGradient(grad.U, (np.full_like(grad.Q[0], np.nan), grad.Q[1]))
    with pytest.raises(uu.NonFiniteError):
        layer.step(bad, lr=0.1, rng=gen, drift=drift)
    assert drift._calls == calls  # the drift policy ran on U, then was put back
    _assert_same_state(before, _layer_state(layer, gen))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: maxmin(np.ones(4), axis=5), ValueError, r"axis must be in \[-1, 1\) .* got 5"),
        (lambda: maxmin(np.ones((2, 4)), axis=1.0), TypeError, "axis must be an integer"),
        (lambda: maxmin(np.ones((2, 4)), axis=True), TypeError, "axis must be an integer"),
        (lambda: frequency_layout((2, 2), real="no"), TypeError, "real must be a bool"),
        (lambda: OrthogonalConv2d(1, 2, (2, 2), init=np.array(["haar", "x"])), TypeError, "init must be one of"),
        (lambda: OrthogonalConv2d(1, 2**20, (2**10, 2**10)), ValueError, "too large: the parameters would need"),
    ],
)
def test_conv_helpers_refuse_hostile_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_urnn_hostile_inputs_targets_and_parameters():
    torch = pytest.importorskip("torch")
    model = _model()
    x, y = _batch()
    loss, _ = model.loss_and_grads(x, y)
    # a torch tensor that requires grad is read (detached), like the core functions do
    loss_t, _ = model.loss_and_grads(torch.tensor(x, requires_grad=True), torch.tensor(y))
    assert loss_t == loss
    with pytest.raises(TypeError, match="factored must be a bool"):
        model.loss_and_grads(x, y, factored="yes")
    regression = URNN(2, 4, 1, output="last", loss="mse", rng=0)
    with pytest.raises(ValueError, match="y is too large for the model's dtype float64"):
        regression.loss_and_grads(x, np.full((3, 1), 1e200))  # its square overflows the loss
    with pytest.raises(ValueError, match="y is too large"):
        regression.evaluate(x, np.full((3, 1), 1e200))
    for name, value, error, match in [
        ("W", np.eye(3), ValueError, r"params\['W'\] must have shape \(4, 4\) and dtype float64"),
        ("W", np.eye(4, dtype=complex), ValueError, r"params\['W'\] must have shape"),  # was: imaginary part dropped
        ("b", np.zeros(5), ValueError, r"params\['b'\] must have shape \(4,\)"),  # was: silently accepted
        ("W", np.eye(4).tolist(), TypeError, r"params\['W'\] must be an array"),
        ("W", torch.eye(4, dtype=torch.float64), TypeError, r"params\['W'\] must be a NumPy or CuPy array"),
        ("V", torch.zeros(4, 2, dtype=torch.float64), TypeError, r"params\['V'\] must be a numpy array"),
    ]:
        broken = _model()
        broken.params[name] = value
        with pytest.raises(error, match=match):
            broken.loss_and_grads(x, y)


def test_urnn_input_that_is_a_view_of_its_own_states_is_read_intact():
    # grads["W"] = (X, Y) are views of the model's work buffers (documented); Y^T holds the
    # states h_0 .. h_{T-1}, and feeding them back as x once gave a wrong grads["V"] (the states
    # buffer was overwritten while x was still to be read)
    def model():
        m = URNN(4, 4, 3, rng=0)
        m.params["O"][...] = np.random.default_rng(5).standard_normal(m.params["O"].shape)
        return m

    rng = np.random.default_rng(0)
    x0, y = rng.standard_normal((2, 5, 4)), rng.integers(0, 3, (2, 5))
    shared = model()
    _, grads = shared.loss_and_grads(x0, y, factored=True)
    x = grads["W"][1].T.reshape(5, 2, 4).swapaxes(0, 1)  # (batch, T, N), a view of the states
    assert np.shares_memory(x, grads["W"][1])
    expected_loss, expected = model().loss_and_grads(x.copy(), y)
    loss, got = shared.loss_and_grads(x, y)
    assert loss == expected_loss
    for name in ("W", "V", "b", "O", "c"):
        np.testing.assert_array_equal(got[name], expected[name])


def test_conv_euclidean_step_that_overflows_names_the_stack_also_with_drift_control():
    import unitary_update as uu

    layer = OrthogonalConv2d(2, 4, (4, 4), dtype=np.float32, rng=0)
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4)).astype(np.float32)
    _, grad = layer.backward(x, layer(x))
    before = [s.copy() for s in (layer.U, layer.Q)]
    for drift in (None, uu.DriftControl(every=1)):
        with pytest.raises(uu.NonFiniteError, match=r"the step of (U|Q) is not finite"):
            layer.step(grad, lr=1e38, update="euclidean", drift=drift)
        for stack, old in zip((layer.U, layer.Q), before, strict=True):
            np.testing.assert_array_equal(stack, old)
