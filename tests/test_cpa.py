"""Calibrated Pathway Attribution on a tiny NeuroSSM trained on in-memory planted data.

Class 0 carries a slow oscillation in ROIs 1, 14, 26, class 1 sparse steps in ROIs 5, 20, 33,
class 2 nothing (white noise everywhere). ROIs (37) != volumes (96) != scans so axis mix-ups fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurossm_app.group.cpa import CPAResult, compute_cpa, load_cpa, normalise_to_sum_one, save_cpa
from neurossm_app.group.data import normalize_series
from neurossm_app.group.maps import top_mask
from neurossm_app.group.train import TrainSettings, seed_everything, train_model
from neurossm_app.model import NeuroSSM

N_ROIS, N_VOLUMES = 37, 96
SLOW_ROIS, STEP_ROIS = (1, 14, 26), (5, 20, 33)


def planted_scan(label: int, rng: np.random.Generator) -> np.ndarray:
    """One normalized (R, T) scan of class ``label``."""
    x = rng.standard_normal((N_ROIS, N_VOLUMES))
    t = np.arange(N_VOLUMES)
    if label == 0:
        wave = np.sin(2 * np.pi * 0.05 * t + rng.uniform(0, 2 * np.pi))
        x[list(SLOW_ROIS)] += 2.0 * wave
    elif label == 1:
        steps = np.zeros(N_VOLUMES)
        for start in rng.choice(np.arange(4, N_VOLUMES - 10), size=4, replace=False):
            steps[start : start + 4] = 3.0
        x[list(STEP_ROIS)] += steps
    return normalize_series(x)[0]


@pytest.fixture(scope="module")
def trained():
    """A tiny NeuroSSM (d 16, one layer, scales 1 and 2) and held-out planted scans."""
    rng = np.random.default_rng(7)
    labels = np.array([0, 1, 2] * 12)
    series = [planted_scan(int(y), rng) for y in labels]
    seed_everything(3)
    model = NeuroSSM(N_ROIS, 3, d_model=16, n_layers=1, d_state=8, scales=(1, 2), dropout=0.0, backend="auto")
    settings = TrainSettings(window=64, epochs=30, batch_size=8, lr=1e-2, weight_decay=0.5)
    train_model(model, series, labels, 3, settings, seed=1, device=torch.device("cpu"))
    test_labels = np.array([0, 1, 2] * 4)
    test = [planted_scan(int(y), rng) for y in test_labels]
    return model.eval(), test, test_labels


def test_result_arrays_follow_the_definition(trained):
    model, test, labels = trained
    result = compute_cpa(model, test[0], int(labels[0]))
    n_pathways = len(model.pathway_names)
    assert result.pathway_names == model.pathway_names == ("raw_s1", "raw_s2", "diff_s1", "diff_s2")
    assert result.pathway_maps.shape == (n_pathways, N_ROIS)
    np.testing.assert_allclose(result.pathway_maps.sum(axis=1), 1.0)
    assert (result.pathway_maps >= 0).all()
    np.testing.assert_allclose(result.weights.sum(), 1.0)
    assert result.cpa.shape == (N_ROIS,) and result.cpa.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(result.cpa, (result.weights[:, None] * result.pathway_maps).sum(0))
    assert result.dominant.shape == (N_ROIS,) and result.dominant.max() < n_pathways
    # w is the clipped, normalised logit drop of the ablated pathway.
    with torch.no_grad():
        x = torch.from_numpy(test[0])[None]
        z = float(model(x)[0, labels[0]])
        drop = z - float(model(x, ablate="diff_s1")[0, labels[0]])
    assert result.target_logit == pytest.approx(z, abs=1e-5)
    assert result.logit_drops[2] == pytest.approx(drop, abs=1e-5)
    clipped = np.maximum(result.logit_drops, 0)
    if clipped.sum() > 0:
        np.testing.assert_allclose(result.weights, clipped / clipped.sum())


def test_localisation_is_gradient_times_pathway_input(trained):
    model, test, labels = trained
    result = compute_cpa(model, test[3], int(labels[3]))
    x = torch.from_numpy(test[3])[None]
    logits, inputs = model(x, return_pathway_inputs=True)
    logits[0, labels[3]].backward()
    raw = (inputs["raw_s2"] * inputs["raw_s2"].grad).abs().sum(-1)[0].detach().numpy()
    np.testing.assert_allclose(result.pathway_maps[1], raw / raw.sum(), rtol=1e-5, atol=1e-8)


def test_cpa_ranks_planted_rois_high(trained):
    model, test, labels = trained
    results = [compute_cpa(model, x, int(y)) for x, y in zip(test, labels, strict=True)]
    assert np.mean([r.predicted == y for r, y in zip(results, labels, strict=True)]) >= 0.9
    unplanted = [r for r in range(N_ROIS) if r not in SLOW_ROIS + STEP_ROIS]
    for label, planted in ((0, SLOW_ROIS), (1, STEP_ROIS)):
        mean = np.mean([r.cpa for r, y in zip(results, labels, strict=True) if y == label], axis=0)
        top = set(np.flatnonzero(top_mask(mean)))
        # A tiny model also uses the absence of the other class's effect: most, not all, planted
        # ROIs of a class reach its top quarter; the end-to-end test asks for 80% on real-size data.
        assert len(set(planted) & top) >= 2, (label, sorted(top))
        assert mean[list(planted)].mean() > 1.3 * mean[unplanted].mean()


def test_uniform_weights_when_no_pathway_helps():
    np.testing.assert_allclose(normalise_to_sum_one(np.zeros(4)), 0.25)
    np.testing.assert_allclose(
        normalise_to_sum_one(np.array([[0.0, 2.0], [0.0, 0.0]]), axis=1), [[0, 1], [0.5, 0.5]]
    )


def test_npz_roundtrip_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    maps = normalise_to_sum_one(rng.random((3, 5)), axis=1)
    result = CPAResult(maps, ("raw_s1", "raw_s2", "diff_s1"), np.array([0.5, 0.5, 0.0]),
                       np.array([1.0, 1.0, -0.2]), 2.0, np.array([2.0, -1.0]))  # fmt: skip
    path = save_cpa(tmp_path / "sub-01_task-rest_cpa.npz", result, true_label="F", predicted_label="F",
                    fold=0, seed=2, roi_names=["a", "b", "c", "d", "e"])  # fmt: skip
    arrays = load_cpa(path)
    assert str(arrays["true_label"]) == "F" and int(arrays["fold"]) == 0 and int(arrays["seed"]) == 2
    assert arrays["pathway_names"].dtype.kind == "U" and arrays["roi_names"].shape == (5,)
    np.testing.assert_allclose(arrays["cpa"], result.cpa)
    assert list(arrays["dominant_pathway_name"]) == [result.pathway_names[i] for i in result.dominant]
    with np.load(path, allow_pickle=False) as data:
        assert all(data[key].dtype != object for key in data.files)
