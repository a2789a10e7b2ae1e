"""Matrix products: one GEMM entry point over a CBLAS library found at run time.

streamlm multiplies through ``cblas_sgemm``/``cblas_dgemm`` called with
ctypes rather than numpy's ``@``, for two reasons:

- ``beta``: gradients accumulate (``C = A @ B + C``) with no temporary and no
  second pass over C; strided row and column slices go in without copies.
- the library: numpy's own bundled OpenBLAS by default, or Intel MKL when it
  is installed (``pip install 'streamlm[mkl]'``). On this project's AVX-512
  benchmark machine MKL's SGEMM runs 10-25% faster at H=650, which is what
  PyTorch uses (bench/HISTORY.md, "What changed in this round, and what each
  change bought", item 3; bench/results/REPORT.md, "Speed (tokens/s, V=10000)").

Choose with ``STREAMLM_BLAS``: ``auto`` (default: MKL if found, else numpy's
OpenBLAS), ``numpy``, ``mkl``, or the path of any library exporting
``cblas_sgemm``/``cblas_dgemm`` with 32-bit ints. ``STREAMLM_BLAS=off`` makes
every product a plain numpy ``@`` (the reference path).

Every call runs in the calling thread: numpy's BLAS is held at one thread
(threadpoolctl) while streamlm's own threads compute (``streamlm.compute.threads.Pool``)
and MKL is loaded with its sequential threading layer. numpy's library is
found with threadpoolctl, wherever it lives (numpy's wheel, conda, the
system). Layouts the library cannot take (negative or non-unit inner
strides, mixed dtypes) fall back to numpy.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


@dataclass
class Library:
    """A loaded CBLAS library and its two GEMMs."""

    name: str  # "mkl", "openblas", "blis" or "custom"
    path: str
    sgemm: object
    dgemm: object


def _gemm_fn(lib, name, int_t, real_t):
    fn = getattr(lib, name)
    fn.restype = None
    f = ctypes.c_int
    fn.argtypes = [f, f, f, int_t, int_t, int_t, real_t, ctypes.c_void_p, int_t,
                   ctypes.c_void_p, int_t, real_t, ctypes.c_void_p, int_t]
    return fn


# (symbol prefix, symbol suffix, integer type) of the CBLAS builds seen in the wild:
# numpy's bundled scipy-openblas (64-bit ints, suffixed), then plain CBLAS
# (conda's and Debian's OpenBLAS, BLIS, FlexiBLAS)
_FLAVOURS = [("scipy_cblas_", "64_", ctypes.c_int64), ("scipy_cblas_", "", ctypes.c_int),
             ("cblas_", "64_", ctypes.c_int64), ("cblas_", "", ctypes.c_int)]


_OWN: set[str] = set()  # the BLAS files mkl_blas loaded (real paths)


def numpy_blas() -> Library | None:
    """The CBLAS of the BLAS library numpy itself loaded (as threadpoolctl finds it:
    numpy's bundled OpenBLAS, a conda or system OpenBLAS, BLIS...), or None."""
    from threadpoolctl import threadpool_info

    # the libraries streamlm loaded itself (an MKL for "auto") last: they are loaded in
    # the process too, but they are not numpy's
    infos = sorted(threadpool_info(), key=lambda i: os.path.realpath(i.get("filepath") or "")
                   in _OWN)
    for info in infos:
        if info.get("user_api") != "blas" or not info.get("filepath"):
            continue
        try:
            lib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for pre, suf, int_t in _FLAVOURS:
            s, d = f"{pre}sgemm{suf}", f"{pre}dgemm{suf}"
            if hasattr(lib, s) and hasattr(lib, d):
                name = info.get("internal_api") or "custom"
                return Library(name, info["filepath"], _gemm_fn(lib, s, int_t, ctypes.c_float),
                               _gemm_fn(lib, d, int_t, ctypes.c_double))
        log.debug("%s exports no CBLAS GEMM streamlm knows", info["filepath"])
    return None


def _mkl_candidates() -> list[str]:
    # this environment's own lib/ (where the mkl wheel and conda put it), not a
    # venv's base interpreter: an MKL there is not this environment's
    dirs = [os.path.join(sys.prefix, "lib"), os.path.join(sys.prefix, "Library", "bin")]
    dirs += [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    out = []
    for d in dirs:
        out += sorted(glob.glob(os.path.join(d, "libmkl_rt.so*")), reverse=True)
    return out


def mkl_blas(path: str | None = None) -> Library | None:
    """Intel MKL's single dynamic library (libmkl_rt), LP64, sequential; or None."""
    for p in ([path] if path else _mkl_candidates()):
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        if not all(hasattr(lib, n) for n in ("cblas_sgemm", "MKL_Set_Threading_Layer")):
            continue
        # before any other MKL call: LP64 ints, no OpenMP threads of its own
        lib.MKL_Set_Interface_Layer.argtypes = [ctypes.c_int]
        lib.MKL_Set_Interface_Layer(0)  # MKL_INTERFACE_LP64
        lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
        lib.MKL_Set_Threading_Layer(1)  # MKL_THREADING_SEQUENTIAL
        _OWN.add(os.path.realpath(p))
        return Library("mkl", p, _gemm_fn(lib, "cblas_sgemm", ctypes.c_int, ctypes.c_float),
                       _gemm_fn(lib, "cblas_dgemm", ctypes.c_int, ctypes.c_double))
    return None


def _custom(path: str) -> Library | None:
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    if not (hasattr(lib, "cblas_sgemm") and hasattr(lib, "cblas_dgemm")):
        return None
    return Library("custom", path, _gemm_fn(lib, "cblas_sgemm", ctypes.c_int, ctypes.c_float),
                   _gemm_fn(lib, "cblas_dgemm", ctypes.c_int, ctypes.c_double))


_LIB: Library | None = None
_LOADED = False


def load(choice: str | None = None) -> Library | None:
    """Select the library (``choice`` or $STREAMLM_BLAS, default auto); None = numpy @.

    Idempotent unless ``choice`` is given.
    """
    global _LIB, _LOADED
    if _LOADED and choice is None:
        return _LIB
    choice = (choice or os.environ.get("STREAMLM_BLAS") or "auto").strip()
    lib = None
    if choice == "off":
        lib = None
    elif choice == "numpy":
        lib = numpy_blas()
    elif choice == "mkl":
        lib = mkl_blas()
        if lib is None:
            log.warning("STREAMLM_BLAS=mkl but libmkl_rt was not found "
                        "(pip install 'streamlm[mkl]'); using numpy's OpenBLAS")
            lib = numpy_blas()
    elif choice == "auto":
        lib = mkl_blas() or numpy_blas()
    else:
        lib = (mkl_blas(choice) or _custom(choice)) if os.path.exists(choice) else None
        if lib is None:
            log.warning("STREAMLM_BLAS=%s: not a CBLAS library; using numpy's OpenBLAS", choice)
            lib = numpy_blas()
    if lib is None and choice != "off":
        log.debug("no CBLAS library found: matrix products go through numpy")
    _LIB, _LOADED = lib, True
    log.debug("BLAS: %s", describe())
    return lib


def single_thread_limit():
    """Hold the BLAS libraries of this process (numpy's) at one thread, with
    threadpoolctl, while streamlm's own threads multiply: returns the limit
    (``.restore_original_limits()`` undoes it), or None when there is no BLAS
    threadpoolctl can control. MKL as streamlm loads it is sequential anyway."""
    from threadpoolctl import ThreadpoolController

    ctl = ThreadpoolController().select(user_api="blas")
    if not ctl.lib_controllers:
        return None
    return ctl.limit(limits=1)


def name() -> str:
    """Which library multiplies: 'mkl', 'openblas', 'blis', 'custom' or 'numpy @'."""
    lib = _LIB if _LOADED else load()
    return "numpy @" if lib is None else lib.name


def describe() -> str:
    """name() with the library's path, e.g. 'mkl (/venv/lib/libmkl_rt.so.2)'."""
    lib = _LIB if _LOADED else load()
    return name() if lib is None else f"{lib.name} ({lib.path})"


def _operand(X: np.ndarray):
    """(transpose flag, leading dimension) to pass X as op(X), or None."""
    r, c = X.shape
    s0, s1 = X.strides
    it = X.itemsize
    if s0 % it or s1 % it or s0 < 0 or s1 < 0:
        return None
    if s1 == it or c == 1:
        ld = s0 // it if r > 1 else max(c, 1)
        if ld >= max(c, 1):
            return _NO_TRANS, ld
    if s0 == it or r == 1:
        ld = s1 // it if c > 1 else max(r, 1)
        if ld >= max(r, 1):
            return _TRANS, ld
    return None


def gemm(A: np.ndarray, B: np.ndarray, C: np.ndarray, beta: float = 0.0) -> np.ndarray:
    """C = A @ B + beta * C, in place; returns C.

    A: (m, k), B: (k, n), C: (m, n), one float dtype. Any of them may be a
    strided view (a row or column slice, a transpose); C's rows must be
    contiguous. beta=0 ignores C's old contents (NaN included).
    """
    m, k = A.shape
    k2, n = B.shape
    if k2 != k or C.shape != (m, n):
        raise ValueError(f"gemm shapes {A.shape} @ {B.shape} -> {C.shape}")
    lib = _LIB if _LOADED else load()
    dt = C.dtype
    fn = None
    if lib is not None and A.dtype == dt and B.dtype == dt:
        fn = lib.sgemm if dt == np.float32 else lib.dgemm if dt == np.float64 else None
    oa = ob = oc = None
    if fn is not None:
        oa, ob, oc = _operand(A), _operand(B), _operand(C)
        if oc is not None and oc[0] == _TRANS:  # C's columns contiguous: C^T = B^T A^T
            return gemm(B.T, A.T, C.T, beta).T
    if fn is None or oa is None or ob is None or oc is None:
        if beta == 0.0:
            np.matmul(A, B, out=C)
        else:
            if beta != 1.0:
                C *= beta
            C += A @ B
        return C
    if m == 0 or n == 0:
        return C
    if k == 0:
        if beta == 0.0:
            C[...] = 0
        elif beta != 1.0:
            C *= beta
        return C
    fn(_ROW_MAJOR, oa[0], ob[0], m, n, k, 1.0, A.ctypes.data, oa[1], B.ctypes.data, ob[1],
       float(beta), C.ctypes.data, oc[1])
    return C
