"""Scale safety: steps from 1e-30 to 1e30 in float32 and float64, tiny N (1, 2) and large k."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import ALL_DTYPES, project_limit_of_huge_steps, project_reference_mpmath, random_factors

import unitary_update as uu
from unitary_update._sketch import SKETCH_METHODS
from unitary_update.reference import project_dense, transport_dense

SCALES = [1e-30, 1e-15, 1e-5, 1.0, 1e5, 1e15, 1e30]
REAL = [np.float32, np.float64]


def unitary_tol(dtype, n: int) -> float:
    return 50 * np.sqrt(n) * float(np.finfo(dtype).eps)


def low_rank(rng: np.random.Generator, n: int, m: int, dtype, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Factors X, Y (n x m) with ||X Y^H||_F ~ scale, each of norm ~ sqrt(scale) (no overflow)."""
    root = np.sqrt(scale / (n * np.sqrt(m)))
    return (root * random_factors(rng, (n, m), dtype)).astype(dtype), (
        root * random_factors(rng, (n, m), dtype)
    ).astype(dtype)


@pytest.mark.parametrize("method", SKETCH_METHODS)
@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("factored", [False, True], ids=["dense", "factored"])
def test_sketch_is_scale_invariant(method, dtype, scale, factored):
    """A rank-3 G is reproduced by a rank-4 sketch at every scale, to the dtype's precision."""
    rng = np.random.default_rng(1)
    n = 20
    X, Y = low_rank(rng, n, 3, dtype, scale)
    G = (X, Y) if factored else (X @ Y.T).astype(dtype)
    A, B = uu.sketch(G, 4, method=method, rng=2)
    assert A.dtype == dtype
    assert np.all(np.isfinite(A))
    assert np.all(np.isfinite(B))
    Gd = X.astype(np.float64) @ Y.astype(np.float64).T
    err = np.linalg.norm(A.astype(np.float64) @ B.astype(np.float64).T - Gd) / np.linalg.norm(Gd)
    assert err < 1e3 * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("scale", SCALES)
def test_sketch_of_a_dense_gradient_at_extreme_scale_matches_the_unit_scale(dtype, scale):
    """randomized and exact sketches commute with scaling: sketch(s G) = s sketch(G) (A B^H)."""
    rng = np.random.default_rng(3)
    G = rng.standard_normal((30, 30))
    for method in ("randomized", "exact"):
        A1, B1 = uu.sketch(G.astype(dtype), 2, method=method, rng=4)
        As, Bs = uu.sketch((scale * G).astype(dtype), 2, method=method, rng=4)
        ref = A1.astype(np.float64) @ B1.astype(np.float64).T
        got = As.astype(np.float64) @ Bs.astype(np.float64).T / scale
        assert np.linalg.norm(got - ref) <= 1e3 * np.finfo(dtype).eps * np.linalg.norm(ref)


@pytest.mark.parametrize("update", ["project", "transport"])
@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("sketch", SKETCH_METHODS)
def test_steps_at_every_scale_stay_finite_and_unitary(update, dtype, scale, sketch):
    rng = np.random.default_rng(5)
    n = 16
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    G = (scale / n * rng.standard_normal((n, n))).astype(dtype)
    V = uu.step(U, G, rank=3, update=update, sketch=sketch, rng=6)
    assert V.dtype == dtype
    assert np.all(np.isfinite(V))
    assert uu.unitarity_error(V) <= unitary_tol(dtype, n)
    if scale <= 1e-15:  # the step is below the rounding of U
        np.testing.assert_allclose(V, U, rtol=0, atol=4 * np.finfo(dtype).eps)
    if update == "transport" and dtype is np.float64:  # SO(N) stays SO(N) even for absurd steps
        assert np.linalg.det(V) == pytest.approx(np.linalg.det(U), abs=1e-8)


@pytest.mark.parametrize("update", ["project", "transport"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1e10, 1e30])
def test_updates_with_extreme_factors_match_the_dense_reference(update, dtype, scale):
    """||A B^H|| = scale with ||A|| = ||B|| = sqrt(scale): finite, unitary, and as accurate as the problem allows.

    Both results are backward stable with backward error ``eps * ||U + A B^H||``, so they are
    determined only to about ``eps * scale`` (for transport: an angle known to ``eps * scale``
    radians; for project: the polar factor of a matrix whose singular values are ~1 and
    ~scale).  They are compared with the dense reference where that is small; beyond it they
    must still be unitary and finite (real transport: det(U) kept).
    """
    rng = np.random.default_rng(7)
    n, k = 12, 2
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A, B = low_rank(rng, n, k, dtype, scale)
    fn, ref = (uu.project, project_dense) if update == "project" else (uu.transport, transport_dense)
    V = fn(U, A, B)
    assert V.dtype == dtype
    assert np.all(np.isfinite(V))
    assert uu.unitarity_error(V) <= unitary_tol(dtype, n)
    atol = 1e3 * np.finfo(dtype).eps * max(1.0, scale)
    if atol < 1e-2:
        R = ref(U.astype(np.complex128), A.astype(np.complex128), B.astype(np.complex128))
        np.testing.assert_allclose(V, R, rtol=0, atol=atol)
    if update == "transport" and dtype in REAL:
        assert np.linalg.det(V.astype(np.float64)) == pytest.approx(np.linalg.det(U.astype(np.float64)), abs=1e-3)


@pytest.mark.parametrize("update", ["project", "transport"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_tiny_n_and_k_larger_than_n(update, dtype, n, k):
    rng = np.random.default_rng(8 + n + k)
    U = uu.random_unitary(n, dtype=dtype, batch_shape=(2,), rng=rng)
    A, B = 0.3 * random_factors(rng, (2, n, k), dtype), 0.3 * random_factors(rng, (2, n, k), dtype)
    A, B = A.astype(dtype), B.astype(dtype)
    V = getattr(uu, update)(U, A, B)
    ref = (project_dense if update == "project" else transport_dense)(
        U.astype(np.complex128), A.astype(np.complex128), B.astype(np.complex128)
    )
    np.testing.assert_allclose(V, ref, rtol=0, atol=100 * np.finfo(dtype).eps)
    assert uu.unitarity_error(V) <= unitary_tol(dtype, n)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("method", SKETCH_METHODS)
def test_sketch_and_step_with_tiny_n_and_full_rank(dtype, n, method):
    rng = np.random.default_rng(9)
    G = random_factors(rng, (n, n), dtype)
    A, B = uu.sketch(G, n, method=method, rng=1)  # k = N: the sketch is exact
    np.testing.assert_allclose(A @ B.conj().T, G, atol=100 * np.finfo(dtype).eps)
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    V = uu.step(U, 0.1 * G, rank=n, sketch=method, rng=1)
    assert uu.unitarity_error(V) <= unitary_tol(dtype, n)


def test_large_k_through_step_and_direct_factors():
    rng = np.random.default_rng(10)
    n = 40
    U = uu.random_unitary(n, dtype=np.float64, rng=rng)
    G = 0.1 * rng.standard_normal((n, n))
    for update, ref in (("project", project_dense), ("transport", transport_dense)):
        V = uu.step(U, G, rank=n, update=update, sketch="exact")  # k = N: the exact G, r = N
        np.testing.assert_allclose(V, ref(U, G, np.eye(n)), atol=1e-12)
        A, B = rng.standard_normal((n, 3 * n)), rng.standard_normal((n, 3 * n)) / n  # k = 3N
        np.testing.assert_allclose(getattr(uu, update)(U, A, B), ref(U, A, B), atol=1e-12)


@pytest.mark.parametrize("backend_option", ["auto", "numba", "numpy"])
@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e4, 1e10, 1e30])
def test_stacks_of_small_matrices_at_every_scale(backend_option, dtype, scale):
    """A stack of 16 matrices (the Numba batched kernel under "auto"): unitary, det kept, at any scale."""
    rng = np.random.default_rng(11)
    n, k = 8, 2
    U = uu.random_unitary(n, dtype=dtype, batch_shape=(16,), rng=rng)
    root = np.sqrt(scale / (n * np.sqrt(k)))
    A = (root * rng.standard_normal((16, n, k))).astype(dtype)
    B = (root * rng.standard_normal((16, n, k))).astype(dtype)
    with uu.options(backend=backend_option):
        for fn in (uu.project, uu.transport):
            V = fn(U, A, B)
            assert np.all(np.isfinite(V))
            assert uu.unitarity_error(V) <= unitary_tol(dtype, n)
        det_V = np.linalg.det(uu.transport(U, A, B).astype(np.float64))
    np.testing.assert_allclose(det_V, np.linalg.det(U.astype(np.float64)), atol=1e-3)


# ---- every finite input representable in the dtype (issue 13): balanced factors, scaled cores ----
EXTREME = {
    np.float32: [1e-45, 1e-30, 1e19, 1e38],  # subnormal .. the largest float32 decade
    np.float64: [5e-324, 1e-200, 1e160, 1e300],
    np.complex64: [1e-40, 1e38],
    np.complex128: [1e-310, 1e300],
}


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("backend_option", ["auto", "numpy"])
def test_factors_at_the_ends_of_the_dtype_range_give_unitary_results(dtype, backend_option):
    """A, B each scaled to 1e160 in float64 (a product of 1e320), 1e38 in float32, or subnormal."""
    rng = np.random.default_rng(20)
    n = 6
    U = uu.random_unitary(n, dtype=dtype, batch_shape=(17,), rng=rng)  # 17: the batched kernel's size
    A0 = random_factors(rng, (17, n, 2), dtype) / 4
    B0 = random_factors(rng, (17, n, 2), dtype) / 4
    for scale in EXTREME[dtype]:
        A, B = (A0 * dtype(scale)).astype(dtype), (B0 * dtype(scale)).astype(dtype)
        assert np.all(np.isfinite(A))
        assert np.any(A != 0)
        with uu.options(backend=backend_option):
            for fn in (uu.project, uu.transport):
                out = U.copy()
                fn(U, A, B, out=out)
                assert np.all(np.isfinite(out)), (fn.__name__, scale)
                assert uu.unitarity_error(out) <= unitary_tol(dtype, n), (fn.__name__, scale)
                if scale < 1e-20:  # the step is below U's rounding: U comes back
                    np.testing.assert_allclose(out, U, atol=4 * np.finfo(dtype).eps)
            if dtype in (np.float32, np.float64):
                det = np.linalg.det(uu.transport(U, A, B).astype(np.float64))
                np.testing.assert_allclose(det, np.linalg.det(U.astype(np.float64)), atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
@pytest.mark.parametrize("fn", [uu.project, uu.transport])
def test_unbalanced_factors_equal_the_balanced_ones(dtype, fn):
    """(s A)(B / s)^H is A B^H: the result does not depend on s, from 1e-30 to 1e30 (float32) or 1e300."""
    rng = np.random.default_rng(21)
    n = 7
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A, B = random_factors(rng, (n, 2), dtype), random_factors(rng, (n, 2), dtype) / 3
    expected = fn(U, A, B)
    top = 1e30 if dtype == np.float32 else 1e300
    for s in (1 / top, 1e-9, 1e9, top):
        got = fn(U, (A * s).astype(dtype), (B / s).astype(dtype))
        np.testing.assert_allclose(got, expected, atol=100 * np.sqrt(n) * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128, np.float32])
@pytest.mark.parametrize(("n", "k"), [(64, 16), (64, 32), (300, 32), (134, 64)])
def test_huge_steps_with_wide_cores_give_the_limit_of_the_polar_factor(dtype, n, k):
    """r = 32-128: the SVD of the core lost its identity term beyond about 2^40 (0.1-0.2 off).

    NumPy's gesdd (divide and conquer) from r = 26, and any SVD once N >> 2k; the cores of
    such steps now take the closed-form limit (``_lowrank._with_huge_step_limit``).
    """
    rng = np.random.default_rng(30)
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A0, B0 = random_factors(rng, (n, k), dtype) / np.sqrt(n), random_factors(rng, (n, k), dtype) / np.sqrt(n)
    expected = project_limit_of_huge_steps(U, A0, B0)
    top = 1000 if np.finfo(dtype).maxexp > 128 else 120
    for e in (60, 200, 2000 if top == 1000 else 240):
        A = (A0 * 2.0 ** min(e, top)).astype(dtype)
        B = (B0 * 2.0 ** (e - min(e, top))).astype(dtype)
        atol = 1e-12 if dtype != np.float32 else 1e-6
        np.testing.assert_allclose(uu.project(U, A, B), expected, atol=atol, err_msg=f"e={e}")


def test_large_steps_below_the_limit_match_mpmath():
    """2^40-2^50 times U's scale with r = 40: the SVD path, not yet the limit, still exact."""
    pytest.importorskip("mpmath")
    rng = np.random.default_rng(68)
    n, k = 48, 20
    U = uu.random_unitary(n, dtype=np.float64, rng=rng)
    A0, B0 = random_factors(rng, (n, k), np.float64) / np.sqrt(n), random_factors(rng, (n, k), np.float64) / np.sqrt(n)
    for e in (40, 50):
        A = A0 * 2.0**e
        expected = project_reference_mpmath(U, A, B0, digits=60)
        np.testing.assert_allclose(uu.project(U, A, B0), expected, atol=1e-9, err_msg=f"e={e}")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("backend_option", ["auto", "numpy"])
def test_huge_project_steps_give_the_limit_of_the_polar_factor(dtype, backend_option):
    """``|A B^H|`` from 2^60 to 2^2000: the polar factor's limit, not just some unitary matrix.

    The identity term of the core, ``2^-e``, underflowed to 0 beyond about 1e306 (e > 1022),
    and the SVD of the rank-deficient rest picked an arbitrary map between its null spaces
    (off by up to 1.2).
    """
    rng = np.random.default_rng(23)
    n = 7
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A0, B0 = random_factors(rng, (n, 2), dtype), random_factors(rng, (n, 2), dtype)
    expected = project_limit_of_huge_steps(U, A0, B0)
    # the largest exponent each factor can hold: 2^1000 in double, 2^120 in single precision
    top = 1000 if np.finfo(dtype).maxexp > 128 else 120
    for e in (60, top - 20, top, 2 * top):
        A, B = A0 * 2.0 ** min(e, top), B0 * 2.0 ** (e - min(e, top))  # exact: powers of two
        A, B = A.astype(dtype), B.astype(dtype)
        assert np.isfinite(A).all()
        assert np.isfinite(B).all()
        with uu.options(backend=backend_option):
            got = uu.project(U, A, B)
        np.testing.assert_allclose(got, expected, atol=100 * np.sqrt(n) * np.finfo(dtype).eps, err_msg=f"e={e}")


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("norms", [(1e60, 1e10), (1e100, 1e40), (1e170, 1e160)])
def test_huge_steps_keep_their_small_singular_values(dtype, norms):
    """A step whose columns differ by up to 1e60 in norm: its smaller singular values still count.

    Capping the core's identity term too early (at 2^-159) replaced them by the cap's own
    scale and gave a unitary matrix off the polar factor by up to 1.3.  Reference: an mpmath
    SVD of U + A B^H in enough digits to keep U beside the step.
    """
    pytest.importorskip("mpmath")
    rng = np.random.default_rng(25)
    n = 5
    U = uu.random_unitary(n, dtype=dtype, rng=rng)
    A = (random_factors(rng, (n, 2), dtype) * np.array(norms)).astype(dtype)
    B = random_factors(rng, (n, 2), dtype)
    expected = project_reference_mpmath(U, A, B, digits=2 * int(np.log10(norms[0])) + 40)
    np.testing.assert_allclose(uu.project(U, A, B), expected, atol=1e-12)


@pytest.mark.parametrize("fn", [uu.project, uu.transport])
def test_float64_factors_beyond_float32_with_a_float32_u(fn):
    """A float64 A of 1e300 (and B of 1e-300) with a float32 U: the product is ~1, the answer the unit one."""
    rng = np.random.default_rng(22)
    U = uu.random_unitary(5, dtype=np.float32, rng=rng)
    A, B = rng.standard_normal((5, 1)), rng.standard_normal((5, 1))
    expected = fn(U, A.astype(np.float32), B.astype(np.float32))
    got = fn(U, 1e300 * A, 1e-300 * B)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    big = fn(U, 1e300 * A, B)  # a product of 1e300: a valid rotation, not NaN
    assert uu.unitarity_error(big) < 1e-5


def test_casting_a_factor_that_overflows_u_s_dtype_names_it():
    from unitary_update._validation import cast_to, check_factor_pair

    U = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"A overflows float32 \(U's dtype\): its largest entry is 1e\+300"):
        check_factor_pair(U, np.full((3, 1), 1e300), np.ones((3, 1)))
    assert cast_to(np.full(2, 1e-300), np.float32, "B", "U").dtype == np.float32  # underflow is fine


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("method", SKETCH_METHODS)
def test_sketch_of_g_at_the_ends_of_the_dtype_range(dtype, method):
    rng = np.random.default_rng(23)
    n = 12
    X0, Y0 = random_factors(rng, (n, 2), dtype), random_factors(rng, (n, 2), dtype)
    G0 = X0 @ Y0.conj().T / 8
    finfo = np.finfo(dtype)
    for scale in (float(finfo.tiny) * 1e-3, float(finfo.max) / 1e2):
        G = (G0 * scale).astype(dtype)
        A, B = uu.sketch(G, 2, method=method, rng=0)
        assert np.all(np.isfinite(A))
        assert np.all(np.isfinite(B))
        assert A.dtype == dtype
        approx = (A.astype(np.complex128) / np.sqrt(scale)) @ (B.astype(np.complex128) / np.sqrt(scale)).conj().T
        assert np.linalg.norm(approx - G0) <= 1e-2 * np.linalg.norm(G0), scale
    # a factored G whose product is beyond the dtype (each factor near the top of the range)
    s = np.sqrt(float(finfo.max)) * 4
    A, B = uu.sketch(((X0 * s).astype(dtype), (Y0 * s).astype(dtype)), 2, method=method, rng=0)
    approx = (A.astype(np.complex128) / s) @ (B.astype(np.complex128) / s).conj().T
    assert np.linalg.norm(approx - X0 @ Y0.conj().T) <= 1e-2 * np.linalg.norm(X0 @ Y0.conj().T)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_retract_metrics_and_drift_at_the_ends_of_the_range(dtype):
    finfo = np.finfo(dtype)
    U = uu.random_unitary(8, dtype=dtype, rng=24)
    G = np.random.default_rng(25).standard_normal((8, 8)).astype(dtype)
    for scale in (float(finfo.tiny) / 16, float(finfo.max) / 64):
        V = uu.step(U, (G * dtype(scale)).astype(dtype), rank=2, rng=0)
        assert uu.unitarity_error(V) <= unitary_tol(dtype, 8)
        for method in ("polar", "newton_schulz", "qr"):
            R = uu.retract((U * dtype(scale)).astype(dtype), method=method)
            assert uu.unitarity_error(R) <= unitary_tol(dtype, 8), (scale, method)
    huge = (U.astype(np.float64) * 1e200) if dtype == np.float64 else (U * np.float32(1e38))
    assert uu.unitarity_error(huge) > 1e70  # inf in float64 when the Gram matrix overflows, not an error
    policy = uu.DriftControl(check_every=1)
    W = huge.copy()
    assert policy.maybe_retract(W) is True  # estimated (an overflow is an infinite drift) and retracted
    assert uu.unitarity_error(W) <= unitary_tol(dtype, 8)


def test_unitarity_error_of_a_huge_complex_matrix_is_inf_not_nan():
    """conj(z) z of a huge complex z overflows to inf - inf = NaN in its imaginary part: still an overflow."""
    huge = (1e155 + 1e155j) * np.eye(3)
    assert uu.unitarity_error(huge) == np.inf
    assert uu.unitarity_error(np.stack([np.eye(3, dtype=complex), huge])) == np.inf
    with uu.options(check_finite=False):
        assert np.isnan(uu.unitarity_error(np.full((3, 3), np.inf + 0j)))  # Inf in: NaN out, as NaN in


def test_random_unitary_takes_an_int_batch_shape_and_names_a_bad_one():
    Q = uu.random_unitary(3, dtype=np.float32, batch_shape=2, rng=0)
    np.testing.assert_array_equal(Q, uu.random_unitary(3, dtype=np.float32, batch_shape=(2,), rng=0))
    with pytest.raises(TypeError, match="batch_shape must be an int or a tuple of ints; got None"):
        uu.random_unitary(3, batch_shape=None)
    assert uu.random_unitary(3, dtype=None, rng=0).dtype == np.complex128  # None: the default


def test_unitary_optimizer_with_a_float64_step_beyond_float32():
    from unitary_update.optim import SGD, UnitaryOptimizer

    U = uu.random_unitary(6, dtype=np.float32, rng=26)
    grad = 1e300 * np.random.default_rng(27).standard_normal((6, 6))
    UnitaryOptimizer(SGD(1.0), rank=2, rng=0).step(U, grad)
    assert U.dtype == np.float32
    assert uu.unitarity_error(U) < 1e-5


def test_lapack_failures_are_wrapped_and_nan_passes_with_check_finite_off(monkeypatch):
    U = uu.random_unitary(5, dtype=np.float64, rng=28)
    A = np.ones((5, 1))
    with uu.options(check_finite=False):
        V = uu.project(U, np.full((5, 1), np.nan), A)  # NaN in, NaN out, no LinAlgError
        assert np.isnan(V).any()
        assert np.isnan(uu.transport(U, np.full((5, 1), np.nan), A)).any()
        assert np.isnan(uu.retract(np.full((3, 3), np.nan))).all()

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge")

    import scipy.linalg

    monkeypatch.setattr(np.linalg, "svd", broken)
    monkeypatch.setattr(scipy.linalg, "svd", broken)  # the cores' driver (gesvd)
    kept = U.copy()
    # the BLAS/LAPACK path (small single matrices otherwise take the Numba kernel), with a T far
    # from unitary (near-unitary ones take Newton-Schulz, no SVD)
    with (
        uu.options(backend="numpy"),
        pytest.raises(uu.SingularUpdateError, match="the SVD of the r x r core did not converge"),
    ):
        uu.project(U, A, A, out=U)
    np.testing.assert_array_equal(U, kept)
    big = uu.random_unitary(40, dtype=np.float64, rng=29)  # r = 26 > 25: the core goes to gesvd
    kept_big = big.copy()
    with pytest.raises(uu.SingularUpdateError, match="the SVD of the r x r core did not converge"):
        uu.project(big, np.ones((40, 13)), np.ones((40, 13)), out=big)
    np.testing.assert_array_equal(big, kept_big)
    with pytest.raises(
        uu.SingularUpdateError, match=r"the SVD of U did not converge \(SVD did not converge\); U was not retracted"
    ):
        uu.retract(1.5 * U)
    assert issubclass(uu.SingularUpdateError, np.linalg.LinAlgError)


@pytest.mark.parametrize("backend_option", ["auto", "numba", "numpy"])
@pytest.mark.parametrize("fn", [uu.project, uu.transport])
def test_u_with_entries_near_overflow_is_refused_before_anything_is_written(backend_option, fn):
    """A (grossly non-unitary) finite U whose products overflow: an error naming U, never NaN."""
    U = uu.random_unitary(8, dtype=np.float32, batch_shape=(20,), rng=29)
    U[3] = (U[3].astype(np.float64) * (3.3e38 / float(np.abs(U[3]).max()))).astype(np.float32)
    A = np.ones((20, 8, 1), dtype=np.float32)
    kept = U.copy()
    with uu.options(backend=backend_option), pytest.raises(uu.NonFiniteError, match="U\\^H A overflows"):
        fn(U, A, A, out=U)
    np.testing.assert_array_equal(U, kept)


N_SMALL = 6


def test_a_wider_step_that_overflows_the_parameter_s_dtype_is_refused_before_anything_changes():
    # SGD's float64 step of 1e299 cast into a float32 parameter would be -inf
    from unitary_update.optim import SGD

    opt = SGD(0.1, momentum=0.5)
    params = {"ok": np.ones(2), "w": np.ones(3, dtype=np.float32)}
    with pytest.raises(ValueError, match=r"the step for params\['w'\] overflows float32"):
        opt.step(params, {"ok": np.ones(2), "w": np.full(3, 1e300)})
    assert opt.state == {}
    assert opt.t == {}
    np.testing.assert_array_equal(params["w"], 1.0)
    np.testing.assert_array_equal(params["ok"], 1.0)
    opt.step(params, {"ok": np.ones(2), "w": np.full(3, 1e30)})  # in range: applied, finite
    np.testing.assert_allclose(params["w"], 1 - 0.1e30, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
@pytest.mark.parametrize("update", ["project", "transport"])
def test_step_with_factored_gradient_beyond_the_square_of_single_precision(dtype, update):
    # X Y^H ~ 1e77: its rank-k factors overflow float32 (sketch refuses, naming G); step sketches
    # in double precision and the update rescales the factors for the float32 U
    top = np.finfo(dtype).max
    X, Y = np.full((N_SMALL, 2), top, dtype), np.full((N_SMALL, 2), top, dtype)
    with pytest.raises(ValueError, match="G is too large for"):
        uu.sketch((X, Y), 2, rng=0)
    U = uu.random_unitary(N_SMALL, dtype=dtype, rng=40)
    V = uu.step(U, (X, Y), rank=2, update=update, rng=0)
    assert V.dtype == dtype
    assert uu.unitarity_error(V) < 1e-5
    wide = np.complex128 if np.dtype(dtype).kind == "c" else np.float64
    reference = uu.step(U, (X.astype(wide), Y.astype(wide)), rank=2, update=update, rng=0)
    np.testing.assert_allclose(V, reference, atol=1e-5)


NON_FINITE_OFF_CALLS = {
    "project": lambda U, G: uu.project(U, G[:, :2], U[:, :2]),
    "transport": lambda U, G: uu.transport(U, U[:, :2], G[:, :2]),
    "project U": lambda U, G: uu.project(G, U[:, :1], U[:, :1]),
    "transport U": lambda U, G: uu.transport(G, U[:, :1], U[:, :1]),
    "batched A": lambda U, G: uu.project(np.stack([U] * 17), np.stack([G[:, :1]] * 17), np.stack([U[:, :1]] * 17)),
    "sketch exact": lambda U, G: uu.sketch(G, 2, method="exact")[0],
    "sketch randomized": lambda U, G: uu.sketch(G, 2, rng=0)[0],
    "sketch factored": lambda U, G: uu.sketch((G[:, :3], U[:, :3]), 2, method="exact")[0],
    "step": lambda U, G: uu.step(U, G, rank=2, rng=0),
    "retract polar": lambda U, G: uu.retract(G, method="polar"),
    "retract qr": lambda U, G: uu.retract(G, method="qr"),
    "retract newton_schulz": lambda U, G: uu.retract(G, method="newton_schulz"),
    "unitarity_error": lambda U, G: np.array(uu.unitarity_error(G)),
    "drift estimate": lambda U, G: np.array(uu.DriftControl().estimate(G)),
}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("call", list(NON_FINITE_OFF_CALLS))
def test_non_finite_input_with_check_finite_off_gives_nan_without_warnings_or_hangs(call, bad):
    # NaN/Inf in, NaN/Inf out: never a finite (wrong) answer, a warning (an error under -W error), or a
    # LAPACK SVD that loops forever on Inf (sketch "exact" and retract "polar" hung before)
    U = uu.random_unitary(N_SMALL, dtype=np.float64, rng=41)
    G = U.copy()
    G[0, 0] = bad
    with uu.options(check_finite=False), warnings.catch_warnings():
        warnings.simplefilter("error")
        result = NON_FINITE_OFF_CALLS[call](U, G)
    assert not np.isfinite(result).all()  # NaN (or Inf for the two diagnostics of an Inf U)
