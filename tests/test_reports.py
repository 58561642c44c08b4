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
