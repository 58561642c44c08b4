"""Building blocks of a NeuroSSM pathway: time masks, pooling, residual (bi-)Mamba blocks.

Every function here keeps padded time steps out of the valid ones: a sample gives the same
valid outputs whether or not it is padded at the end of a longer batch.

Under autocast the residual stream stays in the input's dtype (float32), as mamba-ssm's models
keep theirs (``residual_in_fp32``): the ROI embedding's output is cast back, each block adds
its mixers' outputs (computed in the autocast dtype) to the float32 stream, and the norms
read float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from neurossm_app.model.mamba import Mamba
from neurossm_app.model.scan import Backend

__all__ = [
    "BiMambaBlock",
    "Pathway",
    "flip_valid",
    "masked_mean",
    "pool_time",
    "temporal_difference",
    "time_mask",
]


def time_mask(lengths: Tensor | None, batch: int, n_time: int, like: Tensor) -> Tensor:
    """Valid-step mask.

    Parameters
    ----------
    lengths : Tensor, shape (B,), long, optional
        Valid steps per sample; None means all ``n_time`` are valid.
    batch, n_time : int
    like : Tensor
        Device and floating dtype of the mask.

    Returns
    -------
    Tensor, shape (B, T)
        1.0 at valid steps, 0.0 at padding.
    """
    if lengths is None:
        return like.new_ones(batch, n_time)
    steps = torch.arange(n_time, device=like.device)
    return (steps[None, :] < lengths.to(like.device)[:, None]).to(like.dtype)


def temporal_difference(x: Tensor) -> Tensor:
    """``diff_t = x_t - x_{t-1}``, with ``diff_0 = 0``.

    Parameters
    ----------
    x : Tensor, shape (B, R, T)

    Returns
    -------
    Tensor, shape (B, R, T)
    """
    return torch.cat([torch.zeros_like(x[..., :1]), x[..., 1:] - x[..., :-1]], dim=-1)


def pool_time(x: Tensor, mask: Tensor, scale: int) -> tuple[Tensor, Tensor]:
    """Average-pool over time with stride and window ``scale``, ignoring padded steps.

    Windows start at step 0. A sample with ``n`` valid steps gets ``ceil(n / scale)`` valid
    windows; the last one averages the ``n mod scale`` remaining steps when ``scale`` does
    not divide ``n``. Padded steps never enter a valid window's mean.

    Parameters
    ----------
    x : Tensor, shape (B, R, T)
    mask : Tensor, shape (B, T)
        From :func:`time_mask`.
    scale : int

    Returns
    -------
    pooled : Tensor, shape (B, R, ceil(T / scale))
        Zero at invalid windows.
    pooled_mask : Tensor, shape (B, ceil(T / scale))
    """
    x = x * rearrange(mask, "b t -> b 1 t")
    if scale == 1:
        return x, mask
    pad = -x.shape[-1] % scale
    sums = reduce(F.pad(x, (0, pad)), "b r (t s) -> b r t", "sum", s=scale)
    counts = reduce(F.pad(mask, (0, pad)), "b (t s) -> b t", "sum", s=scale)
    pooled = sums / rearrange(counts.clamp_min(1.0), "b t -> b 1 t")
    return pooled, (counts > 0).to(mask.dtype)


def flip_valid(h: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sample's valid steps in place, leaving its padding at the end.

    Parameters
    ----------
    h : Tensor, shape (B, L, D)
    lengths : Tensor, shape (B,), long, optional
        None flips the whole sequence.

    Returns
    -------
    Tensor, shape (B, L, D)
        ``out[b, t] = h[b, lengths[b] - 1 - t]`` for valid t, ``h[b, t]`` otherwise. The map
        is its own inverse.
    """
    if lengths is None:
        return h.flip(1)
    steps = torch.arange(h.shape[1], device=h.device)  # (L,)
    n = lengths.to(h.device)[:, None]  # (B, 1)
    index = torch.where(steps[None, :] < n, n - 1 - steps[None, :], steps[None, :])  # (B, L)
    return torch.gather(h, 1, repeat(index, "b l -> b l d", d=h.shape[2]))


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid time steps.

    Parameters
    ----------
    h : Tensor, shape (B, L, D)
    mask : Tensor, shape (B, L)

    Returns
    -------
    Tensor, shape (B, D)
    """
    total = (h * rearrange(mask, "b l -> b l 1")).sum(1)
    return total / rearrange(mask.sum(1).clamp_min(1.0), "b -> b 1")


class BiMambaBlock(nn.Module):
    """Pre-norm residual Mamba block: ``h + mixer(LayerNorm(h))``.

    The mixer is a forward :class:`Mamba`; when bidirectional, plus a second :class:`Mamba`
    (own parameters) run on the time-reversed valid part, reversed back, and summed.

    Parameters
    ----------
    d_model, d_state, d_conv, expand : int
        As :class:`Mamba`.
    bidirectional : bool
    backend : {"auto", "cpu", "torch", "cuda"}
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        bidirectional: bool = True,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        kw = {"d_state": d_state, "d_conv": d_conv, "expand": expand, "backend": backend}
        self.fwd = Mamba(d_model, **kw)
        self.bwd = Mamba(d_model, **kw) if bidirectional else None

    def forward(self, h: Tensor, mask: Tensor, lengths: Tensor | None) -> Tensor:
        """
        Parameters
        ----------
        h : Tensor, shape (B, L, D)
        mask : Tensor, shape (B, L)
        lengths : Tensor, shape (B,), long, optional
            Valid steps (None: all).

        Returns
        -------
        Tensor, shape (B, L, D)
            Zero at padded steps; in the dtype of ``h``, also under autocast.
        """
        mask3 = rearrange(mask, "b l -> b l 1")
        x = self.norm(h) * mask3  # (B, L, D); padding zeroed before every scan
        # The mixers may compute in the autocast dtype; their sum and the residual do not.
        mixed = self.fwd(x).to(h.dtype)
        if self.bwd is not None:
            mixed = mixed + flip_valid(self.bwd(flip_valid(x, lengths)), lengths).to(h.dtype)
        return (h + mixed) * mask3


class Pathway(nn.Module):
    """One (signal, scale) pathway: ROI embedding, Mamba blocks, final norm, masked mean.

    Parameters
    ----------
    n_rois, d_model, n_layers, d_state, d_conv, expand : int
    bidirectional : bool
    dropout : float
        Applied to the embedded sequence.
    backend : {"auto", "cpu", "torch", "cuda"}
    """

    def __init__(
        self,
        n_rois: int,
        d_model: int,
        n_layers: int,
        d_state: int,
        d_conv: int,
        expand: int,
        bidirectional: bool,
        dropout: float,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(n_rois, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            BiMambaBlock(d_model, d_state, d_conv, expand, bidirectional, backend) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, mask: Tensor, lengths: Tensor | None) -> Tensor:
        """
        Parameters
        ----------
        x : Tensor, shape (B, R, T)
            The pathway's input (signal at its scale), zero at padding.
        mask : Tensor, shape (B, T)
        lengths : Tensor, shape (B,), long, optional
            Valid steps at this scale (None: all).

        Returns
        -------
        Tensor, shape (B, D)
            The pathway vector h_p.
        """
        # The residual stream keeps x's dtype (float32), also under autocast (bf16 embedding).
        h = self.dropout(self.embed(rearrange(x, "b r t -> b t r")).to(x.dtype))  # (B, T, D)
        for block in self.blocks:
            h = block(h, mask, lengths)
        return masked_mean(self.norm(h), mask)  # (B, D)
