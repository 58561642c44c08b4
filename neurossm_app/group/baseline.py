"""The classical baseline ``fc-logreg``: functional connectivity + logistic regression.

Features are the upper triangle of each scan's ROI x ROI Pearson correlation matrix, Fisher
z-transformed; each feature is standardized on the training scans, then an L2 logistic
regression (scikit-learn, ``C=1``) is fitted. It sees the same normalized series as NeuroSSM:
censored volumes (all-zero columns after normalization) are left out of the correlations, and
ROIs with no signal correlate 0 with everything.
"""

from __future__ import annotations

import numpy as np

_R_MAX = 1.0 - 1e-7  # keeps arctanh finite on the diagonal-like pairs


def connectivity_features(series: list[np.ndarray]) -> np.ndarray:
    """Fisher-z correlation features of each scan.

    Parameters
    ----------
    series : list of numpy.ndarray, each (R, T_i)
        Normalized scans (0 where values were missing).

    Returns
    -------
    numpy.ndarray, (N, R * (R - 1) / 2) float32
        Upper triangle (row-major, without the diagonal) of ``arctanh(corr)``.
    """
    n_rois = series[0].shape[0]
    upper = np.triu_indices(n_rois, k=1)
    features = np.empty((len(series), len(upper[0])), dtype=np.float32)
    for i, x in enumerate(series):
        kept = x[:, np.any(x != 0, axis=0)].astype(np.float64)  # (R, T') without censored volumes
        centred = kept - kept.mean(axis=1, keepdims=True)
        norm = np.sqrt((centred**2).sum(axis=1))
        safe = np.where(norm > 0, norm, 1.0)
        corr = (centred @ centred.T) / np.outer(safe, safe)  # (R, R); 0 rows for silent ROIs
        features[i] = np.arctanh(np.clip(corr[upper], -_R_MAX, _R_MAX))
    return features


def fit_predict_fc_logreg(
    train_series: list[np.ndarray],
    train_labels: np.ndarray,
    test_series: list[np.ndarray],
    n_classes: int,
    seed: int,
) -> np.ndarray:
    """Fit ``fc-logreg`` on the training scans and predict the test scans.

    Parameters
    ----------
    train_series, test_series : list of numpy.ndarray, each (R, T_i)
    train_labels : numpy.ndarray, (N_train,) int
    n_classes : int
        C; probabilities of classes absent from training are 0.
    seed : int
        ``random_state`` of the solver (lbfgs is deterministic; kept for completeness).

    Returns
    -------
    numpy.ndarray, (N_test, C) float64
        Class probabilities.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    model.fit(connectivity_features(train_series), train_labels)
    fitted = model.predict_proba(connectivity_features(test_series))  # (N_test, C_seen)
    proba = np.zeros((len(test_series), n_classes))
    proba[:, model.classes_] = fitted
    return proba


#: Every baseline by its ``--baselines`` name: ``(train_series, train_labels, test_series,
#: n_classes, seed) -> (N_test, C)`` probabilities.
BASELINES = {"fc-logreg": fit_predict_fc_logreg}
