"""unitary_update.jax's core against the NumPy path and the dense references; jit, vmap, tracing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
from helpers import ALL_DTYPES, project_limit_of_huge_steps, project_reference_mpmath, random_factors

import unitary_update as uu
from unitary_update.random import standard_normal
from unitary_update.reference import project_dense, transport_dense

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
uj = pytest.importorskip("unitary_update.jax")

DENSE = {"project": project_dense, "transport": transport_dense}


def _atol(dtype) -> float:
    return 2e-5 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-12


def _problem(n, k, dtype, seed, batch=()):
    rng = np.random.default_rng(seed)
    U = uu.random_unitary(n, dtype=dtype, batch_shape=batch, rng=rng)
    A = random_factors(rng, (*batch, n, k), dtype) / np.sqrt(n)
    B = random_factors(rng, (*batch, n, k), dtype)
    return U, A, B


# --- agreement with the NumPy path ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["project", "transport"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_update_matches_numpy_path_and_dense_reference(x64, kind, dtype):
    U, A, B = _problem(12, 2, dtype, seed=1, batch=(2,))
    V = getattr(uj, kind)(jnp.asarray(U), jnp.asarray(A), jnp.asarray(B))
    assert V.dtype == dtype
    assert V.shape == (2, 12, 12)
    expected = getattr(uu, kind)(U, A, B)
    np.testing.assert_allclose(np.asarray(V), expected, rtol=0, atol=_atol(dtype))
    dense = np.stack([DENSE[kind](U[i], A[i], B[i]) for i in range(2)])
    np.testing.assert_allclose(np.asarray(V), dense, rtol=0, atol=_atol(dtype))


@pytest.mark.parametrize("kind", ["project", "transport"])
def test_float32_without_x64_stays_float32_and_unitary(x32, kind):
    U, A, B = _problem(16, 3, np.float32, seed=2)
    V = getattr(uj, kind)(jnp.asarray(U), jnp.asarray(A), jnp.asarray(B))
    assert V.dtype == jnp.float32
    assert uu.unitarity_error(np.asarray(V)) < 1e-5
    np.testing.assert_allclose(np.asarray(V), DENSE[kind](U, A, B), atol=2e-5)


def test_batch_dimensions_broadcast_like_matmul(x64):
    U, _, _ = _problem(10, 1, np.complex128, seed=3, batch=(3,))
    _, A, B = _problem(10, 1, np.complex128, seed=4)  # one pair of factors for the whole stack
    V = uj.transport(jnp.asarray(U), jnp.asarray(A), jnp.asarray(B))
    for i in range(3):
        np.testing.assert_allclose(np.asarray(V[i]), transport_dense(U[i], A, B), atol=1e-12)


@pytest.mark.parametrize("kind", ["project", "transport"])
@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_factors_of_any_finite_scale_give_a_unitary_result(x32, kind, dtype):
    """Balanced by powers of two, as the NumPy path: no Inf core (XLA's SVD never returned on one)."""
    U, A, B = _problem(8, 2, dtype, seed=5)
    for sa, sb in ((1e19, 1e19), (1e30, 1e30), (1e-30, 1e-30), (1e30, 1e-30), (1e-25, 1e25)):
        V = np.asarray(getattr(uj, kind)(jnp.asarray(U), jnp.asarray(A * sa), jnp.asarray(B * sb)))
        assert np.isfinite(V).all()
        assert uu.unitarity_error(V) < 1e-5
        if sa * sb < 1e3:  # a product of moderate size: the same answer as without the scaling
            np.testing.assert_allclose(V, DENSE[kind](U, A * (sa * sb), B), atol=2e-5)


def test_float64_factors_beyond_float32_with_x64(x64):
    U, A, B = _problem(8, 2, np.float32, seed=6)
    V = uj.project(
        jnp.asarray(U), jnp.asarray(A.astype(np.float64) * 1e200), jnp.asarray(B.astype(np.float64) * 1e-200)
    )
    np.testing.assert_allclose(np.asarray(V), project_dense(U, A, B), atol=2e-5)


def test_a_U_far_too_large_is_an_error_not_nan(x32):
    U = jnp.full((6, 6), 3e38, dtype=jnp.float32)  # finite, but U^H A overflows
    for kind in ("project", "transport"):
        with pytest.raises(uu.NonFiniteError, match="U\\^H A overflows"):
            getattr(uj, kind)(U, jnp.ones((6, 1)), jnp.ones((6, 1)))


# --- jit, vmap, tracing ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["project", "transport"])
def test_jit_and_vmap_agree_with_eager(x64, kind):
    U, A, B = _problem(10, 2, np.float64, seed=5, batch=(3,))
    args = (jnp.asarray(U), jnp.asarray(A), jnp.asarray(B))
    eager = getattr(uj, kind)(*args)
    jitted = jax.jit(getattr(uj, kind))(*args)
    mapped = jax.vmap(getattr(uu, kind))(*args)  # the public function dispatches tracers to JAX
    for V in (jitted, mapped):
        np.testing.assert_allclose(np.asarray(V), np.asarray(eager), atol=1e-13)
    np.testing.assert_allclose(np.asarray(eager), getattr(uu, kind)(U, A, B), atol=1e-13)


def test_step_and_sketch_trace_under_jit_vmap_and_grad(x64):
    U, _, _ = _problem(12, 1, np.float64, seed=6, batch=(2,))
    G = 0.01 * np.random.default_rng(7).standard_normal((2, 12, 12))
    key = jax.random.key(8)
    step = jax.jit(lambda U, G, key: uu.step(U, G, rank=2, rng=key))  # the public API, randomized
    V = step(jnp.asarray(U), jnp.asarray(G), key)
    assert uu.unitarity_error(np.asarray(V)) < 1e-12
    mapped = jax.vmap(lambda U, G: uj.step(U, G, rank=2, sketch="exact"))(U, G)
    np.testing.assert_allclose(np.asarray(mapped), uu.step(U, G, rank=2, sketch="exact"), atol=1e-13)
    # no concretization anywhere: jaxprs build for every method, public and JAX-native
    for method in ("lsi", "exact"):
        jax.make_jaxpr(lambda U, G, key, m=method: uu.step(U, G, sketch=m, update="project", rng=key))(U, G, key)
    jax.make_jaxpr(lambda X, Y: uj.sketch((X, Y), 2, method="column", key=1))(jnp.asarray(G[0]), jnp.asarray(G[1]))

    # and gradients flow through the update: d/dt sum(W * transport(U, t A, B)) against a central difference
    U1, A, B = _problem(8, 1, np.float64, seed=9)
    W = np.random.default_rng(10).standard_normal((8, 8))

    def f(t):
        return jnp.sum(W * uj.transport(jnp.asarray(U1), t * jnp.asarray(A), jnp.asarray(B)))

    h = 1e-6
    value_and_grad = jax.jit(jax.value_and_grad(f))
    numeric = (value_and_grad(0.7 + h)[0] - value_and_grad(0.7 - h)[0]) / (2 * h)
    np.testing.assert_allclose(float(value_and_grad(0.7)[1]), float(numeric), rtol=1e-6)


# --- degenerate factors ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["project", "transport"])
@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_zero_and_rank_deficient_factors_give_no_nan(x64, kind, dtype):
    U, A, B = _problem(9, 2, dtype, seed=11)
    Z = np.zeros_like(A)
    fn = jax.jit(getattr(uj, kind))
    for a, b in ((Z, B), (A, Z), (Z, Z)):
        V = np.asarray(fn(jnp.asarray(U), jnp.asarray(a), jnp.asarray(b)))
        np.testing.assert_array_equal(V, U)  # exactly unchanged
    # rank-deficient basis: duplicated columns, and U^H A parallel to B
    dup = np.concatenate([A[:, :1], A[:, :1]], axis=1)
    for a, b in ((dup, B), (U @ B, B)):
        V = np.asarray(fn(jnp.asarray(U), jnp.asarray(a), jnp.asarray(b)))
        assert np.isfinite(V).all()
        np.testing.assert_allclose(V, DENSE[kind](U, a, b), atol=_atol(dtype))
        assert uu.unitarity_error(V) < (1e-5 if dtype == np.float32 else 1e-12)


def _check_huge_project_steps(dtype):
    rng = np.random.default_rng(24)
    n = 7
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A0, B0 = random_factors(rng, (n, 2), dtype), random_factors(rng, (n, 2), dtype)
    expected = project_limit_of_huge_steps(U, A0, B0)
    top = 1000 if np.finfo(dtype).maxexp > 128 else 120  # the largest exponent a factor holds
    fn = jax.jit(uj.project)
    for e in (60, top - 10, top, 2 * top):
        A, B = A0 * 2.0 ** min(e, top), B0 * 2.0 ** (e - min(e, top))  # exact: powers of two
        V = np.asarray(fn(jnp.asarray(U), jnp.asarray(A.astype(dtype)), jnp.asarray(B.astype(dtype))))
        np.testing.assert_allclose(V, expected, atol=100 * np.sqrt(n) * np.finfo(dtype).eps, err_msg=f"e={e}")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_huge_project_steps_give_the_limit_of_the_polar_factor(x64, dtype):
    # an identity term that underflowed (beyond |A B^H| ~ 1e306) was lost: a unitary matrix off
    # the polar factor by up to 1.2
    _check_huge_project_steps(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_huge_project_steps_in_single_precision_cores(x32, dtype):
    # without x64 the core runs in single precision: XLA's SVD lost the identity term beyond
    # |A B^H| ~ 1e34 (complex64) or 1e35 (float32), off the polar factor by up to 0.3
    _check_huge_project_steps(dtype)


def test_huge_real_transport_keeps_det_and_orthogonality(x64):
    # the nearest-rotation branch (jnp.where, no Python branch on traced values) under jit
    U, A, B = _problem(8, 1, np.float64, seed=12)
    A, B = 1e4 * A, 1e4 * B
    V = np.asarray(jax.jit(uj.transport)(jnp.asarray(U), jnp.asarray(A), jnp.asarray(B)))
    np.testing.assert_allclose(V, uu.transport(U, A, B), atol=1e-8)
    assert np.linalg.det(V) == pytest.approx(np.linalg.det(U))


# --- sketches -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["randomized", "lsi", "column", "exact"])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("factored", [False, True])
def test_sketch_matches_numpy_path_with_the_same_seed(x64, method, dtype, factored):
    rng = np.random.default_rng(13)
    X, Y = random_factors(rng, (2, 20, 5), dtype), random_factors(rng, (2, 16, 5), dtype)
    G = (X, Y) if factored else X @ np.conj(np.swapaxes(Y, -1, -2)) + 0.01 * random_factors(rng, (2, 20, 16), dtype)
    Gj = tuple(jnp.asarray(x) for x in G) if factored else jnp.asarray(G)
    A, B = uu.sketch(Gj, 3, method=method, rng=14)  # int seed: the NumPy path's own draws
    A0, B0 = uu.sketch(G, 3, method=method, rng=14)
    assert isinstance(A, jax.Array)
    assert A.shape == A0.shape
    assert B.shape == B0.shape
    assert A.dtype == dtype
    prod = np.asarray(A @ jnp.conj(jnp.swapaxes(B, -1, -2)))
    np.testing.assert_allclose(prod, A0 @ np.conj(np.swapaxes(B0, -1, -2)), atol=1e-10)
    if method in ("randomized", "exact"):  # balanced factors: equal column norms on both sides
        np.testing.assert_allclose(np.linalg.norm(A, axis=-2), np.linalg.norm(B0, axis=-2), rtol=1e-8)


def test_randomized_sketch_uses_the_numpy_draws_of_the_same_generator(x64):
    G = np.random.default_rng(15).standard_normal((14, 11))
    omega = standard_normal(np, np.random.default_rng(16), (11, 3 + 8), np.float64)
    Q = scipy.linalg.qr(G @ omega, mode="economic")[0]  # power iteration by hand, as the method documents
    Q = scipy.linalg.qr(G @ scipy.linalg.qr(G.T @ Q, mode="economic")[0], mode="economic")[0]
    reference = Q @ Q.T @ G
    A, B = uu.sketch(jnp.asarray(G), 11, method="randomized", rng=np.random.default_rng(16))
    np.testing.assert_allclose(np.asarray(A @ B.T), reference, atol=1e-10)


@pytest.mark.parametrize("method", ["randomized", "lsi", "column"])
def test_sketch_from_a_key_is_seeded_and_exact_on_rank_k(x32, method):
    rng = np.random.default_rng(17)
    G = jnp.asarray((rng.standard_normal((24, 3)) @ rng.standard_normal((3, 18))).astype(np.float32))
    key = jax.random.key(18)

    def fn(G, key):
        return uj.sketch(G, 3, method=method, key=key)

    A, B = fn(G, key)
    np.testing.assert_allclose(np.asarray(A @ B.T), np.asarray(G), atol=1e-4)
    A2, _ = fn(G, key)
    np.testing.assert_array_equal(np.asarray(A), np.asarray(A2))  # same key, same factors
    A3, _ = uu.sketch(G, 3, method=method, rng=jax.random.key(18))  # the public API takes keys too
    np.testing.assert_allclose(np.asarray(A3), np.asarray(A), atol=1e-5)


def test_factored_sketch_pads_missing_rank_with_zeros(x64):
    rng = np.random.default_rng(19)
    X, Y = rng.standard_normal((10, 2)), rng.standard_normal((12, 2))
    A, B = uj.sketch((jnp.asarray(X), jnp.asarray(Y)), 4, method="exact")
    np.testing.assert_allclose(np.asarray(A @ B.T), X @ Y.T, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(A[:, 2:]), 0.0)


# --- the public API on JAX arrays, and errors ----------------------------------------------------
def test_public_step_matches_numpy_and_refuses_out_and_drift(x64):
    U, _, _ = _problem(14, 1, np.complex128, seed=20)
    G = 0.01 * random_factors(np.random.default_rng(21), (14, 14), np.complex128)
    V = uu.step(jnp.asarray(U), jnp.asarray(G), rank=2, update="project", rng=3)
    assert isinstance(V, jax.Array)
    np.testing.assert_allclose(np.asarray(V), uu.step(U, G, rank=2, update="project", rng=3), atol=1e-13)
    Uj = jnp.asarray(U)
    with pytest.raises(TypeError, match="out is a JAX array; JAX arrays are immutable"):
        uu.step(Uj, jnp.asarray(G), out=Uj)
    with pytest.raises(TypeError, match="out is a ndarray but the inputs are JAX arrays"):
        uu.project(Uj, jnp.asarray(G[:, :1]), jnp.asarray(G[:, :1]), out=np.empty_like(U))
    with pytest.raises(TypeError, match="drift cannot retract JAX arrays in place"):
        uu.step(Uj, jnp.asarray(G), drift=uu.DriftControl(every=1))


def test_errors_name_the_argument_before_any_work(x64):
    U, A, B = (jnp.asarray(x) for x in _problem(6, 1, np.float64, seed=22))
    with pytest.raises(uu.NonFiniteError, match="A contains NaN or Inf"):
        uj.project(U, A.at[0, 0].set(jnp.nan), B)
    with pytest.raises(ValueError, match=r"B has shape \(5, 1\) but U is 6 x 6"):
        uj.transport(U, A, B[:5])
    with pytest.raises(TypeError, match="A is complex"):
        uj.transport(U, A.astype(jnp.complex128), B)
    with pytest.raises(TypeError, match="U has dtype int32"):
        uj.project(U.astype(jnp.int32), A, B)
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        uj.sketch(U, 1)
    with pytest.raises(ValueError, match="rank"):
        uj.sketch(U, 7, key=0)
    with pytest.raises(TypeError, match="unknown option 'oversampling' for sketch method 'lsi'"):
        uj.sketch(U, 1, method="lsi", key=0, oversampling=2)
    with pytest.raises(ValueError, match="unknown retraction method"):
        uj.retract(U, method="cayley")
    # under jit a NaN cannot raise: it propagates (documented)
    V = jax.jit(uj.project)(U, A.at[0, 0].set(jnp.nan), B)
    assert not np.isfinite(np.asarray(V)).all()


@pytest.mark.parametrize("method", ["polar", "newton_schulz"])
def test_retract_returns_the_polar_factor(x64, method):
    U, _, _ = _problem(10, 1, np.complex128, seed=23)
    M = U + 1e-3 * random_factors(np.random.default_rng(24), (10, 10), np.complex128)
    R = np.asarray(jax.jit(lambda M: uj.retract(M, method=method))(jnp.asarray(M)))
    np.testing.assert_allclose(R, scipy.linalg.polar(M)[0], atol=1e-10)


@pytest.mark.parametrize("kind", ["project", "transport"])
def test_single_precision_updates_drift_about_as_slowly_as_the_numpy_path(x32, kind):
    # Without x64, the JAX cores are single precision and the small-r update added its r outer
    # products to U one by one (r roundings per entry): at N = 64, k = 4 U drifted 2-4x faster
    # than on the NumPy path (double-precision cores, one BLAS rounding per entry).  The cores
    # are now refined by a Newton-Schulz step and U is rounded once per update.
    n, k, steps = 64, 4, 300
    rng = np.random.default_rng(41)
    U_numpy = uu.random_unitary(n, dtype=np.float32, rng=42)
    U_jax = jnp.asarray(U_numpy)
    update = jax.jit(getattr(uj, kind))
    for _ in range(steps):
        A = (0.025 * rng.standard_normal((n, k))).astype(np.float32)
        B = rng.standard_normal((n, k)).astype(np.float32)
        U_jax = update(U_jax, jnp.asarray(A), jnp.asarray(B))
        getattr(uu, kind)(U_numpy, A, B, out=U_numpy)
    numpy_drift = uu.unitarity_error(U_numpy)
    assert uu.unitarity_error(np.asarray(U_jax)) <= 1.6 * numpy_drift
    np.testing.assert_allclose(np.asarray(U_jax), U_numpy, atol=2e-5)  # the same trajectory


@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.float64])
def test_single_precision_core_refinement_reaches_rounding_and_leaves_double_alone(x64, dtype):
    from unitary_update.jax._core import _refined_single_precision_core

    r = 8
    Q = uu.random_unitary(r, dtype=dtype, rng=43)
    D = (Q + 1e-4 * random_factors(np.random.default_rng(44), (r, r), dtype)).astype(dtype) - np.eye(r, dtype=dtype)
    refined = np.asarray(_refined_single_precision_core(jnp.asarray(D)))
    assert refined.dtype == dtype
    if dtype == np.float64:
        np.testing.assert_array_equal(refined, D)  # double-precision cores are left as they are
    else:
        eye = np.eye(r)
        before = np.linalg.norm((eye + D).conj().T.astype(np.complex128) @ (eye + D) - eye)
        after = np.linalg.norm((eye + refined).conj().T.astype(np.complex128) @ (eye + refined) - eye)
        assert before > 1e-5  # 1e-4 off the unitary group
        assert after < 20 * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
@pytest.mark.parametrize("method", ["polar", "newton_schulz"])
def test_single_precision_retract_lands_within_the_drift_tolerance(x32, dtype, method):
    # XLA's single-precision SVD alone left X Y^H at 5x DriftControl's tolerance (N = 64: 1e-5),
    # so retract_every made drift worse; the result must be back at rounding level
    n = 64
    U = uu.random_unitary(n, dtype=dtype, rng=31)
    M = (U + 1e-3 * random_factors(np.random.default_rng(32), (n, n), dtype)).astype(dtype)
    R = np.asarray(jax.jit(lambda M: uj.retract(M, method=method))(jnp.asarray(M)))
    assert R.dtype == dtype
    assert uu.unitarity_error(R) <= uu.DriftControl().tolerance(n, dtype)
    np.testing.assert_allclose(R, uu.retract(M), atol=2e-6)  # the polar factor (NumPy: double-precision SVD)


def test_import_without_jax_names_the_extra():
    code = """
import sys
for blocked in ("jax", "optax"):
    saved = sys.modules.get(blocked)
    sys.modules[blocked] = None
    try:
        import unitary_update.jax
    except ImportError as err:
        print(type(err).__name__, err)
    if saved is None:
        del sys.modules[blocked]
    else:
        sys.modules[blocked] = saved
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.splitlines() == [
        f'MissingExtraError unitary_update.jax needs {name}: pip install "unitary_update[jax]"'
        for name in ("jax", "optax")
    ]


def test_results_follow_u_concrete_jax_factors_cross_through_dlpack():
    # the library of the result is U's: concrete JAX factors next to a NumPy U are converted
    # (so out=U works), a JAX U or any tracer takes the JAX path
    U = uu.random_unitary(6, dtype=np.float32, rng=0)
    rng = np.random.default_rng(1)
    A, B = (rng.standard_normal((6, 1)).astype(np.float32) for _ in range(2))
    expected = uu.project(U, A, B)
    got = uu.project(U, jnp.asarray(A), jnp.asarray(B))
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    target = U.copy()
    assert uu.project(target, jnp.asarray(A), jnp.asarray(B), out=target) is target
    np.testing.assert_allclose(target, expected, atol=1e-6)
    assert isinstance(uu.project(jnp.asarray(U), A, B), jax.Array)
    traced = jax.jit(lambda a: uu.project(U, a, B))(jnp.asarray(A))
    assert isinstance(traced, jax.Array)
    np.testing.assert_allclose(np.asarray(traced), expected, atol=1e-5)


def test_drift_control_refuses_a_jax_array_at_the_first_call():
    U = jnp.asarray(uu.random_unitary(6, dtype=np.float32, rng=0))
    with pytest.raises(TypeError, match=r"U is a JAX array; JAX arrays are immutable.*unitary_update.jax"):
        uu.DriftControl(every=3).maybe_retract(U, step=1)  # was: False until step 3


def test_a_failed_jax_step_leaves_a_numpy_generator_as_it_was():
    U = jnp.asarray(uu.random_unitary(6, dtype=np.float32, rng=0)).at[0, 0].set(jnp.nan)
    G = jnp.ones((6, 6), jnp.float32)
    gen = np.random.default_rng(5)
    before = gen.bit_generator.state
    with pytest.raises(uu.NonFiniteError):
        uu.step(U, G, rank=1, rng=gen)
    assert gen.bit_generator.state == before


def test_eager_only_functions_name_the_traced_array_and_the_jax_twin():
    U = jnp.asarray(uu.random_unitary(6, dtype=np.float32, rng=0))
    for f in (uu.retract, uu.unitarity_error):
        with pytest.raises(TypeError, match=r"U is a traced JAX array .*use unitary_update.jax"):
            jax.jit(f)(U)  # was: JAX's ConcretizationTypeError from inside the conversion


def test_retract_refuses_non_finite_concrete_input_and_scales_huge_input():
    U = uu.random_unitary(6, dtype=np.float32, rng=0)
    for bad in (np.inf, np.nan):
        M = jnp.asarray(U).at[0, 0].set(bad)
        with pytest.raises(uu.NonFiniteError, match="U contains NaN or Inf"):
            uj.retract(M)
    for scale in (1e30, 1e-30, 3.0):  # polar(c U) = polar(U); no overflow inside the SVD
        R = np.asarray(uj.retract(jnp.asarray(U * np.float32(scale))))
        np.testing.assert_allclose(R, U, atol=2e-6)


def test_non_finite_input_under_jit_gives_nan_and_never_hangs():
    # XLA's CPU SVD does not return on some Inf matrices; every SVD of the JAX path is guarded.
    # Run in a subprocess so that a regression fails by timeout instead of hanging the suite.
    code = """
import jax, jax.numpy as jnp, numpy as np
from unitary_update import jax as uj
for bad in (float("inf"), float("nan")):
    M = jnp.eye(4).at[0, 0].set(bad)
    outs = [jax.jit(uj.retract)(M)]
    for method in ("exact", "randomized"):
        outs += list(jax.jit(lambda g, m=method: uj.sketch(g, 1, method=m, key=0))(M))
    outs += list(jax.jit(lambda x, y: uj.sketch((x, y), 1, method="exact", key=0))(M, jnp.eye(4)))
    print(all(bool(jnp.isnan(o).all()) for o in outs))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.split() == ["True", "True"]


def test_sketch_names_an_empty_g_and_refuses_a_negative_int_seed():
    with pytest.raises(ValueError, match=r"G is empty \(N x M = 3 x 0\)"):
        uj.sketch(jnp.zeros((3, 0)), 1, key=0)
    with pytest.raises(ValueError, match=r"key \(an int seed\) must be >= 0; got -1"):
        uj.sketch(jnp.ones((4, 4)), 2, key=-1)  # the NumPy path refuses rng=-1 too


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
@pytest.mark.parametrize("norms", [(1e30, 1e5), (1e25, 1e5), (1e36, 1e20)])
def test_huge_single_precision_steps_keep_their_small_singular_values(x32, dtype, norms):
    # the single-precision core's identity term is capped only where XLA's SVD stops resolving it
    # (2^-100): a cap at 2^-72 was off by 0.9 at (1e30, 1e5); at the cap the smaller singular
    # value costs some single-precision accuracy there (measured 7.7e-6), hence atol 2e-5
    pytest.importorskip("mpmath")
    rng = np.random.default_rng(26)
    n = 5
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A = (random_factors(rng, (n, 2), dtype) * np.array(norms, dtype=np.float32)).astype(dtype)
    B = random_factors(rng, (n, 2), dtype)
    expected = project_reference_mpmath(U.astype(np.complex128), A.astype(np.complex128), B.astype(np.complex128), 120)
    V = np.asarray(uj.project(jnp.asarray(U), jnp.asarray(A), jnp.asarray(B)))
    np.testing.assert_allclose(V, expected if np.iscomplexobj(V) else expected.real, atol=2e-5)


@pytest.mark.parametrize(("n", "k"), [(64, 16), (64, 32)])
def test_huge_steps_with_wide_cores_give_the_limit_of_the_polar_factor(x64, n, k):
    # r = 32-64: the default CPU SVD (divide and conquer) lost the core's identity term beyond 2^40
    rng = np.random.default_rng(30)
    U = uu.random_unitary(n, dtype=np.float64, rng=rng)
    A0, B0 = random_factors(rng, (n, k), np.float64), random_factors(rng, (n, k), np.float64)
    expected = project_limit_of_huge_steps(U, A0, B0)
    for e in (60, 200, 2000):
        A, B = A0 * 2.0 ** min(e, 1000), B0 * 2.0 ** (e - min(e, 1000))
        V = np.asarray(uj.project(jnp.asarray(U), jnp.asarray(A), jnp.asarray(B)))
        np.testing.assert_allclose(V, expected, atol=1e-8, err_msg=f"e={e}")
