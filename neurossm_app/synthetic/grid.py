"""Voxel grids and pseudo-anatomy of the synthetic brain.

Every grid shares the bounding box of TemplateFlow's ``MNI152NLin2009cAsym`` 2 mm grid
(shape ``(97, 115, 97)``, origin ``(-96, -132, -78)`` mm), so a voxel size of 2 mm gives
exactly fMRIPrep's ``res-2`` grid and coarser voxel sizes give the same field of view.

The "brain" is an ellipsoid in world coordinates. Its normalised radius ``rho`` (1 on the
surface) splits it into tissues: cortex ``CORTEX_RHO[0] <= rho <= CORTEX_RHO[1]`` (where the
Schaefer parcels live), a thin outer CSF rim, two ventricles and deep tissue (white matter and
the sub-cortical AAL regions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: World bounding box of the MNI152NLin2009cAsym 2 mm grid, in mm (first and last voxel centres).
BOX_ORIGIN_MM = np.array([-96.0, -132.0, -78.0])
BOX_EXTENT_MM = np.array([192.0, 228.0, 192.0])

#: Ellipsoid brain: centre and semi-axes in mm (inside the box, roughly MNI-sized).
BRAIN_CENTER_MM = np.array([0.0, -18.0, 12.0])
BRAIN_SEMI_AXES_MM = np.array([70.0, 92.0, 74.0])

#: Normalised-radius band holding the cortical parcels.
CORTEX_RHO = (0.80, 0.97)

#: Lateral ventricles: centres (x mirrored) and semi-axes in mm.
VENTRICLE_CENTER_MM = np.array([12.0, -10.0, 18.0])
VENTRICLE_SEMI_AXES_MM = np.array([6.0, 20.0, 8.0])


@dataclass(frozen=True)
class Grid:
    """A 3-D voxel grid in MNI152NLin2009cAsym world space.

    Attributes
    ----------
    shape : tuple of int
        ``(nx, ny, nz)``.
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-world affine (mm), diagonal, RAS+.
    voxel_size : float
        Isotropic voxel size in mm.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    voxel_size: float

    def world_coordinates(self) -> np.ndarray:
        """World coordinates of every voxel centre.

        Returns
        -------
        numpy.ndarray, shape (nx, ny, nz, 3)
            x, y, z in mm.
        """
        axes = [
            self.affine[k, 3] + self.voxel_size * np.arange(n, dtype=np.float64)
            for k, n in enumerate(self.shape)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def make_grid(voxel_size: float) -> Grid:
    """Build the grid with the MNI 2 mm bounding box at ``voxel_size`` mm.

    Parameters
    ----------
    voxel_size : float
        Isotropic voxel size in mm (2 gives the real ``res-2`` grid, ``(97, 115, 97)``).

    Returns
    -------
    Grid
    """
    if voxel_size <= 0:
        raise ValueError(f"voxel size must be positive, got {voxel_size} mm")
    shape = tuple(int(math.ceil(extent / voxel_size)) + 1 for extent in BOX_EXTENT_MM)
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = BOX_ORIGIN_MM
    return Grid(shape=shape, affine=affine, voxel_size=float(voxel_size))


def normalised_radius(xyz: np.ndarray) -> np.ndarray:
    """Ellipsoidal radius of points: 0 at the brain centre, 1 on the brain surface.

    Parameters
    ----------
    xyz : numpy.ndarray, shape (..., 3)
        World coordinates in mm.

    Returns
    -------
    numpy.ndarray, shape (...)
    """
    scaled = (xyz - BRAIN_CENTER_MM) / BRAIN_SEMI_AXES_MM
    return np.sqrt(np.sum(scaled**2, axis=-1))


def ventricle_mask(xyz: np.ndarray) -> np.ndarray:
    """Whether points fall in one of the two lateral ventricles.

    Parameters
    ----------
    xyz : numpy.ndarray, shape (..., 3)
        World coordinates in mm.

    Returns
    -------
    numpy.ndarray of bool, shape (...)
    """
    inside = np.zeros(xyz.shape[:-1], dtype=bool)
    for side in (-1.0, 1.0):
        centre = VENTRICLE_CENTER_MM * np.array([side, 1.0, 1.0])
        scaled = (xyz - centre) / VENTRICLE_SEMI_AXES_MM
        inside |= np.sum(scaled**2, axis=-1) <= 1.0
    return inside


@dataclass(frozen=True)
class TissueMasks:
    """Boolean tissue masks on one grid, each of shape ``grid.shape``.

    ``brain`` is the union of the others; ``csf`` and ``white_matter`` feed the fMRIPrep-style
    ``csf`` / ``white_matter`` confounds and the aCompCor masks.
    """

    brain: np.ndarray
    cortex: np.ndarray
    csf: np.ndarray
    white_matter: np.ndarray


def tissue_masks(grid: Grid, deep_grey: np.ndarray | None = None) -> TissueMasks:
    """Pseudo-tissue masks of the ellipsoid brain on ``grid``.

    Parameters
    ----------
    grid : Grid
    deep_grey : numpy.ndarray of bool, shape grid.shape, optional
        Voxels of sub-cortical grey matter to keep out of the white-matter mask.

    Returns
    -------
    TissueMasks
    """
    xyz = grid.world_coordinates()
    rho = normalised_radius(xyz)
    brain = rho <= 1.0
    cortex = (rho >= CORTEX_RHO[0]) & (rho <= CORTEX_RHO[1])
    ventricles = ventricle_mask(xyz) & brain
    csf = ventricles | (brain & (rho > CORTEX_RHO[1]))
    white_matter = brain & (rho < CORTEX_RHO[0] - 0.03) & ~ventricles
    if deep_grey is not None:
        white_matter &= ~deep_grey
    return TissueMasks(brain=brain, cortex=cortex, csf=csf, white_matter=white_matter)
