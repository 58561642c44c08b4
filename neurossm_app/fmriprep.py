"""The fMRIPrep derivatives: which BOLD runs there are, with their mask, confounds and TR.

pybids walks and indexes the dataset (``--bids-database-dir`` reuses its index), but the
entities of every file are read from its path *below the dataset root*: pybids matches its
entity patterns against the absolute path, so a dataset stored under ``/data/perf/ds001/`` gets
``datatype=perf`` (and one under ``/scratch/sub-99/`` ``subject=99``). Queries select on those
relative entities only (:func:`_entities_below`).

Every fMRIPrep release that nilearn's ``load_confounds`` reads is found: confounds named
``desc-confounds_timeseries.tsv`` (20.2 and later) or ``desc-confounds_regressors.tsv`` (1.2 to
20.1), BOLD in ``MNI152NLin2009cAsym`` or ``MNI152NLin6Asym`` at ``res-2``, at the native output
grid (no ``res-``) or at ``res-1``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurossm_app.bids import RUN_ENTITIES, TEMPLATE_SPACE, run_entities, run_label
from neurossm_app.errors import DataError, InputMissingError, NoFilesSelectedError, UsageError

#: The template spaces the atlases exist in, in the order ``--space`` defaults to.
SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")
#: The CIFTI grayordinates space (``--space fsLR``) and its density: ``space-fsLR_den-91k``.
CIFTI_SPACE = "fsLR"
CIFTI_DENSITY = "91k"
#: ``desc-confounds_<suffix>.tsv``: 20.2 and later, then 1.2 to 20.1.
CONFOUNDS_SUFFIXES = ("timeseries", "regressors")
#: ``DatasetLinks`` name of the fMRIPrep dataset in our sidecars' BIDS URIs.
FMRIPREP_LINK = "fmriprep"


@dataclass(frozen=True)
class BoldRun:
    """One preprocessed BOLD run and the files that go with it.

    ``confounds`` is ``None`` when fMRIPrep's confounds file is absent (fine with
    ``--confounds none``, see :func:`missing_confounds_error`). ``sources`` are the BIDS URIs
    (``bids:fmriprep:sub-01/func/...``) of the BOLD, mask and confounds files.
    A CIFTI run (``space`` :data:`CIFTI_SPACE`; outputs ``space-fsLR_den-91k``) has a
    ``.dtseries.nii`` as ``bold`` and no ``mask`` (``None``). ``metadata`` goes into the run's
    output sidecar as it is (e.g. where the TR was read, for inputs without a sidecar).
    """

    bold: Path
    mask: Path | None
    confounds: Path | None
    repetition_time: float
    entities: dict[str, Any] = field(hash=False)
    space: str = TEMPLATE_SPACE
    sources: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_cifti(self) -> bool:
        """Whether the run is a CIFTI dtseries (parcellated over grayordinates)."""
        return self.space == CIFTI_SPACE

    @property
    def name(self) -> str:
        """A readable, unique name, e.g. ``sub-01_task-rest_run-1``."""
        return run_label(self.entities)


def bids_uri(path: str | os.PathLike, root: str | os.PathLike, link: str) -> str:
    """``bids:<link>:<path relative to root>`` (BIDS 1.9 URI), e.g. ``bids:fmriprep:sub-01/func/x``."""
    return f"bids:{link}:{Path(path).relative_to(root).as_posix()}"


def needs_confounds(strategy: str, fd_threshold: float | None, std_dvars_threshold: float | None) -> bool:
    """Whether a run's confounds file is read: any strategy but ``none``, or censoring."""
    return strategy != "none" or fd_threshold is not None or std_dvars_threshold is not None


def missing_confounds_error(bold_file: str | os.PathLike, strategy: str) -> InputMissingError:
    """The error for a run (its BOLD file) without a confounds file when ``strategy`` (or
    censoring) needs one."""
    stem = Path(bold_file).name.split("_space-")[0]
    return InputMissingError(
        f"confounds file missing for {os.fspath(bold_file)}; --confounds {strategy} (or censoring) needs "
        f"{stem}_desc-confounds_timeseries.tsv (fMRIPrep 20.2+) or {stem}_desc-confounds_regressors.tsv "
        "(1.2-20.1) beside it, or use --confounds none."
    )


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


def find_fmriprep_dir(bids_dir: Path, derivatives: dict[str, Path]) -> Path:
    """Resolve the fMRIPrep derivatives folder (``-d fmriprep=PATH``, or default locations).

    BIDS_DIR itself when its ``dataset_description.json`` names fMRIPrep (``GeneratedBy``, or
    ``PipelineDescription`` before fMRIPrep 20.1), else ``BIDS_DIR/derivatives/fmriprep``.
    """
    if "fmriprep" in derivatives:
        return derivatives["fmriprep"]
    info = read_description(bids_dir)
    generated = [g.get("Name", "") for g in info.get("GeneratedBy", []) if isinstance(g, dict)]
    pipeline = info.get("PipelineDescription")
    if isinstance(pipeline, dict):
        generated.append(str(pipeline.get("Name", "")))
    if is_derivative(info) and any("fmriprep" in str(g).lower() for g in generated):
        return bids_dir
    return bids_dir / "derivatives" / "fmriprep"


def read_description(dataset_dir: Path) -> dict[str, Any]:
    """``dataset_description.json`` of a dataset, or ``{}`` when absent or unreadable."""
    try:
        info = json.loads((Path(dataset_dir) / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def is_derivative(info: dict[str, Any]) -> bool:
    """A derivative dataset: ``DatasetType: derivative``, or fMRIPrep < 20.1's ``PipelineDescription``."""
    return info.get("DatasetType") == "derivative" or isinstance(info.get("PipelineDescription"), dict)


@dataclass(frozen=True)
class _File:
    """An indexed file and its entities, read from its path below the dataset root."""

    path: Path
    root: Path  # the dataset root
    entities: dict[str, Any] = field(hash=False)


def collect_bold_runs(
    fmriprep_dir: Path,
    participant_labels: list[str] | None = None,
    session_labels: list[str] | None = None,
    task_ids: list[str] | None = None,
    bids_filters: dict[str, dict[str, Any]] | None = None,
    database_dir: Path | None = None,
    space: str | None = None,
    link: str = FMRIPREP_LINK,
) -> list[BoldRun]:
    """Find the preprocessed BOLD runs in one template space, with their mask, confounds and TR.

    ``space`` is one of :data:`SPACES`; ``None`` takes the first of them that the selected runs
    have. Per run, ``res-2`` is preferred, then the native grid (no ``res-``), then any other.
    A missing mask or TR is an error; a missing confounds file leaves ``confounds`` ``None``.
    ``link`` is the ``DatasetLinks`` name of ``fmriprep_dir`` in the runs' BIDS URIs.
    """
    files = _indexed_files(fmriprep_dir, database_dir)
    query = _bold_query(files, fmriprep_dir, participant_labels, session_labels, task_ids, bids_filters)
    if space == CIFTI_SPACE:  # fMRIPrep --cifti-output: space-fsLR_den-91k_bold.dtseries.nii, no desc
        query.update(desc=None, space=CIFTI_SPACE, den=CIFTI_DENSITY, extension=".dtseries.nii")
    selected = [f for f in files if _matches(f.entities, query)]
    if not selected:
        cifti = "CIFTI runs (fMRIPrep --cifti-output 91k)"
        what = cifti if space == CIFTI_SPACE else "preprocessed BOLD runs"
        raise _no_files(what, query, fmriprep_dir)
    space = space if space == CIFTI_SPACE else _choose_space(selected, space, fmriprep_dir)
    bolds = _one_resolution_per_run([f for f in selected if f.entities.get("space") == space])
    masks = [
        f for f in files if _matches(f.entities, {"datatype": "func", "desc": "brain", "suffix": "mask"})
    ]
    confounds = [
        f
        for f in files
        if _matches(f.entities, {"datatype": "func", "desc": "confounds", "suffix": list(CONFOUNDS_SUFFIXES),
                                 "extension": ".tsv", "space": None})
    ]  # fmt: skip
    return [_bold_run(bolds[key], masks, confounds, space, link) for key in sorted(bolds)]


def _indexed_files(fmriprep_dir: Path, database_dir: Path | None) -> list[_File]:
    """The NIfTI and TSV files of the derivatives (pybids walks and indexes them, without
    validation), with entities from their paths below ``fmriprep_dir``.

    No metadata is indexed: the TR, the one field read, comes from the sidecar fMRIPrep writes
    beside each BOLD file, and fMRIPrep's confounds sidecars are large.
    """
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    if not (fmriprep_dir / "dataset_description.json").is_file():
        raise InputMissingError(
            f"no fMRIPrep derivatives at {fmriprep_dir} (dataset_description.json missing); "
            "pass -d fmriprep=PATH."
        )
    layout = BIDSLayout(
        fmriprep_dir,
        validate=False,
        config=["bids", "derivatives"],
        indexer=BIDSLayoutIndexer(validate=False, index_metadata=False),
        database_path=database_dir,
    )
    root = Path(layout.root)
    # suffix and extension come from the file name itself, so pybids' own filter is safe here
    paths = layout.get(
        suffix=["bold", "mask", *CONFOUNDS_SUFFIXES],
        extension=[".nii.gz", ".nii", ".tsv", ".dtseries.nii"],
        return_type="filename",
    )
    entities = _entity_patterns()
    return [_File(Path(p), root, _entities_below(Path(p), root, entities)) for p in paths]


def _entity_patterns() -> list:
    from bids.layout.models import Config

    merged = {}
    for name in ("bids", "derivatives"):
        merged.update(Config.load(name).entities)
    return list(merged.values())


def _entities_below(path: Path, root: Path, entities: list) -> dict[str, Any]:
    """pybids' entities of ``path``, matched on the part below ``root`` only."""
    from bids.layout.utils import parse_file_entities

    return parse_file_entities("/" + path.relative_to(root).as_posix(), entities=entities)


def _same(have: Any, wanted: Any) -> bool:
    """One entity value against one filter value; ``"*"`` matches any value, ``1`` matches ``01``."""
    have, wanted = str(have), str(wanted)
    return (
        wanted == "*" or have == wanted or (have.isdigit() and wanted.isdigit() and int(have) == int(wanted))
    )


def _matches(entities: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Whether ``entities`` pass ``filters`` as a pybids query would select them: a value, a
    list of values (any of them), ``None`` (the entity is absent) or ``"*"`` (present)."""
    for key, wanted in filters.items():
        have = entities.get(key)
        if wanted is None:
            if have is not None:
                return False
        elif have is None:
            return False
        elif isinstance(wanted, list | tuple):
            if not any(_same(have, w) for w in wanted):
                return False
        elif not _same(have, wanted):
            return False
    return True


def _bold_query(
    files: list[_File],
    fmriprep_dir: Path,
    participant_labels: list[str] | None,
    session_labels: list[str] | None,
    task_ids: list[str] | None,
    bids_filters: dict[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    """The filters for preprocessed BOLD runs; unknown participant labels are an error."""
    query: dict[str, Any] = {
        "datatype": "func",
        "suffix": "bold",
        "desc": "preproc",
        "extension": [".nii.gz", ".nii"],
    }
    if participant_labels:
        known = {str(f.entities["subject"]) for f in files if f.entities.get("subject")}
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


def _no_files(what: str, filters: dict[str, Any], root: Path) -> NoFilesSelectedError:
    shown = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None) or "no filters"
    return NoFilesSelectedError(f"no {what} in {root} matched ({shown}); check the labels and filters.")


def _choose_space(selected: list[_File], space: str | None, fmriprep_dir: Path) -> str:
    """``space`` if the selected BOLD files have it, else the first of :data:`SPACES` they have."""
    found = sorted({str(f.entities.get("space")) for f in selected})
    if space is not None and space not in SPACES:
        raise UsageError(f"--space {space} is not supported; choose one of {', '.join(SPACES)}.")
    usable = [s for s in SPACES if s in found and (space is None or s == space)]
    if not usable:
        wanted = space or " or ".join(SPACES)
        rerun = f"re-run fMRIPrep with --output-spaces {space or TEMPLATE_SPACE}:res-2"
        have = [s for s in SPACES if s in found]
        fix = f"pass --space {have[0]} or {rerun}" if have else rerun
        raise InputMissingError(
            f"no BOLD runs in space {wanted} in {fmriprep_dir} (found spaces: {', '.join(found)}); {fix}."
        )
    return usable[0]


def _resolution_rank(bold: _File) -> int:
    """``res-2`` first, then the native grid (no ``res-``), then any other resolution."""
    res = str(bold.entities.get("res", "") or "")
    return 0 if res == "2" else 1 if res == "" else 2


def _one_resolution_per_run(bolds: list[_File]) -> dict[tuple, _File]:
    """One BOLD file per run (keyed by its run entities), by :func:`_resolution_rank`."""
    by_run: dict[tuple, _File] = {}
    for bold in sorted(bolds, key=lambda f: (_resolution_rank(f), str(f.path))):
        # keyed in BIDS entity order, so runs sort by subject, session, task, ..., run
        by_run.setdefault(tuple((k, str(v)) for k, v in run_entities(bold.entities).items()), bold)
    return by_run


def _bold_run(bold: _File, masks: list[_File], confounds: list[_File], space: str, link: str) -> BoldRun:
    """A BOLD file with its brain mask, confounds (or ``None``) and TR.

    ``masks`` and ``confounds`` are every brain mask and confounds file of the derivatives (one
    pass for all runs, not two queries per run).
    """
    ents = run_entities(bold.entities)
    mask = None if space == CIFTI_SPACE else _brain_mask(bold, ents, masks)
    found = [f for f in confounds if _matches(f.entities, _of_run(ents))]
    # the 20.2+ name first, should a folder hold both
    found.sort(key=lambda f: CONFOUNDS_SUFFIXES.index(str(f.entities["suffix"])))
    confounds_file = found[0].path if found else None
    sources = [p for p in (bold.path, mask, confounds_file) if p is not None]
    return BoldRun(
        bold=bold.path,
        mask=mask,
        confounds=confounds_file,
        repetition_time=_repetition_time(bold.path),
        entities=ents,
        space=space,
        sources=tuple(bids_uri(p, bold.root, link) for p in sources),
    )


def _of_run(ents: dict[str, Any]) -> dict[str, Any]:
    """Filters for the files of one run: its entities, and the others absent (a run without
    ``run-`` does not take ``run-1``'s files)."""
    return {key: ents.get(key) for key in RUN_ENTITIES}


def _brain_mask(bold: _File, ents: dict[str, Any], masks: list[_File]) -> Path:
    """The ``desc-brain_mask`` of a BOLD run, in the same space and resolution."""
    wanted = {**_of_run(ents), "space": bold.entities.get("space"), "res": bold.entities.get("res")}
    found = [m for m in masks if _matches(m.entities, wanted)]
    if not found:
        raise InputMissingError(
            f"brain mask missing for {bold.path}; expected a _desc-brain_mask.nii.gz beside it."
        )
    return found[0].path


def _repetition_time(bold: Path) -> float:
    """``RepetitionTime`` from the BOLD file's JSON sidecar (fMRIPrep writes one beside each)."""
    sidecar = bold.with_name(bold.name.replace(".nii.gz", ".json").replace(".nii", ".json"))
    try:
        tr = json.loads(sidecar.read_text()).get("RepetitionTime")
    except FileNotFoundError:
        tr = None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise DataError(f"cannot read the JSON sidecar {sidecar}; it must be a JSON object.") from None
    if tr is None:
        raise DataError(f"RepetitionTime missing from the JSON sidecar of {bold}; add it to the sidecar.")
    return float(tr)
