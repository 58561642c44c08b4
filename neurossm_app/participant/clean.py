"""Confound selection (nilearn's fMRIPrep interface) and denoising of parcel signals.

Cleaning is ``nilearn.signal.clean`` on parcel means, the same operation
``NiftiLabelsMasker(..., confounds=...)`` applies, so the sidecar's fields reproduce our numbers
with the masker alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from neurossm_app.config import CleaningSettings
from neurossm_app.errors import DataError, UsageError
from neurossm_app.participant.confounds import (
    add_expansions,
    check_columns,
    dummy_volumes,
    needed_columns,
    read_confounds_table,
    without_non_steady_state,
)

LOGGER = logging.getLogger("neurossm_app")

# name -> keyword arguments of nilearn.interfaces.fmriprep.load_confounds. High-pass cosines are
# left out on purpose (the band-pass filter in ``clean`` does that job, and is recorded), except
# with CompCor: fMRIPrep computed its components after the cosine high-pass, so nilearn requires
# the cosines beside them.
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
        "strategy": ("motion", "high_pass", "compcor"),
        "motion": "full",
        "compcor": "anat_combined",
        "n_compcor": 5,
    },
    "acompcor-gsr": {
        "strategy": ("motion", "high_pass", "compcor", "global_signal"),
        "motion": "full",
        "compcor": "anat_combined",
        "n_compcor": 5,
        "global_signal": "basic",
    },
}


class ConfoundSelection(NamedTuple):
    """What :func:`select_confounds` chose for one run."""

    confounds: pd.DataFrame | None  # (T, K) regressors, named as in fMRIPrep's confounds file
    sample_mask: np.ndarray | None  # (T_kept,) indices of the volumes kept; None keeps all
    dummy_volumes: list[int]  # volumes left out as non-steady-state (--dummy-scans)
    computed: list[str]  # expansion columns computed because the file lacks them
    confounds_file: Path | None  # the file read (None: not needed or, with none, not found)


def strategy_arguments(settings: CleaningSettings) -> dict[str, Any]:
    """Keyword arguments of ``load_confounds`` for ``settings`` (``strategy`` empty for none)."""
    if settings.strategy not in CONFOUND_STRATEGIES:
        raise UsageError(
            f"unknown confound strategy {settings.strategy!r}; choose one of "
            f"{', '.join(CONFOUND_STRATEGIES)}."
        )
    kwargs = dict(CONFOUND_STRATEGIES[settings.strategy] or {"strategy": ()})
    if settings.fd_threshold is not None or settings.std_dvars_threshold is not None:
        kwargs["strategy"] = (*kwargs["strategy"], "scrub")
        kwargs["scrub"] = 0  # no segment-length rule: censor exactly the flagged volumes
        kwargs["fd_threshold"] = settings.fd_threshold if settings.fd_threshold is not None else np.inf
        kwargs["std_dvars_threshold"] = (
            settings.std_dvars_threshold if settings.std_dvars_threshold is not None else np.inf
        )
    return kwargs


def find_confounds_file(bold_file: str | os.PathLike) -> Path | None:
    """The confounds file beside an fMRIPrep BOLD run, found as ``load_confounds`` finds it
    (``desc-confounds_timeseries.tsv`` or the 1.2-20.1 name ``desc-confounds_regressors.tsv``);
    None when there is none."""
    import inspect

    from nilearn.interfaces.fmriprep.load_confounds_utils import get_confounds_file

    # nilearn 0.13 added flag_tedana (tedana's outputs); 0.12 does not take it
    flags = {"flag_full_aroma": False}
    if "flag_tedana" in inspect.signature(get_confounds_file).parameters:
        flags["flag_tedana"] = False
    try:
        return Path(get_confounds_file(os.fspath(bold_file), **flags))
    except ValueError as err:
        if str(err).startswith("Could not find"):
            return None
        raise DataError(f"cannot pick the confounds of {bold_file}: {' '.join(str(err).split())}") from None


def select_confounds(
    bold_file: str | os.PathLike,
    settings: CleaningSettings,
    n_volumes: int,
    confounds_file: str | os.PathLike | None = None,
    log: bool = True,
) -> ConfoundSelection:
    """Confound regressors, non-steady-state volumes and the censoring mask of one fMRIPrep run.

    Parameters
    ----------
    bold_file
        The run's ``desc-preproc_bold`` file.
    n_volumes
        Its volume count (T).
    confounds_file
        Its confounds TSV; by default the one beside ``bold_file`` (:func:`find_confounds_file`).
        ``--confounds none`` with an integer ``--dummy-scans`` reads no file.
    log
        Log that ``--dummy-scans auto`` means 0 for a run without a confounds file (the run says
        it; the pre-flight does not repeat it).

    Raises
    ------
    InputMissingError
        The strategy (or censoring) needs a confounds file and there is none.
    DataError
        The file is of a release nilearn does not read, lacks columns the strategy needs (and
        cannot compute), has another row count, or nilearn refuses it.
    """
    kwargs = strategy_arguments(settings)
    if not kwargs["strategy"] and settings.dummy_scans != "auto":
        dummies = dummy_volumes(None, settings.dummy_scans, n_volumes)
        return _selection(None, None, dummies, [], None, n_volumes)
    path = Path(confounds_file) if confounds_file else find_confounds_file(bold_file)
    if path is None or not path.is_file():
        if kwargs["strategy"]:
            from neurossm_app.fmriprep import missing_confounds_error

            raise missing_confounds_error(bold_file, settings.strategy)
        if log:
            LOGGER.info("%s: no confounds file, so --dummy-scans auto means 0", Path(bold_file).name)
        return _selection(None, None, [], [], None, n_volumes)
    table = read_confounds_table(path)
    if len(table) != n_volumes:
        raise DataError(
            f"the confounds file {path} has {len(table)} rows but the BOLD run has {n_volumes} volumes; "
            "both must come from the same fMRIPrep run."
        )
    columns = needed_columns(kwargs)
    table, computed = add_expansions(table, columns)
    check_columns(table, columns, path, settings.strategy)
    dummies = dummy_volumes(table, settings.dummy_scans, n_volumes)
    if not kwargs["strategy"]:
        return _selection(None, None, dummies, [], path, n_volumes)
    confounds, mask = _load_confounds(without_non_steady_state(table), path, kwargs, bold_file, settings)
    used = [c for c in computed if c in confounds.columns]
    return _selection(confounds, mask, dummies, used, path, n_volumes)


def _selection(confounds, sample_mask, dummies, computed, path, n_volumes: int) -> ConfoundSelection:
    """The selection, with the dummy volumes left out of the sample mask too."""
    if dummies:
        kept = np.arange(n_volumes) if sample_mask is None else np.asarray(sample_mask)
        sample_mask = np.setdiff1d(kept, dummies)
    if confounds is not None and confounds.shape[1] == 0:
        confounds = None
    return ConfoundSelection(confounds, sample_mask, list(dummies), list(computed), path)


def _load_confounds(
    table: pd.DataFrame, path: Path, kwargs: dict[str, Any], bold_file, settings: CleaningSettings
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """nilearn's ``load_confounds`` on ``table`` (possibly with computed columns).

    The table goes to a temporary folder under the 20.2+ name beside a BOLD name nilearn accepts,
    with the file's JSON (CompCor needs it), so nilearn selects exactly as from the original.
    """
    from nilearn.interfaces.fmriprep import load_confounds

    with tempfile.TemporaryDirectory(prefix="neurossm-confounds-") as tmp:
        stem = Path(tmp) / "sub-0_task-0"
        table.to_csv(f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            shutil.copyfile(sidecar, f"{stem}_desc-confounds_timeseries.json")
        try:
            # demean=False: regressors equal the TSV's columns, so the sidecar reproduces them
            # exactly (nilearn.signal.clean standardizes them anyway).
            return load_confounds(f"{stem}_space-0_desc-preproc_bold.nii.gz", demean=False, **kwargs)
        except (ValueError, KeyError, FileNotFoundError) as err:
            reason = " ".join(str(err).split()).replace(os.fspath(stem), os.fspath(path.with_suffix("")))
            raise DataError(
                f"cannot read fMRIPrep confounds {path} for {Path(bold_file).name} with strategy "
                f"{settings.strategy!r}: {reason[:300]}"
            ) from None


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


def filter_padding(repetition_time: float, settings: CleaningSettings) -> int:
    """Volumes ``scipy.signal.sosfiltfilt`` pads with in nilearn's Butterworth filter (order 5);
    a series must be longer (0 without a filter). 33 for a band-pass, 18 for one edge."""
    from scipy import signal

    nyquist = 0.5 / repetition_time
    edges = [
        (kind, min(freq, 0.99 * nyquist))
        for kind, freq in (("high", settings.high_pass), ("low", settings.low_pass))
        if freq is not None
    ]
    if not edges:
        return 0
    btype = "band" if len(edges) == 2 else edges[0][0]
    wn = [f for _, f in edges] if len(edges) == 2 else edges[0][1]
    sos = signal.butter(5, wn, btype=btype, fs=1 / repetition_time, output="sos")
    zeros = min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * (2 * len(sos) + 1 - zeros)


#: Regressors (and the linear trend) above this share of the filter's degrees of freedom leave
#: a thin margin: the run is written, with a warning in the log, the sidecar and the report.
THIN_MARGIN = 0.8


def planned_regressors(strategy: str) -> int:
    """Regressors a built-in strategy selects from a complete fMRIPrep file (CompCor's cosines,
    whose number grows with the run's length, not counted)."""
    kwargs = CONFOUND_STRATEGIES[strategy] or {"strategy": ()}
    return len(needed_columns(kwargs)) + (
        kwargs.get("n_compcor", 0) if "compcor" in kwargs["strategy"] else 0
    )


def check_degrees_of_freedom(
    run: str,
    n_volumes: int,
    repetition_time: float,
    n_regressors: int,
    settings: CleaningSettings,
    warn: bool = True,
) -> dict[str, Any]:
    """Refuse a run whose regressors take every degree of freedom the band-pass leaves.

    Parameters
    ----------
    run
        The run's name, for the message.
    n_volumes
        Volumes in the fit (after dummy scans and censoring).
    n_regressors
        Confound regressors; the linear trend (``settings.detrend``) counts as one more.
    warn
        Log a thin margin (the pre-flight leaves that to the run itself).

    Returns
    -------
    dict
        The sidecar's ``DegreesOfFreedom``: ``AfterFilter``, ``Regressors``, ``Left`` (after
        filter, minus regressors and trend) and ``ThinMargin`` (regressors and trend at least
        :data:`THIN_MARGIN` of ``AfterFilter``; the run is written with a warning).

    Raises
    ------
    DataError
        ``AfterFilter`` is no more than the regressors and trend, or the run is too short for the
        filter's padding (:func:`filter_padding`) (exit 65).
    """
    dof = filter_degrees_of_freedom(n_volumes, repetition_time, settings)
    used = n_regressors + int(settings.detrend)
    trend = " and the linear trend" if settings.detrend else ""
    band = f"{settings.high_pass or 0}-{settings.low_pass or 'Nyquist'} Hz band-pass"
    padding = filter_padding(repetition_time, settings)
    if n_volumes <= padding:
        raise DataError(
            f"{run}: {n_volumes} volumes are too few for the {band} (nilearn's Butterworth filter "
            f"needs more than {padding}); use no band-pass (--high-pass none --low-pass none) or "
            "longer runs."
        )
    thin = used >= THIN_MARGIN * dof
    if used >= dof:
        smaller = [
            name for name in CONFOUND_STRATEGIES if planned_regressors(name) + int(settings.detrend) < dof
        ]
        message = (
            f"{run}: {n_regressors} confound regressors ({settings.strategy}){trend} meet only about "
            f"{dof} degrees of freedom left by the {band} in {n_volumes} volumes of {repetition_time} s, "
            f"so nothing of the signal would be left; use a smaller strategy (--confounds "
            f"{' or '.join(smaller)}), no band-pass (--low-pass none) or longer runs."
        )
        raise DataError(message)
    if thin and warn:
        roomier = [
            name
            for name in CONFOUND_STRATEGIES
            if planned_regressors(name) + int(settings.detrend) < THIN_MARGIN * dof
        ]
        LOGGER.warning(
            "%s: the band-pass keeps about %d degrees of freedom but %d confounds%s are regressed out, "
            "so little signal is left; use a longer run, fewer confounds (--confounds %s) or a wider "
            "band (--low-pass none).",
            run,
            dof,
            n_regressors,
            trend,
            " or ".join(roomier),
        )
    return {"AfterFilter": dof, "Regressors": n_regressors, "Left": dof - used, "ThinMargin": thin}


def check_confounds(
    bold_file: str | os.PathLike,
    n_volumes: int,
    repetition_time: float,
    settings: CleaningSettings,
    confounds_file: str | os.PathLike | None = None,
) -> ConfoundSelection:
    """Every confounds check of one run, for the pre-flight: release, columns, rows, dummy scans,
    degrees of freedom (:func:`select_confounds`, then :func:`check_degrees_of_freedom`).

    Reads only the confounds TSV (milliseconds); raises :class:`DataError` with one line.
    """
    selection = select_confounds(bold_file, settings, n_volumes, confounds_file, log=False)
    kept = n_volumes if selection.sample_mask is None else len(selection.sample_mask)
    n_regressors = 0 if selection.confounds is None else selection.confounds.shape[1]
    check_degrees_of_freedom(Path(bold_file).name, kept, repetition_time, n_regressors, settings, warn=False)
    return selection
