"""Cheap checks of a run's files (headers only) before the workflow starts, so mistakes are
reported as one clear line rather than a node crash."""

from __future__ import annotations

import gzip
import math
import multiprocessing
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import nibabel as nib
import numpy as np

from neurossm_app.bids import BoldRun
from neurossm_app.config import CleaningSettings
from neurossm_app.errors import DataError, NeurossmError
from neurossm_app.fmriprep import missing_confounds_error, needs_confounds
from neurossm_app.participant.clean import check_confounds

_AFFINE_TOLERANCE = 1e-3  # mm; fMRIPrep writes a run's mask and BOLD with the same affine


def _load(path: os.PathLike) -> nib.Nifti1Image:
    try:
        return nib.load(os.fspath(path))
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for a broken file
        raise DataError(
            f"cannot read {path} ({type(err).__name__}); the file is damaged, re-copy it."
        ) from None


def check_run(run: BoldRun, settings: CleaningSettings | None = None) -> None:
    """Check 4D-ness, grids, the TR, the confounds' row count and gzip integrity of one run.

    With ``settings`` (the call's denoising settings) the confounds are also checked against the
    strategy: the columns it needs, dummy scans and degrees of freedom (:func:`check_confounds`).
    Raises :class:`DataError` with one line; the CLI checks every run and reports each failure.
    A CIFTI run (a dtseries, no mask) is checked for its axes instead of 4D-ness and grids.
    """
    if run.is_cifti:
        from neurossm_app.participant.cifti import cifti_volumes

        bold, n_vols = None, cifti_volumes(run.bold)
    else:
        bold = _load(run.bold)
        if bold.ndim != 4:
            raise DataError(f"{run.bold} is {bold.ndim}D; a 4D BOLD series (x, y, z, time) is required.")
        check_mask_grid(_load(run.mask), bold, run.mask, run.bold)
        n_vols = bold.shape[3]
    if not run.repetition_time > 0:
        raise DataError(
            f"RepetitionTime {run.repetition_time} in the sidecar of {run.bold} must be positive."
        )
    if run.confounds is None:  # fine when nothing reads it (--confounds none, no censoring)
        if settings is None or needs_confounds(
            settings.strategy, settings.fd_threshold, settings.std_dvars_threshold
        ):
            raise missing_confounds_error(run.bold, settings.strategy if settings else "36P")
        n_rows = n_vols
    else:
        with open(run.confounds) as handle:
            n_rows = sum(1 for line in handle if line.strip()) - 1
    if n_rows != n_vols:
        raise DataError(
            f"confounds {run.confounds} has {n_rows} rows but {run.bold} has {n_vols} volumes; "
            "both must come from the same fMRIPrep run."
        )
    if settings is not None:  # the columns the strategy needs, dummy scans, degrees of freedom
        check_confounds(run.bold, n_vols, run.repetition_time, settings, run.confounds)
    if bold is not None and str(run.bold).endswith(".gz"):
        itemsize = np.dtype(bold.get_data_dtype()).itemsize
        _check_gzip(run.bold, int(bold.dataobj.offset) + int(np.prod(bold.shape)) * itemsize)


def check_runs(
    runs: list[BoldRun], settings: CleaningSettings | None = None, processes: int = 1
) -> dict[str, NeurossmError]:
    """:func:`check_run` on every run: run name -> error of each run that fails, in run order.

    With ``processes`` > 1 and a cohort of runs, they are checked in that many forked processes:
    the checks read headers, confounds tables and gzip trailers (and load nilearn's confounds
    reader once per process), and done one by one they were most of the seconds before the
    first node, while the other cores of the call had nothing to do (docs/performance.md).
    """
    check = partial(_failure, settings=settings)
    if processes < 2 or len(runs) < 2 * processes or "fork" not in multiprocessing.get_all_start_methods():
        found = map(check, runs)
    else:
        chunk = math.ceil(len(runs) / processes)
        context = multiprocessing.get_context("fork")  # the indexed runs and imports come along
        with ProcessPoolExecutor(processes, mp_context=context) as pool:
            found = list(pool.map(check, runs, chunksize=chunk))
    return {run.name: err for run, err in zip(runs, found, strict=True) if err is not None}


def _failure(run: BoldRun, settings: CleaningSettings | None) -> NeurossmError | None:
    try:
        check_run(run, settings)
    except NeurossmError as err:
        return err
    return None


def check_mask_grid(
    mask: nib.Nifti1Image, bold: nib.Nifti1Image, mask_file: os.PathLike, bold_file: os.PathLike
) -> None:
    """Refuse a brain mask whose grid (shape and affine, to 1e-3 mm) is not the BOLD run's.

    The message gives both shapes and, when the affines differ, the largest absolute difference
    between their entries (two same-shape grids would otherwise read as identical).
    """
    gap = float(np.abs(mask.affine - bold.affine).max())
    if mask.shape[:3] == bold.shape[:3] and gap <= _AFFINE_TOLERANCE:
        return
    affines = (
        f"; their affines differ by up to {gap:.4g} mm (largest absolute difference of their entries)"
        if gap > _AFFINE_TOLERANCE
        else ""
    )
    raise DataError(
        f"brain mask {mask_file} (grid {mask.shape[:3]}) does not match BOLD {bold_file} "
        f"(grid {bold.shape[:3]}){affines}; use the mask fMRIPrep wrote for this run and space."
    )


def _check_gzip(path: os.PathLike, expected_bytes: int) -> None:
    """Catch truncated gzip files without decompressing them when possible.

    A gzip file ends with the uncompressed size modulo 2**32 (ISIZE). If it matches the size the
    NIfTI header implies, the file is whole (reading the stream would double the run's I/O);
    otherwise the stream is read to the end to tell truncation from an odd but valid file.
    """
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() >= 18:
            handle.seek(-4, os.SEEK_END)
            if int.from_bytes(handle.read(4), "little") == expected_bytes % 2**32:
                return
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error):
        raise DataError(
            f"{path} is truncated or not valid gzip; re-copy it from the fMRIPrep output."
        ) from None
