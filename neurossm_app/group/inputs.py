"""How the group level's inputs were made: their sidecars, compared, and where they came from.

Every selected ``_timeseries.json`` is read. The fields that say how a series was made
(:data:`MADE_FIELDS`: confound strategy and regressors, band-pass, detrend, standardization,
censoring, coverage, dummy scans when recorded) together with the file's ``space-`` entity and the
atlas file it was parcellated with must agree across the scans of a run: NeuroSSM would otherwise
learn the difference between two cleaning pipelines as readily as the one between two classes.
The repetition time may differ (windows are counted in volumes, as in the original study); a
mixture is logged with its counts.

The record (:func:`input_record`) goes into ``config.json``, ``summary.json`` and the report: the
shared participant-level settings, the repetition times, the participant-level software and the
fMRIPrep version read from the derivatives' ``dataset_description.json``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

from neurossm_app.bids import dataset_links, resolve_bids_uri
from neurossm_app.errors import DataError

LOGGER = logging.getLogger("neurossm_app")

#: Sidecar fields (:func:`neurossm_app.participant.extract.run_sidecar`) that say how a series was
#: made; the scans of one run must agree on every one (a field no sidecar has is not compared).
MADE_FIELDS = (
    "Strategy",
    "ConfoundStrategy",
    "ConfoundRegressors",
    "StandardizeConfounds",
    "HighPass",
    "LowPass",
    "Filter",
    "Detrend",
    "Standardize",
    "FDThreshold",
    "StdDVARSThreshold",
    "MinCoverage",
    "DummyScans",
)
#: Shown for a field a sidecar lacks (an older or imported series).
NOT_RECORDED = "not recorded"


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar of a time-series TSV (``path`` is the ``.tsv``).

    Raises
    ------
    DataError
        Not a JSON object (a damaged file).
    """
    sidecar = path.with_suffix(".json")
    try:
        content = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(
            f"{sidecar} is unreadable ({type(err).__name__}); re-run the participant level for that run."
        ) from None
    if not isinstance(content, dict):
        raise DataError(f"{sidecar} is not a JSON object; re-run the participant level for that run.")
    return content


def _regressor_families(names: list[str]) -> list[str]:
    """Regressor names with a trailing component number collapsed (``a_comp_cor_03`` ->
    ``a_comp_cor_*``), so runs whose numbered regressors differ in count still compare by kind."""
    return sorted({re.sub(r"_\d+$", "_*", str(n)) for n in names})


def how_made(path: Path, sidecar: dict[str, Any]) -> dict[str, Any]:
    """The fields that say how one series was made, comparable with ``==``.

    ``Space`` comes from the file name, ``AtlasFile`` is the atlas file's name (its folder differs
    between machines), ``ConfoundRegressors`` is :func:`_regressor_families`.
    """
    made: dict[str, Any] = {}
    for key in MADE_FIELDS:
        if key not in sidecar:
            made[key] = NOT_RECORDED
        elif key == "ConfoundRegressors" and isinstance(sidecar[key], list):
            made[key] = _regressor_families(sidecar[key])
        else:
            made[key] = sidecar[key]
    space = re.search(r"_space-([A-Za-z0-9]+)_", path.name)
    made["Space"] = space.group(1) if space else NOT_RECORDED
    atlas_file = sidecar.get("AtlasFile")
    made["AtlasFile"] = Path(str(atlas_file)).name if atlas_file else NOT_RECORDED
    return made


def _shown(key: str, value: Any, others: list[Any]) -> str:
    """One field of one group for the refusal message; regressor lists by what sets them apart."""
    if isinstance(value, list):
        extra = sorted(set(value) - {v for other in others if isinstance(other, list) for v in other})
        detail = f": {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}" if extra else ""
        return f"{key} {len(value)} kind(s){detail}"
    return f"{key} {value}"


def check_made_alike(names: list[str], made: list[dict[str, Any]], subjects: list[str]) -> dict[str, Any]:
    """Refuse scans made in different ways; return the settings they share.

    Parameters
    ----------
    names, subjects : list of str, length N
        Scan names and their subjects.
    made : list of dict, length N
        :func:`how_made` of every scan.

    Raises
    ------
    DataError
        Naming each group with its scan and subject counts, an example scan, the fields in which
        the groups differ, and how to select one group (exit 65).
    """
    keys = [json.dumps(m, sort_keys=True, default=str) for m in made]
    groups = Counter(keys)
    if len(groups) == 1:
        return made[0]
    first = {k: keys.index(k) for k in groups}
    differing = [f for f in made[0] if len({json.dumps(made[i][f], default=str) for i in first.values()}) > 1]
    described = []
    for key, count in groups.most_common():
        index = first[key]
        n_subjects = len({s for s, k in zip(subjects, keys, strict=True) if k == key})
        others = [made[i][f] for f in differing for j, i in first.items() if j != key]
        fields = ", ".join(_shown(f, made[index][f], others) for f in differing)
        described.append(f"{count} scan(s) of {n_subjects} subject(s) (e.g. {names[index]}) with {fields}")
    raise DataError(
        f"the selected time series were made in {len(groups)} different ways: {'; '.join(described)}; "
        "one run trains on series made alike: select one group (--participant-label, --task-id or a "
        "--bids-filter-file), or run the participant level with one setting into another OUTPUT_DIR."
    )


def repetition_time(sidecar: dict[str, Any]) -> float | None:
    """``RepetitionTime`` in seconds, ``None`` when absent or not a positive number."""
    value = sidecar.get("RepetitionTime")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)


def tr_counts(times: list[float | None]) -> dict[str, int]:
    """Scans per repetition time (``"0.72"`` -> count; ``"unknown"`` for scans without one)."""
    counts = Counter("unknown" if t is None else f"{t:g}" for t in times)
    return dict(sorted(counts.items()))


def warn_mixed_trs(counts: dict[str, int], window: int) -> None:
    """One warning when the scans have more than one repetition time (windows count volumes)."""
    if len(counts) < 2:
        return
    shown = ", ".join(
        f"{tr} s ({n} scans, a window of {window} volumes = {window * float(tr):g} s)"
        if tr != "unknown"
        else f"unknown ({n} scans)"
        for tr, n in counts.items()
    )
    LOGGER.warning(
        "the selected scans have %d repetition times: %s; windows and series are counted in "
        "volumes, as in the original study, so they cover different durations; select one TR "
        "(--bids-filter-file, --participant-label) if that matters. TRs are in splits.tsv and "
        "predictions.tsv",
        len(counts),
        shown,
    )


def fmriprep_version(
    sidecars: list[dict[str, Any]], fmriprep_dir: Path | None, links: dict[str, str] | None = None
) -> dict[str, Any]:
    """The fMRIPrep version(s) of the inputs, from the derivatives' ``dataset_description.json``.

    Looked for above each sidecar's first ``Sources`` entry (the fMRIPrep BOLD file; a BIDS URI
    ``bids:<name>:...`` is looked up in ``links``, OUTPUT_DIR's ``DatasetLinks``), then in
    ``fmriprep_dir`` (the group call's ``-d fmriprep=PATH`` or default location).

    Returns
    -------
    dict
        ``version`` (``"unknown"`` when no description names fMRIPrep; versions joined by
        ``", "`` when several) and ``dataset_description`` (the files read).
    """
    folders: set[Path] = set()
    for sidecar in sidecars:
        sources = sidecar.get("Sources")
        if isinstance(sources, list) and sources and isinstance(sources[0], str):
            if sources[0].startswith("bids:"):  # the link is the fMRIPrep dataset's root
                root = resolve_bids_uri(f"bids:{sources[0].split(':', 2)[1]}:", links or {})
                if root is not None:
                    folders.add(root)
                continue
            parts = Path(sources[0]).parts
            subject = next((i for i, p in enumerate(parts) if p.startswith("sub-")), None)
            if subject:
                folders.add(Path(*parts[:subject]))
    if fmriprep_dir is not None:
        folders.add(Path(fmriprep_dir))
    versions, read = set(), []
    for folder in sorted(folders):
        version = _generated_by_version(folder / "dataset_description.json", "fmriprep")
        if version:
            versions.add(version)
            read.append(str(folder / "dataset_description.json"))
    return {"version": ", ".join(sorted(versions)) or "unknown", "dataset_description": read}


def _generated_by_version(path: Path, name: str) -> str | None:
    """The ``Version`` of the ``GeneratedBy`` entry whose name starts with ``name``, if readable."""
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    entries = info.get("GeneratedBy", []) if isinstance(info, dict) else []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and str(entry.get("Name", "")).lower().startswith(name):
            return str(entry.get("Version") or "unknown")
    return None


def output_dir_description(output_dir: Path) -> dict[str, Any]:
    """``GeneratedBy`` and ``SourceDatasets`` of ``OUTPUT_DIR/dataset_description.json`` (or empty)."""
    try:
        info = json.loads((output_dir / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(info, dict):
        return {}
    return {k: info[k] for k in ("GeneratedBy", "SourceDatasets") if k in info}


def input_record(
    shared: dict[str, Any],
    sidecars: list[dict[str, Any]],
    times: list[float | None],
    output_dir: Path,
    fmriprep_dir: Path | None,
) -> dict[str, Any]:
    """What ``config.json``, ``summary.json`` and the report say about the inputs.

    Parameters
    ----------
    shared : dict
        :func:`check_made_alike`'s settings (the same for every scan).
    sidecars : list of dict
        Every training scan's sidecar.
    times : list
        :func:`repetition_time` of every scan.
    """
    software = Counter(
        str(s.get("SoftwareVersions", {}).get("neurossm-app", NOT_RECORDED))
        if isinstance(s.get("SoftwareVersions"), dict)
        else NOT_RECORDED
        for s in sidecars
    )
    return {
        "participant_settings": shared,
        "repetition_time": tr_counts(times),
        "participant_neurossm_app": dict(sorted(software.items())),
        "fmriprep": fmriprep_version(sidecars, fmriprep_dir, dataset_links(output_dir)),
        "output_dir_description": output_dir_description(output_dir),
    }
