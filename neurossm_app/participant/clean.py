"""Confound selection (nilearn's fMRIPrep interface) and denoising of parcel signals.

Cleaning is ``nilearn.signal.clean`` on parcel means, the same operation
``NiftiLabelsMasker(..., confounds=...)`` applies, so the sidecar's fields reproduce our numbers
with the masker alone.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from neurossm_app.config import CleaningSettings
from neurossm_app.errors import DataError, UsageError

# name -> keyword arguments of nilearn.interfaces.fmriprep.load_confounds. High-pass cosines are
# left out on purpose: the band-pass filter in ``clean`` does that job (and is recorded).
CONFOUND_STRATEGIES: dict[str, dict[str, Any] | None] = {
    "none": None,
    "simple": {"strategy": ("motion", "wm_csf"), "motion": "full", "wm_csf": "basic"},
    "24P": {"strategy": ("motion",), "motion": "full"},
    "36P": {
        "strategy": ("motion", "wm_csf", "global_signal"),
        "motion": "full",
        "wm_csf": "full",
        "global_signal": "full",
    },
    "acompcor": {
        "strategy": ("motion", "compcor"),
        "motion": "full",
        "compcor": "anat_combined",
        "n_compcor": 5,
    },
    "acompcor-gsr": {
        "strategy": ("motion", "compcor", "global_signal"),
        "motion": "full",
        "compcor": "anat_combined",
        "n_compcor": 5,
        "global_signal": "basic",
    },
}


def select_confounds(
    bold_file: str | os.PathLike, settings: CleaningSettings
) -> tuple[pd.DataFrame | None, np.ndarray | None]:
    """Confound regressors and the censoring mask for one fMRIPrep run.

    Returns
    -------
    confounds : (T, K) DataFrame or None
        The regressors, named as in fMRIPrep's ``desc-confounds_timeseries.tsv``.
    sample_mask : (T_kept,) int array or None
        Indices of the volumes kept after censoring; ``None`` keeps all.
    """
    from nilearn.interfaces.fmriprep import load_confounds

    if settings.strategy not in CONFOUND_STRATEGIES:
        raise UsageError(
            f"unknown confound strategy {settings.strategy!r}; choose one of "
            f"{', '.join(CONFOUND_STRATEGIES)}."
        )
    kwargs = dict(CONFOUND_STRATEGIES[settings.strategy] or {"strategy": ()})
    scrub = settings.fd_threshold is not None or settings.std_dvars_threshold is not None
    if scrub:
        kwargs["strategy"] = (*kwargs["strategy"], "scrub")
        kwargs["scrub"] = 0  # no segment-length rule: censor exactly the flagged volumes
        kwargs["fd_threshold"] = settings.fd_threshold if settings.fd_threshold is not None else np.inf
        kwargs["std_dvars_threshold"] = (
            settings.std_dvars_threshold if settings.std_dvars_threshold is not None else np.inf
        )
    if not kwargs["strategy"]:
        return None, None
    try:
        # demean=False: regressors equal the TSV's columns, so the sidecar reproduces them exactly
        # (nilearn.signal.clean standardizes them anyway).
        confounds, sample_mask = load_confounds(os.fspath(bold_file), demean=False, **kwargs)
    except (ValueError, FileNotFoundError) as err:
        raise DataError(
            f"cannot read fMRIPrep confounds for {os.fspath(bold_file)} with strategy "
            f"{settings.strategy!r}: {str(err).splitlines()[0]}"
        ) from None
    if confounds is not None and confounds.shape[1] == 0:
        confounds = None
    return confounds, sample_mask


def clean_signals(
    signals: np.ndarray,
    confounds: pd.DataFrame | None,
    sample_mask: np.ndarray | None,
    repetition_time: float,
    settings: CleaningSettings,
) -> np.ndarray:
    """Denoise parcel signals with ``nilearn.signal.clean``, keeping the series length.

    Parameters
    ----------
    signals
        (T, R) parcel means; all-NaN columns (ROIs without coverage) stay NaN.
    confounds
        (T, K) regressors or ``None``.
    sample_mask
        Indices of kept volumes, or ``None``.
    repetition_time
        Seconds per volume, for the band-pass filter.

    Returns
    -------
    (T, R) float64
        Cleaned signals; censored volumes are NaN rows.
    """
    from nilearn.signal import clean

    n_vols = signals.shape[0]
    if confounds is not None and len(confounds) != n_vols:
        raise DataError(
            f"the confounds file has {len(confounds)} rows but the BOLD run has {n_vols} volumes; "
            "both must come from the same fMRIPrep run."
        )
    valid = ~np.isnan(signals).all(axis=0)
    out = np.full_like(signals, np.nan, dtype=np.float64)
    kept = np.arange(n_vols) if sample_mask is None else np.asarray(sample_mask)
    cleaned = clean(
        signals[:, valid],
        detrend=settings.detrend,
        standardize=settings.standardize if settings.standardize else False,
        confounds=None if confounds is None else confounds.to_numpy(),
        low_pass=settings.low_pass,
        high_pass=settings.high_pass,
        t_r=repetition_time,
        sample_mask=sample_mask,
        standardize_confounds=True,
        filter="butterworth",
    )
    out[np.ix_(kept, np.flatnonzero(valid))] = cleaned
    return out


def filter_degrees_of_freedom(n_volumes: int, repetition_time: float, settings: CleaningSettings) -> int:
    """Roughly how many independent values a series keeps after band-pass filtering.

    A filter passing ``[high, low]`` Hz keeps ``2 * (low - high) * n_volumes * TR`` of the
    ``n_volumes`` Fourier coefficients. Regressing out as many confounds as that leaves nothing.
    """
    nyquist = 0.5 / repetition_time
    low = min(settings.low_pass, nyquist) if settings.low_pass else nyquist
    high = settings.high_pass or 0.0
    return max(int(2 * (low - high) * n_volumes * repetition_time), 0)
