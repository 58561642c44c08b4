"""The classical baselines: features of each scan + logistic regression, on NeuroSSM's folds.

- ``fc-logreg``: the upper triangle of each scan's ROI x ROI Pearson correlation matrix, Fisher
  z-transformed. Censored volumes (all-zero columns after normalization) are left out of the
  correlations, and ROIs with no signal correlate 0 with everything.
- ``stats-logreg``: per ROI, the log variance of the series and of its first difference, and the
  log share of its power below :data:`LOW_FREQUENCY` cycles per volume (3 R features): the
  amplitude and the fast and slow dynamics NeuroSSM's raw and diff pathways read, without their
  interactions.

Both see the same normalized series as NeuroSSM (per scan and ROI z-scored, so the raw variance
is 1 except where values were missing), standardize each feature on the training scans and fit
an L2 logistic regression (scikit-learn, ``C=1``, lbfgs).
"""

from __future__ import annotations

import numpy as np

from neurossm_app.group.series_cache import release

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
        release(series, [i])  # a memory-mapped scan's pages, once read
    return features


LOW_FREQUENCY = 0.05  # cycles per volume: periods of 20 volumes and longer (0.07 Hz at TR 0.72 s)
_FLOOR = 1e-6  # keeps the logarithms of silent ROIs finite


def dynamics_features(series: list[np.ndarray]) -> np.ndarray:
    """Variance, first-difference variance and low-frequency power share of every ROI.

    Parameters
    ----------
    series : list of numpy.ndarray, each (R, T_i)
        Normalized scans (0 where values were missing).

    Returns
    -------
    numpy.ndarray, (N, 3 R) float32
        ``log var(x_r)``, then ``log var(diff x_r)``, then ``log`` of the share of the periodogram
        (mean removed) at frequencies ``0 < f <= LOW_FREQUENCY`` cycles per volume, ROI by ROI.
    """
    features = np.empty((len(series), 3 * series[0].shape[0]), dtype=np.float32)
    for i, x in enumerate(series):
        x = x.astype(np.float64)
        centred = x - x.mean(axis=1, keepdims=True)
        power = np.abs(np.fft.rfft(centred, axis=1)) ** 2  # (R, T // 2 + 1)
        frequencies = np.fft.rfftfreq(x.shape[1])
        low = (frequencies > 0) & (frequencies <= LOW_FREQUENCY)
        share = power[:, low].sum(axis=1) / np.maximum(power[:, 1:].sum(axis=1), _FLOOR)
        features[i] = np.log(
            np.maximum(np.concatenate([x.var(axis=1), np.diff(x, axis=1).var(axis=1), share]), _FLOOR)
        )
        release(series, [i])
    return features


def _fit_predict_logreg(
    features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    n_classes: int,
    seed: int,
) -> np.ndarray:
    """StandardScaler + L2 logistic regression (C=1) on ``features``; test probabilities (N, C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    model.fit(features, train_labels)
    fitted = model.predict_proba(test_features)  # (N_test, C_seen)
    proba = np.zeros((len(test_features), n_classes))
    proba[:, model.classes_] = fitted
    return proba


def fit_predict_stats_logreg(
    train_series: list[np.ndarray],
    train_labels: np.ndarray,
    test_series: list[np.ndarray],
    n_classes: int,
    seed: int,
) -> np.ndarray:
    """Fit ``stats-logreg`` (:func:`dynamics_features`) on the training scans; test probabilities (N, C)."""
    return _fit_predict_logreg(
        dynamics_features(train_series), train_labels, dynamics_features(test_series), n_classes, seed
    )


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
    return _fit_predict_logreg(
        connectivity_features(train_series), train_labels, connectivity_features(test_series), n_classes, seed
    )


#: Every baseline by its ``--baselines`` name: ``(train_series, train_labels, test_series,
#: n_classes, seed) -> (N_test, C)`` probabilities.
BASELINES = {"fc-logreg": fit_predict_fc_logreg, "stats-logreg": fit_predict_stats_logreg}
