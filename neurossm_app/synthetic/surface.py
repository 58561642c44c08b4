"""A small synthetic fsLR surface: the Schaefer-400 dlabel and 91k-style dtseries on it.

Real CIFTI-2 axes (nibabel's ``BrainModelAxis``, ``LabelAxis``, ``SeriesAxis``), few vertices:
each Schaefer parcel of the synthetic atlas gets :data:`VERTICES_PER_PARCEL` vertices (placed on
voxels of that parcel), and each hemisphere :data:`MEDIAL_WALL` unlabelled "medial wall"
vertices. Vertex numbers are shuffled with a fixed seed, so the dlabel (every vertex, in vertex
order, as TemplateFlow's) and a dtseries (the labelled vertices only, as HCP's, then subcortical
voxels the cortical atlas does not label) line up only when matched by structure and vertex.
The geometry is fixed, like the volumetric atlases', so one atlas cache serves every dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.spatial import cKDTree

from neurossm_app.atlases import fslr_dlabel_name
from neurossm_app.synthetic.atlas import SCHAEFER_DESCS, build_atlas_volumes, schaefer_label_table

VERTICES_PER_PARCEL = 3
MEDIAL_WALL = 40
STRUCTURES = ("CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT")
_SUBCORTEX = ("CIFTI_STRUCTURE_THALAMUS_LEFT", "CIFTI_STRUCTURE_THALAMUS_RIGHT")
_SEED = 32


@dataclass(frozen=True)
class Hemisphere:
    """One hemisphere's vertices: ``labels[v]`` (0: medial wall) and ``xyz[v]`` (mm) of vertex v."""

    structure: str
    labels: np.ndarray  # (N,) int
    xyz: np.ndarray  # (N, 3) float


@cache
def build_surface() -> tuple[Hemisphere, Hemisphere]:
    """The two synthetic hemispheres (cached; independent of any dataset seed)."""
    volumes = build_atlas_volumes()
    rng = np.random.default_rng(_SEED)
    world = volumes.grid.world_coordinates().reshape(-1, 3)
    flat = volumes.schaefer.ravel()
    by_parcel = np.argsort(flat, kind="stable")  # voxels grouped by parcel, each group in C order
    ends = np.cumsum(np.bincount(flat, minlength=401))
    hemispheres = []
    for structure, parcels in zip(STRUCTURES, (range(1, 201), range(201, 401)), strict=True):
        labels, points = [], []
        for parcel in parcels:
            voxels = by_parcel[ends[parcel - 1] : ends[parcel]]
            chosen = voxels[np.linspace(0, len(voxels) - 1, VERTICES_PER_PARCEL).astype(int)]
            labels += [parcel] * VERTICES_PER_PARCEL
            points.append(world[chosen])
        wall = np.concatenate(points)[rng.choice(len(labels), MEDIAL_WALL, replace=False)]
        labels += [0] * MEDIAL_WALL
        xyz = np.concatenate([*points, wall])
        order = rng.permutation(len(labels))  # vertex v is point order[v]
        hemispheres.append(Hemisphere(structure, np.asarray(labels)[order], xyz[order]))
    return tuple(hemispheres)


def _surface_axis(hemispheres, labelled_only: bool) -> nib.cifti2.BrainModelAxis:
    axis = None
    for hemi in hemispheres:
        vertices = np.flatnonzero(hemi.labels) if labelled_only else np.arange(len(hemi.labels))
        part = nib.cifti2.BrainModelAxis.from_surface(vertices, len(hemi.labels), hemi.structure)
        axis = part if axis is None else axis + part
    return axis


def write_fslr_dlabel(tpl_dir: Path, desc: str) -> Path:
    """TemplateFlow's fsLR Schaefer dlabel name in ``tpl_dir``, on the synthetic surface."""
    hemispheres = build_surface()
    table = schaefer_label_table(desc)
    colours = {
        int(i): tuple(int(c[k : k + 2], 16) / 255 for k in (1, 3, 5)) + (1.0,)
        for i, c in zip(table["index"], table["color"], strict=True)
    }
    names = dict(zip(table["index"].astype(int), table["name"], strict=True))
    label_table = {0: ("???", (0.0, 0.0, 0.0, 0.0)), **{i: (names[i], colours[i]) for i in names}}
    label_axis = nib.cifti2.LabelAxis([f"Schaefer2018_{desc}"], [label_table])
    values = np.concatenate([h.labels for h in hemispheres]).astype(np.float32)[None, :]
    header = nib.cifti2.Cifti2Header.from_axes((label_axis, _surface_axis(hemispheres, False)))
    image = nib.Cifti2Image(values, header)
    image.nifti_header.set_intent("ConnDenseLabel")
    path = tpl_dir / fslr_dlabel_name(desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def install_fslr_dlabels(templateflow_home: Path) -> list[Path]:
    """Both Schaefer-400 dlabels (17 and 7 networks) under ``TEMPLATEFLOW_HOME/tpl-fsLR``."""
    return [write_fslr_dlabel(Path(templateflow_home) / "tpl-fsLR", desc) for desc in SCHAEFER_DESCS.values()]


def vertex_sources(anatomy) -> np.ndarray:
    """For each labelled vertex (the dtseries' cortical grayordinates, in axis order), the row of
    the simulated BOLD (an in-brain voxel of ``anatomy``) that it samples: the nearest voxel of
    the same parcel, else the nearest cortical voxel."""
    cortex = np.flatnonzero(anatomy.tissue["cortex"])
    anywhere = cKDTree(anatomy.xyz[cortex])
    members = {int(p): np.flatnonzero(anatomy.schaefer == p) for p in np.unique(anatomy.schaefer) if p}
    rows = []
    for hemi in build_surface():
        for vertex in np.flatnonzero(hemi.labels):
            same = members.get(int(hemi.labels[vertex]))
            if same is not None:
                rows.append(same[np.argmin(np.linalg.norm(anatomy.xyz[same] - hemi.xyz[vertex], axis=1))])
            else:
                rows.append(cortex[anywhere.query(hemi.xyz[vertex])[1]])
    return np.asarray(rows, dtype=np.int64)


def write_dtseries(
    path: Path, bold: np.ndarray, anatomy, tr: float, sources: np.ndarray | None = None
) -> Path:
    """A dtseries of one simulated run: the labelled vertices of :func:`build_surface`, then the
    deep-grey voxels as left and right thalamus (which no cortical parcel labels).

    ``bold`` is the run's (V, T) in-brain voxel series (C order of ``anatomy.brain``);
    ``sources`` is :func:`vertex_sources` of ``anatomy`` (computed when not given).
    """
    deep = np.flatnonzero(anatomy.tissue["deep_grey"])
    ijk = np.argwhere(anatomy.brain)[deep]
    axis = _surface_axis(build_surface(), True)
    for structure, side in zip(
        _SUBCORTEX, (anatomy.xyz[deep, 0] < 0, anatomy.xyz[deep, 0] >= 0), strict=True
    ):
        if side.any():
            axis = axis + nib.cifti2.BrainModelAxis.from_mask(
                _mask(ijk[side], anatomy.grid.shape), structure, anatomy.grid.affine
            )
    side_rows = [deep[s] for s in (anatomy.xyz[deep, 0] < 0, anatomy.xyz[deep, 0] >= 0) if s.any()]
    sources = vertex_sources(anatomy) if sources is None else sources
    rows = np.concatenate([sources, *[_in_mask_order(r, anatomy) for r in side_rows]])
    series = nib.cifti2.SeriesAxis(start=0.0, step=float(tr), size=bold.shape[1], unit="SECOND")
    image = nib.Cifti2Image(
        bold[rows].T.astype(np.float32), nib.cifti2.Cifti2Header.from_axes((series, axis))
    )
    image.nifti_header.set_intent("ConnDenseSeries")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def _mask(ijk: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(ijk.T)] = True
    return mask


def _in_mask_order(rows: np.ndarray, anatomy) -> np.ndarray:
    """``rows`` (in-brain voxel rows) sorted as ``BrainModelAxis.from_mask`` lists their voxels."""
    ijk = np.argwhere(anatomy.brain)[rows]
    return rows[np.lexsort(ijk.T[::-1])]
