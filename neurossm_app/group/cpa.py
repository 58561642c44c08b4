"""Calibrated Pathway Attribution (CPA) of one trained NeuroSSM on one scan.

For a scan x (R ROIs x T volumes, normalized as for evaluation) and a target class c with logit
z_c (the scan's *true* class: the question is "where does the model see evidence for what this
scan really is", which is defined for misclassified scans too):

1. Localisation, per pathway p: ``m_p(r) = sum_t |x_p(r, t) * dz_c / dx_p(r, t)|`` on the
   pathway input x_p (R x ceil(T / s) at the pathway's signal and scale), normalised to sum to 1
   over ROIs (gradient x input, absolute value, summed over time).
2. Calibration: ``w_p = max(0, z_c(x) - z_c(x | h_p := 0))``, the drop of the target logit when
   pathway p's vector is set to 0 before fusion; ``w`` normalised to sum to 1 (uniform when every
   drop is <= 0).
3. ``CPA(r) = sum_p w_p m_p(r)``; the dominant pathway of ROI r is ``argmax_p w_p m_p(r)``.

The model runs in eval mode (no dropout) on the full-length series, one scan at a time, without
padding. Everything here is model-only: which scans and checkpoints is
:mod:`neurossm_app.group.analysis`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurossm_app.errors import DataError
from neurossm_app.files import atomic_path

#: Version of the ``_cpa.npz`` layout (saved in every file as ``format``).
CPA_FORMAT = "neurossm-app cpa 1"


@dataclass(frozen=True)
class CPAResult:
    """CPA of one scan.

    Attributes
    ----------
    pathway_maps : numpy.ndarray, (P, R) float64
        ``m_p(r)``: each row sums to 1.
    pathway_names : tuple of str, length P
        The model's pathway order.
    weights : numpy.ndarray, (P,) float64
        Calibration weights ``w_p`` (sum to 1).
    logit_drops : numpy.ndarray, (P,) float64
        ``z_c(x) - z_c(x | h_p := 0)`` before clipping at 0.
    target_logit : float
        ``z_c(x)``.
    logits : numpy.ndarray, (C,) float64
        Every class logit of the scan (the prediction is their argmax).
    """

    pathway_maps: np.ndarray
    pathway_names: tuple[str, ...]
    weights: np.ndarray
    logit_drops: np.ndarray
    target_logit: float
    logits: np.ndarray

    @property
    def weighted_maps(self) -> np.ndarray:
        """``w_p m_p(r)``, (P, R): the pathway contributions whose sum over p is the CPA."""
        return self.weights[:, None] * self.pathway_maps

    @property
    def cpa(self) -> np.ndarray:
        """``CPA(r)``, (R,), sums to 1."""
        return self.weighted_maps.sum(axis=0)

    @property
    def dominant(self) -> np.ndarray:
        """Index into :attr:`pathway_names` of the largest ``w_p m_p(r)`` per ROI, (R,) int64."""
        return self.weighted_maps.argmax(axis=0).astype(np.int64)

    @property
    def predicted(self) -> int:
        """Index of the predicted class."""
        return int(np.argmax(self.logits))


def normalise_to_sum_one(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Divide non-negative ``values`` by their sum along ``axis``; all-zero slices become uniform."""
    values = np.asarray(values, dtype=np.float64)
    total = values.sum(axis=axis, keepdims=True)
    uniform = np.full_like(values, 1.0 / values.shape[axis])
    return np.where(total > 0, values / np.where(total > 0, total, 1.0), uniform)


def localisation_maps(
    model: nn.Module, x: torch.Tensor, target: int
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Gradient-times-input maps ``m_p`` of every pathway.

    Parameters
    ----------
    model : NeuroSSM
        In eval mode; ``model(x, return_pathway_inputs=True)`` gives ``(logits, {name: x_p})``.
    x : torch.Tensor, (1, R, T)
        One normalized scan on the model's device.
    target : int
        Class index c.

    Returns
    -------
    maps : numpy.ndarray, (P, R)
        ``m_p``, rows summing to 1 (uniform where a pathway's gradient is exactly 0).
    names : tuple of str
        Pathway names, the row order.
    logits : numpy.ndarray, (C,)
    """
    with torch.enable_grad():
        logits, inputs = model(x, return_pathway_inputs=True)
        names = tuple(inputs)
        grads = torch.autograd.grad(logits[0, target], [inputs[n] for n in names], allow_unused=True)
    rows = []
    for name, grad in zip(names, grads, strict=True):
        x_p = inputs[name].detach()  # (1, R, T_s)
        if grad is None:  # the pathway does not reach the logit (cannot happen in NeuroSSM)
            grad = torch.zeros_like(x_p)
        rows.append((x_p * grad).abs().sum(dim=-1)[0].double().cpu().numpy())  # (R,)
    maps = normalise_to_sum_one(np.stack(rows), axis=1)
    return maps, names, logits.detach()[0].double().cpu().numpy()


@torch.no_grad()
def logit_drops(model: nn.Module, x: torch.Tensor, target: int, names: tuple[str, ...], logit: float):
    """``z_c(x) - z_c(x | h_p := 0)`` for every pathway p in ``names``, (P,) float64."""
    drops = [logit - float(model(x, ablate=name)[0, target]) for name in names]
    return np.asarray(drops, dtype=np.float64)


def compute_cpa(model: nn.Module, series: np.ndarray, target: int, device: torch.device | str = "cpu"):
    """CPA of one scan.

    Parameters
    ----------
    model : NeuroSSM
        Trained; put in eval mode here.
    series : numpy.ndarray, (R, T)
        The scan, normalized exactly as for evaluation (:func:`neurossm_app.group.data.normalize_series`).
    target : int
        Class index c whose logit is explained (the true class in the group analysis).
    device : torch.device or str

    Returns
    -------
    CPAResult
    """
    model.eval()
    # a copy: a scan of the series cache is a read-only view of its memory map
    x = torch.as_tensor(np.array(series, dtype=np.float32), device=device)[None]  # (1, R, T)
    n_classes = int(model.config.n_classes)
    if not 0 <= target < n_classes:
        raise ValueError(f"target class {target} is outside the model's {n_classes} classes")
    maps, names, logits = localisation_maps(model, x, target)
    # The gradient pass and the ablation passes run the same eval-mode network: z_c agrees.
    drops = logit_drops(model, x, target, names, float(logits[target]))
    weights = normalise_to_sum_one(np.maximum(drops, 0.0))
    return CPAResult(maps, names, weights, drops, float(logits[target]), logits)


def save_cpa(path: Path, result: CPAResult, **metadata: Any) -> Path:
    """Write one scan's CPA to ``path`` (``.npz``, plain arrays only: no pickled objects).

    Arrays: ``pathway_maps`` (P, R), ``weighted_maps`` (P, R), ``pathway_names`` (P,) str,
    ``weights`` (P,), ``logit_drops`` (P,), ``cpa`` (R,), ``dominant_pathway`` (R,) int
    (index into ``pathway_names``), ``dominant_pathway_name`` (R,) str, ``logits`` (C,),
    ``target_logit`` (), ``format`` () str; ``metadata`` values become 0-d or 1-d arrays
    (strings as unicode arrays), e.g. ``true_label``, ``predicted_label``, ``fold``, ``seed``.
    """
    names = np.array(result.pathway_names, dtype=str)
    arrays: dict[str, np.ndarray] = {
        "format": np.array(CPA_FORMAT),
        "pathway_maps": result.pathway_maps,
        "weighted_maps": result.weighted_maps,
        "pathway_names": names,
        "weights": result.weights,
        "logit_drops": result.logit_drops,
        "cpa": result.cpa,
        "dominant_pathway": result.dominant,
        "dominant_pathway_name": names[result.dominant],
        "logits": result.logits,
        "target_logit": np.array(result.target_logit),
    }
    for key, value in metadata.items():
        array = np.asarray(value)
        if array.dtype == object:
            array = array.astype(str)
        arrays[key] = array
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_cpa(path: Path) -> dict[str, np.ndarray]:
    """Read a ``_cpa.npz`` written by :func:`save_cpa` (``allow_pickle=False``).

    Raises
    ------
    DataError
        Unreadable file or another format.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as err:
        raise DataError(
            f"{path} is not a readable CPA file ({err}); delete it and re-run --analysis."
        ) from None
    if str(arrays.get("format")) != CPA_FORMAT:
        raise DataError(f"{path} is not a {CPA_FORMAT!r} file; delete it and re-run --analysis.")
    return arrays
