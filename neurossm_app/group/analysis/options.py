"""What ``--analysis`` does beyond the run's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neurossm_app.errors import UsageError
from neurossm_app.group.nulls import NULL_MODELS

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
    null_model
        The reference score's null: ``brainsmash`` (variogram-matched surrogates on the ROI
        centroids' distances) or ``permutation`` (ROI permutations).
    n_null_maps
        Null maps (surrogates or permutations) of the reference score's p-value.
    null_seed
        Seed of the null maps (class k uses ``null_seed + k``).
    atlas_dir
        nilearn data directory for AAL3v2 (``--atlas-dir``).

    Nothing is downloaded: missing Neurosynth files or atlases are an error before training
    (:func:`~neurossm_app.group.analysis.pipeline.prepare_analysis`).
    """

    neurosynth_dir: Path
    class_terms: Path | None = None
    cpa_subjects: str = "correct"
    null_model: str = "brainsmash"
    n_null_maps: int = 1000
    null_seed: int = 0
    atlas_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.cpa_subjects not in CPA_SUBJECTS:
            raise UsageError(
                f"--cpa-subjects must be one of {', '.join(CPA_SUBJECTS)}, got {self.cpa_subjects!r}."
            )
        if self.null_model not in NULL_MODELS:
            raise UsageError(
                f"--null-model must be one of {', '.join(NULL_MODELS)}, got {self.null_model!r}."
            )
        if self.n_null_maps < 0:
            raise UsageError(f"--n-null-maps must not be negative (got {self.n_null_maps}).")
