"""``neurossm-app BIDS_DIR OUTPUT_DIR group`` through the real CLI, on participant-style outputs.

Small models (d_model 16, one layer, two scales) and short series keep the whole module well
under a minute on two CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from neurossm_app.cli import main
from neurossm_app.files import read_tsv
from neurossm_app.group.checkpoints import load_neurossm
from neurossm_app.group.evaluate import predict_proba
from tests.test_group_fakedata import write_participant_outputs

SMALL = [
    "--dynamic-length", "64", "--epochs", "20", "--batch-size", "4", "--lr", "5e-3",
    "--d-model", "16", "--n-layers", "1", "--d-state", "8", "--scales", "1", "2",
    "--folds", "3", "--seeds", "0", "--omp-nthreads", "1",
    # the training settings these tests were measured with (issue 24 changed the defaults)
    "--weight-decay", "0.01", "--augment", "none", "--inner-val", "0", "--baselines", "fc-logreg",
]  # fmt: skip


@pytest.fixture(scope="module")
def sex_data(tmp_path_factory):
    """24 subjects (12 F with a planted oscillation in 3 of 11 ROIs), 90 volumes each."""
    return write_participant_outputs(
        tmp_path_factory.mktemp("sex"), n_subjects=24, n_volumes=90, effect_size=1.5, seed=5
    )


@pytest.fixture(scope="module")
def sex_run(sex_data):
    bids, out = sex_data
    determinism = torch.are_deterministic_algorithms_enabled()
    assert main([str(bids), str(out), "group", *SMALL]) == 0
    # training asked for deterministic kernels only while it ran: the process is as it was
    assert torch.are_deterministic_algorithms_enabled() == determinism
    return out / "group" / "hcp-rest"


def test_planted_sex_effect_is_learned(sex_run):
    metrics = read_tsv(sex_run / "metrics.tsv")
    assert list(metrics.columns) == [
        "model", "fold", "seed", "n_train_scans", "n_test_scans", "n_test_subjects",
        "accuracy", "balanced_accuracy", "f1_macro", "roc_auc",
    ]  # fmt: skip
    assert list(metrics["model"]) == ["neurossm"] * 3 + ["fc-logreg"] * 3
    assert metrics["n_test_scans"].sum() == 2 * 24
    neurossm = metrics[metrics["model"] == "neurossm"]
    assert neurossm["accuracy"].mean() >= 0.9
    summary = json.loads((sex_run / "summary.json").read_text())
    assert summary["models"]["neurossm"]["accuracy"]["mean"] == pytest.approx(neurossm["accuracy"].mean())
    assert set(summary["models"]) == {"neurossm", "fc-logreg"}
    assert summary["units"] == {"expected": 3, "complete": 3, "missing": []}
    dataset = summary["dataset"]
    assert dataset["n_subjects"] == 24 and dataset["n_rois"] == 11 and list(dataset["classes"]) == ["F", "M"]
    assert dataset["missing_values"]["missing_roi_columns"] == 6
    assert dataset["missing_values"]["censored_volumes"] == 5 * 3


def test_outputs_are_complete_and_consistent(sex_run, sex_data):
    config = json.loads((sex_run / "config.json").read_text())
    assert config["settings"]["epochs"] == 20 and config["settings"]["target"] == "participants:sex"
    assert config["settings"]["scales"] == [1, 2] and "torch" in config["software"]
    predictions = pd.read_csv(sex_run / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(predictions.columns) == [
        "scan", "subject", "session", "task", "acquisition", "run", "fold", "seed", "model",
        "true_label", "predicted_label", "prob_F", "prob_M", "repetition_time",
    ]  # fmt: skip
    assert len(predictions) == 2 * 24 and predictions["subject"].iloc[0].startswith("0")
    assert set(predictions["repetition_time"]) == {"0.72"}
    splits = read_tsv(sex_run / "splits.tsv")
    assert list(splits.columns)[-1] == "repetition_time" and set(splits["repetition_time"]) == {0.72}
    assert splits.groupby("subject")["test_fold"].nunique().max() == 1
    history = read_tsv(sex_run / "units" / "fold-0_seed-0" / "history.tsv")
    assert list(history.columns[:8]) == [
        "epoch", "candidate", "peak_lr", "weight_decay", "loss", "train_accuracy", "lr", "val_loss",
    ] and len(history) == 20  # fmt: skip
    assert history["selected"].tolist() == [0] * 19 + [1]  # no inner split: the last epoch is kept
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert list((sex_run / "logs").glob("*.log"))

    # The checkpoint reproduces the saved predictions of its held-out scans.
    checkpoint = sex_run / "checkpoints" / "model-neurossm_fold-1_seed-0.safetensors"
    model, info = load_neurossm(checkpoint)
    assert (
        info["classes"] == ["F", "M"] and info["atlas"] == "Schaefer400n17" and len(info["roi_names"]) == 11
    )
    from neurossm_app.group.data import find_timeseries, load_dataset

    bids, out = sex_data
    dataset = load_dataset(
        find_timeseries(out, "Schaefer400n17"), "participants:sex", bids / "participants.tsv", "x"
    )
    rows = predictions[(predictions["model"] == "neurossm") & (predictions["fold"] == "1")]
    names = [s.name for s in dataset.scans]
    series = [dataset.series[names.index(name)] for name in rows["scan"]]
    proba = predict_proba(model, series, torch.device("cpu"), batch_size=4)
    assert np.allclose(proba[:, 0], rows["prob_F"].astype(float), atol=1e-5)


def test_resume_skips_finished_units_and_repeats_exactly(sex_run, sex_data):
    """An HPC array task (fold 0) then a plain call: fold 0 is kept, the rest run, same numbers."""
    bids, out = sex_data
    args = [str(bids), str(out), "group", *SMALL, "--run-name", "resumed"]
    assert main([*args, "--fold", "0", "--seed", "0"]) == 0
    run = out / "group" / "resumed"
    marker = run / "units" / "fold-0_seed-0" / "unit.json"
    checkpoint = run / "checkpoints" / "model-neurossm_fold-0_seed-0.safetensors"
    stamps = (marker.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns)
    assert not (run / "units" / "fold-1_seed-0").exists() and not (run / "metrics.tsv").exists()

    # A unit that crashed half-way: files but no marker. It is redone.
    partial = run / "units" / "fold-2_seed-0"
    partial.mkdir(parents=True)
    (partial / "history.tsv").write_text("garbage")

    assert main(args) == 0
    assert (marker.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns) == stamps
    for fold in range(3):
        assert (run / "units" / f"fold-{fold}_seed-0" / "unit.json").is_file()
    # Same command (another run name) gives byte-identical metrics and predictions on the CPU.
    assert (run / "metrics.tsv").read_bytes() == (sex_run / "metrics.tsv").read_bytes()
    assert (run / "predictions.tsv").read_bytes() == (sex_run / "predictions.tsv").read_bytes()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_resume_refuses_changed_settings_data_and_damaged_checkpoints(tmp_path, capsys):
    bids, out = write_participant_outputs(tmp_path, n_subjects=8, n_volumes=70, seed=3)
    args = [str(bids), str(out), "group", *SMALL, "--folds", "2", "--epochs", "1", "--baselines", "none"]
    assert main([*args, "--fold", "0", "--seed", "0"]) == 0
    capsys.readouterr()

    assert main([*args, "--epochs", "2"]) == 64
    assert "started with other settings" in _one_error_line(capsys)

    checkpoint = out / "group" / "hcp-rest" / "checkpoints" / "model-neurossm_fold-0_seed-0.safetensors"
    original = checkpoint.read_bytes()
    checkpoint.write_bytes(original[: len(original) // 2])
    assert main(args) == 65
    line = _one_error_line(capsys)
    assert "damaged" in line and "fold-0_seed-0" in line
    checkpoint.write_bytes(original)

    next(out.glob("sub-08/func/*_timeseries.json")).unlink()  # sub-08 now incomplete
    assert main(args) == 65
    assert "--run-name" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--target", "participants:handedness"], 65, "column 'handedness' not in"),
        (["--participant-label", "01", "03", "05", "07"], 65, "only one class"),
        (["--folds", "30"], 64, "lower --folds"),
        (["--dynamic-length", "500"], 65, "shorter than the training window"),
        (["--participant-label", "99"], 18, "matched"),
        (["--run-name", "../elsewhere"], 64, "--run-name"),
        (["--atlas", "aal3v2"], 66, "no time series for atlas AAL3v2"),
        (["--fold", "7"], 64, "--fold 7 is out of range"),
        (["--seed", "9"], 64, "--seed 9 is not one of --seeds"),
    ],
)
def test_bad_input_is_one_clear_line(sex_data, capsys, extra, code, message):
    bids, out = sex_data
    assert main([str(bids), str(out), "group", *SMALL, *extra]) == code
    line = _one_error_line(capsys)
    assert message in line


def test_no_participant_outputs(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    assert main([str(bids), str(tmp_path / "out"), "group"]) == 66
    assert "participant` first" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_task_preset_separates_tasks(tmp_path):
    bids, out = write_participant_outputs(
        tmp_path, n_subjects=8, n_rois=13, n_volumes=80, tasks=("rest", "motor", "language", "wm"), seed=2
    )
    shutil.rmtree(bids)  # --target task needs no participants.tsv
    bids.mkdir()
    args = [a if a != "64" else "48" for a in SMALL]  # window fitted to the short runs
    assert main([str(bids), str(out), "group", "--preset", "hcp-task", *args, "--folds", "2"]) == 0
    run = out / "group" / "hcp-task"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["classes"] == ["language", "motor", "rest", "wm"]
    assert summary["chance"]["balanced_accuracy"] == 0.25
    assert summary["models"]["neurossm"]["accuracy"]["mean"] >= 0.6
    predictions = read_tsv(run / "predictions.tsv")
    assert {"prob_language", "prob_motor", "prob_rest", "prob_wm"} <= set(predictions.columns)
    # The folds are grouped by subject: all four tasks of a subject are tested together.
    assert predictions.groupby("subject")["fold"].nunique().max() == 1
    assert os.path.isfile(run / "checkpoints" / "model-neurossm_fold-1_seed-0.json")


def test_ppmi_preset_with_a_holdout_split(tmp_path):
    """AAL3v2 series, participants:group labels, one stratified hold-out split, no baseline."""
    # Schaefer runs of two subjects must not be picked up by the AAL3v2 preset.
    write_participant_outputs(tmp_path, n_subjects=2, n_volumes=70, seed=4)
    bids, out = write_participant_outputs(tmp_path, n_subjects=9, n_volumes=70, atlas_label="AAL3v2", seed=4)
    args = [*SMALL, "--epochs", "2", "--skip-cross-validation", "--test-size", "0.34", "--baselines", "none"]
    assert main([str(bids), str(out), "group", "--preset", "ppmi", *args]) == 0
    run = out / "group" / "ppmi"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["classes"] == ["HC", "PD"] and summary["dataset"]["atlas"] == "AAL3v2"
    assert summary["dataset"]["n_scans"] == 9 and "hold-out" in summary["protocol"]
    metrics = read_tsv(run / "metrics.tsv")
    assert list(metrics["model"]) == ["neurossm"] and metrics["n_test_subjects"].item() == 3
