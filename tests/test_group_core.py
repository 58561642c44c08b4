"""Group-level building blocks: presets, missing values, folds, metrics, baseline, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neurossm_app.errors import DataError, UsageError
from neurossm_app.group.baseline import connectivity_features, fit_predict_fc_logreg
from neurossm_app.group.checkpoints import load_checkpoint, load_neurossm, save_checkpoint
from neurossm_app.group.data import check_lengths, find_timeseries, load_dataset, normalize_series
from neurossm_app.group.evaluate import classification_metrics, predict_proba
from neurossm_app.group.presets import load_presets, resolve_settings
from neurossm_app.group.splits import TRAIN_ONLY, assign_test_folds, check_fold_counts
from neurossm_app.group.train import random_windows, weight_decay_groups
from tests.test_group_fakedata import write_participant_outputs


@pytest.mark.parametrize(
    ("preset", "atlas", "target", "window"),
    [
        ("hcp-rest", "schaefer400", "participants:sex", 600),
        ("hcp-task", "schaefer400", "task", 150),
        ("ppmi", "aal3v2", "participants:group", 100),
    ],
)
def test_presets_follow_the_study(preset, atlas, target, window):
    settings = resolve_settings(preset, {})
    assert (settings.atlas, settings.target, settings.dynamic_length) == (atlas, target, window)
    assert settings.run_name == preset
    assert (settings.d_model, settings.n_layers, settings.d_state) == (128, 2, 16)
    assert settings.scales == (1, 2, 4) and settings.signals == ("raw", "diff") and settings.bidirectional


def test_overrides_win_and_none_keeps_the_preset():
    settings = resolve_settings("ppmi", {"epochs": 3, "seeds": [4, 5], "lr": None, "baselines": ["none"]})
    assert settings.epochs == 3 and settings.seeds == (4, 5)
    assert settings.lr == load_presets()["ppmi"]["lr"]
    assert settings.baselines == ()
    assert settings.units == [(f, s) for s in (4, 5) for f in range(5)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"run_name": "../escape"}, "--run-name"),
        ({"run_name": "a b"}, "--run-name"),
        ({"target": "sex"}, "--target"),
        ({"folds": 1}, "--folds"),
        ({"seeds": [1, 1]}, "duplicates"),
        ({"test_size": 1.5}, "--test-size"),
    ],
)
def test_bad_settings_are_usage_errors(overrides, message):
    with pytest.raises(UsageError, match=message):
        resolve_settings("hcp-rest", overrides)


def test_normalize_series_handles_missing_rois_and_censored_volumes():
    rng = np.random.default_rng(0)
    series = rng.normal(5.0, 3.0, size=(7, 31))  # (R, T)
    series[6] = 1.0  # a constant ROI
    series[2] = np.nan  # ROI below coverage
    series[:, [4, 9]] = np.nan  # censored volumes
    series[5, 11] = np.nan  # one stray value
    normalized, missing = normalize_series(series)
    assert normalized.shape == (7, 31) and normalized.dtype == np.float32
    assert np.isfinite(normalized).all()
    assert (missing.missing_rois, missing.censored_volumes) == (1, 2)
    assert missing.missing_values == 31 + 2 * 6 + 1
    assert np.all(normalized[2] == 0) and np.all(normalized[:, [4, 9]] == 0) and np.all(normalized[6] == 0)
    kept = np.isfinite(series[0])
    assert normalized[0, kept].mean() == pytest.approx(0, abs=1e-6)
    assert normalized[0, kept].std() == pytest.approx(1, abs=1e-5)


def test_dataset_from_participant_outputs(tmp_path):
    bids, out = write_participant_outputs(tmp_path, n_subjects=9, n_rois=6, n_volumes=40, sessions=("1", "2"))
    # An incomplete run (no sidecar) is skipped.
    next(out.glob("sub-03/ses-2/func/*_timeseries.json")).unlink()
    scans = find_timeseries(out, "Schaefer400n17")
    assert len(scans) == 17
    assert scans[0].name == "sub-01_ses-1_task-rest"
    dataset = load_dataset(scans, "participants:sex", bids / "participants.tsv", "Schaefer400n17")
    assert dataset.classes == ("F", "M")
    assert [x.shape for x in dataset.series[:2]] == [(6, 40), (6, 40)]
    summary = dataset.summary()
    assert summary["n_subjects"] == 9 and summary["n_scans"] == 17
    assert summary["missing_values"]["missing_roi_columns"] == 4  # sub-02 and sub-06, two sessions each
    assert summary["missing_values"]["censored_volumes"] == 3 * 3  # sub-03 (one session left), sub-08 x2
    with pytest.raises(DataError, match="--dynamic-length 40 or less"):
        check_lengths(dataset, 41)


@pytest.mark.parametrize(
    "filters",
    [
        {"acquisition": ["mb8"]},  # an entity beyond run, as a list
        {"acquisition": None, "session": "2"},  # null: the entity is absent
        {"run": "01", "session": ["1", "2"]},  # run 1 spelt with padding
        {"acquisition": "mb8", "run": [2]},
    ],
)
def test_filters_select_as_pybids_does(tmp_path, filters):
    """``--bids-filter-file``'s ``bold`` entry selects at the group level what pybids selects."""
    from bids import BIDSLayout

    from neurossm_app.bids import build_path, pybids_config

    _, out = write_participant_outputs(
        tmp_path, n_subjects=3, n_rois=5, n_volumes=20, runs=2, sessions=("1", "2")
    )
    for source in sorted(out.glob("sub-0[13]/ses-2/func/*_stat-mean_timeseries.tsv")):
        entities = {
            "subject": source.name[4:6], "session": "2", "task": "rest", "acquisition": "mb8",
            "run": source.name.split("_run-")[1][0], "space": "MNI152NLin2009cAsym",
            "atlas": "Schaefer400n17", "stat": "mean",
        }  # fmt: skip
        target = build_path(out, entities, "timeseries", ".tsv")
        target.write_bytes(source.read_bytes())
        target.with_suffix(".json").write_bytes(source.with_suffix(".json").read_bytes())
    reference = BIDSLayout(out, validate=False, config=pybids_config(), is_derivative=True)
    expected = sorted(
        Path(f.path) for f in reference.get(suffix="timeseries", extension=".tsv", stat="mean", **filters)
    )
    assert 0 < len(expected) < 16, "the filter should select some runs and leave others"
    assert [s.path for s in find_timeseries(out, "Schaefer400n17", run_filters=filters)] == expected
    # the command-line labels narrow the same query further
    scans = find_timeseries(out, "Schaefer400n17", participant_labels=["01"], run_filters=filters)
    assert [s.path for s in scans] == [p for p in expected if p.name.startswith("sub-01_")]


def test_folds_keep_subjects_together_and_are_stratified():
    rng = np.random.default_rng(1)
    subjects = [f"{s:02d}" for s in range(23) for _ in range(3)]  # 3 runs each
    subject_label = rng.integers(0, 2, size=23)
    labels = np.repeat(subject_label, 3)
    folds = assign_test_folds(labels, subjects, seed=3, n_folds=4)
    assert set(folds) == {0, 1, 2, 3}
    for subject in set(subjects):
        assert len({f for f, s in zip(folds, subjects, strict=True) if s == subject}) == 1
    for fold in range(4):
        assert set(labels[folds == fold]) == {0, 1}
    assert np.array_equal(folds, assign_test_folds(labels, subjects, seed=3, n_folds=4))
    assert not np.array_equal(folds, assign_test_folds(labels, subjects, seed=4, n_folds=4))
    holdout = assign_test_folds(labels, subjects, seed=3, n_folds=4, holdout=True, test_size=0.25)
    assert set(holdout) == {0, TRAIN_ONLY}
    assert len(set(np.asarray(subjects)[holdout == 0])) == 6


def test_too_few_subjects_for_the_folds():
    labels = np.array([0, 0, 1, 1, 1])
    with pytest.raises(UsageError, match="lower --folds"):
        check_fold_counts(labels, ["1", "2", "3", "4", "5"], ("F", "M"), 3, holdout=False)
    with pytest.raises(UsageError, match="only 5 subject"):
        check_fold_counts(labels, ["1", "2", "3", "4", "5"], ("F", "M"), 6, holdout=False)


def test_metrics_binary_and_multiclass():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    result = classification_metrics(y, proba)
    assert result["accuracy"] == 0.75 and result["balanced_accuracy"] == 0.75 and result["roc_auc"] == 1.0
    y3 = np.array([0, 1, 2, 2, 1])
    proba3 = np.eye(3)[[0, 1, 2, 1, 1]] * 0.7 + 0.1
    result3 = classification_metrics(y3, proba3)
    assert result3["accuracy"] == pytest.approx(0.8) and 0 < result3["roc_auc"] <= 1
    assert np.isnan(classification_metrics(np.array([0, 0]), proba[:2])["roc_auc"])


def test_random_windows_shape_and_range():
    rng = np.random.default_rng(0)
    series = [np.arange(3 * t, dtype=np.float32).reshape(3, t) for t in (10, 17, 12)]
    windows = random_windows(series, 8, rng)
    assert windows.shape == (3, 3, 8)
    for window, full in zip(windows, series, strict=True):
        start = int(window[0, 0])
        assert np.array_equal(window, full[:, start : start + 8])


def _determinism() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.mark.parametrize("caller", [(False, False), (True, False)])
def test_deterministic_training_is_scoped_to_the_block(caller):
    """A unit's deterministic kernels do not outlive it: the caller's setting comes back."""
    from neurossm_app.group.train import deterministic_algorithms, reproducible

    outside = _determinism()
    try:
        torch.use_deterministic_algorithms(caller[0], warn_only=caller[1])
        with reproducible(7):
            assert _determinism() == (True, True)
            first = torch.rand(3)
        assert _determinism() == caller
        with reproducible(7):
            assert torch.equal(torch.rand(3), first)
        with pytest.raises(ZeroDivisionError), deterministic_algorithms():
            _ = 1 / 0  # a failing unit restores the setting too
        assert _determinism() == caller
    finally:
        torch.use_deterministic_algorithms(outside[0], warn_only=outside[1])


def test_weight_decay_spares_biases_norms_and_mamba_state_parameters():
    from neurossm_app.model import NeuroSSM

    model = NeuroSSM(n_rois=7, n_classes=3, d_model=8, n_layers=1, d_state=4, scales=(1,))
    decayed, exempt = weight_decay_groups(model, 0.3)
    assert decayed["weight_decay"] == 0.3 and exempt["weight_decay"] == 0.0
    name_of = {id(p): name for name, p in model.named_parameters()}
    decayed_names = {name_of[id(p)] for p in decayed["params"]}
    exempt_names = {name_of[id(p)] for p in exempt["params"]}
    assert len(decayed_names) + len(exempt_names) == len(name_of)  # every parameter, once
    assert any(n.endswith("A_log") for n in exempt_names) and any(n.endswith(".D") for n in exempt_names)
    assert not any(n.endswith(("A_log", ".D", "bias")) for n in decayed_names)
    assert any(n.endswith("embed.weight") for n in decayed_names)
    assert all(model.get_parameter(n).ndim >= 2 for n in decayed_names)
    # an AdamW step with these groups leaves A_log where the gradient alone puts it
    optimizer = torch.optim.AdamW([decayed, exempt], lr=0.1)
    a_log = next(p for n, p in model.named_parameters() if n.endswith("A_log"))
    before = a_log.detach().clone()
    a_log.grad = torch.zeros_like(a_log)
    optimizer.step()
    assert torch.equal(a_log.detach(), before)


def test_connectivity_baseline_separates_correlated_rois():
    rng = np.random.default_rng(2)
    series, labels = [], []
    for i in range(24):
        x = rng.standard_normal((5, 60))
        if i % 2:
            x[1] = x[0] + 0.3 * rng.standard_normal(60)
        x[:, 7] = 0.0  # a censored volume
        series.append(x.astype(np.float32))
        labels.append(i % 2)
    features = connectivity_features(series[:2])
    assert features.shape == (2, 10) and np.isfinite(features).all()
    labels = np.array(labels)
    proba = fit_predict_fc_logreg(series[:16], labels[:16], series[16:], n_classes=3, seed=0)
    assert proba.shape == (8, 3) and np.all(proba[:, 2] == 0)
    assert (proba.argmax(1) == labels[16:]).mean() == 1.0


def _tiny_model():
    from neurossm_app.group.models import build_neurossm

    torch.manual_seed(0)
    config = {"n_rois": 5, "n_classes": 3, "d_model": 8, "n_layers": 1, "d_state": 4, "scales": [1, 2]}
    return build_neurossm(config)


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    model, config = _tiny_model()
    path = tmp_path / "checkpoints" / "model-neurossm_fold-0_seed-0.safetensors"
    save_checkpoint(path, model, {"config": config, "classes": ["a", "b", "c"], "roi_names": list("vwxyz")})
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["config"]["d_model"] == 8 and info["classes"] == ["a", "b", "c"]
    state, _ = load_checkpoint(path)
    assert set(state) == set(model.state_dict())
    loaded, _ = load_neurossm(path)
    series = [np.random.default_rng(0).standard_normal((5, t)).astype(np.float32) for t in (20, 13, 17)]
    expected = predict_proba(model, series, torch.device("cpu"), batch_size=2)
    assert np.allclose(predict_proba(loaded, series, torch.device("cpu"), batch_size=3), expected, atol=1e-6)
    # Padding with lengths gives the same answer as one scan at a time.
    alone = np.concatenate([predict_proba(model, [x], torch.device("cpu"), 1) for x in series])
    assert np.allclose(alone, expected, atol=1e-5)

    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged"):
        load_checkpoint(path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="damaged"):
        load_neurossm(path)


def test_group_level_never_imports_nipype():
    import subprocess
    import sys

    code = (
        "import sys, neurossm_app.cli.group, neurossm_app.group.run, neurossm_app.group.checkpoints; "
        "sys.exit(any(m.split('.')[0] == 'nipype' for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
