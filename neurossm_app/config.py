"""Frozen settings, read by the CLI and handed explicitly to the code that needs them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CleaningSettings:
    """How parcel signals are denoised (see docs/usage.md, "Denoising").

    Attributes
    ----------
    strategy
        Confound strategy name (:data:`neurossm_app.participant.clean.CONFOUND_STRATEGIES`).
    high_pass, low_pass
        Butterworth band edges in Hz; ``None`` disables that edge.
    detrend
        Remove a linear trend before filtering.
    standardize
        ``"zscore_sample"``, ``"zscore"``, ``"psc"`` or ``None`` (nilearn's meanings).
    fd_threshold, std_dvars_threshold
        Censor volumes above these (``None``: no censoring). Censored volumes are left out of the
        fit and written as ``n/a`` rows, so series keep their length.
    dummy_scans
        Non-steady-state volumes at the start of each run: ``"auto"`` takes those fMRIPrep flagged
        (``non_steady_state_outlier*`` columns; none without a confounds file), an integer N the
        first N. With every strategy they are left out of the fit and written as ``n/a`` rows.
    min_coverage
        ROIs with a smaller fraction of voxels inside the brain mask are written as ``n/a``.
    """

    strategy: str = "36P"
    high_pass: float | None = 0.01
    low_pass: float | None = 0.1
    detrend: bool = True
    standardize: str | None = "zscore_sample"
    fd_threshold: float | None = None
    std_dvars_threshold: float | None = None
    dummy_scans: int | str = "auto"
    min_coverage: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view for sidecars and provenance files."""
        return asdict(self)
