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
accumulators per thread and the ``(B, G, L, N)`` partial sums of ``dB`` and ``dC``.

Layouts (all C-contiguous):

- ``u, dt, xraw, z, gout, out, du, ddelta, dz``: (B, D, L); ``dt`` is the step size after
  bias and softplus, ``xraw`` the argument of the softplus (``delta + delta_bias``)
- ``A``: (D, N)
- ``Bt, Ct``: (B, L, N), i.e. ``B`` and ``C`` of the public API transposed so that the N
  values of one time step are contiguous
- ``D``: (D,)

Arithmetic is in the dtype of ``u`` (float32 or float64); sums over time of the gradients
of ``A``, ``D`` and ``delta_bias``, and the sums over channels of the gradients of ``B`` and
``C``, are accumulated in float64.
"""

from __future__ import annotations

import math
import warnings

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

__all__ = ["LANES", "build_kernels", "set_threads"]

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


_load_block_jit = njit(inline="always")(_load_block)
_store_block_jit = njit(inline="always")(_store_block)


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
        for j in range(width):
            for n in range(n_state):
                a[n, j] = A[c0 + j, n]
            if has_d:
                skip[j] = D[c0 + j]
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
    for task in prange(n_batch * n_groups):
        b = task // n_groups
        g = task % n_groups
        hs = np.zeros((n_time + 1, n_state, LANES), u.dtype)  # hs[t + 1] = h_t, hs[0] = 0
        db_acc = np.zeros((n_time, n_state, LANES), u.dtype)
        dc_acc = np.zeros((n_time, n_state, LANES), u.dtype)
        ub = np.zeros((n_time, LANES), u.dtype)
        tb = np.zeros((n_time, LANES), u.dtype)
        gb = np.zeros((n_time, LANES), u.dtype)
        yb = np.zeros((n_time, LANES), u.dtype)
        zb = np.zeros((n_time, LANES), u.dtype)
        rb = np.zeros((n_time, LANES), u.dtype)
        dub = np.zeros((n_time, LANES), u.dtype)
        dtb = np.zeros((n_time, LANES), u.dtype)
        dzb = np.zeros((n_time, LANES), u.dtype)
        a = np.zeros((n_state, LANES), u.dtype)
        gh = np.zeros((n_state, LANES), u.dtype)
        ga = np.zeros((n_state, LANES))  # float64
        skip = np.zeros(LANES, u.dtype)
        xb = np.zeros(LANES, u.dtype)
        dy = np.zeros(LANES, u.dtype)
        gu = np.zeros(LANES, u.dtype)
        gdt = np.zeros(LANES, u.dtype)
        gskip = np.zeros(LANES)  # float64
        gbias = np.zeros(LANES)  # float64
        one = np.ones(1, u.dtype)[0]
        for blk in range(g * n_blocks // n_groups, (g + 1) * n_blocks // n_groups):
            c0 = blk * LANES
            width = min(LANES, n_chan - c0)
            # Reset lanes: padded ones keep u = dt = gout = 0 and contribute nothing.
            ub[:] = 0
            tb[:] = 0
            gb[:] = 0
            a[:] = 0
            skip[:] = 0
            gh[:] = 0
            ga[:] = 0
            gskip[:] = 0
            gbias[:] = 0
            _load_block_jit(u, b, c0, width, ub)
            _load_block_jit(dt, b, c0, width, tb)
            _load_block_jit(gout, b, c0, width, gb)
            if has_z:
                _load_block_jit(z, b, c0, width, zb)
            if softplus:
                _load_block_jit(xraw, b, c0, width, rb)
            for j in range(width):
                for n in range(n_state):
                    a[n, j] = A[c0 + j, n]
                if has_d:
                    skip[j] = D[c0 + j]
            # Forward again, keeping every state of the block.
            for t in range(n_time):
                for j in range(LANES):
                    xb[j] = tb[t, j] * ub[t, j]
                    yb[t, j] = skip[j] * ub[t, j]
                for n in range(n_state):
                    bn = Bt[b, t, n]
                    cn = Ct[b, t, n]
                    for j in range(LANES):
                        hv = fexp(tb[t, j] * a[n, j]) * hs[t, n, j] + xb[j] * bn
                        hs[t + 1, n, j] = hv
                        yb[t, j] += hv * cn
            # Reverse scan; gh carries dL/dh_t from the later steps.
            for t in range(n_time - 1, -1, -1):
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
                for n in range(n_state):
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
            _store_block_jit(dub, du, b, c0, width)
            _store_block_jit(dtb, ddelta, b, c0, width)
            if has_z:
                _store_block_jit(dzb, dz, b, c0, width)
            for j in range(width):
                for n in range(n_state):
                    dA_part[b, c0 + j, n] = ga[n, j]
                dD_part[b, c0 + j] = gskip[j]
                dbias_part[b, c0 + j] = gbias[j]
        for t in range(n_time):
            for n in range(n_state):
                sb = 0.0
                sc = 0.0
                for j in range(LANES):
                    sb += db_acc[t, n, j]
                    sc += dc_acc[t, n, j]
                dBt_part[b, g, t, n] = sb
                dCt_part[b, g, t, n] = sc


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


def set_threads(n_threads: int) -> int:
    """Bound numba's threads by ``n_threads`` and by ``NUMBA_NUM_THREADS``; return the count."""
    n = max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        numba.set_num_threads(n)
    return n
