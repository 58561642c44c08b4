"""Class labels of the group level's scans: ``participants.tsv`` columns or the ``task`` entity.

``participants.tsv`` values that spell a missing value (:data:`MISSING_LABELS`: BIDS's ``n/a``,
empty, and pandas' spellings such as ``NA``, ``nan``, ``null``, ``None``) never become a class;
the subjects are left out and listed (:func:`label_exclusions`), with one warning naming the
non-BIDS spellings found.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from neurossm_app.bids import sanitize_label
from neurossm_app.errors import DataError, InputMissingError

if TYPE_CHECKING:
    from neurossm_app.group.data import ScanFile

LOGGER = logging.getLogger("neurossm_app")


def subject_list(subjects: list[str]) -> str:
    """``sub-01, sub-02, ...`` for a log line: the first ten, then how many more."""
    return ", ".join(subjects[:10]) + (f" and {len(subjects) - 10} more" if len(subjects) > 10 else "")


#: Spellings of a missing value in ``participants.tsv``: BIDS's ``n/a``, empty, and pandas' defaults
#: (``pandas.read_csv``'s ``na_values``), so that ``NA`` or ``nan`` never becomes a class.
MISSING_LABELS = frozenset(
    {"n/a", "", "NA", "N/A", "nan", "NaN", "-nan", "-NaN", "NULL", "null", "None", "<NA>", "#N/A",
     "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "1.#IND", "1.#QNAN"}
)  # fmt: skip
#: The spellings BIDS uses for a missing value (no warning for these).
BIDS_MISSING = frozenset({"n/a", ""})


def read_participant_labels(participants_tsv: Path, column: str) -> dict[str, str]:
    """Read one column of ``participants.tsv`` as subject (no ``sub-``) -> label.

    Subjects whose value is missing (:data:`MISSING_LABELS`: ``n/a``, empty, or one of pandas'
    missing-value spellings such as ``NA`` and ``nan``, with one warning naming those) are left
    out.

    Raises
    ------
    InputMissingError
        The file does not exist.
    DataError
        No ``participant_id`` column, or no ``column``.
    """
    if not participants_tsv.is_file():
        raise InputMissingError(
            f"{participants_tsv} does not exist; the target participants:{column} needs it "
            "(pass --participants-tsv FILE)."
        )
    try:
        table = pd.read_csv(participants_tsv, sep="\t", dtype=str, na_filter=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{participants_tsv} is not a readable TSV ({err}); fix the file.") from None
    if "participant_id" not in table.columns:
        raise DataError(f"{participants_tsv} has no participant_id column; add one (values like sub-01).")
    if column not in table.columns:
        shown = ", ".join(c for c in table.columns if c != "participant_id") or "none"
        raise DataError(
            f"column {column!r} not in {participants_tsv} (columns: {shown}); "
            "pass --target participants:<one of them>."
        )
    labels: dict[str, str] = {}
    other_spellings: dict[str, int] = {}
    for participant, value in zip(table["participant_id"], table[column], strict=True):
        participant, value = participant.strip(), value.strip()
        if value in MISSING_LABELS:
            if value not in BIDS_MISSING:
                other_spellings[value] = other_spellings.get(value, 0) + 1
            continue
        if participant and participant not in MISSING_LABELS:
            labels[participant.removeprefix("sub-")] = value
    if other_spellings:
        LOGGER.warning(
            "%s, column %s: %s read as missing (BIDS writes n/a); those subjects are left out",
            participants_tsv, column,
            ", ".join(f"{v!r} ({n} subject(s))" for v, n in sorted(other_spellings.items())),
        )  # fmt: skip
    return labels


def scan_labels(scans: list[ScanFile], target: str, participants_tsv: Path) -> list[str | None]:
    """The label of every scan (``None`` when a subject has no label in ``participants.tsv``)."""
    if target == "task":
        return [s.entities.get("task") for s in scans]
    column = target.split(":", 1)[1]
    labels = read_participant_labels(participants_tsv, column)
    return [labels.get(s.subject) for s in scans]


def label_exclusions(
    scans: list[ScanFile], labels: list[str | None], target: str, where: object
) -> list[dict[str, Any]]:
    """The subjects without a label, one exclusion each, with one warning."""
    by_subject: dict[str, list[str]] = {}
    for scan, label in zip(scans, labels, strict=True):
        if label is None:
            by_subject.setdefault(scan.subject, []).append(scan.name)
    source = where.name if isinstance(where, Path) else where
    reason = f"no {target} label ({source}: n/a, a missing-value spelling, or not listed)"
    excluded = [
        {"subject": f"sub-{subject}", "scans": names, "reason": reason}
        for subject, names in sorted(by_subject.items())
    ]
    if excluded:
        LOGGER.warning(
            "skipping %d subject(s) without a %s label: %s",
            len(excluded), target, subject_list([e["subject"] for e in excluded]),
        )  # fmt: skip
    return excluded


def _check_label_names(classes: tuple[str, ...], target: str, where: object) -> None:
    """Refuse classes that would share a ``label-<class>`` file name (CPA maps), before training."""
    by_name: dict[str, list[str]] = {}
    for name in classes:
        by_name.setdefault(sanitize_label(name), []).append(name)
    for entity, names in by_name.items():
        if len(names) > 1:
            raise DataError(
                f"classes {' and '.join(map(repr, names))} of {target} ({where}) would share the file "
                f"name label-{entity} (letters and digits only); rename one of them."
            )


def check_classes(classes: tuple[str, ...], target: str, where: object) -> None:
    """At least two classes, and no two that would share a map file name."""
    if len(classes) < 2:
        raise DataError(
            f"only one class ({classes[0]!r}) of {target} among the selected scans ({where}); "
            "classification needs at least two: check --target and the selection."
        )
    _check_label_names(classes, target, where)
