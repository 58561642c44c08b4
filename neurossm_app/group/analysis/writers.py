"""The files of ``--analysis``: class means, ROI-space NIfTI maps, ROI tables, the scores table.

Names come from :func:`neurossm_app.bids.group_file_name` / :func:`~neurossm_app.bids.group_map_name`;
every file is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurossm_app.bids import group_file_name, group_map_name
from neurossm_app.files import atomic_path, write_json, write_tsv
from neurossm_app.group.analysis.class_means import ClassMean
from neurossm_app.group.analysis.scoring import SCORE_COLUMNS, SCORES_SIDECAR
from neurossm_app.group.maps import TOP_FRACTION, AtlasGrid, describe, save_dseg_table, save_nifti, top_mask


def write_class_means(
    cpa_dir: Path,
    atlas_label: str,
    classes: tuple[str, ...],
    means: dict[int, ClassMean],
    pathway_names: tuple[str, ...],
    roi_names: tuple[str, ...],
) -> None:
    """``atlas-<A>_label-<class>_desc-classMean_cpa.npz`` per class, ``atlas-<A>_desc-classMeans_cpa.tsv``."""
    rows = []
    for label, mean in means.items():
        name = classes[label]
        path = cpa_dir / group_file_name(
            {"atlas": atlas_label, "label": name, "desc": "classMean"}, "cpa", ".npz"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(
                handle, cpa=mean.cpa, weighted_maps=mean.weighted_maps, weights=mean.weights,
                dominant_pathway=mean.dominant, pathway_names=np.array(pathway_names, dtype=str),
                roi_names=np.array(roi_names, dtype=str), label=np.array(name), n_subjects=mean.n_subjects,
                n_scans=mean.n_scans, n_seeds=mean.n_seeds,
            )  # fmt: skip
        rows.append(class_mean_row(name, mean, pathway_names))
    table = cpa_dir / group_file_name({"atlas": atlas_label, "desc": "classMeans"}, "cpa", ".tsv")
    write_tsv(table, pd.DataFrame(rows))


def class_mean_row(name: str, mean: ClassMean, pathway_names: tuple[str, ...]) -> dict[str, Any]:
    """One row of the class-means table: counts, mean weights, ROIs dominated by each pathway."""
    counts = np.bincount(mean.dominant, minlength=len(pathway_names))
    return {
        "class": name,
        "n_subjects": mean.n_subjects,
        "n_scans": mean.n_scans,
        "n_seeds": mean.n_seeds,
        **{f"weight_{p}": round(float(w), 6) for p, w in zip(pathway_names, mean.weights, strict=True)},
        **{f"dominant_rois_{p}": int(c) for p, c in zip(pathway_names, counts, strict=True)},
    }


def write_cpa_maps(
    maps_dir: Path,
    atlas_label: str,
    name: str,
    mean: ClassMean,
    pathway_names: tuple[str, ...],
    grid: AtlasGrid,
    cpa_subjects: str,
) -> None:
    """``desc-cpaScore_statmap``, ``desc-cpaTop25_mask`` and ``desc-cpaDominantPathway_dseg`` (+ ``.tsv``)."""

    def path(desc, suffix, ext=".nii.gz"):
        return maps_dir / group_map_name(atlas_label, name, desc, suffix, ext)

    common = {"Atlas": atlas_label, "Class": name, "NSubjects": mean.n_subjects, "CPASubjects": cpa_subjects}
    save_nifti(
        path("cpaScore", "statmap"),
        grid.volume(mean.cpa, np.float32),
        describe(
            "Class-mean Calibrated Pathway Attribution: each ROI's voxels hold its CPA value "
            "(sum over pathways of w_p m_p(r); the values over ROIs sum to 1).",
            Units="fraction of attribution (unitless)", **common,
        ),
    )  # fmt: skip
    save_nifti(
        path("cpaTop25", "mask"),
        grid.volume(top_mask(mean.cpa), np.uint8),
        describe(f"The ceil(R/4) ROIs with the largest class-mean CPA (top {TOP_FRACTION:.0%}).", **common),
    )
    save_nifti(
        path("cpaDominantPathway", "dseg"),
        grid.volume(mean.dominant + 1, np.int16),
        describe(
            "Dominant pathway of the class-mean CPA per ROI (argmax_p of the mean w_p m_p(r)); "
            "values index the .tsv look-up table, 0 is outside the atlas.",
            **common,
        ),
    )
    save_dseg_table(path("cpaDominantPathway", "dseg", ".tsv"), list(pathway_names))


def write_reference_maps(
    maps_dir: Path, atlas_label: str, name: str, vector: np.ndarray, info: dict[str, Any], grid: AtlasGrid
) -> None:
    """``desc-neurosynthReferenceScore_statmap`` and ``desc-neurosynthReferenceTop25_mask``."""

    def path(desc, suffix):
        return maps_dir / group_map_name(atlas_label, name, desc, suffix, ".nii.gz")

    common = {
        "Atlas": atlas_label,
        "Class": name,
        "Term": info["term"],
        "NStudiesTerm": info["n_studies_term"],
    }
    save_nifti(
        path("neurosynthReferenceScore", "statmap"),
        grid.volume(vector, np.float32),
        describe(
            "Neurosynth reference: NiMARE MKDAChi2 association z-map of the term (studies with "
            "TF-IDF >= 0.001 vs the rest), resampled to the atlas grid and averaged within each ROI.",
            Units="z", **common,
        ),
    )  # fmt: skip
    save_nifti(
        path("neurosynthReferenceTop25", "mask"),
        grid.volume(top_mask(vector), np.uint8),
        describe(f"The ceil(R/4) ROIs with the largest reference value (top {TOP_FRACTION:.0%}).", **common),
    )


def write_roi_table(
    maps_dir: Path,
    atlas_label: str,
    name: str,
    roi_names: tuple[str, ...],
    mean: ClassMean,
    reference: np.ndarray | None,
    pathway_names: tuple[str, ...],
) -> None:
    """``label-<class>_desc-cpa_rois.tsv``: the class's map values per ROI (and its reference's)."""
    table = pd.DataFrame(
        {"roi": roi_names, "cpa": np.round(mean.cpa, 8), "cpa_top25": top_mask(mean.cpa).astype(int)}
    )
    table["dominant_pathway"] = [pathway_names[i] for i in mean.dominant]
    if reference is not None:
        table["reference"] = np.round(reference, 6)
        table["reference_top25"] = top_mask(reference).astype(int)
    write_tsv(maps_dir / group_map_name(atlas_label, name, "cpa", "rois", ".tsv"), table)


def write_scores(maps_dir: Path, atlas_label: str, rows: list[dict[str, Any]]) -> Path:
    """``atlas-<A>_desc-neurosynthReference_scores.tsv`` (one row per class) and its ``.json``."""
    path = maps_dir / group_map_name(atlas_label, None, "neurosynthReference", "scores", ".tsv")
    write_tsv(path, pd.DataFrame(rows).reindex(columns=SCORE_COLUMNS))
    write_json(path.with_suffix(".json"), SCORES_SIDECAR)
    return path
