"""Confounds files of every fMRIPrep release nilearn reads, dummy scans and degrees of freedom.

The files are nilearn's own real fMRIPrep confounds (tests/data/fmriprep_confounds, README there);
older releases' shapes are derived from them (expansion columns dropped, CamelCase headers).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurossm_app.cli import main
from neurossm_app.config import CleaningSettings
from neurossm_app.errors import DataError
from neurossm_app.files import read_tsv
from neurossm_app.participant.clean import check_confounds, check_degrees_of_freedom, select_confounds
from neurossm_app.participant.confounds import add_expansions, read_confounds_table
from tests.conftest import make_synthetic
from tests.nilearn_rebuild import compare_with_masker, masker_series, resolved_sources

DATA = Path(__file__).parent / "data" / "fmriprep_confounds"
V1 = DATA / "test_desc-confounds_regressors.tsv"  # fMRIPrep 1.x, the 1.2-20.1 name
V21 = DATA / "test-v21_desc-confounds_timeseries.tsv"  # fMRIPrep 21.x, the 20.2+ name
EXPANDED = ("_derivative1", "_power2")  # ends of every expansion column name
BOLD = "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
NO_FILTER = ("--high-pass", "none", "--low-pass", "none")  # 24 regressors need 30 volumes unfiltered


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values="n/a")


def _without_expansions(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in table.columns if c.endswith(EXPANDED)])


def _write(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


@pytest.mark.parametrize("source", [V1, V21], ids=["fmriprep-1.x", "fmriprep-21.x"])
def test_computed_expansions_equal_fmriprep_columns(source):
    """Dropped expansions, computed again, equal the ones fMRIPrep wrote."""
    real = _table(source)
    expansions = [c for c in real.columns if c.endswith(EXPANDED) and not c.startswith(("a_comp", "t_comp"))]
    assert len(expansions) == 27  # 9 base columns (motion, csf, white matter, global) x 3
    table, computed = add_expansions(_without_expansions(real), expansions)
    assert sorted(computed) == sorted(expansions)
    assert table[computed].iloc[0].filter(like="derivative1").isna().all()
    # Row 1 of nilearn's 1.x file has edited motion derivatives (README); every other row matches.
    rows = slice(2, None) if source == V1 else slice(1, None)
    np.testing.assert_allclose(table[computed].iloc[rows], real[computed].iloc[rows], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["regressors", "timeseries"])
def test_selection_equals_load_confounds_on_the_complete_file(tmp_path, name):
    """Computed columns give what nilearn selects from the file that has them, under either name."""
    from nilearn.interfaces.fmriprep import load_confounds

    complete = tmp_path / "complete"
    complete.mkdir()
    shutil.copyfile(V1, complete / f"sub-01_task-rest_desc-confounds_{name}.tsv")
    shutil.copyfile(V1.with_suffix(".json"), complete / f"sub-01_task-rest_desc-confounds_{name}.json")
    reduced = tmp_path / "reduced"
    reduced.mkdir()
    _write(_without_expansions(_table(V1)), reduced / f"sub-01_task-rest_desc-confounds_{name}.tsv")
    settings = CleaningSettings(strategy="36P")
    selection = select_confounds(reduced / BOLD, settings, 30)
    assert selection.confounds_file.name.endswith(f"_{name}.tsv")
    assert len(selection.computed) == 27 and selection.dummy_volumes == [0]
    reference, mask = load_confounds(
        str(complete / BOLD), strategy=("motion", "wm_csf", "global_signal"), motion="full",
        wm_csf="full", global_signal="full", demean=False,
    )  # fmt: skip
    ours = selection.confounds[reference.columns].to_numpy()
    np.testing.assert_allclose(ours[2:], reference.to_numpy()[2:], rtol=1e-6, atol=1e-8)
    assert selection.sample_mask.tolist() == mask.tolist() == list(range(1, 30))


def test_selection_of_a_complete_file_is_nilearns_exactly(tmp_path):
    """Through the temporary copy, a 21.x file's regressors are nilearn's bit for bit."""
    from nilearn.interfaces.fmriprep import load_confounds

    shutil.copyfile(V21, tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv")
    shutil.copyfile(V21.with_suffix(".json"), tmp_path / "sub-01_task-rest_desc-confounds_timeseries.json")
    selection = select_confounds(tmp_path / BOLD, CleaningSettings(strategy="acompcor"), 30)
    reference, mask = load_confounds(
        str(tmp_path / BOLD), strategy=("motion", "high_pass", "compcor"), motion="full",
        compcor="anat_combined", n_compcor=5, demean=False,
    )  # fmt: skip
    assert selection.computed == []
    pd.testing.assert_frame_equal(selection.confounds, reference)
    assert selection.sample_mask.tolist() == mask.tolist() == list(range(3, 30))


@pytest.mark.parametrize(
    "header",
    [
        [
            "CSF",
            "WhiteMatter",
            "GlobalSignal",
            "FramewiseDisplacement",
            "X",
            "Y",
            "Z",
            "RotX",
            "RotY",
            "RotZ",
        ],
        None,
    ],
    ids=["fmriprep-1.1-camelcase", "no-header"],
)
def test_releases_before_1_2_are_one_line(tmp_path, header):
    path = tmp_path / "sub-01_task-rest_desc-confounds_regressors.tsv"
    values = np.random.default_rng(0).normal(size=(30, len(header or range(10))))
    pd.DataFrame(values, columns=header).to_csv(path, sep="\t", index=False, header=header is not None)
    with pytest.raises(DataError, match=r"older than 1\.2\.0 .* re-run fMRIPrep 1\.2\.0 or newer") as err:
        read_confounds_table(path)
    assert "\n" not in str(err.value)


def test_dummy_scans_auto_and_n(tmp_path, caplog):
    shutil.copyfile(V21, tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv")
    bold = tmp_path / BOLD
    auto = select_confounds(bold, CleaningSettings(strategy="none"), 30)
    assert auto.dummy_volumes == [0, 1, 2] and auto.sample_mask.tolist() == list(range(3, 30))
    assert auto.confounds is None
    five = select_confounds(bold, CleaningSettings(strategy="24P", dummy_scans=5), 30)
    assert five.dummy_volumes == list(range(5)) and five.sample_mask.tolist() == list(range(5, 30))
    zero = select_confounds(bold, CleaningSettings(strategy="24P", dummy_scans=0), 30)
    assert zero.dummy_volumes == [] and zero.sample_mask is None  # the outlier columns are ignored
    with pytest.raises(DataError, match="--dummy-scans 30 leaves nothing of a run of 30 volumes"):
        select_confounds(bold, CleaningSettings(strategy="none", dummy_scans=30), 30)
    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level(logging.INFO, logger="neurossm_app"):
        none = select_confounds(empty / BOLD, CleaningSettings(strategy="none"), 30)
    assert none.dummy_volumes == [] and none.sample_mask is None and none.confounds_file is None
    assert "no confounds file, so --dummy-scans auto means 0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="neurossm_app"):  # the pre-flight leaves it to the run
        check_confounds(empty / BOLD, 30, 2.0, CleaningSettings(strategy="none", low_pass=None))
    assert "auto means 0" not in caplog.text


def test_degrees_of_freedom_refusal_and_thin_margin(caplog):
    settings = CleaningSettings(strategy="36P")
    with pytest.raises(DataError) as err:
        check_degrees_of_freedom("sub-01_task-rest", 100, 0.72, 36, settings)
    message = str(err.value)
    for part in (
        "sub-01_task-rest",
        "36 confound regressors",
        "about 12 degrees of freedom",
        "--low-pass none",
    ):
        assert part in message
    assert "smaller strategy (--confounds none)" in message and "longer runs" in message
    with caplog.at_level(logging.WARNING, logger="neurossm_app"):
        thin = check_degrees_of_freedom("run", 100, 0.72, 36, CleaningSettings(low_pass=None))
    assert thin == {"AfterFilter": 98, "Regressors": 36, "Left": 61, "ThinMargin": False}
    assert not caplog.records
    thin = check_degrees_of_freedom("run", 30, 0.72, 24, CleaningSettings(low_pass=None))
    assert thin["ThinMargin"] and thin["Left"] == 29 - 25 and "little signal is left" in caplog.text


# --- through the CLI: a synthetic fMRIPrep dataset whose confounds are nilearn's real files ----------


@pytest.fixture(scope="module")
def base_dataset(tmp_path_factory, atlas_cache) -> Path:
    """Two subjects, 30 volumes (the length of nilearn's files) at TR 2 s."""
    return make_synthetic(
        tmp_path_factory.mktemp("releases") / "ds", atlas_cache, subjects=2, volumes=30, tr=2.0
    )


def _with_confounds(
    base: Path, folder: Path, tables: dict[str, pd.DataFrame], names: dict[str, str] | None = None
) -> Path:
    """A copy of ``base`` whose subjects' confounds are replaced by ``tables`` (subject -> table),
    named ``desc-confounds_<names[subject]>.tsv`` (default ``timeseries``)."""
    ds = folder / "ds"
    shutil.copytree(base, ds, ignore=shutil.ignore_patterns("sourcedata"))
    for subject, table in tables.items():
        func = ds / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
        for old in func.glob("*_desc-confounds_timeseries.*"):
            old.unlink()
        suffix = (names or {}).get(subject, "timeseries")
        _write(table, func / f"sub-{subject}_task-rest_desc-confounds_{suffix}.tsv")
    return ds


def _participant(ds: Path, tmp_path: Path, *options: str) -> int:
    argv = [str(ds), str(tmp_path / "out"), "participant", "--skip-bids-validation"]
    return main([*argv, "-w", str(tmp_path / "w"), "--nprocs", "1", *options])


def _series(out: Path, subject: str) -> list[Path]:
    return sorted(out.glob(f"sub-{subject}/func/*_stat-mean_timeseries.tsv"))


def test_missing_expansions_are_computed_and_equal_nilearn(base_dataset, tmp_path):
    """1.x content without expansion columns under the 1.2-20.1 name (sub-01), and a complete
    21.x file under the 20.2+ name (sub-02)."""
    tables = {"01": _without_expansions(_table(V1)), "02": _table(V21)}
    ds = _with_confounds(base_dataset, tmp_path, tables, names={"01": "regressors"})
    assert _participant(ds, tmp_path, "--confounds", "24P", *NO_FILTER) == 0
    # about 29 and 27 degrees of freedom (1 and 3 dummy volumes) for 24 regressors and the trend
    for subject, computed, dummies, left in (("01", 18, [0], 4), ("02", 0, [0, 1, 2], 2)):
        (tsv,) = _series(tmp_path / "out", subject)
        meta = json.loads(tsv.with_suffix(".json").read_text())
        assert len(meta["ConfoundRegressors"]) == 24 and len(meta["ConfoundsComputed"]) == computed
        assert meta["DummyScans"] == "auto" and meta["DummyVolumes"] == meta["CensoredVolumes"] == dummies
        assert "first volume only" in meta["ConfoundNaNHandling"]
        assert meta["Sources"][2].endswith("_regressors.tsv" if subject == "01" else "_timeseries.tsv")
        assert meta["DegreesOfFreedom"]["ThinMargin"] is True and meta["DegreesOfFreedom"]["Left"] == left
        report = (tmp_path / "out" / f"sub-{subject}.html").read_text()
        # the warning heads the report (its summary) and the run's own section
        assert report.count(f"leaving {left}: little signal") == 2 and "<strong>Warning:</strong>" in report
        bold, mask, confounds, atlas = resolved_sources(meta, tmp_path / "out")
        masker, theirs, kept = masker_series(meta, bold, mask, confounds, atlas, 30)
        assert compare_with_masker(read_tsv(tsv), meta, masker, theirs, kept) > 300


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.strip().splitlines() if line.strip()]


def test_fmriprep_1_1_confounds_fail_that_run_only(base_dataset, tmp_path, capsys):
    camel = _table(V1).rename(columns={"framewise_displacement": "FramewiseDisplacement", "rot_x": "RotX"})
    ds = _with_confounds(base_dataset, tmp_path, {"01": camel, "02": _table(V21)})
    assert _participant(ds, tmp_path, "--confounds", "24P", *NO_FILTER) == 65
    lines = _error_lines(capsys)
    said = [line for line in lines if "older than 1.2.0" in line]
    assert len(said) == 1 and "sub-01_task-rest_desc-confounds_timeseries.tsv" in said[0]
    assert _series(tmp_path / "out", "01") == [] and not list((tmp_path / "out").glob("sub-01/func/*"))
    assert len(_series(tmp_path / "out", "02")) == 1  # the good run is written


def test_runs_too_short_for_the_filter_are_refused():
    """nilearn's Butterworth filter pads 33 volumes (band-pass) or 18 (one edge); scipy's error
    would otherwise end the call as a crash."""
    with pytest.raises(DataError, match=r"run: 33 volumes are too few for the 0.01-0.1 Hz band-pass .*33\)"):
        check_degrees_of_freedom("run", 33, 2.0, 0, CleaningSettings(strategy="none"))
    check_degrees_of_freedom("run", 19, 2.0, 0, CleaningSettings(strategy="none", low_pass=None))
    no_filter = CleaningSettings(strategy="none", low_pass=None, high_pass=None)
    assert check_degrees_of_freedom("run", 5, 2.0, 0, no_filter)["AfterFilter"] == 5


def test_runs_too_short_for_the_band_pass_fail_with_one_line(base_dataset, tmp_path, capsys):
    """30 volumes and the default band-pass: scipy's padding error becomes one line per run."""
    assert _participant(base_dataset, tmp_path, "--confounds", "none") == 65
    said = [line for line in _error_lines(capsys) if "too few for the 0.01-0.1 Hz band-pass" in line]
    assert len(said) == 2 and all("30 volumes" in line for line in said)
    assert not list((tmp_path / "out").glob("sub-*/func/*"))


def test_no_degrees_of_freedom_left_is_refused(rest_dataset, tmp_path, capsys):
    """The issue's case: 36P and the default band-pass on 100 volumes of 0.72 s leave about 12
    degrees of freedom for 37 regressors (and the trend): the run is refused with one line, exit
    65, before anything is written."""
    code = _participant(rest_dataset, tmp_path, "--participant-label", "01", "--confounds", "36P")
    said = [line for line in _error_lines(capsys) if "degrees of freedom" in line]
    assert len(said) == 1
    for part in ("sub-01_task-rest", "36 confound regressors", "about 12 degrees of freedom", "100 volumes"):
        assert part in said[0]
    assert "--confounds none" in said[0] and "--low-pass none" in said[0] and "longer runs" in said[0]
    assert code == 65 and not list((tmp_path / "out").glob("sub-*/func/*"))


def test_a_strategy_without_its_confounds_file_is_input_missing(tmp_path):
    from neurossm_app.errors import InputMissingError

    with pytest.raises(
        InputMissingError, match="confounds file missing for .*sub-01_task-rest_desc-confounds_"
    ):
        select_confounds(tmp_path / BOLD, CleaningSettings(strategy="24P"), 30)
    with pytest.raises(InputMissingError, match="--confounds none"):  # censoring reads the file too
        select_confounds(tmp_path / BOLD, CleaningSettings(strategy="none", fd_threshold=0.5), 30)
