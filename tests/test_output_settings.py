"""One participant configuration per OUTPUT_DIR, several atlases in it, through the real CLI.

One subject (of two) with one short run keeps it fast: the two atlas calls share a work directory, so the
later calls recompute nothing they have seen.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from neurossm_app.cli import main
from neurossm_app.participant.output_settings import RECORD_NAME, check_output_settings, participant_settings
from tests.conftest import make_synthetic

# --low-pass none: 36P on 60 volumes leaves enough degrees of freedom without the low-pass
COMMON = ["--skip-bids-validation", "--participant-label", "01", "--nprocs", "1", "--low-pass", "none"]
ATLASES = {"schaefer400": "Schaefer400n17", "aal3v2": "AAL3v2"}


def _call(ds, out, *args):
    return main([str(ds), str(out), "participant", *COMMON, "-w", str(out.parent / "work"), *args])


def _files(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, atlas_cache):
    return make_synthetic(tmp_path_factory.mktemp("one") / "ds", atlas_cache, subjects=2, volumes=60, seed=5)


@pytest.fixture(scope="module")
def two_atlases(small_dataset, tmp_path_factory):
    """OUTPUT_DIR after Schaefer-400, then AAL3v2, both 36P."""
    out = tmp_path_factory.mktemp("two_atlases") / "out"
    for key in ATLASES:
        assert _call(small_dataset, out, "--atlas", key, "--confounds", "36P") == 0
    return out


def test_the_settings_are_recorded_without_the_atlas(two_atlases):
    record = json.loads((two_atlases / RECORD_NAME).read_text())
    settings = record["Settings"]
    assert settings["ConfoundStrategy"] == "36P"
    assert settings["LowPass"] is None and settings["HighPass"] == 0.01
    assert settings["Space"] == "MNI152NLin2009cAsym"
    assert not [key for key in settings if "atlas" in key.lower()]
    # the sidecars record the same values under the same keys
    [series] = two_atlases.glob("sub-*/func/*_atlas-AAL3v2_stat-mean_timeseries.json")
    sidecar = json.loads(series.read_text())
    cleaning = {k: v for k, v in settings.items() if k != "Space"}
    assert {k: sidecar.get(k) for k in cleaning} == cleaning
    assert f"_space-{settings['Space']}_" in series.name


def test_each_atlas_keeps_its_figures(two_atlases):
    figures = sorted(p.name for p in two_atlases.glob("sub-01/figures/*.svg"))
    for label in ATLASES.values():
        mine = [name for name in figures if f"_atlas-{label}_" in name]
        assert sorted(re.search(r"_desc-(\w+)_bold", n).group(1) for n in mine) == [
            "carpet",
            "connectivity",
            "coverage",
            "motion",
        ]
    assert len(figures) == 8  # no figure without the atlas entity


def test_the_report_has_one_section_per_atlas_with_its_own_figures(two_atlases):
    page = (two_atlases / "sub-01.html").read_text()
    sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.DOTALL))
    for label in ATLASES.values():
        [anchor] = [a for a in sections if a.endswith(f"atlas-{label}")]
        body = sections[anchor]
        assert f"<td>{label}</td>" in body  # its settings table names its atlas
        for svg in two_atlases.glob(f"sub-01/figures/*_atlas-{label}_*.svg"):
            drawn = svg.read_text()
            assert drawn[drawn.find("<svg") :] in body, svg.name
        other = next(v for v in ATLASES.values() if v != label)
        for svg in two_atlases.glob(f"sub-01/figures/*_atlas-{other}_desc-carpet_bold.svg"):
            assert svg.read_text()[svg.read_text().find("<svg") :] not in body


def test_citation_names_both_atlases(two_atlases):
    text = (two_atlases / "logs" / "CITATION.md").read_text()
    assert "the AAL3v2 atlas (166 regions) and the Schaefer400n17 atlas (400 regions)" in text
    assert "Schaefer A, et al. (2018)" in text and "Rolls ET" in text


def test_other_settings_are_refused_before_anything_is_written(two_atlases, small_dataset, capsys):
    before = _files(two_atlases)
    capsys.readouterr()
    assert _call(small_dataset, two_atlases, "--confounds", "none") == 64
    line = _error_line(capsys)
    assert line.startswith("neurossm-app: error: OUTPUT_DIR ")
    assert "--confounds 36P there, none now" in line
    assert RECORD_NAME in line and "another OUTPUT_DIR" in line
    assert _files(two_atlases) == before  # the 36P series, figures and report byte-identical


def test_dummy_scans_are_part_of_the_configuration(two_atlases, small_dataset, capsys):
    before = _files(two_atlases)
    capsys.readouterr()
    assert _call(small_dataset, two_atlases, "--confounds", "36P", "--dummy-scans", "2") == 64
    assert "(--dummy-scans auto there, 2 now; read from " in _error_line(capsys)
    assert _files(two_atlases) == before


def test_an_older_output_dir_is_read_back_from_its_sidecars(two_atlases, small_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(two_atlases, out)
    shutil.copytree(two_atlases.parent / "work", tmp_path / "work")
    (out / RECORD_NAME).unlink()  # as an older neurossm-app left it
    before = _files(out)
    capsys.readouterr()
    assert _call(small_dataset, out, "--confounds", "none", "--no-detrend") == 64
    line = _error_line(capsys)
    assert "--confounds 36P there, none now; detrend (--no-detrend) on there, off now" in line
    assert "the sidecar sub-01/func/sub-01_task-rest_space-MNI152NLin2009cAsym_atlas-" in line
    assert _files(out) == before
    # the same settings are accepted, and the record is written then
    assert _call(small_dataset, out, "--atlas", "aal3v2", "--confounds", "36P") == 0
    assert json.loads((out / RECORD_NAME).read_text())["Settings"]["ConfoundStrategy"] == "36P"


def test_a_record_edited_by_hand_is_a_data_error(tmp_path):
    from neurossm_app.config import CleaningSettings
    from neurossm_app.errors import DataError

    (tmp_path / RECORD_NAME).write_text('{"ConfoundStrategy": "36P"}')
    with pytest.raises(DataError, match=f"{RECORD_NAME} is not a settings record.*delete it"):
        check_output_settings(tmp_path, CleaningSettings(), "MNI152NLin2009cAsym")


def test_every_cleaning_setting_is_recorded():
    """A setting added to CleaningSettings joins the record without a change here."""
    from dataclasses import fields

    from neurossm_app.config import CleaningSettings

    record = participant_settings(CleaningSettings(), "MNI152NLin6Asym")
    assert len(record) == len(fields(CleaningSettings)) + 1
    assert record["FDThreshold"] is None and record["MinCoverage"] == 0.5
    assert record["Space"] == "MNI152NLin6Asym"


def _legacy_sidecar(out, subject, **fields):
    """A series sidecar as an older neurossm-app wrote it (no record beside it)."""
    from neurossm_app.config import CleaningSettings

    made = participant_settings(CleaningSettings(), "MNI152NLin2009cAsym")
    del made["Space"]
    sidecar = out / f"sub-{subject}/func/sub-{subject}_task-rest_space-MNI152NLin2009cAsym_atlas-AAL3v2"
    sidecar = sidecar.parent / f"{sidecar.name}_stat-mean_timeseries.json"
    sidecar.parent.mkdir(parents=True)
    sidecar.write_text(json.dumps({k: v for k, v in {**made, **fields}.items() if v != "drop"}))


def test_a_setting_older_sidecars_lack_is_not_recorded(tmp_path):
    from neurossm_app.config import CleaningSettings
    from neurossm_app.errors import UsageError

    _legacy_sidecar(tmp_path, "01", MinCoverage="drop")
    with pytest.raises(
        UsageError, match=r"\(--min-coverage not recorded there, 0.5 now; read from the sidecar sub-01/"
    ):
        check_output_settings(tmp_path, CleaningSettings(), "MNI152NLin2009cAsym")


def test_series_made_two_ways_are_refused_even_when_one_matches(tmp_path):
    from neurossm_app.config import CleaningSettings
    from neurossm_app.errors import UsageError

    _legacy_sidecar(tmp_path, "01")
    _legacy_sidecar(tmp_path, "02", ConfoundStrategy="24P")
    with pytest.raises(UsageError, match=r"--confounds 24P there, 36P now; read from the sidecar sub-02/"):
        check_output_settings(tmp_path, CleaningSettings(), "MNI152NLin2009cAsym")
    # the space comes from the file names
    with pytest.raises(UsageError, match=r"--space MNI152NLin2009cAsym there, MNI152NLin6Asym now"):
        check_output_settings(tmp_path, CleaningSettings(), "MNI152NLin6Asym")
