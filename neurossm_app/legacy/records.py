"""From whatever the original files hold to a flat list of samples (one scan each).

Accepted structures (keys are matched case- and punctuation-insensitively, so ``roiTimeseries``,
``roi_timeseries`` and ``ROITimeseries`` are the same key):

- a numeric 3D array, subjects x ROIs x volumes or subjects x volumes x ROIs (identifiers come
  from ``--sample-table``);
- an object array, list or tuple whose items are records (dicts with a time series under
  ``timeseries``/``roiTimeseries``/``data``/..., identifiers under ``subject``/``id``/
  ``subject_id``/..., fields such as ``gender``/``sex``, ``task``, ``group``, ``label``, and nested
  ``pheno``/``meta``/``info`` dicts) or bare 2D arrays;
- a dict of columns (a time-series key holding one series per sample, other keys one value each);
- a dict wrapping such a list under ``data``/``dataset``/``samples``/``records``;
- a dict keyed by subject whose values are 2D arrays, records, lists of those, or dicts of
  name -> 2D array (the name is the task for hcp-task);
- a pandas DataFrame with one record per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neurossm_app.errors import DataError
from neurossm_app.legacy.labels import PHENO_COLUMNS, SUBJECT_COLUMNS, norm_key

SERIES_KEYS = (
    "timeseries",
    "roitimeseries",
    "roits",
    "roisignal",
    "roisignals",
    "timecourse",
    "timecourses",
    "ts",
    "series",
    "signal",
    "signals",
    "bold",
    "data",
    "x",
)
NESTED_KEYS = ("pheno", "phenotype", "phenotypes", "meta", "metadata", "info", "demographics", "labels")
WRAPPER_KEYS = ("data", "dataset", "samples", "records", "subjects", "items")
FIELD_KEYS = {**PHENO_COLUMNS, "label": (*PHENO_COLUMNS["label"], "pheno"), "tr": ("tr", "repetitiontime")}

EXPECTED = (
    "expected a numeric subjects x ROIs x volumes array, a list/object array of per-subject records "
    "(dicts with 'timeseries'/'roiTimeseries'/'data' and 'subject'/'id'), or a dict keyed by subject "
    "(see docs/legacy.md)"
)


@dataclass
class Sample:
    """One scan as found in the input, before any check.

    Attributes
    ----------
    where
        Where it is in the file, for messages (``record 3``, ``key '100307'``).
    series
        The time series as stored (array-like, 2D, layout not yet known).
    subject
        The original subject identifier, if the file has one.
    fields
        ``sex``, ``task``, ``group``, ``label``, ``run``, ``release``, ``tr``, ``name`` (the key
        of a dict of name -> series) as found.
    """

    where: str
    series: Any
    subject: Any = None
    fields: dict[str, Any] = field(default_factory=dict)


def _ndim(value: Any) -> int:
    """Dimensions of an array-like of numbers; -1 for anything else (dicts, strings)."""
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        return value.ndim if value.dtype.kind in "biuf" else -1
    if hasattr(value, "ndim") and hasattr(value, "shape") and not isinstance(value, np.ndarray):
        return int(value.ndim)  # torch tensors and the like
    if isinstance(value, np.ndarray | list | tuple):
        if len(value) == 0:
            return -1
        inner = _ndim(value[0] if not isinstance(value, np.ndarray) else value.flat[0])
        return inner + 1 if inner >= 0 else -1
    if isinstance(value, int | float | np.number) and not isinstance(value, bool):
        return 0
    return -1


def _is_sequence(value: Any) -> bool:
    return isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim >= 1)


def _flatten(record: dict[Any, Any]) -> dict[str, Any]:
    """Normalized keys; nested phenotype dicts merged in (the outer level wins)."""
    flat: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for key, value in record.items():
        name = norm_key(key)
        if name in NESTED_KEYS and isinstance(value, dict):
            nested.update((norm_key(k), v) for k, v in value.items())
        else:
            flat[name] = value
    return {**nested, **flat}


def _first(flat: dict[str, Any], aliases: tuple[str, ...]) -> Any:
    for alias in aliases:
        if alias in flat and not isinstance(flat[alias], dict):
            return flat[alias]
    return None


def _series_key(flat: dict[str, Any], ndim: int) -> str | None:
    for key in SERIES_KEYS:
        if key in flat and _ndim(flat[key]) == ndim:
            return key
    return None


def _record(record: dict[Any, Any], where: str, subject: Any = None) -> Sample:
    flat = _flatten(record)
    key = _series_key(flat, 2)
    if key is None:
        shown = ", ".join(map(str, list(record)[:8]))
        raise DataError(
            f"{where} has no 2D time series (keys: {shown}); expected one of the keys "
            "timeseries, roiTimeseries, data holding an ROIs x volumes array."
        )
    own = _first(flat, SUBJECT_COLUMNS)
    fields = {name: _first(flat, aliases) for name, aliases in FIELD_KEYS.items()}
    return Sample(where, flat[key], own if own is not None else subject, fields)


def _from_sequence(items: Any, what: str) -> list[Sample]:
    samples = []
    for index, item in enumerate(items):
        where = f"{what} {index}"
        if isinstance(item, dict):
            samples.append(_record(item, where))
        elif _ndim(item) == 2:
            samples.append(Sample(where, item))
        else:
            raise DataError(
                f"{where} is a {_describe(item)}; expected a record (dict) or an ROIs x volumes array."
            )
    return samples


def _columns(table: dict[str, Any], key: str) -> list[Sample]:
    """A dict of columns: ``table[key]`` holds one series per sample."""
    series = table[key]
    n_samples = len(series)
    samples = []
    for index in range(n_samples):
        values = {
            _singular(name): value[index]
            for name, value in table.items()
            if name != key and _is_sequence(value) and len(value) == n_samples
        }
        fields = {name: _first(values, aliases) for name, aliases in FIELD_KEYS.items()}
        samples.append(Sample(f"sample {index}", series[index], _first(values, SUBJECT_COLUMNS), fields))
    return samples


def _singular(name: str) -> str:
    """``subjects`` -> ``subject``, ``labels`` -> ``label`` (column names of a dict of columns)."""
    known = {*SUBJECT_COLUMNS, *(a for aliases in FIELD_KEYS.values() for a in aliases)}
    return name[:-1] if name.endswith("s") and name not in known and name[:-1] in known else name


def _keyed_by_subject(data: dict[Any, Any]) -> list[Sample]:
    samples = []
    for subject, value in data.items():
        where = f"key {subject!r}"
        if _ndim(value) == 2:
            samples.append(Sample(where, value, subject))
        elif isinstance(value, dict) and _series_key(_flatten(value), 2) is not None:
            samples.append(_record(value, where, subject))
        elif isinstance(value, dict) and value and all(_ndim(v) == 2 for v in value.values()):
            for name, series in value.items():
                samples.append(Sample(f"{where}[{name!r}]", series, subject, {"name": name}))
        elif _is_sequence(value) and len(value) and _ndim(value) != 1:
            for sample in _from_sequence(value, f"{where} item"):
                sample.subject = subject if sample.subject is None else sample.subject
                samples.append(sample)
        else:
            raise DataError(
                f"{where} holds a {_describe(value)}; in a dict keyed by subject each value must be "
                "an ROIs x volumes array, a record, a list of those, or a dict of task -> array."
            )
    return samples


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.ndim}D {value.dtype} array of shape {value.shape}"
    if isinstance(value, dict):
        return f"dict with keys {', '.join(map(str, list(value)[:6]))}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__} of {len(value)} items"
    return type(value).__name__


def collect_samples(data: Any, path: Path) -> tuple[list[Sample], str]:
    """Every scan in a loaded input file.

    Returns
    -------
    samples : list of Sample
        In file order.
    structure : str
        A short description of what was found (for the sidecars and the log).

    Raises
    ------
    DataError
        The structure is none of those accepted: one line naming ``path`` and what was expected.
    """
    if type(data).__name__ == "DataFrame" and hasattr(data, "to_dict"):
        return _from_sequence(data.to_dict("records"), "row"), "table of records"
    if isinstance(data, np.ndarray) and not data.dtype.hasobject:
        if data.ndim == 3 and data.dtype.kind in "biuf":
            return [Sample(f"sample {i}", data[i]) for i in range(data.shape[0])], "numeric 3D array"
        raise DataError(f"{path} holds a {_describe(data)}; {EXPECTED}.")
    if isinstance(data, np.ndarray):
        if data.ndim != 1:
            if _ndim(data.flat[0]) >= 0:  # e.g. a 2D object array of numbers
                return collect_samples(np.asarray(data.tolist(), dtype=float), path)
            raise DataError(f"{path} holds a {_describe(data)}; {EXPECTED}.")
        return _from_sequence(list(data), "item"), "object array"
    if isinstance(data, list | tuple):
        if not data:
            raise DataError(f"{path} holds an empty {type(data).__name__}; {EXPECTED}.")
        if _ndim(data) == 3 and not isinstance(data[0], dict):
            return _from_sequence(data, "item"), "list of arrays"
        return _from_sequence(data, "record"), "list of records"
    if isinstance(data, dict) and data:
        flat = {norm_key(k): v for k, v in data.items()}
        key = _series_key(flat, 3)
        if key is not None:
            return _columns(flat, key), "dict of columns"
        for wrapper in WRAPPER_KEYS:
            inner = flat.get(wrapper)
            if _is_sequence(inner) and len(inner) and isinstance(inner[0], dict):
                return _from_sequence(inner, "record"), f"records under {wrapper!r}"
        if _series_key(flat, 2) is not None:
            return [_record(data, "the record")], "single record"
        return _keyed_by_subject(data), "dict keyed by subject"
    raise DataError(f"{path} holds a {_describe(data)}; {EXPECTED}.")
