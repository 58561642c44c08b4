"""Checking the samples of an original NeuroSSM file and writing them as participant-level outputs.

Two passes: :func:`plan_import` reads and checks everything (identifiers, labels, shapes, ROI
counts, values) and works out every output path without writing; :func:`write_import` then
refuses to replace any existing file whose content would change (unless ``force``) before it
writes anything, and writes each file atomically, the time-series sidecar after its TSV (the
group level counts a run as complete when its sidecar exists).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurossm_app.atlases import ATLASES, roi_names
from neurossm_app.bids import TEMPLATE_SPACE, build_path, dataset_description
from neurossm_app.errors import DataError, NoFilesSelectedError, OutputError, UsageError
from neurossm_app.files import tsv_text, write_text
from neurossm_app.legacy.labels import (
    GROUPING_COLUMNS,
    MISSING,
    read_pheno,
    read_table,
    recode,
    subject_label,
    unknown_value,
    value_text,
)
from neurossm_app.legacy.load import read_input
from neurossm_app.legacy.records import Sample, collect_samples
from neurossm_app.provenance import IMPORT_PACKAGES, software_versions

LOGGER = logging.getLogger("neurossm_app")

PRESETS = ("hcp-rest", "hcp-task", "ppmi")
DEFAULT_ATLAS = {"hcp-rest": "schaefer400", "hcp-task": "schaefer400", "ppmi": "aal3v2"}
#: HCP-YA: TR 720 ms; PPMI's resting-state protocol: TR 2400 ms (override with --tr).
DEFAULT_TR = {"hcp-rest": 0.72, "hcp-task": 0.72, "ppmi": 2.4}
#: The label each preset classifies: a participants.tsv column or the task entity.
TARGET = {"hcp-rest": "sex", "hcp-task": "task", "ppmi": "group"}
LAYOUTS = ("auto", "roi-time", "time-roi")

_PARTICIPANT_COLUMNS = {
    "sex": {"Description": "sex of the participant", "Levels": {"M": "male", "F": "female"}},
    "group": {
        "Description": "diagnostic group",
        "Levels": {"PD": "Parkinson's disease", "Control": "healthy control"},
    },
    "release": {"Description": "HCP data release of the subject (pheno.csv Release)"},
    "person": {
        "Description": "the person whose scans this subject holds (--sample-table); neurossm-app "
        "group --cv-group person keeps a person's subjects in one fold"
    },
    "family": {"Description": "family of the subject; --cv-group family keeps relatives in one fold"},
    "site": {"Description": "acquisition site of the subject; --cv-group site keeps a site in one fold"},
    "source_id": {"Description": "subject identifier in the original NeuroSSM data files"},
}


@dataclass(frozen=True)
class ImportSettings:
    """Every option of one import (see ``neurossm-app-import --help`` and docs/legacy.md)."""

    preset: str
    input: Path
    output_dir: Path
    atlas: str
    repetition_time: float
    tr_from_option: bool = False
    pheno: Path | None = None
    release_filter: tuple[str, ...] = ()
    sample_table: Path | None = None
    allow_pickle: bool = False
    layout: str = "auto"
    label_map: dict[str, str] = field(default_factory=dict)
    skip_dead_roi_scans: bool = False
    force: bool = False


@dataclass
class Scan:
    """One scan to write: where it came from, its entities and what the checks found."""

    sample: Sample
    subject: str
    source_id: str
    task: str
    run: int | None = None
    layout: str = ""
    n_volumes: int = 0
    excluded_rois: list[str] = field(default_factory=list)
    censored_volumes: list[int] = field(default_factory=list)
    missing_values: int = 0
    repetition_time: float = 0.0
    tr_source: str = ""

    def entities(self, atlas_label: str) -> dict[str, Any]:
        """Entities of the time-series file, as the participant level names them."""
        return {
            "subject": self.subject,
            "task": self.task,
            "run": self.run,
            "space": TEMPLATE_SPACE,
            "atlas": atlas_label,
            "stat": "mean",
        }


@dataclass
class ImportPlan:
    """What :func:`write_import` will write."""

    settings: ImportSettings
    scans: list[Scan]
    participants: pd.DataFrame
    roi_names: tuple[str, ...]
    structure: str
    skipped: Counter

    @property
    def atlas_label(self) -> str:
        """The ``atlas-`` entity (``Schaefer400n17``, ``AAL3v2``)."""
        return ATLASES[self.settings.atlas].bids_label

    def series_path(self, scan: Scan) -> Path:
        """The time-series TSV of ``scan`` (from :func:`neurossm_app.bids.build_path`)."""
        return build_path(self.settings.output_dir, scan.entities(self.atlas_label), "timeseries", ".tsv")


def roi_by_time(raw: Any, n_rois: int, layout: str, where: str) -> tuple[np.ndarray, str]:
    """One sample as a float ROIs x volumes array.

    Parameters
    ----------
    raw
        The stored series (any 2D array-like).
    n_rois
        ROIs of the atlas (400 Schaefer, 166 AAL3v2).
    layout
        ``auto``: ROIs x volumes unless the ROI count is on the second axis only (the original
        loaders' rule: transpose when the canonical time dimension is detected); ``roi-time`` or
        ``time-roi`` force one.

    Returns
    -------
    series : numpy.ndarray, (n_rois, T)
    layout : str
        ``roi-time`` or ``time-roi`` (as stored).
    """
    try:
        array = np.asarray(raw)
        if array.dtype.hasobject:
            array = array.astype(np.float64)
    except (ValueError, TypeError):
        raise DataError(
            f"{where}: the time series is ragged or not numeric (rows of different lengths?); "
            "each sample must be one ROIs x volumes array."
        ) from None
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: the time series holds {array.dtype} values; expected numbers.")
    if array.ndim != 2:
        raise DataError(f"{where}: the time series has shape {array.shape}; expected 2D (ROIs x volumes).")
    rows, cols = array.shape
    if layout == "auto":
        if rows == n_rois:
            layout = "roi-time"
        elif cols == n_rois:
            layout = "time-roi"
    if layout == "roi-time" and rows == n_rois:
        series = array
    elif layout == "time-roi" and cols == n_rois:
        series = array.T
    else:
        raise DataError(
            f"{where}: the time series has shape {array.shape}, but the atlas has {n_rois} ROIs "
            f"(on {'either axis' if layout == 'auto' else 'the ' + layout.split('-')[0] + ' axis'}); "
            "pass the --atlas of the file (schaefer400: 400, aal3v2: 166) or the right --layout."
        )
    if series.shape[1] < 2:
        raise DataError(f"{where}: the time series has {series.shape[1]} volume(s); expected a scan.")
    dtype = np.float32 if series.dtype == np.float32 else np.float64
    return np.ascontiguousarray(series, dtype=dtype), layout


def _check_values(scan: Scan, series: np.ndarray, names: tuple[str, ...]) -> None:
    finite = np.isfinite(series)
    if not finite.any():
        raise DataError(f"{scan.sample.where} (subject {scan.source_id}): every value is NaN or infinite.")
    dead = ~(finite & (series != 0)).any(axis=1)  # ROIs with no non-zero finite value
    if dead.all():
        raise DataError(f"{scan.sample.where} (subject {scan.source_id}): every ROI is zero or missing.")
    scan.excluded_rois = [names[i] for i in np.flatnonzero(dead)]
    scan.censored_volumes = np.flatnonzero(~finite.any(axis=0)).tolist()
    scan.missing_values = int((~finite).sum())
    scan.n_volumes = series.shape[1]


def series_frame(series: np.ndarray, names: tuple[str, ...], excluded: list[str]) -> pd.DataFrame:
    """Volumes x ROIs table; non-finite values and dead ROIs become NaN (written ``n/a``)."""
    frame = pd.DataFrame(np.where(np.isfinite(series), series, np.nan).T, columns=list(names))
    if excluded:
        frame[excluded] = np.nan
    return frame


def _apply_sample_table(samples: list[Sample], path: Path) -> None:
    table = read_table(path, "--sample-table")
    if len(table) != len(samples):
        raise DataError(
            f"--sample-table {path} has {len(table)} rows but INPUT holds {len(samples)} samples; "
            "give one row per sample, in the order of the array."
        )
    for sample, (_, row) in zip(samples, table.iterrows(), strict=True):
        if sample.subject is not None:
            raise UsageError(
                f"INPUT names its subjects ({sample.where}: {sample.subject!r}); "
                "--sample-table is only for arrays without identifiers."
            )
        sample.subject = row["source_id"]
        for name in ("task", "group", "sex", "run", "label", *GROUPING_COLUMNS):
            if name in row and row[name] not in ("", MISSING):
                sample.fields[name] = row[name]


def _labels_of(sample: Sample, kind: str) -> Any:
    value = sample.fields.get(kind)
    if value is None:
        value = sample.fields.get("label")
    if value is None and kind == "task":
        value = sample.fields.get("name")
    return value


def plan_import(settings: ImportSettings) -> ImportPlan:
    """Read INPUT, check every sample and label, and work out the outputs (nothing is written).

    Raises
    ------
    UsageError, InputMissingError, DataError, NoFilesSelectedError
        One line each, naming the file and the sample.
    """
    source = settings.input
    samples, structure = collect_samples(read_input(source, settings.allow_pickle), source)
    if settings.sample_table is not None:
        _apply_sample_table(samples, settings.sample_table)
    collected = _Labels(settings, read_pheno(settings.pheno) if settings.pheno is not None else None)
    scans = [scan for sample in samples if (scan := collected.scan_of(sample)) is not None]
    collected.check_pheno_covers_subjects()
    if not scans:
        reasons = ", ".join(f"{k}: {v}" for k, v in collected.skipped.items())
        raise NoFilesSelectedError(f"no scans left in {source} after the filters ({reasons}).")
    _assign_runs(scans, source)
    names = roi_names(settings.atlas)
    kept = []
    for scan in scans:
        where = f"{source} {scan.sample.where}"
        series, scan.layout = roi_by_time(scan.sample.series, len(names), settings.layout, where)
        _check_values(scan, series, names)
        if scan.excluded_rois and settings.skip_dead_roi_scans:
            collected.skipped["all-zero ROIs (--skip-dead-roi-scans)"] += 1
            continue
        kept.append(scan)
    if not kept:
        raise NoFilesSelectedError(f"no scans of {source} are left after --skip-dead-roi-scans.")
    return ImportPlan(settings, kept, collected.participants(kept), names, structure, collected.skipped)


@dataclass
class _Labels:
    """Subjects, labels and phenotype rows gathered sample by sample by :func:`plan_import`."""

    settings: ImportSettings
    pheno: pd.DataFrame | None
    labels: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    source_ids: dict[str, str] = field(default_factory=dict)
    not_in_pheno: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.kind = TARGET[self.settings.preset]
        if self.settings.release_filter and (self.pheno is None or "release" not in self.pheno.columns):
            raise UsageError(
                "--release-filter needs --pheno with a Release column (HCP_1200/Preprocessed/pheno.csv)."
            )
        self.label_from_pheno = self.pheno is not None and self.kind in self.pheno.columns

    def scan_of(self, sample: Sample) -> Scan | None:
        """The scan of ``sample`` with its labels recorded, or None when a filter leaves it out."""
        source = self.settings.input
        subject, source_id = self._identify(sample)
        row = self._pheno_row(subject, source_id)
        if row is not None and self.settings.release_filter:
            if str(row.get("release", "")).lower() not in {r.lower() for r in self.settings.release_filter}:
                self.skipped["release not in --release-filter"] += 1
                return None
        task = "rest"
        if self.kind == "task":
            task = self._task(sample)
            if task is None:
                return None
        else:
            self._record_label(subject, source_id, sample, row)
        extra_sex = row["sex"] if row is not None and "sex" in row else sample.fields.get("sex")
        if self.kind != "sex" and extra_sex is not None:
            self.labels[subject].setdefault(
                "sex", recode("sex", extra_sex, self.settings.label_map) or MISSING
            )
        if row is not None and "release" in row:
            self.labels[subject]["release"] = row["release"] or MISSING
        self._record_grouping(subject, source_id, sample, row)
        scan = Scan(sample, subject, source_id, task)
        scan.repetition_time, scan.tr_source = _repetition_time(self.settings, sample, source)
        return scan

    def _identify(self, sample: Sample) -> tuple[str, str]:
        source = self.settings.input
        if sample.subject is None:
            raise DataError(
                f"{source} {sample.where} has no subject identifier; pass --sample-table FILE "
                "(one row per sample in array order, with a subject column)."
            )
        subject = subject_label(sample.subject, f"{source} {sample.where}")
        source_id = (value_text(sample.subject) or "").removeprefix("sub-")
        if self.source_ids.setdefault(subject, source_id) != source_id:
            raise DataError(
                f"{source}: subjects {self.source_ids[subject]!r} and {source_id!r} would both become "
                f"sub-{subject}; make the identifiers differ in letters or digits."
            )
        return subject, source_id

    def _pheno_row(self, subject: str, source_id: str) -> pd.Series | None:
        if self.pheno is None:
            return None
        if subject in self.pheno.index:
            return self.pheno.loc[subject]
        self.not_in_pheno.append(source_id)
        return None

    def _task(self, sample: Sample) -> str | None:
        """The sample's task (None: ``n/a``, left out)."""
        source = self.settings.input
        raw = _labels_of(sample, "task")
        if raw is None:
            raise _no_label("task", source, sample)
        task = recode("task", raw, self.settings.label_map)
        if task is None:
            raise unknown_value("task", raw, f"{source} {sample.where}")
        if task == MISSING:
            self.skipped["task n/a"] += 1
            return None
        return task

    def _record_label(self, subject: str, source_id: str, sample: Sample, row: pd.Series | None) -> None:
        """The subject's sex or group, from --pheno or the records; one value per subject."""
        source, kind = self.settings.input, self.kind
        from_pheno = self.label_from_pheno
        raw = row[kind] if from_pheno and row is not None else _labels_of(sample, kind)
        if raw is None and not from_pheno:
            raise _no_label(kind, source, sample)
        where = (
            f"--pheno {self.settings.pheno} (subject {source_id})"
            if from_pheno
            else f"{source} {sample.where}"
        )
        value = recode(kind, raw, self.settings.label_map)
        if value is None:
            raise unknown_value(kind, raw, where)
        if self.labels[subject].setdefault(kind, value) != value:
            raise DataError(
                f"{source}: subject {source_id} has two {kind} values "
                f"({self.labels[subject][kind]}, {value}); fix the records."
            )

    def _record_grouping(self, subject: str, source_id: str, sample: Sample, row: pd.Series | None) -> None:
        """``person``/``family``/``site`` from --pheno or the records (--sample-table), one per subject."""
        for column in GROUPING_COLUMNS:
            value = row[column] if row is not None and column in row else sample.fields.get(column)
            value = value_text(value)
            if value is None:
                continue
            if self.labels[subject].setdefault(column, value) != value:
                raise DataError(
                    f"{self.settings.input}: subject {source_id} has two {column} values "
                    f"({self.labels[subject][column]}, {value}); a subject belongs to one {column}."
                )

    def check_pheno_covers_subjects(self) -> None:
        """Every subject is in --pheno when labels or the release filter come from it."""
        if self.not_in_pheno and (self.label_from_pheno or self.settings.release_filter):
            shown = ", ".join(sorted(set(self.not_in_pheno))[:5])
            raise DataError(
                f"{len(set(self.not_in_pheno))} subject(s) of {self.settings.input} are not in --pheno "
                f"{self.settings.pheno} (first: {shown}); add them or use the pheno.csv of the same HCP "
                "release."
            )

    def participants(self, scans: list[Scan]) -> pd.DataFrame:
        """The ``participants.tsv`` rows of the subjects of ``scans``."""
        subjects = sorted({s.subject for s in scans})
        participants = pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects]})
        for column in ("sex", "group", "release", *GROUPING_COLUMNS):
            if any(column in self.labels[s] for s in subjects):
                participants[column] = [self.labels[s].get(column, MISSING) for s in subjects]
        participants["source_id"] = [self.source_ids[s] for s in subjects]
        return participants


def _no_label(kind: str, source: Path, sample: Sample) -> DataError:
    hint = {
        "sex": "pass --pheno HCP_1200/Preprocessed/pheno.csv (Gender column)",
        "group": "add a group field (PD/Control) to the records, or pass --pheno or --sample-table "
        "with a group column",
        "task": "add a task field to the records, or pass --sample-table with a task column",
    }[kind]
    return DataError(f"{source} {sample.where} has no {kind} label; {hint}.")


def _repetition_time(settings: ImportSettings, sample: Sample, source: Path) -> tuple[float, str]:
    """The TR of a sample and where it came from: --tr, the record's TR field, or the default."""
    given = sample.fields.get("tr")
    if settings.tr_from_option or given is None:
        origin = "--tr" if settings.tr_from_option else f"neurossm-app-import default for {settings.preset}"
        return settings.repetition_time, origin
    try:
        tr = float(value_text(given) or "nan")
    except ValueError:
        tr = float("nan")
    if not 0 < tr < 30:
        raise DataError(
            f"{source} {sample.where}: TR field {given!r} is not a repetition time in seconds; "
            "pass --tr SECONDS to use one value for every scan."
        )
    return tr, "the record's TR field"


def _assign_runs(scans: list[Scan], source: Path) -> None:
    """``run-N``: the records' run field, else file order when a subject has several scans of a task."""
    groups: dict[tuple[str, str], list[Scan]] = defaultdict(list)
    for scan in scans:
        groups[(scan.subject, scan.task)].append(scan)
    for (subject, task), group in groups.items():
        given = [s.sample.fields.get("run") for s in group]
        if all(g is not None for g in given):
            try:
                runs = [int(float(g)) for g in given]
            except (TypeError, ValueError):
                raise DataError(
                    f"{source}: run values {given[:3]} of sub-{subject} are not integers."
                ) from None
            if len(set(runs)) != len(runs):
                raise DataError(
                    f"{source}: sub-{subject} task-{task} has two scans with the same run number."
                )
            if len(group) > 1 or runs != [1]:
                for scan, run in zip(group, runs, strict=True):
                    scan.run = run
        elif len(group) > 1:
            for index, scan in enumerate(group, start=1):
                scan.run = index


def scan_sidecar(plan: ImportPlan, scan: Scan) -> dict[str, Any]:
    """The ``_timeseries.json`` of an imported scan: the participant-level fields we know, and where
    the numbers came from."""
    settings = plan.settings
    sources = [str(settings.input.resolve())]
    if settings.pheno is not None:
        sources.append(str(settings.pheno.resolve()))
    if settings.sample_table is not None:
        sources.append(str(settings.sample_table.resolve()))
    return {
        "Description": "ROI time series imported by neurossm-app-import from the data files of the "
        "original NeuroSSM code; columns are ROIs, rows are volumes, n/a marks missing values. ROI "
        "extraction and denoising were done by whoever made the source file, not by neurossm-app.",
        "RepetitionTime": scan.repetition_time,
        "RepetitionTimeSource": scan.tr_source,
        "Atlas": plan.atlas_label,
        "Strategy": "mean",
        "ExcludedROIs": scan.excluded_rois,
        "CensoredVolumes": scan.censored_volumes,
        "MissingValues": scan.missing_values,
        "Sources": sources,
        "ImportedFrom": {
            "File": sources[0],
            "Structure": plan.structure,
            "Item": scan.sample.where,
            "SubjectID": scan.source_id,
            "StoredLayout": "ROIs x volumes" if scan.layout == "roi-time" else "volumes x ROIs (transposed)",
            "Preset": settings.preset,
        },
        "SoftwareVersions": software_versions(IMPORT_PACKAGES),
    }


def _participants_json(plan: ImportPlan) -> str:
    described = {k: v for k, v in _PARTICIPANT_COLUMNS.items() if k in plan.participants.columns}
    return json.dumps(described, indent=2) + "\n"


def _outputs(plan: ImportPlan):
    """Every output as (path, a function returning its text), in writing order."""
    for scan in plan.scans:
        path = plan.series_path(scan)

        def tsv(scan=scan) -> str:
            series, _ = roi_by_time(scan.sample.series, len(plan.roi_names), scan.layout, scan.sample.where)
            return tsv_text(series_frame(series, plan.roi_names, scan.excluded_rois))

        yield path, tsv
        yield (
            path.with_suffix(".json"),
            lambda scan=scan: json.dumps(scan_sidecar(plan, scan), indent=2) + "\n",
        )
    root = plan.settings.output_dir
    yield root / "participants.tsv", lambda: tsv_text(plan.participants)
    yield root / "participants.json", lambda: _participants_json(plan)


def write_import(plan: ImportPlan) -> dict[str, int]:
    """Write the plan's outputs into OUTPUT_DIR.

    Existing files with the same content are left alone; a file whose content would change is
    an error (nothing is written) unless ``force``.

    Returns
    -------
    dict
        Counts of ``written`` and ``unchanged`` files.

    Raises
    ------
    OutputError
        Files would be replaced without ``force``, or OUTPUT_DIR cannot be written.
    """
    output_dir = plan.settings.output_dir
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create OUTPUT_DIR {output_dir}: {err.strerror}.") from None
    existing = [(path, render) for path, render in _outputs(plan) if path.exists()]
    differing = [path for path, render in existing if path.read_bytes() != render().encode()]
    if differing and not plan.settings.force:
        raise OutputError(
            f"{len(differing)} file(s) in {output_dir} differ from what this import would write "
            f"(first: {differing[0].relative_to(output_dir)}); nothing was written: pass --force to "
            "replace them, or choose another OUTPUT_DIR."
        )
    unchanged = {path for path, _ in existing} - set(differing)
    written = 0
    try:
        for path, render in _outputs(plan):
            if path not in unchanged:
                write_text(path, render())
                written += 1
        dataset_description(output_dir, [plan.settings.input])
    except OSError as err:
        raise OutputError(f"cannot write in {output_dir}: {err.strerror}; check the permissions.") from None
    return {"written": written, "unchanged": len(unchanged)}
