"""The run folder ``OUTPUT_DIR/group/<run-name>/``: its creation, a log file per call, ``config.json``.

``config.json`` holds the resolved settings (checked on every later call of the run), software
versions, training details and the dataset summary.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neurossm_app.atlases import ATLASES
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


def run_directory(output_dir: Path, run_name: str) -> Path:
    """``OUTPUT_DIR/group/<run-name>``, refusing names that would leave ``OUTPUT_DIR/group``."""
    base = (output_dir / "group").resolve()
    run_dir = (base / run_name).resolve()
    if run_dir.parent != base:
        raise UsageError(f"--run-name {run_name!r} must name a folder directly under {base}.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {run_dir}: {err.strerror}; check OUTPUT_DIR permissions.") from None
    if not os.access(run_dir, os.W_OK):
        raise OutputError(f"{run_dir} is not writable; choose another OUTPUT_DIR.")
    return run_dir


@contextmanager
def log_to_file(run_dir: Path, tag: str):
    """Copy the ``neurossm_app`` log of this call to ``RUN_DIR/logs/<time>_<tag>_<pid>.log``."""
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    path = logs / f"{time.strftime('%Y%m%dT%H%M%S')}_{tag}_{os.getpid()}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("neurossm_app")
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()


def check_or_save_config(run_dir: Path, settings: GroupSettings, dataset_summary: dict[str, Any]) -> None:
    """Write ``config.json`` at the first call; later calls must use the same settings.

    Raises
    ------
    UsageError
        The run was started with other settings.
    """
    path = run_dir / "config.json"
    wanted = settings.result_fields()
    if path.is_file():
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
        return
    write_json(
        path,
        {
            "settings": wanted,
            "runtime": {"device": settings.device, "omp_nthreads": settings.omp_nthreads},
            "atlas_label": ATLASES[settings.atlas].bids_label,
            "normalization": NORMALIZATION,
            "training": TRAINING_DETAILS,
            "dataset": dataset_summary,
            "software": software_versions(GROUP_PACKAGES),
        },
    )
