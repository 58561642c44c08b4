"""Reports as a person sees them: rendered in headless Chromium, every figure drawn, no errors."""

from __future__ import annotations

import numpy as np

from tests.browser import render


def test_participant_report_renders(participant_outputs, tmp_path):
    out = participant_outputs
    report = out / "sub-01.html"
    assert report.is_file()
    page = render(report, screenshot=tmp_path / "sub-01.png")
    assert page.console_errors == []
    assert page.broken_images == 0
    # four figures per run: coverage, carpet, motion, connectivity
    assert len(page.figure_sizes) == 4
    assert all(w > 100 and h > 50 for w, h in page.figure_sizes)
    for heading in (
        "Summary",
        "Cleaning settings",
        "Atlas coverage within the brain mask",
        "ROI signals before and after cleaning",
        "Framewise displacement and censored volumes",
        "ROI correlation matrix (cleaned signals, ordered by network)",
    ):
        assert heading in page.headings
    # the numbers are readable as text too (terminal browsers)
    assert "36P" in page.text and "Schaefer400n17" in page.text
    screenshot = (tmp_path / "sub-01.png").read_bytes()
    assert screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(screenshot) > 20_000


def test_roi_groups_follow_networks():
    from neurossm_app.reports.participant import roi_groups

    names = ["17Networks_LH_VisCent_ExStr_1", "7Networks_RH_Default_PFC_2", "Precentral_L", "Vermis_3"]
    assert roi_groups(names) == ["VisCent", "Default", "L", "other"]
    assert np.argsort(roi_groups(names), kind="stable").tolist() == [1, 2, 0, 3]


def test_participant_report_qc_warnings_provenance(participant_outputs, tmp_path):
    """The QC table, the boldref under the coverage, warnings at the top for a thin or
    degenerate run, and the provenance block, as Chromium shows them."""
    import json
    import shutil

    from neurossm_app.reports.participant import build_participant_report

    out = tmp_path / "out"
    shutil.copytree(participant_outputs / "sub-02", out / "sub-02")
    sidecar = next((out / "sub-02").rglob("*_stat-mean_timeseries.json"))
    meta = json.loads(sidecar.read_text())
    assert (out / "sub-02" / "figures").is_dir()
    coverage = next((out / "sub-02" / "figures").glob("*_desc-coverage_bold.svg")).read_text()
    assert "coverage over the run's boldref" in coverage  # neurossm-synth writes fMRIPrep's boldref
    motion = json.loads(next((out / "sub-02" / "figures").glob("*_desc-motion_bold.json")).read_text())
    assert 0 < motion["MeanFD"] <= motion["MaxFD"] and motion["FDVolumes"] == 99
    meta["DegreesOfFreedom"] = {"AfterFilter": 40, "Regressors": 36, "Left": 3, "ThinMargin": True}
    meta["CensoredVolumes"] = list(range(60))
    sidecar.write_text(json.dumps(meta))
    provenance = {
        "neurossm-app": "9.9",
        "command_line": "neurossm-app in out participant",
        "date": "2026-01-02",
    }
    report = build_participant_report(out, "02", provenance=provenance)
    page = render(report, screenshot=tmp_path / "sub-02.png")
    assert page.console_errors == [] and page.broken_images == 0
    assert page.headings[:3] == [
        "neurossm-app participant report: sub-02",
        "Summary",
        "Quality control per run",
    ]
    assert "Provenance" in page.headings
    summary = page.text.split("Quality control per run")[0]  # the warnings come before the table
    assert "Warning: sub-02_task-rest (Schaefer400n17): The band-pass keeps about 40" in summary
    assert "60 of 100 volumes are censored" in summary
    for column in ("mean FD (mm)", "max FD (mm)", "dummy volumes", "censored", "regressors", "DOF left"):
        assert column in page.text
    assert "60 (60%)" in page.text and f"{motion['MaxFD']:.2f}" in page.text
    assert "neurossm-app 9.9, 2026-01-02." in page.text and "neurossm-app in out participant" in page.text
    assert "ConfoundStrategy" in page.text and "36P" in page.text


def test_group_report_texts_follow_the_options():
    """Which scans the weights average, the null of p and its precision, and why a score table
    is empty, as the options and the run say."""
    import pandas as pd

    from neurossm_app.reports.cpa import _weights_section, scores_section
    from neurossm_app.reports.html import render_page

    means = pd.DataFrame(
        {"class": ["F", "M"], "n_subjects": [3, 3], "n_scans": [3, 3], "weight_raw_s1": [1.0, 1.0]}
    )
    everything = render_page("t", "", [_weights_section(means, "all")])
    assert (
        "all held-out scans (--cpa-subjects all)" in everything and "correctly classified" not in everything
    )
    scores = pd.DataFrame(
        {
            "class": ["A", "B", "C"], "term": ["a", "b", None], "partial_r": [0.4, 0.1, None],
            "p_value": [1 / 101, 0.4257, None], "null_model": ["brainsmash", "brainsmash", None],
            "n_null_maps": [100.0, 100.0, None],
        }
    )  # fmt: skip
    page = render_page("t", "", [scores_section(scores, {})])
    assert "<td>&lt; 0.01</td>" in page and "<td>0.43</td>" in page and "0.0099" not in page
    assert "100 variogram-matched surrogate maps" in page and "No score for C" in page
    assert "<td>100</td>" in page  # a count stays a count
    empty = scores.assign(term=None, partial_r=None, p_value=None)
    page = render_page("t", "", [scores_section(empty, {"class_terms_source": "preset hcp-rest"})])
    assert "No class has a Neurosynth term (from preset hcp-rest)" in page and "--class-terms" in page
