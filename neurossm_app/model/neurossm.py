"""NeuroSSM: a multiscale differential state-space classifier of ROI time series.

Input ``x`` (B, R, T), each ROI z-scored over its valid time steps by the caller (the
model does no normalisation of its input). For every pathway p = (signal, scale):

1. signal: ``raw`` is x; ``diff`` is ``x_t - x_{t-1}`` (0 at t = 0), taken on the raw series
   before any pooling;
2. scale s: mean over non-overlapping windows of s steps (stride s) starting at t = 0; a
   sample with n valid steps has ``ceil(n / s)`` valid windows, the last one the mean of
   what remains. This is x_p, (B, R, ceil(T / s)), the pathway input CPA differentiates;
3. a linear ROI embedding R -> d, dropout, ``n_layers`` pre-norm residual (bi-)Mamba
   blocks, LayerNorm, and the mean over valid windows: h_p, (B, d).

The set of pathways is the MSD-SSB. Fusion is attention pooling over {h_p} with one
learned query (keys ``k_p = W_k h_p``, weights ``softmax_p(<q, k_p> / sqrt(d))``, output
``sum_p w_p h_p``), then LayerNorm, dropout and a linear classifier.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from einops import einsum
from torch import Tensor, nn

from neurossm_app.model.blocks import Pathway, pool_time, temporal_difference, time_mask
from neurossm_app.model.scan import Backend
from neurossm_app.model.vocabulary import SIGNALS

__all__ = ["SIGNALS", "ConfigProblem", "NeuroSSM", "NeuroSSMConfig", "config_problems", "pathway_names"]


def pathway_names(signals: Iterable[str], scales: Iterable[int]) -> tuple[str, ...]:
    """``"<signal>_s<scale>"`` for every signal (outer, as given) and scale (inner, as given).

    The default config gives ``("raw_s1", "raw_s2", "raw_s4", "diff_s1", "diff_s2",
    "diff_s4")``.
    """
    scales = tuple(scales)
    return tuple(f"{signal}_s{scale}" for signal in signals for scale in scales)


@dataclasses.dataclass(frozen=True)
class ConfigProblem:
    """One invalid :class:`NeuroSSMConfig` field: ``f"{field} {requirement}"``, and the value."""

    field: str
    requirement: str
    value: Any

    def __str__(self) -> str:
        return f"{self.field} {self.requirement}, got {self.value!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def config_problems(**fields: Any) -> list[ConfigProblem]:
    """Every invalid value among the given :class:`NeuroSSMConfig` fields.

    The one place the architecture is checked: :class:`NeuroSSMConfig` raises them, the group
    level's settings check reports them with its own. Only the fields given are checked, so a
    caller without ``n_rois`` and ``n_classes`` (known from the data only) can check the rest.

    Returns
    -------
    list of ConfigProblem
        In field order; empty when everything given is valid.
    """
    problems = []

    def need(name: str, ok: bool, requirement: str) -> None:
        if name in fields and not ok:
            problems.append(ConfigProblem(name, requirement, fields[name]))

    for name in ("n_rois", "d_model", "n_layers", "d_state", "d_conv", "expand"):
        value = fields.get(name)
        need(name, _is_int(value) and value >= 1, "must be a positive integer")
    n_classes = fields.get("n_classes")
    need("n_classes", _is_int(n_classes) and n_classes >= 2, "must be an integer of at least 2")
    scales = tuple(fields.get("scales") or ())
    need(
        "scales",
        bool(scales) and all(_is_int(x) and x >= 1 for x in scales) and len(set(scales)) == len(scales),
        "must be distinct positive integers",
    )
    signals = tuple(fields.get("signals") or ())
    need(
        "signals",
        bool(signals) and set(signals) <= set(SIGNALS) and len(set(signals)) == len(signals),
        f"must be distinct values from {', '.join(SIGNALS)}",
    )
    dropout = fields.get("dropout")
    need(
        "dropout",
        isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0.0 <= dropout < 1.0,
        "must be in [0, 1)",
    )
    return problems


@dataclasses.dataclass(frozen=True)
class NeuroSSMConfig:
    """The architecture of a :class:`NeuroSSM` (saved as JSON beside its weights).

    The scan back end is not part of it: one checkpoint runs on every back end.

    Parameters
    ----------
    n_rois : int
        R, ROIs of the atlas.
    n_classes : int
    d_model : int
        Width d of every pathway.
    n_layers : int
        Mamba blocks per pathway.
    d_state, d_conv, expand : int
        As :class:`neurossm_app.model.mamba.Mamba`.
    scales : tuple of int
        Temporal pooling factors, distinct and positive.
    signals : tuple of str
        Subset of ``("raw", "diff")``, distinct.
    bidirectional : bool
    dropout : float
        In [0, 1).
    """

    n_rois: int
    n_classes: int
    d_model: int = 128
    n_layers: int = 2
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    scales: tuple[int, ...] = (1, 2, 4)
    signals: tuple[str, ...] = ("raw", "diff")
    bidirectional: bool = True
    dropout: float = 0.1

    def __post_init__(self) -> None:
        # JSON gives lists; keep the frozen config hashable and comparable.
        object.__setattr__(self, "scales", tuple(int(x) if _is_int(x) else x for x in self.scales))
        object.__setattr__(self, "signals", tuple(str(x) if isinstance(x, str) else x for x in self.signals))
        problems = config_problems(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if problems:
            raise ValueError("Invalid NeuroSSM configuration: " + "; ".join(map(str, problems)) + ".")

    @property
    def pathway_names(self) -> tuple[str, ...]:
        """Pathway names in model order; see :func:`pathway_names`."""
        return pathway_names(self.signals, self.scales)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NeuroSSMConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a different model)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"Unknown NeuroSSM configuration keys {unknown}; expected a subset of "
                f"{sorted(known)}. Was this file written by another version of neurossm-app?"
            )
        return cls(**data)


class NeuroSSM(nn.Module):
    """Multiscale differential state-space classifier (see the module docstring).

    Parameters
    ----------
    n_rois, n_classes, d_model, n_layers, d_state, d_conv, expand, scales, signals,
    bidirectional, dropout
        See :class:`NeuroSSMConfig`.
    backend : {"auto", "cpu", "torch", "cuda"}
        Selective-scan back end of every Mamba block; not saved with the weights. Change it
        later with :meth:`set_backend`.

    Attributes
    ----------
    config : NeuroSSMConfig
    pathway_names : tuple of str
        ``"<signal>_s<scale>"``, signals outer and scales inner, in the order given (default
        ``raw_s1, raw_s2, raw_s4, diff_s1, diff_s2, diff_s4``). The order of the
        pathway dict returned by :meth:`forward` and of the fusion weights.
    """

    def __init__(
        self,
        n_rois: int,
        n_classes: int,
        d_model: int = 128,
        n_layers: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scales: Iterable[int] = (1, 2, 4),
        signals: Iterable[str] = ("raw", "diff"),
        bidirectional: bool = True,
        dropout: float = 0.1,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        cfg = NeuroSSMConfig(
            n_rois=n_rois,
            n_classes=n_classes,
            d_model=d_model,
            n_layers=n_layers,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            scales=tuple(scales),
            signals=tuple(signals),
            bidirectional=bidirectional,
            dropout=dropout,
        )
        self.config = cfg
        self.pathway_names = cfg.pathway_names
        self.pathways = nn.ModuleDict(
            (
                name,
                Pathway(
                    cfg.n_rois,
                    cfg.d_model,
                    cfg.n_layers,
                    cfg.d_state,
                    cfg.d_conv,
                    cfg.expand,
                    cfg.bidirectional,
                    cfg.dropout,
                    backend,
                ),
            )
            for name in self.pathway_names
        )
        # Attention pooling over pathways: one learned query against projected keys.
        self.query = nn.Parameter(torch.randn(cfg.d_model) / math.sqrt(cfg.d_model))
        self.key = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        self.set_backend(backend)

    @classmethod
    def from_config(cls, config: NeuroSSMConfig, backend: Backend = "auto") -> NeuroSSM:
        """Build a model (freshly initialised) with the architecture of ``config``."""
        return cls(**dataclasses.asdict(config), backend=backend)

    def set_backend(self, backend: Backend) -> None:
        """Use selective-scan back end ``backend`` in every Mamba block."""
        from neurossm_app.model.mamba import Mamba

        for module in self.modules():
            if isinstance(module, Mamba):
                module.backend = backend
        self.backend = backend

    def pathway_inputs(self, x: Tensor, lengths: Tensor | None = None):
        """The input x_p of every pathway, before its ROI embedding.

        Parameters
        ----------
        x : Tensor, shape (B, R, T)
        lengths : Tensor, shape (B,), long, optional

        Returns
        -------
        dict of str to (Tensor (B, R, T_s), Tensor (B, T_s), Tensor (B,) or None)
            Per pathway name: x_p (zero at padding), its valid-step mask and its valid
            lengths ``ceil(lengths / s)``; ``T_s = ceil(T / s)``.
        """
        batch, _, n_time = x.shape
        mask = time_mask(lengths, batch, n_time, x)
        signals = {"raw": x}
        if "diff" in self.config.signals:
            signals["diff"] = temporal_difference(x)
        out = {}
        for signal in self.config.signals:
            for scale in self.config.scales:
                pooled, pooled_mask = pool_time(signals[signal], mask, scale)
                n = None if lengths is None else -(-lengths // scale)  # ceil
                out[f"{signal}_s{scale}"] = (pooled, pooled_mask, n)
        return out

    def forward(
        self,
        x: Tensor,
        lengths: Tensor | None = None,
        ablate: str | Iterable[str] | None = None,
        return_pathway_inputs: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Class logits.

        Parameters
        ----------
        x : Tensor, shape (B, R, T)
            ROI time series, z-scored per ROI by the caller; padded at the end where
            ``lengths`` says so (the padding values do not matter).
        lengths : Tensor, shape (B,), long, optional
            Valid steps per sample, 1 <= lengths <= T. None: all T.
        ablate : str or iterable of str, optional
            Pathway names whose vector h_p is set to 0 before fusion.
        return_pathway_inputs : bool
            Also return every pathway's input x_p, (B, R, T_s), as a tensor in the graph
            whose gradient can be taken (``torch.autograd.grad(logit, x_p)``, or ``.grad``
            after ``backward()``: x_p retains its gradient).

        Returns
        -------
        logits : Tensor, shape (B, n_classes)
            In the parameters' dtype (float32), also under autocast.
        pathway_inputs : dict of str to Tensor (B, R, T_s)
            Only with ``return_pathway_inputs``, in :attr:`pathway_names` order.
        """
        lengths = self._check_input(x, lengths)
        ablated = self._check_ablate(ablate)
        inputs = self.pathway_inputs(x, lengths)
        exposed = {}
        vectors = []
        for name in self.pathway_names:
            x_p, mask_p, lengths_p = inputs[name]
            if return_pathway_inputs:
                if x_p.requires_grad:
                    x_p.retain_grad()
                else:  # no graph behind it: make it a leaf that records gradients
                    x_p = x_p.detach().requires_grad_()
                exposed[name] = x_p
            h_p = self.pathways[name](x_p, mask_p, lengths_p)  # (B, d)
            vectors.append(torch.zeros_like(h_p) if name in ablated else h_p)
        # The readout is small: it runs in the parameters' dtype (float32), also under autocast.
        with torch.autocast(x.device.type, enabled=False):
            h = torch.stack([v.to(self.head.weight.dtype) for v in vectors], dim=1)  # (B, P, d)
            scores = einsum(self.key(h), self.query, "b p d, d -> b p") / math.sqrt(h.shape[-1])
            weights = torch.softmax(scores, dim=1)  # (B, P)
            fused = einsum(weights, h, "b p, b p d -> b d")
            logits = self.head(self.dropout(self.norm(fused)))  # (B, n_classes)
        return (logits, exposed) if return_pathway_inputs else logits

    def _check_input(self, x: Tensor, lengths: Tensor | None) -> Tensor | None:
        if x.dim() != 3 or x.shape[1] != self.config.n_rois:
            raise ValueError(
                f"NeuroSSM expects x of shape (batch, n_rois={self.config.n_rois}, time); "
                f"got {tuple(x.shape)}."
            )
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths, device=x.device)
        if (
            lengths.shape != (x.shape[0],)
            or lengths.is_floating_point()
            or bool((lengths < 1).any())
            or bool((lengths > x.shape[2]).any())
        ):
            raise ValueError(
                f"lengths must be integers of shape (batch={x.shape[0]},) between 1 and "
                f"T={x.shape[2]}; got {lengths.tolist()}."
            )
        return lengths.long()

    def _check_ablate(self, ablate: str | Iterable[str] | None) -> frozenset[str]:
        if ablate is None:
            return frozenset()
        names = frozenset([ablate] if isinstance(ablate, str) else ablate)
        unknown = sorted(names - set(self.pathway_names))
        if unknown:
            raise ValueError(
                f"Cannot ablate unknown pathway(s) {unknown}; this model has {list(self.pathway_names)}."
            )
        return names
