"""Subject-level results: what a clinician asks of a classifier, one answer per person.

A subject's prediction is the mean of its held-out scans' class probabilities (per model and
seed; for ``--target task``, per subject and task, since one subject has scans of every class),
and its predicted class the largest mean. Every subject is held out once per seed in a
cross-validation (only the test subjects are, with ``--skip-cross-validation``), so the metrics
are computed per model and seed over all held-out subjects together, then summarised as mean
and SD over seeds: folds of a few subjects would give too coarse a value each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurossm_app.files import write_tsv
from neurossm_app.group.evaluate import classification_metrics

#: The subject-level metrics reported (scan-level ones are :data:`~.evaluate.METRICS`).
SUBJECT_METRICS = ("accuracy", "balanced_accuracy", "roc_auc")
SUBJECT_PREDICTIONS = "subject_predictions.tsv"


def subject_predictions(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per model, seed, subject and true label: mean probabilities over its scans.

    Parameters
    ----------
    predictions : pandas.DataFrame
        The run's ``predictions.tsv`` (``model``, ``seed``, ``subject``, ``true_label``,
        ``prob_<class>``; values may be strings).
    classes : list of str
        Class names in logit order.

    Returns
    -------
    pandas.DataFrame
        ``model``, ``seed``, ``subject``, ``true_label``, ``n_scans``, ``predicted_label``, then
        ``prob_<class>`` (6 decimals), in the order of ``predictions``.
    """
    columns = [f"prob_{c}" for c in classes]
    frame = predictions[["model", "seed", "subject", "true_label", *columns]].copy()
    frame[columns] = frame[columns].apply(pd.to_numeric, errors="coerce")
    keys = ["model", "seed", "subject", "true_label"]
    grouped = frame.groupby(keys, sort=False)
    table = grouped[columns].mean().reset_index()
    table.insert(4, "n_scans", grouped.size().to_numpy())
    table.insert(5, "predicted_label", [classes[k] for k in table[columns].to_numpy().argmax(axis=1)])
    table[columns] = table[columns].round(6)
    return table


def subject_metrics(table: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """Subject-level metrics per model: per seed over all its held-out subjects, then mean and SD.

    Returns
    -------
    dict
        Model -> metric -> ``{"mean", "sd", "n"}`` (``n``: seeds with a defined value).
    """
    index = {name: k for k, name in enumerate(classes)}
    columns = [f"prob_{c}" for c in classes]
    result: dict[str, Any] = {}
    for model, rows in table.groupby("model", sort=False):
        per_seed = [
            classification_metrics(
                np.array([index[label] for label in seed_rows["true_label"]]), seed_rows[columns].to_numpy()
            )
            for _, seed_rows in rows.groupby("seed", sort=False)
        ]
        result[str(model)] = {m: _mean_sd([v[m] for v in per_seed]) for m in SUBJECT_METRICS}
    return result


def _mean_sd(values: list[float]) -> dict[str, float | int | None]:
    finite = [v for v in values if np.isfinite(v)]
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "n": len(finite),
    }


def write_subject_level(run_dir: Path, predictions: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """Write ``subject_predictions.tsv`` and return the ``subject_level`` entry of ``summary.json``."""
    table = subject_predictions(predictions, classes)
    write_tsv(run_dir / SUBJECT_PREDICTIONS, table)
    return {
        "prediction": "mean class probability over a subject's held-out scans (per task with --target "
        "task), per model and seed; predicted class: the largest",
        "metrics": "per seed over all held-out subjects, then mean and SD over seeds",
        "n_subjects": int(table["subject"].nunique()),
        "models": subject_metrics(table, classes),
    }
