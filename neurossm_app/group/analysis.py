"""``group --analysis``: CPA of every held-out scan, class maps, Neurosynth reference scores.

Reads what the units wrote (checkpoints, ``splits.tsv``) and the same normalized series the
evaluation used (:func:`neurossm_app.group.data.load_dataset`), and writes under ``RUN_DIR``:

``cpa/seed-S/<scan>_cpa.npz``
    One per held-out scan and seed (:func:`neurossm_app.group.cpa.save_cpa`); the scan's fold is
    the unit whose test set it was in. Existing files made by the same checkpoint are reused.
``cpa/atlas-<A>_label-<class>_desc-classMean_cpa.npz``, ``cpa/atlas-<A>_desc-classMeans_cpa.tsv``
    Class means (see :func:`class_means`) and a per-class table of pathway weights.
``maps/space-MNI152NLin2009cAsym_atlas-<A>_label-<class>_desc-<desc>_<suffix>.nii.gz`` (+ ``.json``)
    ``cpaScore_statmap``, ``cpaTop25_mask``, ``cpaDominantPathway_dseg`` (+ ``.tsv``), and when the
    class has a Neurosynth term ``neurosynthReferenceScore_statmap`` and
    ``neurosynthReferenceTop25_mask``; ``..._label-<class>_desc-cpa_rois.tsv`` (the same values per
    ROI); ``..._atlas-<A>_desc-neurosynthReference_scores.tsv`` (one row per class).
``cpa/analysis.json``
    Options, terms, counts and software versions.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurossm_app.bids import group_map_name, sanitize_label
from neurossm_app.errors import DataError, UsageError
from neurossm_app.files import write_json, write_tsv
from neurossm_app.group.cpa import compute_cpa, load_cpa, save_cpa
from neurossm_app.group.data import NORMALIZATION, GroupDataset
from neurossm_app.group.maps import (
    TOP_FRACTION,
    describe,
    dice,
    parcellate,
    partial_correlation,
    roi_indices,
    roi_volume,
    save_dseg_table,
    save_nifti,
    top_mask,
)
from neurossm_app.group.presets import GroupSettings
from neurossm_app.provenance import GROUP_PACKAGES, software_versions

LOGGER = logging.getLogger("neurossm_app")
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
    download
        Fetch missing Neurosynth files with NiMARE (False: fail at once).
    """

    neurosynth_dir: Path
    class_terms: Path | None = None
    cpa_subjects: str = "correct"
    n_permutations: int = 1000
    permutation_seed: int = 0
    atlas_dir: Path | None = None
    download: bool = True

    def __post_init__(self) -> None:
        if self.cpa_subjects not in CPA_SUBJECTS:
            raise UsageError(
                f"--cpa-subjects must be one of {', '.join(CPA_SUBJECTS)}, got {self.cpa_subjects!r}."
            )
        if self.n_permutations < 0:
            raise UsageError(f"--n-permutations must not be negative (got {self.n_permutations}).")


@dataclass
class ClassMean:
    """Class-level CPA (see :func:`class_means`).

    Attributes
    ----------
    weighted_maps : numpy.ndarray, (P, R)
        Mean of ``w_p m_p(r)``; its sum over p is the class CPA.
    weights : numpy.ndarray, (P,)
        Mean calibration weights.
    n_subjects, n_scans, n_seeds : int
        Distinct subjects, scan-seed pairs and seeds that contributed.
    """

    weighted_maps: np.ndarray
    weights: np.ndarray
    n_subjects: int
    n_scans: int
    n_seeds: int

    @property
    def cpa(self) -> np.ndarray:
        """Class CPA, (R,)."""
        return self.weighted_maps.sum(axis=0)

    @property
    def dominant(self) -> np.ndarray:
        """Dominant pathway of the class mean per ROI (index), (R,)."""
        return self.weighted_maps.argmax(axis=0)


# --------------------------------------------------------------------------------------------
# Subject-level CPA
# --------------------------------------------------------------------------------------------


def cpa_path(run_dir: Path, seed: int, scan_name: str) -> Path:
    """``RUN_DIR/cpa/seed-S/<scan>_cpa.npz``."""
    return run_dir / "cpa" / f"seed-{seed}" / f"{scan_name}_cpa.npz"


def unit_cpa(
    run_dir: Path,
    dataset: GroupDataset,
    test: np.ndarray,
    fold: int,
    seed: int,
    marker: dict[str, Any],
    device: torch.device,
) -> list[dict[str, Any]]:
    """CPA of the held-out scans of one complete unit (reusing files of the same checkpoint).

    Returns
    -------
    list of dict
        Per scan: ``scan``, ``subject``, ``seed``, ``fold``, ``true``, ``predicted`` (class
        indices), ``weighted_maps`` (P, R), ``weights`` (P,), ``pathway_names``.
    """
    from neurossm_app.group.checkpoints import load_neurossm

    checkpoint = run_dir / marker["checkpoint"]
    sha = str(marker.get("checkpoint_sha256", ""))
    records, model = [], None
    for index in test:
        scan = dataset.scans[index]
        path = cpa_path(run_dir, seed, scan.name)
        arrays = load_cpa(path) if path.is_file() else None
        if arrays is None or str(arrays["checkpoint_sha256"]) != sha:
            if model is None:
                model, info = load_neurossm(checkpoint)
                _check_checkpoint(info, dataset, checkpoint)
                model.to(device)
            target = int(dataset.labels[index])
            result = compute_cpa(model, dataset.series[index], target, device)
            save_cpa(
                path, result,
                scan=scan.name, subject=scan.subject, fold=fold, seed=seed,
                true_label=dataset.classes[target], predicted_label=dataset.classes[result.predicted],
                target_class=target, classes=np.array(dataset.classes, dtype=str),
                roi_names=np.array(dataset.roi_names, dtype=str), checkpoint_sha256=sha,
            )  # fmt: skip
            arrays = load_cpa(path)
        classes = list(dataset.classes)
        records.append(
            {
                "scan": scan.name,
                "subject": scan.subject,
                "seed": seed,
                "fold": fold,
                "true": classes.index(str(arrays["true_label"])),
                "predicted": classes.index(str(arrays["predicted_label"])),
                "weighted_maps": arrays["weighted_maps"],
                "weights": arrays["weights"],
                "pathway_names": tuple(str(n) for n in arrays["pathway_names"]),
            }
        )
    return records


def _check_checkpoint(info: dict[str, Any], dataset: GroupDataset, path: Path) -> None:
    if (
        tuple(info.get("classes", ())) != dataset.classes
        or tuple(info.get("roi_names", ())) != dataset.roi_names
    ):
        raise DataError(
            f"checkpoint {path} was trained on other classes or ROIs than the data selected now; "
            "repeat the run's original selection, or choose a new --run-name."
        )
    if info.get("normalization") != NORMALIZATION:
        raise DataError(
            f"checkpoint {path} expects another input normalization ({info.get('normalization')!r}); "
            "re-run the group level with this version of neurossm-app."
        )


def class_means(
    records: list[dict[str, Any]], n_classes: int, subjects: str = "correct"
) -> dict[int, ClassMean]:
    """Class-level CPA: subjects first, then seeds.

    For each seed and class, each subject's selected scans of that class (``correct``: those the
    model classified correctly; ``all``: every one) are averaged, then the subjects are averaged
    (so subjects with more runs do not weigh more), then the seeds. Classes with no selected scan
    are left out.
    """
    out = {}
    for label in range(n_classes):
        per_seed_maps, per_seed_weights, subjects_used, n_scans = [], [], set(), 0
        for seed in sorted({r["seed"] for r in records}):
            chosen = [
                r for r in records
                if r["seed"] == seed and r["true"] == label and (subjects == "all" or r["predicted"] == label)
            ]  # fmt: skip
            if not chosen:
                continue
            by_subject: dict[str, list[dict[str, Any]]] = {}
            for r in chosen:
                by_subject.setdefault(r["subject"], []).append(r)
            maps = [np.mean([r["weighted_maps"] for r in rs], axis=0) for rs in by_subject.values()]
            weights = [np.mean([r["weights"] for r in rs], axis=0) for rs in by_subject.values()]
            per_seed_maps.append(np.mean(maps, axis=0))
            per_seed_weights.append(np.mean(weights, axis=0))
            subjects_used |= set(by_subject)
            n_scans += len(chosen)
        if per_seed_maps:
            out[label] = ClassMean(
                np.mean(per_seed_maps, axis=0),
                np.mean(per_seed_weights, axis=0),
                len(subjects_used),
                n_scans,
                len(per_seed_maps),
            )
    return out


# --------------------------------------------------------------------------------------------
# The whole analysis
# --------------------------------------------------------------------------------------------


def run_analysis(
    run_dir: Path,
    settings: GroupSettings,
    dataset: GroupDataset,
    splits: pd.DataFrame,
    options: AnalysisOptions,
    device: torch.device | str = "cpu",
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

    Returns
    -------
    dict
        The content of ``cpa/analysis.json``.

    Raises
    ------
    InputMissingError
        Neurosynth data missing offline (66), atlas missing.
    DataError
        A class term not in the Neurosynth vocabulary (65), checkpoints that do not match.
    """
    import nibabel as nib

    from neurossm_app.atlases import ATLASES, get_atlas
    from neurossm_app.group.neurosynth import NeurosynthDatabase, resolve_class_terms
    from neurossm_app.group.splits import unit_split
    from neurossm_app.group.units import read_marker

    device = torch.device(device)
    atlas_label = ATLASES[settings.atlas].bids_label
    classes = dataset.classes
    # Everything that can fail for want of an input is checked before the CPA work.
    terms, terms_source = resolve_class_terms(settings.preset, settings.target, classes, options.class_terms)
    wanted_terms = sorted({t for t in terms.values() if t})
    database = None
    if wanted_terms:
        database = NeurosynthDatabase.open(options.neurosynth_dir, download=options.download)
        database.check_terms(wanted_terms)
    else:
        LOGGER.info(
            "no Neurosynth term for the classes %s of this run (%s): reference analysis skipped, "
            "CPA maps are still written",
            ", ".join(classes),
            terms_source,
        )
    atlas = get_atlas(settings.atlas, options.atlas_dir)
    atlas_img = nib.load(atlas.image)
    indices = roi_indices(atlas.names, atlas.indices, dataset.roi_names)

    names = [s.name for s in dataset.scans]
    records: list[dict[str, Any]] = []
    missing_units = []
    for fold, seed in settings.units:
        marker = read_marker(run_dir, fold, seed)
        if marker is None:
            missing_units.append(f"fold-{fold}_seed-{seed}")
            continue
        _, test = unit_split(splits, names, fold, seed)
        LOGGER.info("CPA of the %d held-out scan(s) of fold-%d seed-%d", len(test), fold, seed)
        records += unit_cpa(run_dir, dataset, test, fold, seed, marker, device)
    if missing_units:
        LOGGER.warning("CPA skips incomplete unit(s): %s", ", ".join(missing_units))
    if not records:
        raise DataError(f"no complete unit in {run_dir}: run the group level (training) before --analysis.")
    pathway_names = records[0]["pathway_names"]
    means = class_means(records, len(classes), options.cpa_subjects)
    for label, name in enumerate(classes):
        if label not in means:
            LOGGER.warning(
                "class %s: no %s; no CPA map for it",
                name,
                "correctly classified held-out scan (try --cpa-subjects all)"
                if options.cpa_subjects == "correct"
                else "held-out scan",
            )

    cpa_dir, maps_dir = run_dir / "cpa", run_dir / "maps"
    _write_class_means(cpa_dir, atlas_label, classes, means, pathway_names, dataset.roi_names)

    # Neurosynth reference vectors, per class with a term.
    references: dict[int, np.ndarray] = {}
    reference_info: dict[int, dict[str, Any]] = {}
    if database is not None:
        from neurossm_app.group.neurosynth import cached_term_map, writable_cache

        cache = writable_cache(database.directory / "maps", run_dir / "neurosynth" / "maps")
        for label, name in enumerate(classes):
            term = terms.get(name)
            if not term or label not in means:
                continue
            image, info = cached_term_map(database, term, cache)
            vector = parcellate(image, atlas_img, indices)
            empty = int(np.isnan(vector).sum())
            if empty:
                LOGGER.warning("%d ROI(s) have no voxel in the atlas image: reference value 0", empty)
            references[label] = np.nan_to_num(vector, nan=0.0)
            reference_info[label] = info

    rows = []
    for label, name in enumerate(classes):
        row: dict[str, Any] = {"class": name, "term": terms.get(name)}
        mean = means.get(label)
        row |= {"n_subjects": mean.n_subjects if mean else 0, "n_scans": mean.n_scans if mean else 0}
        if mean is not None:
            _write_cpa_maps(maps_dir, atlas_label, name, mean, pathway_names, atlas_img, indices, options)
        if label in references:
            others_cpa = [means[k].cpa for k in means if k != label]
            others_ref = [references[k] for k in references if k != label]
            covariates = [np.mean(x, axis=0) for x in (others_cpa, others_ref) if x]
            covariates_arr = np.column_stack(covariates) if covariates else np.zeros((len(indices), 0))
            r, p = partial_correlation(
                references[label], mean.cpa, covariates_arr, options.n_permutations,
                options.permutation_seed + label,
            )  # fmt: skip
            ref_top, cpa_top = top_mask(references[label]), top_mask(mean.cpa)
            row |= {
                "n_studies_term": reference_info[label]["n_studies_term"],
                "partial_r": round(r, 6),
                "permutation_p": round(p, 6),
                "n_permutations": options.n_permutations,
                "dice_top25": round(dice(ref_top, cpa_top), 6),
                "covariates": "+".join(
                    k
                    for k, x in (("other_classes_cpa", others_cpa), ("other_classes_reference", others_ref))
                    if x
                )
                or "none",
            }
            _write_reference_maps(
                maps_dir, atlas_label, name, references[label], reference_info[label], atlas_img, indices
            )
        _write_roi_table(
            maps_dir, atlas_label, name, dataset.roi_names, mean, references.get(label), pathway_names
        )
        rows.append(row)
        if "partial_r" in row:
            LOGGER.info(
                "class %s (term %r): partial r %.3f (p %.4f), Dice of the top 25%% %.3f, %d subject(s)",
                name, row["term"], row["partial_r"], row["permutation_p"], row["dice_top25"],
                row["n_subjects"],
            )  # fmt: skip
    columns = [
        "class", "term", "n_subjects", "n_scans", "n_studies_term", "partial_r", "permutation_p",
        "n_permutations", "dice_top25", "covariates",
    ]  # fmt: skip
    scores_path = (
        maps_dir / f"space-MNI152NLin2009cAsym_atlas-{atlas_label}_desc-neurosynthReference_scores.tsv"
    )
    write_tsv(scores_path, pd.DataFrame(rows).reindex(columns=columns))
    write_json(scores_path.with_suffix(".json"), _SCORES_SIDECAR)

    summary = {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "target_class": "the true class of each scan (its logit is explained)",
        "class_terms": terms,
        "class_terms_source": terms_source,
        "pathways": list(pathway_names),
        "classes": {
            name: {
                "n_subjects": means[k].n_subjects if k in means else 0,
                "n_scans": means[k].n_scans if k in means else 0,
                "weights": dict(zip(pathway_names, np.round(means[k].weights, 6).tolist(), strict=True))
                if k in means
                else None,
                "neurosynth": reference_info.get(k),
            }
            for k, name in enumerate(classes)
        },
        "n_scan_records": len(records),
        "incomplete_units": missing_units,
        "atlas": {"key": settings.atlas, "label": atlas_label, "image": str(atlas.image)},
        "software": software_versions(GROUP_PACKAGES),
    }
    write_json(cpa_dir / "analysis.json", summary)
    LOGGER.info("CPA in %s, maps and reference scores in %s", cpa_dir, maps_dir)
    return summary


_SCORES_SIDECAR = {
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


def _write_class_means(cpa_dir, atlas_label, classes, means, pathway_names, roi_names) -> None:
    rows = []
    for label, mean in means.items():
        name = classes[label]
        path = cpa_dir / f"atlas-{atlas_label}_label-{sanitize_label(name)}_desc-classMean_cpa.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        from neurossm_app.files import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(
                handle, cpa=mean.cpa, weighted_maps=mean.weighted_maps, weights=mean.weights,
                dominant_pathway=mean.dominant, pathway_names=np.array(pathway_names, dtype=str),
                roi_names=np.array(roi_names, dtype=str), label=np.array(name), n_subjects=mean.n_subjects,
                n_scans=mean.n_scans, n_seeds=mean.n_seeds,
            )  # fmt: skip
        counts = np.bincount(mean.dominant, minlength=len(pathway_names))
        rows.append(
            {
                "class": name,
                "n_subjects": mean.n_subjects,
                "n_scans": mean.n_scans,
                "n_seeds": mean.n_seeds,
                **{
                    f"weight_{p}": round(float(w), 6)
                    for p, w in zip(pathway_names, mean.weights, strict=True)
                },
                **{f"dominant_rois_{p}": int(c) for p, c in zip(pathway_names, counts, strict=True)},
            }
        )
    write_tsv(cpa_dir / f"atlas-{atlas_label}_desc-classMeans_cpa.tsv", pd.DataFrame(rows))


def _write_cpa_maps(maps_dir, atlas_label, name, mean, pathway_names, atlas_img, indices, options) -> None:
    def path(desc, suffix, ext=".nii.gz"):
        return maps_dir / group_map_name(atlas_label, name, desc, suffix, ext)

    common = {
        "Atlas": atlas_label,
        "Class": name,
        "NSubjects": mean.n_subjects,
        "CPASubjects": options.cpa_subjects,
    }
    save_nifti(
        path("cpaScore", "statmap"),
        roi_volume(atlas_img, indices, mean.cpa, np.float32),
        describe(
            "Class-mean Calibrated Pathway Attribution: each ROI's voxels hold its CPA value "
            "(sum over pathways of w_p m_p(r); the values over ROIs sum to 1).",
            Units="fraction of attribution (unitless)", **common,
        ),
    )  # fmt: skip
    save_nifti(
        path("cpaTop25", "mask"),
        roi_volume(atlas_img, indices, top_mask(mean.cpa), np.uint8),
        describe(f"The ceil(R/4) ROIs with the largest class-mean CPA (top {TOP_FRACTION:.0%}).", **common),
    )
    save_nifti(
        path("cpaDominantPathway", "dseg"),
        roi_volume(atlas_img, indices, mean.dominant + 1, np.int16),
        describe(
            "Dominant pathway of the class-mean CPA per ROI (argmax_p of the mean w_p m_p(r)); "
            "values index the .tsv look-up table, 0 is outside the atlas.",
            **common,
        ),
    )
    save_dseg_table(path("cpaDominantPathway", "dseg", ".tsv"), list(pathway_names))


def _write_reference_maps(maps_dir, atlas_label, name, vector, info, atlas_img, indices) -> None:
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
        roi_volume(atlas_img, indices, vector, np.float32),
        describe(
            "Neurosynth reference: NiMARE MKDAChi2 association z-map of the term (studies with "
            "TF-IDF >= 0.001 vs the rest), resampled to the atlas grid and averaged within each ROI.",
            Units="z", **common,
        ),
    )  # fmt: skip
    save_nifti(
        path("neurosynthReferenceTop25", "mask"),
        roi_volume(atlas_img, indices, top_mask(vector), np.uint8),
        describe(f"The ceil(R/4) ROIs with the largest reference value (top {TOP_FRACTION:.0%}).", **common),
    )


def _write_roi_table(maps_dir, atlas_label, name, roi_names, mean, reference, pathway_names) -> None:
    if mean is None:
        return
    table = pd.DataFrame(
        {"roi": roi_names, "cpa": np.round(mean.cpa, 8), "cpa_top25": top_mask(mean.cpa).astype(int)}
    )
    table["dominant_pathway"] = [pathway_names[i] for i in mean.dominant]
    if reference is not None:
        table["reference"] = np.round(reference, 6)
        table["reference_top25"] = top_mask(reference).astype(int)
    write_tsv(maps_dir / group_map_name(atlas_label, name, "cpa", "rois", ".tsv"), table)
