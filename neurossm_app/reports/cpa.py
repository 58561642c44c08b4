"""Report sections for Calibrated Pathway Attribution (present only after ``group --analysis``).

Reads ``RUN_DIR/cpa/atlas-<A>_desc-classMeans_cpa.tsv`` (calibrated pathway weights per class),
the ROI-space maps in ``RUN_DIR/maps/`` and the Neurosynth reference scores table.
"""

from __future__ import annotations

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


def glass_brain_svg(stat_map: Path, title: str) -> str:
    """A glass-brain view of an ROI-space map."""
    from nilearn import plotting

    fig = plt.figure(figsize=(8, 2.6))
    display = plotting.plot_glass_brain(
        str(stat_map),
        figure=fig,
        title=title,
        colorbar=True,
        plot_abs=False,
        cmap="inferno",
        display_mode="lyrz",
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


def cpa_sections(run_dir: Path) -> list[Section]:
    """Sections for the CPA outputs of ``run_dir``; none when the analysis was not run."""
    cpa_dir, maps_dir = run_dir / "cpa", run_dir / "maps"
    class_files = sorted(cpa_dir.glob("atlas-*_desc-classMeans_cpa.tsv")) if cpa_dir.is_dir() else []
    if not class_files:
        return []
    sections = []
    class_means = read_tsv(class_files[0])
    weights = Section("Calibrated pathway weights", "cpa-weights")
    weights.text(
        "For each class, the mean over correctly classified held-out scans of the calibration weights "
        "w_p: the drop of the target logit when pathway p is removed before fusion, normalised to sum to 1."
    )
    weights.figure(weights_svg(class_means), "Calibrated pathway weight per class.")
    shown = ["class", "n_subjects", "n_scans"] + [c for c in class_means.columns if c.startswith("weight_")]
    weights.table(class_means[shown])
    sections.append(weights)

    cpa_maps = _maps_by_class(maps_dir, "cpaScore")
    reference_maps = _maps_by_class(maps_dir, "neurosynthReferenceScore")
    if cpa_maps:
        brains = Section("CPA and Neurosynth reference maps", "cpa-maps")
        for label, path in cpa_maps.items():
            brains.heading(f"class {label}")
            brains.figure(
                glass_brain_svg(path, f"CPA: {label}"), f"Class-mean CPA score per ROI, class {label}."
            )
            if label in reference_maps:
                brains.figure(
                    glass_brain_svg(reference_maps[label], f"Neurosynth reference: {label}"),
                    "Neurosynth meta-analytic reference (MKDA chi-square association z, parcellated), "
                    f"class {label}.",
                )
        sections.append(brains)

    scores_files = sorted(maps_dir.glob("*_desc-neurosynthReference_scores.tsv")) if maps_dir.is_dir() else []
    if scores_files:
        scores = Section("Reference scores", "cpa-scores")
        scores.text(
            "Partial correlation between the class-mean CPA and the class's Neurosynth reference after "
            "regressing out the mean of the other classes, its ROI-permutation p-value, and the Dice "
            "overlap of the top-25% ROI masks."
        )
        scores.table(read_tsv(scores_files[0]))
        sections.append(scores)
    return sections
