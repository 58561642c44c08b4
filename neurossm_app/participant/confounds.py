"""fMRIPrep confounds tables as every release that nilearn's ``load_confounds`` reads wrote them.

fMRIPrep 1.2 to 20.1 name the file ``desc-confounds_regressors.tsv``, 20.2 and later
``desc-confounds_timeseries.tsv``; the columns are the same snake_case names. Some files lack the
expansion columns a strategy asks for (``*_derivative1``, ``*_power2``, ``*_derivative1_power2``);
they are computed here from their base column as fMRIPrep computes them, and listed in the
sidecar. Files of fMRIPrep 1.0 and 1.1 (CamelCase headers such as ``FramewiseDisplacement``,
``RotX``) or with no header at all are refused with one line naming the minimum release.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from neurossm_app.errors import DataError

#: The oldest fMRIPrep release whose confounds nilearn's ``load_confounds`` reads (it refuses
#: CamelCase headers, "the output from 1.0.x and 1.1.x series").
MIN_FMRIPREP_RELEASE = "1.2.0"

#: Base columns of the regressor families nilearn expands (``load_confounds_components``).
FAMILIES = {
    "motion": ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"),
    "wm_csf": ("csf", "white_matter"),
    "global_signal": ("global_signal",),
}
#: Suffixes added by each nilearn model ("basic", "derivatives", "power2", "full").
MODEL_SUFFIXES = {
    "basic": (),
    "derivatives": ("derivative1",),
    "power2": ("power2",),
    "full": ("derivative1", "power2", "derivative1_power2"),
}
#: How computed expansions are defined (recorded in the sidecar's ``ConfoundsComputed``).
EXPANSION_RULE = (
    "derivative1 = backward difference x[t] - x[t-1] with n/a at the first volume; power2 = x**2; "
    "derivative1_power2 = derivative1**2 (fMRIPrep's definitions)"
)
#: How nilearn's ``load_confounds`` (``prepare_output``) fills n/a, as the sidecar says it.
NAN_FILL_RULE = (
    "in the first volume only, each selected regressor that is n/a there (the derivatives) takes "
    "the value of the second volume (nilearn load_confounds); no other value is changed"
)
_SUFFIX = re.compile(r"^(?P<base>.+?)_(?P<suffix>derivative1_power2|derivative1|power2)$")
_NON_STEADY_STATE = "non_steady_state"


def _is_camel_case(name: str) -> bool:
    """nilearn's test for fMRIPrep 1.0/1.1 headers (``nilearn._utils.fmriprep_confounds``)."""
    return name != name.lower() and name != name.upper() and "_" not in name


def read_confounds_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read an fMRIPrep confounds TSV (either name), refusing releases nilearn does not read.

    Returns
    -------
    (T, C) DataFrame
        One row per volume, ``n/a`` as NaN.

    Raises
    ------
    DataError
        The file cannot be parsed, has no header (fMRIPrep < 1.0), or CamelCase column names
        (fMRIPrep 1.0 and 1.1).
    """
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DataError(
            f"cannot read confounds {path} ({type(err).__name__}); re-copy it from the fMRIPrep output."
        ) from None
    old = [str(c) for c in table.columns if _is_camel_case(str(c))]
    try:
        float(str(table.columns[0]))
        old = old or ["no header"]
    except (ValueError, IndexError):
        pass
    if old:
        raise DataError(
            f"confounds {path} comes from an fMRIPrep release older than {MIN_FMRIPREP_RELEASE} "
            f"(columns such as {', '.join(old[:3])}); nilearn's load_confounds reads fMRIPrep "
            f"{MIN_FMRIPREP_RELEASE} or later: re-run fMRIPrep {MIN_FMRIPREP_RELEASE} or newer."
        )
    return table


def needed_columns(strategy: dict) -> list[str]:
    """The motion, WM/CSF and global-signal columns a ``load_confounds`` strategy selects."""
    columns = []
    for family, bases in FAMILIES.items():
        if family in strategy.get("strategy", ()):
            suffixes = MODEL_SUFFIXES[strategy.get(family, "full")]
            columns += [*bases, *(f"{base}_{s}" for base in bases for s in suffixes)]
    return columns


def expansion(base: np.ndarray, suffix: str) -> np.ndarray:
    """One fMRIPrep expansion of a (T,) regressor; NaN at the first volume for derivatives."""
    derivative = np.concatenate([[np.nan], np.diff(base)])
    return {"derivative1": derivative, "power2": base**2, "derivative1_power2": derivative**2}[suffix]


def add_expansions(table: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Compute the expansion columns of ``columns`` that ``table`` lacks but whose base it has.

    Returns
    -------
    table : DataFrame
        ``table`` with the computed columns appended (a copy when any was computed).
    computed : list of str
        Their names, in ``columns`` order.
    """
    computed = {}
    for column in columns:
        match = _SUFFIX.match(column)
        if column in table.columns or not match or match["base"] not in table.columns:
            continue
        base = table[match["base"]].to_numpy(dtype=np.float64)
        computed[column] = expansion(base, match["suffix"])
    if not computed:
        return table, []
    return pd.concat([table, pd.DataFrame(computed, index=table.index)], axis=1), list(computed)


def check_columns(table: pd.DataFrame, columns: list[str], path: str | os.PathLike, strategy: str) -> None:
    """Refuse a table that lacks base columns the strategy needs (nothing to compute them from)."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise DataError(
            f"confounds {path} lacks {shown}, which --confounds {strategy} needs; choose a strategy "
            "whose columns the file has (see docs/usage.md, Confound strategies)."
        )


def dummy_volumes(table: pd.DataFrame | None, dummy_scans: int | str, n_volumes: int) -> list[int]:
    """Indices of the non-steady-state volumes that ``--dummy-scans`` leaves out.

    ``auto`` takes the volumes fMRIPrep flagged in its ``non_steady_state_outlier*`` columns (none
    without a confounds table); an integer N takes the first N volumes.
    """
    if dummy_scans == "auto":
        if table is None:
            return []
        flags = table[[c for c in table.columns if _NON_STEADY_STATE in str(c)]].fillna(0).to_numpy()
        return np.flatnonzero((flags != 0).any(axis=1)).tolist() if flags.size else []
    count = int(dummy_scans)
    if count >= n_volumes:
        raise DataError(
            f"--dummy-scans {count} leaves nothing of a run of {n_volumes} volumes; give a smaller "
            "number or auto."
        )
    return list(range(count))


def without_non_steady_state(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` without fMRIPrep's ``non_steady_state_outlier*`` columns.

    nilearn always censors the volumes they flag; the columns are dropped so that
    ``--dummy-scans`` alone decides (:func:`dummy_volumes`).
    """
    return table.drop(columns=[c for c in table.columns if _NON_STEADY_STATE in str(c)])
