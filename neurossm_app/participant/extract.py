"""Plain functions behind the participant workflow's nodes: one run's extraction (atlas
resampling, parcellation, cleaning) and output writing. Each is called by a small nipype
interface and tested directly."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import pandas as pd

from neurossm_app.bids import TEMPLATE_SPACE, build_path
from neurossm_app.config import CleaningSettings
from neurossm_app.errors import DataError
from neurossm_app.files import copy_atomic, write_atomic, write_json, write_tsv
from neurossm_app.fmriprep import CIFTI_DENSITY, CIFTI_SPACE
from neurossm_app.participant.clean import check_degrees_of_freedom, clean_signals, select_confounds
from neurossm_app.participant.confounds import EXPANSION_RULE, NAN_FILL_RULE
from neurossm_app.participant.parcellate import parcel_means
from neurossm_app.participant.preflight import check_mask_grid
from neurossm_app.provenance import PARTICIPANT_PACKAGES, software_versions

LOGGER = logging.getLogger("neurossm_app")


def resample_atlas(
    atlas_file: str | os.PathLike, bold_file: str | os.PathLike, out_file: str | os.PathLike
) -> Path:
    """Nearest-neighbour resampling of an integer atlas onto the grid of a BOLD image."""
    from nilearn.image import resample_to_img

    bold = nib.load(os.fspath(bold_file))
    if bold.ndim != 4:
        raise DataError(f"{bold_file} is {bold.ndim}D; a 4D BOLD series (x, y, z, time) is required.")
    atlas = nib.load(os.fspath(atlas_file))
    reference = nib.Nifti1Image(np.zeros(bold.shape[:3], np.uint8), bold.affine)
    resampled = resample_to_img(
        atlas, reference, interpolation="nearest", force_resample=True, copy_header=True
    )
    data = np.asarray(resampled.dataobj).astype(np.int32)
    out = nib.Nifti1Image(data, bold.affine)
    out.set_data_dtype(np.int32)
    nib.save(out, os.fspath(out_file))
    return Path(out_file)


def load_mask(mask_file: str | os.PathLike, bold_file: str | os.PathLike) -> np.ndarray:
    """Boolean brain mask, checked to share the BOLD image's grid."""
    mask = nib.load(os.fspath(mask_file))
    check_mask_grid(mask, nib.load(os.fspath(bold_file)), mask_file, bold_file)
    return np.asarray(mask.dataobj) > 0


class RunFiles(NamedTuple):
    """What :func:`extract_run` writes into its folder (the nipype node's working directory)."""

    atlas_file: Path  # the atlas on the BOLD grid (int32 NIfTI)
    raw_file: Path  # (T, R) float64 parcel means before cleaning, .npy (read by the report only)
    coverage_file: Path  # (R,) fraction of each ROI inside the brain mask, TSV
    clean_file: Path  # (T, R) denoised parcel signals, TSV
    metadata_file: Path  # regressors, censored volumes, excluded ROIs, JSON


def extract_run(
    bold_file: str | os.PathLike,
    mask_file: str | os.PathLike,
    atlas_file: str | os.PathLike,
    indices: list[int],
    names: list[str],
    repetition_time: float,
    settings: CleaningSettings,
    out_dir: str | os.PathLike,
    n_threads: int = 1,
    confounds_file: str | os.PathLike | None = None,
) -> RunFiles:
    """One run's extraction, in one process: resample the atlas, take parcel means, clean them.

    The three steps take well under a second each on a small run, so they share one nipype node
    (one cache entry, one hand-over between processes) rather than three.
    ``n_threads`` threads inflate a gzipped BOLD image (:func:`.parcellate.open_stream`).
    ``confounds_file`` is the run's confounds TSV (default: the one beside ``bold_file``).
    """
    out_dir = Path(out_dir)
    atlas_on_bold = resample_atlas(atlas_file, bold_file, out_dir / "atlas_on_bold.nii.gz")
    mask = load_mask(mask_file, bold_file)
    labels = np.asarray(nib.load(os.fspath(atlas_on_bold)).dataobj)
    signals, coverage = parcel_means(bold_file, labels, mask, np.asarray(indices), n_threads=n_threads)
    return finish_run(
        out_dir, atlas_on_bold, signals, coverage, names, bold_file, repetition_time, settings, confounds_file
    )


def finish_run(
    out_dir: Path,
    atlas_file: Path,
    signals: np.ndarray,
    coverage: np.ndarray,
    names: list[str],
    bold_file: str | os.PathLike,
    repetition_time: float,
    settings: CleaningSettings,
    confounds_file: str | os.PathLike | None,
) -> RunFiles:
    """Clean one run's (T, R) parcel means (:func:`clean_run`) and write the :class:`RunFiles`
    (volumetric runs and CIFTI runs alike)."""
    raw = write_atomic(out_dir / "raw_timeseries.npy", lambda tmp: np.save(tmp, signals))
    cov = write_tsv(out_dir / "coverage.tsv", pd.DataFrame({"roi": names, "coverage": coverage}))
    cleaned, metadata = clean_run(
        signals, coverage, names, bold_file, repetition_time, settings, confounds_file
    )
    clean = write_tsv(out_dir / "clean_timeseries.tsv", pd.DataFrame(cleaned, columns=names))
    meta = write_json(out_dir / "clean_metadata.json", metadata)
    return RunFiles(atlas_file, raw, cov, clean, meta)


def clean_run(
    signals: np.ndarray,
    coverage: np.ndarray,
    names: list[str],
    bold_file: str | os.PathLike,
    repetition_time: float,
    settings: CleaningSettings,
    confounds_file: str | os.PathLike | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the coverage threshold and confound cleaning to one run's parcel means.

    Parameters
    ----------
    signals
        (T, R) raw parcel means.
    coverage
        (R,) fraction of each ROI inside the brain mask; ROIs under ``settings.min_coverage``
        become NaN columns.
    names
        (R,) ROI names, for the metadata's excluded ROIs.
    bold_file
        The fMRIPrep BOLD file.
    confounds_file
        Its confounds TSV (default: the one beside ``bold_file``, either release's name).

    Returns
    -------
    cleaned : (T, R) float64
        Denoised signals; dummy and censored volumes are NaN rows.
    metadata : dict
        Regressors (and those computed), dummy and censored volumes, excluded ROIs, degrees of
        freedom.

    Raises
    ------
    DataError
        The confounds cannot be used (:func:`.clean.select_confounds`) or leave no degrees of
        freedom (:func:`.clean.check_degrees_of_freedom`).
    """
    signals = np.array(signals, dtype=np.float64)
    signals[:, coverage < settings.min_coverage] = np.nan
    n_vols = signals.shape[0]
    selection = select_confounds(bold_file, settings, n_vols, confounds_file)
    kept = n_vols if selection.sample_mask is None else len(selection.sample_mask)
    n_regressors = 0 if selection.confounds is None else selection.confounds.shape[1]
    dof = check_degrees_of_freedom(Path(bold_file).name, kept, repetition_time, n_regressors, settings)
    cleaned = clean_signals(signals, selection.confounds, selection.sample_mask, repetition_time, settings)
    censored = (
        []
        if selection.sample_mask is None
        else sorted(set(range(n_vols)) - set(np.asarray(selection.sample_mask).tolist()))
    )
    metadata = {
        "DegreesOfFreedom": dof,
        "ConfoundRegressors": [] if selection.confounds is None else list(selection.confounds.columns),
        "ConfoundsComputed": selection.computed,
        "DummyVolumes": selection.dummy_volumes,
        "CensoredVolumes": censored,
        "ExcludedROIs": [
            str(c) for c, cov in zip(names, coverage, strict=True) if cov < settings.min_coverage
        ],
    }
    return cleaned, metadata


def input_fingerprint(path: str | os.PathLike) -> str:
    """A cheap identity of a large input file, for nipype's cache instead of hashing its bytes.

    A gzip file ends with the CRC-32 and the length of its uncompressed content, so its size and
    those 8 bytes identify the content (hashing a 1 GB run would take seconds per node); an
    uncompressed file is identified by its size and modification time, as nipype's
    ``timestamp`` hash does.
    """
    stat = os.stat(path)
    if os.fspath(path).endswith(".gz") and stat.st_size >= 18:
        with open(path, "rb") as handle:
            handle.seek(-8, os.SEEK_END)
            return f"gzip size={stat.st_size} crc32+isize={handle.read(8).hex()}"
    return f"size={stat.st_size} mtime_ns={stat.st_mtime_ns}"


def run_sidecar(
    repetition_time: float,
    atlas_label: str,
    atlas_file: str | os.PathLike,
    settings: CleaningSettings,
    clean_metadata: dict[str, Any],
    sources: list[str],
    atlas_provenance: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``_timeseries.json`` contract: enough to reproduce the numbers with nilearn alone.

    ``atlas_provenance`` (:meth:`neurossm_app.atlases.Atlas.provenance`) says where the atlas came
    from and gives its SHA-256, after ``AtlasFile``."""
    return {
        "Description": "Mean BOLD signal per atlas ROI within the brain mask, denoised with "
        "nilearn.signal.clean; columns are ROIs, rows are volumes, n/a marks missing values.",
        "RepetitionTime": repetition_time,
        "Atlas": atlas_label,
        "AtlasFile": os.fspath(atlas_file),
        **(atlas_provenance or {}),
        "Strategy": "mean",
        "Precision": "float64",
        "ConfoundStrategy": settings.strategy,
        "ConfoundRegressors": clean_metadata["ConfoundRegressors"],
        "ConfoundsComputed": clean_metadata.get("ConfoundsComputed", []),
        "ConfoundsComputedDefinition": EXPANSION_RULE,
        "ConfoundNaNHandling": NAN_FILL_RULE,
        "StandardizeConfounds": True,
        "HighPass": settings.high_pass,
        "LowPass": settings.low_pass,
        "Filter": "butterworth",
        "Detrend": settings.detrend,
        "Standardize": settings.standardize,
        "FDThreshold": settings.fd_threshold,
        "StdDVARSThreshold": settings.std_dvars_threshold,
        "DummyScans": settings.dummy_scans,
        "DummyVolumes": clean_metadata.get("DummyVolumes", []),
        "CensoredVolumes": clean_metadata["CensoredVolumes"],
        "DegreesOfFreedom": clean_metadata["DegreesOfFreedom"],
        "MinCoverage": settings.min_coverage,
        "ExcludedROIs": clean_metadata["ExcludedROIs"],
        "Sources": sources,
        "SoftwareVersions": _participant_versions(),
    }


@functools.cache
def _participant_versions() -> dict[str, str]:
    """Versions for the sidecars, looked up once per process (about 50 ms per lookup)."""
    return software_versions(PARTICIPANT_PACKAGES)


def write_run_outputs(
    output_dir: str | os.PathLike,
    entities: dict[str, Any],
    atlas_label: str,
    clean_file: str | os.PathLike,
    coverage_file: str | os.PathLike,
    sidecar: dict[str, Any],
) -> list[Path]:
    """Copy one run's results to their BIDS-derivative names, atomically, sidecar last.

    The sidecar is written last so its presence marks the run as complete.
    """
    base = {"space": TEMPLATE_SPACE, **entities, "atlas": atlas_label}  # the runs' space, if given
    if base["space"] == CIFTI_SPACE:  # grayordinates: space-fsLR_den-91k
        base["density"] = CIFTI_DENSITY
    series = build_path(output_dir, {**base, "stat": "mean"}, "timeseries", ".tsv")
    coverage = build_path(output_dir, {**base, "stat": "coverage"}, "bold", ".tsv")
    sidecar_path = series.with_suffix(".json")
    copy_atomic(clean_file, series)
    copy_atomic(coverage_file, coverage)
    write_json(sidecar_path, {**sidecar, "Space": base["space"]})
    return [series, coverage, sidecar_path]
