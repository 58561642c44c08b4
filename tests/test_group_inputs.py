"""What the group level accepts, and what it says about it, through the real command line.

Inputs made in different ways are refused before anything is written; mixed repetition times are
warned about and recorded; ``--analysis`` inputs (Neurosynth, atlas) are checked before the first
unit trains, never downloaded; excluded subjects and missing-label spellings are listed; the run
records its provenance. Tiny participant-style outputs (:mod:`tests.test_group_fakedata`) and a
tiny model (d-model 8, one layer, two epochs) keep each call to a few seconds.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pandas as pd
import pytest

from neurossm_app.cli import main
from neurossm_app.group.inputs import how_made
from tests.test_group_fakedata import write_participant_outputs

TINY = [
    "--dynamic-length", "24", "--epochs", "2", "--batch-size", "4", "--d-model", "8", "--n-layers", "1",
    "--d-state", "4", "--scales", "1", "--folds", "2", "--seeds", "0", "--baselines", "none",
    "--omp-nthreads", "1",
]  # fmt: skip
REGRESSORS_36P = ["trans_x", "trans_y", "rot_z", "csf", "white_matter", "global_signal"]


def _outputs(root: Path, n_subjects: int = 8, **options) -> tuple[Path, Path]:
    return write_participant_outputs(
        root, n_subjects=n_subjects, n_rois=5, n_volumes=40, with_missing=False, seed=1, **options
    )


def _no_group_outputs(out: Path) -> bool:
    """Nothing in OUTPUT_DIR/group but the series cache (kept by a call that read the series before
    a later check failed, so the corrected call does not parse them again)."""
    group = out / "group"
    return not group.exists() or [p.name for p in group.iterdir()] == [".cache"]


def _edit_sidecars(out: Path, subjects: list[str], **fields) -> None:
    for subject in subjects:
        for sidecar in out.glob(f"sub-{subject}/func/*_timeseries.json"):
            sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **fields}))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every internet connection of this process; the attempts are recorded."""
    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(101, "network access blocked by the test")
        return real_connect(self, address)

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(101, "network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


# --- inputs made in different ways ---------------------------------------------------------------


def test_mixed_cleaning_settings_are_refused_before_anything_is_written(tmp_path, capsys):
    bids, out = _outputs(tmp_path)
    made = {"Strategy": "mean", "HighPass": 0.01, "LowPass": 0.1, "Detrend": True}
    _edit_sidecars(
        out, ["01", "02", "03", "04", "05"], ConfoundStrategy="36P", ConfoundRegressors=REGRESSORS_36P, **made
    )
    _edit_sidecars(out, ["06", "07", "08"], ConfoundStrategy="none", ConfoundRegressors=[], **made)
    assert main([str(bids), str(out), "group", *TINY]) == 65
    line = _one_error_line(capsys)
    assert "made in 2 different ways" in line
    assert "5 scan(s) of 5 subject(s) (e.g. sub-01_task-rest) with ConfoundStrategy 36P" in line
    assert "3 scan(s) of 3 subject(s) (e.g. sub-06_task-rest) with ConfoundStrategy none" in line
    assert "--bids-filter-file" in line and "another OUTPUT_DIR" in line
    assert not (out / "group").exists()


def test_band_pass_and_space_count_but_numbered_regressors_and_atlas_folders_do_not(tmp_path):
    path = tmp_path / "sub-01_task-rest_space-MNI152NLin2009cAsym_atlas-X_stat-mean_timeseries.tsv"
    base = {
        "ConfoundRegressors": ["a_comp_cor_00", "a_comp_cor_01", "trans_x"],
        "AtlasFile": "/a/atlas.nii.gz",
    }
    same = {"ConfoundRegressors": ["a_comp_cor_00", "a_comp_cor_01", "a_comp_cor_02", "trans_x"]}
    assert how_made(path, base) == how_made(path, {**same, "AtlasFile": "/elsewhere/atlas.nii.gz"})
    assert how_made(path, base) != how_made(path, {**base, "HighPass": 0.008})
    other_space = path.with_name(path.name.replace("MNI152NLin2009cAsym", "MNI152NLin6Asym"))
    assert how_made(path, base)["Space"] == "MNI152NLin2009cAsym" != how_made(other_space, base)["Space"]


def test_mixed_repetition_times_are_warned_and_recorded(tmp_path, caplog):
    bids, out = _outputs(tmp_path)
    _edit_sidecars(out, ["01", "02", "03"], RepetitionTime=2.0)
    with caplog.at_level(logging.WARNING, logger="neurossm_app"):
        assert main([str(bids), str(out), "group", *TINY]) == 0
    warned = [r.getMessage() for r in caplog.records if "repetition times" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "0.72 s (5 scans" in warned[0] and "2 s (3 scans" in warned[0] and "volumes" in warned[0]
    run = out / "group" / "hcp-rest"
    # warned while the inputs were checked, before the run folder existed: still in the call's log
    assert "repetition times" in next((run / "logs").glob("*.log")).read_text()
    splits = pd.read_csv(run / "splits.tsv", sep="\t", dtype=str)
    assert list(splits.columns)[-1] == "repetition_time"
    assert dict(zip(splits["subject"], splits["repetition_time"], strict=True))["02"] == "2.0"
    predictions = pd.read_csv(run / "predictions.tsv", sep="\t", dtype=str)
    assert list(predictions.columns)[-1] == "repetition_time"
    assert set(predictions.loc[predictions["subject"] == "01", "repetition_time"]) == {"2"}
    assert set(predictions.loc[predictions["subject"] == "04", "repetition_time"]) == {"0.72"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"]["repetition_time"] == {"0.72": 5, "2": 3}
    config = json.loads((run / "config.json").read_text())
    assert config["inputs"]["repetition_time"] == {"0.72": 5, "2": 3}
    assert "repetition_time" not in config["settings"]  # settings are what a resumed call compares


# --- --analysis inputs checked first, never downloaded -----------------------------------------


def test_missing_neurosynth_exits_66_before_any_training(tmp_path, capsys, no_network):
    bids, out = _outputs(tmp_path)
    terms = tmp_path / "terms.json"
    terms.write_text(json.dumps({"F": "face", "M": None}))
    neurosynth = tmp_path / "cache" / "neurosynth"
    started = time.monotonic()
    args = ["--analysis", "--neurosynth-dir", str(neurosynth), "--class-terms", str(terms)]
    assert main([str(bids), str(out), "group", *TINY, *args]) == 66
    assert time.monotonic() - started < 20
    line = _one_error_line(capsys)
    assert f"Neurosynth data not found in {neurosynth} (missing neurosynth/data-neurosynth_version-7" in line
    assert f"`neurossm-app-fetch --atlas none --neurosynth {neurosynth}`" in line
    assert "neurosynth/neurosynth" not in line and ".);" not in line
    assert _no_group_outputs(out)  # no run folder, no checkpoint, no unit
    assert not neurosynth.exists() and not no_network


@pytest.mark.parametrize("atlas", ["schaefer400", "aal3v2"])
def test_group_missing_atlas_exits_66_offline_before_training(
    tmp_path, capsys, monkeypatch, no_network, atlas
):
    """No class term (hcp-rest's sexes, ppmi's table has one but no Neurosynth is needed to see the atlas)."""
    label = {"schaefer400": "Schaefer400n17", "aal3v2": "AAL3v2"}[atlas]
    bids, out = _outputs(tmp_path, atlas_label=label)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty_templateflow"))
    terms = tmp_path / "terms.json"
    terms.write_text(json.dumps({}))
    args = [
        "--atlas",
        atlas,
        "--analysis",
        "--class-terms",
        str(terms),
        "--atlas-dir",
        str(tmp_path / "empty_nilearn"),
    ]
    assert main([str(bids), str(out), "group", *TINY, *args]) == 66
    line = _one_error_line(capsys)
    assert f"neurossm-app-fetch --atlas {atlas}" in line and "never downloads" in line
    assert _no_group_outputs(out) and not no_network
    assert not (tmp_path / "empty_nilearn").exists() and not (tmp_path / "empty_templateflow").exists()


@pytest.fixture(scope="module")
def small_bids(tmp_path_factory, atlas_cache) -> Path:
    from tests.conftest import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("bids") / "ds", atlas_cache, subjects=2, volumes=30, seed=1)


@pytest.mark.parametrize("atlas", ["schaefer400", "aal3v2"])
def test_participant_missing_atlas_exits_66_offline(
    small_bids, tmp_path, capsys, monkeypatch, no_network, atlas
):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty_templateflow"))
    out = tmp_path / "out"
    args = ["--skip-bids-validation", "-w", str(tmp_path / "work"), "--atlas", atlas]
    args += ["--atlas-dir", str(tmp_path / "empty_nilearn"), "--participant-label", "01", "--nprocs", "1"]
    assert main([str(small_bids), str(out), "participant", *args]) == 66
    line = _one_error_line(capsys)
    assert f"neurossm-app-fetch --atlas {atlas}" in line and "never downloads" in line
    assert not no_network and not list(out.rglob("*.tsv"))


# --- the user's view of the cohort ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Ten subjects: sub-01..04 train; sub-05 is too short, sub-06..08 have n/a, NA and nan for
    sex, sub-09 and sub-10 have AAL3v2 series only. fMRIPrep's description says 23.2.1."""
    root = tmp_path_factory.mktemp("cohort")
    bids, out = _outputs(root, n_subjects=10)
    short = next(out.glob("sub-05/func/*_timeseries.tsv"))
    short.write_text("\n".join(short.read_text().splitlines()[:21]) + "\n")  # 20 volumes
    for subject in ("09", "10"):
        for path in out.glob(f"sub-{subject}/func/*"):
            path.rename(path.with_name(path.name.replace("Schaefer400n17", "AAL3v2")))
    table = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    table.loc[table["participant_id"].isin(["sub-06", "sub-07", "sub-08"]), "sex"] = ["n/a", "NA", "nan"]
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    fmriprep = bids / "derivatives" / "fmriprep"
    fmriprep.mkdir(parents=True)
    (fmriprep / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "fMRIPrep",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.1"}],
            }
        )
    )
    return bids, out


@pytest.fixture(scope="module")
def cohort_run(cohort):
    bids, out = cohort
    handler = _Records()
    logging.getLogger("neurossm_app").addHandler(handler)
    try:
        assert main([str(bids), str(out), "group", *TINY]) == 0
    finally:
        logging.getLogger("neurossm_app").removeHandler(handler)
    return out / "group" / "hcp-rest", handler.messages


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_excluded_subjects_are_listed_with_their_reasons(cohort_run):
    run, _ = cohort_run
    summary = json.loads((run / "summary.json").read_text())
    reasons = {e["subject"]: e["reason"] for e in summary["dataset"]["excluded"]}
    assert set(reasons) == {"sub-05", "sub-06", "sub-07", "sub-08", "sub-09", "sub-10"}
    assert reasons["sub-05"] == "shorter than --dynamic-length 24"
    assert reasons["sub-09"] == reasons["sub-10"] == "no Schaefer400n17 series (has AAL3v2)"
    assert reasons["sub-07"].startswith("no participants:sex label (participants.tsv")
    assert summary["dataset"]["n_subjects"] == 4 and summary["classes"] == ["F", "M"]
    report = (run / "report.html").read_text()
    assert "Left out of the run" in report and "no Schaefer400n17 series (has AAL3v2)" in report


def test_na_spellings_are_missing_labels_with_one_warning(cohort_run):
    run, messages = cohort_run
    named = [m for m in messages if "read as missing" in m]
    assert len(named) == 1 and "'NA' (1 subject(s))" in named[0] and "'nan' (1 subject(s))" in named[0]
    assert "'n/a'" not in named[0]  # BIDS's own spelling needs no warning
    assert "NA" not in json.loads((run / "summary.json").read_text())["dataset"]["classes"]


def test_subject_level_results_and_provenance(cohort_run):
    run, _ = cohort_run
    summary = json.loads((run / "summary.json").read_text())
    subject_level = summary["subject_level"]
    assert subject_level["n_subjects"] == 4
    assert set(subject_level["models"]["neurossm"]) == {"accuracy", "balanced_accuracy", "roc_auc"}
    table = pd.read_csv(run / "subject_predictions.tsv", sep="\t", dtype=str)
    assert list(table.columns)[:6] == ["model", "seed", "subject", "true_label", "n_scans", "predicted_label"]
    assert len(table) == 4 and set(table["n_scans"]) == {"1"}
    accuracy = (table["true_label"] == table["predicted_label"]).mean()
    assert subject_level["models"]["neurossm"]["accuracy"]["mean"] == pytest.approx(accuracy)
    provenance = summary["provenance"]
    assert provenance["command_line"].startswith("neurossm-app ") and " group " in provenance["command_line"]
    assert {"neurossm-app", "torch", "mamba-ssm", "nilearn", "nimare"} <= set(provenance["software"])
    assert summary["inputs"]["fmriprep"]["version"] == "23.2.1"
    report = (run / "report.html").read_text()
    assert "Per subject" in report and "Provenance" in report and "fMRIPrep version: 23.2.1" in report
    # where the units ran: the CPU here, with the numba scan (the CPU back end) and torch's conv
    ran = {"device": "cpu", "scan_backend": "cpu", "conv_backend": "torch", "units": 2}
    assert summary["backends"] == [ran]
    assert "Where NeuroSSM ran" in report


# --- small messages -----------------------------------------------------------------------------


def test_output_dir_that_is_a_file_says_so(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    (tmp_path / "out").write_text("not a folder")
    assert main([str(bids), str(tmp_path / "out"), "group"]) == 66
    line = _one_error_line(capsys)
    assert "is a regular file, not a folder" in line and "does not exist" not in line


def test_holdout_with_one_subject_in_a_class_does_not_suggest_folds(tmp_path, capsys):
    bids, out = _outputs(tmp_path, n_subjects=3)  # F, M, F
    assert main([str(bids), str(out), "group", *TINY, "--skip-cross-validation"]) == 64
    line = _one_error_line(capsys)
    assert "class 'M' has 1 subject(s), too few for the hold-out split" in line and "--folds" not in line
