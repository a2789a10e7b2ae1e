"""numba's set-up for streamlm's kernels, done once when streamlm.kernels is imported.

Not kernels themselves (those all live in streamlm.kernels, where numba's cache
sees their changes): the CPU features numba compiles for, and, for the
``streamlm`` command only, loading numba's registries without SciPy.
"""

from __future__ import annotations


def wide_vectors() -> str:
    """Let LLVM use 512-bit vectors on a CPU with AVX-512; returns what was decided.

    For Intel's server CPUs LLVM prefers 256-bit vectors ('prefer-256-bit', to
    spare the clock of early AVX-512 chips). The recurrence's panels of 64
    outputs then take 8 registers per stream instead of 4, and a group of four
    streams (32 accumulators) no longer fits in the register file: on an
    AVX-512 Xeon (Sapphire Rapids class) filter-mode scoring was 1.22x faster
    end to end with 512-bit vectors, with the same perplexity (README, "The
    class softmax, and why not KenLM"). AMD's Zen 4 prefers 512 bits already.
    Set before numba builds its target (numba's cache keys on the features, so
    the two settings do not mix); NUMBA_CPU_NAME or NUMBA_CPU_FEATURES, if set,
    are left as they are.
    """
    import os

    from numba.core import config, registry

    if os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES") \
            or config.CPU_FEATURES is not None:
        return "numba's environment"
    if "_toplevel_target_context" in vars(registry.cpu_target):
        return "too late: numba has compiled already"
    import llvmlite.binding as ll

    features = ll.get_host_cpu_features()
    if not features.get("avx512f"):
        return "no AVX-512"
    config.CPU_FEATURES = features.flatten() + ",-prefer-256-bit"
    return "512-bit vectors"


def load_registries_without_scipy() -> None:
    """Load numba's lowering registries now, hiding scipy.linalg meanwhile.

    At its first compile or cache load numba imports ``numba.np.arraymath``,
    which imports scipy.linalg (0.3-1 s) only to see whether ``np.dot`` can
    work inside kernels. streamlm's kernels never call it (the matrix
    products run in numpy between kernels), so the import is hidden for that
    moment: ``np.dot`` inside @njit code of this process then needs SciPy
    and fails. Only the ``streamlm`` command does this (it sets
    STREAMLM_FAST_START=1); importing streamlm as a library leaves numba alone.
    Set STREAMLM_NUMBA_BLAS=1 to keep numba's BLAS support in the command too.
    Does nothing when scipy.linalg is already imported.
    """
    import os
    import sys

    key = "scipy.linalg.cython_blas"
    if os.environ.get("STREAMLM_FAST_START") != "1":  # set by the CLI only: a library
        return  # import must not change numba for the user's own kernels
    if os.environ.get("STREAMLM_NUMBA_BLAS") == "1" or "scipy.linalg" in sys.modules:
        return
    from numba.core.registry import cpu_target

    missing = object()
    prev = sys.modules.get(key, missing)
    sys.modules[key] = None  # "import scipy.linalg.cython_blas" raises ImportError
    try:
        cpu_target.target_context.refresh()
    finally:
        if prev is missing:
            sys.modules.pop(key, None)
        else:
            sys.modules[key] = prev

