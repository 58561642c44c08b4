"""Group-level inputs: the participant-level ROI time series in OUTPUT_DIR and their labels.

Series are found with pybids (our ``stat`` entity included) under the names
:func:`neurossm_app.bids.build_path` gives them; a run counts as complete when its JSON sidecar
exists (the participant level writes it last). Labels come from ``participants.tsv``
(``--target participants:COLUMN``) or from the ``task`` entity (``--target task``).

Missing values are handled once, here, for training and testing alike: each ROI is z-scored over
its finite values within the scan, then every remaining ``n/a`` (ROIs excluded for coverage,
censored volumes) becomes 0, the ROI's mean.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurossm_app.bids import RUN_ENTITIES, run_label
from neurossm_app.errors import DataError, InputMissingError, NoFilesSelectedError
from neurossm_app.files import read_tsv
from neurossm_app.group.inputs import check_made_alike, how_made, read_sidecar, repetition_time, tr_counts
from neurossm_app.group.labels import check_classes, label_exclusions, scan_labels, subject_list
from neurossm_app.group.output_index import indexed_output_layout
from neurossm_app.group.series_cache import SeriesStore, cached_series, take

LOGGER = logging.getLogger("neurossm_app")

NORMALIZATION = (
    "per scan and ROI: z-score over the finite values (population SD; constant ROIs become 0), then n/a -> 0"
)


@dataclass(frozen=True)
class ScanFile:
    """One participant-level time-series file and the run it came from."""

    path: Path
    entities: dict[str, str] = field(hash=False)

    @property
    def name(self) -> str:
        """``sub-01[_ses-1]_task-rest[_run-1]``: unique within a dataset."""
        return run_label(self.entities)

    @property
    def subject(self) -> str:
        """Subject label without ``sub-``."""
        return self.entities["subject"]


@dataclass(frozen=True)
class MissingValues:
    """What :func:`normalize_series` replaced in one scan."""

    missing_rois: int  # ROI columns that are entirely n/a
    censored_volumes: int  # rows that are entirely n/a
    missing_values: int  # every n/a cell, including the two above


@dataclass
class GroupDataset:
    """Every selected scan, normalized, with its label.

    Attributes
    ----------
    scans : list of ScanFile, length N
        Sorted by path, the order every other array follows.
    series : list of numpy.ndarray, each (R, T_i) float32, or SeriesStore
        Normalized series (ROI x volume); ``T_i`` may differ between scans. Read through the
        series cache, a :class:`~neurossm_app.group.series_cache.SeriesStore` of read-only views.
    labels : numpy.ndarray, (N,) int64
        Index into ``classes``.
    classes : tuple of str, length C
        Sorted class names.
    roi_names : tuple of str, length R
    atlas_label : str
        The ``atlas-`` entity of the files (e.g. ``Schaefer400n17``).
    missing : list of MissingValues, length N
    repetition_times : list of float or None, length N
        ``RepetitionTime`` of every scan's sidecar, seconds (``None``: not recorded).
    participant_settings : dict
        How every scan was made (:func:`~neurossm_app.group.inputs.check_made_alike`).
    sidecars : list of dict, length N
        Every scan's JSON sidecar.
    excluded : list of dict
        Subjects or scans left out, each ``{"subject", "scans", "reason"}``.
    """

    scans: list[ScanFile]
    series: Sequence[np.ndarray]
    labels: np.ndarray
    classes: tuple[str, ...]
    roi_names: tuple[str, ...]
    atlas_label: str
    missing: list[MissingValues]
    repetition_times: list[float | None] = field(default_factory=list)
    participant_settings: dict[str, Any] = field(default_factory=dict)
    sidecars: list[dict[str, Any]] = field(default_factory=list, repr=False)
    excluded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        """Subject of every scan, length N."""
        return [s.subject for s in self.scans]

    @property
    def lengths(self) -> np.ndarray:
        """Volumes per scan, (N,) int64."""
        return np.array([x.shape[1] for x in self.series], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """Counts for the log, ``config.json`` and ``summary.json``."""
        lengths = self.lengths
        per_class = {}
        subjects = np.array(self.subjects)
        for index, name in enumerate(self.classes):
            chosen = self.labels == index
            per_class[name] = {"scans": int(chosen.sum()), "subjects": len(set(subjects[chosen]))}
        n_cells = int(sum(x.size for x in self.series))
        missing_values = sum(m.missing_values for m in self.missing)
        return {
            "atlas": self.atlas_label,
            "n_rois": len(self.roi_names),
            "n_subjects": len(set(self.subjects)),
            "n_scans": len(self.scans),
            "classes": per_class,
            "volumes": volume_summary(lengths),
            "repetition_time": tr_counts(self.repetition_times),
            "excluded": self.excluded,
            "missing_values": {
                "normalization": NORMALIZATION,
                "scans_with_missing_rois": sum(m.missing_rois > 0 for m in self.missing),
                "missing_roi_columns": sum(m.missing_rois for m in self.missing),
                "scans_with_censored_volumes": sum(m.censored_volumes > 0 for m in self.missing),
                "censored_volumes": sum(m.censored_volumes for m in self.missing),
                "missing_values": missing_values,
                "missing_fraction": missing_values / n_cells if n_cells else 0.0,
            },
        }


def volume_summary(lengths: np.ndarray) -> dict[str, int | float]:
    """``min``, ``median`` and ``max`` volumes per scan, as ``summary.json`` records them."""
    return {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())}


def find_timeseries(output_dir: Path, atlas_label: str, *selection: Any, **filters: Any) -> list[ScanFile]:
    """The complete participant-level time series of one atlas: :func:`select_timeseries`'s
    ``scans``, with the same arguments."""
    return select_timeseries(output_dir, atlas_label, *selection, **filters).scans


@dataclass
class Selection:
    """What :func:`select_timeseries` found.

    Attributes
    ----------
    scans : list of ScanFile
        Complete series of the atlas, sorted by path.
    excluded : list of dict
        ``{"subject", "scans", "reason"}`` for selected subjects without series of the atlas and
        for runs without their sidecar.
    """

    scans: list[ScanFile]
    excluded: list[dict[str, Any]]


def select_timeseries(
    output_dir: Path,
    atlas_label: str,
    participant_labels: list[str] | None = None,
    session_labels: list[str] | None = None,
    task_ids: list[str] | None = None,
    run_filters: dict[str, Any] | None = None,
    database_dir: Path | None = None,
) -> Selection:
    """Find the complete participant-level time series of one atlas in ``output_dir``.

    Parameters
    ----------
    output_dir
        The participant level's OUTPUT_DIR.
    atlas_label
        ``atlas-`` entity to select (``ATLASES[key].bids_label``).
    participant_labels, session_labels, task_ids
        Selection without prefixes; ``None`` selects everything.
    run_filters
        Extra pybids filters on run entities (e.g. from ``--bids-filter-file``'s ``bold`` entry),
        passed to ``BIDSLayout.get`` as at the participant level: a list is any of its values,
        ``null`` means the entity is absent, ``run`` 1 and ``01`` are the same run.
    database_dir
        ``--bids-database-dir``: the pybids index is saved there and reused while the tree is
        unchanged (:func:`~neurossm_app.group.output_index.indexed_output_layout`).

    Returns
    -------
    Selection
        Runs without their JSON sidecar (incomplete) and selected subjects with series of other
        atlases only are left out, with a warning, and listed.

    Raises
    ------
    InputMissingError
        OUTPUT_DIR missing or a regular file, no time series of any kind, or none of this atlas.
    NoFilesSelectedError
        The filters selected nothing.
    """
    hint = "run `neurossm-app BIDS_DIR OUTPUT_DIR participant` first"
    if output_dir.exists() and not output_dir.is_dir():
        raise InputMissingError(
            f"OUTPUT_DIR {output_dir} is a regular file, not a folder; give the folder the participant "
            "level wrote its outputs to."
        )
    if not output_dir.is_dir():
        raise InputMissingError(f"OUTPUT_DIR {output_dir} does not exist; {hint}.")
    if not any(output_dir.glob("sub-*")):
        raise InputMissingError(f"no participant-level outputs (sub-*) in {output_dir}; {hint}.")
    layout = indexed_output_layout(output_dir, database_dir)
    query = {"suffix": "timeseries", "extension": ".tsv", "stat": "mean"}
    atlases = [str(a) for a in layout.get(**query, target="atlas", return_type="id")]
    if not atlases:
        raise InputMissingError(f"no *_stat-mean_timeseries.tsv files in {output_dir}; {hint}.")
    if atlas_label not in atlases:
        raise InputMissingError(
            f"no time series for atlas {atlas_label} in {output_dir} "
            f"(found atlas {', '.join(sorted(atlases))}); "
            "pass the matching --atlas or run the participant level with this atlas."
        )
    filters = selection_filters(participant_labels, session_labels, task_ids, run_filters)
    selected = layout.get(**query, atlas=atlas_label, **filters, return_type="object")
    if not selected:
        shown = ", ".join(f"{k}={v}" for k, v in filters.items())
        raise NoFilesSelectedError(
            f"no {atlas_label} time series in {output_dir} matched ({shown}); check the labels and filters."
        )
    others = [
        f
        for f in layout.get(**query, **filters, return_type="object")
        if f.entities.get("atlas") != atlas_label
    ]
    excluded = without_atlas(selected, others, atlas_label)
    scans, incomplete = complete_scans(selected, output_dir)
    return Selection(scans, excluded + incomplete)


def without_atlas(selected: list[Any], others: list[Any], atlas_label: str) -> list[dict[str, Any]]:
    """Selected subjects whose series are all of other atlases, with a warning (an exclusion each)."""
    have = {str(f.entities["subject"]) for f in selected}
    by_subject: dict[str, list[Any]] = {}
    for item in others:
        subject = str(item.entities["subject"])
        if subject not in have:
            by_subject.setdefault(subject, []).append(item)
    excluded = []
    for subject, items in sorted(by_subject.items()):
        found = ", ".join(sorted({str(i.entities.get("atlas")) for i in items}))
        names = sorted({run_label({k: i.entities.get(k) for k in RUN_ENTITIES}) for i in items})
        excluded.append(
            {"subject": f"sub-{subject}", "scans": names, "reason": f"no {atlas_label} series (has {found})"}
        )
    if excluded:
        LOGGER.warning(
            "leaving out %d subject(s) without %s time series: %s; run the participant level with "
            "this atlas for them, or pass the --atlas they have",
            len(excluded), atlas_label, subject_list([e["subject"] for e in excluded]),
        )  # fmt: skip
    return excluded


def selection_filters(
    participant_labels: list[str] | None,
    session_labels: list[str] | None,
    task_ids: list[str] | None,
    run_filters: dict[str, Any] | None,
) -> dict[str, Any]:
    """The pybids filters of a selection: the run filters, then the labels (which win)."""
    filters: dict[str, Any] = dict(run_filters or {})
    for entity, labels in (("subject", participant_labels), ("session", session_labels), ("task", task_ids)):
        if labels:
            filters[entity] = list(labels)
    return filters


def complete_scans(found: list[Any], output_dir: Path) -> tuple[list[ScanFile], list[dict[str, Any]]]:
    """The pybids files whose JSON sidecar exists (the participant level writes it last), by path.

    Returns
    -------
    scans : list of ScanFile
    incomplete : list of dict
        One exclusion (``{"subject", "scans", "reason"}``) per run without its sidecar.

    Raises
    ------
    InputMissingError
        None of them is complete.
    """
    scans, incomplete = [], []
    for item in sorted(found, key=lambda f: f.path):
        path = Path(item.path)
        entities = {k: str(item.entities[k]) for k in RUN_ENTITIES if item.entities.get(k) not in (None, "")}
        if not path.with_suffix(".json").is_file():
            LOGGER.warning(
                "skipping %s: its JSON sidecar is missing (participant level incomplete)", path.name
            )
            incomplete.append(
                {
                    "subject": f"sub-{entities['subject']}",
                    "scans": [run_label(entities)],
                    "reason": "JSON sidecar missing (participant level incomplete)",
                }
            )
            continue
        scans.append(ScanFile(path, entities))
    if not scans:
        raise InputMissingError(
            f"none of the {len(found)} selected time series in {output_dir} is complete "
            "(JSON sidecars missing); re-run the participant level."
        )
    return scans, incomplete


def load_series(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """Read one time-series TSV.

    Returns
    -------
    series : numpy.ndarray, (R, T) float32
        ROI x volume; NaN where the file says ``n/a``.
    roi_names : tuple of str, length R
    """
    try:
        table = read_tsv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path} is not a readable TSV ({type(err).__name__}); re-run the participant level."
        ) from None
    try:
        values = table.to_numpy(dtype=np.float32)
    except ValueError:
        raise DataError(f"{path} has non-numeric values; re-run the participant level.") from None
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise DataError(f"{path} has no volumes or no ROIs; re-run the participant level.")
    return np.ascontiguousarray(values.T), tuple(str(c) for c in table.columns)


def normalize_series(series: np.ndarray) -> tuple[np.ndarray, MissingValues]:
    """Z-score each ROI over its finite values, then set the remaining NaNs to 0.

    Parameters
    ----------
    series : numpy.ndarray, (R, T)
        ROI x volume, NaN for missing values.

    Returns
    -------
    normalized : numpy.ndarray, (R, T) float32
        Zero mean and unit population SD per ROI over its finite volumes; 0 where missing and
        for ROIs with no finite or constant values.
    missing : MissingValues
        Counts of what was missing.
    """
    finite = np.isfinite(series)  # (R, T)
    count = finite.sum(axis=1, keepdims=True)  # (R, 1)
    safe = np.where(finite, series, 0.0).astype(np.float64)
    mean = safe.sum(axis=1, keepdims=True) / np.maximum(count, 1)
    centred = np.where(finite, safe - mean, 0.0)
    sd = np.sqrt((centred**2).sum(axis=1, keepdims=True) / np.maximum(count, 1))
    normalized = np.where(sd > 1e-8, centred / np.where(sd > 1e-8, sd, 1.0), 0.0)
    missing = MissingValues(
        missing_rois=int((count[:, 0] == 0).sum()),
        censored_volumes=int((~finite).all(axis=0).sum()),
        missing_values=int((~finite).sum()),
    )
    return normalized.astype(np.float32), missing


def load_dataset(
    scans: list[ScanFile],
    target: str,
    participants_tsv: Path,
    atlas_label: str,
    window: int | None = None,
    excluded: list[dict[str, Any]] | None = None,
    cache_dir: Path | None = None,
    output_dir: Path | None = None,
    workers: int = 1,
) -> GroupDataset:
    """Read, check and normalize every scan and attach its label.

    Scans of subjects without a label are dropped with a warning; with ``window``, so are scans
    shorter than it (:func:`drop_short_scans`). The sidecars of the labelled scans are read first
    and must say the scans were made alike (:func:`~neurossm_app.group.inputs.check_made_alike`).

    Parameters
    ----------
    excluded : list of dict, optional
        Exclusions found earlier (:class:`Selection`); the dataset lists them with its own.
    cache_dir : Path, optional
        Read the series through the series cache in this folder
        (:mod:`~neurossm_app.group.series_cache`): ``dataset.series`` is then a
        :class:`~neurossm_app.group.series_cache.SeriesStore` of memory-mapped views with the same
        values. Default: every series read into memory.
    output_dir : Path, optional
        OUTPUT_DIR, to which the cache's index records the scans' paths.
    workers : int
        Processes that parse the TSVs a cache build needs (``--nprocs``; many scans only).

    Raises
    ------
    DataError
        No labelled scan, a single class, scans made in different ways, files whose ROI columns
        disagree, every scan shorter than ``window``.
    """
    labels = scan_labels(scans, target, participants_tsv)
    where = participants_tsv if target != "task" else "the task entity"
    excluded = [*(excluded or []), *label_exclusions(scans, labels, target, where)]
    kept = [(s, label) for s, label in zip(scans, labels, strict=True) if label is not None]
    if not kept:
        raise DataError(f"no selected subject has a {target} label in {where}; check the labels.")
    check_classes(tuple(sorted({label for _, label in kept})), target, where)
    sidecars = [read_sidecar(scan.path) for scan, _ in kept]
    shared = check_made_alike(
        [s.name for s, _ in kept], [how_made(s.path, c) for (s, _), c in zip(kept, sidecars, strict=True)],
        [s.subject for s, _ in kept],
    )  # fmt: skip
    if cache_dir is None:
        series, missing, roi_names = _read_all(kept)
    else:
        series, missing, roi_names = _read_cached(kept, sidecars, atlas_label, cache_dir, output_dir, workers)
    if window is not None:
        keep, short = drop_short_scans([s for s, _ in kept], [x.shape[1] for x in series], window)
        excluded += short
        kept, missing, sidecars = ([v[i] for i in keep] for v in (kept, missing, sidecars))
        series = take(series, keep)
        check_classes(tuple(sorted({label for _, label in kept})), target, where)
    classes = tuple(sorted({label for _, label in kept}))
    index = {name: i for i, name in enumerate(classes)}
    return GroupDataset(
        scans=[s for s, _ in kept],
        series=series,
        labels=np.array([index[label] for _, label in kept], dtype=np.int64),
        classes=classes,
        roi_names=roi_names,
        atlas_label=atlas_label,
        missing=missing,
        repetition_times=[repetition_time(c) for c in sidecars],
        participant_settings=shared,
        sidecars=sidecars,
        excluded=excluded,
    )


def _read_all(
    kept: list[tuple[ScanFile, str]],
) -> tuple[list[np.ndarray], list[MissingValues], tuple[str, ...]]:
    """Every scan's normalized series and missing-value counts, and their shared ROI names."""
    series, missing, roi_names = [], [], None
    for scan, _ in kept:
        raw, names = load_series(scan.path)
        if roi_names is None:
            roi_names = names
        elif names != roi_names:
            raise DataError(
                f"{scan.path.name} has other ROI columns than {kept[0][0].path.name}; "
                "re-run the participant level with one atlas for every subject."
            )
        normalized, counts = normalize_series(raw)
        series.append(normalized)
        missing.append(counts)
    return series, missing, roi_names or ()


def _read_cached(
    kept: list[tuple[ScanFile, str]],
    sidecars: list[dict[str, Any]],
    atlas_label: str,
    cache_dir: Path,
    output_dir: Path | None,
    workers: int = 1,
) -> tuple[SeriesStore, list[MissingValues], tuple[str, ...]]:
    """:func:`_read_all`'s values through the series cache (scans it lacks: :func:`read_normalized`)."""
    paths = [scan.path for scan, _ in kept]
    found = cached_series(
        paths, sidecars, atlas_label, cache_dir, read_normalized, output_dir, NORMALIZATION, workers
    )
    return found.store, [MissingValues(**m) for m in found.missing], found.roi_names


def read_normalized(path: Path) -> tuple[np.ndarray, dict[str, int], tuple[str, ...]]:
    """One scan as :func:`_read_all` reads it: normalized (R, T) float32, missing counts, ROI names."""
    raw, names = load_series(path)
    normalized, counts = normalize_series(raw)
    return normalized, asdict(counts), names


def _short_scan_error(names: list[str], lengths: np.ndarray, short: np.ndarray, window: int) -> DataError:
    worst = int(short[np.argmin(lengths[short])])
    return DataError(
        f"{short.size} scan(s) are shorter than the training window of {window} volumes "
        f"(shortest: {names[worst]}, {lengths[worst]} volumes); "
        f"pass --dynamic-length {int(lengths.min())} or less, or leave those runs out "
        "(--participant-label/--task-id/--bids-filter-file)."
    )


def drop_short_scans(
    scans: list[ScanFile], lengths: list[int], window: int
) -> tuple[list[int], list[dict[str, Any]]]:
    """Leave out scans shorter than the training window (we do not pad training windows).

    Returns
    -------
    keep : list of int
        Indices of the scans that are long enough.
    excluded : list of dict
        One exclusion per subject that lost scans, with one warning for all.

    Raises
    ------
    DataError
        Every scan is shorter than ``window``, naming the shortest and what to do.
    """
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    short = np.flatnonzero(lengths_arr < window)
    if short.size == len(scans):
        raise _short_scan_error([s.path.name for s in scans], lengths_arr, short, window)
    by_subject: dict[str, list[str]] = {}
    for i in short:
        by_subject.setdefault(scans[i].subject, []).append(f"{scans[i].name} ({lengths_arr[i]} volumes)")
    excluded = [
        {"subject": f"sub-{s}", "scans": names, "reason": f"shorter than --dynamic-length {window}"}
        for s, names in sorted(by_subject.items())
    ]
    if excluded:
        LOGGER.warning(
            "leaving out %d scan(s) of %d subject(s) shorter than the training window of %d volumes: %s; "
            "pass --dynamic-length %d to keep them",
            short.size, len(excluded), window, subject_list([e["subject"] for e in excluded]),
            int(lengths_arr.min()),
        )  # fmt: skip
    return [i for i in range(len(scans)) if lengths_arr[i] >= window], excluded


def check_lengths(dataset: GroupDataset, window: int) -> None:
    """Refuse scans shorter than the training window (we do not pad training windows).

    Raises
    ------
    DataError
        Naming the shortest scan and what to do.
    """
    lengths = dataset.lengths
    short = np.flatnonzero(lengths < window)
    if short.size:
        raise _short_scan_error([s.path.name for s in dataset.scans], lengths, short, window)
