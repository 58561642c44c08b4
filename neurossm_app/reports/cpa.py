"""Report sections for Calibrated Pathway Attribution (present only after ``group --analysis``).

Reads ``RUN_DIR/cpa/atlas-<A>_desc-classMeans_cpa.tsv`` (calibrated pathway weights per class),
the ROI-space maps in ``RUN_DIR/maps/`` and the Neurosynth reference scores table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from neurossm_app.files import read_tsv
from neurossm_app.reports.html import Section, figure_to_svg

_LABEL = re.compile(r"_label-([A-Za-z0-9]+)_desc-")


def weights_svg(class_means: pd.DataFrame) -> str:
    """Grouped bars: calibrated pathway weight per class."""
    columns = [c for c in class_means.columns if c.startswith("weight_")]
    pathways = [c.removeprefix("weight_") for c in columns]
    classes = class_means["class"].astype(str).tolist()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(pathways) + 2), 3.2))
    width = 0.8 / max(len(classes), 1)
    x = np.arange(len(pathways))
    for i, (name, row) in enumerate(zip(classes, class_means[columns].to_numpy(float), strict=True)):
        ax.bar(x + i * width, row, width, label=name)
    ax.set_xticks(x + width * (len(classes) - 1) / 2)
    ax.set_xticklabels(pathways)
    ax.set_ylabel("calibrated pathway weight")
    ax.legend(fontsize=7, ncol=min(len(classes), 4))
    return figure_to_svg(fig)


def glass_brain_svg(stat_map: Path, title: str, signed: bool = False) -> str:
    """A glass-brain view of an ROI-space map: a diverging colormap on a range symmetric about 0
    for a signed map (Neurosynth z), a sequential one from the lowest ROI value for a positive
    map (CPA)."""
    import nibabel as nib
    from nilearn import plotting

    image = nib.load(str(stat_map))  # read once: for the colour range and for the plot
    fig = plt.figure(figsize=(9, 2.6))
    if signed:
        style = {"cmap": "RdBu_r", "plot_abs": False, "symmetric_cbar": True}
    else:  # from the lowest ROI score: CPA maps are flat-bottomed (every ROI gets some evidence)
        values = np.asarray(image.dataobj)
        inside = values[values > 0]
        style = {"cmap": "YlOrRd", "plot_abs": True, "vmin": float(inside.min()) if inside.size else 0.0}
    # Outside the ROIs the map is 0: left transparent rather than painted the colormap's zero.
    style["threshold"] = 1e-9
    display = plotting.plot_glass_brain(
        image, figure=fig, title=title, colorbar=True, display_mode="lyrz", **style
    )
    svg = figure_to_svg(fig)
    display.close()
    return svg


def _maps_by_class(maps_dir: Path, desc: str) -> dict[str, Path]:
    found = {}
    for path in sorted(maps_dir.glob(f"*_desc-{desc}_statmap.nii.gz")):
        match = _LABEL.search(path.name)
        if match:
            found[match.group(1)] = path
    return found


def _analysis(cpa_dir: Path) -> dict:
    path = cpa_dir / "analysis.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _weights_section(class_means: pd.DataFrame, cpa_subjects: str, predicted: bool = False) -> Section:
    scans = "scans" if predicted else "held-out scans"  # a prediction run explains every new scan
    which = f"correctly classified {scans}" if cpa_subjects == "correct" else f"all {scans}"
    weights = Section("Calibrated pathway weights", "cpa-weights")
    weights.text(
        f"For each class, the mean over its {which} (--cpa-subjects {cpa_subjects}) of the calibration "
        "weights w_p: the drop of the target logit when pathway p is removed before fusion, normalised to "
        "sum to 1."
    )
    weights.figure(weights_svg(class_means), "Calibrated pathway weight per class.")
    shown = ["class", "n_subjects", "n_scans"] + [c for c in class_means.columns if c.startswith("weight_")]
    return weights.table(class_means[shown])


def scores_section(scores: pd.DataFrame, analysis: dict) -> Section:
    """The reference scores, p shown at the precision of its null (:func:`format_p`), with what
    the null was and why rows are empty."""
    from neurossm_app.group.nulls import format_p

    section = Section("Reference scores", "cpa-scores")
    nulls = {
        "brainsmash": "variogram-matched surrogate maps that keep the CPA map's spatial autocorrelation "
        "(BrainSMASH, Burt et al. 2020)",
        "permutation": "ROI permutations, which ignore spatial autocorrelation (p too small for smooth maps)",
    }
    scored = scores[scores["partial_r"].notna()] if "partial_r" in scores else scores.iloc[:0]
    if scored.empty and ("term" not in scores or scores["term"].isna().all()):
        source = analysis.get("class_terms_source", "the class-term table")
        section.text(
            "No class has a Neurosynth term (from " + str(source) + "), so there is no reference score: "
            "the CPA maps above are the result. Name terms with --class-terms to compare them with "
            "Neurosynth (docs/cpa.md)."
        )
        return section
    if scored.empty:
        section.text(
            "No class with a Neurosynth term has a class map (no held-out scan was selected for it, see "
            "--cpa-subjects), so there is no reference score."
        )
        return section.table(scores)
    model = str(scored["null_model"].iloc[0]) if "null_model" in scored else "permutation"
    n_maps = int(scored["n_null_maps"].iloc[0]) if "n_null_maps" in scored else 0
    section.text(
        "Partial correlation between the class-mean CPA and the class's Neurosynth reference after "
        "regressing out the mean of the other classes; its one-sided p-value from "
        f"{n_maps} {nulls.get(model, model)}, shown to the precision {n_maps} null maps give; and the "
        "Dice overlap of the top-25% ROI masks."
    )
    table = scores.copy()
    if "covariates" in table:  # room to wrap: the table fits the page
        table["covariates"] = table["covariates"].str.replace("+", " + ", regex=False)
    if "p_value" in table:
        table["p_value"] = [format_p(p, n_maps) for p in pd.to_numeric(table["p_value"], errors="coerce")]
    unscored = [str(c) for c in scores.loc[scores["partial_r"].isna(), "class"]]
    if unscored:
        section.text(f"No score for {', '.join(unscored)}: no Neurosynth term, or no class map.")
    return section.table(table)


def reading_section() -> Section:
    """How to read each CPA number, and what CPA does not show (docs/cpa.md has the long form)."""
    section = Section("How to read these results, and what CPA does not show", "cpa-reading")
    section.text(
        "CPA score (per ROI, positive, sums to 1 over the ROIs of a class): the share of the trained "
        "models' evidence for that class that comes from the ROI's time series (gradient x input of the "
        "class logit, calibrated by the pathway weights), averaged over the scans shown and over every "
        "fold and seed. A high score means the models' decision leans on that ROI; the top 25% are the "
        "ROIs with the highest scores."
    )
    section.text(
        "Pathway weights and dominant pathway: which of the model's inputs carried the evidence. raw_sK "
        "reads the z-scored signal at temporal scale K (slow changes and levels within the scan), diff_sK "
        "its first temporal difference (fast changes). They follow the signal, not the label: an effect "
        "that survives a 0.1 Hz low-pass is usually read by the raw pathways."
    )
    section.text(
        "Partial r: the spatial correlation, over ROIs, between a class's CPA map and its Neurosynth "
        "reference map, after regressing out the other classes' mean maps; near 0 for unrelated maps. "
        "p: how often a null map does as well (one-sided; see the null above). Dice: the overlap of "
        "the two top-25% masks (0.25 is what two unrelated masks of that size share on average)."
    )
    section.text(
        "What CPA does not show: where the brain responds (it explains the models, not the data; a "
        "region the models could ignore because another carried the same information gets a low score); "
        "causes; the sign of an effect (scores are magnitudes); anything that per-scan z-scoring removes, "
        "such as a change of a ROI's amplitude alone; or per-subject maps one can trust (the class maps "
        "average many scans and models, and one small model's map is noisy). A class that the models "
        "recognise by the absence of the other classes' effects gets a map like the union of theirs: "
        "read it as recognised by elimination, not as that class's anatomy."
    )
    return section


def cpa_sections(run_dir: Path) -> list[Section]:
    """Sections for the CPA outputs of ``run_dir``; none when the analysis was not run."""
    cpa_dir, maps_dir = run_dir / "cpa", run_dir / "maps"
    class_files = sorted(cpa_dir.glob("atlas-*_desc-classMeans_cpa.tsv")) if cpa_dir.is_dir() else []
    if not class_files:
        return []
    analysis = _analysis(cpa_dir)
    options = analysis.get("options", {})
    predicted = "checkpoints" in analysis  # written by a --predict-with run
    sections = [_weights_section(read_tsv(class_files[0]), options.get("cpa_subjects", "correct"), predicted)]
    cpa_maps = _maps_by_class(maps_dir, "cpaScore")
    reference_maps = _maps_by_class(maps_dir, "neurosynthReferenceScore")
    if cpa_maps:
        brains = Section("CPA and Neurosynth reference maps", "cpa-maps")
        for label, path in cpa_maps.items():
            brains.heading(f"class {label}")
            brains.figure(
                glass_brain_svg(path, f"CPA: {label}"),
                f"Class-mean CPA score per ROI (positive, sums to 1; colours from the lowest ROI's score "
                f"to the highest), class {label}.",
            )
            if label in reference_maps:
                brains.figure(
                    glass_brain_svg(reference_maps[label], f"Neurosynth reference: {label}", signed=True),
                    "Neurosynth meta-analytic reference (MKDA chi-square association z, parcellated; "
                    f"red positive, blue negative), class {label}.",
                )
        sections.append(brains)
    scores_files = sorted(maps_dir.glob("*_desc-neurosynthReference_scores.tsv")) if maps_dir.is_dir() else []
    if scores_files:
        sections.append(scores_section(read_tsv(scores_files[0]), analysis))
    return [*sections, reading_section()]
