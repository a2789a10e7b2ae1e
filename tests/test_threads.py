"""streamlm.compute.threads.Pool: its hand-offs (spin, then sleep), errors, and re-entry."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from numba import config

from streamlm.compute import kernels as K
from streamlm.compute.threads import Pool


@pytest.fixture(params=["spin", "sleep"])
def pool(request):
    p = Pool(3)
    if p.threads < 3:
        pytest.skip("no BLAS library to hold at one thread")
    p.map(lambda i: None, [(0,), (1,), (2,)])  # start the workers
    # (3 threads on a 2-core machine would not spin by themselves; without the
    # JIT, spinning would hold the GIL)
    p._spin = 0 if request.param == "sleep" or config.DISABLE_JIT else 1 << 16
    yield p
    p.close()


def test_every_range_runs_once(pool):
    for n in (2, 3, 7, 50):
        seen = [[] for _ in range(n)]
        pool.map(lambda i, seen=seen: seen[i].append(threading.get_ident()),
                 [(i,) for i in range(n)])
        assert all(len(s) == 1 for s in seen)
        threads = {s[0] for s in seen}
        assert 1 <= len(threads) <= min(n, 3)
        assert seen[0][0] == threading.get_ident()  # the caller runs the first range


def test_ranges_are_shared_by_every_thread_when_they_take_time(pool):
    seen = [[] for _ in range(6)]

    def slow(i):
        seen[i].append(threading.get_ident())
        time.sleep(0.05)

    pool.map(slow, [(i,) for i in range(6)])
    assert len({s[0] for s in seen}) == 3


def test_a_thread_that_stalls_holds_up_only_its_own_range(pool):
    # a worker taken off its core by another process (here: asleep in its range) must
    # not hold a share of the map fixed in advance: the others take the rest
    ran: dict[int, list[int]] = {}
    lock = threading.Lock()

    def task(i):
        me = threading.get_ident()
        with lock:
            ran.setdefault(me, []).append(i)
        time.sleep(0.3 if i == 1 else 0.005)

    pool.map(task, [(i,) for i in range(40)])
    assert sorted(i for rs in ran.values() for i in rs) == list(range(40))
    stalled = next(t for t, rs in ran.items() if 1 in rs)
    assert ran[stalled] == [1]


def test_many_maps_in_a_row(pool):
    out = np.zeros(3, dtype=np.int64)

    def add(i):
        out[i] += 1

    for _ in range(2000):
        pool.map(add, [(0,), (1,), (2,)])
    assert out.tolist() == [2000, 2000, 2000]


def test_a_worker_that_slept_is_woken(pool):
    # longer than any spin: the worker and the caller both fall back to sleeping
    pool.map(lambda i: time.sleep(0.02 * i), [(0,), (1,), (2,)])
    time.sleep(0.05)
    got = []
    pool.map(lambda i: got.append(i), [(0,), (1,), (2,)])
    assert sorted(got) == [0, 1, 2]


def test_errors_are_raised_and_the_pool_goes_on(pool):
    def fail_on(k):
        def f(i):
            if i == k:
                raise ValueError(f"task {i}")
        return f

    for k in (0, 1, 2):  # the caller's task, then each worker's
        with pytest.raises(ValueError, match=f"task {k}"):
            pool.map(fail_on(k), [(0,), (1,), (2,)])
    got = []
    pool.map(lambda i: got.append(i), [(0,), (1,), (2,)])
    assert sorted(got) == [0, 1, 2]


def test_a_map_inside_a_task_runs_serially(pool):
    got = []

    def outer(i):
        pool.map(lambda j: got.append((i, j)), [(0,), (1,)])

    pool.map(outer, [(0,), (1,), (2,)])
    assert sorted(got) == [(i, j) for i in range(3) for j in range(2)]


def test_maps_from_two_threads_at_once(pool):
    # one map at a time uses the workers; the other caller runs its own serially
    totals = np.zeros(2, dtype=np.int64)

    def caller(c):
        parts = np.zeros(3, dtype=np.int64)

        def part(i):
            parts[i] += i + 1

        for _ in range(300):
            pool.map(part, [(0,), (1,), (2,)])
        totals[c] = parts.sum()

    ts = [threading.Thread(target=caller, args=(c,)) for c in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert totals.tolist() == [1800, 1800]


def test_close_stops_the_workers():
    p = Pool(2)
    if p.threads < 2:
        pytest.skip("no BLAS library to hold at one thread")
    p.map(lambda i: None, [(0,), (1,)])
    workers = list(p._workers)
    assert workers and all(t.is_alive() for t in workers)
    p.close()
    assert not any(t.is_alive() for t in workers)


def test_hand_off_kernels():
    f = np.zeros(32, dtype=np.int64)
    assert not K.pool_wait(f, 0, 1, 10)  # nothing posted: gives up
    assert K.pool_signal(f, 0, 1, 8) == 0 and f[0] == 1  # no sleeper to wake
    assert K.pool_wait(f, 0, 1, 10)
    # a waiter announces it sleeps before anything came: it must sleep, and the
    # signaller takes the flag over and says to wake it
    assert K.pool_announce_sleep(f, 16, 0, 2) == 0 and f[16] == 1
    assert K.pool_signal(f, 0, 2, 16) == 1 and f[16] == 0
    # it came between the spin and the announcement: no sleep, no wake-up owed
    assert K.pool_announce_sleep(f, 16, 0, 2) == 1 and f[16] == 0
    # done, and the next post already there: both reported in one answer
    assert K.pool_signal_wait(f, 24, 5, 16, 0, 2, 10) == 2 and f[24] == 5
    f[16] = 1
    assert K.pool_signal_wait(f, 24, 6, 16, 0, 3, 10) == 1


def test_a_forked_child_starts_workers_of_its_own(pool):
    import os
    import signal

    pool.map(lambda i: None, [(0,), (1,), (2,)])
    pid = os.fork()
    if pid == 0:  # the child: the parent's workers do not exist here
        code = 1
        try:
            signal.alarm(30)  # a child that hangs dies (SIGALRM) instead of the suite
            got = []
            pool.map(lambda i: got.append(i), [(0,), (1,), (2,)])
            code = 0 if sorted(got) == [0, 1, 2] else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = []
    pool.map(lambda i: got.append(i), [(0,), (1,), (2,)])  # the parent's still work
    assert sorted(got) == [0, 1, 2]
