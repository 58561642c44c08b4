"""Time courses of the synthetic BOLD: noise, head motion, planted effects and the confounds.

Units: BOLD intensities around a tissue baseline of ~1000 (arbitrary scanner units); motion in
mm (translations) and radians (rotations); time in volumes unless a name says seconds (``tr``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d

#: fMRIPrep's Power framewise-displacement head radius (mm).
HEAD_RADIUS_MM = 50.0
#: fMRIPrep flags ``motion_outlierXX`` above these FD (mm) / standardised DVARS values.
FD_OUTLIER_MM = 0.5
STD_DVARS_OUTLIER = 1.5
#: Cut-off period of fMRIPrep's discrete-cosine high-pass basis (s).
COSINE_CUTOFF_S = 128.0
MOTION_NAMES = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
#: Band of the planted slow oscillation (Hz): inside a 0.01-0.1 Hz band-pass.
SLOW_BAND_HZ = (0.015, 0.03)
#: The planted "diff"-pathway burst, and the range of volumes from one burst's onset to the next.
BURST_PATTERN = (1.0, -1.0, 1.0)
BURST_GAP_VOLS = (6, 15)  # numpy's integers(6, 15): 6 to 14


def smooth_noise(rng: np.random.Generator, n_series: int, n_vols: int, sigma_vols: float) -> np.ndarray:
    """Gaussian-smoothed white noise, each series scaled to unit variance.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_series, n_vols : int
    sigma_vols : float
        Smoothing kernel SD in volumes (larger = slower fluctuations).

    Returns
    -------
    numpy.ndarray, shape (n_series, n_vols)
    """
    noise = gaussian_filter1d(rng.standard_normal((n_series, n_vols)), sigma_vols, axis=1, mode="reflect")
    noise -= noise.mean(axis=1, keepdims=True)
    return noise / np.maximum(noise.std(axis=1, keepdims=True), 1e-12)


def simulate_motion(rng: np.random.Generator, n_vols: int) -> np.ndarray:
    """Random-walk rigid-body head motion with a few sudden jerks.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_vols : int

    Returns
    -------
    numpy.ndarray, shape (n_vols, 6)
        ``trans_x, trans_y, trans_z`` (mm) then ``rot_x, rot_y, rot_z`` (rad), first volume 0
        (fMRIPrep's reference is the first volume after its own alignment, close to 0).
    """
    steps = np.concatenate(
        [rng.normal(0.0, 0.012, (n_vols, 3)), rng.normal(0.0, 0.0002, (n_vols, 3))], axis=1
    )
    n_jerks = rng.poisson(max(n_vols / 120.0, 0.5))
    for frame in rng.choice(np.arange(1, n_vols), size=min(n_jerks, n_vols - 1), replace=False):
        steps[frame, :3] += rng.normal(0.0, 0.25, 3)
        steps[frame, 3:] += rng.normal(0.0, 0.003, 3)
    steps[0] = 0.0
    return np.cumsum(steps, axis=0)


def framewise_displacement(motion: np.ndarray) -> np.ndarray:
    """Power et al. (2012) framewise displacement, as fMRIPrep reports it.

    Parameters
    ----------
    motion : numpy.ndarray, shape (T, 6)
        Translations (mm) and rotations (rad).

    Returns
    -------
    numpy.ndarray, shape (T,)
        mm; ``nan`` for the first volume.
    """
    delta = np.abs(np.diff(motion, axis=0))
    fd = delta[:, :3].sum(axis=1) + HEAD_RADIUS_MM * delta[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def relative_rms_displacement(motion: np.ndarray) -> np.ndarray:
    """Volume-to-volume RMS displacement over a 50 mm sphere (Jenkinson 1999, small angles).

    Returns
    -------
    numpy.ndarray, shape (T,)
        mm; ``nan`` for the first volume.
    """
    delta = np.diff(motion, axis=0)
    rms = np.sqrt(
        np.sum(delta[:, :3] ** 2, axis=1) + 0.2 * HEAD_RADIUS_MM**2 * np.sum(delta[:, 3:] ** 2, axis=1)
    )
    return np.concatenate([[np.nan], rms])


def slow_oscillation(n_vols: int, tr: float, frequency_hz: float, phase: float) -> np.ndarray:
    """Unit-amplitude sinusoid (the planted "raw"-pathway effect).

    Returns
    -------
    numpy.ndarray, shape (n_vols,)
    """
    seconds = np.arange(n_vols) * tr
    return np.sin(2.0 * np.pi * frequency_hz * seconds + phase)


def transient_bursts(rng: np.random.Generator, n_vols: int) -> np.ndarray:
    """Sparse 3-volume alternating-sign bursts: the planted ``burst`` ("diff"-pathway) effect.

    A burst is ``BURST_PATTERN`` (+1, -1, +1 over three volumes); the first starts within the
    first 5 volumes and each next one 6-14 volumes later. Their energy sits near the Nyquist
    frequency, where the first temporal difference doubles a signal while it shrinks the slow
    background several times, so the difference pathways see them best. They are a test pattern
    for those pathways, not a haemodynamic response: a 0.01-0.1 Hz band-pass removes most of
    them, and the participant level keeps them with ``--low-pass none``.

    Returns
    -------
    numpy.ndarray, shape (n_vols,)
        0 between bursts.
    """
    wave = np.zeros(n_vols)
    onset = int(rng.integers(0, 5))
    while onset + len(BURST_PATTERN) <= n_vols:
        wave[onset : onset + len(BURST_PATTERN)] = BURST_PATTERN
        onset += int(rng.integers(*BURST_GAP_VOLS))
    return wave


def transient_plateaus(rng: np.random.Generator, n_vols: int, tr: float) -> np.ndarray:
    """Sparse 4-8 s plateaus with sharp (about 2-TR) edges: the planted ``transient`` effect.

    Each plateau survives a 0.01-0.1 Hz band-pass, while its onsets and offsets are steps that
    show in the first temporal difference. About one every 20 s. CPA of a trained NeuroSSM
    mostly credits them to raw pathways (docs/cpa.md); :func:`transient_bursts` is the effect
    made for the difference pathways.

    Returns
    -------
    numpy.ndarray, shape (n_vols,)
        0 at rest, about 1 inside a plateau.
    """
    boxcar = np.zeros(n_vols)
    seconds = n_vols * tr
    n_plateaus = max(2, int(round(seconds / 20.0)))
    onsets = np.sort(rng.uniform(0.0, max(seconds - 8.0, tr), n_plateaus))
    for onset in onsets:
        duration = rng.uniform(4.0, 8.0)
        first, last = int(onset / tr), int(np.ceil((onset + duration) / tr))
        boxcar[first:last] = 1.0
    return gaussian_filter1d(boxcar, 0.6, mode="constant")


def cosine_basis(n_vols: int, tr: float) -> np.ndarray:
    """fMRIPrep's discrete-cosine high-pass regressors (``cosineXX``), at least one column.

    Returns
    -------
    numpy.ndarray, shape (n_vols, K)
        ``K = max(1, floor(2 * n_vols * tr / 128 s))``.
    """
    n_basis = max(1, int(np.floor(2.0 * n_vols * tr / COSINE_CUTOFF_S)))
    t = np.arange(n_vols)
    return np.stack(
        [
            np.sqrt(2.0 / n_vols) * np.cos(np.pi * (2 * t + 1) * (k + 1) / (2 * n_vols))
            for k in range(n_basis)
        ],
        axis=1,
    )


def _compcor(voxels: np.ndarray, cosines: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Top principal time courses (T, k) and all singular values of high-passed voxels (V, T)."""
    design = np.column_stack([np.ones(voxels.shape[1]), cosines])  # (T, 1 + K)
    series = voxels.T.astype(np.float64)  # (T, V)
    series -= design @ np.linalg.lstsq(design, series, rcond=None)[0]
    series /= np.maximum(series.std(axis=0, keepdims=True), 1e-9)
    # eigen-decomposition of the (T, T) Gram matrix: same left singular vectors as an SVD of
    # (T, V), without ever forming the (T, V) right singular vectors
    eigenvalues, eigenvectors = np.linalg.eigh(series @ series.T)
    order = np.argsort(eigenvalues)[::-1]
    singular = np.sqrt(np.clip(eigenvalues[order], 0.0, None))
    left = eigenvectors[:, order[:n_components]]
    left *= np.sign(left[np.argmax(np.abs(left), axis=0), np.arange(left.shape[1])])  # fixed signs
    return left, singular


def _expansions(name: str, series: np.ndarray) -> dict[str, np.ndarray]:
    derivative = np.concatenate([[np.nan], np.diff(series)])
    return {
        name: series,
        f"{name}_derivative1": derivative,
        f"{name}_power2": series**2,
        f"{name}_derivative1_power2": derivative**2,
    }


def confounds_table(
    bold: np.ndarray,
    tissue: dict[str, np.ndarray],
    motion: np.ndarray,
    tr: float,
    n_compcor: int = 5,
) -> tuple[pd.DataFrame, dict[str, dict]]:
    """fMRIPrep-style ``desc-confounds_timeseries`` columns and their JSON metadata.

    Parameters
    ----------
    bold : numpy.ndarray, shape (V, T)
        In-brain voxel time series.
    tissue : dict of str to numpy.ndarray of bool, each shape (V,)
        ``"csf"`` and ``"white_matter"`` masks over the same voxels.
    motion : numpy.ndarray, shape (T, 6)
        Head-motion estimates, translations in mm and rotations in rad.
    tr : float
        Repetition time in seconds.
    n_compcor : int
        Components kept per CompCor mask (``a_comp_cor`` combined; ``c_``, ``w_``, ``t_`` get
        ``n_compcor - 2`` each, at least 1).

    Returns
    -------
    table : pandas.DataFrame, shape (T, n_columns)
        fMRIPrep column names; ``nan`` where fMRIPrep writes ``n/a`` (first row of derivatives,
        ``framewise_displacement``, ``dvars``, ``std_dvars``, ``rmsd``).
    metadata : dict
        Per-column JSON entries for the CompCor components (``Method``, ``Mask``, ``Retained``,
        ``SingularValue``, ``VarianceExplained``, ``CumulativeVarianceExplained``).
    """
    n_vols = bold.shape[1]
    columns: dict[str, np.ndarray] = {}
    columns |= _expansions("global_signal", bold.mean(axis=0))
    columns |= _expansions("csf", bold[tissue["csf"]].mean(axis=0))
    columns |= _expansions("white_matter", bold[tissue["white_matter"]].mean(axis=0))
    columns["csf_wm"] = bold[tissue["csf"] | tissue["white_matter"]].mean(axis=0)

    differences = np.diff(bold, axis=1)
    dvars = np.concatenate([[np.nan], np.sqrt(np.mean(differences**2, axis=0))])
    columns["dvars"] = dvars
    columns["std_dvars"] = dvars / np.nanmedian(dvars)
    fd = framewise_displacement(motion)
    columns["framewise_displacement"] = fd
    columns["rmsd"] = relative_rms_displacement(motion)

    cosines = cosine_basis(n_vols, tr)
    compcor, metadata = _compcor_columns(bold, tissue, cosines, n_compcor)
    columns |= compcor
    for k in range(cosines.shape[1]):
        columns[f"cosine{k:02d}"] = cosines[:, k]
    for k, name in enumerate(MOTION_NAMES):
        columns |= _expansions(name, motion[:, k])
    outliers = np.flatnonzero(
        (np.nan_to_num(fd) > FD_OUTLIER_MM) | (np.nan_to_num(columns["std_dvars"]) > STD_DVARS_OUTLIER)
    )
    for k, frame in enumerate(outliers):
        one_hot = np.zeros(n_vols)
        one_hot[frame] = 1.0
        columns[f"motion_outlier{k:02d}"] = one_hot
    return pd.DataFrame(columns), metadata


def _compcor_columns(
    bold: np.ndarray, tissue: dict[str, np.ndarray], cosines: np.ndarray, n_compcor: int
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """``t_``, ``c_``, ``w_`` and ``a_comp_cor_NN`` columns and their JSON entries, as fMRIPrep
    names and describes them."""
    columns: dict[str, np.ndarray] = {}
    metadata: dict[str, dict] = {}
    n_small = max(1, n_compcor - 2)
    temporal_variance = bold.var(axis=1)
    high_variance = temporal_variance >= np.quantile(temporal_variance, 0.98)
    masks = (
        ("t", None, high_variance, n_small),
        ("c", "CSF", tissue["csf"], n_small),
        ("w", "WM", tissue["white_matter"], n_small),
        ("a", "combined", tissue["csf"] | tissue["white_matter"], n_compcor),
    )
    for prefix, mask_name, mask, n_keep in masks:
        components, singular = _compcor(bold[mask], cosines, n_keep)
        explained = singular**2 / np.sum(singular**2)
        for k in range(components.shape[1]):
            name = f"{prefix}_comp_cor_{k:02d}"
            columns[name] = components[:, k]
            entry = {
                "CumulativeVarianceExplained": float(np.sum(explained[: k + 1])),
                "Method": "tCompCor" if prefix == "t" else "aCompCor",
                "Retained": True,
                "SingularValue": float(singular[k]),
                "VarianceExplained": float(explained[k]),
            }
            if mask_name is not None:
                entry["Mask"] = mask_name
            metadata[name] = entry
    return columns, metadata
