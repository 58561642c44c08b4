"""Evaluation on full-length held-out scans, and the metrics reported for every model.

Scans of different lengths are batched by length, zero-padded at the end, and passed with their
``lengths`` so the model's masked pooling ignores the padding.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from neurossm_app.group.series_cache import release

METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc")


@torch.no_grad()
def predict_proba(
    model: nn.Module, series: list[np.ndarray], device: torch.device, batch_size: int
) -> np.ndarray:
    """Class probabilities of full-length scans.

    Parameters
    ----------
    model
        ``model(x, lengths)`` with ``x`` (B, R, T) float32 and ``lengths`` (B,) int64 -> (B, C)
        logits.
    series : list of numpy.ndarray, each (R, T_i), or SeriesStore
        Normalized scans; a batch of them is in memory at a time.
    device : torch.device
    batch_size : int

    Returns
    -------
    numpy.ndarray, (N, C) float64
        Softmax probabilities, in the order of ``series``.
    """
    model.eval()
    model.to(device)
    lengths = np.array([x.shape[1] for x in series], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")  # similar lengths together: little padding
    out: list[np.ndarray | None] = [None] * len(series)
    for start in range(0, len(series), batch_size):
        chosen = order[start : start + batch_size]
        longest = int(lengths[chosen].max())
        batch = np.zeros((len(chosen), series[chosen[0]].shape[0], longest), dtype=np.float32)  # (B, R, T)
        for row, index in enumerate(chosen):
            batch[row, :, : lengths[index]] = series[index]
        release(series, chosen)  # memory-mapped scans: their pages, once copied
        x = torch.from_numpy(batch).to(device)
        batch_lengths = torch.from_numpy(lengths[chosen]).to(device)
        logits = model(x, lengths=batch_lengths).float()  # (B, C)
        probs = torch.softmax(logits.double(), dim=1).cpu().numpy()
        for row, index in enumerate(chosen):
            out[index] = probs[row]
    return np.stack(out)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and ROC-AUC of one model on one test set.

    Parameters
    ----------
    y_true : numpy.ndarray, (N,) int
        True class indices.
    proba : numpy.ndarray, (N, C)
        Class probabilities (rows sum to 1).

    Returns
    -------
    dict
        :data:`METRICS` -> value. ROC-AUC is one-vs-rest macro for C > 2 and NaN when the test
        set lacks a class (it is undefined then).
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    n_classes = proba.shape[1]
    y_pred = proba.argmax(axis=1)
    present = np.unique(y_true)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" and friends
        result = {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        }
        if len(present) < n_classes:
            result["roc_auc"] = float("nan")
        elif n_classes == 2:
            result["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1]))
        else:
            result["roc_auc"] = float(
                roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=np.arange(n_classes))
            )
    return result
