"""Class-specific scores of a class CPA map against its Neurosynth reference (design section 8).

The mean of the *other* classes is regressed out of both the reference and the CPA map, so the
score measures what is specific to the class; then the partial correlation, its p-value under a
spatial null (BrainSMASH surrogates, :mod:`neurossm_app.group.nulls`) or ROI permutations, and the
Dice overlap of the top-25% ROI masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from neurossm_app.group.analysis.class_means import ClassMean
from neurossm_app.group.maps import dice, partial_correlation, top_mask

#: Columns of the scores table, one row per class.
SCORE_COLUMNS = [
    "class", "term", "n_subjects", "n_scans", "n_studies_term", "partial_r", "p_value", "null_model",
    "n_null_maps", "dice_top25", "covariates",
]  # fmt: skip


@dataclass(frozen=True)
class NullModel:
    """The null of the reference score's p-value.

    Attributes
    ----------
    name : str
        ``brainsmash`` (variogram-matched surrogates) or ``permutation`` (ROI permutations).
    n_maps : int
        Null maps per class (0: no p-value).
    seed : int
        Class ``k`` uses ``seed + k``.
    distances : numpy.ndarray or None
        (R, R) distances between the ROI centroids in mm (brainsmash only).
    """

    name: str
    n_maps: int
    seed: int = 0
    distances: np.ndarray | None = None


#: The JSON sidecar of the scores table.
SCORES_SIDECAR = {
    "class": {"Description": "Class label"},
    "term": {"Description": "Neurosynth term of the class (n/a: none, no reference)"},
    "n_subjects": {"Description": "Subjects whose held-out scans entered the class-mean CPA"},
    "n_scans": {"Description": "Held-out scan x seed pairs that entered the class-mean CPA"},
    "n_studies_term": {"Description": "Neurosynth studies with TF-IDF >= 0.001 for the term"},
    "partial_r": {
        "Description": "Pearson correlation across ROIs of the reference and the class CPA, both "
        "residualized (least squares with intercept) on the mean CPA and mean reference of the other classes"
    },
    "p_value": {
        "Description": "One-sided p-value of partial_r, (1 + #{null r >= r}) / (1 + n_null_maps), "
        "over null maps of the class CPA's residual (see null_model)"
    },
    "null_model": {
        "Description": "brainsmash: variogram-matched surrogates on the distances between ROI centroids "
        "(Burt et al. 2020, NeuroImage 220:117038); permutation: ROI permutations, which ignore spatial "
        "autocorrelation (p too small for smooth maps)"
    },
    "n_null_maps": {"Description": "Number of null maps (surrogates or permutations)"},
    "dice_top25": {"Description": "Dice overlap of the top-25% ROI masks (ceil(R/4) ROIs each)"},
    "covariates": {"Description": "What was regressed out besides the intercept"},
}


def reference_score(
    label: int, means: dict[int, ClassMean], references: dict[int, np.ndarray], null: NullModel
) -> dict[str, Any]:
    """Score class ``label``'s CPA against its reference, given the other classes.

    Parameters
    ----------
    label : int
        A class with a class mean and a reference.
    means, references : dict
        Class index -> :class:`ClassMean` / (R,) reference vector, of every class that has one.
    null : NullModel
        The p-value's null; class ``k`` uses seed ``null.seed + k``.

    Returns
    -------
    dict
        ``partial_r``, ``p_value``, ``null_model``, ``n_null_maps``, ``dice_top25`` (rounded to 6
        decimals) and ``covariates`` (what was regressed out besides the intercept).
    """
    cpa, reference = means[label].cpa, references[label]
    others = {
        "other_classes_cpa": [means[k].cpa for k in means if k != label],
        "other_classes_reference": [references[k] for k in references if k != label],
    }
    covariates = [np.mean(x, axis=0) for x in others.values() if x]
    design = np.column_stack(covariates) if covariates else np.zeros((len(cpa), 0))
    r, p = partial_correlation(
        reference, cpa, design, null.n_maps, null.seed + label, null.name, null.distances
    )
    return {
        "partial_r": round(r, 6),
        "p_value": round(p, 6),
        "null_model": null.name,
        "n_null_maps": null.n_maps,
        "dice_top25": round(dice(top_mask(reference), top_mask(cpa)), 6),
        "covariates": "+".join(k for k, x in others.items() if x) or "none",
    }
