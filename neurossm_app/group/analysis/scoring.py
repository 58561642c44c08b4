"""Class-specific scores of a class CPA map against its Neurosynth reference (design section 8).

The mean of the *other* classes is regressed out of both the reference and the CPA map, so the
score measures what is specific to the class; then the partial correlation, its ROI-permutation
p-value and the Dice overlap of the top-25% ROI masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neurossm_app.group.analysis.class_means import ClassMean
from neurossm_app.group.maps import dice, partial_correlation, top_mask

#: Columns of the scores table, one row per class.
SCORE_COLUMNS = [
    "class", "term", "n_subjects", "n_scans", "n_studies_term", "partial_r", "permutation_p",
    "n_permutations", "dice_top25", "covariates",
]  # fmt: skip

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
    "permutation_p": {"Description": "One-sided p-value of partial_r from ROI permutations"},
    "n_permutations": {"Description": "Number of ROI permutations"},
    "dice_top25": {"Description": "Dice overlap of the top-25% ROI masks (ceil(R/4) ROIs each)"},
    "covariates": {"Description": "What was regressed out besides the intercept"},
}


def reference_score(
    label: int,
    means: dict[int, ClassMean],
    references: dict[int, np.ndarray],
    n_permutations: int,
    permutation_seed: int,
) -> dict[str, Any]:
    """Score class ``label``'s CPA against its reference, given the other classes.

    Parameters
    ----------
    label : int
        A class with a class mean and a reference.
    means, references : dict
        Class index -> :class:`ClassMean` / (R,) reference vector, of every class that has one.
    n_permutations, permutation_seed : int
        ROI permutations of the p-value; class ``k`` uses seed ``permutation_seed + k``.

    Returns
    -------
    dict
        ``partial_r``, ``permutation_p``, ``n_permutations``, ``dice_top25`` (rounded to 6
        decimals) and ``covariates`` (what was regressed out besides the intercept).
    """
    cpa, reference = means[label].cpa, references[label]
    others = {
        "other_classes_cpa": [means[k].cpa for k in means if k != label],
        "other_classes_reference": [references[k] for k in references if k != label],
    }
    covariates = [np.mean(x, axis=0) for x in others.values() if x]
    design = np.column_stack(covariates) if covariates else np.zeros((len(cpa), 0))
    r, p = partial_correlation(reference, cpa, design, n_permutations, permutation_seed + label)
    return {
        "partial_r": round(r, 6),
        "permutation_p": round(p, 6),
        "n_permutations": n_permutations,
        "dice_top25": round(dice(top_mask(reference), top_mask(cpa)), 6),
        "covariates": "+".join(k for k, x in others.items() if x) or "none",
    }
