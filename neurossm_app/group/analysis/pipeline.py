"""The ``--analysis`` step from trained units to maps and scores, top-down."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurossm_app.atlases import ATLASES
from neurossm_app.errors import InputMissingError, UsageError
from neurossm_app.files import write_json
from neurossm_app.group.analysis.class_means import ClassMean, class_means, warn_classes_without_mean
from neurossm_app.group.analysis.cpa_cache import held_out_cpa
from neurossm_app.group.analysis.options import AnalysisOptions
from neurossm_app.group.analysis.references import (
    ClassTerms,
    open_class_terms,
    reference_vectors,
    term_map_cache,
)
from neurossm_app.group.analysis.scoring import NullModel, reference_score
from neurossm_app.group.analysis.writers import (
    write_class_means,
    write_cpa_maps,
    write_reference_maps,
    write_roi_table,
    write_scores,
)
from neurossm_app.group.data import GroupDataset
from neurossm_app.group.maps import AtlasGrid
from neurossm_app.group.nulls import MIN_ROIS, centroid_distances, format_p
from neurossm_app.group.presets import GroupSettings
from neurossm_app.provenance import GROUP_PACKAGES, software_versions

LOGGER = logging.getLogger("neurossm_app")


@dataclass(frozen=True)
class AnalysisInputs:
    """What ``--analysis`` needs besides the trained units, checked before the first unit trains.

    Attributes
    ----------
    class_terms : ClassTerms
        The class terms, with the Neurosynth database opened and every term checked.
    grid : AtlasGrid
        The atlas image, its label values matched to the ROI names of the time series.
    cache : Path or None
        Where term maps are cached (``None``: no class has a term).
    distances : numpy.ndarray or None
        (R, R) distances between the ROI centroids (mm) for the brainsmash null (``None``: no
        class has a term, or ``--null-model permutation``).
    """

    class_terms: ClassTerms
    grid: AtlasGrid
    cache: Path | None
    distances: np.ndarray | None = None


def prepare_analysis(
    settings: GroupSettings,
    classes: tuple[str, ...],
    roi_names: tuple[str, ...],
    options: AnalysisOptions,
    run_dir: Path,
    references_optional: bool = False,
) -> AnalysisInputs:
    """Check everything ``--analysis`` reads or writes outside the units, creating nothing.

    The class-to-term table, the Neurosynth files and each term in their vocabulary, the atlas
    image and its ROI names, and a writable map cache; nothing is downloaded. With
    ``references_optional`` (a prediction run), missing Neurosynth files give a warning and CPA
    maps without reference scores.

    Raises
    ------
    InputMissingError
        Neurosynth files or the atlas missing (66), with the ``neurossm-app-fetch`` command.
    DataError
        A term not in the vocabulary, ROI names not in the atlas (65).
    OutputError
        No writable map cache (73).
    """
    from neurossm_app.atlases import get_atlas

    try:
        class_terms = open_class_terms(settings, classes, options)
    except InputMissingError as err:
        if not references_optional:
            raise
        LOGGER.warning("no Neurosynth reference scores: %s", err)
        class_terms = ClassTerms(dict.fromkeys(classes), f"none ({options.neurosynth_dir} incomplete)", None)
    if class_terms.database is not None:
        class_terms.database.vocabulary  # noqa: B018 - read now: a damaged file fails before training
    if settings.atlas in ATLASES:
        atlas = get_atlas(settings.atlas, options.atlas_dir)
    else:  # an atlas of the user's: the image its series were made with (their sidecars say which)
        from neurossm_app.group.atlas_choice import atlas_of_series

        atlas = atlas_of_series(run_dir.parent.parent, settings.atlas)
    grid = AtlasGrid.load(atlas, roi_names)
    distances = null_distances(options, grid) if class_terms.database is not None else None
    return AnalysisInputs(class_terms, grid, term_map_cache(class_terms, run_dir), distances)


def null_distances(options: AnalysisOptions, grid: AtlasGrid) -> np.ndarray | None:
    """The ROI centroids' distances for ``--null-model brainsmash`` (None for permutations).

    Raises
    ------
    UsageError
        Fewer than :data:`~neurossm_app.group.nulls.MIN_ROIS` ROIs with voxels in the atlas image.
    """
    if options.null_model != "brainsmash" or options.n_null_maps < 1:
        return None
    distances = centroid_distances(grid.centroids())
    located = int(np.isfinite(np.diagonal(distances)).sum())
    if located < MIN_ROIS:
        raise UsageError(
            f"--null-model brainsmash fits a variogram over at least {MIN_ROIS} ROIs; the atlas image "
            f"{grid.image_path} has voxels for {located} of the series' ROIs. Use --null-model permutation."
        )
    return distances


def run_cpa_analysis(
    run_dir: Path,
    settings: GroupSettings,
    dataset: GroupDataset,
    splits: pd.DataFrame,
    options: AnalysisOptions,
    device: torch.device | str = "cpu",
    inputs: AnalysisInputs | None = None,
) -> dict[str, Any]:
    """CPA of every complete unit's held-out scans, class maps and Neurosynth reference scores.

    Parameters
    ----------
    run_dir : Path
        ``OUTPUT_DIR/group/<run-name>`` after training (units with ``unit.json``).
    settings : GroupSettings
    dataset : GroupDataset
        As loaded for training (normalized series, labels, ROI names).
    splits : pandas.DataFrame
        ``splits.tsv`` of the run.
    options : AnalysisOptions
    device : torch.device or str
    inputs : AnalysisInputs, optional
        :func:`prepare_analysis`'s result (the group level checks it before training);
        prepared here when not given.

    Returns
    -------
    dict
        The content of ``cpa/analysis.json``.

    Raises
    ------
    InputMissingError
        Neurosynth data or atlas missing (66).
    DataError
        A class term not in the Neurosynth vocabulary (65), checkpoints that do not match.
    """
    if inputs is None:
        inputs = prepare_analysis(settings, dataset.classes, dataset.roi_names, options, run_dir)
    records, incomplete = held_out_cpa(run_dir, settings, dataset, splits, torch.device(device))
    return write_analysis(
        run_dir, settings, (dataset.classes, dataset.roi_names), records, options, inputs,
        {"incomplete_units": incomplete},
    )  # fmt: skip


def write_analysis(
    run_dir: Path,
    settings: GroupSettings,
    names: tuple[tuple[str, ...], tuple[str, ...]],
    records: list[dict[str, Any]],
    options: AnalysisOptions,
    inputs: AnalysisInputs,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """From subject-level CPA records to class means, maps, scores and ``cpa/analysis.json``.

    Parameters
    ----------
    names : (classes, roi_names)
    records : list of dict
        :func:`~.cpa_cache.unit_cpa`'s records (``seed`` may be any sortable model key).
    extra : dict
        More entries of ``analysis.json``.
    """
    classes, roi_names = names
    class_terms, grid = inputs.class_terms, inputs.grid
    means = class_means(records, len(classes), options.cpa_subjects)
    warn_classes_without_mean(classes, means, options.cpa_subjects)
    atlas_label = ATLASES[settings.atlas].bids_label if settings.atlas in ATLASES else settings.atlas
    cpa_dir, maps_dir = run_dir / "cpa", run_dir / "maps"
    pathway_names = records[0]["pathway_names"]
    write_class_means(cpa_dir, atlas_label, classes, means, pathway_names, roi_names)
    references, reference_info = reference_vectors(class_terms, classes, means, grid, inputs.cache)
    null = NullModel(options.null_model, options.n_null_maps, options.null_seed, inputs.distances)
    results = ClassResults(
        classes, roi_names, pathway_names, means, class_terms, references, reference_info, null
    )
    rows = [write_class(results, k, maps_dir, atlas_label, grid, options) for k in range(len(classes))]
    write_scores(maps_dir, atlas_label, rows)
    summary = {
        **analysis_summary(results, options),
        "n_scan_records": len(records),
        **extra,
        "atlas": {"key": settings.atlas, "label": atlas_label, "image": str(grid.image_path)},
        "software": software_versions(GROUP_PACKAGES),
    }
    write_json(cpa_dir / "analysis.json", summary)
    LOGGER.info("CPA in %s, maps and reference scores in %s", cpa_dir, maps_dir)
    return summary


@dataclass(frozen=True)
class ClassResults:
    """What the analysis knows about every class once the CPA and the references are in.

    Attributes
    ----------
    classes, roi_names, pathway_names : tuple of str
    means : dict
        Class index -> :class:`~.class_means.ClassMean` (classes with a selected held-out scan).
    terms : ClassTerms
    references, reference_info : dict
        Class index -> (R,) reference vector / its term map's sidecar (classes with a term and a
        class mean).
    null : NullModel
        The reference scores' null.
    """

    classes: tuple[str, ...]
    roi_names: tuple[str, ...]
    pathway_names: tuple[str, ...]
    means: dict[int, ClassMean]
    terms: ClassTerms
    references: dict[int, np.ndarray]
    reference_info: dict[int, dict[str, Any]]
    null: NullModel


def write_class(
    results: ClassResults,
    label: int,
    maps_dir: Path,
    atlas_label: str,
    grid: AtlasGrid,
    options: AnalysisOptions,
) -> dict[str, Any]:
    """The maps and ROI table of one class, and its row of the scores table."""
    name, mean = results.classes[label], results.means.get(label)
    row: dict[str, Any] = {
        "class": name,
        "term": results.terms.terms.get(name),
        "n_subjects": mean.n_subjects if mean else 0,
        "n_scans": mean.n_scans if mean else 0,
    }
    if mean is None:
        return row
    write_cpa_maps(maps_dir, atlas_label, name, mean, results.pathway_names, grid, options.cpa_subjects)
    reference = results.references.get(label)
    if reference is not None:
        info = results.reference_info[label]
        row["n_studies_term"] = info["n_studies_term"]
        row |= reference_score(label, results.means, results.references, results.null)
        write_reference_maps(maps_dir, atlas_label, name, reference, info, grid)
        LOGGER.info(
            "class %s (term %r): partial r %.3f (p %s, %d %s null maps), Dice of the top 25%% %.3f, "
            "%d subject(s)", name, row["term"], row["partial_r"],
            format_p(row["p_value"], row["n_null_maps"]), row["n_null_maps"], row["null_model"],
            row["dice_top25"], row["n_subjects"],
        )  # fmt: skip
    write_roi_table(maps_dir, atlas_label, name, results.roi_names, mean, reference, results.pathway_names)
    return row


def analysis_summary(results: ClassResults, options: AnalysisOptions) -> dict[str, Any]:
    """The options, terms, pathways and per-class counts and weights of ``cpa/analysis.json``."""
    classes = {}
    for k, name in enumerate(results.classes):
        mean = results.means.get(k)
        classes[name] = {
            "n_subjects": mean.n_subjects if mean else 0,
            "n_scans": mean.n_scans if mean else 0,
            "weights": dict(zip(results.pathway_names, np.round(mean.weights, 6).tolist(), strict=True))
            if mean
            else None,
            "neurosynth": results.reference_info.get(k),
        }
    return {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "target_class": "the true class of each scan (its logit is explained)",
        "class_terms": results.terms.terms,
        "class_terms_source": results.terms.source,
        "pathways": list(results.pathway_names),
        "classes": classes,
    }
