"""A unidirectional Mamba block with the parameters of ``mamba_ssm.Mamba``.

Parameter names, shapes and initialisation follow ``mamba_ssm/modules/mamba_simple.py``
(Gu & Dao, 2023), so a ``state_dict`` moves between this module and ``mamba_ssm.Mamba``
in both directions. The selective scan runs on any back end of
:func:`neurossm_app.model.scan.selective_scan`; with the ``cuda`` back end and
``causal-conv1d`` installed, the short convolution uses its kernel as well (widths 2 to 4;
other widths use ``nn.Conv1d``, also on the GPU).

Not carried over: ``use_fast_path`` (the fused ``mamba_inner_fn``; the ``cuda`` back end
calls ``selective_scan_fn`` instead, which computes the same function) and incremental
decoding (``inference_params``, ``step``), which a classifier does not need.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from neurossm_app.model import backends
from neurossm_app.model.backends import Backend, conv_backend_for, cuda_kernel_problems, resolve_backend
from neurossm_app.model.scan import selective_scan

__all__ = ["Mamba"]


class Mamba(nn.Module):
    """Mamba (S6) mixer: ``(B, L, d_model) -> (B, L, d_model)``, causal in time.

    Parameters
    ----------
    d_model : int
        Width of the input and output.
    d_state : int
        State size N of the selective scan.
    d_conv : int
        Width of the causal depthwise convolution.
    expand : int
        ``d_inner = expand * d_model`` channels inside the block.
    dt_rank : int or "auto"
        Rank of the step-size projection; ``"auto"`` is ``ceil(d_model / 16)``.
    dt_min, dt_max, dt_init, dt_scale, dt_init_floor
        Initialisation of the step size, as in ``mamba_ssm``: ``softplus(dt_proj.bias)``
        is log-uniform in ``[dt_min, dt_max]`` (floored at ``dt_init_floor``) and
        ``dt_proj.weight`` is uniform (``"random"``) or constant (``"constant"``) with scale
        ``dt_scale / sqrt(dt_rank)``.
    conv_bias, bias : bool
        Bias of ``conv1d``; bias of ``in_proj`` and ``out_proj``.
    layer_idx : int, optional
        Kept for ``mamba_ssm`` compatibility (it keys the decoding cache there).
    device, dtype
        Factory arguments of the parameters (``A_log`` and ``D`` stay float32).
    backend : {"auto", "cpu", "torch", "cuda"}
        Selective-scan back end; see :func:`neurossm_app.model.scan.selective_scan`. A plain
        attribute: set ``module.backend`` to change it after construction. ``"cuda"`` refuses
        sizes its kernels do not support (``d_state`` over 256, ``d_conv`` outside 2-4);
        ``"auto"`` runs those parts in PyTorch instead.

    Attributes
    ----------
    in_proj : nn.Linear, weight (2 * d_inner, d_model)
    conv1d : nn.Conv1d, weight (d_inner, 1, d_conv), bias (d_inner,)
    x_proj : nn.Linear, weight (dt_rank + 2 * d_state, d_inner)
    dt_proj : nn.Linear, weight (d_inner, dt_rank), bias (d_inner,)
    A_log : nn.Parameter, (d_inner, d_state); ``A = -exp(A_log)``
    D : nn.Parameter, (d_inner,)
    out_proj : nn.Linear, weight (d_model, d_inner)
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: Backend = "auto",
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.layer_idx = layer_idx
        self.backend = backend
        self.activation = "silu"
        if backend == "cuda":
            self._check_cuda_limits()

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(
            in_channels=self.d_inner,
            out_channels=self.d_inner,
            bias=conv_bias,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            **factory_kwargs,
        )
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + self.d_state * 2, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt projection: keep the variance of dt at initialisation.
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}.")
        # dt bias: softplus(bias) log-uniform in [dt_min, dt_max], via the inverse softplus.
        dt = torch.exp(
            torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        # A generic re-initialisation would zero every Linear bias; not this one.
        self.dt_proj.bias._no_reinit = True

        # S4D real initialisation: A[:, n] = -(n + 1), stored as log(-A), in float32.
        A = repeat(
            torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device),
            "n -> d n",
            d=self.d_inner,
        ).contiguous()
        self.A_log = nn.Parameter(torch.log(A))  # (d_inner, d_state)
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # (d_inner,)
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def forward(self, hidden_states: Tensor) -> Tensor:
        """Mix along time.

        Parameters
        ----------
        hidden_states : Tensor, shape (B, L, d_model)

        Returns
        -------
        Tensor, shape (B, L, d_model)
            Output at step t depends on steps 0..t only.
        """
        seqlen = hidden_states.shape[1]
        if self.backend == "cuda":
            self._check_cuda_limits()
        backend = resolve_backend(self.backend, hidden_states.device, self.d_state)
        # One matmul that also turns (B, L, D) into the (B, D, L) the scan wants.
        xz = rearrange(
            self.in_proj.weight @ rearrange(hidden_states, "b l d -> d (b l)"),
            "d (b l) -> b d l",
            l=seqlen,
        )  # (B, 2 * d_inner, L)
        if self.in_proj.bias is not None:
            xz = xz + rearrange(self.in_proj.bias.to(dtype=xz.dtype), "d -> d 1")
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        x, z = xz.chunk(2, dim=1)  # (B, d_inner, L) each

        if conv_backend_for(backend, self.d_conv) == "causal-conv1d":
            x = backends.CAUSAL_CONV1D.get()(
                x=x,
                weight=rearrange(self.conv1d.weight, "d 1 w -> d w"),
                bias=self.conv1d.bias,
                activation=self.activation,
            )
        else:
            x = self.act(self.conv1d(x)[..., :seqlen])  # causal: drop the right padding

        x_dbl = self.x_proj(rearrange(x, "b d l -> (b l) d"))  # (B*L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = rearrange(self.dt_proj.weight @ dt.t(), "d (b l) -> b d l", l=seqlen)
        B = rearrange(B, "(b l) n -> b n l", l=seqlen).contiguous()  # (B, N, L)
        C = rearrange(C, "(b l) n -> b n l", l=seqlen).contiguous()  # (B, N, L)
        y = selective_scan(
            x,
            dt,
            A,
            B,
            C,
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=backend,
        )  # (B, d_inner, L)
        return self.out_proj(rearrange(y, "b d l -> b l d"))  # (B, L, d_model)

    def _check_cuda_limits(self) -> None:
        problems = [
            f"{field} {value} {reason}"
            for field, value, reason in cuda_kernel_problems(self.d_state, self.d_conv)
        ]
        if problems:
            raise ValueError(f"backend='cuda': {'; '.join(problems)}; use backend='auto' or 'torch'.")

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
            f"d_conv={self.d_conv}, dt_rank={self.dt_rank}, backend={self.backend!r}"
        )
