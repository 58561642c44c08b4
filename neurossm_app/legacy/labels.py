"""Subject identifiers, label values and phenotype tables of the original NeuroSSM data.

Label values are recoded to what the group presets expect: ``sex`` M/F (hcp-rest), the BIDS task
labels emotion, gambling, language, motor, relational, social, wm (hcp-task), and ``group``
PD/Control (ppmi). ``--label-map VALUE=LABEL`` recodes values first; ``n/a`` leaves a subject
(or scan) unlabelled.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurossm_app.errors import DataError, InputMissingError, UsageError

#: HCP task fMRI labels in the order of the original code's integer task codes (0-6).
HCP_TASKS = ("emotion", "gambling", "language", "motor", "relational", "social", "wm")
MISSING = "n/a"

_SEX = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F", "0": "F", "1": "M"}
_GROUP = {
    "pd": "PD",
    "parkinson": "PD",
    "parkinsons": "PD",
    "parkinsonsdisease": "PD",
    "parkinsondisease": "PD",
    "patient": "PD",
    "1": "PD",
    "control": "Control",
    "controls": "Control",
    "hc": "Control",
    "healthy": "Control",
    "healthycontrol": "Control",
    "healthycontrols": "Control",
    "nc": "Control",
    "cn": "Control",
    "normal": "Control",
    "0": "Control",
}
_TASK_ALIASES = {"workingmemory": "wm", "emotions": "emotion", "emotional": "emotion"}

#: Column names accepted in a phenotype or sample table (after :func:`norm_key`).
SUBJECT_COLUMNS = (
    "subject",
    "subjectid",
    "subjid",
    "subj",
    "sub",
    "participantid",
    "participant",
    "id",
    "patno",
    "eid",
)
PHENO_COLUMNS = {
    "release": ("release",),
    "sex": ("gender", "sex"),
    "group": ("group", "diagnosis", "dx", "cohort", "disease", "status"),
    "task": ("task", "taskname", "tasklabel"),
    "run": ("run",),
    "label": ("label", "y", "target", "class"),
    "person": ("person", "personid"),
    "family": ("family", "familyid"),
    "site": ("site", "siteid"),
}
#: Columns copied to participants.tsv unchanged, one value per subject, for ``--cv-group``.
GROUPING_COLUMNS = ("person", "family", "site")


def norm_key(key: Any) -> str:
    """``roiTimeseries`` -> ``roitimeseries``, ``Subject_ID`` -> ``subjectid``."""
    return re.sub(r"[^a-z0-9]", "", str(key).lower())


def value_text(value: Any) -> str | None:
    """A label or identifier value as text (``1.0`` -> ``"1"``); ``None`` for missing values."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value is None:
        return None
    if isinstance(value, float):
        if not np.isfinite(value):
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return None if text in ("", "nan", "NaN", MISSING, "None") else text


def subject_label(value: Any, where: str) -> str:
    """A BIDS subject label from an original identifier (``sub-`` and non-alphanumerics removed)."""
    text = value_text(value)
    if text is not None and text.lower().startswith("sub-"):
        text = text[4:]
    label = re.sub(r"[^A-Za-z0-9]", "", text or "")
    if not label:
        raise DataError(f"{where}: subject identifier {value!r} has no letters or digits.")
    return label


def parse_label_map(items: list[str] | None) -> dict[str, str]:
    """``["1=PD", "2=Control", "3=n/a"]`` -> ``{"1": "PD", ...}`` (keys as :func:`value_text` spells them)."""
    mapping = {}
    for item in items or []:
        value, sep, label = item.partition("=")
        if not sep or not value.strip() or not label.strip():
            raise UsageError(f"--label-map {item!r} must look like VALUE=LABEL, e.g. 1=PD or 3=n/a.")
        mapping[value_text(value.strip()) or value.strip()] = label.strip()
    return mapping


def recode(kind: str, value: Any, label_map: dict[str, str]) -> str | None:
    """Recode one raw value of ``kind`` (``sex``, ``task`` or ``group``).

    Returns
    -------
    str or None
        The label; ``"n/a"`` when ``--label-map`` says so or the value is missing; ``None`` when
        the value is not understood.
    """
    text = value_text(value)
    if text is None:
        return MISSING
    if text in label_map:
        return label_map[text]
    key = norm_key(text)
    if kind == "sex":
        return _SEX.get(key)
    if kind == "group":
        return _GROUP.get(key)
    if text.isdigit():
        code = int(text)
        return HCP_TASKS[code] if code < len(HCP_TASKS) else None
    key = re.sub(r"^(tfmri|task)", "", key)
    key = re.sub(r"(lr|rl)$", "", key) if key[:-2] in (*HCP_TASKS, *_TASK_ALIASES) else key
    key = _TASK_ALIASES.get(key, key)
    return key if key in HCP_TASKS else None


def unknown_value(kind: str, value: Any, where: str) -> DataError:
    """The error for a label value :func:`recode` does not understand."""
    expected = {
        "sex": "M/F, male/female or 0 (female)/1 (male)",
        "group": "PD/Control, 1 (PD)/0 (control) or names like Parkinson's disease/healthy control",
        "task": f"one of {', '.join(HCP_TASKS)}, tfMRI_<TASK>_LR/RL, or the codes 0-6 in that order",
    }[kind]
    example = {"sex": "2=F", "group": "2=Control", "task": "WORKMEM=wm"}[kind]
    return DataError(
        f"{where}: {kind} value {value!r} is not understood (expected {expected}); "
        f"pass --label-map VALUE=LABEL (e.g. {example}, or VALUE=n/a to leave it out)."
    )


def find_column(columns: list[str], aliases: tuple[str, ...]) -> str | None:
    """The first column whose :func:`norm_key` is one of ``aliases`` (in alias order)."""
    normalized = {norm_key(c): c for c in columns}
    for alias in aliases:
        if alias in normalized:
            return normalized[alias]
    return None


def read_table(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV or TSV (separator from the header line) as text, with a subject column ``subject``.

    The returned frame has ``subject`` (BIDS label), ``source_id`` (the original identifier) and,
    where the file has them, ``release``, ``sex``, ``group``, ``task``, ``run``, ``label`` (raw).
    """
    if not path.is_file():
        raise InputMissingError(f"{what} {path} does not exist.")
    try:
        with path.open(encoding="utf-8-sig") as stream:
            header = stream.readline()
        separator = next((s for s in ("\t", ",", ";") if s in header), ",")
        table = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise DataError(
            f"{what} {path} is not a readable CSV/TSV ({type(err).__name__}); fix the file."
        ) from None
    columns = list(table.columns)
    subject = find_column(columns, SUBJECT_COLUMNS)
    if subject is None:
        raise DataError(
            f"{what} {path} has no subject column (columns: {', '.join(columns[:12]) or 'none'}); "
            "expected Subject (HCP), subject, subject_id, participant_id or PATNO."
        )
    out = pd.DataFrame({"source_id": table[subject].str.strip()})
    out["subject"] = [subject_label(v, f"{what} {path} row {i + 2}") for i, v in enumerate(out["source_id"])]
    for name, aliases in PHENO_COLUMNS.items():
        column = find_column(columns, aliases)
        if column is not None:
            out[name] = table[column].str.strip()
    return out


def read_pheno(path: Path) -> pd.DataFrame:
    """Read ``pheno.csv`` (HCP: ``Subject``, ``Release``, ``Gender``), one row per subject.

    Raises
    ------
    DataError
        No subject column, or one subject listed twice with different values.
    """
    table = read_table(path, "--pheno")
    duplicated = table[table["subject"].duplicated(keep=False)]
    if not duplicated.empty:
        columns = [c for c in table.columns if c != "source_id"]
        conflicting = duplicated.drop_duplicates(subset=columns)
        if conflicting["subject"].duplicated().any():
            first = conflicting["subject"][conflicting["subject"].duplicated()].iloc[0]
            raise DataError(
                f"--pheno {path} lists subject {first} twice with different values; fix the file."
            )
    return table.drop_duplicates(subset=["subject"]).set_index("subject")
