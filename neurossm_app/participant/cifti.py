"""One CIFTI run's extraction: per-parcel means over grayordinates, then the same cleaning as
volumetric runs (:func:`.extract.clean_run`). Called by the ``ExtractCiftiRun`` interface."""

from __future__ import annotations

import os
from pathlib import Path

from neurossm_app.cifti import cifti_parcel_means, load_cifti
from neurossm_app.config import CleaningSettings
from neurossm_app.errors import DataError
from neurossm_app.participant.extract import RunFiles, finish_run


def extract_cifti_run(
    bold_file: str | os.PathLike,
    atlas_file: str | os.PathLike,
    indices: list[int],
    names: list[str],
    repetition_time: float,
    settings: CleaningSettings,
    out_dir: str | os.PathLike,
    confounds_file: str | os.PathLike | None = None,
) -> RunFiles:
    """Parcellate a ``.dtseries.nii`` with a ``.dlabel.nii`` and clean the parcel means.

    ``coverage`` is the share of each parcel's dlabel grayordinates that the dtseries has; parcels
    under ``settings.min_coverage`` (with none at all, always) are ``n/a``. ``atlas_file`` of the
    result is the dlabel itself (there is no grid to resample it to).
    """
    signals, coverage = cifti_parcel_means(bold_file, atlas_file, indices)
    return finish_run(
        Path(out_dir), Path(atlas_file), signals, coverage, names, bold_file, repetition_time, settings,
        confounds_file,
    )  # fmt: skip


def cifti_volumes(bold_file: str | os.PathLike) -> int:
    """Rows (volumes) of a dtseries, from its header; refuses a file that is not a dtseries."""
    img = load_cifti(bold_file, "dtseries")
    if img.shape[0] < 2:
        raise DataError(f"{bold_file} has {img.shape[0]} row(s); a BOLD dtseries has one per volume.")
    return int(img.shape[0])
