"""BIDS queries and output names.

Inputs are found with pybids (never by glob), and every output path is built by
:func:`build_path`, so the group level reads exactly what the participant level wrote.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from neurossm_app import __version__
from neurossm_app.errors import (
    DataError,
    InputMissingError,
    NoFilesSelectedError,
    OutputError,
    UsageError,
)
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
    "atlas": "atlas",
    "label": "label",
    "stat": "stat",
    "desc": "desc",
}
_OUTPUT_ORDER = (*RUN_ENTITIES, "space", "atlas", "label", "stat", "desc")


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


@dataclass(frozen=True)
class BoldRun:
    """One preprocessed BOLD run and the files that go with it."""

    bold: Path
    mask: Path
    confounds: Path
    repetition_time: float
    entities: dict[str, Any] = field(hash=False)

    @property
    def name(self) -> str:
        """A readable, unique name, e.g. ``sub-01_task-rest_run-1``."""
        return run_label(self.entities)


def dataset_description(
    output_dir: str | os.PathLike, source_dirs: list[str | os.PathLike] | None = None
) -> Path:
    """Write ``dataset_description.json`` for OUTPUT_DIR unless a valid one is already there."""
    path = Path(output_dir) / "dataset_description.json"
    if path.exists():
        try:
            json.loads(path.read_text())
            return path
        except json.JSONDecodeError:
            pass  # a broken file from an older crash: replace it atomically below
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
    description = {
        "Name": "neurossm-app derivatives: parcellated BOLD time series and NeuroSSM results",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
    }
    if source_dirs:
        description["SourceDatasets"] = [{"URL": Path(d).resolve().as_uri()} for d in source_dirs]
    return write_json(path, description)


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


def load_filter_file(path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file`` (fMRIPrep format: ``{"bold": {entity: value}}``)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"--bids-filter-file {path} does not exist; check the path.")
    try:
        filters = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(
            f"--bids-filter-file {path} is not valid JSON ({err.msg}, line {err.lineno})."
        ) from None
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise DataError(
            f"--bids-filter-file {path} must map query names to entity filters, "
            'e.g. {"bold": {"task": "rest"}}.'
        )
    return filters


def _no_files(what: str, filters: dict[str, Any], root: Path) -> NoFilesSelectedError:
    shown = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None) or "no filters"
    return NoFilesSelectedError(f"no {what} in {root} matched ({shown}); check the labels and filters.")


def collect_bold_runs(
    fmriprep_dir: Path,
    participant_labels: list[str] | None = None,
    session_labels: list[str] | None = None,
    task_ids: list[str] | None = None,
    bids_filters: dict[str, dict[str, Any]] | None = None,
    database_dir: Path | None = None,
) -> list[BoldRun]:
    """Find preprocessed BOLD runs in MNI152NLin2009cAsym and their mask and confounds.

    Prefers ``res-2`` when a run exists at several resolutions. Raises a user-facing error when
    something is missing rather than silently skipping a run.
    """
    layout = _fmriprep_layout(fmriprep_dir, database_dir)
    query = _bold_query(layout, fmriprep_dir, participant_labels, session_labels, task_ids, bids_filters)
    selected = layout.get(**query)
    if not selected:
        raise _no_files(
            "preprocessed BOLD runs", {k: v for k, v in query.items() if k != "return_type"}, fmriprep_dir
        )
    bolds = _one_resolution_per_run(_in_template_space(selected, fmriprep_dir))
    masks = layout.get(
        space=TEMPLATE_SPACE, desc="brain", suffix="mask", datatype="func", extension=[".nii.gz", ".nii"]
    )
    confounds = layout.get(desc="confounds", suffix="timeseries", extension=".tsv", datatype="func")
    return [_bold_run(bolds[key], masks, confounds) for key in sorted(bolds)]


def _fmriprep_layout(fmriprep_dir: Path, database_dir: Path | None):
    """The pybids layout of the fMRIPrep derivatives, without validation.

    Only ``_bold`` sidecars have their metadata indexed: the TR is the one field read, and
    fMRIPrep's confounds sidecars are large.
    """
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    if not (fmriprep_dir / "dataset_description.json").is_file():
        raise InputMissingError(
            f"no fMRIPrep derivatives at {fmriprep_dir} (dataset_description.json missing); "
            "pass -d fmriprep=PATH."
        )
    return BIDSLayout(
        fmriprep_dir,
        validate=False,
        config=["bids", "derivatives"],
        indexer=BIDSLayoutIndexer(validate=False, index_metadata=True, suffix="bold"),
        database_path=database_dir,
    )


def _bold_query(
    layout,
    fmriprep_dir: Path,
    participant_labels: list[str] | None,
    session_labels: list[str] | None,
    task_ids: list[str] | None,
    bids_filters: dict[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    """The pybids query for preprocessed BOLD runs; unknown participant labels are an error."""
    query: dict[str, Any] = {
        "datatype": "func",
        "suffix": "bold",
        "desc": "preproc",
        "extension": [".nii.gz", ".nii"],
        "return_type": "object",
    }
    if participant_labels:
        known = set(layout.get_subjects())
        missing = [p for p in participant_labels if p not in known]
        if missing:
            raise NoFilesSelectedError(
                f"participant label(s) {', '.join(missing)} not found in {fmriprep_dir} "
                f"(found: {', '.join(sorted(known)[:10]) or 'none'})."
            )
        query["subject"] = participant_labels
    if session_labels:
        query["session"] = session_labels
    if task_ids:
        query["task"] = task_ids
    query.update((bids_filters or {}).get("bold", {}))
    return query


def _in_template_space(selected: list, fmriprep_dir: Path) -> list:
    """The selected BOLD files in the template space; none there is an error naming the spaces found."""
    in_space = [f for f in selected if f.entities.get("space") == TEMPLATE_SPACE]
    if not in_space:
        spaces = sorted({str(f.entities.get("space")) for f in selected})
        raise InputMissingError(
            f"no BOLD runs in space {TEMPLATE_SPACE} in {fmriprep_dir} (found spaces: {', '.join(spaces)}); "
            f"re-run fMRIPrep with --output-spaces {TEMPLATE_SPACE}:res-2."
        )
    return in_space


def _one_resolution_per_run(bolds: list) -> dict[tuple, Any]:
    """One BOLD file per run (keyed by its run entities): ``res-2`` if present, else the first."""
    by_run: dict[tuple, Any] = {}
    for bold in bolds:
        key = tuple(sorted(run_entities(bold.entities).items()))
        res = str(bold.entities.get("res", ""))
        current = by_run.get(key)
        if current is None or (res == "2" and str(current.entities.get("res", "")) != "2"):
            by_run[key] = bold
    return by_run


def _bold_run(bold, masks: list, confounds: list) -> BoldRun:
    """A BOLD file with its brain mask, confounds and TR; any of them missing is an error.

    ``masks`` and ``confounds`` are every brain mask and confounds file of the layout (one
    query each for all runs, not two per run), in pybids' order.
    """
    ents = run_entities(bold.entities)
    return BoldRun(
        bold=Path(bold.path),
        mask=_brain_mask(bold, ents, masks),
        confounds=_confounds_file(bold, ents, confounds),
        repetition_time=_repetition_time(bold),
        entities=ents,
    )


def _with_entities(files: list, wanted: dict[str, Any]) -> list:
    """The files whose entities equal ``wanted`` (``None``: the entity is absent), as a pybids
    query with those filters would select them."""
    return [f for f in files if all(f.entities.get(k) == v for k, v in wanted.items())]


def _brain_mask(bold, ents: dict[str, Any], masks: list) -> Path:
    """The ``desc-brain_mask`` of a BOLD run, in the same space and resolution."""
    found = _with_entities(masks, {**ents, "res": bold.entities.get("res")})
    if not found:
        raise InputMissingError(
            f"brain mask missing for {bold.path}; expected a _desc-brain_mask.nii.gz beside it."
        )
    return Path(found[0].path)


def _confounds_file(bold, ents: dict[str, Any], candidates: list) -> Path:
    """The run's ``desc-confounds_timeseries.tsv`` (the one without a space entity)."""
    confounds = _with_entities(candidates, {**ents, "space": None})
    if not confounds:
        raise InputMissingError(
            f"confounds file missing for {bold.path}; expected "
            f"{Path(bold.path).name.split('_space-')[0]}_desc-confounds_timeseries.tsv beside it."
        )
    return Path(confounds[0].path)


def _repetition_time(bold) -> float:
    """``RepetitionTime`` from the BOLD file's JSON sidecar."""
    tr = bold.get_metadata().get("RepetitionTime")
    if tr is None:
        raise DataError(
            f"RepetitionTime missing from the JSON sidecar of {bold.path}; add it to the sidecar."
        )
    return float(tr)


def find_fmriprep_dir(bids_dir: Path, derivatives: dict[str, Path]) -> Path:
    """Resolve the fMRIPrep derivatives folder (``-d fmriprep=PATH``, or default locations)."""
    if "fmriprep" in derivatives:
        return derivatives["fmriprep"]
    description = bids_dir / "dataset_description.json"
    if description.is_file():
        try:
            info = json.loads(description.read_text())
        except json.JSONDecodeError:
            info = {}
        generated = [g.get("Name", "") for g in info.get("GeneratedBy", []) if isinstance(g, dict)]
        if info.get("DatasetType") == "derivative" and any("fmriprep" in g.lower() for g in generated):
            return bids_dir
    return bids_dir / "derivatives" / "fmriprep"


def output_layout(output_dir: Path):
    """The pybids layout of the participant-level outputs in OUTPUT_DIR (:func:`pybids_config`).

    ``group/``, ``logs/``, ``code/`` and ``sourcedata/`` are left out of the index: they hold no
    participant-level outputs (``group/`` holds the group level's own files).
    """
    import re

    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    indexer = BIDSLayoutIndexer(
        validate=False, index_metadata=False, ignore=[re.compile(r"/(group|logs|code|sourcedata)/")]
    )
    return BIDSLayout(output_dir, validate=False, config=pybids_config(), indexer=indexer, is_derivative=True)


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
