"""The participant level end to end on synthetic fMRIPrep data, through the real CLI."""

from __future__ import annotations

import json
import shutil

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


def test_each_call_has_a_log_file(schaefer_outputs):
    """OUTPUT_DIR/logs/<time>_participant[_sub-<label>]_<pid>.log, as the group level's, from the
    first check on (the lines logged before it existed are held and written at its top)."""
    out, _ = schaefer_outputs
    logs = sorted((out / "logs").glob("*_participant_*.log"))
    assert logs, sorted(p.name for p in (out / "logs").iterdir())
    text = logs[0].read_text()  # the fixture's call: 4 subjects, so no sub- in the name
    assert "_participant_sub-" not in logs[0].name
    assert "[INFO] participant level: 4 run(s) of 4 subject(s), atlas Schaefer400n17" in text
    assert f"[INFO] log {logs[0]}" in text and "done: ROI time series for 4 run(s)" in text
    assert text.index("participant level:") < text.index("[INFO] log ")


def test_rerun_uses_the_cache(schaefer_outputs, rest_dataset):
    out, work = schaefer_outputs
    before = {p: p.read_bytes() for p in _series_files(out)}
    extract_results = sorted(work.rglob("extract/result_extract.pklz"))
    assert len(extract_results) == 4  # one extraction node per run, all cached
    stamps = [p.stat().st_mtime_ns for p in extract_results]
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
                "--low-pass",
                "none",
            ]
        )
        == 0
    )
    assert [p.stat().st_mtime_ns for p in extract_results] == stamps
    assert {p: p.read_bytes() for p in _series_files(out)} == before


@pytest.mark.parametrize(
    "strategy, options",
    [
        ("none", []),
        ("none", ["--dummy-scans", "3"]),
        ("simple", ["--low-pass", "none"]),  # 26 regressors need more than 100 volumes' band-pass
        ("36P", ["--low-pass", "none", "--dummy-scans", "2"]),
    ],
    ids=["none", "none-dummy3", "simple", "36P-dummy2"],
)
def test_equals_nilearn_masker_given_the_sidecar(rest_dataset, tmp_path, strategy, options):
    """The sidecar's fields and sources rebuild the series with NiftiLabelsMasker alone; dummy
    volumes are left out of the fit (the masker's sample_mask) and written as n/a rows."""
    from tests.nilearn_rebuild import compare_with_masker, masker_series, resolved_sources

    out = tmp_path / "out"
    argv = [str(rest_dataset), str(out), "participant", "--skip-bids-validation", "-w", str(tmp_path / "w")]
    assert main([*argv, "--participant-label", "01", "--confounds", strategy, "--nprocs", "1", *options]) == 0
    (tsv,) = _series_files(out)
    ours = read_tsv(tsv)
    meta = json.loads(tsv.with_suffix(".json").read_text())
    dummies = int(options[options.index("--dummy-scans") + 1]) if "--dummy-scans" in options else 0
    assert meta["DummyScans"] == (dummies or "auto") and meta["DummyVolumes"] == list(range(dummies))
    # BIDS URIs (bids:fmriprep:..., bids:templateflow:...), resolved through DatasetLinks
    assert all(uri.startswith("bids:") for uri in [*meta["Sources"], meta["AtlasFile"]])
    bold, mask, confounds, atlas = resolved_sources(meta, out)
    masker, theirs, kept = masker_series(meta, bold, mask, confounds, atlas, len(ours))
    assert len(kept) == 100 - dummies
    assert compare_with_masker(ours, meta, masker, theirs, kept) > 300


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
    assert not list((tmp_path / "out").glob("logs/*.log"))  # refused before the log begins


def test_no_fmriprep_derivatives(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    assert main([str(tmp_path / "raw"), str(tmp_path / "out"), "participant", "--skip-bids-validation"]) == 66
    assert "no fMRIPrep derivatives" in capsys.readouterr().err


def _tiny_runs(folder, n_runs):
    from neurossm_app.atlases import ATLASES, Atlas
    from neurossm_app.bids import BoldRun

    files = {}
    for name in ("bold.nii.gz", "mask.nii.gz", "conf.tsv", "atlas.nii.gz"):
        files[name] = folder / name
        files[name].write_bytes(b"")
    entities = [{"subject": "01", "task": "rest", "run": i + 1} for i in range(n_runs)]
    runs = [BoldRun(files["bold.nii.gz"], files["mask.nii.gz"], files["conf.tsv"], 2.0, e) for e in entities]
    return runs, Atlas(ATLASES["schaefer400"], files["atlas.nii.gz"], (1, 2), ("a", "b")), files


@pytest.mark.parametrize("n_runs", [1, 3])
def test_three_nodes_per_run(tmp_path, n_runs):
    """Extraction is one node per run (resample, parcellate, clean), then the two sinks."""
    from neurossm_app.config import CleaningSettings
    from neurossm_app.participant.workflow import init_participant_wf

    runs, atlas, _ = _tiny_runs(tmp_path, n_runs)
    wf = init_participant_wf(runs, atlas, CleaningSettings(), tmp_path / "out", tmp_path / "w", 2)
    names = wf.list_node_names()
    assert sorted(n.split(".")[-1] for n in names) == sorted(
        ["extract", "ds_timeseries", "ds_report"] * n_runs
    )
    extract = wf.get_node(f"{names[0].split('.')[0]}.extract")
    assert extract.n_procs == 2 and extract.inputs.n_threads == 2


def test_cache_key_follows_content_not_timestamps(tmp_path):
    """The extraction's cache key changes with the confounds' or the BOLD's content, not with a touch."""
    import gzip
    import os

    from neurossm_app.config import CleaningSettings
    from neurossm_app.participant.workflow import init_run_wf

    runs, atlas, files = _tiny_runs(tmp_path, 1)
    files["bold.nii.gz"].write_bytes(gzip.compress(b"volume data" * 100))
    files["conf.tsv"].write_text("a\tb\n1\t2\n")

    def key():
        node = init_run_wf(runs[0], atlas, CleaningSettings(), tmp_path / "out").get_node("extract")
        return node.inputs.get_hashval(hash_method="content")[1]  # as the CLI configures nipype

    first = key()
    os.utime(files["bold.nii.gz"], ns=(1, 1))
    assert key() == first  # same bytes, new timestamp: cached
    files["bold.nii.gz"].write_bytes(gzip.compress(b"other data!" * 100))  # same length
    assert key() != first
    second = key()
    files["conf.tsv"].write_text("a\tb\n1\t3\n")
    assert key() != second


@pytest.mark.parametrize("nipype_first", [False, True], ids=["nipype-after", "nipype-before"])
def test_verbose_prints_each_nipype_line_once(nipype_first):
    """-v shows nipype's lines through our log handler only, however often it is set up."""
    import os
    import subprocess
    import sys

    code = "\n".join(
        [
            "import logging",
            "import nipype" if nipype_first else "",
            "from neurossm_app.cli import _setup_logging",
            "_setup_logging(1)",
            "from nipype import config, logging as nipype_logging",
            "config.update_config({'logging': {'workflow_level': 'INFO'}})",
            "nipype_logging.update_logging(config)",
            "logging.getLogger('nipype.workflow').info('first nipype line')",
            "_setup_logging(1)",  # a second call in one process (tests, notebooks)
            "logging.getLogger('nipype.workflow').info('second nipype line')",
        ]
    )
    env = {**os.environ, "NIPYPE_NO_ET": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    printed = result.stdout + result.stderr
    assert printed.count("first nipype line") == 1, printed
    assert printed.count("second nipype line") == 1, printed


def test_collect_bold_runs_pairs_each_run_with_its_files(tmp_path):
    """res-2 is preferred, each run gets the mask of its resolution, its confounds and its TR."""
    from neurossm_app.bids import collect_bold_runs

    root = tmp_path / "fmriprep"
    func = root / "sub-01" / "ses-1" / "func"
    func.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "f", "BIDSVersion": "1.10.0", "DatasetType": "derivative"})
    )
    space = "space-MNI152NLin2009cAsym"
    for run, res, tr in (("1", "_res-1", 1.0), ("1", "_res-2", 2.0), ("2", "", 3.0)):
        stem = f"sub-01_ses-1_task-rest_run-{run}_{space}{res}"
        (func / f"{stem}_desc-preproc_bold.nii.gz").write_bytes(b"")
        (func / f"{stem}_desc-preproc_bold.json").write_text(json.dumps({"RepetitionTime": tr}))
        (func / f"{stem}_desc-brain_mask.nii.gz").write_bytes(b"")
    for run in ("1", "2"):
        (func / f"sub-01_ses-1_task-rest_run-{run}_desc-confounds_timeseries.tsv").write_text("a\n")

    runs = collect_bold_runs(root)
    assert [(r.bold.name, r.mask.name, r.confounds.name, r.repetition_time) for r in runs] == [
        (
            f"sub-01_ses-1_task-rest_run-1_{space}_res-2_desc-preproc_bold.nii.gz",
            f"sub-01_ses-1_task-rest_run-1_{space}_res-2_desc-brain_mask.nii.gz",
            "sub-01_ses-1_task-rest_run-1_desc-confounds_timeseries.tsv",
            2.0,
        ),
        (
            f"sub-01_ses-1_task-rest_run-2_{space}_desc-preproc_bold.nii.gz",
            f"sub-01_ses-1_task-rest_run-2_{space}_desc-brain_mask.nii.gz",
            "sub-01_ses-1_task-rest_run-2_desc-confounds_timeseries.tsv",
            3.0,
        ),
    ]
    assert runs[0].entities == {"subject": "01", "session": "1", "task": "rest", "run": 1}


@pytest.mark.parametrize("also_broken", [False, True], ids=["valid-derivatives", "confounds-missing-too"])
def test_validator_verdict_comes_first(rest_dataset, tmp_path, monkeypatch, capsys, also_broken):
    """The validator runs beside indexing and pre-flight; its errors are still the one reported."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    validator = bin_dir / "bids-validator-deno"
    validator.write_text("#!/bin/sh\necho '[ERROR] NOT_INCLUDED fake finding'\nexit 1\n")
    validator.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ds = tmp_path / "ds"
    shutil.copytree(rest_dataset, ds, ignore=shutil.ignore_patterns("sourcedata"))
    if also_broken:
        for confounds in (ds / "derivatives" / "fmriprep").glob("sub-01/func/*_desc-confounds_timeseries.*"):
            confounds.unlink()
    argv = [
        str(ds),
        str(tmp_path / "out"),
        "participant",
        "-w",
        str(tmp_path / "w"),
        "--participant-label",
        "01",
    ]
    assert main(argv) == 16
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "failed BIDS validation (1 error(s): NOT_INCLUDED)" in err[0]
