"""The participant level end to end on synthetic fMRIPrep data, through the real CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from neurossm_app.cli import main
from neurossm_app.files import read_tsv


@pytest.fixture(scope="module")
def schaefer_outputs(participant_outputs):
    return participant_outputs, participant_outputs.parent / "work"


def _series_files(out):
    return sorted(out.glob("sub-*/func/*_stat-mean_timeseries.tsv"))


def test_every_run_has_a_timeseries(schaefer_outputs, rest_dataset):
    out, _ = schaefer_outputs
    files = _series_files(out)
    bolds = sorted((rest_dataset / "derivatives" / "fmriprep").glob("sub-*/func/*_desc-preproc_bold.nii.gz"))
    assert len(files) == len(bolds) == 4
    for tsv in files:
        frame = read_tsv(tsv)
        assert frame.shape == (100, 400)
        assert frame.columns[0].startswith("17Networks_LH_")
        sidecar = json.loads(tsv.with_suffix(".json").read_text())
        assert sidecar["Atlas"] == "Schaefer400n17"
        assert len(sidecar["ConfoundRegressors"]) == 36
        assert sidecar["RepetitionTime"] > 0
        coverage = tsv.with_name(tsv.name.replace("stat-mean_timeseries.tsv", "stat-coverage_bold.tsv"))
        assert read_tsv(coverage).shape == (400, 2)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert (out / "logs" / "CITATION.md").read_text().startswith("# Methods")


def test_rerun_uses_the_cache(schaefer_outputs, rest_dataset):
    out, work = schaefer_outputs
    before = {p: p.read_bytes() for p in _series_files(out)}
    parcellate_results = sorted(work.rglob("parcellate/result_parcellate.pklz"))
    stamps = [p.stat().st_mtime_ns for p in parcellate_results]
    assert (
        main(
            [
                str(rest_dataset),
                str(out),
                "participant",
                "--skip-bids-validation",
                "-w",
                str(work),
                "--nprocs",
                "1",
            ]
        )
        == 0
    )
    assert [p.stat().st_mtime_ns for p in parcellate_results] == stamps
    assert {p: p.read_bytes() for p in _series_files(out)} == before


@pytest.mark.parametrize("strategy", ["none", "simple", "36P"])
def test_equals_nilearn_masker_given_the_sidecar(rest_dataset, tmp_path, strategy):
    from nilearn.maskers import NiftiLabelsMasker

    out = tmp_path / "out"
    assert (
        main(
            [
                str(rest_dataset),
                str(out),
                "participant",
                "--skip-bids-validation",
                "-w",
                str(tmp_path / "w"),
                "--participant-label",
                "01",
                "--confounds",
                strategy,
                "--nprocs",
                "1",
            ]
        )
        == 0
    )
    (tsv,) = _series_files(out)
    ours = read_tsv(tsv)
    meta = json.loads(tsv.with_suffix(".json").read_text())
    bold, mask, confounds_file = meta["Sources"]
    confounds = None
    if meta["ConfoundRegressors"]:
        confounds = pd.read_csv(confounds_file, sep="\t", na_values="n/a")[meta["ConfoundRegressors"]]
        confounds.iloc[0] = confounds.iloc[0].fillna(confounds.iloc[1])
    masker = NiftiLabelsMasker(
        labels_img=meta["AtlasFile"],
        mask_img=mask,
        strategy="mean",
        detrend=meta["Detrend"],
        standardize=meta["Standardize"],
        high_pass=meta["HighPass"],
        low_pass=meta["LowPass"],
        t_r=meta["RepetitionTime"],
        dtype=meta["Precision"],
    )
    theirs = masker.fit_transform(bold, confounds=confounds)
    # region_ids_ maps output column -> label value; Schaefer label v is our column v - 1.
    pairs = [(col, int(value)) for col, value in masker.region_ids_.items() if col != "background"]
    kept = [(col, value) for col, value in pairs if ours.columns[value - 1] not in meta["ExcludedROIs"]]
    assert len(kept) > 300
    ref = theirs[:, [col for col, _ in kept]]
    got = ours.iloc[:, [value - 1 for _, value in kept]].to_numpy()
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel < 1e-4


def test_missing_confounds_is_one_clear_line(rest_dataset, tmp_path, capsys):
    copy = tmp_path / "ds"
    shutil.copytree(rest_dataset, copy, ignore=shutil.ignore_patterns("sourcedata"))
    for confounds in (copy / "derivatives" / "fmriprep").glob("sub-02/func/*_desc-confounds_timeseries.*"):
        confounds.unlink()
    code = main(
        [
            str(copy),
            str(tmp_path / "out"),
            "participant",
            "--skip-bids-validation",
            "-w",
            str(tmp_path / "w"),
            "--participant-label",
            "02",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 66
    assert len(err) == 1 and "confounds file missing" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["{missing}", "{out}", "participant"], 66, "does not exist"),
        (["{ds}", "{ds}/out", "participant"], 64, "inside BIDS_DIR"),
        (["{ds}", "{out}", "participant", "--participant-label", "99"], 18, "not found"),
        (["{ds}", "{out}", "participant", "--participant-label", "a/b"], 64, "letters and digits"),
        (["{ds}", "{out}", "participant", "-d", "fmriprep={missing}"], 66, "does not exist"),
        (["{ds}", "{out}", "participant", "--high-pass", "0.2", "--low-pass", "0.1"], 64, "below --low-pass"),
    ],
)
def test_bad_input_exit_codes(rest_dataset, tmp_path, capsys, args, code, message):
    values = {"ds": rest_dataset, "out": tmp_path / "out", "missing": tmp_path / "nope"}
    argv = [a.format(**values) for a in args] + ["--skip-bids-validation", "-w", str(tmp_path / "w")]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not (rest_dataset / "out").exists()


def test_no_fmriprep_derivatives(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    assert main([str(tmp_path / "raw"), str(tmp_path / "out"), "participant", "--skip-bids-validation"]) == 66
    assert "no fMRIPrep derivatives" in capsys.readouterr().err
