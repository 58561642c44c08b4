"""CPA's localisation and calibration against an independent computation on a tiny model.

:func:`neurossm_app.group.cpa.compute_cpa` takes the gradient of the target logit with respect to
each pathway input through ``model(x, return_pathway_inputs=True)``. Here the same quantities
come from somewhere else: the pathway inputs are rebuilt by hand (first difference, mean pooling
with a ragged last window), the network is run from them pathway by pathway with the fusion
written out, all in float64, and each partial derivative is a central finite difference. A wrong
pathway-input gradient (the wrong tensor retaining its gradient, pathways sharing a leaf, maps
paired with the wrong names) changes ``m_p`` and fails here.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from neurossm_app.group.cpa import compute_cpa
from neurossm_app.model import NeuroSSM

N_ROIS, N_TIME, TARGET = 5, 13, 1  # 13 volumes: the scale-2 pathways end on a one-volume window


def pathway_inputs_by_hand(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """x_p of every pathway of a (signals raw, diff) x (scales 1, 2) model, for x of (R, T)."""
    diff = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)
    out = {}
    for signal, series in (("raw", x), ("diff", diff)):
        out[f"{signal}_s1"] = series[None]
        windows = [series[:, t : t + 2].mean(dim=1) for t in range(0, series.shape[1], 2)]
        out[f"{signal}_s2"] = torch.stack(windows, dim=1)[None]  # (1, R, ceil(T / 2))
    return out


def pathway_vectors(model: NeuroSSM, name: str, x_p: torch.Tensor) -> torch.Tensor:
    """h_p of a batch of unpadded scans, (n, d)."""
    return model.pathways[name](x_p, torch.ones(x_p.shape[0], x_p.shape[-1], dtype=x_p.dtype), None)


def fused_logits(model: NeuroSSM, h: torch.Tensor, target: int) -> torch.Tensor:
    """Attention pooling over the pathway vectors h (n, P, d), LayerNorm and classifier,
    written out: the target logit of each of the n, (n,)."""
    scores = (h @ model.key.weight.T + model.key.bias) @ model.query / math.sqrt(h.shape[-1])  # (n, P)
    fused = (torch.softmax(scores, dim=1)[..., None] * h).sum(dim=1)  # (n, d)
    return model.head(model.norm(fused))[:, target]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(4)
    model = NeuroSSM(N_ROIS, 3, d_model=4, n_layers=1, d_state=2, d_conv=2, scales=(1, 2), dropout=0.0)
    with torch.no_grad():  # away from the symmetric initialisation
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "D", "conv1d.bias")):
                p.add_(0.4 * torch.randn_like(p))
    series = np.random.default_rng(2).standard_normal((N_ROIS, N_TIME)).astype(np.float32)
    return model.eval(), series


@torch.no_grad()
def independent_cpa(model: NeuroSSM, series: np.ndarray, target: int, eps: float = 1e-5):
    """Maps m_p (P, R) by central finite differences and logit drops (P,), in float64.

    Every perturbed copy of a pathway input (+eps and -eps at each entry) runs as one batch
    through that pathway; the other pathways' vectors stay as they are.
    """
    model = copy.deepcopy(model).double().eval()
    model.set_backend("torch")
    inputs = pathway_inputs_by_hand(torch.from_numpy(series).double())
    names = tuple(inputs)
    vectors = torch.cat([pathway_vectors(model, name, x_p) for name, x_p in inputs.items()])  # (P, d)
    logit = float(fused_logits(model, vectors[None], target)[0])
    assert logit == pytest.approx(float(model(torch.from_numpy(series).double()[None])[0, target]), abs=1e-12)
    maps, drops = [], []
    for p, (name, x_p) in enumerate(inputs.items()):
        n = x_p.numel()
        steps = torch.eye(n, dtype=x_p.dtype).reshape(n, *x_p.shape[1:]) * eps  # (n, R, T_s)
        bumped = torch.cat([x_p + steps, x_p - steps])  # (2n, R, T_s)
        h = vectors.expand(2 * n, *vectors.shape).clone()  # (2n, P, d)
        h[:, p] = pathway_vectors(model, name, bumped)
        up, down = fused_logits(model, h, target).split(n)
        grad = ((up - down) / (2 * eps)).reshape(x_p.shape)
        m = (x_p * grad).abs().sum(dim=-1)[0]  # (R,)
        maps.append((m / m.sum()).numpy())
        ablated = vectors.clone()
        ablated[p] = 0
        drops.append(logit - float(fused_logits(model, ablated[None], target)[0]))
    return names, np.stack(maps), np.array(drops), logit


@pytest.fixture(scope="module")
def reference(tiny):
    model, series = tiny
    return independent_cpa(model, series, TARGET)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_localisation_and_calibration_match_finite_differences(tiny, reference, backend):
    model, series = tiny
    model.set_backend(backend)
    result = compute_cpa(model, series, TARGET)
    names, maps, drops, logit = reference
    assert result.pathway_names == names
    assert result.target_logit == pytest.approx(logit, abs=1e-5)
    # float32 gradients against float64 finite differences: the maps (about 0.2 each) agree to
    # float32 round-off; a wrong gradient is off by far more.
    np.testing.assert_allclose(result.pathway_maps, maps, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.logit_drops, drops, rtol=1e-4, atol=1e-6)
    assert not np.allclose(maps[0], maps[2], atol=1e-3)  # raw and diff maps differ: a real check


def test_finite_differences_would_catch_a_swapped_gradient(tiny, reference):
    """The comparison above is sensitive: pairing each pathway's input with another's
    gradient (here: the scale-1 pathways swapped) changes the maps well beyond its tolerance."""
    model, series = tiny
    model.set_backend("torch")
    _, maps, _, _ = reference
    x = torch.from_numpy(series)[None]
    with torch.enable_grad():
        logits, inputs = model(x, return_pathway_inputs=True)
        grads = dict(zip(inputs, torch.autograd.grad(logits[0, TARGET], list(inputs.values())), strict=True))
    swapped = (inputs["raw_s1"] * grads["diff_s1"]).abs().sum(-1)[0].detach().numpy()
    assert np.abs(swapped / swapped.sum() - maps[0]).max() > 1e-2
