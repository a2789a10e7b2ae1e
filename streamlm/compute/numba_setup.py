"""numba's set-up for streamlm's kernels: :func:`configure`, called once, by
streamlm.compute.kernels before its first ``@njit``.

Not kernels themselves (those all live in streamlm.compute.kernels, where numba's cache
sees their changes): the CPU features numba compiles for, and, for the
``streamlm`` command only, lighter loads from numba's cache, and the line said
when the kernels compile.

Why there: numba builds its CPU target, and with it the features the code is
compiled for, when the process creates its first ``@njit`` dispatcher
(``Dispatcher.__init__`` asks for the target context), long before any kernel
compiles or loads. Every module that computes (cells, heads, model, threads,
train, the tokenizer's batch path), the tests and the benchmarks import
streamlm.compute.kernels; a set-up that each of them had to call first would, once
forgotten, compile silently for the other target (a second set of cache
entries, 256-bit vectors).
"""

from __future__ import annotations

SETUP: dict[str, str] | None = None  # what configure() decided (for a bug report)


def configure() -> dict[str, str]:
    """Set numba up for streamlm's kernels, once per process (later calls return the
    first's decisions): 512-bit vectors where the CPU has them (:func:`wide_vectors`),
    the command's light cache loads (:func:`light_cache_loads`) and the line said
    when the kernels compile (:func:`say_when_compiling`). Returns what was decided,
    also kept in ``SETUP``: numba's target is global, a bug report wants it."""
    global SETUP
    if SETUP is None:
        SETUP = {"vectors": wide_vectors(), "cache_loads": light_cache_loads(),
                 "compile_notice": say_when_compiling()}
    return SETUP


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


def light_cache_loads() -> str:
    """In the ``streamlm`` command: a kernel loaded from numba's cache starts only
    numba's runtime (NRT), not all of its registries; returns what was decided.

    numba's ``Cache.load_overload`` refreshes the whole target context before every
    load: the first one imports and registers all of numba's lowering and
    typing modules (numpy's, unicode's, the typed containers', and through
    ``numba.np.arraymath`` scipy.linalg), 0.3 s on the benchmark machine, which
    a cached kernel does not use: it is machine code already, linked against
    the runtime. The runtime is what it needs (a kernel that allocates calls
    NRT; without its initialisation it crashes), so a load here initialises
    that and nothing else. A compile (a cache miss, a new signature) refreshes
    everything first, as before: ``compile_extra`` does it itself. Only the
    ``streamlm`` command does this (it sets STREAMLM_FAST_START=1): importing
    streamlm as a library leaves numba alone. STREAMLM_NUMBA_BLAS=1 keeps
    numba's own loads (and so scipy.linalg at the first one) in the command too.
    """
    import os

    if os.environ.get("STREAMLM_FAST_START") != "1":  # set by the CLI only: a library
        return "numba's own"  # import must not change numba for the user's own kernels
    if os.environ.get("STREAMLM_NUMBA_BLAS") == "1":
        return "numba's own (STREAMLM_NUMBA_BLAS=1)"
    from numba.core import caching

    cache = caching.Cache
    if getattr(cache.load_overload, "_streamlm", False):
        return "runtime only"
    needed = ("_load_overload", "_guard_against_spurious_io_errors")
    if not all(hasattr(cache, n) for n in needed):  # another numba: leave it alone
        return "numba's own (unknown numba cache)"
    from numba.core.runtime import rtsys

    def load_overload(self, sig, target_context):
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    load_overload._streamlm = True
    cache.load_overload = load_overload
    return "runtime only"


COMPILING = "streamlm: compiling kernels (once per machine; about 20 s)"
_notice = None  # the listener of say_when_compiling, once registered


def say_when_compiling() -> str:
    """Log COMPILING once, when numba starts to compile one of streamlm's kernels
    (not when it loads one from its cache); returns what was decided.

    numba broadcasts a "numba:compile" event (``numba.core.event``, a documented
    API) only after its cache had no entry for the signature, around the compile
    itself: a warm cache never fires it, so a listener costs nothing at start-up
    (no look at the cache's index files, no stamp of kernels.py). The first
    compile of a kernel of ``streamlm.compute.kernels`` logs the line; the rest of the
    ~24 s of a cold cache passes silently.
    """
    import logging

    from numba.core import event

    global _notice
    if _notice is not None:
        return "registered"

    class Notice(event.Listener):
        said = False

        def on_start(self, ev) -> None:
            if self.said:
                return
            d = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
            fn = getattr(d, "py_func", None)
            if getattr(fn, "__module__", None) == "streamlm.compute.kernels":
                self.said = True
                logging.getLogger("streamlm").info("%s", COMPILING)

        def on_end(self, ev) -> None:
            pass

    _notice = Notice()
    event.register("numba:compile", _notice)
    return "registered"
