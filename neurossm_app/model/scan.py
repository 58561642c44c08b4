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
    ``cuda`` for GPU tensors when ``mamba_ssm`` imports, else ``torch`` on GPU; ``cpu`` for
    CPU tensors when numba works, else ``torch``.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = ["BACKENDS", "cpu_kernels_available", "resolve_backend", "selective_scan"]

Backend = Literal["auto", "cpu", "torch", "cuda"]
BACKENDS = ("auto", "cpu", "torch", "cuda")

# Lazily built numba dispatchers, or the reason they could not be built.
_KERNELS: tuple | None = None
_KERNEL_ERROR: BaseException | None = None
_WARNED = False


def _load_kernels() -> tuple:
    """Import numba and build the kernels (compilation itself happens per dtype on use).

    numba sizes its thread pool when first imported (all cores unless ``NUMBA_NUM_THREADS`` is
    set) and shares torch's OpenMP runtime; a pool larger than torch's leaves threads waiting
    at barriers (a 30x slower training step was measured). So the pool follows torch's count.
    """
    import os
    import sys

    if "numba" not in sys.modules and "NUMBA_NUM_THREADS" not in os.environ:
        os.environ["NUMBA_NUM_THREADS"] = str(torch.get_num_threads())
    from neurossm_app.model import _scan_kernels

    return (*_scan_kernels.build_kernels(), _scan_kernels.set_threads)


def _disable_kernels(err: BaseException) -> None:
    global _KERNELS, _KERNEL_ERROR, _WARNED
    _KERNELS, _KERNEL_ERROR = None, err
    if not _WARNED:
        _WARNED = True
        warnings.warn(
            "The numba selective-scan kernel is unavailable "
            f"({type(err).__name__}: {err}); falling back to the slower PyTorch scan "
            "(backend='torch'). Install a numba that matches your numpy to get it back.",
            RuntimeWarning,
            stacklevel=3,
        )


def _get_kernels() -> tuple | None:
    global _KERNELS
    if _KERNELS is None and _KERNEL_ERROR is None:
        try:
            _KERNELS = _load_kernels()
        except Exception as err:  # noqa: BLE001 - ImportError, numba/llvmlite/numpy clashes
            _disable_kernels(err)
    return _KERNELS


def cpu_kernels_available() -> bool:
    """Whether the numba back end can be used (imports numba on first call)."""
    return _get_kernels() is not None


def _mamba_ssm_scan():
    """``mamba_ssm``'s selective_scan_fn, or None when the package does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - ImportError, or a CUDA extension built for another torch
        return None
    return selective_scan_fn


def resolve_backend(backend: Backend, device: torch.device) -> str:
    """Turn ``backend`` (possibly ``"auto"``) into the one that will run on ``device``.

    Parameters
    ----------
    backend : {"auto", "cpu", "torch", "cuda"}
    device : torch.device
        Where the tensors live.

    Returns
    -------
    str
        ``"cpu"``, ``"torch"`` or ``"cuda"``. ``"cpu"`` degrades to ``"torch"`` (with a
        warning, once) when the numba kernels cannot be built.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    on_gpu = device.type == "cuda"
    if backend == "auto":
        if on_gpu:
            return "cuda" if _mamba_ssm_scan() is not None else "torch"
        return "cpu" if _get_kernels() is not None else "torch"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(
                f"backend='cpu' needs CPU tensors, got tensors on {device}; "
                "use backend='auto', 'torch' or 'cuda'."
            )
        return "cpu" if _get_kernels() is not None else "torch"
    if backend == "cuda":
        if not on_gpu:
            raise ValueError(f"backend='cuda' needs tensors on a GPU, got {device}; use backend='auto'.")
        if _mamba_ssm_scan() is None:
            raise ImportError(
                "backend='cuda' needs the mamba-ssm package: "
                "pip install 'neurossm-app[cuda]' (requires a CUDA toolkit), "
                "or use backend='torch'."
            )
    return backend


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
    chosen = resolve_backend(backend, u.device)
    if chosen == "cuda":
        return _mamba_ssm_scan()(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if chosen == "cpu":
        try:
            return _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        except _KernelFailure as failure:
            # The JIT could not compile here (e.g. an unsupported llvmlite): fall back.
            _disable_kernels(failure.__cause__ or failure)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


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
    meaning as :func:`selective_scan`; computes in float32 for half-precision inputs.
    """
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


def _run_kernel(kernel, *args) -> None:
    try:
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
        forward_kernel, _, set_threads = _KERNELS
        set_threads(torch.get_num_threads())
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
        _, backward_kernel, set_threads = _KERNELS
        n_threads = set_threads(torch.get_num_threads())
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
