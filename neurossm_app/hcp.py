"""HCP-YA minimal-preprocessing outputs (``--input-type hcp``) as :class:`~.fmriprep.BoldRun` records.

The layout HCP's ConnectomeDB download unpacks to, one folder per run::

    <HCP_DIR>/<subject>/MNINonLinear/ROIs/wmparc.2.nii.gz  (or per run, beside the BOLD)
    <HCP_DIR>/<subject>/MNINonLinear/Results/<run>/
        <run>.nii.gz                       volumetric BOLD, FSL MNI152 2 mm (MNI152NLin6Asym)
        <run>_Atlas_MSMAll.dtseries.nii    91k grayordinates (else <run>_Atlas.dtseries.nii)
        Movement_Regressors.txt            12 columns: x y z (mm), rotations (degrees), derivatives
        brainmask_fs.2.nii.gz              brain mask on the BOLD grid

Runs are named the HCP way (``rfMRI_REST1_LR``, ``tfMRI_MOTOR_RL``) and mapped to BIDS entities
as XCP-D's HCP ingression maps them (:func:`hcp_run_entities`): ``task-rest_dir-LR_run-1``,
``task-motor_dir-RL_run-1``. HCP writes no confounds table: one in fMRIPrep's column names is
computed per run (:func:`hcp_confounds`) and read by the same cleaning code as fMRIPrep's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from neurossm_app.errors import DataError, InputMissingError, NeurossmError, NoFilesSelectedError, UsageError
from neurossm_app.fmriprep import CIFTI_SPACE, BoldRun, _matches, bids_uri

LOGGER = logging.getLogger("neurossm_app")

#: HCP's volumetric outputs are on the FSL MNI152 2 mm grid, TemplateFlow's MNI152NLin6Asym.
HCP_SPACE = "MNI152NLin6Asym"
#: ``DatasetLinks`` name of the HCP folder in our sidecars' BIDS URIs.
HCP_LINK = "hcp"
#: The ``--confounds`` strategies whose columns an HCP run has (motion from Movement_Regressors.txt,
#: WM and CSF from wmparc, the global signal from the brain mask); HCP computes no CompCor.
HCP_STRATEGIES = ("none", "simple", "24P", "36P")
#: FreeSurfer labels of wmparc counted as white matter: cerebral WM (2, 41), hypointensities (77),
#: corpus callosum (251-255), unsegmented WM (5001, 5002) and the WM parcels (3000s, 4000s).
WM_LABELS = (2, 41, 77, 251, 252, 253, 254, 255, 5001, 5002, *range(3000, 3036), *range(4000, 4036))
#: ... and as CSF: lateral, inferior lateral, third and fourth ventricles, CSF (24), fifth ventricle.
CSF_LABELS = (4, 5, 14, 15, 24, 43, 44, 72)
#: How the confounds of an HCP run are made (the output sidecar's ``ConfoundsSource``).
CONFOUNDS_SOURCE = (
    "computed by neurossm-app from the HCP run: trans_* and rot_* from Movement_Regressors.txt "
    "(columns 1-6; rotations converted from degrees to radians), framewise_displacement from them "
    "(Power et al. 2012, 50 mm radius), global_signal the mean within brainmask_fs.2, white_matter "
    f"and csf the means within wmparc.2 labels {list(WM_LABELS[:10])}+3000s/4000s and "
    f"{list(CSF_LABELS)}; no CompCor, no DVARS"
)
_RUN_FOLDER = re.compile(r"^[a-zA-Z]+fMRI_(?P<task>[A-Za-z0-9]+)_(?P<dir>LR|RL|AP|PA)$")
_TASK_AND_RUN = re.compile(r"^([A-Za-z0-9]*[A-Za-z])(\d+)$")
_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
#: Bumped whenever :func:`hcp_confounds` changes, so cached tables are made again.
_CONFOUNDS_VERSION = 1


def hcp_run_entities(subject: str, run_folder: str) -> dict[str, Any] | None:
    """BIDS entities of an HCP run folder, as XCP-D's ingression names them; ``None`` if not a run.

    ``rfMRI_REST1_LR`` -> ``{subject, task: rest, direction: LR, run: 1}``; a task without a
    trailing number (``tfMRI_MOTOR_RL``) is run 1.
    """
    match = _RUN_FOLDER.match(run_folder)
    if not match:
        return None
    task, run = match["task"], 1
    numbered = _TASK_AND_RUN.match(task)
    if numbered:
        task, run = numbered.group(1), int(numbered.group(2))
    return {"subject": subject, "task": task.lower(), "direction": match["dir"], "run": run}


def check_hcp_settings(strategy: str, std_dvars_threshold: float | None) -> None:
    """Refuse a strategy or censoring that needs columns HCP runs do not have (exit 64)."""
    if strategy not in HCP_STRATEGIES:
        raise UsageError(
            f"--confounds {strategy} needs CompCor components, which HCP's minimal preprocessing does "
            f"not write; with --input-type hcp choose one of {', '.join(HCP_STRATEGIES)}."
        )
    if std_dvars_threshold is not None:
        raise UsageError(
            "--dvars-thresh needs fMRIPrep's std_dvars, which HCP's minimal preprocessing does not write; "
            "with --input-type hcp censor with --fd-thresh (computed from Movement_Regressors.txt)."
        )


def find_hcp_dir(bids_dir: Path, derivatives: dict[str, Path]) -> Path:
    """``-d hcp=PATH`` if given, else BIDS_DIR (the folder holding ``<subject>/MNINonLinear``)."""
    return derivatives.get(HCP_LINK, bids_dir)


def _subjects(hcp_dir: Path) -> list[str]:
    return sorted(p.name for p in hcp_dir.iterdir() if (p / "MNINonLinear" / "Results").is_dir())


def collect_hcp_runs(
    hcp_dir: Path,
    participant_labels: list[str] | None = None,
    session_labels: list[str] | None = None,
    task_ids: list[str] | None = None,
    bids_filters: dict[str, dict[str, Any]] | None = None,
    space: str | None = None,
    link: str = HCP_LINK,
) -> tuple[list[BoldRun], dict[str, NeurossmError]]:
    """The HCP runs selected, volumetric (``MNI152NLin6Asym``) or, with ``space`` ``fsLR``, CIFTI.

    Returns
    -------
    runs : list of BoldRun
        Their ``confounds`` are ``None`` until :func:`add_hcp_confounds` computes them. A run that
        lacks a file (or a TR) is listed too, after the others, as a record of its name only.
    failures : dict
        Those runs' names -> the error (one line naming the files): the call leaves them out and
        processes the others, as the pre-flight does.
    """
    if space not in (None, HCP_SPACE, CIFTI_SPACE):
        raise UsageError(
            f"--space {space}: HCP's outputs are in {HCP_SPACE} (volumes) and {CIFTI_SPACE} (grayordinates); "
            f"pass --space {HCP_SPACE} or --space {CIFTI_SPACE}."
        )
    space = space or HCP_SPACE
    subjects = _subjects(hcp_dir) if hcp_dir.is_dir() else []
    if not subjects:
        raise InputMissingError(
            f"no HCP subjects in {hcp_dir} (no <subject>/MNINonLinear/Results folder); pass the folder "
            "the HCP download unpacked to, or -d hcp=PATH."
        )
    missing = [p for p in participant_labels or [] if p not in subjects]
    if missing:
        raise NoFilesSelectedError(
            f"participant label(s) {', '.join(missing)} not found in {hcp_dir} "
            f"(found: {', '.join(subjects[:10])})."
        )
    query: dict[str, Any] = dict((bids_filters or {}).get("bold", {}))
    if session_labels:
        query["session"] = session_labels  # HCP-YA has no sessions: selects nothing
    if task_ids:
        query["task"] = [t.lower() for t in task_ids]
    runs, failed, failures = [], [], {}
    for subject in participant_labels or subjects:
        for folder in sorted((hcp_dir / subject / "MNINonLinear" / "Results").iterdir()):
            entities = hcp_run_entities(subject, folder.name)
            if entities is None or not _matches(entities, query):
                continue
            try:
                runs.append(_hcp_run(hcp_dir, folder, entities, space, link))
            except (InputMissingError, DataError) as err:
                failed.append(BoldRun(folder / f"{folder.name}.nii.gz", None, None, 0.0, entities, space))
                failures[failed[-1].name] = err
    runs += failed  # the first run is a complete one (the atlas is checked against it)
    if not runs:
        shown = ", ".join(f"{k}={v}" for k, v in query.items()) or "no filters"
        raise NoFilesSelectedError(
            f"no HCP runs (<subject>/MNINonLinear/Results/[rt]fMRI_<TASK>_<LR|RL>) in {hcp_dir} "
            f"matched ({shown}); check the labels and filters."
        )
    return runs, failures


def _first(*candidates: Path) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def hcp_files(folder: Path) -> dict[str, Path | None]:
    """The files of the HCP run in ``folder`` that every run needs (``None`` where absent):
    ``volume`` (the BOLD NIfTI), ``mask``, ``wmparc`` (beside it, else in ``MNINonLinear/ROIs``,
    where HCP's PostFreeSurfer writes it, else in ``MNINonLinear``) and ``movement``."""
    return {
        "volume": _first(folder / f"{folder.name}.nii.gz"),
        "mask": _first(folder / "brainmask_fs.2.nii.gz", folder / "brainmask_fs.2.0.nii.gz"),
        "wmparc": _first(
            folder / "wmparc.2.nii.gz",
            folder.parents[1] / "ROIs" / "wmparc.2.nii.gz",
            folder.parents[1] / "wmparc.2.nii.gz",
        ),
        "movement": _first(folder / "Movement_Regressors.txt"),
    }


_SHOWN = {"volume": "<run>.nii.gz", "mask": "brainmask_fs.2.nii.gz", "wmparc": "wmparc.2.nii.gz",
          "movement": "Movement_Regressors.txt"}  # fmt: skip


def _hcp_run(hcp_dir: Path, folder: Path, entities: dict[str, Any], space: str, link: str) -> BoldRun:
    """One HCP run's files; a missing one is an error naming it."""
    name = folder.name
    files = hcp_files(folder)
    volume, mask, wmparc, movement = files["volume"], files["mask"], files["wmparc"], files["movement"]
    needed = {_SHOWN[k].replace("<run>", name): v for k, v in files.items()}
    cifti = None
    if space == CIFTI_SPACE:
        cifti = _first(folder / f"{name}_Atlas_MSMAll.dtseries.nii", folder / f"{name}_Atlas.dtseries.nii")
        needed[f"{name}_Atlas_MSMAll.dtseries.nii (or {name}_Atlas.dtseries.nii)"] = cifti
    absent = [k for k, v in needed.items() if v is None]
    if absent:
        raise InputMissingError(
            f"HCP run {folder} lacks {', '.join(absent)}; re-download or unpack the subject's "
            "MNINonLinear folder (fMRI preprocessed packages)."
        )
    bold = cifti or volume
    tr, tr_source = repetition_time(bold)
    inputs = [bold, mask, movement, wmparc] + ([volume] if cifti else [])
    metadata = {"InputType": "hcp", "RepetitionTimeSource": tr_source, "ConfoundsSource": CONFOUNDS_SOURCE,
                "HCPRun": name}  # fmt: skip
    if cifti:
        metadata["SurfaceRegistration"] = "MSMAll" if "_MSMAll" in cifti.name else "MSMSulc"
    return BoldRun(
        bold=bold,
        mask=None if cifti else mask,
        confounds=None,
        repetition_time=tr,
        entities=entities,
        space=space,
        sources=tuple(bids_uri(p, hcp_dir, link) for p in inputs),
        metadata=metadata,
    )


def repetition_time(bold: Path) -> tuple[float, str]:
    """The TR of a run and where it was read: a JSON sidecar beside it when there is one, else the
    NIfTI header's ``pixdim[4]`` (in its time unit) or the dtseries's series step."""
    sidecar = bold.with_name(bold.name.replace(".nii.gz", ".json").replace(".nii", ".json"))
    if sidecar.is_file():
        try:
            tr = json.loads(sidecar.read_text()).get("RepetitionTime")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise DataError(f"cannot read the JSON sidecar {sidecar}; it must be a JSON object.") from None
        if tr is not None:
            return float(tr), f"JSON sidecar {sidecar.name}"
    if bold.name.endswith(".dtseries.nii"):
        from neurossm_app.cifti import series_step

        return series_step(bold), "CIFTI series axis (SeriesStep), no JSON sidecar"
    try:
        header = nib.load(os.fspath(bold)).header
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for a broken file
        raise DataError(
            f"cannot read {bold} ({type(err).__name__}); the file is damaged, re-copy it."
        ) from None
    zooms = header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        raise DataError(f"{bold} has no repetition time in its header (pixdim[4]) and no JSON sidecar.")
    unit = header.get_xyzt_units()[1]
    scale = {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
    # pixdim is float32 (0.72 reads 0.72000003): kept to the microsecond
    return round(float(zooms[3]) * scale, 6), "NIfTI header (pixdim[4]), no JSON sidecar"


def movement_regressors(path: Path) -> pd.DataFrame:
    """``trans_*`` (mm) and ``rot_*`` (radians) from HCP's Movement_Regressors.txt (degrees there)."""
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, dtype=float)
    except (OSError, ValueError, pd.errors.ParserError):
        raise DataError(f"cannot read {path}; it must hold HCP's whitespace-separated numbers.") from None
    if table.shape[1] < 6:
        raise DataError(f"{path} has {table.shape[1]} columns; HCP's Movement_Regressors.txt has 12.")
    motion = table.iloc[:, :6].set_axis(list(_MOTION), axis=1)
    motion[["rot_x", "rot_y", "rot_z"]] = np.deg2rad(motion[["rot_x", "rot_y", "rot_z"]])
    return motion


def framewise_displacement(motion: pd.DataFrame, radius: float = 50.0) -> np.ndarray:
    """Power's FD of (T, 6) ``trans_*`` (mm) and ``rot_*`` (radians); NaN at the first volume."""
    steps = np.abs(np.diff(motion[list(_MOTION)].to_numpy(float), axis=0))
    return np.concatenate([[np.nan], steps[:, :3].sum(1) + radius * steps[:, 3:].sum(1)])


def tissue_signals(bold: Path, mask: Path, wmparc: Path, n_threads: int = 1) -> pd.DataFrame:
    """``global_signal``, ``white_matter`` and ``csf``: mean BOLD within the brain mask, wmparc's WM
    and CSF labels (:data:`WM_LABELS`, :data:`CSF_LABELS`), in one pass over the volumetric BOLD."""
    from neurossm_app.participant.parcellate import parcel_means
    from neurossm_app.participant.preflight import check_mask_grid

    image = nib.load(os.fspath(bold))
    inside = np.asarray(nib.load(os.fspath(mask)).dataobj) > 0
    parc = nib.load(os.fspath(wmparc))
    check_mask_grid(nib.load(os.fspath(mask)), image, mask, bold)
    check_mask_grid(parc, image, wmparc, bold)
    labels = np.rint(np.asarray(parc.dataobj)).astype(np.int64)
    wm, csf = np.isin(labels, WM_LABELS), np.isin(labels, CSF_LABELS)
    # disjoint classes (WM, CSF, other) x (inside, outside the mask): one streamed pass
    classes = np.select([wm & inside, csf & inside, inside, wm, csf], [1, 2, 3, 4, 5], 0)
    means, _ = parcel_means(bold, classes, np.ones(classes.shape, bool), np.arange(1, 6), n_threads=n_threads)
    counts = np.bincount(classes.ravel(), minlength=6)[1:].astype(float)  # (5,)
    for name, members in (("brain mask", (0, 1, 2)), ("wmparc WM", (0, 3)), ("wmparc CSF", (1, 4))):
        if counts[list(members)].sum() == 0:
            raise DataError(f"{wmparc if 'wmparc' in name else mask}: no {name} voxels; is it HCP's file?")

    def mean_of(members: tuple[int, ...]) -> np.ndarray:
        members = [m for m in members if counts[m] > 0]
        return (means[:, members] * counts[members]).sum(1) / counts[members].sum()

    return pd.DataFrame(
        {"global_signal": mean_of((0, 1, 2)), "white_matter": mean_of((0, 3)), "csf": mean_of((1, 4))}
    )


def hcp_confounds(run: BoldRun, with_signals: bool, n_threads: int = 1) -> pd.DataFrame:
    """An fMRIPrep-style confounds table (T, C) of one HCP run (:data:`CONFOUNDS_SOURCE`).

    ``with_signals`` adds ``global_signal``, ``white_matter`` and ``csf`` (a pass over the
    volumetric BOLD); ``std_dvars`` is n/a (HCP has none; nilearn's scrubbing reads the column).
    """
    files = hcp_files(run.bold.parent)
    table = movement_regressors(files["movement"])
    table["framewise_displacement"] = framewise_displacement(table)
    table["std_dvars"] = np.nan
    if with_signals:
        signals = tissue_signals(files["volume"], files["mask"], files["wmparc"], n_threads)
        if len(signals) != len(table):
            raise DataError(
                f"{files['movement']} has {len(table)} rows but {files['volume']} has {len(signals)} "
                "volumes; both must come from the same HCP run."
            )
        table = pd.concat([table, signals], axis=1)
    return table


def _fingerprint(run: BoldRun, with_signals: bool) -> str:
    from neurossm_app.participant.extract import input_fingerprint

    files = hcp_files(run.bold.parent)
    parts = [str(_CONFOUNDS_VERSION), str(with_signals)]
    parts += [f"{k}={v.resolve()}:{input_fingerprint(v)}" for k, v in sorted(files.items()) if v]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _confounds_file(run: BoldRun, folder: Path, with_signals: bool, n_threads: int) -> Path:
    """The run's confounds TSV in ``folder``, computed unless an identical one is there."""
    from neurossm_app.bids import run_label
    from neurossm_app.files import write_tsv

    key = _fingerprint(run, with_signals)
    path = folder / f"sub-{run.entities['subject']}" / f"{run_label(run.entities)}_desc-{key}_timeseries.tsv"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tsv(path, hcp_confounds(run, with_signals, n_threads))
    return path


def add_hcp_confounds(
    runs: list[BoldRun],
    folder: Path,
    strategy: str,
    n_workers: int = 1,
    failures: dict[str, NeurossmError] | None = None,
) -> tuple[list[BoldRun], dict[str, NeurossmError]]:
    """Compute (or reuse, from ``folder``) each run's confounds table; ``runs`` with it set, and
    the runs whose table could not be made (run name -> error), which the call leaves out, with
    ``failures`` (runs :func:`collect_hcp_runs` could not complete: not tried again).

    The WM, CSF and global signals are computed only for strategies that use them.
    """
    failures = dict(failures or {})
    from neurossm_app.participant.clean import CONFOUND_STRATEGIES

    kwargs = CONFOUND_STRATEGIES.get(strategy) or {"strategy": ()}
    with_signals = bool({"wm_csf", "global_signal"} & set(kwargs["strategy"]))

    def one(run: BoldRun) -> BoldRun | NeurossmError:
        if run.name in failures:
            return failures[run.name]
        try:
            return replace(run, confounds=_confounds_file(run, folder, with_signals, 1))
        except NeurossmError as err:
            return err

    with ThreadPoolExecutor(max_workers=max(1, n_workers)) as pool:
        results = list(pool.map(one, runs))
    failures.update(
        (run.name, r) for run, r in zip(runs, results, strict=True) if isinstance(r, NeurossmError)
    )
    done = [r if isinstance(r, BoldRun) else run for run, r in zip(runs, results, strict=True)]
    return done, failures
