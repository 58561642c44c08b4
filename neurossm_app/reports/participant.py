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
from neurossm_app.files import read_tsv, write_json, write_text
from neurossm_app.reports.html import Section, figure_to_svg, provenance_section, render_page

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
    labels: np.ndarray,
    mask: np.ndarray,
    indices: list[int],
    coverage: np.ndarray,
    n_cuts: int = N_CUTS,
    underlay: np.ndarray | None = None,
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
    underlay
        (X, Y, Z) image on the same grid (fMRIPrep's ``boldref``), drawn in grey under the ROIs
        (its 2nd to 98th percentile within the mask from black to white); without one, the mask
        is drawn in light grey.

    Returns
    -------
    rgba : (Y', n_cuts * (X' + 2) - 2, 4) float
        The cuts left to right, each cropped to the box (X', Y') around the brain and the atlas,
        anterior up and the voxel x index growing to the right; the underlay (or the mask), each
        ROI voxel coloured by its coverage (viridis, 0 to 1, 75% opaque over an underlay;
        coverage 0 is left unpainted, as nilearn's ``plot_stat_map`` leaves zeros).
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
    grey = None if underlay is None else _grey_levels(np.asarray(underlay, dtype=np.float64), inside)
    tiles = []
    for z in cuts:
        brain, values = inside[box[0], box[1], z], painted[box[0], box[1], z]
        tile = np.ones((*brain.shape, 4))
        roi = values > 0
        if grey is None:
            tile[brain, :3] = 0.85
            tile[roi] = viridis(np.clip(values[roi], 0, 1))
        else:
            tile[..., :3] = grey[box[0], box[1], z][..., None]
            tile[roi, :3] = 0.25 * tile[roi, :3] + 0.75 * viridis(np.clip(values[roi], 0, 1))[:, :3]
        tiles += [tile, np.ones((2, brain.shape[1], 4))]
    return np.concatenate(tiles[:-1], axis=0).transpose(1, 0, 2)[::-1], cuts  # anterior up


def _grey_levels(image: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``image`` scaled to 0-1 between its 2nd and 98th percentiles within ``inside``."""
    values = image[inside & np.isfinite(image)]
    if values.size == 0:
        return np.zeros(image.shape)
    low, high = np.percentile(values, [2, 98])
    return np.clip((np.nan_to_num(image) - low) / max(high - low, 1e-12), 0, 1)


def boldref_beside(mask_file: str | os.PathLike | None) -> Path | None:
    """fMRIPrep's ``<run>_space-<S>[_res-<r>]_boldref.nii.gz`` beside the run's brain mask (same
    grid), or None when there is none (the coverage figure then shows the mask alone)."""
    if mask_file is None:
        return None
    name = Path(mask_file).name
    if "_desc-brain_mask.nii" not in name:
        return None
    boldref = Path(mask_file).with_name(name.replace("_desc-brain_mask.nii", "_boldref.nii"))
    return boldref if boldref.is_file() else None


def _extent(occupied: np.ndarray, other_axes: tuple[int, int]) -> slice:
    """The slice of one axis that holds every occupied voxel, with one voxel to spare."""
    where = np.flatnonzero(occupied.any(axis=other_axes))
    if where.size == 0:
        return slice(None)
    return slice(max(int(where[0]) - 1, 0), int(where[-1]) + 2)


def coverage_svg(
    atlas_on_bold: str | os.PathLike,
    mask_file: str | os.PathLike,
    indices: list[int],
    coverage: np.ndarray,
    underlay_file: str | os.PathLike | None = None,
) -> str:
    """Per-ROI coverage painted on the atlas, over ``underlay_file`` (default: the run's boldref
    beside ``mask_file``, :func:`boldref_beside`) or else the brain mask: seven axial cuts, one image."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    atlas = nib.load(os.fspath(atlas_on_bold))
    mask = np.asarray(nib.load(os.fspath(mask_file)).dataobj)
    underlay, underlay_file = None, underlay_file or boldref_beside(mask_file)
    if underlay_file is not None:
        image = nib.load(os.fspath(underlay_file))
        if image.shape[:3] == mask.shape:  # the boldref of this grid; another one is not drawn
            underlay = np.asarray(image.dataobj).reshape(mask.shape)
    rgba, cuts = coverage_mosaic(np.asarray(atlas.dataobj), mask, indices, coverage, underlay=underlay)
    fig = _figure(10, 2.6)
    ax = fig.add_axes((0.01, 0.05, 0.89, 0.8))
    ax.imshow(rgba, interpolation="nearest")  # one image for all cuts: one raster in the SVG
    ax.set_axis_off()
    ax.set_title(
        "coverage" + (" over the run's boldref" if underlay is not None else ""), loc="left", fontsize=10
    )
    width = (rgba.shape[1] + 2) // len(cuts)
    ink = "white" if underlay is not None else "black"  # the boldref is dark around the brain
    for k, z in enumerate(cuts):
        z_mm = (atlas.affine @ np.array([0, 0, z, 1]))[2]
        ax.text(k * width + 1, rgba.shape[0] - 1, f"z={z_mm:.0f}", fontsize=8, va="bottom", color=ink)
    left, right = ("L", "R") if atlas.affine[0, 0] > 0 else ("R", "L")  # x index grows to the right
    ax.text(1, 1, left, fontsize=8, va="top", color=ink)
    ax.text(width - 3, 1, right, fontsize=8, va="top", ha="right", color=ink)
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
    if fd is not None:  # the motion figure's numbers, for the report's QC table
        summary = motion_summary(confounds["framewise_displacement"].to_numpy(dtype=float))
        written.append(write_json(figure_path(output_dir, entities, atlas_label, "motion", ".json"), summary))
    return written


def motion_summary(fd: np.ndarray) -> dict[str, Any]:
    """Mean and maximum framewise displacement (mm) over the volumes that have one (fMRIPrep's
    first is n/a), as ``MeanFD``, ``MaxFD`` and ``FDVolumes``."""
    values = fd[np.isfinite(fd)]
    return {
        "Description": "Framewise displacement of the run (fMRIPrep's framewise_displacement), in mm",
        "MeanFD": round(float(values.mean()), 4) if values.size else None,
        "MaxFD": round(float(values.max()), 4) if values.size else None,
        "FDVolumes": int(values.size),
    }


def figure_path(
    output_dir: str | os.PathLike,
    entities: dict[str, Any],
    atlas_label: str | None,
    figure: str,
    extension: str = ".svg",
) -> Path:
    """``sub-X/[ses-Y/]figures/<run>_atlas-<A>_desc-<figure>_bold.svg`` (:func:`build_path`)."""
    return build_path(
        output_dir, {**entities, "atlas": atlas_label, "desc": figure}, "bold", extension, datatype="figures"
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


#: Above this mean framewise displacement (mm) a run is flagged: common exclusion thresholds for
#: functional connectivity are 0.2-0.55 mm (Parkes et al. 2018, NeuroImage 171:415).
HIGH_MEAN_FD = 0.5

#: Fractions of censored volumes and of excluded ROIs above which a run is flagged.
MANY_CENSORED, MANY_EXCLUDED = 0.5, 0.1


def _motion_of(figures: Path, run_name: str, atlas: str) -> dict[str, Any]:
    """The run's FD summary (:func:`motion_summary`), or {} when it had no FD column."""
    path = figures / f"{run_name}_atlas-{atlas}_desc-motion_bold.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def qc_row(run_name: str, atlas: str, meta: dict[str, Any], volumes: int, motion: dict) -> dict[str, Any]:
    """One run's row of the report's QC table: motion, censoring, regressors, degrees of freedom."""
    dof = meta.get("DegreesOfFreedom") or {}
    censored = len(meta["CensoredVolumes"])
    return {
        "run": run_name,
        "atlas": atlas,
        "volumes": volumes,
        "TR (s)": meta["RepetitionTime"],
        "mean FD (mm)": motion.get("MeanFD"),
        "max FD (mm)": motion.get("MaxFD"),
        "dummy volumes": len(meta.get("DummyVolumes") or []),
        "censored": f"{censored} ({100 * censored / max(volumes, 1):.0f}%)",
        "regressors": len(meta["ConfoundRegressors"]),
        "DOF after band-pass": dof.get("AfterFilter", "n/a"),
        "DOF left": dof.get("Left", "n/a"),
        "excluded ROIs": len(meta["ExcludedROIs"]),
    }


def run_warnings(meta: dict[str, Any], volumes: int, n_rois: int, motion: dict) -> list[str]:
    """Why a run's series may not be usable: few degrees of freedom, many censored volumes or
    excluded ROIs, high motion; empty for a run that is fine."""
    found = [w for w in (thin_margin_warning(meta),) if w]
    censored, excluded = len(meta["CensoredVolumes"]), len(meta["ExcludedROIs"])
    if volumes and censored / volumes > MANY_CENSORED:
        found.append(f"{censored} of {volumes} volumes are censored: the series rests on few volumes.")
    if n_rois and excluded / n_rois > MANY_EXCLUDED:
        found.append(
            f"{excluded} of {n_rois} ROIs are excluded (coverage under {meta['MinCoverage']}): check "
            "the brain mask and the coverage figure."
        )
    mean_fd = motion.get("MeanFD")
    if mean_fd is not None and mean_fd > HIGH_MEAN_FD:
        found.append(f"mean framewise displacement {mean_fd:.2f} mm (above {HIGH_MEAN_FD} mm): high motion.")
    return found


def _settings_table(meta: dict[str, Any]) -> pd.DataFrame:
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
    return settings


#: The sidecar fields every run of an OUTPUT_DIR shares (its ``neurossm_participant_settings.json``).
SHARED_SETTINGS = ("ConfoundStrategy", "HighPass", "LowPass", "Detrend", "Standardize", "FDThreshold",
                   "StdDVARSThreshold", "DummyScans", "MinCoverage")  # fmt: skip


def participant_provenance(provenance: dict[str, Any] | None, meta: dict[str, Any] | None) -> Section:
    """What made the report: the neurossm-app version, command line and date of the call, the
    input settings and the software versions (from a run's sidecar)."""
    section = provenance_section(provenance)
    if meta is not None:
        rows = [
            ("inputs", ", ".join(meta.get("Sources", [])[:3]) or "n/a"),
            ("atlas file", meta.get("AtlasFile")),
        ]
        rows += [(key, meta.get(key)) for key in SHARED_SETTINGS if key in meta]
        settings = pd.DataFrame(rows, columns=["input setting", "value"])
        settings["value"] = [("off" if v is None else str(v)) for v in settings["value"]]
        section.table(settings, caption="Input and settings of the runs (as in their sidecars)")
        software = meta.get("SoftwareVersions") or {}
        if software:
            section.table(pd.DataFrame({"software": list(software), "version": list(software.values())}))
    return section


def _run_section(sidecar_file: Path, meta: dict[str, Any], run_name: str, atlas: str, warnings: list[str]):
    section = Section(f"{run_name}, atlas {atlas}", f"{run_name}_atlas-{atlas}".replace("_", "-"))
    for warning in warnings:
        section.warning(warning)
    section.heading("Cleaning settings").table(_settings_table(meta))
    for key, caption in FIGURES.items():
        # the name figure_path gives this run and atlas, beside the run's func/ folder
        svg = sidecar_file.parent.parent / "figures" / f"{run_name}_atlas-{atlas}_desc-{key}_bold.svg"
        if svg.is_file():
            section.heading(caption).figure(svg.read_text(), caption)
    return section


def build_participant_report(
    output_dir: str | os.PathLike,
    subject: str,
    failed: dict[str, str] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Assemble ``OUTPUT_DIR/sub-<subject>.html`` from the subject's sidecars and reportlets.

    ``failed`` (run name -> why) lists the subject's runs that this call could not process; the
    report shows them first, each with its reason, after the warnings about the runs that were
    written. ``provenance`` is the call's (:func:`neurossm_app.provenance.call_provenance`).
    """
    output_dir = Path(output_dir)
    subject_dir = output_dir / f"sub-{subject}"
    # one section per run and atlas, atlas by atlas (several may share OUTPUT_DIR)
    sidecars = sorted(subject_dir.rglob("*_stat-mean_timeseries.json"), key=lambda p: (_atlas_of(p), p))
    sections, qc_rows, warnings, meta = [], [], [], None
    for sidecar_file in sidecars:
        meta = json.loads(sidecar_file.read_text())
        run_name, atlas = sidecar_file.name.split("_space-")[0], _atlas_of(sidecar_file)
        series = sidecar_file.with_suffix(".tsv")
        volumes, n_rois = _data_rows(series), len(_header(series))
        motion = _motion_of(sidecar_file.parent.parent / "figures", run_name, atlas)
        qc_rows.append(qc_row(run_name, atlas, meta, volumes, motion))
        run_warnings_ = run_warnings(meta, volumes, n_rois, motion)
        warnings += [f"{run_name} ({atlas}): {w}" for w in run_warnings_]
        sections.append(_run_section(sidecar_file, meta, run_name, atlas, run_warnings_))
    overview = Section("Summary", "summary")
    for warning in warnings:
        overview.warning(warning)
    if failed:
        overview.warning(
            f"{len(failed)} run(s) failed in the last call and have no new outputs; fix the input named "
            "and re-run."
        )
        overview.heading("Failed runs").table(
            pd.DataFrame({"run": list(failed), "why": list(failed.values())})
        )
    if qc_rows:
        overview.heading("Quality control per run").table(
            pd.DataFrame(qc_rows),
            caption="FD: framewise displacement; censored: volumes removed by --fd-thresh or "
            "--dvars-thresh; DOF: degrees of freedom the band-pass keeps, and those left after "
            "the regressors (and the trend)",
            float_format="{:.2f}",
        )
    else:
        overview.text("No completed runs were found for this subject.")
    page = render_page(
        f"neurossm-app participant report: sub-{subject}",
        "Denoised ROI time series extracted from fMRIPrep derivatives. The summary lists warnings and a "
        "quality-control table; each run and atlas then shows its cleaning settings, atlas coverage over "
        "the run's boldref, ROI signals before and after cleaning, head motion, and the ROI correlation "
        "matrix; provenance last.",
        [overview, *sections, participant_provenance(provenance, meta)],
    )
    return write_text(output_dir / f"sub-{subject}.html", page)


def _header(tsv: Path) -> list[str]:
    """The column names of a TSV (its first line only)."""
    with open(tsv) as handle:
        return handle.readline().rstrip("\n").split("\t")
