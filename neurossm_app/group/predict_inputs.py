"""The new cohort of a prediction run, checked against what the model was trained on.

Everything is read and compared before any model runs; each refusal is a
:class:`~neurossm_app.errors.DataError` (exit 65) that names the difference:

- series of another atlas, or other ROIs or another ROI order (:func:`check_rois`);
- other participant-level settings than the training inputs (:func:`check_settings_match`: the
  fields of :func:`~neurossm_app.group.inputs.how_made` that ``config.json`` records);
- labels the model does not know (:func:`check_known_classes`);
- every run shorter than the training window (shorter ones among longer are left out, as in
  training).

Labels are optional: subjects without one are predicted all the same (``true_label`` ``n/a``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurossm_app.errors import DataError, InputMissingError
from neurossm_app.group.data import (
    ScanFile,
    load_series,
    normalize_series,
    select_timeseries,
    volume_summary,
)
from neurossm_app.group.inputs import check_made_alike, how_made, read_sidecar, repetition_time, tr_counts
from neurossm_app.group.labels import scan_labels, subject_list
from neurossm_app.group.trained import TrainedModel

LOGGER = logging.getLogger("neurossm_app")


@dataclass
class NewCohort:
    """The scans a prediction run applies the model to.

    Attributes
    ----------
    scans : list of ScanFile, length N
    series : list of numpy.ndarray, each (R, T_i) float32
        Normalized as in training (:func:`~neurossm_app.group.data.normalize_series`).
    labels : list of str or None, length N
        True label of each scan, ``None`` when ``participants.tsv`` or the task gives none.
    repetition_times : list of float or None, length N
    participant_settings : dict
        How every scan was made (the same as the training inputs).
    sidecars : list of dict, length N
    excluded : list of dict
        ``{"subject", "scans", "reason"}`` of the runs left out.
    label_source : str
        Where the labels were looked for.
    """

    scans: list[ScanFile]
    series: list[np.ndarray]
    labels: list[str | None]
    repetition_times: list[float | None]
    participant_settings: dict[str, Any]
    sidecars: list[dict[str, Any]] = field(repr=False)
    excluded: list[dict[str, Any]]
    label_source: str

    @property
    def lengths(self) -> np.ndarray:
        """Volumes per scan, (N,) int64."""
        return np.array([x.shape[1] for x in self.series], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """Counts for ``summary.json`` and the report (the training cohort's fields, and labels)."""
        lengths = self.lengths
        labelled = [(s.subject, label) for s, label in zip(self.scans, self.labels, strict=True) if label]
        classes = {
            name: {
                "scans": sum(label == name for _, label in labelled),
                "subjects": len({s for s, label in labelled if label == name}),
            }
            for name in sorted({label for _, label in labelled})
        }
        return {
            "n_rois": int(self.series[0].shape[0]),
            "n_subjects": len({s.subject for s in self.scans}),
            "n_scans": len(self.scans),
            "classes": classes,
            "n_scans_labelled": len(labelled),
            "labels_from": self.label_source,
            "volumes": volume_summary(lengths),
            "repetition_time": tr_counts(self.repetition_times),
            "excluded": self.excluded,
        }


def select_new_scans(trained: TrainedModel, output_dir: Path, selection: dict[str, Any]):
    """The model atlas's series in OUTPUT_DIR (:func:`~neurossm_app.group.data.select_timeseries`).

    Raises
    ------
    DataError
        OUTPUT_DIR has series of other atlases only.
    """
    try:
        return select_timeseries(output_dir, trained.atlas_label, **selection)
    except InputMissingError as err:
        if not str(err).startswith(f"no time series for atlas {trained.atlas_label} "):
            raise
        found = str(err).split("(found atlas ", 1)[1].split(")", 1)[0]
        raise DataError(
            f"the model was trained on atlas {trained.atlas_label} ({len(trained.roi_names)} ROIs) but "
            f"{output_dir} has series of atlas {found} only; run the participant level with "
            f"--atlas {trained.record['atlas']} for the new subjects."
        ) from None


def new_labels(scans: list[ScanFile], target: str, participants_tsv: Path) -> tuple[list[str | None], str]:
    """True labels where the data give them: the task entity, or a ``participants.tsv`` column.

    A missing ``participants.tsv`` or column means no labels (predictions only), not an error.
    """
    if target == "task":
        return scan_labels(scans, target, participants_tsv), "the task entity"
    column = target.split(":", 1)[1]
    where = f"{participants_tsv}, column {column}"
    if not participants_tsv.is_file():
        LOGGER.info("no %s: predictions without true labels", participants_tsv)
        return [None] * len(scans), where
    try:
        header = pd.read_csv(participants_tsv, sep="\t", dtype=str, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(
            f"{participants_tsv} is not a readable TSV ({type(err).__name__}); fix the file."
        ) from None
    if column not in header:
        LOGGER.info("%s has no column %s: predictions without true labels", participants_tsv, column)
        return [None] * len(scans), where
    return scan_labels(scans, target, participants_tsv), where


def check_known_classes(trained: TrainedModel, scans: list[ScanFile], labels: list[str | None], where: str):
    """Refuse labels that are not classes of the model (it cannot predict them)."""
    unknown: dict[str, set[str]] = {}
    for scan, label in zip(scans, labels, strict=True):
        if label is not None and label not in trained.classes:
            unknown.setdefault(label, set()).add(scan.subject)
    if unknown:
        shown = ", ".join(f"{k!r} ({len(v)} subject(s))" for k, v in sorted(unknown.items()))
        raise DataError(
            f"the labels in {where} include class(es) {shown} that the model does not know (its classes: "
            f"{', '.join(trained.classes)}); select subjects of those classes only, or pass the --target "
            f"that gives them (the model's: {trained.record['target']})."
        )


def _value(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def check_settings_match(trained: TrainedModel, shared: dict[str, Any], example: str) -> None:
    """Refuse series made with other participant-level settings than the training inputs."""
    expected = trained.record["participant_settings"]
    keys = list(dict.fromkeys([*expected, *shared]))
    here = {k: shared.get(k, "not recorded") for k in keys}
    there = {k: expected.get(k, "not recorded") for k in keys}
    differing = [k for k in keys if _value(here[k]) != _value(there[k])]
    if differing:
        shown = "; ".join(f"{k} {_short(here[k])} here, {_short(there[k])} in the model" for k in differing)
        raise DataError(
            f"the series in OUTPUT_DIR (e.g. {example}) were made with other participant-level settings "
            f"than the model's training data: {shown}; run the participant level with the model's settings "
            "(its MODEL.md lists them) into another OUTPUT_DIR."
        )


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{', '.join(map(str, value[:4]))}{' ...' if len(value) > 4 else ''}]"
    return str(value)


def roi_difference(found: tuple[str, ...], expected: tuple[str, ...]) -> str:
    """How the ROI columns of a file differ from the model's input order, in words."""
    if set(found) == set(expected) and len(found) == len(expected):
        i = next(i for i, (a, b) in enumerate(zip(found, expected, strict=True)) if a != b)
        return (
            f"the same {len(found)} ROIs in another order (column {i + 1} is {found[i]!r} here, "
            f"{expected[i]!r} in the model)"
        )
    missing = [r for r in expected if r not in set(found)]
    extra = [r for r in found if r not in set(expected)]
    parts = [f"{len(found)} ROIs here, {len(expected)} in the model"]
    if missing:
        parts.append(f"missing: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if extra:
        parts.append(f"not in the model: {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
    return "; ".join(parts)


def check_rois(trained: TrainedModel, path: Path, names: tuple[str, ...]) -> None:
    """Refuse a file whose ROI columns are not the model's, in the model's order."""
    if names != trained.roi_names:
        raise DataError(
            f"{path.name} has other ROI columns than the model's inputs "
            f"({roi_difference(names, trained.roi_names)}); "
            f"predict on series of atlas {trained.atlas_label} made as the training series were."
        )


def drop_short(
    scans: list[ScanFile], lengths: list[int], window: int
) -> tuple[list[int], list[dict[str, Any]]]:
    """Runs shorter than the model's training window are left out (all of them: refused)."""
    short = [i for i, n in enumerate(lengths) if n < window]
    if len(short) == len(scans):
        worst = min(short, key=lambda i: lengths[i])
        raise DataError(
            f"{len(short)} scan(s) are shorter than the model's training window of {window} volumes "
            f"(shortest: {scans[worst].path.name}, {lengths[worst]} volumes); the model was trained and "
            "validated on runs at least that long: select longer runs."
        )
    by_subject: dict[str, list[str]] = {}
    for i in short:
        by_subject.setdefault(scans[i].subject, []).append(f"{scans[i].name} ({lengths[i]} volumes)")
    excluded = [
        {
            "subject": f"sub-{s}",
            "scans": names,
            "reason": f"shorter than the model's window of {window} volumes",
        }
        for s, names in sorted(by_subject.items())
    ]
    if excluded:
        LOGGER.warning(
            "leaving out %d scan(s) of %d subject(s) shorter than the model's training window of %d "
            "volumes: %s",
            len(short), len(excluded), window, subject_list([e["subject"] for e in excluded]),
        )  # fmt: skip
    return [i for i in range(len(scans)) if i not in set(short)], excluded


def load_new_cohort(
    trained: TrainedModel,
    output_dir: Path,
    participants_tsv: Path,
    selection: dict[str, Any],
    target: str | None = None,
) -> NewCohort:
    """Select, check and normalize the scans to predict (every check before any model runs).

    Parameters
    ----------
    selection : dict
        :func:`~neurossm_app.group.data.select_timeseries` keyword arguments (labels, filters).
    target : str, optional
        Where true labels come from; default: the model's target.

    Raises
    ------
    DataError
        Another atlas or ROI set or order, other participant-level settings, unknown classes,
        every run shorter than the training window (exit 65).
    """
    found = select_new_scans(trained, output_dir, selection)
    scans = found.scans
    sidecars = [read_sidecar(s.path) for s in scans]
    made = [how_made(s.path, c) for s, c in zip(scans, sidecars, strict=True)]
    shared = check_made_alike([s.name for s in scans], made, [s.subject for s in scans])
    check_settings_match(trained, shared, scans[0].name)
    labels, where = new_labels(scans, target or trained.record["target"], participants_tsv)
    check_known_classes(trained, scans, labels, where)
    series = []
    for scan in scans:
        raw, names = load_series(scan.path)
        check_rois(trained, scan.path, names)
        series.append(normalize_series(raw)[0])
    keep, short = drop_short(scans, [x.shape[1] for x in series], trained.dynamic_length)
    return NewCohort(
        scans=[scans[i] for i in keep],
        series=[series[i] for i in keep],
        labels=[labels[i] for i in keep],
        repetition_times=[repetition_time(sidecars[i]) for i in keep],
        participant_settings=shared,
        sidecars=[sidecars[i] for i in keep],
        excluded=found.excluded + short,
        label_source=where,
    )
