"""How many threads streamlm computes on: ``--threads``, ``STREAMLM_THREADS``, or the CPUs
this process may use.

The default is not the machine's CPU count: a batch job pinned to some cores
(``taskset``, a scheduler's cpuset) or held to a CPU quota (a container's
``--cpus``, a cgroup's ``cpu.max``) gets the number of CPUs it may really run
on, so that it does not start more threads than it has cores and then wait for
itself. Nothing here imports numba: the numpy engine and ``--help`` ask too.
"""

from __future__ import annotations

import math
import os

ENV = "STREAMLM_THREADS"

_requested: int | None = None  # set_threads(); None: ENV, then available_cpus()


def cgroup_quota(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period), or None when there
    is none: cgroup v2's ``cpu.max``, else v1's ``cpu.cfs_quota_us`` / ``cfs_period_us``,
    along the process's cgroup path and its parents (the tightest wins)."""
    try:
        with open(proc) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if ctrls == "":  # v2: one unified hierarchy
            bases, files = [root, os.path.join(root, "unified")], ("cpu.max",)
        elif "cpu" in ctrls.split(","):
            bases = [os.path.join(root, c) for c in (ctrls, "cpu", "cpu,cpuacct")]
            files = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        for base in bases:
            d = os.path.normpath(base + "/" + path.lstrip("/"))
            while d.startswith(base):
                q = _read_quota(d, files)
                if q is not None:
                    best = q if best is None else min(best, q)
                if d == base:
                    break
                d = os.path.dirname(d)
    return best


def _read_quota(d: str, files: tuple[str, ...]) -> float | None:
    try:
        if len(files) == 1:
            with open(os.path.join(d, files[0])) as f:
                quota, period = (f.read().split() + ["100000"])[:2]
            if quota == "max":
                return None
            q, p = float(quota), float(period)
        else:
            with open(os.path.join(d, files[0])) as f:
                q = float(f.read().strip())
            with open(os.path.join(d, files[1])) as f:
                p = float(f.read().strip())
            if q < 0:
                return None
    except (OSError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, lowered to its cgroup's CPU quota
    (rounded up: a quota of 1.5 CPUs runs two threads at three quarters each)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    q = cgroup_quota()
    if q is not None:
        n = min(n, max(1, math.ceil(q - 1e-9)))
    return max(1, n)


def parse(value: str | int | None, what: str = ENV) -> int | None:
    """A thread count from an option or the environment (None: not given)."""
    from streamlm.errors import UsageError

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a whole number of threads, not {value!r}") from None
    if n < 1:
        raise UsageError(f"{what} must be at least 1, not {n}")
    return n


def set_threads(n: int | None) -> None:
    """Compute on ``n`` threads from now on (None: back to the default). Must be called
    before the work starts (the CLI does, from ``--threads``)."""
    global _requested
    _requested = None if n is None else parse(n, "--threads")
    try:
        import sys

        threads = sys.modules.get("streamlm.compute.threads")
        if threads is not None:  # a pool already made for another count
            threads.shutdown()
    except Exception:  # noqa: BLE001 (nothing to shut)
        pass


def threads() -> int:
    """The threads to compute on: set_threads(), else STREAMLM_THREADS, else the CPUs this
    process may use."""
    if _requested is not None:
        return _requested
    env = parse(os.environ.get(ENV))
    return env if env is not None else available_cpus()
