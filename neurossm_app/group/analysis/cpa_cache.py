"""Subject-level CPA of every held-out scan, cached in ``RUN_DIR/cpa/seed-S/<scan>_cpa.npz``.

A scan's fold is the unit whose test set it was in. A file made by the same checkpoint (its
SHA-256 is saved in the file) is reused; any other is recomputed, so retraining a unit never
leaves stale attributions behind.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurossm_app.errors import DataError
from neurossm_app.group.cpa import compute_cpa, load_cpa, save_cpa
from neurossm_app.group.data import NORMALIZATION, GroupDataset
from neurossm_app.group.presets import GroupSettings
from neurossm_app.group.splits import unit_split
from neurossm_app.group.train import deterministic_algorithms
from neurossm_app.group.units import read_marker

LOGGER = logging.getLogger("neurossm_app")


def cpa_path(run_dir: Path, seed: int, scan_name: str) -> Path:
    """``RUN_DIR/cpa/seed-S/<scan>_cpa.npz``."""
    return run_dir / "cpa" / f"seed-{seed}" / f"{scan_name}_cpa.npz"


def held_out_cpa(
    run_dir: Path, settings: GroupSettings, dataset: GroupDataset, splits: pd.DataFrame, device: torch.device
) -> tuple[list[dict[str, Any]], list[str]]:
    """CPA of the held-out scans of every complete unit of the run.

    Returns
    -------
    records : list of dict
        One per scan and seed (see :func:`unit_cpa`).
    incomplete : list of str
        ``fold-K_seed-S`` of the units skipped for want of a completion marker.

    Raises
    ------
    DataError
        No unit is complete, or a checkpoint does not match the data.
    """
    names = [s.name for s in dataset.scans]
    records: list[dict[str, Any]] = []
    incomplete = []
    for fold, seed in settings.units:
        marker = read_marker(run_dir, fold, seed)
        if marker is None:
            incomplete.append(f"fold-{fold}_seed-{seed}")
            continue
        _, test = unit_split(splits, names, fold, seed)
        LOGGER.info("CPA of the %d held-out scan(s) of fold-%d seed-%d", len(test), fold, seed)
        records += unit_cpa(run_dir, dataset, test, fold, seed, marker, device)
    if incomplete:
        LOGGER.warning("CPA skips incomplete unit(s): %s", ", ".join(incomplete))
    if not records:
        raise DataError(f"no complete unit in {run_dir}: run the group level (training) before --analysis.")
    return records, incomplete


def unit_cpa(
    run_dir: Path,
    dataset: GroupDataset,
    test: np.ndarray,
    fold: int,
    seed: int,
    marker: dict[str, Any],
    device: torch.device,
) -> list[dict[str, Any]]:
    """CPA of the held-out scans of one complete unit (reusing files of the same checkpoint).

    Returns
    -------
    list of dict
        Per scan: ``scan``, ``subject``, ``seed``, ``fold``, ``true``, ``predicted`` (class
        indices), ``weighted_maps`` (P, R), ``weights`` (P,), ``pathway_names``.
    """
    checkpoint = run_dir / marker["checkpoint"]
    sha = str(marker.get("checkpoint_sha256", ""))
    records, model = [], None
    for index in test:
        scan = dataset.scans[index]
        path = cpa_path(run_dir, seed, scan.name)
        arrays = load_cpa(path) if path.is_file() else None
        if arrays is None or str(arrays["checkpoint_sha256"]) != sha:
            if model is None:
                model = load_checked_model(checkpoint, dataset, device)
            arrays = compute_and_save(model, dataset, index, fold, seed, sha, path, device)
        records.append(cpa_record(arrays, dataset, index, fold, seed))
    return records


def compute_and_save(
    model: torch.nn.Module,
    dataset: GroupDataset,
    index: int,
    fold: int,
    seed: int,
    sha: str,
    path: Path,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """CPA of scan ``index`` for its true class, saved to ``path`` and read back."""
    scan = dataset.scans[index]
    target = int(dataset.labels[index])
    with deterministic_algorithms():
        result = compute_cpa(model, dataset.series[index], target, device)
    save_cpa(
        path, result,
        scan=scan.name, subject=scan.subject, fold=fold, seed=seed,
        true_label=dataset.classes[target], predicted_label=dataset.classes[result.predicted],
        target_class=target, classes=np.array(dataset.classes, dtype=str),
        roi_names=np.array(dataset.roi_names, dtype=str), checkpoint_sha256=sha,
    )  # fmt: skip
    return load_cpa(path)


def cpa_record(
    arrays: dict[str, np.ndarray], dataset: GroupDataset, index: int, fold: int, seed: int
) -> dict[str, Any]:
    """The fields of a ``_cpa.npz`` that the class means use, labels as class indices."""
    scan = dataset.scans[index]
    classes = list(dataset.classes)
    return {
        "scan": scan.name,
        "subject": scan.subject,
        "seed": seed,
        "fold": fold,
        "true": classes.index(str(arrays["true_label"])),
        "predicted": classes.index(str(arrays["predicted_label"])),
        "weighted_maps": arrays["weighted_maps"],
        "weights": arrays["weights"],
        "pathway_names": tuple(str(n) for n in arrays["pathway_names"]),
    }


def load_checked_model(checkpoint: Path, dataset: GroupDataset, device: torch.device) -> torch.nn.Module:
    """The unit's NeuroSSM on ``device``, after checking it was trained on this data.

    Raises
    ------
    DataError
        Other classes or ROIs, or another input normalization.
    """
    from neurossm_app.group.checkpoints import load_neurossm

    model, info = load_neurossm(checkpoint)
    if (
        tuple(info.get("classes", ())) != dataset.classes
        or tuple(info.get("roi_names", ())) != dataset.roi_names
    ):
        raise DataError(
            f"checkpoint {checkpoint} was trained on other classes or ROIs than the data selected now; "
            "repeat the run's original selection, or choose a new --run-name."
        )
    if info.get("normalization") != NORMALIZATION:
        raise DataError(
            f"checkpoint {checkpoint} expects another input normalization ({info.get('normalization')!r}); "
            "re-run the group level with this version of neurossm-app."
        )
    return model.to(device)
