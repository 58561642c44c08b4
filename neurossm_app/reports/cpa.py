"""Report sections for Calibrated Pathway Attribution (present only after ``group --analysis``)."""

from __future__ import annotations

from pathlib import Path

from neurossm_app.reports.html import Section


def cpa_sections(run_dir: Path) -> list[Section]:
    """Sections for the CPA outputs of ``run_dir``; none when the analysis was not run."""
    maps_dir = run_dir / "maps"
    if not maps_dir.is_dir():
        return []
    return []
