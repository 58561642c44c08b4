"""The run folder ``OUTPUT_DIR/group/<run-name>/``: its creation, a log file per call, ``config.json``.

The log file is :func:`neurossm_app.logfiles.log_to_file`'s, shared with the participant level.

``config.json`` holds the resolved settings (checked on every later call of the run), software
versions, training details, the dataset summary and how the inputs were made (``inputs``).
Everything is checked before anything is created (:func:`run_directory_path`, :func:`check_config`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from neurossm_app.atlases import atlas_label
from neurossm_app.errors import DataError, OutputError, UsageError
from neurossm_app.files import write_json
from neurossm_app.group.data import NORMALIZATION
from neurossm_app.group.presets import GroupSettings
from neurossm_app.logfiles import held_log_records, log_to_file  # noqa: F401 - re-exported for group/
from neurossm_app.provenance import GROUP_PACKAGES, software_versions

TRAINING_DETAILS = {
    "optimizer": "AdamW",
    "schedule": "OneCycleLR (peak lr, default pct_start 0.3, cosine annealing)",
    "grad_clip_norm": 1.0,
    "loss": "cross-entropy with inverse class-frequency weights",
    "training_samples": "one random window of dynamic_length volumes per training scan and epoch",
    "evaluation": "full-length held-out scans, padded per batch and masked with lengths",
    "mixed_precision": "CUDA only: bf16 where supported, else fp16 with a gradient scaler",
    "baseline_fc_logreg": "Pearson correlations (upper triangle, Fisher z) + StandardScaler + "
    "LogisticRegression(C=1, lbfgs)",
}


def run_directory_path(output_dir: Path, run_name: str) -> Path:
    """``OUTPUT_DIR/group/<run-name>``, checked without creating anything.

    Raises
    ------
    UsageError
        A name that would leave ``OUTPUT_DIR/group``.
    OutputError
        The folder exists and is not a writable folder, or cannot be created (nearest existing
        parent not a writable folder).
    """
    base = (output_dir / "group").resolve()
    run_dir = (base / run_name).resolve()
    if run_dir.parent != base:
        raise UsageError(f"--run-name {run_name!r} must name a folder directly under {base}.")
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(
            f"cannot create {run_dir}: {existing} is a file; move it or choose another OUTPUT_DIR."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == run_dir else f"cannot be created ({existing} is read-only)"
        raise OutputError(f"{run_dir} {what}; choose another OUTPUT_DIR.")
    return run_dir


def run_directory(output_dir: Path, run_name: str) -> Path:
    """Create ``OUTPUT_DIR/group/<run-name>`` (:func:`run_directory_path`) and return it."""
    run_dir = run_directory_path(output_dir, run_name)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {run_dir}: {err.strerror}; check OUTPUT_DIR permissions.") from None
    if not os.access(run_dir, os.W_OK):
        raise OutputError(f"{run_dir} is not writable; choose another OUTPUT_DIR.")
    return run_dir


def check_config(run_dir: Path, settings: GroupSettings) -> bool:
    """Check a saved ``config.json`` against ``settings`` (read only); ``False`` when none is saved.

    Only ``settings`` are compared, so records added beside them (``inputs``) never stop an older
    run from resuming.

    Raises
    ------
    UsageError
        The run was started with other settings.
    DataError
        ``config.json`` is unreadable.
    """
    path = run_dir / "config.json"
    if not path.is_file():
        return False
    wanted = settings.result_fields()
    try:
        saved = json.loads(path.read_text())["settings"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{path} is unreadable; choose a new --run-name or delete {run_dir}.") from None
    changed = [k for k in wanted if saved.get(k) != wanted[k]]
    if changed:
        shown = ", ".join(f"{k} {saved.get(k)!r} -> {wanted[k]!r}" for k in changed[:4])
        raise UsageError(
            f"run {settings.run_name!r} in {run_dir} was started with other settings ({shown}); "
            "repeat the original options, or choose a new --run-name."
        )
    return True


def save_config(
    run_dir: Path, settings: GroupSettings, dataset_summary: dict[str, Any], inputs: dict[str, Any]
) -> None:
    """Write ``config.json`` at the first call of a run (kept as it is by later calls).

    Parameters
    ----------
    dataset_summary : dict
        :meth:`~neurossm_app.group.data.GroupDataset.summary`.
    inputs : dict
        :func:`~neurossm_app.group.inputs.input_record`: how the inputs were made, the fMRIPrep
        version. The same in every call of a run (array tasks may write identical copies).
    """
    if (run_dir / "config.json").is_file():
        return
    write_json(
        run_dir / "config.json",
        {
            "settings": settings.result_fields(),
            "runtime": {"device": settings.device, "omp_nthreads": settings.omp_nthreads},
            "atlas_label": atlas_label(settings.atlas),
            "normalization": NORMALIZATION,
            "training": TRAINING_DETAILS,
            "dataset": dataset_summary,
            "inputs": inputs,
            "software": software_versions(GROUP_PACKAGES),
        },
    )
