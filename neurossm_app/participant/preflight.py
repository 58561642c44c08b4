"""Cheap checks of a run's files (headers only) before the workflow starts, so mistakes are
reported as one clear line rather than a node crash."""

from __future__ import annotations

import gzip
import os
import zlib

import nibabel as nib
import numpy as np

from neurossm_app.bids import BoldRun
from neurossm_app.errors import DataError


def _load(path: os.PathLike) -> nib.Nifti1Image:
    try:
        return nib.load(os.fspath(path))
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for a broken file
        raise DataError(
            f"cannot read {path} ({type(err).__name__}); the file is damaged, re-copy it."
        ) from None


def check_run(run: BoldRun) -> None:
    """Check 4D-ness, grids, the TR and the confounds' row count of one run."""
    bold = _load(run.bold)
    if bold.ndim != 4:
        raise DataError(f"{run.bold} is {bold.ndim}D; a 4D BOLD series (x, y, z, time) is required.")
    mask = _load(run.mask)
    if mask.shape[:3] != bold.shape[:3] or not np.allclose(mask.affine, bold.affine, atol=1e-3):
        raise DataError(
            f"brain mask {run.mask} (grid {mask.shape[:3]}) does not match BOLD {run.bold} "
            f"(grid {bold.shape[:3]}); use the mask fMRIPrep wrote for this run and space."
        )
    if not run.repetition_time > 0:
        raise DataError(
            f"RepetitionTime {run.repetition_time} in the sidecar of {run.bold} must be positive."
        )
    n_vols = bold.shape[3]
    with open(run.confounds) as handle:
        n_rows = sum(1 for line in handle if line.strip()) - 1
    if n_rows != n_vols:
        raise DataError(
            f"confounds {run.confounds} has {n_rows} rows but {run.bold} has {n_vols} volumes; "
            "both must come from the same fMRIPrep run."
        )
    if str(run.bold).endswith(".gz"):
        _check_gzip(run.bold)


def _check_gzip(path: os.PathLike) -> None:
    """Read the whole gzip stream (fast, no decoding into arrays) to catch truncated files."""
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error):
        raise DataError(
            f"{path} is truncated or not valid gzip; re-copy it from the fMRIPrep output."
        ) from None
