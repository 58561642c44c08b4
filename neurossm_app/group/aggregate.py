"""Gathering the complete units of a run into ``metrics.tsv``, ``predictions.tsv`` and ``summary.json``.

Only units with a completion marker are read, and each one's checkpoint is checked against the
hash in its marker first, so a damaged file stops the aggregation with a clear message instead of
being reported as a result.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurossm_app.errors import DataError
from neurossm_app.files import write_json, write_tsv
from neurossm_app.group.checkpoints import read_checkpoint_info
from neurossm_app.group.evaluate import METRICS
from neurossm_app.group.learning import overfitting_check
from neurossm_app.group.presets import GroupSettings
from neurossm_app.group.subjects import write_subject_level
from neurossm_app.group.units import read_marker, unit_dir

LOGGER = logging.getLogger("neurossm_app")


def _read_unit_table(path: Path) -> pd.DataFrame:
    """A unit's TSV as strings, so labels such as ``01`` keep their exact spelling."""
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(
            f"{path} is unreadable ({type(err).__name__}); delete {path.parent} and re-run to redo that unit."
        ) from None


def _mean_sd(values: pd.Series) -> dict[str, float | int | None]:
    finite = values[np.isfinite(values)]
    n = len(finite)
    return {
        "mean": float(finite.mean()) if n else None,
        "sd": float(finite.std(ddof=1)) if n > 1 else None,
        "n": n,
    }


def aggregate_units(
    run_dir: Path,
    settings: GroupSettings,
    dataset_summary: dict[str, Any],
    repetition_times: dict[str, float | None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the run-level tables from every complete unit and return the summary.

    Parameters
    ----------
    run_dir : Path
        ``OUTPUT_DIR/group/<run-name>``.
    settings : GroupSettings
        Defines which units the run has.
    dataset_summary : dict
        :meth:`neurossm_app.group.data.GroupDataset.summary`.
    repetition_times : dict, optional
        Scan name -> seconds per volume, the last column of ``predictions.tsv``
        (``repetition_time``; ``n/a`` when unknown).
    extra : dict, optional
        More entries of ``summary.json`` (how the inputs were made, the call's provenance).

    Returns
    -------
    dict
        The content of ``summary.json``.

    Raises
    ------
    DataError
        A complete unit's checkpoint or tables are damaged.
    """
    metrics, predictions, markers, missing = read_complete_units(run_dir, settings)
    model_order = ["neurossm", *settings.baselines]
    models: dict[str, Any] = {}
    if metrics:
        table = _ordered(pd.concat(metrics, ignore_index=True), model_order)
        write_tsv(run_dir / "metrics.tsv", table)
        pooled = _ordered(pd.concat(predictions, ignore_index=True), model_order)
        if repetition_times is not None:
            pooled["repetition_time"] = [_tr_text(repetition_times.get(scan)) for scan in pooled["scan"]]
        write_tsv(run_dir / "predictions.tsv", pooled)
        for model, rows in table.groupby("model", sort=False):
            models[model] = {m: _mean_sd(pd.to_numeric(rows[m], errors="coerce")) for m in METRICS}
    summary = run_summary(settings, dataset_summary, models, markers, missing)
    if metrics:
        done = [(int(m["fold"]), int(m["seed"])) for m in markers]
        summary["overfitting"] = overfitting_check(run_dir, done, table)
        summary["subject_level"] = write_subject_level(run_dir, pooled, list(dataset_summary["classes"]))
    summary |= extra or {}
    write_json(run_dir / "summary.json", _json_safe(summary))
    return summary


def _tr_text(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:g}"


def read_complete_units(
    run_dir: Path, settings: GroupSettings
) -> tuple[list[pd.DataFrame], list[pd.DataFrame], list[dict[str, Any]], list[str]]:
    """The metrics and predictions tables and markers of every complete unit, checkpoints checked.

    Returns
    -------
    metrics, predictions : list of pandas.DataFrame
    markers : list of dict
    missing : list of str
        Folder names of the units without a completion marker.
    """
    metrics, predictions, markers, missing = [], [], [], []
    for fold, seed in settings.units:
        marker = read_marker(run_dir, fold, seed)
        folder = unit_dir(run_dir, fold, seed)
        if marker is None:
            missing.append(folder.name)
            continue
        checkpoint = run_dir / marker["checkpoint"]
        info = read_checkpoint_info(checkpoint)
        if info["sha256"] != marker.get("checkpoint_sha256"):
            raise DataError(
                f"checkpoint {checkpoint} is not the one unit {folder.name} wrote (SHA-256 differs); "
                f"delete {folder} and re-run to retrain it."
            )
        metrics.append(_read_unit_table(folder / "metrics.tsv"))
        predictions.append(_read_unit_table(folder / "predictions.tsv"))
        markers.append(marker)
    return metrics, predictions, markers, missing


def _ordered(frame: pd.DataFrame, model_order: list[str]) -> pd.DataFrame:
    """Rows by model (NeuroSSM, then the baselines in their order), seed, fold."""
    key = frame["model"].map({m: i for i, m in enumerate(model_order)}).fillna(len(model_order))
    frame = frame.assign(_model=key, _seed=frame["seed"].astype(int), _fold=frame["fold"].astype(int))
    frame = frame.sort_values(["_model", "_seed", "_fold"], kind="stable")
    return frame.drop(columns=["_model", "_seed", "_fold"]).reset_index(drop=True)


def run_summary(
    settings: GroupSettings,
    dataset_summary: dict[str, Any],
    models: dict[str, Any],
    markers: list[dict[str, Any]],
    missing: list[str],
) -> dict[str, Any]:
    """The content of ``summary.json``: protocol, units, metrics per model, chance levels, timing."""
    classes = dataset_summary["classes"]
    n_scans = sum(c["scans"] for c in classes.values())
    return {
        "run_name": settings.run_name,
        "preset": settings.preset,
        "target": settings.target,
        "classes": list(classes),
        "protocol": protocol_text(settings),
        "units": {
            "expected": len(settings.units),
            "complete": len(markers),
            "missing": missing,
        },
        "models": models,
        "chance": {
            "majority_class_accuracy": max(c["scans"] for c in classes.values()) / n_scans,
            "balanced_accuracy": 1.0 / len(classes),
        },
        "dataset": dataset_summary,
        "backends": backends_used(markers),
        "seconds": {
            "neurossm_training_and_testing": round(sum(m.get("neurossm_seconds", 0.0) for m in markers), 1),
            "units_total": round(sum(m.get("total_seconds", 0.0) for m in markers), 1),
        },
    }


def backends_used(markers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where the complete units ran (their ``unit.json``): one entry per device and scan and
    convolution back end, with how many units ran there; older units say ``not recorded``."""
    fields = ("device", "scan_backend", "conv_backend")
    counts = Counter(tuple(m.get(f, "not recorded") for f in fields) for m in markers)
    return [
        {"device": device, "scan_backend": scan, "conv_backend": conv, "units": n}
        for (device, scan, conv), n in sorted(counts.items())
    ]


def protocol_text(settings: GroupSettings) -> str:
    """``5-fold stratified cross-validation grouped by subject, 3 seed(s)`` and the like."""
    unit = "subject" if settings.cv_group is None else f"participants.tsv {settings.cv_group}"
    split = (
        f"hold-out split by {unit} ({settings.test_size:g} of the groups held out)"
        if settings.skip_cross_validation
        else f"{settings.folds}-fold stratified cross-validation grouped by {unit}"
    )
    selection = (
        f"; epochs chosen on an inner validation split of {settings.inner_val:g} of each training fold"
        + (", learning rate and weight decay too (--tune lr-wd)" if settings.tune != "none" else "")
        if settings.inner_val > 0
        else ""
    )
    return f"{split}, {len(settings.seeds)} seed(s){selection}"


def _json_safe(value: Any) -> Any:
    """NaN -> None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
