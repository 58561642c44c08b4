"""The run folder ``OUTPUT_DIR/group/<run-name>/``: its creation, a log file per call, ``config.json``.

``config.json`` holds the resolved settings (checked on every later call of the run), software
versions, training details, the dataset summary and how the inputs were made (``inputs``).
Everything is checked before anything is created (:func:`run_directory_path`, :func:`check_config`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neurossm_app.atlases import atlas_label
from neurossm_app.errors import DataError, OutputError, UsageError
from neurossm_app.files import write_json
from neurossm_app.group.data import NORMALIZATION
from neurossm_app.group.presets import GroupSettings
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


class _HeldRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def held_log_records():
    """Hold the ``neurossm_app`` log records of the checks made before the run folder exists, so
    :func:`log_to_file` can put them (the dataset's warnings) at the top of the call's log."""
    handler = _HeldRecords()
    logger = logging.getLogger("neurossm_app")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@contextmanager
def log_to_file(run_dir: Path, tag: str, earlier: list[logging.LogRecord] | tuple = ()):
    """Copy the ``neurossm_app`` log of this call to ``RUN_DIR/logs/<time>_<tag>_<pid>.log``,
    starting with the ``earlier`` records (:func:`held_log_records`)."""
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    path = logs / f"{time.strftime('%Y%m%dT%H%M%S')}_{tag}_{os.getpid()}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.DEBUG)
    for record in earlier:
        handler.handle(record)
    logger = logging.getLogger("neurossm_app")
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()


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
