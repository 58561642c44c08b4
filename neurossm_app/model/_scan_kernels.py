"""Fused numba kernels for the selective scan on CPU.

This module imports numba at import time; :mod:`neurossm_app.model.scan` imports it lazily
and falls back to the PyTorch loop when that fails. Nothing here knows about torch.

Each task takes one batch item and a block of ``LANES`` (16) channels and keeps their
``N x LANES`` states in a small local array: the ``(B, D, L, N)`` tensors of the naive
formulation never exist, and the innermost loop runs over the 16 channels of a block, which
are independent, so the compiler vectorises it without reassociating any sum
(``fastmath=False``). ``exp`` of float32 is a Cephes-style polynomial that vectorises
(``math.exp`` is a scalar libm call); float64 uses ``math.exp``.

The forward stores nothing for the backward. The backward re-runs the forward of one block
into a per-thread ``(L + 1, N, LANES)`` buffer of states and then scans in reverse, so the
extra memory is ``n_threads * (L + 1) * N * LANES`` elements plus two ``(L, N, LANES)``
float64 accumulators per thread and the ``(B, G, L, N)`` float64 partial sums of ``dB`` and
``dC``.

Layouts (all C-contiguous):

- ``u, dt, xraw, z, gout, out, du, ddelta, dz``: (B, D, L); ``dt`` is the step size after
  bias and softplus, ``xraw`` the argument of the softplus (``delta + delta_bias``)
- ``A``: (D, N)
- ``Bt, Ct``: (B, L, N), i.e. ``B`` and ``C`` of the public API transposed so that the N
  values of one time step are contiguous
- ``D``: (D,)

Arithmetic is in the dtype of ``u`` (float32 or float64). The long sums are accumulated in
float64: over time, the gradients of ``A``, ``D`` and ``delta_bias``; over channels, the
gradients of ``B`` and ``C`` (per lane across a channel group's blocks in ``(L, N, LANES)``
float64 buffers, then over the 16 lanes, then over the groups by the caller).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

__all__ = ["LANES", "build_kernels", "start_thread_pool", "thread_limit"]

#: Channels per block; the vectorised inner loop runs over them.
LANES = 16

# Cephes expf: exp(x) = 2**k * exp(r), |r| <= ln(2) / 2, ~1 ulp on the clamped range.
_F = np.float32
_LOG2E = _F(1.44269504088896341)
_C1 = _F(0.693359375)
_C2 = _F(-2.12194440e-4)
_P0, _P1, _P2 = _F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3)
_P3, _P4, _P5 = _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1)
_HALF, _ONE = _F(0.5), _F(1.0)
# exp(-87) ~ 1.6e-38 stands in for smaller values (it is the smallest normal float32
# scale): the scan multiplies states by it, so the difference to a true 0 is far below
# float32 resolution of any state that matters. Positive arguments are capped at 88.
_LO, _HI = _F(-87.0), _F(88.0)


def _expf(x):
    x = min(max(x, _LO), _HI)
    k = np.floor(x * _LOG2E + _HALF)
    r = x - k * _C1
    r = r - k * _C2
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * (r * r) + r + _ONE
    scale = np.int32((np.int32(k) + 127) << 23).view(np.float32)
    return p * scale


def fexp(x):
    """exp that vectorises for float32 (pure-Python stand-in; see the overload)."""
    return math.exp(x)


@overload(fexp)
def _fexp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return _expf
    return lambda x: math.exp(x)


def _load_block(src, b, c0, width, dst):
    """Copy ``src[b, c0:c0 + width, :]`` (D, L) into ``dst[:, :width]`` (L, LANES)."""
    for j in range(width):
        for t in range(src.shape[2]):
            dst[t, j] = src[b, c0 + j, t]


def _store_block(src, dst, b, c0, width):
    for j in range(width):
        for t in range(dst.shape[2]):
            dst[b, c0 + j, t] = src[t, j]


def _load_params(A, D, c0, width, has_d, a, skip):
    """``A[c0:c0 + width]`` into ``a[:, :width]`` (N, LANES) and ``D`` into ``skip``."""
    for j in range(width):
        for n in range(A.shape[1]):
            a[n, j] = A[c0 + j, n]
        if has_d:
            skip[j] = D[c0 + j]


_load_block_jit = njit(inline="always")(_load_block)
_store_block_jit = njit(inline="always")(_store_block)
_load_params_jit = njit(inline="always")(_load_params)


def _forward(u, dt, A, Bt, Ct, D, z, has_d, has_z, out):
    n_batch, n_chan, n_time = u.shape
    n_state = A.shape[1]
    n_blocks = (n_chan + LANES - 1) // LANES
    for task in prange(n_batch * n_blocks):
        b = task // n_blocks
        c0 = (task % n_blocks) * LANES
        width = min(LANES, n_chan - c0)
        # Padded lanes have u = dt = 0: their state stays 0 and they are never stored.
        ub = np.zeros((n_time, LANES), u.dtype)
        tb = np.zeros((n_time, LANES), u.dtype)
        yb = np.zeros((n_time, LANES), u.dtype)
        a = np.zeros((n_state, LANES), u.dtype)
        h = np.zeros((n_state, LANES), u.dtype)
        skip = np.zeros(LANES, u.dtype)
        xb = np.zeros(LANES, u.dtype)
        _load_block_jit(u, b, c0, width, ub)
        _load_block_jit(dt, b, c0, width, tb)
        _load_params_jit(A, D, c0, width, has_d, a, skip)
        for t in range(n_time):
            for j in range(LANES):
                xb[j] = tb[t, j] * ub[t, j]
                yb[t, j] = skip[j] * ub[t, j]
            for n in range(n_state):
                bn = Bt[b, t, n]
                cn = Ct[b, t, n]
                for j in range(LANES):
                    hv = fexp(tb[t, j] * a[n, j]) * h[n, j] + xb[j] * bn
                    h[n, j] = hv
                    yb[t, j] += hv * cn
        if has_z:
            zb = np.zeros((n_time, LANES), u.dtype)
            _load_block_jit(z, b, c0, width, zb)
            one = np.ones(1, u.dtype)[0]
            for t in range(n_time):
                for j in range(LANES):
                    zv = zb[t, j]
                    yb[t, j] = yb[t, j] * zv / (one + fexp(-zv))
        _store_block_jit(yb, out, b, c0, width)


# The backward works on one (batch item, channel group) per task, block by block. Its buffers:
#   tbuf (9, L, LANES): u, dt, gout, y, z, softplus argument, and the block's du, ddelta, dz
#   nbuf (2, N, LANES): the block's A and dL/dh carried backwards; ga (N, LANES) float64: dA
#   lbuf (5, LANES): D, dt * u, dL/dy, du and ddelta of one step; lacc (2, LANES) float64: dD,
#   d(delta_bias). U, DT, GOUT, Y, Z, XRAW, DU, DDT, DZ and A, GH, and SKIP, XB, DY, GU, GDT
#   (and GSKIP, GBIAS) name the rows.
U, DT, GOUT, Y, Z, XRAW, DU, DDT, DZ = range(9)
A_, GH = range(2)
SKIP, XB, DY, GU, GDT = range(5)
GSKIP, GBIAS = range(2)


def _load_backward_block(u, dt, gout, z, xraw, A, D, b, c0, width, flags, tbuf, nbuf, ga, lbuf, lacc):
    """Reset the lanes and load one block (padded lanes keep u = dt = gout = 0: no effect)."""
    has_d, has_z, softplus = flags
    tbuf[U] = 0
    tbuf[DT] = 0
    tbuf[GOUT] = 0
    nbuf[:] = 0
    ga[:] = 0
    lbuf[SKIP] = 0
    lacc[:] = 0
    _load_block_jit(u, b, c0, width, tbuf[U])
    _load_block_jit(dt, b, c0, width, tbuf[DT])
    _load_block_jit(gout, b, c0, width, tbuf[GOUT])
    if has_z:
        _load_block_jit(z, b, c0, width, tbuf[Z])
    if softplus:
        _load_block_jit(xraw, b, c0, width, tbuf[XRAW])
    _load_params_jit(A, D, c0, width, has_d, nbuf[A_], lbuf[SKIP])


def _block_states(Bt, Ct, b, tbuf, nbuf, lbuf, hs):
    """The forward again, keeping every state: ``hs[t + 1] = h_t`` (N, LANES), and ``y``."""
    ub, tb, yb, a, skip, xb = tbuf[U], tbuf[DT], tbuf[Y], nbuf[A_], lbuf[SKIP], lbuf[XB]
    for t in range(ub.shape[0]):
        for j in range(LANES):
            xb[j] = tb[t, j] * ub[t, j]
            yb[t, j] = skip[j] * ub[t, j]
        for n in range(a.shape[0]):
            bn = Bt[b, t, n]
            cn = Ct[b, t, n]
            for j in range(LANES):
                hv = fexp(tb[t, j] * a[n, j]) * hs[t, n, j] + xb[j] * bn
                hs[t + 1, n, j] = hv
                yb[t, j] += hv * cn


def _reverse_scan(Bt, Ct, b, flags, tbuf, nbuf, ga, lbuf, lacc, hs, db_acc, dc_acc):
    """The reverse scan of one block; ``gh`` carries dL/dh_t from the later steps."""
    _, has_z, softplus = flags
    ub, tb, gb, yb, zb, rb = tbuf[U], tbuf[DT], tbuf[GOUT], tbuf[Y], tbuf[Z], tbuf[XRAW]
    dub, dtb, dzb = tbuf[DU], tbuf[DDT], tbuf[DZ]
    a, gh = nbuf[A_], nbuf[GH]
    skip, dy, gu, gdt = lbuf[SKIP], lbuf[DY], lbuf[GU], lbuf[GDT]
    gskip, gbias = lacc[GSKIP], lacc[GBIAS]
    one = np.ones(1, ub.dtype)[0]
    for t in range(ub.shape[0] - 1, -1, -1):
        for j in range(LANES):
            go = gb[t, j]
            if has_z:
                zv = zb[t, j]
                sig = one / (one + fexp(-zv))
                dzb[t, j] = go * yb[t, j] * sig * (one + zv * (one - sig))
                dy[j] = go * zv * sig
            else:
                dy[j] = go
            gskip[j] += dy[j] * ub[t, j]
            gu[j] = dy[j] * skip[j]
            gdt[j] = 0
        for n in range(a.shape[0]):
            bn = Bt[b, t, n]
            cn = Ct[b, t, n]
            for j in range(LANES):
                tv = tb[t, j]
                ghn = gh[n, j] + dy[j] * cn
                dc_acc[t, n, j] += dy[j] * hs[t + 1, n, j]
                da = fexp(tv * a[n, j])
                gx = ghn * da * hs[t, n, j]  # d/d(dt * A) of exp(dt * A) * h_{t-1}
                gdt[j] += gx * a[n, j] + ghn * bn * ub[t, j]
                ga[n, j] += gx * tv
                gu[j] += ghn * tv * bn
                db_acc[t, n, j] += ghn * tv * ub[t, j]
                gh[n, j] = ghn * da
        for j in range(LANES):
            gd = gdt[j]
            if softplus:
                xv = rb[t, j]
                if xv <= 20:  # softplus' = sigmoid; identity above 20, as torch
                    gd = gd / (one + fexp(-xv))
            dub[t, j] = gu[j]
            dtb[t, j] = gd
            gbias[j] += gd


def _store_backward_block(b, c0, width, has_z, tbuf, ga, lacc, du, ddelta, dz, dA_part, dD_part, dbias_part):
    _store_block_jit(tbuf[DU], du, b, c0, width)
    _store_block_jit(tbuf[DDT], ddelta, b, c0, width)
    if has_z:
        _store_block_jit(tbuf[DZ], dz, b, c0, width)
    for j in range(width):
        for n in range(ga.shape[0]):
            dA_part[b, c0 + j, n] = ga[n, j]
        dD_part[b, c0 + j] = lacc[GSKIP, j]
        dbias_part[b, c0 + j] = lacc[GBIAS, j]


def _store_channel_sums(b, g, db_acc, dc_acc, dBt_part, dCt_part):
    """The group's dB and dC: the float64 per-lane sums, summed over the lanes (float64)."""
    for t in range(db_acc.shape[0]):
        for n in range(db_acc.shape[1]):
            sb = 0.0
            sc = 0.0
            for j in range(LANES):
                sb += db_acc[t, n, j]
                sc += dc_acc[t, n, j]
            dBt_part[b, g, t, n] = sb
            dCt_part[b, g, t, n] = sc


_load_backward_block_jit = njit(inline="always")(_load_backward_block)
_block_states_jit = njit(inline="always")(_block_states)
_reverse_scan_jit = njit(inline="always")(_reverse_scan)
_store_backward_block_jit = njit(inline="always")(_store_backward_block)
_store_channel_sums_jit = njit(inline="always")(_store_channel_sums)


def _backward(
    u,
    dt,
    xraw,
    A,
    Bt,
    Ct,
    D,
    z,
    gout,
    has_d,
    has_z,
    softplus,
    n_groups,
    du,
    ddelta,
    dz,
    dA_part,
    dBt_part,
    dCt_part,
    dD_part,
    dbias_part,
):
    # dA_part (B, D, N), dD_part (B, D), dbias_part (B, D): the caller sums them over batch.
    # dBt_part, dCt_part (B, G, L, N): channel group g of batch b; the caller sums over G.
    n_batch, n_chan, n_time = u.shape
    n_state = A.shape[1]
    n_blocks = (n_chan + LANES - 1) // LANES
    flags = (has_d, has_z, softplus)
    for task in prange(n_batch * n_groups):
        b = task // n_groups
        g = task % n_groups
        hs = np.zeros((n_time + 1, n_state, LANES), u.dtype)  # hs[t + 1] = h_t, hs[0] = 0
        # Channel sums of dB and dC per lane over the group's blocks, in float64: terms of
        # different channels can cancel, and a float32 sum would lose what remains.
        db_acc = np.zeros((n_time, n_state, LANES))  # float64
        dc_acc = np.zeros((n_time, n_state, LANES))  # float64
        tbuf = np.zeros((9, n_time, LANES), u.dtype)
        nbuf = np.zeros((2, n_state, LANES), u.dtype)
        ga = np.zeros((n_state, LANES))  # float64
        lbuf = np.zeros((5, LANES), u.dtype)
        lacc = np.zeros((2, LANES))  # float64
        for blk in range(g * n_blocks // n_groups, (g + 1) * n_blocks // n_groups):
            c0 = blk * LANES
            width = min(LANES, n_chan - c0)
            _load_backward_block_jit(
                u, dt, gout, z, xraw, A, D, b, c0, width, flags, tbuf, nbuf, ga, lbuf, lacc
            )
            _block_states_jit(Bt, Ct, b, tbuf, nbuf, lbuf, hs)
            _reverse_scan_jit(Bt, Ct, b, flags, tbuf, nbuf, ga, lbuf, lacc, hs, db_acc, dc_acc)
            _store_backward_block_jit(
                b, c0, width, has_z, tbuf, ga, lacc, du, ddelta, dz, dA_part, dD_part, dbias_part
            )
        _store_channel_sums_jit(b, g, db_acc, dc_acc, dBt_part, dCt_part)


def build_kernels(cache: bool = True):
    """Wrap the kernels with numba (compiled lazily, once per dtype).

    Parameters
    ----------
    cache : bool
        Ask numba to cache the machine code on disk (``NUMBA_CACHE_DIR`` if set, else next
        to this file or in the user cache). When no cache location is writable, caching is
        turned off instead of failing.

    Returns
    -------
    forward, backward : numba dispatchers
        See :func:`_forward` and :func:`_backward` for their arguments.
    """
    opts = {"parallel": True, "fastmath": False, "nogil": True}
    try:
        forward = njit(cache=cache, **opts)(_forward)
        backward = njit(cache=cache, **opts)(_backward)
    except RuntimeError:
        # No writable cache locator (read-only install and no NUMBA_CACHE_DIR).
        forward = njit(cache=False, **opts)(_forward)
        backward = njit(cache=False, **opts)(_backward)
    return forward, backward


def start_thread_pool() -> int:
    """Start numba's thread pool now (it starts at the first parallel call otherwise).

    The start sets the OpenMP thread count of the calling thread to ``NUMBA_NUM_THREADS``,
    which torch shares; the caller restores torch's count afterwards. Returns the pool size.
    """
    numba.get_num_threads()  # launches the pool
    return numba.config.NUMBA_NUM_THREADS


@contextmanager
def thread_limit(n_threads: int) -> Iterator[int]:
    """Run numba's parallel loops on at most ``n_threads`` (and the pool size) inside the block.

    numba's per-thread limit is put back on exit, so a caller's own setting survives.

    Yields
    ------
    int
        The number of threads in use.
    """
    previous = numba.get_num_threads()
    n = max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        numba.set_num_threads(n)
    try:
        yield n
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            numba.set_num_threads(previous)
