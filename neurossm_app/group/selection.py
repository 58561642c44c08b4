"""Model selection inside one training fold: the epoch, and with ``--tune lr-wd`` the optimiser.

With ``--inner-val FRACTION`` > 0, :func:`~neurossm_app.group.splits.inner_split` holds out that
share of the training fold's groups (stratified and grouped like the outer folds, shuffled from
the unit's seed). NeuroSSM trains on the rest; after every epoch it is scored on the inner
validation split, and the epoch with the highest balanced accuracy there (ties: the lowest
class-balanced cross-entropy, then the earliest) is kept: its weights are the unit's model
(early stopping without retraining). ``--tune lr-wd`` trains one model per pair of
:data:`LR_WD_GRID` the same way, each from the same initial weights, and keeps the pair whose
chosen epoch scores best (ties: the first pair in the grid). The test fold is scored every epoch
for the learning curves only; nothing is chosen with it.

Without an inner split (``--inner-val 0``, or a training fold with too few groups of a class for
one, which is logged), the model trains on the whole fold for ``--epochs`` and the last epoch is
kept, as before these options existed.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurossm_app.group.data import GroupDataset
from neurossm_app.group.models import build_neurossm
from neurossm_app.group.presets import GroupSettings
from neurossm_app.group.series_cache import take
from neurossm_app.group.splits import inner_split
from neurossm_app.group.train import EpochChecks, HeldOut, TrainSettings, reproducible, train_model

LOGGER = logging.getLogger("neurossm_app")

#: ``--tune lr-wd``: (peak learning rate, weight decay) pairs tried on the inner split, in order.
LR_WD_GRID = tuple((lr, wd) for lr in (1e-3, 3e-3, 1e-2) for wd in (0.01, 0.1))
CRITERION = (
    "highest balanced accuracy on the inner validation split, then lowest class-balanced "
    "cross-entropy, then the earliest epoch (and the first --tune candidate)"
)


@dataclasses.dataclass
class SelectedModel:
    """What :func:`train_selected` returns.

    Attributes
    ----------
    model
        The kept NeuroSSM (weights of the chosen epoch and candidate).
    model_config : dict
        Its ``NeuroSSMConfig`` dictionary.
    history : pandas.DataFrame
        Every candidate's epochs: :data:`~neurossm_app.group.train.HISTORY_COLUMNS` plus
        ``candidate``, ``peak_lr`` and ``weight_decay``; ``selected`` is 1 on one row only.
    choice : dict
        The chosen epoch and settings, and how they were chosen (the unit's ``selection``).
    """

    model: torch.nn.Module
    model_config: dict[str, Any]
    history: pd.DataFrame
    choice: dict[str, Any]


def train_selected(
    dataset: GroupDataset,
    train: np.ndarray,
    test: np.ndarray,
    groups: list[str],
    settings: GroupSettings,
    seed: int,
    device: torch.device,
    description: str,
) -> SelectedModel:
    """Train NeuroSSM on the training fold ``train`` and choose its epoch (and optimiser).

    Parameters
    ----------
    dataset : GroupDataset
    train, test : numpy.ndarray of int
        Scan indices of the unit's training and test folds.
    groups : list of str, length N (all scans)
        Fold group of every scan of ``dataset``.
    settings : GroupSettings
    seed : int
        The unit's seed: model initialisation, inner split, windows and augmentations.
    device : torch.device
    description : str
        Prefix of log lines (``fold-0 seed-1``).
    """
    fit, validation, split_info = inner_fold(dataset, train, groups, settings, seed, description)
    checks = EpochChecks(
        validation=None if validation is None else _held_out(dataset, validation),
        test=_held_out(dataset, test),
    )
    candidates = LR_WD_GRID if settings.tune == "lr-wd" and validation is not None else None
    candidates = candidates or ((settings.lr, settings.weight_decay),)
    best: tuple[tuple[float, float], SelectedModel] | None = None
    histories = []
    for index, (lr, weight_decay) in enumerate(candidates):
        with reproducible(seed):
            model, model_config = build_neurossm(_model_config(dataset, settings))
            history = train_model(
                model, take(dataset.series, fit), dataset.labels[fit], len(dataset.classes),
                _train_settings(settings, lr, weight_decay), seed + 1, device,
                f"{description} lr {lr:g} wd {weight_decay:g}" if len(candidates) > 1 else description,
                checks,
            )  # fmt: skip
        history.insert(1, "candidate", index)
        history.insert(2, "peak_lr", lr)
        history.insert(3, "weight_decay", weight_decay)
        histories.append(history)
        row = history[history["selected"] == 1].iloc[0]
        key = (float(row["val_balanced_accuracy"]), -float(row["val_loss"]))
        if best is None or (validation is not None and key > best[0]):
            best = (key, SelectedModel(model, model_config, history, _choice(row, settings, split_info)))
    chosen = best[1]
    history = pd.concat(histories, ignore_index=True)
    # One selected row: the kept epoch of the kept candidate.
    kept = (history["candidate"] == chosen.choice["candidate"]) & (history["selected"] == 1)
    history["selected"] = kept.astype(int)
    chosen.history = history
    log_choice(description, chosen.choice)
    return chosen


def inner_fold(
    dataset: GroupDataset,
    train: np.ndarray,
    groups: list[str],
    settings: GroupSettings,
    seed: int,
    description: str,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The scans NeuroSSM fits and the inner validation scans (``None``: no inner split).

    Returns
    -------
    fit, validation : numpy.ndarray of int (scan indices) and numpy.ndarray or None
    info : dict
        ``inner_val`` and the numbers of scans and groups on each side (for ``selection``).
    """
    info: dict[str, Any] = {"inner_val": settings.inner_val, "fit_scans": len(train)}
    if settings.inner_val <= 0:
        return train, None, info | {"validation": "none (--inner-val 0)"}
    train_groups = [groups[i] for i in train]
    # The inner split has its own stream of the unit's seed (the model's is ``seed``).
    split = inner_split(dataset.labels[train], train_groups, settings.inner_val, seed + 2)
    if split is None:
        LOGGER.warning(
            "%s: the training fold has too few groups of a class for an inner validation split; "
            "training on the whole fold for %d epochs and keeping the last (lower --folds, or add "
            "subjects, to have one)",
            description, settings.epochs,
        )  # fmt: skip
        return train, None, info | {"validation": "none (too few groups of a class in the training fold)"}
    fit, validation = train[split[0]], train[split[1]]
    return (
        fit,
        validation,
        info
        | {
            "validation": "inner split",
            "fit_scans": len(fit),
            "validation_scans": len(validation),
            "validation_groups": len({groups[i] for i in validation}),
            "fit_groups": len({groups[i] for i in fit}),
        },
    )


def _held_out(dataset: GroupDataset, indices: np.ndarray) -> HeldOut:
    return HeldOut(take(dataset.series, indices), dataset.labels[indices])


def _model_config(dataset: GroupDataset, settings: GroupSettings) -> dict[str, Any]:
    return {"n_rois": len(dataset.roi_names), "n_classes": len(dataset.classes), **settings.model_fields()}


def _train_settings(settings: GroupSettings, lr: float, weight_decay: float) -> TrainSettings:
    return TrainSettings(
        window=settings.dynamic_length,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=lr,
        weight_decay=weight_decay,
        augment=tuple(settings.augment),
    )


def _choice(row: pd.Series, settings: GroupSettings, split_info: dict[str, Any]) -> dict[str, Any]:
    """The unit's ``selection``: the kept epoch and its settings and scores, and how it was chosen."""
    has_validation = split_info["validation"] == "inner split"
    return {
        "epoch": int(row["epoch"]),
        "epochs": settings.epochs,
        "candidate": int(row["candidate"]),
        "lr": float(row["peak_lr"]),
        "weight_decay": float(row["weight_decay"]),
        "tune": settings.tune if has_validation else "none",
        "augment": list(settings.augment),
        "criterion": CRITERION if has_validation else "last epoch (no inner validation split)",
        "train_accuracy": float(row["train_accuracy"]),
        "val_accuracy": float(row["val_accuracy"]),
        "val_balanced_accuracy": float(row["val_balanced_accuracy"]),
        "val_loss": float(row["val_loss"]),
        **split_info,
    }


def log_choice(description: str, choice: dict[str, Any]) -> None:
    """One INFO line: the kept epoch and settings, and their inner-validation score."""
    if choice["validation"] != "inner split":
        LOGGER.info("%s: kept the last epoch (%d); %s", description, choice["epoch"], choice["validation"])
        return
    LOGGER.info(
        "%s: kept epoch %d/%d (lr %g, weight decay %g): inner validation balanced accuracy %.3f "
        "on %d scan(s) of %d group(s), training accuracy %.3f",
        description, choice["epoch"], choice["epochs"], choice["lr"], choice["weight_decay"],
        choice["val_balanced_accuracy"], choice["validation_scans"], choice["validation_groups"],
        choice["train_accuracy"],
    )  # fmt: skip
