"""What ``--analysis`` does beyond the run's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neurossm_app.errors import UsageError

CPA_SUBJECTS = ("correct", "all")


@dataclass(frozen=True)
class AnalysisOptions:
    """What ``--analysis`` does beyond the run's settings.

    Attributes
    ----------
    neurosynth_dir
        ``--neurosynth-dir``: Neurosynth files in ``neurosynth_dir/neurosynth``, maps cache in
        ``neurosynth_dir/maps``.
    class_terms
        ``--class-terms`` JSON file replacing the preset's class -> term table.
    cpa_subjects
        ``correct`` (class means over correctly classified scans) or ``all``.
    n_permutations
        ROI permutations of the reference score's p-value.
    permutation_seed
        Seed of the permutations (class k uses ``permutation_seed + k``).
    atlas_dir
        nilearn data directory for AAL3v2 (``--atlas-dir``).

    Nothing is downloaded: missing Neurosynth files or atlases are an error before training
    (:func:`~neurossm_app.group.analysis.pipeline.prepare_analysis`).
    """

    neurosynth_dir: Path
    class_terms: Path | None = None
    cpa_subjects: str = "correct"
    n_permutations: int = 1000
    permutation_seed: int = 0
    atlas_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.cpa_subjects not in CPA_SUBJECTS:
            raise UsageError(
                f"--cpa-subjects must be one of {', '.join(CPA_SUBJECTS)}, got {self.cpa_subjects!r}."
            )
        if self.n_permutations < 0:
            raise UsageError(f"--n-permutations must not be negative (got {self.n_permutations}).")
