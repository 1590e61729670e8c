"""Zero-size batches, N = 1, and array kinds (ndarray subclasses, masked arrays) everywhere."""

from __future__ import annotations

import numpy as np
import pytest

import unitary_update as uu
from unitary_update.optim import SGD, Adam, RMSprop, UnitaryOptimizer
from unitary_update.reference import project_dense, transport_dense

SHAPES = [(0, 5, 5), (2, 0, 3, 3), (0, 1, 1), (1, 1), (17, 1, 1), (3, 1, 1)]
SKETCHES = ["randomized", "lsi", "column", "exact"]
RETRACTIONS = ["polar", "newton_schulz", "qr"]


def _unitary(shape: tuple[int, ...], dtype) -> np.ndarray:
    if 0 in shape:
        return np.zeros(shape, dtype=dtype)
    return uu.random_unitary(shape[-1], dtype=dtype, batch_shape=shape[:-2], rng=0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_updates_on_empty_stacks_and_n_equal_1(shape, dtype, backend):
    U = _unitary(shape, dtype)
    rng = np.random.default_rng(1)
    A = (0.7 * rng.standard_normal((*shape[:-1], 2))).astype(dtype)
    B = (0.4 * rng.standard_normal((*shape[:-1], 2))).astype(dtype)
    with uu.options(backend=backend):
        for fn, ref in ((uu.project, project_dense), (uu.transport, transport_dense)):
            V = fn(U, A, B)
            assert V.shape == shape
            assert V.dtype == dtype
            if V.size:
                np.testing.assert_allclose(V, ref(U, A, B), atol=200 * np.finfo(dtype).eps)
            W = U.copy()
            assert fn(W, A, B, out=W) is W
            np.testing.assert_array_equal(W, V)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sketch_step_retract_drift_and_metrics_on_empty_stacks_and_n_equal_1(shape):
    dtype = np.float64
    U = _unitary(shape, dtype)
    G = np.full(shape, 0.1)
    for method in SKETCHES:
        A, B = uu.sketch(G, 1, method=method, rng=0)
        assert A.shape == B.shape == (*shape[:-1], 1)
        if A.size:
            np.testing.assert_allclose(A @ np.swapaxes(B, -1, -2), G, atol=1e-14)
        A, B = uu.sketch((G[..., :1], G[..., :1]), 1, method=method, rng=0)
        assert A.shape == (*shape[:-1], 1)
        V = uu.step(U, G, rank=1, sketch=method, rng=0)
        assert V.shape == shape
    drifted = 1.01 * U
    for method in RETRACTIONS:
        V = uu.retract(drifted, method=method)
        assert V.shape == shape
        if V.size:
            np.testing.assert_allclose(np.abs(V), 1.0 if shape[-1] == 1 else np.abs(V), atol=1e-15)
            assert uu.unitarity_error(V) < 1e-14
        W = drifted.copy()
        uu.retract(W, method=method, out=W)
        np.testing.assert_array_equal(W, V)
    policy = uu.DriftControl(every=1, check_every=1)
    W = drifted.copy()
    assert policy.maybe_retract(W) is True
    assert policy.estimate(W) < 1e-12
    assert uu.unitarity_error(np.zeros(shape) if 0 in shape else W) < 1e-14
    W = U.copy()
    uu.step(W, G, rng=0, out=W, drift=uu.DriftControl(every=1))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("make", [lambda: SGD(0.1, momentum=0.5), lambda: RMSprop(0.1), lambda: Adam(0.1)])
def test_optimizers_on_empty_stacks_and_n_equal_1(shape, make):
    U = _unitary(shape, np.float64)
    grad = np.full(shape, 0.3)
    opt = UnitaryOptimizer(make(), rank=1, rng=0)
    opt.step(U, grad)
    opt.step(U, grad)
    assert opt.steps == 2
    if U.size:
        assert uu.unitarity_error(U) < 1e-14
    params = {"w": np.ones(shape)}
    base = make()
    base.step(params, {"w": grad})
    assert base.t == {"w": 1}


class Tagged(np.ndarray):
    """An ndarray subclass from outside NumPy."""


KINDS = {
    "matrix": lambda x: np.asmatrix(x),
    "subclass": lambda x: x.view(Tagged),
    "memmap-like": lambda x: x.view(np.memmap),
}


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_ndarray_subclasses_are_handled_like_ndarrays_everywhere(kind):
    wrap = KINDS[kind]
    U = uu.random_unitary(5, dtype=np.float64, rng=2)
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((5, 1)), rng.standard_normal((5, 1))
    for fn in (uu.project, uu.transport):
        expected = fn(U, A, B)
        got = fn(wrap(U.copy()), wrap(A), wrap(B))
        assert type(got) is np.ndarray
        np.testing.assert_array_equal(got, expected)
        W = wrap(U.copy())
        assert fn(W, wrap(A), B, out=W) is W
        np.testing.assert_array_equal(np.asarray(W), expected)
    G = rng.standard_normal((5, 5))
    for method in SKETCHES:
        np.testing.assert_array_equal(
            uu.sketch(wrap(G), 2, method=method, rng=4)[0], uu.sketch(G, 2, method=method, rng=4)[0]
        )
    np.testing.assert_array_equal(uu.retract(wrap(1.1 * U)), uu.retract(1.1 * U))
    assert uu.unitarity_error(wrap(U)) == uu.unitarity_error(U)
    W = wrap(U.copy())
    uu.step(W, wrap(G), rank=2, rng=5, out=W)
    np.testing.assert_array_equal(np.asarray(W), uu.step(U, G, rank=2, rng=5))
    W, V = wrap(U.copy()), U.copy()
    UnitaryOptimizer(Adam(0.1), rng=6).step(W, wrap(G))
    UnitaryOptimizer(Adam(0.1), rng=6).step(V, G)
    np.testing.assert_array_equal(np.asarray(W), V)
    p, q = {"w": wrap(U.copy())}, {"w": U.copy()}
    RMSprop(0.1).step(p, {"w": wrap(G)})
    RMSprop(0.1).step(q, {"w": G})
    np.testing.assert_array_equal(np.asarray(p["w"]), q["w"])


def test_masked_arrays_are_refused_with_one_type_error_naming_the_argument():
    U = uu.random_unitary(4, dtype=np.float64, rng=7)
    A = np.ones((4, 1))
    m = np.ma.masked_array(U, mask=U > 0.5)
    calls = {
        "U": [
            lambda: uu.project(m, A, A),
            lambda: uu.transport(m, A, A),
            lambda: uu.retract(m),
            lambda: uu.unitarity_error(m),
            lambda: uu.step(m, U),
            lambda: uu.DriftControl(every=1).maybe_retract(m),
            lambda: UnitaryOptimizer(SGD(0.1)).step(m, U),
        ],
        "A": [lambda: uu.project(U, np.ma.masked_array(A), A)],
        "G": [lambda: uu.sketch(m, 1), lambda: uu.step(U.copy(), m)],
        "out": [lambda: uu.project(U, A, A, out=np.ma.masked_array(U.copy())), lambda: uu.retract(U, out=m)],
        "grad": [lambda: UnitaryOptimizer(SGD(0.1)).step(U.copy(), m)],
        r"grads\['w'\]": [lambda: Adam(0.1).step({"w": U.copy()}, {"w": m})],
    }
    for name, group in calls.items():
        for call in group:
            with pytest.raises(TypeError, match=rf"^{name} is a numpy\.ma\.MaskedArray; its mask would be ignored"):
                call()


def test_sketch_rng_errors_name_rng():
    G = np.ones((4, 4))
    with pytest.raises(ValueError, match="rng must be a non-negative integer seed"):
        uu.sketch(G, 1, rng=-1)
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator"):
        uu.sketch(G, 1, rng=1.5)
    with pytest.raises(ValueError, match="rng must be a non-negative integer seed"):
        uu.step(np.eye(4), G, rng=-3)
    with pytest.raises(ValueError, match="rng must be a non-negative integer seed"):
        UnitaryOptimizer(SGD(0.1), rng=-1)


def _unitary_optimizer_step(U: np.ndarray, grad: object) -> None:
    UnitaryOptimizer(SGD(0.1), rng=0).step(U, grad)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        # the user passed G: the message named the sketch's A and B before
        (lambda U: uu.step(np.stack([U, U]), np.ones((3, 4, 4)), rng=0), r"U \(2, 4, 4\), G \(3, 4, 4\)"),
        (lambda U: uu.step(np.stack([U, U]), (np.ones((3, 4, 1)), np.ones((4, 1))), rng=0), r"G\[0\] \(3, 4, 1\)"),
        (lambda U: uu.step(U, (np.ones((2, 4, 1)), np.ones((3, 4, 1))), rng=0), "of X .* and Y .* do not broadcast"),
        # U is updated in place: a factored grad with more batch dimensions named out before
        (lambda U: _unitary_optimizer_step(U, (np.ones((3, 4, 1)), np.ones((4, 1)))), "grad's batch dimensions"),
        (lambda U: _unitary_optimizer_step(np.stack([U, U]), (np.ones((3, 4, 1)), np.ones((4, 1)))), "grad's batch"),
    ],
)
def test_batch_mismatches_name_the_arguments_the_caller_passed(call, match):
    U = uu.random_unitary(4, dtype=np.float64, rng=5)
    before = U.copy()
    with pytest.raises(ValueError, match=match):
        call(U)
    np.testing.assert_array_equal(U, before)
