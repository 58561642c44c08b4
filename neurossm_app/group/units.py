"""One unit of work: train and test every model on one fold of one seed.

A unit writes into ``RUN_DIR/units/fold-K_seed-S/`` (``metrics.tsv``, ``predictions.tsv``,
``history.tsv``) and ``RUN_DIR/checkpoints/``, each file atomically, and writes its completion
marker ``unit.json`` last. Aggregation reads only units with a marker, so an interrupted unit is
simply run again and two units running at once never see each other's half-written files.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurossm_app.files import write_json, write_tsv
from neurossm_app.group.baseline import BASELINES
from neurossm_app.group.checkpoints import checkpoint_path, save_checkpoint
from neurossm_app.group.data import NORMALIZATION, GroupDataset
from neurossm_app.group.evaluate import METRICS, classification_metrics, predict_proba
from neurossm_app.group.presets import GroupSettings
from neurossm_app.group.selection import train_selected
from neurossm_app.group.series_cache import take
from neurossm_app.group.train import deterministic_algorithms, unit_seed
from neurossm_app.model.backends import backend_summary
from neurossm_app.provenance import GROUP_PACKAGES, software_versions

LOGGER = logging.getLogger("neurossm_app")

MARKER = "unit.json"
ENTITY_COLUMNS = ("subject", "session", "task", "acquisition", "run")
METRIC_COLUMNS = ("model", "fold", "seed", "n_train_scans", "n_test_scans", "n_test_subjects", *METRICS)


def unit_dir(run_dir: Path, fold: int, seed: int) -> Path:
    """``RUN_DIR/units/fold-K_seed-S``."""
    return run_dir / "units" / f"fold-{fold}_seed-{seed}"


def read_marker(run_dir: Path, fold: int, seed: int) -> dict[str, Any] | None:
    """The completion marker of a unit, or ``None`` if the unit is not complete."""
    marker = unit_dir(run_dir, fold, seed) / MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # unreadable: treat as incomplete, the unit is redone


def predictions_frame(
    dataset: GroupDataset, test: np.ndarray, proba: np.ndarray, model: str, fold: int, seed: int
) -> pd.DataFrame:
    """One row per held-out scan: identity, fold, seed, model, labels and ``prob_<class>``.

    Parameters
    ----------
    dataset : GroupDataset
    test : numpy.ndarray, (N_test,) int
        Indices of the held-out scans in ``dataset``.
    proba : numpy.ndarray, (N_test, C)
    model, fold, seed
        Identify the unit.
    """
    rows: dict[str, Any] = {"scan": [dataset.scans[i].name for i in test]}
    for entity in ENTITY_COLUMNS:
        rows[entity] = [dataset.scans[i].entities.get(entity) for i in test]
    rows["fold"] = fold
    rows["seed"] = seed
    rows["model"] = model
    rows["true_label"] = [dataset.classes[dataset.labels[i]] for i in test]
    rows["predicted_label"] = [dataset.classes[k] for k in proba.argmax(axis=1)]
    for k, name in enumerate(dataset.classes):
        rows[f"prob_{name}"] = np.round(proba[:, k], 6)
    return pd.DataFrame(rows)


def run_unit(
    dataset: GroupDataset,
    train: np.ndarray,
    test: np.ndarray,
    fold: int,
    seed: int,
    settings: GroupSettings,
    run_dir: Path,
    device: torch.device,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """Train NeuroSSM (and the baselines) on ``train``, test on ``test``, write the unit's files.

    Parameters
    ----------
    dataset : GroupDataset
    train, test : numpy.ndarray of int
        Scan indices of this fold.
    fold, seed : int
    settings : GroupSettings
    run_dir : Path
        ``OUTPUT_DIR/group/<run-name>``.
    device : torch.device
    groups : list of str, length N, optional
        Fold group of every scan (``splits.tsv``'s ``group``; default: its subject): the inner
        validation split of :mod:`.selection` keeps groups whole.

    Returns
    -------
    dict
        The completion marker written (``unit.json``), with the kept epoch and settings under
        ``selection``.
    """
    started = time.time()
    name = f"fold-{fold} seed-{seed}"
    counts = {
        "fold": fold,
        "seed": seed,
        "n_train_scans": len(train),
        "n_test_scans": len(test),
        "n_test_subjects": len({dataset.scans[i].subject for i in test}),
    }
    LOGGER.info(
        "unit %s: %d training scan(s), %d test scan(s) of %d subject(s)",
        name, len(train), len(test), counts["n_test_subjects"],
    )  # fmt: skip
    groups = dataset.subjects if groups is None else groups
    selected = train_selected(dataset, train, test, groups, settings, unit_seed(seed, fold), device, name)
    model, model_config, history = selected.model, selected.model_config, selected.history
    with deterministic_algorithms():
        proba = predict_proba(model, take(dataset.series, test), device, settings.batch_size)
    probabilities = {"neurossm": proba}
    trained_s = time.time() - started
    probabilities |= baseline_probabilities(dataset, train, test, settings.baselines, seed)
    checkpoint, info = save_unit_checkpoint(run_dir, model, model_config, dataset, settings, fold, seed)
    metrics = write_unit_tables(unit_dir(run_dir, fold, seed), dataset, test, probabilities, history, counts)
    marker = {
        "fold": fold,
        "seed": seed,
        "complete": True,
        "checkpoint": str(checkpoint.relative_to(run_dir)),
        "checkpoint_sha256": info["sha256"],
        "selection": selected.choice,
        **unit_provenance(device, settings, trained_s, started),
    }
    write_json(unit_dir(run_dir, fold, seed) / MARKER, marker)  # last: marks the unit complete
    summary = ", ".join(f"{m['model']} accuracy {m['accuracy']:.3f}" for m in metrics)
    LOGGER.info("unit %s done in %.0f s: %s", name, marker["total_seconds"], summary)
    return marker


def unit_provenance(
    device: torch.device, settings: GroupSettings, neurossm_seconds: float, started: float
) -> dict[str, Any]:
    """Where, on which scan back end and how long a unit ran, and with which software (part of
    ``unit.json``)."""
    return {
        "device": str(device),
        **backend_summary(device, d_state=settings.d_state, d_conv=settings.d_conv),
        "torch_threads": torch.get_num_threads(),
        "neurossm_seconds": round(neurossm_seconds, 2),
        "total_seconds": round(time.time() - started, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "software": software_versions(GROUP_PACKAGES),
    }


def baseline_probabilities(
    dataset: GroupDataset, train: np.ndarray, test: np.ndarray, baselines: tuple[str, ...], seed: int
) -> dict[str, np.ndarray]:
    """Each baseline of :data:`~neurossm_app.group.baseline.BASELINES` fitted on ``train``.

    Returns
    -------
    dict
        Baseline name -> test-scan probabilities, (N_test, C).
    """
    train_series, test_series = take(dataset.series, train), take(dataset.series, test)
    return {
        name: BASELINES[name](train_series, dataset.labels[train], test_series, len(dataset.classes), seed)
        for name in baselines
    }


def save_unit_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    model_config: dict[str, Any],
    dataset: GroupDataset,
    settings: GroupSettings,
    fold: int,
    seed: int,
) -> tuple[Path, dict[str, Any]]:
    """``RUN_DIR/checkpoints/model-neurossm_fold-K_seed-S``: weights and what they were trained on."""
    checkpoint = checkpoint_path(run_dir, fold, seed)
    description = {
        "model": "neurossm",
        "config": model_config,
        "classes": list(dataset.classes),
        "target": settings.target,
        "atlas": dataset.atlas_label,
        "roi_names": list(dataset.roi_names),
        "normalization": NORMALIZATION,
        "dynamic_length": settings.dynamic_length,
        "fold": fold,
        "seed": seed,
        "run_name": settings.run_name,
    }
    return checkpoint, save_checkpoint(checkpoint, model.cpu(), description)


def write_unit_tables(
    folder: Path,
    dataset: GroupDataset,
    test: np.ndarray,
    probabilities: dict[str, np.ndarray],
    history: pd.DataFrame,
    counts: dict[str, int],
) -> list[dict[str, Any]]:
    """``history.tsv``, ``metrics.tsv`` and ``predictions.tsv`` of a unit; returns the metric rows."""
    fold, seed = counts["fold"], counts["seed"]
    test_labels = dataset.labels[test]
    metrics = [
        {"model": model, **counts, **classification_metrics(test_labels, proba)}
        for model, proba in probabilities.items()
    ]
    predictions = [
        predictions_frame(dataset, test, proba, model, fold, seed) for model, proba in probabilities.items()
    ]
    folder.mkdir(parents=True, exist_ok=True)
    write_tsv(folder / "history.tsv", history)
    write_tsv(folder / "metrics.tsv", pd.DataFrame(metrics, columns=list(METRIC_COLUMNS)))
    write_tsv(folder / "predictions.tsv", pd.concat(predictions, ignore_index=True))
    return metrics
