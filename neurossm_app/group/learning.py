"""Learning curves and the overfitting check of a run (``summary.json``'s ``overfitting``).

Every unit's ``history.tsv`` holds, per epoch (and ``--tune`` candidate), the training loss and
accuracy (on that epoch's random windows, in training mode), the inner validation split's loss
and accuracies and the test fold's accuracy (for the curves only), and marks the kept epoch with
``selected``. The overfitting check compares the kept epoch's training accuracy with the unit's
held-out accuracy: a mean gap above :data:`OVERFITTING_GAP` means the model learnt its training
scans rather than the classes, and ``summary.json``, the log and the report say so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LOGGER = logging.getLogger("neurossm_app")

#: Training accuracy minus held-out accuracy above which a run is flagged as overfitting.
OVERFITTING_GAP = 0.3


def kept_epoch(history: pd.DataFrame) -> pd.Series:
    """The row of the epoch whose weights a unit kept (the last row for histories without ``selected``)."""
    if "selected" in history.columns:
        chosen = history[pd.to_numeric(history["selected"], errors="coerce") == 1]
        if len(chosen):
            return chosen.iloc[0]
    return history.iloc[-1]


def overfitting_check(
    run_dir: Path, units: list[tuple[int, int]], metrics: pd.DataFrame
) -> dict[str, Any] | None:
    """Compare NeuroSSM's training and held-out accuracy over the complete units.

    Parameters
    ----------
    run_dir : Path
        The run folder (``units/fold-K_seed-S/history.tsv`` are read).
    units : list of (fold, seed)
        The complete units.
    metrics : pandas.DataFrame
        The run's ``metrics.tsv`` rows (``model``, ``fold``, ``seed``, ``accuracy``).

    Returns
    -------
    dict or None
        ``train_accuracy`` (mean over units of the kept epoch's), ``held_out_accuracy``, ``gap``,
        ``threshold``, ``units_over_threshold`` and ``warning`` (a sentence, or ``None``); ``None``
        when no unit has a history.
    """
    neurossm = metrics[metrics["model"] == "neurossm"].astype({"fold": int, "seed": int})
    held_out = {(r.fold, r.seed): float(r.accuracy) for r in neurossm.itertuples()}
    rows = []
    for fold, seed in units:
        path = run_dir / "units" / f"fold-{fold}_seed-{seed}" / "history.tsv"
        if not path.is_file() or (fold, seed) not in held_out:
            continue
        kept = kept_epoch(pd.read_csv(path, sep="\t"))
        rows.append((f"fold-{fold}_seed-{seed}", float(kept["train_accuracy"]), held_out[(fold, seed)]))
    if not rows:
        return None
    train = float(np.mean([r[1] for r in rows]))
    test = float(np.mean([r[2] for r in rows]))
    over = [name for name, a, b in rows if a - b > OVERFITTING_GAP]
    warning = None
    if train - test > OVERFITTING_GAP:
        warning = (
            f"NeuroSSM overfits: training accuracy {train:.2f} but held-out accuracy {test:.2f} "
            f"(mean over {len(rows)} unit(s); gap above {OVERFITTING_GAP}). The model learnt its training "
            "scans, not the classes: use an inner validation split (--inner-val), a lower --lr or "
            "--epochs, more --weight-decay or --augment, or --tune lr-wd (docs/model.md)."
        )
        LOGGER.warning("%s", warning)
    return {
        "train_accuracy": train,
        "held_out_accuracy": test,
        "gap": train - test,
        "threshold": OVERFITTING_GAP,
        "units_over_threshold": over,
        "warning": warning,
    }


def kept_candidate(history: pd.DataFrame) -> pd.DataFrame:
    """The epochs of the ``--tune`` candidate whose model was kept (all rows without candidates)."""
    if "candidate" not in history.columns:
        return history
    return history[history["candidate"] == kept_epoch(history)["candidate"]]


def learning_table(histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per unit: the kept epoch and its settings and accuracies (the report's table)."""
    rows = []
    for name, history in histories.items():
        kept = kept_epoch(history)
        rows.append(
            {
                "unit": name,
                "kept epoch": f"{int(kept['epoch'])} of {int(pd.to_numeric(history['epoch']).max())}",
                "peak lr": kept.get("peak_lr", np.nan),
                "weight decay": kept.get("weight_decay", np.nan),
                "training accuracy": float(kept["train_accuracy"]),
                "inner validation balanced accuracy": float(kept.get("val_balanced_accuracy", np.nan)),
                "test accuracy": float(kept.get("test_accuracy", np.nan)),
            }
        )
    return pd.DataFrame(rows)
