"""End to end: synthetic BIDS + fMRIPrep -> participant level -> group level, through the real CLI."""

from __future__ import annotations

import json
import shutil

import pytest

from neurossm_app.cli import main
from neurossm_app.files import read_tsv


@pytest.mark.slow
def test_synthetic_dataset_through_both_levels(rest_dataset, participant_outputs, tmp_path):
    """``participant_outputs`` is the participant level run through the CLI on ``rest_dataset``."""
    out = tmp_path / "out"
    shutil.copytree(participant_outputs, out)  # the session fixture stays untouched
    group = [
        str(rest_dataset), str(out), "group", "--dynamic-length", "80", "--epochs", "3",
        "--batch-size", "2", "--d-model", "16", "--n-layers", "1", "--d-state", "8", "--scales", "1", "2",
        "--folds", "2", "--seeds", "0", "--omp-nthreads", "2",
    ]  # fmt: skip
    assert main(group) == 0
    run = out / "group" / "hcp-rest"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"]["n_rois"] == 400 and summary["dataset"]["atlas"] == "Schaefer400n17"
    assert summary["dataset"]["n_subjects"] == 4 and summary["units"]["complete"] == 2
    metrics = read_tsv(run / "metrics.tsv")
    assert len(metrics) == 2 * 2 and metrics["accuracy"].between(0, 1).all()
    # A second call finds everything done (group/ is not mistaken for input) and aggregates again.
    before = (run / "metrics.tsv").read_bytes()
    assert main(group) == 0
    assert (run / "metrics.tsv").read_bytes() == before
