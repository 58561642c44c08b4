"""Voxel-wise BOLD of one run: background noise, motion contamination and planted effects.

The BOLD lives on the in-brain voxels of the output grid, as an array of shape ``(V, T)``. The
atlases are brought to that grid with nilearn's nearest-neighbour resampling (what the
participant workflow does), so every voxel of a planted parcel carries the class signal.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

import nibabel as nib
import numpy as np

from neurossm_app.synthetic.atlas import build_atlas_volumes, schaefer_names
from neurossm_app.synthetic.effects import AMPLITUDE, Effect
from neurossm_app.synthetic.grid import Grid, make_grid, normalised_radius, tissue_masks
from neurossm_app.synthetic.signals import (
    SLOW_BAND_HZ,
    simulate_motion,
    slow_oscillation,
    smooth_noise,
    transient_bursts,
    transient_plateaus,
)

#: Tissue baselines (BOLD units) and voxel white-noise SDs.
BASELINE = {"cortex": 900.0, "deep_grey": 860.0, "white_matter": 750.0, "csf": 1300.0}
WHITE_NOISE_SD = {"cortex": 12.0, "deep_grey": 12.0, "white_matter": 8.0, "csf": 15.0}
#: BOLD units per mm of translation and per radian of rotation (before the spatial weights).
MOTION_GAIN = np.array([6.0, 6.0, 6.0, 300.0, 300.0, 300.0])


@dataclass(frozen=True)
class Anatomy:
    """In-brain voxels of the output grid and what they are.

    Attributes
    ----------
    grid : Grid
    brain : numpy.ndarray of bool, shape grid.shape
    schaefer : numpy.ndarray of int, shape (V,)
        Schaefer-400 parcel (0 = none) of each in-brain voxel, in C order of ``brain``.
    aal : numpy.ndarray of int, shape (V,)
        AAL3v1 index (0 = none).
    tissue : dict of str to numpy.ndarray of bool, each shape (V,)
        ``cortex``, ``deep_grey``, ``white_matter``, ``csf`` (a partition of the brain).
    network : numpy.ndarray of int, shape (V,)
        Index of the Schaefer 17-network of each cortical voxel (-1 elsewhere).
    rho : numpy.ndarray, shape (V,)
        Normalised ellipsoid radius (0 centre, 1 surface).
    xyz : numpy.ndarray, shape (V, 3)
        World coordinates in mm.
    """

    grid: Grid
    brain: np.ndarray
    schaefer: np.ndarray
    aal: np.ndarray
    tissue: dict[str, np.ndarray]
    network: np.ndarray
    rho: np.ndarray
    xyz: np.ndarray


def _resample_labels(labels: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    if source.shape == target.shape and np.allclose(source.affine, target.affine):
        return labels
    from nilearn.image import resample_img

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resampled = resample_img(
            nib.Nifti1Image(labels.astype(np.int32), source.affine),
            target_affine=target.affine,
            target_shape=target.shape,
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )
    return np.asarray(resampled.dataobj).astype(np.int32)


@cache
def build_anatomy(voxel_size: float) -> Anatomy:
    """In-brain voxels, atlas labels and tissues on the ``voxel_size`` grid (cached per size).

    Parameters
    ----------
    voxel_size : float
        Isotropic voxel size in mm.

    Returns
    -------
    Anatomy
    """
    grid = make_grid(voxel_size)
    volumes = build_atlas_volumes()
    schaefer = _resample_labels(volumes.schaefer, volumes.grid, grid)
    aal = _resample_labels(volumes.aal, volumes.grid, grid)
    deep_grey_volume = (aal > 0) & (schaefer == 0)
    masks = tissue_masks(grid, deep_grey=deep_grey_volume)
    brain = masks.brain
    cortex = (schaefer > 0)[brain]
    deep_grey = deep_grey_volume[brain] & ~cortex
    csf = masks.csf[brain] & ~cortex & ~deep_grey
    white_matter = ~(cortex | deep_grey | csf)
    names = schaefer_names("schaefer400")
    network_names = sorted({name.split("_")[2] for name in names})
    parcel_network = np.array([-1] + [network_names.index(name.split("_")[2]) for name in names])
    schaefer_brain = schaefer[brain]
    xyz = grid.world_coordinates()[brain]
    return Anatomy(
        grid=grid,
        brain=brain,
        schaefer=schaefer_brain,
        aal=aal[brain],
        tissue={"cortex": cortex, "deep_grey": deep_grey, "white_matter": white_matter, "csf": csf},
        network=parcel_network[schaefer_brain],
        rho=normalised_radius(xyz),
        xyz=xyz,
    )


def motion_weights(anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Per-subject voxel sensitivity to each motion parameter (stronger near the brain edge).

    Returns
    -------
    numpy.ndarray, shape (V, 6)
        BOLD units per mm (columns 0-2) and per radian (columns 3-5).
    """
    centred = (anatomy.xyz - anatomy.xyz.mean(0)) / anatomy.xyz.std(0)
    design = np.column_stack([np.ones(len(centred)), centred])  # (V, 4)
    spatial = design @ rng.normal(0.0, 1.0, (4, 6))  # (V, 6)
    spatial += rng.normal(0.0, 0.3, spatial.shape)
    return spatial * (0.3 + anatomy.rho[:, None] ** 2) * MOTION_GAIN


def effect_waveform(effect: Effect, rng: np.random.Generator, n_vols: int, tr: float) -> np.ndarray:
    """Unit-scale time course of one planted effect for one run.

    Returns
    -------
    numpy.ndarray, shape (n_vols,)
    """
    if effect.kind == "slow":
        frequency = rng.uniform(*SLOW_BAND_HZ)
        return slow_oscillation(n_vols, tr, frequency, rng.uniform(0.0, 2.0 * np.pi))
    if effect.kind == "transient":
        return transient_plateaus(rng, n_vols, tr)
    return transient_bursts(rng, n_vols)


def simulate_run(
    anatomy: Anatomy,
    weights: np.ndarray,
    effects: list[tuple[Effect, float]],
    rng: np.random.Generator,
    n_vols: int,
    tr: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate the preprocessed BOLD of one run on the in-brain voxels.

    Parameters
    ----------
    anatomy : Anatomy
    weights : numpy.ndarray, shape (V, 6)
        From :func:`motion_weights`.
    effects : list of (Effect, float)
        Effects this run carries, each with a per-subject amplitude scale (about 1).
    rng : numpy.random.Generator
    n_vols : int
    tr : float
        Repetition time in seconds.

    Returns
    -------
    bold : numpy.ndarray of float32, shape (V, n_vols)
    motion : numpy.ndarray, shape (n_vols, 6)
        Translations (mm) and rotations (rad), the fMRIPrep motion estimates.
    """
    tissue = anatomy.tissue
    n_voxels = len(anatomy.rho)
    bold = np.empty((n_voxels, n_vols), dtype=np.float32)
    for name, mask in tissue.items():
        bold[mask] = BASELINE[name] * (1.0 + 0.03 * rng.standard_normal((int(mask.sum()), 1)))
        bold[mask] += WHITE_NOISE_SD[name] * rng.standard_normal((int(mask.sum()), n_vols)).astype(np.float32)

    global_signal = 4.0 * smooth_noise(rng, 1, n_vols, 3.0)[0]
    networks = 6.0 * smooth_noise(rng, int(anatomy.network.max()) + 1, n_vols, 2.5)
    parcels = 4.0 * smooth_noise(rng, 401, n_vols, 2.0)
    regions = 5.0 * smooth_noise(rng, 171, n_vols, 2.0)
    wm_physio = 5.0 * smooth_noise(rng, 1, n_vols, 4.0)[0]
    csf_physio = 8.0 * smooth_noise(rng, 1, n_vols, 1.0)[0]
    cortex, deep = tissue["cortex"], tissue["deep_grey"]
    bold[cortex] += networks[anatomy.network[cortex]] + parcels[anatomy.schaefer[cortex]]
    bold[deep] += regions[anatomy.aal[deep]]
    bold += global_signal
    bold[tissue["white_matter"]] += wm_physio
    bold[tissue["csf"]] += csf_physio
    grey = cortex | deep
    bold[grey] += 0.3 * wm_physio + 0.25 * csf_physio
    drift = np.linspace(-1.0, 1.0, n_vols, dtype=np.float32)
    bold += rng.normal(0.0, 3.0, (n_voxels, 1)).astype(np.float32) * drift

    motion = simulate_motion(rng, n_vols)
    bold += (weights @ (motion - motion.mean(0)).T).astype(np.float32)
    fd = np.concatenate(
        [
            [0.0],
            np.abs(np.diff(motion[:, :3], axis=0)).sum(1)
            + 50.0 * np.abs(np.diff(motion[:, 3:], axis=0)).sum(1),
        ]
    )
    for frame in np.flatnonzero(fd > 0.3):  # spin-history spikes at sudden movements
        bold[:, frame] += (15.0 * fd[frame] * (0.5 + anatomy.rho)).astype(np.float32)

    for effect, scale in effects:
        waveform = AMPLITUDE[effect.kind] * scale * effect_waveform(effect, rng, n_vols, tr)
        carriers = np.isin(anatomy.schaefer, effect.schaefer_parcels)
        bold[carriers] += waveform.astype(np.float32)
    return bold, motion
