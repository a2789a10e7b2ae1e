"""streamlm.compute.blas.gemm against numpy @, over the layouts streamlm passes it."""

import numpy as np
import pytest

from streamlm.compute import blas


def _views(rng, dtype, m, k, n):
    """(A, B, C) pairs of every layout: contiguous, transposed, sliced, strided."""
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    bigA = rng.standard_normal((m + 3, k + 5)).astype(dtype)
    bigB = rng.standard_normal((n + 2, k + 4)).astype(dtype)
    yield A, B
    yield np.asfortranarray(A), B  # A^T stored row-major
    yield A, np.ascontiguousarray(B.T).T  # B as a transpose view
    yield bigA[1:1 + m, 2:2 + k], bigB[1:1 + n, 3:3 + k].T  # row/col slices
    yield bigA[1:1 + m, 2:2 + k], B[:, ::-1]  # negative stride: numpy fallback


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 7, 5), (6, 1, 4), (13, 9, 11), (64, 40, 300)])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_gemm_matches_numpy(dtype, m, k, n, beta):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for A, B in _views(rng, dtype, m, k, n):
        C0 = rng.standard_normal((m, n)).astype(dtype)
        want = A.astype(np.float64) @ B.astype(np.float64) + beta * C0
        for C in (C0.copy(), np.asfortranarray(C0)):  # row-major and column-major C
            if beta == 0.0:
                C[...] = np.nan  # beta=0 must ignore C's contents
            out = blas.gemm(A, B, C, beta=beta)
            assert out is C or np.shares_memory(out, C)
            np.testing.assert_allclose(C, want, **tol)


def test_gemm_into_a_column_slice_accumulates_only_there():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((8, 5)).astype(np.float32)
    B = rng.standard_normal((5, 20)).astype(np.float32)
    G = np.ones((8, 30), np.float32)
    blas.gemm(A, B[:, 3:9], G[:, 10:16], beta=1.0)
    np.testing.assert_allclose(G[:, 10:16], 1 + A @ B[:, 3:9], rtol=1e-5)
    assert (G[:, :10] == 1).all() and (G[:, 16:] == 1).all()


def test_gemm_k_zero_and_empty():
    C = np.full((3, 4), 2.0, np.float32)
    blas.gemm(np.empty((3, 0), np.float32), np.empty((0, 4), np.float32), C, beta=1.0)
    assert (C == 2).all()
    blas.gemm(np.empty((3, 0), np.float32), np.empty((0, 4), np.float32), C)
    assert (C == 0).all()
    e = np.empty((0, 4), np.float32)
    blas.gemm(np.empty((0, 5), np.float32), np.empty((5, 4), np.float32), e)


def test_gemm_shape_mismatch_raises():
    with pytest.raises(ValueError):
        blas.gemm(np.zeros((2, 3)), np.zeros((4, 5)), np.zeros((2, 5)))


def test_mixed_dtypes_fall_back_to_numpy():
    A = np.arange(6, dtype=np.float32).reshape(2, 3)
    B = np.arange(12, dtype=np.float64).reshape(3, 4)
    C = np.zeros((2, 4))
    blas.gemm(A, B, C)
    np.testing.assert_array_equal(C, A.astype(np.float64) @ B)


def test_load_choices(monkeypatch):
    try:
        lib = blas.load("off")
        assert lib is None and blas.describe() == "numpy @"
        A = np.ones((2, 3), np.float32)
        C = np.zeros((2, 2), np.float32)
        blas.gemm(A, A.T, C)
        assert (C == 3).all()
        lib = blas.load("numpy")
        assert lib is not None and lib.name == "openblas"  # numpy wheels bundle OpenBLAS
        lib = blas.load("/nonexistent/libcblas.so")  # warns, falls back
        assert lib is not None and lib.name == "openblas"
    finally:
        blas.load("auto")  # what every other test runs with


def _assert_sgemm_multiplies(lib, m, k, n, seed):
    """lib's raw cblas_sgemm (row-major, no transposes) gives numpy's product."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, k)).astype(np.float32)
    B = rng.standard_normal((k, n)).astype(np.float32)
    C = np.zeros((m, n), np.float32)
    lib.sgemm(101, 111, 111, m, n, k, 1.0, A.ctypes.data, k, B.ctypes.data, n, 0.0,
              C.ctypes.data, n)
    np.testing.assert_allclose(C, A @ B, rtol=1e-5, atol=1e-5)


def test_mkl_when_installed():
    lib = blas.mkl_blas()
    if lib is None:
        pytest.skip("MKL not installed (pip install 'streamlm[mkl]')")
    _assert_sgemm_multiplies(lib, 30, 20, 50, seed=3)


def test_numpys_blas_is_found_wherever_it_lives(monkeypatch, tmp_path):
    """numpy's library is taken from threadpoolctl, not from numpy's wheel layout: an
    OpenBLAS elsewhere (as conda's is, under $PREFIX/lib) is found and multiplies."""
    import shutil

    import threadpoolctl

    # (numpy's OpenBLAS, wherever it is in the list: MKL comes first once a test
    # before this one loaded it)
    real = [i for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas" and i["internal_api"] == "openblas"]
    if not real:
        pytest.skip("numpy is not linked to OpenBLAS here")
    elsewhere = tmp_path / "lib" / "libopenblas.so.0"
    elsewhere.parent.mkdir()
    shutil.copy(real[0]["filepath"], elsewhere)
    fake = [dict(real[0], filepath=str(elsewhere), prefix="libopenblas")]
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: fake)
    lib = blas.numpy_blas()
    assert lib is not None and lib.path == str(elsewhere) and lib.name == "openblas"
    _assert_sgemm_multiplies(lib, 7, 5, 3, seed=4)


def test_no_blas_library_found_means_numpy_matmul(monkeypatch):
    import threadpoolctl

    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [])
    assert blas.numpy_blas() is None
