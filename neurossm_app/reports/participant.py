"""The participant report: per run, coverage, carpet plots, motion and ROI correlations.

Figures are written per run by the workflow as ``sub-X/figures/*.svg`` (reportlets) and assembled
into ``OUTPUT_DIR/sub-X.html`` once all runs of the subject are done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd

from neurossm_app.bids import build_path
from neurossm_app.files import read_tsv, write_text
from neurossm_app.reports.html import Section, figure_to_svg, render_page

FIGURES = {
    "coverage": "Atlas coverage within the brain mask",
    "carpet": "ROI signals before and after cleaning",
    "motion": "Framewise displacement and censored volumes",
    "connectivity": "ROI correlation matrix (cleaned signals, ordered by network)",
}


def roi_groups(names: list[str]) -> list[str]:
    """A coarse group per ROI for ordering: the Schaefer network, else the hemisphere suffix."""
    groups = []
    for name in names:
        parts = name.split("_")
        if parts[0].endswith("Networks") and len(parts) > 2:
            groups.append(parts[2])
        elif parts[-1] in ("L", "R"):
            groups.append(parts[-1])
        else:
            groups.append("other")
    return groups


def _zscore(signals: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (signals - np.nanmean(signals, axis=0)) / np.nanstd(signals, axis=0)


def carpet_svg(raw: np.ndarray, clean: np.ndarray, names: list[str]) -> str:
    """(T, R) before/after carpets, ROIs grouped by network."""
    order = np.argsort(roi_groups(names), kind="stable")
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for ax, signals, title in (
        (axes[0], raw, "before cleaning (z-scored parcel means)"),
        (axes[1], clean, "after cleaning"),
    ):
        image = _zscore(signals)[:, order].T
        ax.imshow(
            np.nan_to_num(image), aspect="auto", cmap="gray", vmin=-2.5, vmax=2.5, interpolation="nearest"
        )
        ax.set_ylabel("ROI (by network)")
        ax.set_title(title, fontsize=10)
    axes[1].set_xlabel("volume")
    return figure_to_svg(fig)


def motion_svg(fd: np.ndarray, censored: list[int], threshold: float | None) -> str:
    """Framewise displacement trace with censored volumes marked."""
    fig, ax = plt.subplots(figsize=(10, 2.2))
    ax.plot(fd, color="#345", lw=1)
    for index in censored:
        ax.axvspan(index - 0.5, index + 0.5, color="#d62728", alpha=0.3, lw=0)
    if threshold is not None:
        ax.axhline(threshold, color="#d62728", ls="--", lw=1)
    ax.set_xlabel("volume")
    ax.set_ylabel("FD (mm)")
    ax.set_xlim(0, max(len(fd) - 1, 1))
    return figure_to_svg(fig)


def connectivity_svg(clean: np.ndarray, names: list[str]) -> str:
    """Correlation matrix of cleaned ROI signals, ordered by network, with network ticks."""
    groups = roi_groups(names)
    order = np.argsort(groups, kind="stable")
    data = clean[~np.isnan(clean).all(axis=1)][:, order]  # censored volumes are all-NaN rows
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = pd.DataFrame(data).corr().to_numpy()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    sorted_groups = [groups[i] for i in order]
    starts = [i for i in range(len(sorted_groups)) if i == 0 or sorted_groups[i] != sorted_groups[i - 1]]
    ax.set_xticks(starts)
    ax.set_xticklabels([sorted_groups[i] for i in starts], rotation=90, fontsize=6)
    ax.set_yticks(starts)
    ax.set_yticklabels([sorted_groups[i] for i in starts], fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, label="Pearson r")
    return figure_to_svg(fig)


def coverage_svg(
    atlas_on_bold: str | os.PathLike, mask_file: str | os.PathLike, indices: list[int], coverage: np.ndarray
) -> str:
    """Per-ROI coverage painted on the atlas, over the brain mask."""
    from nilearn import plotting

    atlas = nib.load(os.fspath(atlas_on_bold))
    labels = np.asarray(atlas.dataobj).astype(np.int64)
    lookup = np.zeros(max(int(labels.max()), max(indices)) + 1)
    lookup[np.asarray(indices)] = coverage
    painted = nib.Nifti1Image(np.where(labels > 0, lookup[labels], 0).astype(np.float32), atlas.affine)
    fig = plt.figure(figsize=(10, 2.6))
    display = plotting.plot_stat_map(
        painted,
        bg_img=os.fspath(mask_file),
        display_mode="z",
        cut_coords=7,
        cmap="viridis",
        vmin=0,
        vmax=1,
        colorbar=True,
        figure=fig,
        title="coverage",
        black_bg=False,
        draw_cross=False,
    )
    svg = figure_to_svg(fig)
    display.close()
    return svg


def write_run_reportlets(
    output_dir: str | os.PathLike,
    entities: dict[str, Any],
    raw_file: str | os.PathLike,
    clean_file: str | os.PathLike,
    coverage_file: str | os.PathLike,
    confounds_file: str | os.PathLike,
    atlas_on_bold: str | os.PathLike,
    mask_file: str | os.PathLike,
    indices: list[int],
    censored: list[int],
    fd_threshold: float | None,
) -> list[Path]:
    """Draw one run's figures and write them as ``sub-X/figures/<run>_desc-<figure>_bold.svg``."""
    raw = read_tsv(raw_file)
    names = list(raw.columns)
    clean = read_tsv(clean_file).to_numpy(dtype=float)
    coverage = read_tsv(coverage_file)["coverage"].to_numpy()
    confounds = read_tsv(confounds_file)
    fd = (
        confounds["framewise_displacement"].fillna(0).to_numpy()
        if "framewise_displacement" in confounds
        else None
    )
    svgs = {
        "coverage": coverage_svg(atlas_on_bold, mask_file, indices, coverage),
        "carpet": carpet_svg(raw.to_numpy(dtype=float), clean, names),
        "connectivity": connectivity_svg(clean, names),
    }
    if fd is not None:
        svgs["motion"] = motion_svg(fd, censored, fd_threshold)
    written = []
    for name, svg in svgs.items():
        path = build_path(output_dir, {**entities, "desc": name}, "bold", ".svg", datatype="figures")
        written.append(write_text(path, svg))
    return written


def build_participant_report(output_dir: str | os.PathLike, subject: str) -> Path:
    """Assemble ``OUTPUT_DIR/sub-<subject>.html`` from the subject's sidecars and reportlets."""
    output_dir = Path(output_dir)
    subject_dir = output_dir / f"sub-{subject}"
    sidecars = sorted(subject_dir.rglob("*_stat-mean_timeseries.json"))
    sections = []
    summary_rows = []
    for sidecar_file in sidecars:
        meta = json.loads(sidecar_file.read_text())
        run_name = sidecar_file.name.split("_space-")[0]
        summary_rows.append(
            {
                "run": run_name,
                "volumes": len(read_tsv(sidecar_file.with_suffix(".tsv"))),
                "TR (s)": meta["RepetitionTime"],
                "censored": len(meta["CensoredVolumes"]),
                "excluded ROIs": len(meta["ExcludedROIs"]),
                "regressors": len(meta["ConfoundRegressors"]),
            }
        )
        section = Section(run_name, run_name.replace("_", "-"))
        settings = pd.DataFrame(
            [
                ("atlas", meta["Atlas"]),
                ("confound strategy", meta["ConfoundStrategy"]),
                ("regressors", ", ".join(meta["ConfoundRegressors"]) or "none"),
                ("band-pass (Hz)", f"{meta['HighPass']} - {meta['LowPass']}"),
                ("detrend", meta["Detrend"]),
                ("standardize", meta["Standardize"]),
                ("FD threshold", meta["FDThreshold"]),
                ("censored volumes", ", ".join(map(str, meta["CensoredVolumes"])) or "none"),
                ("minimum coverage", meta["MinCoverage"]),
                ("excluded ROIs", ", ".join(meta["ExcludedROIs"]) or "none"),
            ],
            columns=["setting", "value"],
        )
        settings["value"] = [("off" if v is None else str(v)) for v in settings["value"]]
        section.heading("Cleaning settings").table(settings)
        for key, caption in FIGURES.items():
            matches = sorted(subject_dir.rglob(f"figures/{run_name}_desc-{key}_bold.svg"))
            if matches:
                section.heading(caption).figure(matches[0].read_text(), caption)
        sections.append(section)
    overview = Section("Summary", "summary")
    if summary_rows:
        overview.table(pd.DataFrame(summary_rows), float_format="{:.2f}")
    else:
        overview.text("No completed runs were found for this subject.")
    page = render_page(
        f"neurossm-app participant report: sub-{subject}",
        "Denoised ROI time series extracted from fMRIPrep derivatives. Each run lists its cleaning "
        "settings, atlas coverage, ROI signals before and after cleaning, head motion, and the ROI "
        "correlation matrix.",
        [overview, *sections],
    )
    return write_text(output_dir / f"sub-{subject}.html", page)
