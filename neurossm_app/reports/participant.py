"""The participant report: per run, coverage, carpet plots, motion and ROI correlations.

Figures are written per run and atlas by the workflow as ``sub-X/figures/*_atlas-<A>_*.svg``
(reportlets; several atlases may share OUTPUT_DIR) and assembled into ``OUTPUT_DIR/sub-X.html``,
one section per run and atlas, once all runs of the subject are done.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

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

#: Axial cuts of the coverage figure.
N_CUTS = 7


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


def _figure(width: float, height: float, **margins: float):
    """A matplotlib figure outside pyplot (nothing global to close, no GUI back end loaded).

    ``margins`` (``left``, ``right``, ``bottom``, ``top``, ``hspace``, in figure fractions) are
    set here rather than found by a tight bounding box, which would draw every figure twice.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(**margins)
    return fig


def _svg(fig) -> str:
    return figure_to_svg(fig, tight=False)


def _zscore(signals: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (signals - np.nanmean(signals, axis=0)) / np.nanstd(signals, axis=0)


def carpet_svg(raw: np.ndarray, clean: np.ndarray, names: list[str]) -> str:
    """(T, R) before/after carpets, ROIs grouped by network."""
    order = np.argsort(roi_groups(names), kind="stable")
    fig = _figure(10, 6, left=0.07, right=0.99, bottom=0.08, top=0.95, hspace=0.2)
    axes = fig.subplots(2, 1, sharex=True)
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
    return _svg(fig)


def motion_svg(fd: np.ndarray, censored: list[int], threshold: float | None) -> str:
    """Framewise displacement trace with censored volumes marked (one shaded band each)."""
    fig = _figure(10, 2.2, left=0.07, right=0.99, bottom=0.22, top=0.96)
    ax = fig.subplots()
    ax.plot(fd, color="#345", lw=1)
    if censored:  # one collection, however many volumes are censored
        ax.broken_barh(
            [(index - 0.5, 1.0) for index in censored],
            (0, 1),
            transform=ax.get_xaxis_transform(),
            facecolors="#d62728",
            alpha=0.3,
            lw=0,
        )
    if threshold is not None:
        ax.axhline(threshold, color="#d62728", ls="--", lw=1)
    ax.set_xlabel("volume")
    ax.set_ylabel("FD (mm)")
    ax.set_xlim(0, max(len(fd) - 1, 1))
    return _svg(fig)


def roi_correlations(clean: np.ndarray) -> np.ndarray:
    """(R, R) Pearson correlations of cleaned signals over uncensored volumes.

    Censored volumes are all-NaN rows and are left out; ROIs without coverage (all-NaN
    columns) and constant ones get NaN rows and columns.
    """
    data = clean[~np.isnan(clean).all(axis=1)]  # (T_kept, R)
    valid = np.isfinite(data).all(axis=0) & (np.nanstd(data, axis=0) > 0)
    corr = np.full((clean.shape[1], clean.shape[1]), np.nan)
    if valid.sum() > 1:
        corr[np.ix_(valid, valid)] = np.corrcoef(data[:, valid], rowvar=False)
    return corr


def connectivity_svg(clean: np.ndarray, names: list[str]) -> str:
    """Correlation matrix of cleaned ROI signals, ordered by network, with network ticks."""
    groups = roi_groups(names)
    order = np.argsort(groups, kind="stable")
    corr = roi_correlations(clean)[np.ix_(order, order)]
    fig = _figure(6.5, 5.5, left=0.12, right=0.86, bottom=0.15, top=0.98)
    ax = fig.subplots()
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    sorted_groups = [groups[i] for i in order]
    starts = [i for i in range(len(sorted_groups)) if i == 0 or sorted_groups[i] != sorted_groups[i - 1]]
    ax.set_xticks(starts)
    ax.set_xticklabels([sorted_groups[i] for i in starts], rotation=90, fontsize=6)
    ax.set_yticks(starts)
    ax.set_yticklabels([sorted_groups[i] for i in starts], fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, label="Pearson r")
    return _svg(fig)


def coverage_mosaic(
    labels: np.ndarray, mask: np.ndarray, indices: list[int], coverage: np.ndarray, n_cuts: int = N_CUTS
) -> tuple[np.ndarray, list[int]]:
    """Axial cuts of per-ROI coverage painted on the atlas, over the brain mask, side by side.

    Parameters
    ----------
    labels
        (X, Y, Z) integer atlas on the BOLD grid.
    mask
        (X, Y, Z) brain mask.
    indices, coverage
        (R,) label values and the coverage of each.

    Returns
    -------
    rgba : (Y', n_cuts * (X' + 2) - 2, 4) float
        The cuts left to right, each cropped to the box (X', Y') around the brain and the atlas,
        anterior up and the voxel x index growing to the right; the mask in light grey, each ROI
        voxel coloured by its coverage (viridis, 0 to 1; coverage 0 is left unpainted, as
        nilearn's ``plot_stat_map`` leaves zeros).
    cuts : list of int
        The z index of each cut, evenly spaced through the atlas.
    """
    from matplotlib import colormaps

    labels = np.asarray(labels).astype(np.int64)
    inside = np.asarray(mask) > 0
    lookup = np.zeros(max(int(labels.max(initial=0)), max(indices)) + 1)
    lookup[np.asarray(indices)] = coverage
    painted = np.where(labels > 0, lookup[np.clip(labels, 0, None)], 0.0)
    occupied = np.flatnonzero((labels > 0).any(axis=(0, 1)))
    low, high = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, labels.shape[2] - 1)
    cuts = [int(round(z)) for z in np.linspace(low, high, n_cuts + 2)[1:-1]]
    box = tuple(_extent((labels > 0) | inside, axis) for axis in ((1, 2), (0, 2)))
    viridis = colormaps["viridis"]
    tiles = []
    for z in cuts:
        brain, values = inside[box[0], box[1], z], painted[box[0], box[1], z]
        tile = np.ones((*brain.shape, 4))
        tile[brain, :3] = 0.85
        tile[values > 0] = viridis(np.clip(values[values > 0], 0, 1))
        tiles += [tile, np.ones((2, brain.shape[1], 4))]
    return np.concatenate(tiles[:-1], axis=0).transpose(1, 0, 2)[::-1], cuts  # anterior up


def _extent(occupied: np.ndarray, other_axes: tuple[int, int]) -> slice:
    """The slice of one axis that holds every occupied voxel, with one voxel to spare."""
    where = np.flatnonzero(occupied.any(axis=other_axes))
    if where.size == 0:
        return slice(None)
    return slice(max(int(where[0]) - 1, 0), int(where[-1]) + 2)


def coverage_svg(
    atlas_on_bold: str | os.PathLike, mask_file: str | os.PathLike, indices: list[int], coverage: np.ndarray
) -> str:
    """Per-ROI coverage painted on the atlas, over the brain mask: seven axial cuts, one image."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    atlas = nib.load(os.fspath(atlas_on_bold))
    mask = np.asarray(nib.load(os.fspath(mask_file)).dataobj)
    rgba, cuts = coverage_mosaic(np.asarray(atlas.dataobj), mask, indices, coverage)
    fig = _figure(10, 2.6)
    ax = fig.add_axes((0.01, 0.05, 0.89, 0.8))
    ax.imshow(rgba, interpolation="nearest")  # one image for all cuts: one raster in the SVG
    ax.set_axis_off()
    ax.set_title("coverage", loc="left", fontsize=10)
    width = (rgba.shape[1] + 2) // len(cuts)
    for k, z in enumerate(cuts):
        z_mm = (atlas.affine @ np.array([0, 0, z, 1]))[2]
        ax.text(k * width + 1, rgba.shape[0] - 1, f"z={z_mm:.0f}", fontsize=8, va="bottom")
    left, right = ("L", "R") if atlas.affine[0, 0] > 0 else ("R", "L")  # x index grows to the right
    ax.text(1, 1, left, fontsize=8, va="top")
    ax.text(width - 3, 1, right, fontsize=8, va="top", ha="right")
    colorbar = fig.colorbar(
        ScalarMappable(Normalize(0, 1), "viridis"), cax=fig.add_axes((0.92, 0.1, 0.015, 0.7))
    )
    colorbar.set_label("coverage", fontsize=8)
    return _svg(fig)


def write_run_reportlets(
    output_dir: str | os.PathLike,
    entities: dict[str, Any],
    raw_file: str | os.PathLike,
    clean_file: str | os.PathLike,
    coverage_file: str | os.PathLike,
    confounds_file: str | os.PathLike | None,
    atlas_on_bold: str | os.PathLike,
    mask_file: str | os.PathLike | None,
    indices: list[int],
    censored: list[int],
    fd_threshold: float | None,
    atlas_label: str | None = None,
) -> list[Path]:
    """Draw one run's figures and write them as ``sub-X/figures/<run>_atlas-<A>_desc-<figure>_bold.svg``.

    ``raw_file`` is the (T, R) ``.npy`` of parcel means before cleaning; ``coverage_file`` (the
    TSV with ``roi`` and ``coverage`` columns) gives the ROI names. ``atlas_label`` keeps the
    figures of several atlases in one OUTPUT_DIR apart.
    """
    raw = np.load(raw_file)
    table = read_tsv(coverage_file)
    names, coverage = [str(n) for n in table["roi"]], table["coverage"].to_numpy()
    clean = read_tsv(clean_file).to_numpy(dtype=float)
    # Only the FD column: fMRIPrep's confounds files have hundreds of columns (a run may have none).
    confounds = (
        pd.DataFrame()
        if confounds_file is None
        else pd.read_csv(
            confounds_file,
            sep="\t",
            usecols=lambda column: column == "framewise_displacement",
            na_values=["n/a"],
            keep_default_na=False,
        )
    )
    fd = (
        confounds["framewise_displacement"].fillna(0).to_numpy()
        if "framewise_displacement" in confounds
        else None
    )
    svgs = {
        # a CIFTI run has no mask or grid to draw the atlas on: its coverage is in the TSV
        **({"coverage": coverage_svg(atlas_on_bold, mask_file, indices, coverage)} if mask_file else {}),
        "carpet": carpet_svg(raw, clean, names),
        "connectivity": connectivity_svg(clean, names),
    }
    if fd is not None:
        svgs["motion"] = motion_svg(fd, censored, fd_threshold)
    written = []
    for name, svg in svgs.items():
        path = figure_path(output_dir, entities, atlas_label, name)
        written.append(write_text(path, svg))
    return written


def figure_path(
    output_dir: str | os.PathLike, entities: dict[str, Any], atlas_label: str | None, figure: str
) -> Path:
    """``sub-X/[ses-Y/]figures/<run>_atlas-<A>_desc-<figure>_bold.svg`` (:func:`build_path`)."""
    return build_path(
        output_dir, {**entities, "atlas": atlas_label, "desc": figure}, "bold", ".svg", datatype="figures"
    )


def _data_rows(tsv: Path) -> int:
    """Rows of a TSV below its header, counted without parsing the numbers."""
    with open(tsv, "rb") as handle:
        return sum(1 for line in handle if line.strip()) - 1


def _atlas_of(sidecar: Path) -> str:
    """The ``atlas-`` entity of a series file name."""
    found = re.search(r"_atlas-([A-Za-z0-9]+)_", sidecar.name)
    return found.group(1) if found else ""


def thin_margin_warning(meta: dict[str, Any]) -> str | None:
    """The report's warning for a run whose regressors take most of the band-pass's degrees of
    freedom (the sidecar's ``DegreesOfFreedom.ThinMargin``), or None."""
    dof = meta.get("DegreesOfFreedom") or {}
    if not dof.get("ThinMargin"):
        return None
    return (
        f"The band-pass keeps about {dof['AfterFilter']} degrees of freedom and {dof['Regressors']} "
        f"confounds{' and the linear trend' if meta.get('Detrend') else ''} were regressed out, leaving "
        f"{dof.get('Left', 'few')}: little signal is left, and correlations between ROIs are unreliable. "
        "Use longer runs, fewer confounds or no low-pass (--low-pass none)."
    )


def build_participant_report(
    output_dir: str | os.PathLike, subject: str, failed: dict[str, str] | None = None
) -> Path:
    """Assemble ``OUTPUT_DIR/sub-<subject>.html`` from the subject's sidecars and reportlets.

    ``failed`` (run name -> why) lists the subject's runs that this call could not process; the
    report shows them first, each with its reason.
    """
    output_dir = Path(output_dir)
    subject_dir = output_dir / f"sub-{subject}"
    # one section per run and atlas, atlas by atlas (several may share OUTPUT_DIR)
    sidecars = sorted(subject_dir.rglob("*_stat-mean_timeseries.json"), key=lambda p: (_atlas_of(p), p))
    sections = []
    summary_rows = []
    thin_runs: list[str] = []
    for sidecar_file in sidecars:
        meta = json.loads(sidecar_file.read_text())
        run_name, atlas = sidecar_file.name.split("_space-")[0], _atlas_of(sidecar_file)
        summary_rows.append(
            {
                "run": run_name,
                "atlas": atlas,
                "volumes": _data_rows(sidecar_file.with_suffix(".tsv")),
                "TR (s)": meta["RepetitionTime"],
                "censored": len(meta["CensoredVolumes"]),
                "excluded ROIs": len(meta["ExcludedROIs"]),
                "regressors": len(meta["ConfoundRegressors"]),
            }
        )
        section = Section(f"{run_name}, atlas {atlas}", f"{run_name}_atlas-{atlas}".replace("_", "-"))
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
        thin = thin_margin_warning(meta)
        if thin:
            section.heading("Warning: few degrees of freedom left").text(thin)
            thin_runs.append(f"{run_name} ({atlas})")
        section.heading("Cleaning settings").table(settings)
        for key, caption in FIGURES.items():
            # the name figure_path gives this run and atlas, beside the run's func/ folder
            svg = sidecar_file.parent.parent / "figures" / f"{run_name}_atlas-{atlas}_desc-{key}_bold.svg"
            if svg.is_file():
                section.heading(caption).figure(svg.read_text(), caption)
        sections.append(section)
    overview = Section("Summary", "summary")
    if summary_rows:
        overview.table(pd.DataFrame(summary_rows), float_format="{:.2f}")
    else:
        overview.text("No completed runs were found for this subject.")
    if thin_runs:
        overview.text(
            f"Warning: few degrees of freedom left after cleaning in {', '.join(thin_runs)}; see each run."
        )
    if failed:
        overview.heading("Failed runs").text(
            f"{len(failed)} run(s) failed in the last call and have no new outputs; fix the input named "
            "and re-run."
        )
        overview.table(pd.DataFrame({"run": list(failed), "why": list(failed.values())}))
    page = render_page(
        f"neurossm-app participant report: sub-{subject}",
        "Denoised ROI time series extracted from fMRIPrep derivatives. Each run and atlas lists its cleaning "
        "settings, atlas coverage, ROI signals before and after cleaning, head motion, and the ROI "
        "correlation matrix.",
        [overview, *sections],
    )
    return write_text(output_dir / f"sub-{subject}.html", page)
