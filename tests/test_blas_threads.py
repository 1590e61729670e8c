"""The in-place BLAS products (NumPy's own BLAS, SciPy's as fallback), the thread policy, and the fast r x r cores."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.linalg
from helpers import ALL_DTYPES

import unitary_update as uu
from unitary_update import _blas, _lowrank, _threads, reference


def _operands(rng, dtype, m, k, n, trans_a, trans_b):
    def draw(shape):
        x = rng.standard_normal(shape)
        if np.dtype(dtype).kind == "c":
            x = x + 1j * rng.standard_normal(shape)
        return x.astype(dtype)

    A = draw((k, m)).T if trans_a else draw((m, k))
    B = draw((n, k)).T if trans_b else draw((k, n))
    return A, B, draw((m, n))


@pytest.fixture(params=["numpy-blas", "scipy-blas"])
def blas_library(request, monkeypatch):
    """Run a test with NumPy's BLAS (the default) and with the SciPy fallback."""
    if request.param == "scipy-blas":
        monkeypatch.setattr(_blas, "numpy_cblas_gemm", lambda dtype: None)
    elif _blas.numpy_cblas_gemm(np.dtype(np.float64)) is None:  # pragma: no cover - another NumPy build
        pytest.skip("NumPy's BLAS exposes no recognised CBLAS gemm")
    return request.param


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize(("trans_a", "trans_b", "conj_b"), [(0, 0, 0), (1, 1, 0), (0, 1, 1), (1, 0, 1)])
@pytest.mark.parametrize(("m", "k", "n"), [(5, 3, 7), (1, 2, 4), (4, 1, 1), (6, 6, 6)])
def test_addmm_matches_matmul(blas_library, dtype, order, trans_a, trans_b, conj_b, m, k, n):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    A, B, C = _operands(rng, dtype, m, k, n, trans_a, trans_b)
    C = np.asarray(C, order=order)
    A_before, B_before = A.copy(), B.copy()
    expected = C + A @ (np.conj(B) if conj_b else B)
    _blas.addmm_(C, A, B, conj_b=bool(conj_b))
    np.testing.assert_allclose(C, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(A, A_before)  # operands are read, never written
    np.testing.assert_array_equal(B, B_before)


def test_addmm_on_row_panels_and_column_slices(blas_library):
    """Views with a leading dimension larger than their width (a panel of U, columns of P)."""
    rng = np.random.default_rng(3)
    U = rng.standard_normal((9, 9))
    P = rng.standard_normal((9, 6))
    W = rng.standard_normal((9, 4))
    expected = U.copy()
    expected[2:7] += P[2:7, 1:5] @ W.T
    _blas.addmm_(U[2:7], P[2:7, 1:5], W.T)
    np.testing.assert_allclose(U, expected, rtol=1e-12, atol=1e-12)


def test_numpy_cblas_gemm_is_numpys_library():
    """The products of an update run in the BLAS that NumPy's matmul uses (one library, one thread pool)."""
    call = _blas.numpy_cblas_gemm(np.dtype(np.float32))
    if call is None:  # pragma: no cover - another NumPy build
        pytest.skip("NumPy's BLAS exposes no recognised CBLAS gemm")
    assert _blas.numpy_cblas_gemm(np.dtype(np.int32)) is None


def test_update_agrees_with_both_blas_libraries(monkeypatch):
    rng = np.random.default_rng(4)
    U = uu.random_unitary(40, dtype=np.complex128, rng=1)
    A, B = rng.standard_normal((2, 40, 12)) + 1j * rng.standard_normal((2, 40, 12))
    with uu.options(backend="numpy"):
        first = uu.project(U, A, B)
        monkeypatch.setattr(_blas, "numpy_cblas_gemm", lambda dtype: None)
        second = uu.project(U, A, B)
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-13)
    np.testing.assert_allclose(first, scipy.linalg.polar(U + A @ B.conj().T)[0], rtol=0, atol=1e-12)


def test_single_threaded_blas_restores_counts_when_nested_and_concurrent():
    libraries = _threads.blas_libraries()
    before = [lib.num_threads for lib in libraries]
    entered = threading.Barrier(2)
    seen = []

    def worker():
        with _threads.single_threaded_blas(1 << 30):
            entered.wait()
            seen.append([lib.num_threads for lib in libraries])
            entered.wait()

    thread = threading.Thread(target=worker)
    thread.start()
    with _threads.single_threaded_blas(1 << 30):
        with _threads.single_threaded_blas(1 << 30):
            entered.wait()
            inside = [lib.num_threads for lib in libraries]
            entered.wait()
        still = [lib.num_threads for lib in libraries]
    thread.join()
    assert inside == seen[0] == still == [1] * len(libraries)
    assert [lib.num_threads for lib in libraries] == before


def test_single_threaded_blas_restores_counts_after_an_error():
    libraries = _threads.blas_libraries()
    before = [lib.num_threads for lib in libraries]
    with pytest.raises(RuntimeError), _threads.single_threaded_blas(1 << 30):
        raise RuntimeError
    assert [lib.num_threads for lib in libraries] == before


def test_small_work_changes_no_thread_count(monkeypatch):
    monkeypatch.setattr(_threads, "blas_libraries", lambda: pytest.fail("small work must not touch BLAS"))
    with _threads.single_threaded_blas(_threads.MIN_WORK - 1):
        pass


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
@pytest.mark.parametrize("kind", ["project", "transport"])
def test_small_updates_run_on_one_blas_thread_and_large_ones_on_all(monkeypatch, dtype, kind):
    """Below SERIAL_MAX_WORK multiply-adds the whole update, its rank-r product included, runs on one thread."""
    from threadpoolctl import threadpool_limits

    libraries = _threads.blas_libraries()
    seen = []
    real = _lowrank.apply_update

    def spy(*args):
        seen.append([lib.num_threads for lib in libraries])
        return real(*args)

    monkeypatch.setattr(_lowrank, "apply_update", spy)
    update = getattr(uu, kind)
    complex_ = np.dtype(dtype).kind == "c"
    # (N, k): N^2 * 2k (x4 complex) below SERIAL_MAX_WORK but above MIN_WORK, then above SERIAL_MAX_WORK
    small, large = ((128, 2), (256, 8)) if complex_ else ((190, 8), (512, 8))
    assert _threads.MIN_WORK <= small[0] ** 2 * 2 * small[1] * (4 if complex_ else 1) < _threads.SERIAL_MAX_WORK
    with threadpool_limits(2, user_api="blas"), uu.options(backend="numpy"):
        before = [lib.num_threads for lib in libraries]
        for n, k in (small, large):
            U = uu.random_unitary(n, dtype=dtype, rng=0)
            A = np.full((n, k), 1e-3, dtype=dtype)
            expected = getattr(reference, f"{kind}_dense")(U, A, A)
            update(U, A, A, out=U)
            np.testing.assert_allclose(U, expected, atol=1e-4)
        assert [lib.num_threads for lib in libraries] == before == [2] * len(libraries)
    assert seen == [[1] * len(libraries), [2] * len(libraries)]


# ---- the fast r x r cores against SciPy's polar and expm, and their fallbacks -----------------
@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("scale", [1e-8, 1e-2, 0.3, 3.0, 40.0, 1e4])
def test_fast_cores_match_scipy(complex_, scale):
    rng = np.random.default_rng(int(scale * 1000) % 997)
    r, k = 16, 8
    a = rng.standard_normal((r, k)) * scale
    b = rng.standard_normal((r, k)) / np.sqrt(r)
    if complex_:
        a = a + 1j * rng.standard_normal((r, k)) * scale
        b = b * (1 - 2j)
    ab = a @ b.conj().T
    eye = np.eye(r)
    D = _lowrank.project_core(np, a, b)
    np.testing.assert_allclose(D, scipy.linalg.polar(eye + ab)[0] - eye, rtol=0, atol=1e-11 * max(1.0, scale))
    D = _lowrank.transport_core(np, a, b)
    assert D.dtype == (np.complex128 if complex_ else np.float64)  # real inputs: a real core
    np.testing.assert_allclose(
        D, scipy.linalg.expm(0.5 * (ab - ab.conj().T)) - eye, rtol=0, atol=1e-10 * max(1.0, scale)
    )
    Q = eye + D
    np.testing.assert_allclose(Q.conj().T @ Q, eye, rtol=0, atol=1e-12)


def test_newton_schulz_declines_far_from_unitary_and_singular_cores():
    eye = np.eye(4)
    assert _lowrank._newton_schulz_polar(3.0 * eye, eye) is None  # ||T^H T - I|| = 8: the SVD's job
    T = eye.copy()
    T[0, 0] = 0.0  # singular: any polar factor is a nearest unitary; the SVD picks one
    assert _lowrank._newton_schulz_polar(T, eye) is None
    assert _lowrank._newton_schulz_polar(np.full((4, 4), np.nan), eye) is None
    T = eye + 0.05 * np.triu(np.ones((4, 4)))
    Q = _lowrank._newton_schulz_polar(T, eye)
    np.testing.assert_allclose(Q, scipy.linalg.polar(T)[0], atol=1e-14)


def test_pade_declines_large_and_non_finite_angles():
    K = np.array([[0.0, 1e3], [-1e3, 0.0]])
    assert _lowrank._expm_minus_identity_pade(K) is None  # beyond 2^6 theta_13: eigh's job
    assert _lowrank._expm_minus_identity_pade(np.full((2, 2), np.nan)) is None
    K = np.array([[0.0, 50.0], [-50.0, 0.0]])  # within reach after squarings
    np.testing.assert_allclose(_lowrank._expm_minus_identity_pade(K), scipy.linalg.expm(K) - np.eye(2), atol=1e-12)


def test_single_matrix_kernels_stay_on_the_calling_thread(monkeypatch):
    """No second thread pool beside BLAS's for one matrix below 32 MiB (a parallel region waits for a core)."""
    import numba

    from unitary_update import _kernels

    requested = []
    real = numba.set_num_threads
    monkeypatch.setattr(numba, "set_num_threads", lambda n: (requested.append(n), real(n)))
    monkeypatch.setattr(_kernels, "_PARALLEL_MIN_BYTES", 0)  # even where a stack would go parallel
    U = uu.random_unitary(300, dtype=np.float32, rng=3)
    A = np.full((300, 1), 1e-3, dtype=np.float32)
    with uu.options(backend="numba"):
        uu.project(U, A, A, out=U)
    assert requested
    assert requested[0::2] == [1] * (len(requested) // 2)  # set to 1, then restored


def test_eigh_polar_serves_well_conditioned_cores_and_declines_the_others():
    rng = np.random.default_rng(11)
    eye = np.eye(12)
    Q1, Q2 = (np.linalg.qr(rng.standard_normal((12, 12)))[0] for _ in range(2))
    T = (Q1 * np.linspace(0.5, 3.0, 12)) @ Q2  # far from unitary for Newton-Schulz, cond(T) = 6
    assert _lowrank._newton_schulz_polar(T, eye) is None
    Q = _lowrank._eigh_polar(T, eye)
    np.testing.assert_allclose(Q, scipy.linalg.polar(T)[0], rtol=0, atol=1e-13)
    assert _lowrank._eigh_polar(np.diag(np.linspace(1e-3, 1.0, 12)), eye) is None  # cond 1000: the SVD's job
    assert _lowrank._eigh_polar(np.full((12, 12), np.nan), eye) is None
    assert _lowrank._eigh_polar(np.zeros((12, 12)), eye) is None  # U + A B^H = 0: singular


@pytest.mark.parametrize("dtype", [*ALL_DTYPES, np.float16])
@pytest.mark.parametrize("order", ["C", "F"])
def test_finite_check_of_large_arrays_finds_every_non_finite_entry(dtype, order):
    """The one-pass BLAS pre-test (sum of squares) never passes a NaN/Inf, and a finite sum overflow is not an error."""
    from unitary_update._validation import _all_finite_numpy

    x = np.ones((300, 300), dtype=dtype, order=order)
    assert _all_finite_numpy(x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy(order="A")
        y[123, 45] = bad
        assert not _all_finite_numpy(y)
        if np.dtype(dtype).kind == "c":
            y = x.copy(order="A")
            y[7, 8] = complex(0.0, bad)
            assert not _all_finite_numpy(y)
    huge = np.full((300, 300), np.finfo(dtype).max / 2, dtype=dtype, order=order)
    assert _all_finite_numpy(huge)  # its sum of squares overflows: the element test decides


def test_limit_applies_whichever_thread_set_it_before():
    """threadpoolctl lets one living "controlling" thread set OpenBLAS's limit; ours must act from any thread."""
    libraries = _threads.blas_libraries()
    before = [lib.num_threads for lib in libraries]
    done, release = threading.Event(), threading.Event()

    def first_user():
        with _threads.single_threaded_blas(1 << 30):
            pass
        done.set()
        release.wait(10)  # stays alive while the main thread limits

    thread = threading.Thread(target=first_user)
    thread.start()
    done.wait(10)
    try:
        with _threads.single_threaded_blas(1 << 30):
            assert [lib.num_threads for lib in libraries] == [1] * len(libraries)
        assert [lib.num_threads for lib in libraries] == before
    finally:
        release.set()
        thread.join()
