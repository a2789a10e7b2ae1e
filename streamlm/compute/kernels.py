"""Every Numba kernel of streamlm, and nothing else.

Conventions (after llm.c): a kernel takes its outputs first (preallocated by
the caller), then its inputs, then weights; dimensions come from the shapes.
Gradient outputs *accumulate* (``+=``) into buffers the caller zeroes, unless
the docstring says "writes". Every array argument has its shape in a comment.

Layouts are time-major: a block of T steps for N parallel streams is stored as
``(T, N, ...)`` so that the state of one step, ``hs[t]``, is one contiguous
``(N, H)`` matrix. Flattened token index ``m = t * N + n``.

Kernels are dtype-generic: production calls them with float32 arrays, tests
also call them with float64. Scalars that meet arrays (learning rates, scales)
should be passed as numpy scalars of the array dtype so no silent upcast
happens inside the loop.

Numba does no bounds checking: callers validate token ids before any kernel
sees them (see ``streamlm.data.shards`` and ``streamlm.nn.model``).

The big matrix products (``x @ Wx``, ``h @ W_affine`` and their gradients)
are *not* here: they run through ``streamlm.compute.blas`` (CBLAS by ctypes) between
kernels (see ``streamlm.nn.model``), which is faster than ``np.dot`` inside a
kernel for these shapes (measured in bench/bench_kernels.py) and needs no
SciPy.

Settings live in one place: ``JIT`` below. Do not read module globals from
inside kernels: Numba freezes them at compile time.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from streamlm.compute import numba_setup

# The one place where compile settings live. ``fastmath`` is restricted to
# flags that cannot hide a NaN/Inf (no 'nnan'/'ninf'): training must still see
# a diverged loss. ``error_model="numpy"``: a float division by zero gives
# inf/NaN as in numpy instead of raising; Python's model puts a zero check
# before every division, which stops LLVM from vectorising any loop with a
# division in it (Adam's update and the float32 tanh ran scalar: Adam took 17.6 ms
# instead of 7.6, bench/HISTORY.md, "What changed in this round...", item 2).
_FASTMATH = {"contract", "reassoc", "nsz", "arcp"}
JIT = dict(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")

# numba builds its CPU target at the first @njit below: streamlm's set-up goes first
# (CPU features, cache loads, the compile notice; decisions in numba_setup.SETUP)
numba_setup.configure()


# ------------------------------------------------- vectorisable exp / tanh --
# Numba calls libm's expf/tanhf one element at a time (6 and 32 ns here, no
# SVML). For float32 these replacements are plain arithmetic, so LLVM
# vectorises the loops that use them: exp is Cephes' expf (max relative error
# 6e-8 against float64 exp), tanh is Eigen's rational approximation (3e-7).
# For float64 (the tests' gradient checks) they are exactly math.exp/math.tanh.


@intrinsic
def _bits_to_f32(typingctx, x):
    """Reinterpret an int32's bits as a float32 (LLVM bitcast, vectorisable)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def vexp(x):
    """exp(x); a vectorisable float32 version inside kernels. This Python body runs
    only under NUMBA_DISABLE_JIT, where it overflows to inf as the compiled code does."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


@overload(vexp, inline="always")
def _ov_vexp(x):
    if x == types.float32:
        def impl(x):
            x = min(max(x, np.float32(-87.33654)), np.float32(88.37626))
            # np.floor keeps float32 (math.floor returns int64, which would turn
            # the rest into float64 and halve the vector width)
            fx = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
            r = x - fx * np.float32(0.693359375) + fx * np.float32(2.12194440e-4)
            r2 = r * r
            y = np.float32(1.9875691500e-4)
            y = y * r + np.float32(1.3981999507e-3)
            y = y * r + np.float32(8.3334519073e-3)
            y = y * r + np.float32(4.1665795894e-2)
            y = y * r + np.float32(1.6666665459e-1)
            y = y * r + np.float32(5.0000001201e-1)
            y = y * r2 + r + np.float32(1.0)
            n = np.int32(fx) + np.int32(127)
            return y * _bits_to_f32(n << np.int32(23))
        return impl
    return lambda x: math.exp(x)


def vtanh(x):
    """tanh(x); a vectorisable float32 version inside kernels."""
    return math.tanh(x)


@overload(vtanh, inline="always")
def _ov_vtanh(x):
    if x == types.float32:
        def impl(x):
            c = np.float32(7.90531110763549805)
            x = min(max(x, -c), c)
            x2 = x * x
            p = np.float32(-2.76076847742355e-16)
            p = p * x2 + np.float32(2.00018790482477e-13)
            p = p * x2 + np.float32(-8.60467152213735e-11)
            p = p * x2 + np.float32(5.12229709037114e-08)
            p = p * x2 + np.float32(1.48572235717979e-05)
            p = p * x2 + np.float32(6.37261928875436e-04)
            p = p * x2 + np.float32(4.89352455891786e-03)
            p = p * x
            q = np.float32(1.19825839466702e-06)
            q = q * x2 + np.float32(1.18534705686654e-04)
            q = q * x2 + np.float32(2.26843463243900e-03)
            q = q * x2 + np.float32(4.89352518554385e-03)
            return p / q
        return impl
    return lambda x: math.tanh(x)


# ------------------------------------------------------------- embedding --
@njit(**JIT)
def embedding_forward(out, ids, W):
    """Writes out[m] = W[ids[m]].

    out: (M, D) float; ids: (M,) int32, each in [0, V); W: (V, D) float.
    Serial: streamlm.nn.model runs it on row blocks in its own threads.
    """
    M = ids.shape[0]
    D = W.shape[1]
    for m in range(M):
        row = ids[m]
        for d in range(D):
            out[m, d] = W[row, d]


@njit(**JIT)
def embedding_backward(dW, ids, dout):
    """Accumulates dW[ids[m]] += dout[m]; repeated ids add up.

    dW: (V, D) float, zeroed by the caller; ids: (M,) int32; dout: (M, D) float.
    Sequential on purpose: two threads could hit the same row.
    """
    M = ids.shape[0]
    D = dW.shape[1]
    for m in range(M):
        row = ids[m]
        for d in range(D):
            dW[row, d] += dout[m, d]


# ------------------------------------------------------ stack scratch --
# A loop that accumulates into a heap array (np.empty) loads and stores it
# at every step: LLVM cannot prove that the array is not one of the
# arguments. A fixed-size array on the stack cannot alias anything, so LLVM
# keeps it in registers across the loop (the recurrence's accumulators).


@intrinsic
def _stack_ptr(typingctx, n, like):
    """Pointer to n (a literal int) elements of like's dtype in the calling
    function's stack frame (one alloca in its entry block, so a call inside a loop
    reuses it)."""
    if not isinstance(n, types.IntegerLiteral) or not isinstance(like, types.Array):
        return None
    dt = like.dtype
    sig = types.CPointer(dt)(n, like)

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(dt), size=n.literal_value)

    return sig, codegen


def _scratch(n, like):
    """An uninitialised (n,) array of like's dtype: np.empty here (NUMBA_DISABLE_JIT),
    the stack of the calling kernel when compiled. n must be a literal; the array
    must not outlive the kernel."""
    return np.empty(n, like.dtype)


@overload(_scratch, prefer_literal=True, inline="always")  # inlined: the kernel's frame
def _ov_scratch(n, like):
    if isinstance(n, types.IntegerLiteral):
        def impl(n, like):
            return carray(_stack_ptr(n, like), (n,))
        return impl
    return None


# ------------------------------------------------------------------- rnn --
# The recurrence's matrix, W (K, J), in column panels: P[b, k, i] = W[k, 64*b + i]
# (zero where 64*b + i >= J), shape (ceil(J / 64), K, 64), made once per call by
# streamlm.nn.model.recur_panels. Each panel is contiguous and its 64 outputs fit in
# registers (4 zmm in float32), so one step x @ W is one pass over W with no
# accumulator traffic: each k broadcasts x[k] and does 4 FMAs per stream on the
# panel row. A step of one stream reads all of W (40 KB at H=100, an L2 stream),
# so streams are done in groups of up to 4 that share each panel row (one
# function per group size: the accumulators must be separate fixed arrays).
# Sums run over k in order in every group size: a stream's result does not
# depend on its group.
PANEL = 64  # the literal 64 in the kernels below; streamlm.nn.model packs by it


@njit(**JIT)
def _panel_mv1(out, x, P):
    """Writes out[:] = x @ W (padded). out: (nb*64,); x: (K,); P: (nb, K, 64) panels of W."""
    acc = _scratch(64, out)
    z = out.dtype.type(0)
    for b in range(P.shape[0]):
        for i in range(64):
            acc[i] = z
        Pb = P[b]
        for k in range(x.shape[0]):
            xk = x[k]
            w = Pb[k]
            for i in range(64):
                acc[i] += xk * w[i]
        o = out[b * 64:b * 64 + 64]
        for i in range(64):
            o[i] = acc[i]


@njit(**JIT)
def _panel_mv2(out, x, P):
    """_panel_mv1 for two streams sharing the loads of W: out: (2, nb*64); x: (2, K)."""
    a0 = _scratch(64, out)
    a1 = _scratch(64, out)
    z = out.dtype.type(0)
    for b in range(P.shape[0]):
        for i in range(64):
            a0[i] = z
            a1[i] = z
        Pb = P[b]
        for k in range(x.shape[1]):
            x0 = x[0, k]
            x1 = x[1, k]
            w = Pb[k]
            for i in range(64):
                a0[i] += x0 * w[i]
                a1[i] += x1 * w[i]
        o = out[:, b * 64:b * 64 + 64]
        for i in range(64):
            o[0, i] = a0[i]
            o[1, i] = a1[i]


@njit(**JIT)
def _panel_mv3(out, x, P):
    """_panel_mv1 for three streams: out: (3, nb*64); x: (3, K)."""
    a0 = _scratch(64, out)
    a1 = _scratch(64, out)
    a2 = _scratch(64, out)
    z = out.dtype.type(0)
    for b in range(P.shape[0]):
        for i in range(64):
            a0[i] = z
            a1[i] = z
            a2[i] = z
        Pb = P[b]
        for k in range(x.shape[1]):
            x0 = x[0, k]
            x1 = x[1, k]
            x2 = x[2, k]
            w = Pb[k]
            for i in range(64):
                a0[i] += x0 * w[i]
                a1[i] += x1 * w[i]
                a2[i] += x2 * w[i]
        o = out[:, b * 64:b * 64 + 64]
        for i in range(64):
            o[0, i] = a0[i]
            o[1, i] = a1[i]
            o[2, i] = a2[i]


@njit(**JIT)
def _panel_mv4(out, x, P):
    """_panel_mv1 for four streams: out: (4, nb*64); x: (4, K). One (4, 64) array
    would stay in memory (LLVM promotes each small array, not one of 1 KB)."""
    a0 = _scratch(64, out)
    a1 = _scratch(64, out)
    a2 = _scratch(64, out)
    a3 = _scratch(64, out)
    z = out.dtype.type(0)
    for b in range(P.shape[0]):
        for i in range(64):
            a0[i] = z
            a1[i] = z
            a2[i] = z
            a3[i] = z
        Pb = P[b]
        for k in range(x.shape[1]):
            x0 = x[0, k]
            x1 = x[1, k]
            x2 = x[2, k]
            x3 = x[3, k]
            w = Pb[k]
            for i in range(64):
                a0[i] += x0 * w[i]
                a1[i] += x1 * w[i]
                a2[i] += x2 * w[i]
                a3[i] += x3 * w[i]
        o = out[:, b * 64:b * 64 + 64]
        for i in range(64):
            o[0, i] = a0[i]
            o[1, i] = a1[i]
            o[2, i] = a2[i]
            o[3, i] = a3[i]


@njit(**JIT)
def _panel_mv(out, x, P, ng):
    """out[:ng] = x[:ng] @ W for ng <= 4 streams. out: (4, nb*64); x: (4, K)."""
    if ng == 4:
        _panel_mv4(out, x, P)
    elif ng == 3:
        _panel_mv3(out[:3], x[:3], P)
    elif ng == 2:
        _panel_mv2(out[:2], x[:2], P)
    else:
        _panel_mv1(out[0], x[0], P)


@njit(**JIT)
def rnn_forward_rows(hs, xw, h0, P, reset, n0, n1):
    """rnn_forward for the streams n0 <= n < n1 only (the others untouched), with
    Wh as panels P: (ceil(H/64), H, 64) (see PANEL above; streamlm.nn.model.recur_panels).

    Same other arrays as rnn_forward. streamlm.nn.model gives each of its threads
    a group of streams: streams are independent, so no thread waits for another
    inside a block. (rnn_forward_rows_x with xw as the rows of its input terms.)
    """
    T, N, H = xw.shape
    xid = np.empty((T, N), dtype=np.int64)
    for t in range(T):
        for n in range(N):
            xid[t, n] = t * N + n
    rnn_forward_rows_x(hs, np.ascontiguousarray(xw).reshape(T * N, H), xid, h0, P, reset, n0,
                       n1)


@njit(**JIT)
def rnn_forward_rows_x(hs, X, xid, h0, P, reset, n0, n1):
    """rnn_forward_rows with the input term of stream n at step t the row X[xid[t, n]].

    X: (R, H) float; xid: (T, N) int, each in [0, R) (the caller checks). A
    scoring model passes its input table (V, H) and the tokens' ids: the input
    terms of a block, (T, N, H), are then never written out and read back.
    """
    T, N, H = hs.shape
    if P.shape[1] != H or P.shape[2] != 64 or P.shape[0] * 64 < H:
        raise ValueError("P must be Wh in panels of 64 columns")
    z = hs.dtype.type(0)
    hp = np.empty((4, H), dtype=hs.dtype)  # the state before the step, by stream
    out = np.empty((4, P.shape[0] * 64), dtype=hs.dtype)
    for g in range(n0, n1, 4):
        ng = min(4, n1 - g)
        for r in range(ng):
            for j in range(H):
                hp[r, j] = h0[g + r, j]
        for t in range(T):
            for r in range(ng):
                if reset[t, g + r] != 0:
                    for j in range(H):
                        hp[r, j] = z
            _panel_mv(out, hp, P, ng)
            for r in range(ng):
                x = X[xid[t, g + r]]
                for j in range(H):
                    v = vtanh(out[r, j] + x[j])
                    hs[t, g + r, j] = v
                    hp[r, j] = v


@njit(**JIT)
def rnn_panels(P, W):
    """Writes W (K, J) in column panels: P[b, k, i] = W[k, 64*b + i], 0 past J.

    P: (ceil(J/64), K, 64) float. Used for Wh (forward) and Wh^T (backward).
    """
    nb, K, _ = P.shape
    J = W.shape[1]
    z = P.dtype.type(0)
    for b in range(nb):
        for k in range(K):
            for i in range(64):
                j = b * 64 + i
                P[b, k, i] = W[k, j] if j < J else z


@njit(**JIT)
def rnn_forward(hs, xw, h0, Wh, reset):
    """The recurrence of a block of T steps: writes hs[t] = tanh(hs[t-1] @ Wh + xw[t]).

    hs: (T, N, H) float, output (the backward needs it, nothing else);
    xw: (T, N, H) float, the input term x_t @ Wx + b, precomputed with BLAS;
    h0: (N, H) float, the carried state (hs[-1] of the previous block);
    Wh: (H, H) float;
    reset: (T, N) uint8; where reset[t, n] != 0 the state before step t is
    taken as zero (a new line or document when scoring). Training passes zeros.
    Rows n are independent streams (see rnn_forward_rows).
    """
    H = Wh.shape[0]
    P = np.empty(((H + 63) // 64, H, 64), dtype=Wh.dtype)
    rnn_panels(P, Wh)
    rnn_forward_rows(hs, xw, h0, P, reset, 0, hs.shape[1])


@njit(**JIT)
def rnn_backward_rows(dxw, dh0, dhs, hs, PT, n0, n1):
    """rnn_backward for the streams n0 <= n < n1 only, with Wh^T as panels
    PT: (ceil(H/64), H, 64) (see PANEL; streamlm.nn.model.recur_panels(Wh.T)).

    Same other arrays as rnn_backward. The step back, dh = dxw[t] @ Wh^T, is
    the forward's matrix step on Wh^T: groups of up to 4 streams share its loads.
    """
    T, N, H = hs.shape
    if PT.shape[1] != H or PT.shape[2] != 64 or PT.shape[0] * 64 < H:
        raise ValueError("PT must be Wh^T in panels of 64 columns")
    one = hs.dtype.type(1)
    d = np.empty((4, H), dtype=hs.dtype)  # dxw of the group at step t
    dh = np.empty((4, PT.shape[0] * 64), dtype=hs.dtype)  # dL/dh(t) from step t + 1
    for g in range(n0, n1, 4):
        ng = min(4, n1 - g)
        dh[:] = 0
        for t in range(T - 1, -1, -1):
            for r in range(ng):
                for j in range(H):
                    h = hs[t, g + r, j]
                    v = (dhs[t, g + r, j] + dh[r, j]) * (one - h * h)
                    dxw[t, g + r, j] = v
                    d[r, j] = v
            _panel_mv(dh, d, PT, ng)
        for r in range(ng):
            for k in range(H):
                dh0[g + r, k] = dh[r, k]


@njit(**JIT)
def rnn_backward(dxw, dh0, dhs, hs, Wh):
    """Truncated BPTT through the recurrence of one block.

    Writes dxw[t] = dL/d(pre-activation at t) and dh0 = dL/dh0.
    The caller turns dxw into the parameter gradients with BLAS:
    dWx = X^T dxw, dWh = Hprev^T dxw, db = sum(dxw), dX = dxw Wx^T.

    dxw: (T, N, H) float, output;  dh0: (N, H) float, output;
    dhs: (T, N, H) float, gradient from the layer above (per step);
    hs:  (T, N, H) float, saved by rnn_forward;  Wh: (H, H) float.
    Nothing flows past the block start except through dh0, which the
    trainer drops (truncated BPTT). Streams are independent
    (see rnn_backward_rows).
    """
    H = Wh.shape[0]
    PT = np.empty(((H + 63) // 64, H, 64), dtype=Wh.dtype)
    rnn_panels(PT, Wh.T)
    rnn_backward_rows(dxw, dh0, dhs, hs, PT, 0, hs.shape[1])


# One stream's recurrence on two threads: each computes half of the output
# panels of every step, then waits for the other's half of the state. At H=650
# Wh is 1.7 MB, more than one core's L2 (1 MB here): half of it fits, so the two
# halves run from L2 rather than L3 (the single-stream speed at large H is this
# matrix-vector product's). The threads meet through a step counter each,
# written with release and read with acquire ordering (LLVM atomics; a plain
# load in the spin loop could be hoisted out of it).
def _load_acquire(a, i):
    """a[i], read with acquire ordering when compiled (int64 a)."""
    return a[i]


def _store_release(a, i, v):
    """a[i] = v, written with release ordering when compiled (int64 a)."""
    a[i] = v


def _item_ptr(context, builder, signature, args):
    """The address of a[i] for an intrinsic called as (a, i, ...)."""
    aryty = signature.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])


def _value(context, builder, signature, args):
    """The third argument, v, cast to a's dtype."""
    return context.cast(builder, args[2], signature.args[2], signature.args[0].dtype)


def _atomic_load_with(ordering: str):
    """An intrinsic (a, i) -> a[i], loaded atomically with this memory ordering."""

    @intrinsic
    def load(typingctx, a, i):
        def codegen(context, builder, signature, args):
            ptr = _item_ptr(context, builder, signature, args)
            return builder.load_atomic(ptr, ordering=ordering, align=8)

        return a.dtype(a, i), codegen

    return load


_atomic_load = _atomic_load_with("acquire")
_atomic_load_sc = _atomic_load_with("seq_cst")


@intrinsic
def _atomic_store(typingctx, a, i, v):
    def codegen(context, builder, signature, args):
        ptr = _item_ptr(context, builder, signature, args)
        builder.store_atomic(_value(context, builder, signature, args), ptr,
                             ordering="release", align=8)
        return context.get_dummy_value()

    return types.void(a, i, v), codegen


@overload(_load_acquire, inline="always")
def _ov_load_acquire(a, i):
    return lambda a, i: _atomic_load(a, i)


@overload(_store_release, inline="always")
def _ov_store_release(a, i, v):
    return lambda a, i, v: _atomic_store(a, i, v)


def _yield():
    """Give the core to another runnable thread if its run queue has one (sched_yield:
    at once on an idle core). A spinning waiter calls it every YIELD_EVERY spins, so
    that it never holds a core that another thread, this process's or another's,
    could run on: spinning then costs nothing when the machine is busy."""
    import os

    os.sched_yield()


YIELD_EVERY = 1 << 12  # spins between yields (about a microsecond of spinning)


@intrinsic
def _sched_yield(typingctx):
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                            "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@overload(_yield, inline="always")
def _ov_yield():
    return lambda: _sched_yield()


def _exchange(a, i, v):
    """a[i] = v, returning the old a[i]: one sequentially consistent exchange when
    compiled (int64 a)."""
    old = a[i]
    a[i] = v
    return old


def _load_seq_cst(a, i):
    """a[i], read with sequentially consistent ordering when compiled (int64 a)."""
    return a[i]


@intrinsic
def _atomic_xchg(typingctx, a, i, v):
    def codegen(context, builder, signature, args):
        ptr = _item_ptr(context, builder, signature, args)
        return builder.atomic_rmw("xchg", ptr, _value(context, builder, signature, args),
                                  "seq_cst")

    return a.dtype(a, i, v), codegen


@overload(_exchange, inline="always")
def _ov_exchange(a, i, v):
    return lambda a, i, v: _atomic_xchg(a, i, v)


@overload(_load_seq_cst, inline="always")
def _ov_load_seq_cst(a, i):
    return lambda a, i: _atomic_load_sc(a, i)


# streamlm.compute.threads.Pool's hand-offs: a counter per waiter, spun on without the
# GIL, and a sleep flag per waiter for when the spin gives up (the waiter then
# blocks on a semaphore that the signaller releases). Waking a sleeping thread
# costs 40 us on the shared VMs streamlm was measured on; a training step of a
# class model at H=100 has about ten hand-offs in 4.8 ms.
@njit(**JIT)
def pool_wait(flags, i, value, spin_max):
    """Spin until flags[i] >= value: True; False after spin_max spins. flags: int64.
    Every YIELD_EVERY spins the core is offered to another runnable thread (_yield)."""
    n = 0
    while _load_acquire(flags, i) < value:
        n += 1
        if n >= spin_max:
            return False
        if n % YIELD_EVERY == 0:
            _yield()
    return True


@njit(**JIT)
def pool_signal(flags, i, value, i_sleep):
    """flags[i] = value, then take over the waiter's sleep flag flags[i_sleep]:
    returns 1 when the waiter had announced it sleeps (the caller wakes it), else 0."""
    _exchange(flags, i, value)
    return _exchange(flags, i_sleep, 0)


@njit(**JIT)
def pool_signal_wait(flags, i, value, i_sleep, i_next, next_value, spin_max):
    """pool_signal(flags, i, value, i_sleep), then pool_wait(flags, i_next,
    next_value, spin_max), in one call (the GIL is not taken in between).
    Returns pool_signal's answer + 2 if the wait succeeded."""
    woke = pool_signal(flags, i, value, i_sleep)
    return woke + (2 if pool_wait(flags, i_next, next_value, spin_max) else 0)


@njit(**JIT)
def pool_announce_sleep(flags, i_sleep, i, value):
    """A waiter that gave up spinning on flags[i] >= value announces that it
    sleeps, then looks again. Returns 0: nothing yet (sleep until woken); 1: it
    arrived and no signaller saw the announcement (do not sleep); 2: it arrived
    and its signaller will wake this waiter (take that wake-up)."""
    _exchange(flags, i_sleep, 1)
    if _load_seq_cst(flags, i) >= value:
        return 1 if _exchange(flags, i_sleep, 0) == 1 else 2
    return 0


SPLIT_GAVE_UP = 32  # flags[32] != 0: a thread stopped waiting (flags[16 * me]: its steps)


@njit(**JIT)
def rnn_forward_split(hs, X, xid, h0, P, reset, b0, b1, flags, me, spin_max, step_spins):
    """Thread ``me`` (0 or 1) of the two that run one stream's recurrence: writes
    hs[t, 0, j] for the columns j of the panels b0 <= b < b1 of every step.

    hs: (T, 1, H); the input term of step t is the row X[xid[t, 0]] (see
    rnn_forward_rows_x); h0: (1, H); P: Wh in panels (see PANEL); reset: (T, 1).
    flags: (48,) int64, zero on entry, shared by the two threads. Every
    output is summed in the same order as rnn_forward_rows, so the result is
    bitwise the same. Returns 0; or -1 when this thread gave up waiting for the
    other (after ``spin_max`` spins at once, or ``spin_max + t * step_spins`` spins
    in all by step t) or the other gave up: then hs is incomplete, and the caller
    finishes the block on one thread.
    """
    T, _, H = hs.shape
    z = hs.dtype.type(0)
    other = 16 * (1 - me)
    waited = 0
    allowed = spin_max
    hp = np.empty(H, dtype=hs.dtype)
    out = np.empty((b1 - b0) * 64, dtype=hs.dtype)  # this thread's panels of h @ Wh
    j0, j1 = b0 * 64, min(b1 * 64, H)
    for t in range(T):
        if t > 0:
            n = 0
            while _load_acquire(flags, other) < t:
                n += 1
                if n > allowed or _load_acquire(flags, SPLIT_GAVE_UP) != 0:
                    _store_release(flags, SPLIT_GAVE_UP, 1)
                    return -1
            waited += n
            # the waits of the whole block so far may exceed spin_max only by what
            # step_spins a step allows: two threads that take turns on one core (a
            # busy machine) wait a little at every step, and are slower than one
            allowed = spin_max + t * step_spins - waited
        for j in range(H):
            hp[j] = z if reset[t, 0] != 0 else (hs[t - 1, 0, j] if t > 0 else h0[0, j])
        _panel_mv1(out, hp, P[b0:b1])
        x = X[xid[t, 0]]
        for j in range(j0, j1):
            hs[t, 0, j] = vtanh(out[j - j0] + x[j])
        _store_release(flags, 16 * me, t + 1)
    return 0


@njit(**JIT)
def tanh_add_(h, xw):
    """Writes h = tanh(h + xw) in place. h, xw: (N, H) float.

    The elementwise half of one recurrence step when the matrix half runs in
    BLAS (large H, see streamlm.nn.model.rnn_recur_rows).
    """
    N, H = h.shape
    for n in range(N):
        for j in range(H):
            h[n, j] = vtanh(h[n, j] + xw[n, j])


@njit(**JIT)
def tanh_backward_(dxw, dhs, dh, hs):
    """Writes dxw = (dhs + dh) * (1 - hs^2). All (N, H) float."""
    N, H = hs.shape
    for n in range(N):
        for j in range(H):
            h = hs[n, j]
            dxw[n, j] = (dhs[n, j] + dh[n, j]) * (1.0 - h * h)


# ------------------------------------------------------- softmax + loss --
# One pass over each row, no max pass. log-sum-exp is shifted by the
# target's own logit c = z[label] instead of the row max: then the sum
# s = sum_v exp(z_v - c) is >= 1 (the target's term is exp(0)), so it cannot
# underflow, and NLL = log(s) exactly. It could overflow only when some logit
# is far above the target's (more than ~69 nats, a loss above 69): such a row
# (s >= SHIFT_LIMIT, inf or NaN) is redone with the exact row max. The sum
# runs in 32 float32 lanes (vectorised; each lane sums V/32 terms) that are
# added in float64.
SHIFT_LIMIT = 1e30  # float64 literal: frozen into the kernels at compile time


@njit(**JIT)
def _row_max(x, b, m):
    """max_v x[m, v] + b[v]. x: (M, V) float; b: (V,) float.

    Sixteen independent running maxima, so the loop is not one serial chain
    of compares (LLVM will not vectorise a float max reduction without
    'nnan'). A NaN may be skipped here; the exp pass that follows propagates
    it (vexp(NaN) is NaN), so a NaN logit still gives a NaN loss.
    """
    V = x.shape[1]
    acc = np.empty(16, dtype=x.dtype)
    for j in range(16):
        acc[j] = x[m, 0] + b[0]
    V16 = V - V % 16
    for v in range(0, V16, 16):
        for j in range(16):
            z = x[m, v + j] + b[v + j]
            acc[j] = z if z > acc[j] else acc[j]
    mx = acc[0]
    for j in range(1, 16):
        if acc[j] > mx:
            mx = acc[j]
    for v in range(V16, V):
        z = x[m, v] + b[v]
        if z > mx:
            mx = z
    return mx


@njit(**JIT)
def _sumexp(xr, b, c):
    """sum_v exp(xr[v] + b[v] - c) in float64. xr, b: (V,) float; c: scalar."""
    V = xr.shape[0]
    acc = np.zeros(32, dtype=xr.dtype)
    V32 = V - V % 32
    for v0 in range(0, V32, 32):
        for j in range(32):
            acc[j] += vexp(xr[v0 + j] + b[v0 + j] - c)
    s = 0.0
    for j in range(32):
        s += np.float64(acc[j])
    for v in range(V32, V):
        s += np.float64(vexp(xr[v] + b[v] - c))
    return s


@njit(**JIT)
def _expstore(xr, b, c):
    """Writes xr[v] = exp(xr[v] + b[v] - c); returns their sum in float64.

    _sumexp's loop plus the store. Kept as two kernels on purpose: scoring must
    leave the logits unchanged, and storing into a scratch row instead cost
    the scoring pass ~25% (0.68 against 0.53 ns per element, one thread)."""
    V = xr.shape[0]
    acc = np.zeros(32, dtype=xr.dtype)
    V32 = V - V % 32
    for v0 in range(0, V32, 32):
        for j in range(32):
            e = vexp(xr[v0 + j] + b[v0 + j] - c)
            xr[v0 + j] = e
            acc[j] += e
    s = 0.0
    for j in range(32):
        s += np.float64(acc[j])
    for v in range(V32, V):
        e = vexp(xr[v] + b[v] - c)
        xr[v] = e
        s += np.float64(e)
    return s


@njit(**JIT)
def softmax_ce_forward(nll, logits, b, labels):
    """Per-token NLL of softmax(logits + b), one pass per row (see SHIFT_LIMIT).

    nll: (M,) float64, output: -log p(label); 0 where label == -1 (ignored);
    logits: (M, V) float, the product h @ W (bias not yet added), unchanged;
    b: (V,) float, the output bias; labels: (M,) int32 in [-1, V).
    Returns nothing; the count of scored tokens is (labels >= 0).sum().
    """
    M, V = logits.shape
    for m in range(M):
        lab = labels[m]
        if lab < 0:
            nll[m] = 0.0
            continue
        zl = logits[m, lab] + b[lab]
        s = _sumexp(logits[m], b, zl)
        if s < SHIFT_LIMIT:
            nll[m] = math.log(s)
        else:  # overflow, inf or NaN: the exact max (a NaN stays NaN)
            mx = _row_max(logits, b, m)
            s = _sumexp(logits[m], b, mx)
            nll[m] = math.log(s) + (np.float64(mx) - np.float64(zl))


@njit(**JIT)
def _softmax_ce_row(nll, logits, b, labels, scale, m, db, with_db, h, W):
    """One row of softmax_ce_fused (row m, in place); adds the row's gradient to db
    when with_db. When the shifted sum overflows, the row's logits (already
    overwritten) are recomputed from h[m] @ W and shifted by the exact max."""
    V = logits.shape[1]
    lab = labels[m]
    xr = logits[m]
    if lab < 0:
        nll[m] = 0.0
        for v in range(V):
            xr[v] = 0.0
        return
    zl = xr[lab] + b[lab]
    c = zl
    s = _expstore(xr, b, c)
    if not s < SHIFT_LIMIT:  # rare: recompute the row, shift by its max
        for v in range(V):
            xr[v] = 0.0
        for k in range(h.shape[1]):
            hk = h[m, k]
            for v in range(V):
                xr[v] += hk * W[k, v]
        zl = xr[lab] + b[lab]
        c = _row_max(logits, b, m)
        s = _expstore(xr, b, c)
    nll[m] = math.log(s) + (np.float64(c) - np.float64(zl))
    inv = logits.dtype.type(scale / s)
    if with_db:
        for v in range(V):
            e = xr[v] * inv
            xr[v] = e
            db[v] += e
        db[lab] -= scale
    else:
        for v in range(V):
            xr[v] = xr[v] * inv
    xr[lab] -= scale


@njit(**JIT)
def softmax_ce_fused(nll, logits, b, labels, scale, h, W):
    """Fused softmax cross-entropy forward and backward, in place.

    Writes nll[m] = -log softmax(logits[m] + b)[labels[m]] and overwrites
    logits[m] with the gradient (softmax - onehot) * scale, where scale is
    1 / (number of scored tokens). No separate probability array exists.
    Ignored rows (label == -1) get nll 0 and a zero gradient row.

    nll: (M,) float64, output; logits: (M, V) float, in: h @ W, out: dlogits;
    b: (V,) float; labels: (M,) int32 in [-1, V); scale: float scalar of
    the logits dtype; h: (M, H), W: (H, V) float, the factors of logits
    (read only for a row whose shifted sum overflows, see SHIFT_LIMIT).
    """
    for m in range(logits.shape[0]):
        _softmax_ce_row(nll, logits, b, labels, scale, m, b, False, h, W)


@njit(**JIT)
def softmax_ce_fused_db(nll, logits, b, labels, scale, db, h, W):
    """softmax_ce_fused, and also accumulates db[v] += sum_m dlogits[m, v].

    db: (V,) float, accumulated (the caller zeroes it): the output-bias
    gradient, summed while each row is still in cache. Same other arguments.
    """
    for m in range(logits.shape[0]):
        _softmax_ce_row(nll, logits, b, labels, scale, m, db, True, h, W)


@njit(**JIT)
def log_softmax_rows(out, logits, b):
    """Writes out[m] = log softmax(logits[m] + b) (used by generate / full scores).

    out: (M, V) float; logits: (M, V) float; b: (V,) float. out may alias logits.
    """
    M, V = logits.shape
    for m in range(M):
        mx = _row_max(logits, b, m)
        lse = mx + math.log(_sumexp(logits[m], b, mx))
        for v in range(V):
            out[m, v] = logits[m, v] + b[v] - lse


# ------------------------------------------------- class-factored softmax --
# P(w | h) = P(c(w) | h) P(w | c(w), h). The class factor is a softmax over the C
# classes: the kernels above do it (logits h @ class_W from BLAS). The word
# factor is a softmax over the words of the target's class only: the model keeps
# the words in class order and affine_W transposed, so class c is the block of
# rows [start[c], start[c+1]) of WT = affine_W.T (V, H). The kernels below do the
# word factor for the tokens of one chunk grouped by target class
# (group_by_class): ``hg`` holds their hidden states in that order, so each
# class's block of WT stays in cache while its tokens are done (streamlm.nn.heads
# sends classes with many tokens to BLAS instead).


@njit(**JIT)
def group_by_class(perm, off, labels, cls):
    """Counting sort of the tokens that have a target, by the target's class.

    perm: (M,) int64, output: perm[:n] are token indices grouped by class (in
    token order within a class); off: (C+1,) int64, output: class c's tokens are
    perm[off[c]:off[c+1]]; labels: (M,) int32 targets in [-1, V) (-1 skipped);
    cls: (V,) int32, the class of each word. Returns n.
    """
    C = off.shape[0] - 1
    for c in range(C + 1):
        off[c] = 0
    for m in range(labels.shape[0]):
        lab = labels[m]
        if lab >= 0:
            off[cls[lab] + 1] += 1
    for c in range(C):
        off[c + 1] += off[c]
    cur = off[:C].copy()
    for m in range(labels.shape[0]):
        lab = labels[m]
        if lab >= 0:
            c = cls[lab]
            perm[cur[c]] = m
            cur[c] += 1
    return off[C]


@njit(**JIT)
def _word_logits4(acc, hs, rows, i0, r, WT, b, s, nw):
    """Writes acc[q, k] = hs[rows[i0 + q]] . WT[s + k] + b[s + k] for q < r <= 4, k < nw.

    WT: (V, H), the transposed affine_W, so each logit is a dot product over
    contiguous rows; four tokens share each load of a row of WT.
    """
    H = hs.shape[1]
    zero = hs.dtype.type(0)
    if r == 4:
        r0, r1, r2, r3 = rows[i0], rows[i0 + 1], rows[i0 + 2], rows[i0 + 3]
        for k in range(nw):
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            for d in range(H):
                w = WT[s + k, d]
                a0 += hs[r0, d] * w
                a1 += hs[r1, d] * w
                a2 += hs[r2, d] * w
                a3 += hs[r3, d] * w
            bk = b[s + k]
            acc[0, k] = a0 + bk
            acc[1, k] = a1 + bk
            acc[2, k] = a2 + bk
            acc[3, k] = a3 + bk
    else:
        for q in range(r):
            rq = rows[i0 + q]
            for k in range(nw):
                a = zero
                for d in range(H):
                    a += hs[rq, d] * WT[s + k, d]
                acc[q, k] = a + b[s + k]


@njit(**JIT)
def _shifted_sum(z, nw, c):
    """sum_k exp(z[k] - c) over k < nw, in float64."""
    s = 0.0
    for k in range(nw):
        s += np.float64(vexp(z[k] - c))
    return s


@njit(**JIT)
def _shift(z, nw, t):
    """(shift, sum_k exp(z[k] - shift)): the shift is the target's logit z[t] (the sum
    is then >= 1), or the max of z when that sum overflows (see SHIFT_LIMIT)."""
    c = z[t]
    s = _shifted_sum(z, nw, c)
    if not s < SHIFT_LIMIT:  # overflow, inf or NaN: the exact max (a NaN stays NaN)
        c = z[0]
        for k in range(1, nw):
            if z[k] > c:
                c = z[k]
        s = _shifted_sum(z, nw, c)
    return c, s


@njit(**JIT)
def _max_class(start, classes):
    m = 1
    for ci in range(classes.shape[0]):
        c = classes[ci]
        m = max(m, start[c + 1] - start[c])
    return m


@njit(**JIT)
def class_words_nll(out, hs, perm, labels, WT, b, start, off, classes):
    """Adds each token's within-class NLL, -log softmax_{w in c}(h . WT[w] + b[w]).

    out: (M,) float64, accumulated; hs: (M, H) float, the hidden states; perm:
    (n,) int64, the tokens grouped by class (group_by_class); labels: (M,) int32,
    the targets (class order ids); WT: (V, H) float, affine_W transposed; b: (V,)
    float; start: (C+1,) int64 class ranges of the words; off: (C+1,) int64 class
    ranges of perm; classes: (k,) int64, the classes to do.
    """
    acc = np.empty((4, _max_class(start, classes)), dtype=hs.dtype)
    for ci in range(classes.shape[0]):
        c = classes[ci]
        s = start[c]
        nw = start[c + 1] - s
        for i0 in range(off[c], off[c + 1], 4):
            r = min(4, off[c + 1] - i0)
            _word_logits4(acc, hs, perm, i0, r, WT, b, s, nw)
            for q in range(r):
                m = perm[i0 + q]
                t = labels[m] - s
                shift, tot = _shift(acc[q], nw, t)
                out[m] += math.log(tot) + (np.float64(shift) - np.float64(acc[q, t]))


@njit(**JIT)
def class_words_fused(nll, store, hg, rows, lab, WT, b, db, scale, start, off, boff, classes):
    """class_words_nll, and also writes the gradient of scale * sum(nll) w.r.t. the
    word logits, (softmax - onehot) * scale, and accumulates it into db.

    Here the tokens are in group order: hg: (n, H) the hidden states grouped by
    class, rows: (n,) int64 their rows in hg (0..n-1), lab: (n,) int32 their
    targets, nll: (n,) float64; store: (total,) float, output: class c's gradient
    block, (tokens of c, words of c) row-major, starts at boff[c]; db: (V,) float,
    accumulated (the caller zeroes it); scale: float scalar of WT's dtype. Other
    arguments as class_words_nll.
    """
    acc = np.empty((4, _max_class(start, classes)), dtype=hg.dtype)
    for ci in range(classes.shape[0]):
        c = classes[ci]
        s = start[c]
        nw = start[c + 1] - s
        for i0 in range(off[c], off[c + 1], 4):
            r = min(4, off[c + 1] - i0)
            _word_logits4(acc, hg, rows, i0, r, WT, b, s, nw)
            for q in range(r):
                i = i0 + q
                z = acc[q]
                t = lab[i] - s
                shift, tot = _shift(z, nw, t)
                nll[i] += math.log(tot) + (np.float64(shift) - np.float64(z[t]))
                inv = z.dtype.type(scale / tot)
                a = boff[c] + (i - off[c]) * nw
                for k in range(nw):
                    e = vexp(z[k] - shift) * inv
                    store[a + k] = e
                    db[s + k] += e
                store[a + t] -= scale
                db[s + t] -= scale


@njit(**JIT)
def class_words_backward(gWT, dhg, store, hg, WT, start, off, boff, classes):
    """The backward of the word factor for the given classes.

    gWT: (V, H) float, accumulated: gWT[w] += sum_i g[i, w] hg[i] (the gradient of
    affine_W, transposed); dhg: (n, H) float, written: dhg[i] = sum_w g[i, w] WT[w]
    over i's class; store: the gradient blocks of class_words_fused; other
    arguments as there. Four tokens share each update of a row of gWT.
    """
    H = hg.shape[1]
    zero = hg.dtype.type(0)
    for ci in range(classes.shape[0]):
        c = classes[ci]
        s = start[c]
        nw = start[c + 1] - s
        for i0 in range(off[c], off[c + 1], 4):
            r = min(4, off[c + 1] - i0)
            a = boff[c] + (i0 - off[c]) * nw
            for q in range(r):
                i = i0 + q
                for d in range(H):
                    dhg[i, d] = zero
                for k in range(nw):
                    gk = store[a + q * nw + k]
                    for d in range(H):
                        dhg[i, d] += gk * WT[s + k, d]
            if r == 4:
                for k in range(nw):
                    g0 = store[a + k]
                    g1 = store[a + nw + k]
                    g2 = store[a + 2 * nw + k]
                    g3 = store[a + 3 * nw + k]
                    for d in range(H):
                        gWT[s + k, d] += (g0 * hg[i0, d] + g1 * hg[i0 + 1, d]
                                          + g2 * hg[i0 + 2, d] + g3 * hg[i0 + 3, d])
            else:
                for q in range(r):
                    for k in range(nw):
                        gk = store[a + q * nw + k]
                        for d in range(H):
                            gWT[s + k, d] += gk * hg[i0 + q, d]


# ------------------------------------------------------------ optimisers --
# Serial over the flat buffer; streamlm.compute.threads.sum_squares /
# sgd_update / adam_update run them on slices in streamlm's threads.
@njit(**JIT)
def sum_squares(g):
    """Returns sum(g**2) in float64. g: (P,) float, a flat gradient buffer."""
    s = 0.0
    for i in range(g.shape[0]):
        x = np.float64(g[i])
        s += x * x
    return s


@njit(**JIT)
def sgd_update(p, g, lr, gscale):
    """Writes p -= lr * (g * gscale). p, g: (P,) float; lr, gscale: scalars of p's dtype.

    gscale is the clipping rate (1 when not clipping), applied on the fly: the
    same float32 products as scaling g first, without that pass over g.
    """
    for i in range(p.shape[0]):
        p[i] -= lr * (g[i] * gscale)


@njit(**JIT)
def adam_update(p, g, m, v, lr_t, beta1, beta2, eps, gscale):
    """One Adam step with the bias correction folded into lr_t (as the book does).

    p, g, m, v: (P,) float (m, v: first and second moments, updated in place);
    lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t); beta1, beta2, eps: scalars
    of p's dtype; gscale: the clipping rate applied to g on the fly (1 when
    not clipping; see sgd_update).
    """
    one = p.dtype.type(1)
    for i in range(p.shape[0]):
        gi = g[i] * gscale
        mi = m[i] + (one - beta1) * (gi - m[i])
        vi = v[i] + (one - beta2) * (gi * gi - v[i])
        m[i] = mi
        v[i] = vi
        p[i] -= lr_t * mi / (np.sqrt(vi) + eps)


@njit(**JIT)
def sum_squares_segments(g, seg):
    """sum(g[a:b]**2) over the segments (a, b) = seg[k] (K, 2) int64, in float64."""
    s = 0.0
    for k in range(seg.shape[0]):
        s += sum_squares(g[seg[k, 0]:seg[k, 1]])
    return s


@njit(**JIT)
def _zero(g):
    zero = g.dtype.type(0)
    for i in range(g.shape[0]):
        g[i] = zero


@njit(**JIT)
def sgd_segments(p, g, seg, lr, gscale):
    """sgd_update on each segment p[a:b], g[a:b] of seg (K, 2) int64, then g = 0
    there while the segment is still in cache."""
    for k in range(seg.shape[0]):
        a, b = seg[k, 0], seg[k, 1]
        sgd_update(p[a:b], g[a:b], lr, gscale)
        _zero(g[a:b])


@njit(**JIT)
def adam_segments(p, g, m, v, seg, lr_t, beta1, beta2, eps, gscale):
    """adam_update on each segment of seg (K, 2) int64 only, then g = 0 there while
    the segment is still in cache: the other elements keep their weights and
    moments (lazy Adam, for row-sparse gradients)."""
    for k in range(seg.shape[0]):
        a, b = seg[k, 0], seg[k, 1]
        adam_update(p[a:b], g[a:b], m[a:b], v[a:b], lr_t, beta1, beta2, eps, gscale)
        _zero(g[a:b])


@njit(**JIT)
def zero_segments(g, seg):
    """Writes g[a:b] = 0 for each segment of seg (K, 2) int64."""
    for k in range(seg.shape[0]):
        _zero(g[seg[k, 0]:seg[k, 1]])


@njit(**JIT)
def all_finite(x):
    """True when every element of the flat array x: (P,) is finite."""
    for i in range(x.shape[0]):
        if not np.isfinite(x[i]):
            return False
    return True


@njit(**JIT)
def ema_update(avg, x, decay):
    """avg = decay * avg + (1 - decay) * x, in place. avg, x: (P,) float; decay: scalar."""
    keep = avg.dtype.type(decay)
    take = avg.dtype.type(1.0 - decay)
    for i in range(x.shape[0]):
        avg[i] = keep * avg[i] + take * x[i]


# -------------------------------------------------------------- sampling --
@njit(**JIT)
def sample_from_logits(logits, b, temperature, u):
    """Returns one id drawn from softmax((logits + b) / temperature).

    logits: (V,) float; b: (V,) float; temperature > 0; u: a uniform draw in
    [0, 1) supplied by the caller's seeded generator (deterministic).
    """
    V = logits.shape[0]
    mx = -np.inf
    for v in range(V):
        z = (logits[v] + b[v]) / temperature
        if z > mx:
            mx = z
    s = 0.0
    for v in range(V):
        s += vexp((logits[v] + b[v]) / temperature - mx)
    target = u * s
    c = 0.0
    for v in range(V):
        c += vexp((logits[v] + b[v]) / temperature - mx)
        if c > target:
            return v
    return V - 1


# ------------------------------------------------------------ words -> ids --
# The tokeniser's compiled path (streamlm.data.tokenizer): lines of UTF-8 bytes split into
# words by str.split()'s rule and looked up in the vocabulary, without a Python str
# per word. The vocabulary is an open-addressing hash table of its words' bytes.


@njit(**JIT, inline="always")
def _fnv_start():
    """FNV-1a's offset basis (as int64); with _fnv_step, the hash of a word's bytes."""
    return np.int64(-3750763034362895579)


@njit(**JIT, inline="always")
def _fnv_step(h, byte):
    return (h ^ np.int64(byte)) * np.int64(1099511628211)  # wraps (no overflow check)


@njit(**JIT)
def word_table_fill(slots, keys, key_off):
    """Writes slots: (S,) int32, S a power of two > V, the hash table of V words:
    word k is keys[key_off[k]:key_off[k + 1]] (keys: (nbytes,) uint8, key_off:
    (V + 1,) int64), stored at the first free slot from its hash on; -1 is free."""
    mask = slots.shape[0] - 1
    slots[:] = -1
    for k in range(key_off.shape[0] - 1):
        h = _fnv_start()
        for i in range(key_off[k], key_off[k + 1]):
            h = _fnv_step(h, keys[i])
        j = h & mask
        while slots[j] >= 0:
            j = (j + 1) & mask
        slots[j] = k


@njit(**JIT, inline="always")
def _word_id(b, s, e, h, slots, keys, key_off):
    """Id of the word b[s:e] (h: its hash) in the table of word_table_fill; -1 if absent."""
    mask = slots.shape[0] - 1
    j = h & mask
    n = e - s
    while True:
        k = slots[j]
        if k < 0:
            return -1
        a = key_off[k]
        if key_off[k + 1] - a == n:
            t = 0
            while t < n and keys[a + t] == b[s + t]:
                t += 1
            if t == n:
                return k
        j = (j + 1) & mask


@njit(**JIT)
def encode_lines(ids, counts, b, space, slots, keys, key_off, unk, eos, docs):
    """Writes ids: (>= n // 2 + L + 1,) int32, the tokens of the lines in b: (n,)
    uint8 (valid UTF-8, each line ending in b"\\n"): each line's word ids, then eos
    (with docs, a line without words gives no token); and counts: (L,) int64, the
    tokens of each line. Returns (tokens, lines) written, and how many of the words were
    a literal unk word (found in the table as id unk: PTB's own marker), not absent.

    Words are str.split()'s: maximal runs of code points c with not space[c]
    (space: (65536,) bool, for the code points below U+10000; none above is a space).
    Invalid UTF-8 cannot crash it (reads stay inside b) but gives words of no rule.
    """
    n = b.shape[0]
    L = counts.shape[0]
    i = 0
    nt = 0  # tokens written
    line = 0
    k = 0  # tokens of the current line
    w = -1  # start of the current word, -1 between words
    h = _fnv_start()  # hash of the current word's bytes so far
    literal = 0  # words that are the unk word itself
    while i < n:
        c = np.int64(b[i])
        m = 1  # bytes of the code point
        if c >= 0x80:  # decode a multi-byte code point (ASCII first: the common case)
            if c >= 0xF0:
                m = 4
                c = 0xFFFF  # above U+FFFF: not a space
            elif c >= 0xE0:
                m = 3
                if i + 2 < n:
                    c = ((c & 0x0F) << 12) | ((np.int64(b[i + 1]) & 0x3F) << 6) | (
                        np.int64(b[i + 2]) & 0x3F)
            elif c >= 0xC0:
                m = 2
                if i + 1 < n:
                    c = ((c & 0x1F) << 6) | (np.int64(b[i + 1]) & 0x3F)
        if space[c]:
            if w >= 0:
                t = _word_id(b, w, i, h, slots, keys, key_off)
                if t == unk:
                    literal += 1
                ids[nt] = unk if t < 0 else t
                nt += 1
                k += 1
                w = -1
            if c == 10 and line < L:
                if k > 0 or not docs:
                    ids[nt] = eos
                    nt += 1
                    k += 1
                counts[line] = k
                line += 1
                k = 0
            i += m
        else:
            if w < 0:
                w = i
                h = _fnv_start()
            for _ in range(m):  # the hash goes along with the scan: no second pass
                if i < n:
                    h = _fnv_step(h, b[i])
                i += 1
    if w >= 0 and nt < ids.shape[0]:  # a last word without a newline (not from the caller)
        t = _word_id(b, w, n, h, slots, keys, key_off)
        if t == unk:
            literal += 1
        ids[nt] = unk if t < 0 else t
        nt += 1
    return nt, line, literal


# ------------------------------------------------------------ gated cells --
# The LSTM (the book's TimeLSTM, gates f, g, i, o) and the GRU (PyTorch's nn.GRU,
# gates r, z, n) as the tanh RNN's kernels are: groups of up to 4 streams share each
# panel row of Wh (H, G*H) (one pass over Wh per step, _panel_mv), the gates are
# applied in the same loop, and what the backward needs is kept when asked
# (``G`` of shape (T, N, 4H); an empty array when scoring). The input terms
# x @ Wx + b of stream n at step t are the row X[xid[t, n]] (a frozen layer 0's
# input table, or the block's terms written out). sigmoid(x) = (1 + tanh(x/2)) / 2:
# one vectorisable tanh, exact in float64.


def _sigmoid(x):
    """1 / (1 + exp(-x)) as (1 + tanh(x / 2)) / 2: vectorisable in float32, exact in
    float64 (this body runs only under NUMBA_DISABLE_JIT)."""
    return 0.5 + 0.5 * math.tanh(0.5 * x)


@overload(_sigmoid, inline="always")
def _ov_sigmoid(x):
    if x == types.float32:
        def impl(x):
            h = np.float32(0.5)
            return h + h * vtanh(h * x)
        return impl
    return lambda x: 0.5 + 0.5 * math.tanh(0.5 * x)


@njit(**JIT)
def lstm_forward_rows_x(hs, cs, G, X, xid, h0, c0, P, reset, n0, n1):
    """The LSTM recurrence for streams n0 <= n < n1 of a block of T steps.

    hs, cs: (T, N, H) float, output: h and c after each step; G: (T, N, 4H) float,
    output when G.shape[0] == T (the activated gates f, g, i, o, for the backward),
    else ignored; X: (R, 4H) float, xid: (T, N) int: the input terms;
    h0, c0: (N, H) float, the state before the block; P: Wh (H, 4H) in panels
    (see PANEL); reset: (T, N) uint8 (nonzero: the state before step t is zero).
    A = x Wx + h Wh + b; f = s(A[0:H]), g = tanh(A[H:2H]), i = s(A[2H:3H]),
    o = s(A[3H:4H]); c' = f c + g i; h' = o tanh(c').
    """
    T, N, H = hs.shape
    keep = G.shape[0] == T
    z = hs.dtype.type(0)
    hp = np.empty((4, H), dtype=hs.dtype)
    cp = np.empty((4, H), dtype=hs.dtype)
    out = np.empty((4, P.shape[0] * 64), dtype=hs.dtype)
    for g in range(n0, n1, 4):
        ng = min(4, n1 - g)
        for r in range(ng):
            for j in range(H):
                hp[r, j] = h0[g + r, j]
                cp[r, j] = c0[g + r, j]
        for t in range(T):
            for r in range(ng):
                if reset[t, g + r] != 0:
                    for j in range(H):
                        hp[r, j] = z
                        cp[r, j] = z
            _panel_mv(out, hp, P, ng)
            for r in range(ng):
                x = X[xid[t, g + r]]
                o_ = out[r]
                for j in range(H):
                    f = _sigmoid(o_[j] + x[j])
                    gg = vtanh(o_[H + j] + x[H + j])
                    i = _sigmoid(o_[2 * H + j] + x[2 * H + j])
                    o = _sigmoid(o_[3 * H + j] + x[3 * H + j])
                    c = f * cp[r, j] + gg * i
                    h = o * vtanh(c)
                    cs[t, g + r, j] = c
                    hs[t, g + r, j] = h
                    cp[r, j] = c
                    hp[r, j] = h
                    if keep:
                        G[t, g + r, j] = f
                        G[t, g + r, H + j] = gg
                        G[t, g + r, 2 * H + j] = i
                        G[t, g + r, 3 * H + j] = o


@njit(**JIT)
def lstm_backward_rows(dA, dh0, dc0, dhs, cs, G, c0, PT, reset, n0, n1):
    """Truncated BPTT through the LSTM recurrence of a block, streams n0 <= n < n1.

    dA: (T, N, 4H) float, output: dL/dA (A the gates' pre-activations), from which
    the caller makes dWx = X^T dA, dWh = Hprev^T dA, db = sum dA, dX = dA Wx^T;
    dh0, dc0: (N, H) float, output: dL/d(the state before the block);
    dhs: (T, N, H) float: dL/dh from above, per step; cs, G: the forward's c and
    gates; c0: (N, H) the c before the block; PT: Wh^T (4H, H) in panels; reset:
    (T, N) uint8 as the forward's (a reset cuts the gradient into the step before).
    """
    T, N, H = dhs.shape
    one = dhs.dtype.type(1)
    z = dhs.dtype.type(0)
    d = np.empty((4, 4 * H), dtype=dhs.dtype)  # dA of the group at step t
    dh = np.empty((4, PT.shape[0] * 64), dtype=dhs.dtype)  # dL/dh(t) from step t + 1
    dc = np.empty((4, H), dtype=dhs.dtype)
    for g in range(n0, n1, 4):
        ng = min(4, n1 - g)
        dh[:] = 0
        dc[:] = 0
        for t in range(T - 1, -1, -1):
            for r in range(ng):
                n = g + r
                cut = reset[t, n] != 0
                for j in range(H):
                    f = G[t, n, j]
                    gg = G[t, n, H + j]
                    i = G[t, n, 2 * H + j]
                    o = G[t, n, 3 * H + j]
                    c = cs[t, n, j]
                    cprev = z if cut else (cs[t - 1, n, j] if t > 0 else c0[n, j])
                    tc = vtanh(c)
                    dht = dhs[t, n, j] + dh[r, j]
                    dct = dc[r, j] + dht * o * (one - tc * tc)
                    d[r, j] = dct * cprev * f * (one - f)
                    d[r, H + j] = dct * i * (one - gg * gg)
                    d[r, 2 * H + j] = dct * gg * i * (one - i)
                    d[r, 3 * H + j] = dht * tc * o * (one - o)
                    dc[r, j] = z if cut else dct * f
                for k in range(4 * H):
                    dA[t, n, k] = d[r, k]
            _panel_mv(dh, d, PT, ng)
            for r in range(ng):
                if reset[t, g + r] != 0:
                    for j in range(H):
                        dh[r, j] = z
        for r in range(ng):
            for j in range(H):
                dh0[g + r, j] = dh[r, j]
                dc0[g + r, j] = dc[r, j]


@njit(**JIT)
def gru_forward_rows_x(hs, G, X, xid, h0, P, bh, reset, n0, n1):
    """The GRU recurrence (PyTorch's nn.GRU) for streams n0 <= n < n1 of a block.

    hs: (T, N, H) float, output; G: (T, N, 4H) float, output when G.shape[0] == T
    (r, z, n and the hidden part of n's pre-activation, for the backward);
    X: (R, 3H), xid: (T, N): the input terms ax = x Wx + b; h0: (N, H);
    P: Wh (H, 3H) in panels; bh: (3H,) the hidden bias; reset as lstm's.
    ah = h Wh + bh; r = s(ax_r + ah_r); z = s(ax_z + ah_z);
    n = tanh(ax_n + r ah_n); h' = (1 - z) n + z h.
    """
    T, N, H = hs.shape
    keep = G.shape[0] == T
    zero = hs.dtype.type(0)
    one = hs.dtype.type(1)
    hp = np.empty((4, H), dtype=hs.dtype)
    out = np.empty((4, P.shape[0] * 64), dtype=hs.dtype)
    for g in range(n0, n1, 4):
        ng = min(4, n1 - g)
        for r in range(ng):
            for j in range(H):
                hp[r, j] = h0[g + r, j]
        for t in range(T):
            for r in range(ng):
                if reset[t, g + r] != 0:
                    for j in range(H):
                        hp[r, j] = zero
            _panel_mv(out, hp, P, ng)
            for r in range(ng):
                x = X[xid[t, g + r]]
                o_ = out[r]
                for j in range(H):
                    rr = _sigmoid(x[j] + o_[j] + bh[j])
                    zz = _sigmoid(x[H + j] + o_[H + j] + bh[H + j])
                    ahn = o_[2 * H + j] + bh[2 * H + j]
                    nn = vtanh(x[2 * H + j] + rr * ahn)
                    h = (one - zz) * nn + zz * hp[r, j]
                    hs[t, g + r, j] = h
                    hp[r, j] = h
                    if keep:
                        G[t, g + r, j] = rr
                        G[t, g + r, H + j] = zz
                        G[t, g + r, 2 * H + j] = nn
                        G[t, g + r, 3 * H + j] = ahn


@njit(**JIT)
def gru_backward_rows(dAx, dAh, dh0, dhs, hs, G, h0, PT, reset, n0, n1):
    """Truncated BPTT through the GRU recurrence of a block, streams n0 <= n < n1.

    dAx, dAh: (T, N, 3H) float, output: dL/d(ax) and dL/d(ah) (the input and hidden
    pre-activations, biases included), from which the caller makes dWx = X^T dAx,
    db = sum dAx, dX = dAx Wx^T, dWh = Hprev^T dAh, dbh = sum dAh; dh0: (N, H)
    output; dhs: (T, N, H): dL/dh from above; hs, G: the forward's outputs and
    kept gates; h0: (N, H); PT: Wh^T (3H, H) in panels; reset as the forward's.
    """
    T, N, H = dhs.shape
    one = dhs.dtype.type(1)
    z = dhs.dtype.type(0)
    d = np.empty((4, 3 * H), dtype=dhs.dtype)  # dAh of the group at step t
    dh = np.empty((4, PT.shape[0] * 64), dtype=dhs.dtype)  # dL/dh(t) from step t + 1
    tmp = np.empty((4, PT.shape[0] * 64), dtype=dhs.dtype)
    for g in range(n0, n1, 4):
        ng = min(4, n1 - g)
        dh[:] = 0
        for t in range(T - 1, -1, -1):
            for r in range(ng):
                n = g + r
                cut = reset[t, n] != 0
                for j in range(H):
                    rr = G[t, n, j]
                    zz = G[t, n, H + j]
                    nn = G[t, n, 2 * H + j]
                    ahn = G[t, n, 3 * H + j]
                    hprev = z if cut else (hs[t - 1, n, j] if t > 0 else h0[n, j])
                    dht = dhs[t, n, j] + dh[r, j]
                    dnp = dht * (one - zz) * (one - nn * nn)
                    dzp = dht * (hprev - nn) * zz * (one - zz)
                    drp = dnp * ahn * rr * (one - rr)
                    dAx[t, n, j] = drp
                    dAx[t, n, H + j] = dzp
                    dAx[t, n, 2 * H + j] = dnp
                    dAh[t, n, j] = drp
                    dAh[t, n, H + j] = dzp
                    dAh[t, n, 2 * H + j] = dnp * rr
                    d[r, j] = drp
                    d[r, H + j] = dzp
                    d[r, 2 * H + j] = dnp * rr
                    dh[r, j] = dht * zz  # the direct path, before the product below
            # dh(t-1) = dht * z + dAh @ Wh^T, zero where step t reset
            _panel_mv(tmp, d, PT, ng)
            for r in range(ng):
                if reset[t, g + r] != 0:
                    for j in range(H):
                        dh[r, j] = z
                else:
                    for j in range(H):
                        dh[r, j] += tmp[r, j]
        for r in range(ng):
            for j in range(H):
                dh0[g + r, j] = dh[r, j]


@njit(**JIT)
def lstm_gates_(A, X, xrow, cp, h, c, G):
    """The LSTM's elementwise half of one step when the matrix half runs in BLAS:
    A: (n, 4H) = hprev @ Wh on entry (overwritten); the input terms of stream r are
    X[xrow[r]] (n,) int; cp: (n, H) c before the step; h, c: (n, H) outputs; G: (n, 4H)
    the gates, written when G.shape[0] == n."""
    n, H = h.shape
    keep = G.shape[0] == n
    for r in range(n):
        x = X[xrow[r]]
        for j in range(H):
            f = _sigmoid(A[r, j] + x[j])
            gg = vtanh(A[r, H + j] + x[H + j])
            i = _sigmoid(A[r, 2 * H + j] + x[2 * H + j])
            o = _sigmoid(A[r, 3 * H + j] + x[3 * H + j])
            cc = f * cp[r, j] + gg * i
            c[r, j] = cc
            h[r, j] = o * vtanh(cc)
            if keep:
                G[r, j] = f
                G[r, H + j] = gg
                G[r, 2 * H + j] = i
                G[r, 3 * H + j] = o


@njit(**JIT)
def gru_gates_(A, X, xrow, bh, hp, h, G):
    """The GRU's elementwise half of one step when the matrix half runs in BLAS:
    A: (n, 3H) = hprev @ Wh; X[xrow[r]]: stream r's input terms; bh: (3H,); hp: (n, H)
    the state before the step; h: (n, H) output; G: (n, 4H) as gru_forward_rows_x's."""
    n, H = h.shape
    keep = G.shape[0] == n
    one = h.dtype.type(1)
    for r in range(n):
        x = X[xrow[r]]
        for j in range(H):
            rr = _sigmoid(x[j] + A[r, j] + bh[j])
            zz = _sigmoid(x[H + j] + A[r, H + j] + bh[H + j])
            ahn = A[r, 2 * H + j] + bh[2 * H + j]
            nn = vtanh(x[2 * H + j] + rr * ahn)
            h[r, j] = (one - zz) * nn + zz * hp[r, j]
            if keep:
                G[r, j] = rr
                G[r, H + j] = zz
                G[r, 2 * H + j] = nn
                G[r, 3 * H + j] = ahn


# ------------------------------------------------------- dynamic evaluation --
# After scoring a segment the weights take one step on it (Krause et al. 2018):
# theta <- theta - lr * g * inv + decay * (theta0 - theta), inv = 1 / (RMS + eps) per
# parameter (1: Mikolov's plain SGD). Over the flat buffer's ranges a step touches;
# the rest (word rows no segment read) decays lazily: dyn_catch_up.


@njit(**JIT)
def _dyn_run(theta, theta0, g, inv, lr, decay, zero_g):
    """The step on 1-d views of one length (indices from 0: no wraparound, SIMD)."""
    one = theta.dtype.type(1)
    keep = one - decay
    n = theta.shape[0]
    if decay == 0:  # theta0 not read: the same step, a third less memory
        for j in range(n):
            theta[j] -= lr * g[j] * inv[j]
    else:
        for j in range(n):
            t0 = theta0[j]
            theta[j] = t0 + keep * (theta[j] - t0) - lr * g[j] * inv[j]
    if zero_g:
        for j in range(n):
            g[j] = 0


@njit(**JIT)
def dyn_step(theta, theta0, g, inv, lr, decay, seg):
    """One step over the ranges seg (K, 2) of the flat buffers, g zeroed there.
    theta, theta0, g, inv: (P,) float; lr, decay: scalars of their dtype."""
    for k in range(seg.shape[0]):
        a, b = seg[k, 0], seg[k, 1]
        _dyn_run(theta[a:b], theta0[a:b], g[a:b], inv[a:b], lr, decay, True)


@njit(**JIT)
def dyn_step_cols(theta, theta0, g, inv, lr, decay, c0, c1):
    """dyn_step on the columns [c0, c1) of (R, C) C-contiguous arrays (a block of an
    output matrix), g not zeroed (the caller's gradient of that block, computed just
    before: the output layer steps as its backward goes, each thread its columns)."""
    for r in range(theta.shape[0]):
        _dyn_run(theta[r, c0:c1], theta0[r, c0:c1], g[r, c0:c1], inv[r, c0:c1], lr, decay,
                 False)


@njit(**JIT)
def dyn_catch_up(theta, theta0, off, width, rows, stamp, now, keep):
    """Rows ``rows`` of a word-indexed array (at flat offset ``off``, ``width`` floats
    a row) brought to segment ``now``: the decay of the segments since ``stamp[row]``
    (delta x keep ** k), then stamp[row] = now. keep = 1 - decay."""
    for r in range(rows.shape[0]):
        w = rows[r]
        k = now - stamp[w]
        if k <= 0:
            continue
        if keep == 1:  # (decay 0: nothing pending)
            stamp[w] = now
            continue
        f = keep ** k
        a = off + w * width
        for j in range(a, a + width):
            t0 = theta0[j]
            theta[j] = t0 + f * (theta[j] - t0)
        stamp[w] = now
