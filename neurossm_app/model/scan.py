"""The selective scan of Mamba, with interchangeable back ends.

:func:`selective_scan` has the signature, shapes and meaning of
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (real ``A``, input-dependent
``B`` and ``C`` of shape (B, N, L), no ``return_last_state``). For every batch ``b``,
channel ``d``, state ``n`` and time ``t``::

    dt_t  = softplus(delta_t + delta_bias)     (softplus and bias optional)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t,   h_{-1} = 0
    y_t   = sum_n C_t h_t + D * u_t                       (D optional)
    out_t = y_t * silu(z_t)                               (z optional)

Back ends
---------
``cpu``
    Fused numba kernels (:mod:`._scan_kernels`) behind a :class:`torch.autograd.Function`
    with a hand-written backward; never materialises (B, D, L, N).
``torch``
    A plain PyTorch loop over time; the reference. Runs on any device.
``cuda``
    ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (needs the ``cuda``
    extra and tensors on a GPU).
``auto``
    ``cuda`` for GPU tensors when mamba-ssm's kernels import (and ``d_state`` is within their
    limit), else ``torch`` on the GPU, with one warning; ``cpu`` for CPU tensors when numba
    works, else ``torch``, with one warning.

Which back end runs where is decided by :mod:`.backends`, which loads each optional one at
most once per process. The ``torch`` and ``cpu`` back ends compute in float32 (or float64)
whatever the input dtype and autocast, and return the input's dtype; ``cuda`` computes in the
kernel's precision (float32 state, inputs as given: bfloat16 under bf16 autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from neurossm_app.model import backends
from neurossm_app.model.backends import BACKENDS, Backend, cpu_kernels_available, resolve_backend

__all__ = [
    "BACKENDS",
    "Backend",
    "cpu_kernels_available",
    "resolve_backend",
    "selective_scan",
    "selective_scan_torch",
]


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: Backend = "auto",
) -> Tensor:
    """Selective scan, as ``mamba_ssm``'s ``selective_scan_fn``.

    Parameters
    ----------
    u : Tensor, shape (B, D, L)
        Input.
    delta : Tensor, shape (B, D, L)
        Step sizes before ``delta_bias`` and softplus.
    A : Tensor, shape (D, N)
        State matrix (diagonal, real; negative for a stable scan).
    B, C : Tensor, shape (B, N, L)
        Input-dependent input and output projections.
    D : Tensor, shape (D,), optional
        Skip connection.
    z : Tensor, shape (B, D, L), optional
        Gate: the output is multiplied by ``silu(z)``.
    delta_bias : Tensor, shape (D,), optional
        Added to ``delta`` before the softplus.
    delta_softplus : bool
        Apply softplus to ``delta + delta_bias``.
    backend : {"auto", "cpu", "torch", "cuda"}
        See the module docstring.

    Returns
    -------
    Tensor, shape (B, D, L)
        In the dtype of ``u``. Differentiable w.r.t. every tensor argument.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    chosen = resolve_backend(backend, u.device, A.shape[1])
    if chosen == "cuda":
        return backends.MAMBA_SSM.get()(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if chosen == "cpu":
        try:
            return _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        except _KernelFailure as failure:
            # The JIT could not compile here (e.g. an unsupported llvmlite): fall back, warn once.
            backends.NUMBA_KERNELS.disable(failure.__cause__ or failure)
            resolve_backend("cpu", u.device)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def compile_cpu_kernels(dtype: torch.dtype = torch.float32) -> None:
    """Compile the ``cpu`` back end's kernels for ``dtype`` now, or load them from numba's disk cache.

    A forward and backward of a tiny scan (every optional input given). The first scan of a
    process pays this otherwise: about 25 s per dtype on this project's 2-core machine when the
    cache is cold (docs/performance.md, "Test suite"); ``make venv`` runs it for both dtypes.
    """
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_()

    u, delta, z = tensor(1, 2, 3), tensor(1, 2, 3), tensor(1, 2, 3)
    A, B, C = -tensor(2, 4).exp(), tensor(1, 4, 3), tensor(1, 4, 3)
    D, delta_bias = tensor(2), tensor(2)
    out = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, backend="cpu")
    out.sum().backward()


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must both be (batch, dim, length); got {tuple(u.shape)} and {tuple(delta.shape)}."
        )
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, d_state); got {tuple(A.shape)}.")
    expected = (batch, A.shape[1], length)
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{name} must be (batch, d_state, length) = {expected}; got {tuple(t.shape)}. "
                "Only input-dependent real B and C are supported."
            )
    for name, t, shape in (("D", D, (dim,)), ("delta_bias", delta_bias, (dim,)), ("z", z, tuple(u.shape))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}; got {tuple(t.shape)}.")


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """The ``torch`` back end: a sequential loop over time in plain PyTorch.

    The discretised tensors are computed once, then the loop steps over their ``unbind``
    slices, so autograd's backward stays linear in L. Memory is O(B D L N). Shapes and
    meaning as :func:`selective_scan`. Computes in float32 for half-precision inputs, also
    under autocast (which is switched off inside), and returns the dtype of ``u``.
    """
    with torch.autocast(u.device.type, enabled=False):
        return _scan_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _scan_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> Tensor:
    dtype_in = u.dtype
    work = torch.promote_types(dtype_in, torch.float32)
    u, delta, B, C = (t.to(work) for t in (u, delta, B, C))
    if delta_bias is not None:
        delta = delta + rearrange(delta_bias.to(work), "d -> d 1")
    if delta_softplus:
        delta = F.softplus(delta)
    # (B, L, D, N): time first among the iterated axes so unbind(1) gives contiguous steps
    delta_a = torch.exp(torch.einsum("bdl,dn->bldn", delta, A.to(work)))
    delta_bu = torch.einsum("bdl,bnl,bdl->bldn", delta, B, u)
    c_t = rearrange(C, "b n l -> b l n")
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D, N)
    ys = []
    for da, dbu, c in zip(delta_a.unbind(1), delta_bu.unbind(1), c_t.unbind(1), strict=True):
        h = da * h + dbu  # (B, D, N)
        ys.append(torch.einsum("bdn,bn->bd", h, c))
    y = torch.stack(ys, dim=-1)  # (B, D, L)
    if D is not None:
        y = y + u * rearrange(D.to(work), "d -> d 1")
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype_in)


class _KernelFailure(RuntimeError):
    """Raised when the numba kernel fails to compile or run for reasons not of the caller."""


def _kernel_threads(n_threads: int) -> int:
    """Threads a kernel call will use: torch's count, bounded by numba's pool."""
    import numba

    return max(1, min(n_threads, numba.config.NUMBA_NUM_THREADS))


def _run_kernel(kernel, n_threads: int, *args) -> None:
    """Call a numba kernel on ``n_threads`` threads (numba's own setting restored after)."""
    from neurossm_app.model._scan_kernels import thread_limit

    try:
        with thread_limit(n_threads):
            kernel(*args)
    except Exception as err:
        from numba.core.errors import NumbaError

        if isinstance(err, (NumbaError, OSError, ImportError)):
            raise _KernelFailure(str(err)) from err
        raise


def _as_array(t: Tensor | None, dtype: torch.dtype, ndim: int):
    """A C-contiguous numpy view of ``t`` in ``dtype`` (an empty ``ndim``-d dummy if None)."""
    if t is None:
        return torch.empty((0,) * ndim, dtype=dtype).numpy()
    return t.detach().to(dtype).contiguous().numpy()


class _SelectiveScanCPU(torch.autograd.Function):
    """The ``cpu`` back end: numba forward and backward kernels.

    Only the softplus of the step size runs in PyTorch (vectorised, once, in the forward);
    its derivative, the gate, the skip and every reduction run in the kernels.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        forward_kernel, _ = backends.NUMBA_KERNELS.get()
        dtype_in = u.dtype
        work = torch.float64 if dtype_in == torch.float64 else torch.float32
        xraw = delta.detach().to(work)  # (B, D, L) argument of the softplus
        if delta_bias is not None:
            xraw = xraw + rearrange(delta_bias.detach().to(work), "d -> d 1")
        dt = F.softplus(xraw) if delta_softplus else xraw
        dt = dt.contiguous()
        # (B, N, L) -> (B, L, N) so one step's values are contiguous for the kernel
        b_t = rearrange(B.detach().to(work), "b n l -> b l n").contiguous()
        c_t = rearrange(C.detach().to(work), "b n l -> b l n").contiguous()
        out = torch.empty(u.shape, dtype=work)
        _run_kernel(
            forward_kernel,
            torch.get_num_threads(),
            _as_array(u, work, 3),
            dt.numpy(),
            _as_array(A, work, 2),
            b_t.numpy(),
            c_t.numpy(),
            _as_array(D, work, 1),
            _as_array(z, work, 3),
            D is not None,
            z is not None,
            out.numpy(),
        )
        ctx.delta_softplus = bool(delta_softplus)
        ctx.has = (D is not None, z is not None, delta_bias is not None)
        ctx.dtypes = (delta.dtype, B.dtype, C.dtype)
        saved_xraw = xraw.contiguous() if delta_softplus else None
        ctx.save_for_backward(u, dt, saved_xraw, A, b_t, c_t, D, z, delta_bias)
        return out.to(dtype_in)

    @staticmethod
    def backward(ctx, grad_out):
        _, backward_kernel = backends.NUMBA_KERNELS.get()
        n_threads = _kernel_threads(torch.get_num_threads())
        u, dt, xraw, A, b_t, c_t, D, z, delta_bias = ctx.saved_tensors
        has_d, has_z, _ = ctx.has
        delta_dtype, b_dtype, c_dtype = ctx.dtypes
        work = b_t.dtype
        n_batch, n_chan, n_time = u.shape
        n_state = A.shape[1]
        # Channel groups per batch item: enough tasks to keep every thread busy, few enough
        # that the (B, G, L, N) partial sums of dB and dC stay small.
        n_groups = max(1, min(-(-n_chan // 16), -(-2 * n_threads // n_batch)))
        f64 = torch.float64
        du = torch.empty(u.shape, dtype=work)
        ddelta = torch.empty(u.shape, dtype=work)
        dz = torch.empty(u.shape if has_z else (0, 0, 0), dtype=work)
        da_part = torch.empty(n_batch, n_chan, n_state, dtype=f64)
        db_part = torch.empty(n_batch, n_groups, n_time, n_state, dtype=f64)
        dc_part = torch.empty(n_batch, n_groups, n_time, n_state, dtype=f64)
        dd_part = torch.empty(n_batch, n_chan, dtype=f64)
        dbias_part = torch.empty(n_batch, n_chan, dtype=f64)
        _run_kernel(
            backward_kernel,
            n_threads,
            _as_array(u, work, 3),
            dt.numpy(),
            _as_array(xraw, work, 3),
            _as_array(A, work, 2),
            b_t.numpy(),
            c_t.numpy(),
            _as_array(D, work, 1),
            _as_array(z, work, 3),
            _as_array(grad_out, work, 3),
            has_d,
            has_z,
            ctx.delta_softplus,
            n_groups,
            du.numpy(),
            ddelta.numpy(),
            dz.numpy(),
            da_part.numpy(),
            db_part.numpy(),
            dc_part.numpy(),
            dd_part.numpy(),
            dbias_part.numpy(),
        )
        grad_b = rearrange(db_part.sum(1), "b l n -> b n l")  # (B, N, L)
        grad_c = rearrange(dc_part.sum(1), "b l n -> b n l")  # (B, N, L)

        def cast(t, like):
            return None if like is None else t.to(like.dtype)

        return (
            du.to(u.dtype),
            ddelta.to(delta_dtype),
            da_part.sum(0).to(A.dtype),
            grad_b.to(b_dtype),
            grad_c.to(c_dtype),
            cast(dd_part.sum(0), D),
            cast(dz, z),
            cast(dbias_part.sum(0), delta_bias),
            None,
        )
