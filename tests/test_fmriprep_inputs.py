"""fMRIPrep derivatives as real releases name them, found and read through the real CLI.

The trees come from :mod:`tests.fmriprep_layouts` (fMRIPrep 1.5, 20.2 and 23 names and sidecar
keys, tiny images). Each CLI call processes a few runs of 40 volumes in a box of cortex.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from neurossm_app.bids import dataset_description, dataset_links, free_link_name, resolve_bids_uri
from neurossm_app.cli import main
from neurossm_app.fmriprep import collect_bold_runs, find_fmriprep_dir
from neurossm_app.participant.validation import summarize_errors
from tests.fmriprep_layouts import write_fmriprep, write_raw_bids

NLIN6, NLIN2009 = "MNI152NLin6Asym", "MNI152NLin2009cAsym"
FAST = ("--nprocs", "1", "--high-pass", "none", "--low-pass", "none")


@pytest.fixture(autouse=True)
def _atlases(atlas_cache):
    """Schaefer in both templates, where TemplateFlow looks (tests/conftest.py)."""


def _call(bids_dir: Path, out: Path, *options: str) -> int:
    work = out.parent / f"{out.name}_work"
    return main([str(bids_dir), str(out), "participant", "-w", str(work), *FAST, *options])


def _series(out: Path) -> list[Path]:
    return sorted(out.glob("sub-*/**/func/*_stat-mean_timeseries.tsv"))


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.strip().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Finding the runs of every release
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "release, suffix", [("1.5", "regressors"), ("20.2", "timeseries"), ("23", "timeseries")]
)
def test_every_release_pairs_runs_with_their_files(tmp_path, release, suffix):
    """Sessions, runs, both spaces and three grids: one run per BOLD series, res-2 preferred."""
    spaces = ((NLIN2009, None), (NLIN2009, "2"), (NLIN2009, "1"), (NLIN6, "2"))
    tree = write_fmriprep(
        tmp_path / "fmriprep", release, sessions=("A", "B"), runs=(1, 2), spaces=spaces, volumes=4
    )
    runs = collect_bold_runs(tree.root)
    assert [r.name for r in runs] == [f"sub-01_ses-{s}_task-rest_run-{r}" for s in "AB" for r in (1, 2)]
    for run in runs:
        assert run.space == NLIN2009 and "_res-2_desc-preproc_bold" in run.bold.name
        assert run.mask.name == run.bold.name.replace("desc-preproc_bold", "desc-brain_mask")
        assert run.confounds.name == f"{run.name}_desc-confounds_{suffix}.tsv"
        assert run.repetition_time == 2.0
        assert run.sources == tuple(f"bids:fmriprep:{p.relative_to(tree.root).as_posix()}"
                                    for p in (run.bold, run.mask, run.confounds))  # fmt: skip


def test_native_grid_is_taken_when_there_is_no_res_2(tmp_path):
    tree = write_fmriprep(
        tmp_path / "fmriprep", "20.2", runs=(None,), spaces=((NLIN6, "1"), (NLIN6, None)), volumes=4
    )
    (run,) = collect_bold_runs(tree.root)
    assert run.bold.name == f"sub-01_task-rest_space-{NLIN6}_desc-preproc_bold.nii.gz"  # no res-
    assert run.space == NLIN6 and run.entities == {"subject": "01", "task": "rest"}


@pytest.mark.parametrize("above", ["func", "perf", "anat", "sub-99"])
def test_folders_above_the_dataset_root_do_not_count(tmp_path, above):
    """pybids reads entities from the absolute path: .../func/... above the root is no datatype."""
    root = tmp_path / above / "study" / "derivatives" / "fmriprep"
    tree = write_fmriprep(root, "23", subjects=("01", "02"), volumes=4)
    runs = collect_bold_runs(tree.root, participant_labels=["02"])
    assert [r.name for r in runs] == ["sub-02_task-rest_run-1"]


def test_fmriprep_dir_is_recognised_in_every_release(tmp_path):
    for release in ("1.5", "20.2", "23"):
        root = write_fmriprep(tmp_path / release, release, volumes=4).root
        assert find_fmriprep_dir(root, {}) == root
    assert find_fmriprep_dir(tmp_path / "raw", {}) == tmp_path / "raw" / "derivatives" / "fmriprep"


# --------------------------------------------------------------------------------------------
# Through the CLI: the failures of issue 15
# --------------------------------------------------------------------------------------------


def _fake_validator(tmp_path: Path, monkeypatch, output: str) -> Path:
    """A ``bids-validator-deno`` on PATH that prints ``output`` and exits 1 (and logs its call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "report.txt").write_text(output)
    validator = bin_dir / "bids-validator-deno"
    validator.write_text(f'#!/bin/sh\necho "$@" >> {bin_dir}/calls\ncat {bin_dir}/report.txt\nexit 1\n')
    validator.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir / "calls"


def test_fmriprep_1_5_dir_as_bids_dir_with_old_confounds_name(tmp_path, monkeypatch, caplog):
    """BIDS_DIR = fMRIPrep 1.5's own folder (PipelineDescription, confounds_regressors.tsv):
    no raw-BIDS validation (one info line), and 24P reads the old name."""
    calls = _fake_validator(tmp_path, monkeypatch, "[ERROR] NOT_INCLUDED would fail\n")
    tree = write_fmriprep(tmp_path / "fmriprep", "1.5", subjects=("01", "02"), sessions=("A",))
    caplog.set_level("INFO", logger="neurossm_app")
    assert _call(tree.root, tmp_path / "out", "--confounds", "24P") == 0
    assert not calls.exists(), "the validator must not run on a derivative dataset"
    assert any("raw-BIDS validation skipped" in r.getMessage() for r in caplog.records)
    files = _series(tmp_path / "out")
    assert [f.name.split("_space-")[0] for f in files] == [
        "sub-01_ses-A_task-rest_run-1",
        "sub-02_ses-A_task-rest_run-1",
    ]
    meta = json.loads(files[0].with_suffix(".json").read_text())
    assert len(meta["ConfoundRegressors"]) == 24
    assert (
        meta["Sources"][2]
        == "bids:fmriprep:sub-01/ses-A/func/sub-01_ses-A_task-rest_run-1_desc-confounds_regressors.tsv"
    )


@pytest.mark.parametrize("above", ["func", "perf"])
def test_dataset_under_a_datatype_folder(tmp_path, above):
    """/project/func/study/... and /data/perf/study/...: the runs are found, the outputs written."""
    raw = write_raw_bids(tmp_path / above / "study")
    write_fmriprep(raw / "derivatives" / "fmriprep", "20.2", runs=(1, 2), spaces=((NLIN2009, "2"),))
    assert _call(raw, tmp_path / "out", "--skip-bids-validation", "--confounds", "simple") == 0
    assert len(_series(tmp_path / "out")) == 2


def test_confounds_none_needs_no_confounds_file(tmp_path):
    tree = write_fmriprep(tmp_path / "fmriprep", "23", confounds=False)
    assert _call(tree.root, tmp_path / "out", "--confounds", "none") == 0
    (tsv,) = _series(tmp_path / "out")
    assert [
        uri.rsplit("_", 1)[-1] for uri in json.loads(tsv.with_suffix(".json").read_text())["Sources"]
    ] == [
        "bold.nii.gz",
        "mask.nii.gz",
    ]


def test_missing_confounds_fail_that_run_only(tmp_path, capsys):
    tree = write_fmriprep(tmp_path / "fmriprep", "20.2", subjects=("01", "02"))
    (tree.root / "sub-02" / "func" / "sub-02_task-rest_run-1_desc-confounds_timeseries.tsv").unlink()
    assert _call(tree.root, tmp_path / "out", "--confounds", "simple") != 0
    lines = _error_lines(capsys)
    failed = [line for line in lines if "confounds file missing" in line]
    assert len(failed) == 1 and "sub-02_task-rest_run-1_space-" in failed[0]
    assert "_desc-confounds_regressors.tsv (1.2-20.1)" in failed[0] and "--confounds none" in failed[0]
    assert [f.name.split("_")[0] for f in _series(tmp_path / "out")] == ["sub-01"]


# --------------------------------------------------------------------------------------------
# --space
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, space", [((), NLIN2009), (("--space", NLIN6), NLIN6)])
def test_space_names_the_outputs_and_the_atlas(tmp_path, option, space):
    tree = write_fmriprep(tmp_path / "fmriprep", "23", spaces=((NLIN6, "2"), (NLIN2009, None)))
    assert _call(tree.root, tmp_path / "out", "--confounds", "none", *option) == 0
    (tsv,) = _series(tmp_path / "out")
    assert f"_space-{space}_atlas-Schaefer400n17_" in tsv.name
    meta = json.loads(tsv.with_suffix(".json").read_text())
    assert meta["Space"] == space and f"_space-{space}_" in meta["Sources"][0]
    assert meta["AtlasFile"].startswith(
        f"bids:templateflow:tpl-{space}/tpl-{space}_res-02_atlas-Schaefer2018"
    )


@pytest.mark.parametrize("res", ["1", None], ids=["res-1", "native-3x3x3.33mm"])
def test_every_grid_goes_through_the_cli(tmp_path, res):
    """Only res-1, or only fMRIPrep's native grid: the atlas is resampled onto it."""
    tree = write_fmriprep(tmp_path / "fmriprep", "20.2", spaces=((NLIN2009, res),), volumes=24)
    assert _call(tree.root, tmp_path / "out", "--confounds", "none") == 0
    (tsv,) = _series(tmp_path / "out")
    meta = json.loads(tsv.with_suffix(".json").read_text())
    assert meta["Sources"][0].endswith(tree.bolds[0].name) and len(meta["ExcludedROIs"]) < 400


def test_default_space_is_the_one_the_runs_have_and_a_missing_one_is_one_line(tmp_path, capsys):
    tree = write_fmriprep(tmp_path / "fmriprep", "23", spaces=((NLIN6, None),))
    assert _call(tree.root, tmp_path / "out", "--confounds", "none", "--space", NLIN2009) == 66
    (line,) = _error_lines(capsys)
    assert f"no BOLD runs in space {NLIN2009}" in line and f"pass --space {NLIN6}" in line
    assert _call(tree.root, tmp_path / "out", "--confounds", "none") == 0
    assert f"_space-{NLIN6}_" in _series(tmp_path / "out")[0].name


# --------------------------------------------------------------------------------------------
# BIDS URIs and DatasetLinks
# --------------------------------------------------------------------------------------------


def test_sidecar_uris_resolve_through_dataset_links(tmp_path):
    tree = write_fmriprep(tmp_path / "fmriprep", "20.2")
    out = tmp_path / "out"
    assert _call(tree.root, out, "--confounds", "none") == 0
    (tsv,) = _series(out)
    meta = json.loads(tsv.with_suffix(".json").read_text())
    links = dataset_links(out)
    assert links["fmriprep"] == tree.root.resolve().as_uri() and set(links) == {"fmriprep", "templateflow"}
    files = [resolve_bids_uri(uri, links) for uri in (*meta["Sources"], meta["AtlasFile"])]
    assert files[:3] == [tree.bolds[0], tree.masks[0], tree.confounds[0]]
    assert all(f.is_file() for f in files)


def test_dataset_links_are_added_not_replaced(tmp_path):
    dataset_description(tmp_path, [tmp_path / "raw"], links={"fmriprep": tmp_path / "a"})
    assert free_link_name(tmp_path, "fmriprep", tmp_path / "a") == "fmriprep"
    assert free_link_name(tmp_path, "fmriprep", tmp_path / "b") == "fmriprep2"
    dataset_description(tmp_path, links={"fmriprep": tmp_path / "b", "fmriprep2": tmp_path / "b"})
    links = dataset_links(tmp_path)
    assert links == {"fmriprep": (tmp_path / "a").as_uri(), "fmriprep2": (tmp_path / "b").as_uri()}
    assert resolve_bids_uri("bids:fmriprep2:sub-01/x.nii.gz", links) == tmp_path / "b" / "sub-01" / "x.nii.gz"
    assert resolve_bids_uri("bids:other:x", links) is None
    assert resolve_bids_uri("/abs/older/sidecar.nii.gz", links) == Path("/abs/older/sidecar.nii.gz")


def test_group_level_reads_the_fmriprep_version_through_the_uri(tmp_path):
    from neurossm_app.group.inputs import fmriprep_version

    tree = write_fmriprep(tmp_path / "moved" / "fmriprep", "23", volumes=4)
    sidecar = {"Sources": [f"bids:fmriprep2:{tree.bolds[0].relative_to(tree.root).as_posix()}"]}
    found = fmriprep_version([sidecar], None, {"fmriprep2": tree.root.as_uri()})
    assert found["version"] == "23.2.1"


# --------------------------------------------------------------------------------------------
# Validation of a raw BIDS_DIR
# --------------------------------------------------------------------------------------------

DENO_REPORT = "\n".join(
    [
        "\t[WARNING] Task scans should have a corresponding 'events.tsv' file. (EVENTS_TSV_MISSING)",
        "\t\t./task-rest_bold.json",
        "\t[ERROR] Empty files not allowed. (EMPTY_FILE)",
        "",
        *[f"\t\t./sub-0{i}/anat/sub-0{i}_T1w.nii.gz" for i in range(1, 7)],
        "",
        "\tPlease visit https://neurostars.org/search?q=EMPTY_FILE for existing conversations.",
        "\t[ERROR] Files with such naming scheme are not part of BIDS specification. (NOT_INCLUDED)",
        "\t\t./sub-01/func/notes.txt",
    ]
)


def test_raw_validation_failure_names_five_files_and_the_way_out(tmp_path, monkeypatch, capsys):
    calls = _fake_validator(tmp_path, monkeypatch, DENO_REPORT)
    raw = write_raw_bids(tmp_path / "raw")
    write_fmriprep(raw / "derivatives" / "fmriprep", "20.2", volumes=4)
    assert _call(raw, tmp_path / "out") == 16
    (line,) = _error_lines(capsys)
    assert "failed BIDS validation (7 error(s): EMPTY_FILE ./sub-01/anat/sub-01_T1w.nii.gz;" in line
    assert "EMPTY_FILE ./sub-05/anat/sub-05_T1w.nii.gz; and 2 more)" in line and "sub-06" not in line
    assert "EVENTS_TSV_MISSING" not in line and line.endswith("or pass --skip-bids-validation.")
    assert calls.read_text().split() == ["--json", str(raw)]
    assert not (tmp_path / "out" / "sub-01").exists()


def test_validator_json_report_is_summarised():
    report = {
        "issues": {
            "issues": [
                {"code": "NOT_INCLUDED", "location": "/sub-01/x.txt", "severity": "error"},
                {"code": "TOO_FEW_AUTHORS", "location": "/dataset_description.json", "severity": "warning"},
            ]
        }
    }
    assert summarize_errors(json.dumps(report)) == "1 error(s): NOT_INCLUDED /sub-01/x.txt"
    legacy = {
        "issues": {"errors": [{"key": "NIFTI_TOO_SMALL", "files": [{"file": {"relativePath": "/a.nii"}}]}]}
    }
    assert summarize_errors(json.dumps(legacy)) == "1 error(s): NIFTI_TOO_SMALL /a.nii"
