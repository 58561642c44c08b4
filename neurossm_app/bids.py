"""Output names, ``dataset_description.json`` and BIDS URIs.

Every output path is built by :func:`build_path`, so the group level reads exactly what the
participant level wrote. Inputs are found in :mod:`neurossm_app.fmriprep` (pybids, never glob);
sidecars name them by BIDS URI (``bids:fmriprep:sub-01/func/...``), resolved through the
``DatasetLinks`` of OUTPUT_DIR's ``dataset_description.json`` (:func:`resolve_bids_uri`).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from neurossm_app import __version__
from neurossm_app.errors import OutputError, UsageError
from neurossm_app.files import write_json

TEMPLATE_SPACE = "MNI152NLin2009cAsym"

# Entities carried from an input BOLD file to its outputs, in BIDS order.
RUN_ENTITIES = ("subject", "session", "task", "acquisition", "reconstruction", "direction", "run", "echo")
_ENTITY_KEYS = {
    "subject": "sub",
    "session": "ses",
    "task": "task",
    "acquisition": "acq",
    "reconstruction": "rec",
    "direction": "dir",
    "run": "run",
    "echo": "echo",
    "space": "space",
    "density": "den",
    "atlas": "atlas",
    "label": "label",
    "stat": "stat",
    "desc": "desc",
}
_OUTPUT_ORDER = (*RUN_ENTITIES, "space", "density", "atlas", "label", "stat", "desc")


def pybids_config() -> list[str]:
    """The pybids configuration for our outputs: BIDS + derivatives + our ``stat`` entity."""
    ours = resources.files("neurossm_app") / "data" / "pybids_neurossm.json"
    return ["bids", "derivatives", str(ours)]


def build_path(
    output_dir: str | os.PathLike,
    entities: dict[str, Any],
    suffix: str,
    extension: str,
    datatype: str | None = "func",
) -> Path:
    """Build the path of one output file.

    Parameters
    ----------
    output_dir
        Root of the derivative dataset (``OUTPUT_DIR``).
    entities
        Entity names as pybids spells them (``subject``, ``session``, ``task``, ``run``,
        ``space``, ``atlas``, ``stat``, ``desc``, ...). Missing or ``None`` ones are left out.
    suffix, extension
        For example ``"timeseries"`` and ``".tsv"``.
    datatype
        Sub-folder under the subject (and session) folder; ``None`` for a file at subject level.

    Returns
    -------
    Path
        ``OUTPUT_DIR/sub-X[/ses-Y]/func/sub-X[_ses-Y]_..._suffix.ext``.
    """
    unknown = set(entities) - set(_ENTITY_KEYS)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = []
    for name in _OUTPUT_ORDER:
        value = entities.get(name)
        if value is None or value == "":
            continue
        value = str(value)
        if not value.isalnum():
            raise UsageError(
                f"BIDS entity {name}={value!r} must be letters and digits only; "
                "rename the label or the file it came from."
            )
        parts.append(f"{_ENTITY_KEYS[name]}-{value}")
    if "subject" not in entities:
        raise ValueError("an output path needs a subject")
    folder = Path(output_dir) / f"sub-{entities['subject']}"
    if entities.get("session"):
        folder = folder / f"ses-{entities['session']}"
    if datatype:
        folder = folder / datatype
    return folder / ("_".join(parts) + f"_{suffix}{extension}")


def run_entities(entities: dict[str, Any]) -> dict[str, Any]:
    """Keep only the entities that identify a run (subject, session, task, run, ...)."""
    return {k: entities[k] for k in RUN_ENTITIES if entities.get(k) not in (None, "")}


def run_label(entities: dict[str, Any]) -> str:
    """``sub-01_ses-A_task-rest_run-1`` from a run's entities."""
    return "_".join(f"{_ENTITY_KEYS[k]}-{v}" for k, v in run_entities(entities).items())


def strip_prefix(label: str, prefix: str) -> str:
    """``sub-01`` -> ``01``; also refuses labels that could escape the output directory."""
    label = label.strip()
    if label.startswith(f"{prefix}-"):
        label = label[len(prefix) + 1 :]
    if not label or not label.isalnum():
        raise UsageError(f"{prefix} label {label!r} must be letters and digits only (as in {prefix}-01).")
    return label


def dataset_description(
    output_dir: str | os.PathLike,
    source_dirs: list[str | os.PathLike] | None = None,
    links: dict[str, str | os.PathLike] | None = None,
) -> Path:
    """Write ``dataset_description.json`` for OUTPUT_DIR, or add ``links`` to the one there.

    ``links`` name the datasets the sidecars' BIDS URIs point into (``bids:<name>:<path>``):
    ``DatasetLinks`` maps each name to the folder's ``file://`` URI (BIDS 1.9, as XCP-D does).
    A name already linked keeps its target (see :func:`free_link_name`).
    """
    path = Path(output_dir) / "dataset_description.json"
    wanted = {name: _as_uri(target) for name, target in (links or {}).items()}
    existing = _read_json_object(path)
    if existing is not None:
        known = existing.get("DatasetLinks") if isinstance(existing.get("DatasetLinks"), dict) else {}
        added = {k: v for k, v in wanted.items() if k not in known}
        if not added:
            return path
        return write_json(path, {**existing, "DatasetLinks": {**known, **added}})
    generated_by: dict[str, Any] = {
        "Name": "neurossm-app",
        "Version": __version__,
        "CodeURL": "https://github.com/neurossm-app/neurossm-app",
    }
    container = os.environ.get("NEUROSSM_CONTAINER_TAG")
    if container:
        # The Singularity/Apptainer image is built from the Docker one and keeps its variables.
        in_apptainer = any(os.environ.get(v) for v in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"))
        generated_by["Container"] = {"Type": "singularity" if in_apptainer else "docker", "Tag": container}
    description: dict[str, Any] = {
        "Name": "neurossm-app derivatives: parcellated BOLD time series and NeuroSSM results",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
    }
    if source_dirs:
        description["SourceDatasets"] = [{"URL": _as_uri(d)} for d in source_dirs]
    if wanted:
        description["DatasetLinks"] = wanted
    return write_json(path, description)


def _as_uri(target: str | os.PathLike) -> str:
    """A folder as a ``file://`` URI; a string that already is a URI is kept."""
    if isinstance(target, str) and "://" in target:
        return target
    return Path(target).resolve().as_uri()


def _read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or ``None`` when absent or broken (an older crash's file)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def dataset_links(output_dir: str | os.PathLike) -> dict[str, str]:
    """``DatasetLinks`` of ``OUTPUT_DIR/dataset_description.json`` (empty when there are none)."""
    links = (_read_json_object(Path(output_dir) / "dataset_description.json") or {}).get("DatasetLinks")
    return {str(k): str(v) for k, v in links.items()} if isinstance(links, dict) else {}


def free_link_name(output_dir: str | os.PathLike, name: str, target: str | os.PathLike) -> str:
    """The ``DatasetLinks`` name for ``target``: ``name`` if free or already ``target``, else
    ``name2``, ``name3``, ... (a second fMRIPrep folder written into the same OUTPUT_DIR)."""
    links, uri = dataset_links(output_dir), _as_uri(target)
    for candidate in (name, *(f"{name}{i}" for i in range(2, 100))):
        if links.get(candidate) in (None, uri):
            return candidate
    raise OutputError(f"{output_dir}/dataset_description.json links too many {name} datasets.")


def resolve_bids_uri(uri: str, links: dict[str, str]) -> Path | None:
    """The local path of ``bids:<name>:<path>`` through ``links`` (:func:`dataset_links`).

    Returns ``None`` when ``uri`` is not a BIDS URI, names no link, or its link is not a
    ``file://`` URI or a local path. A plain path (older sidecars) is returned as it is.
    """
    from urllib.parse import unquote, urlparse

    if not uri.startswith("bids:"):
        return Path(uri) if uri and "://" not in uri else None
    _, name, relative = uri.split(":", 2)
    target = links.get(name)
    if target is None:
        return None
    parsed = urlparse(target)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)) / relative
    return Path(target) / relative if not parsed.scheme else None


def check_output_dir(bids_dir: Path, output_dir: Path) -> Path:
    """Refuse an OUTPUT_DIR that is BIDS_DIR or inside it; create it if needed."""
    bids_dir = bids_dir.resolve()
    output_dir = output_dir.resolve()
    if output_dir == bids_dir or bids_dir in output_dir.parents:
        derivatives = bids_dir / "derivatives"
        if derivatives not in output_dir.parents:
            raise UsageError(
                f"OUTPUT_DIR {output_dir} is inside BIDS_DIR {bids_dir}; "
                f"choose a folder outside it (or under {derivatives})."
            )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"cannot create OUTPUT_DIR {output_dir}: {err.strerror}; choose a folder you can write to "
            "(in a container, bind it writable)."
        ) from None
    if not os.access(output_dir, os.W_OK):
        raise OutputError(f"OUTPUT_DIR {output_dir} is not writable; choose another folder.")
    return output_dir


def output_layout(output_dir: Path, database_path: Path | None = None):
    """The pybids layout of the participant-level outputs in OUTPUT_DIR (:func:`pybids_config`).

    ``group/``, ``logs/``, ``code/`` and ``sourcedata/`` are left out of the index: they hold no
    participant-level outputs (``group/`` holds the group level's own files). So are all files
    but the ``_timeseries.tsv`` ones (sidecars, coverage, reports: the group level opens a sidecar
    by its path), a third of the files to index and query at group level. With
    ``database_path``, pybids saves its index there, or loads it when one is there
    (:mod:`neurossm_app.group.output_index` decides when it is still valid).
    """
    import re

    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    indexer = BIDSLayoutIndexer(
        validate=False,
        index_metadata=False,
        ignore=[
            re.compile(r"/(group|logs|code|sourcedata)/"),
            re.compile(r"/[^/]*\.[^/]*(?<!_timeseries\.tsv)$"),  # a file, not a series
        ],
    )
    return BIDSLayout(
        output_dir, validate=False, config=pybids_config(), indexer=indexer, is_derivative=True,
        database_path=database_path,
    )  # fmt: skip


def sanitize_label(label: str) -> str:
    """``label-`` entity value of a class: its letters and digits only (``Control`` stays)."""
    clean = "".join(ch for ch in str(label) if ch.isascii() and ch.isalnum())
    return clean or "unnamed"


def group_file_name(entities: dict[str, Any], suffix: str, extension: str) -> str:
    """A group-level file name (no subject): ``[space-S_]atlas-A[_label-L][_desc-D]_<suffix><ext>``.

    ``entities`` are spelt as pybids spells them (``space``, ``atlas``, ``label``, ``desc``);
    missing or ``None`` ones are left out, the ``label`` value is passed through
    :func:`sanitize_label`.
    """
    values = dict(entities)
    if values.get("label") is not None:
        values["label"] = sanitize_label(values["label"])
    parts = [f"{_ENTITY_KEYS[k]}-{values[k]}" for k in _OUTPUT_ORDER if values.get(k) not in (None, "")]
    return "_".join(parts) + f"_{suffix}{extension}"


def group_map_name(atlas_label: str, class_label: str | None, desc: str, suffix: str, extension: str) -> str:
    """``space-MNI152NLin2009cAsym_atlas-<A>[_label-<class>]_desc-<desc>_<suffix><ext>``."""
    entities = {"space": TEMPLATE_SPACE, "atlas": atlas_label, "label": class_label, "desc": desc}
    return group_file_name(entities, suffix, extension)


#: Names that moved to :mod:`neurossm_app.fmriprep` (the input side), still importable from here.
_MOVED = ("BoldRun", "collect_bold_runs", "find_fmriprep_dir", "load_filter_file")


def __getattr__(name: str):
    if name in _MOVED:
        from neurossm_app import fmriprep

        return getattr(fmriprep, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
