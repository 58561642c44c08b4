"""Synthetic Schaefer-2018 (400 parcels) and AAL3v1 atlases, placed where the real fetchers look.

Geometry (fixed, independent of the dataset seed, so one atlas cache can serve many datasets):

- Schaefer-2018 400: a Voronoi tessellation (a few Lloyd iterations, scipy ``cKDTree``) of the
  cortical shell of the ellipsoid brain on the real 2 mm grid, 200 parcels per hemisphere
  (1-200 left, x < 0; 201-400 right). Parcels are numbered from posterior to anterior so the
  visual networks sit at the back, as in the real atlas. The 7- and 17-network versions share the
  volume (the real ones share parcel boundaries too); only the names differ.
- AAL3v1 (nilearn's ``version="3v2"``): each cortical AAL region is the union of whole Schaefer
  parcels of its hemisphere (assigned to rough MNI centroids of the real regions), so an effect
  planted in a cortical AAL region is carried fully by its Schaefer parcels and vice versa.
  Sub-cortical, cerebellar and brainstem regions are small blobs in the deep tissue.

Label names are the real ones: the Schaefer tables are TemplateFlow's own
``tpl-MNI152NLin2009cAsym_atlas-Schaefer2018_desc-400Parcels{7,17}Networks_dseg.tsv`` (identical
to CBIG's ``Schaefer2018_400Parcels_{7,17}Networks_order.txt`` names) and the AAL3v1 names and
indices (166 regions over 1-170; 35, 36, 81, 82 absent) are those of ``AAL3v1.xml``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from neurossm_app.atlases import SPACES, atlas_files, packaged_path, packaged_table
from neurossm_app.synthetic.files import write_json, write_nifti
from neurossm_app.synthetic.grid import (
    BRAIN_CENTER_MM,
    CORTEX_RHO,
    Grid,
    make_grid,
    normalised_radius,
    tissue_masks,
    ventricle_mask,
)

#: Constant seed of the atlas geometry (not the dataset seed: see the module docstring).
ATLAS_SEED = 2018
TEMPLATE = "MNI152NLin2009cAsym"
SCHAEFER_DESCS = {"schaefer400": "400Parcels17Networks", "schaefer400-7n": "400Parcels7Networks"}
N_PARCELS_PER_HEMISPHERE = 200
_LLOYD_ITERATIONS = 6
_DEEP_RHO = 0.70  # deep-tissue seeds are pulled inside this normalised radius
_BLOB_RADIUS_MM = {"subcortex": 7.0, "thalamus": 4.5, "cerebellum": 9.0, "brainstem": 4.0}


def _data_file(name: str) -> Path:
    return Path(str(resources.files("neurossm_app") / "data" / "synthetic" / name))


def schaefer_label_table(desc: str = "400Parcels17Networks") -> pd.DataFrame:
    """TemplateFlow's Schaefer-2018 label table.

    Parameters
    ----------
    desc : {"400Parcels17Networks", "400Parcels7Networks"}

    Returns
    -------
    pandas.DataFrame
        Columns ``index`` (1-400), ``name`` (e.g. ``17Networks_LH_VisCent_ExStr_1``), ``color``.
    """
    table = packaged_table(f"tpl-{TEMPLATE}_atlas-Schaefer2018_desc-{desc}_dseg.tsv")
    return table.astype({"index": int, "name": str, "color": str})


def aal3_region_table() -> pd.DataFrame:
    """AAL3v1 regions with the rough MNI centroids used to place them.

    Returns
    -------
    pandas.DataFrame
        Columns ``index``, ``name`` (e.g. ``Frontal_Sup_2_L``), ``x``, ``y``, ``z`` (mm) and
        ``kind`` (``cortex``, ``subcortex``, ``thalamus``, ``cerebellum``, ``brainstem``); 166 rows.
    """
    return packaged_table("aal3v1_regions.tsv")


@dataclass(frozen=True)
class AtlasVolumes:
    """The synthetic atlases on the real 2 mm grid.

    Attributes
    ----------
    grid : Grid
        The MNI152NLin2009cAsym ``res-2`` grid, shape ``(97, 115, 97)``.
    schaefer : numpy.ndarray of int16, shape (97, 115, 97)
        Parcel indices 1-400, 0 outside the cortex.
    aal : numpy.ndarray of int16, shape (97, 115, 97)
        AAL3v1 indices (1-170 with gaps), 0 elsewhere.
    aal_parcels : dict of int to list of int
        Cortical AAL index -> the Schaefer parcel indices that make it up.
    """

    grid: Grid
    schaefer: np.ndarray
    aal: np.ndarray
    aal_parcels: dict[int, list[int]]


def _lloyd_parcels(points: np.ndarray, n_parcels: int, rng: np.random.Generator) -> np.ndarray:
    """Voronoi parcels of ``points`` (shape (P, 3), mm) after Lloyd iterations; returns (P,) labels."""
    seeds = points[rng.choice(len(points), size=n_parcels, replace=False)]
    for _ in range(_LLOYD_ITERATIONS):
        _, labels = cKDTree(seeds).query(points)
        counts = np.bincount(labels, minlength=n_parcels)
        sums = np.stack([np.bincount(labels, weights=points[:, k], minlength=n_parcels) for k in range(3)], 1)
        filled = counts > 0
        seeds[filled] = sums[filled] / counts[filled, None]
    _, labels = cKDTree(seeds).query(points)
    return labels


def _assign_parcels_to_regions(parcel_xyz: np.ndarray, region_xyz: np.ndarray) -> np.ndarray:
    """Give each parcel (P, 3) one region (R, 3), every region at least one parcel; returns (P,)."""
    n_parcels, n_regions = len(parcel_xyz), len(region_xyz)
    slots = int(np.ceil(n_parcels / n_regions)) + 1
    cost = np.linalg.norm(parcel_xyz[:, None, :] - region_xyz[None, :, :], axis=-1)  # (P, R)
    slot_cost = np.repeat(cost, slots, axis=1)  # (P, R * slots)
    slot_cost[:, ::slots] -= 1e4  # the first slot of every region must be used
    rows, cols = linear_sum_assignment(slot_cost)
    assignment = np.empty(n_parcels, dtype=int)
    assignment[rows] = cols // slots
    return assignment


def _project_to_rho(xyz: np.ndarray, target_rho: float, only_outside: bool) -> np.ndarray:
    rho = normalised_radius(xyz)[:, None]
    scale = target_rho / np.maximum(rho, 1e-6)
    if only_outside:
        scale = np.minimum(scale, 1.0)
    return BRAIN_CENTER_MM + (xyz - BRAIN_CENTER_MM) * scale


@cache
def build_atlas_volumes() -> AtlasVolumes:
    """Build (once per process) the synthetic Schaefer-400 and AAL3v1 volumes on the 2 mm grid.

    Returns
    -------
    AtlasVolumes
    """
    rng = np.random.default_rng(ATLAS_SEED)
    grid = make_grid(2.0)
    xyz = grid.world_coordinates()
    masks = tissue_masks(grid)
    schaefer = np.zeros(grid.shape, dtype=np.int16)
    aal = np.zeros(grid.shape, dtype=np.int16)
    regions = aal3_region_table()
    aal_parcels: dict[int, list[int]] = {}

    for offset, in_hemi, suffix in ((0, xyz[..., 0] < 0, "_L"), (200, xyz[..., 0] > 0, "_R")):
        ijk = np.argwhere(masks.cortex & in_hemi)
        points = xyz[tuple(ijk.T)]
        labels = _lloyd_parcels(points, N_PARCELS_PER_HEMISPHERE, rng)
        centroids = np.stack([points[labels == k].mean(0) for k in range(N_PARCELS_PER_HEMISPHERE)])
        order = np.argsort(centroids[:, 1], kind="stable")  # posterior (visual) parcels first
        rank = np.empty_like(order)
        rank[order] = np.arange(N_PARCELS_PER_HEMISPHERE)
        schaefer[tuple(ijk.T)] = rank[labels] + 1 + offset
        parcel_xyz = centroids[order]  # row k = parcel offset + k + 1

        cortical = regions[(regions["kind"] == "cortex") & regions["name"].str.endswith(suffix)]
        targets = _project_to_rho(cortical[["x", "y", "z"]].to_numpy(float), np.mean(CORTEX_RHO), False)
        owner = _assign_parcels_to_regions(parcel_xyz, targets)
        parcel_to_aal = np.zeros(N_PARCELS_PER_HEMISPHERE + 1, dtype=np.int16)
        for k, region_row in enumerate(cortical.itertuples()):
            members = [int(p) + 1 + offset for p in np.flatnonzero(owner == k)]
            aal_parcels[int(region_row.index)] = members
            parcel_to_aal[np.flatnonzero(owner == k) + 1] = region_row.index
        in_cortex = schaefer[tuple(ijk.T)] - offset
        aal[tuple(ijk.T)] = parcel_to_aal[in_cortex]

    deep = regions[regions["kind"] != "cortex"]
    seeds = _project_to_rho(deep[["x", "y", "z"]].to_numpy(float), _DEEP_RHO, True)
    radius = deep["kind"].map(_BLOB_RADIUS_MM).to_numpy(float)
    deep_ijk = np.argwhere(
        masks.brain & (normalised_radius(xyz) < CORTEX_RHO[0] - 0.02) & ~ventricle_mask(xyz)
    )
    deep_xyz = xyz[tuple(deep_ijk.T)]
    distance, nearest = cKDTree(seeds).query(deep_xyz)
    keep = distance <= radius[nearest]
    # midline regions (vermis, raphe) take both sides; lateral ones stay on their own side
    side_ok = np.sign(deep_xyz[:, 0]) * np.sign(seeds[nearest, 0]) >= 0
    keep &= side_ok
    aal[tuple(deep_ijk[keep].T)] = deep["index"].to_numpy()[nearest[keep]]
    return AtlasVolumes(grid=grid, schaefer=schaefer, aal=aal, aal_parcels=aal_parcels)


def schaefer_names(atlas: str = "schaefer400") -> list[str]:
    """ROI names of a Schaefer atlas key, index order (``names[i - 1]`` is parcel ``i``)."""
    return schaefer_label_table(SCHAEFER_DESCS[atlas])["name"].tolist()


def aal_names() -> dict[int, str]:
    """AAL3v1 index -> region name."""
    table = aal3_region_table()
    return dict(zip(table["index"].astype(int), table["name"], strict=True))


def _aal_xml(names: dict[int, str]) -> str:
    """AAL3v1.xml in the layout nilearn parses (``<label><index/><name/></label>``)."""
    lines = [
        '<?xml version="1.0" encoding="ISO-8859-1"?>',
        '<atlas version="2.0">',
        "  <header>",
        "    <name>AAL3v1 (synthetic geometry, real labels; neurossm-synth)</name>",
        "  </header>",
        "  <data>",
    ]
    for index, name in names.items():
        lines.append(f"    <label><index>{index}</index><name>{name}</name></label>")
    lines += ["  </data>", "</atlas>", ""]
    return "\n".join(lines)


def install_atlases(cache_dir: Path) -> dict[str, Path]:
    """Write the synthetic atlases where TemplateFlow and nilearn look for them.

    Parameters
    ----------
    cache_dir : pathlib.Path
        Receives ``templateflow/`` (use as ``TEMPLATEFLOW_HOME``) and ``nilearn_data/`` (use as
        ``NILEARN_DATA`` or ``data_dir=``). Existing files with the same names are replaced.
        Schaefer-400 is written under the names of every template in
        :data:`neurossm_app.atlases.SPACES`, as ``neurossm-app-fetch`` fetches it.

    Returns
    -------
    dict of str to pathlib.Path
        ``templateflow_home``, ``nilearn_data`` and one entry per written atlas image.
    """
    volumes = build_atlas_volumes()
    affine = volumes.grid.affine
    tf_home = Path(cache_dir) / "templateflow"
    tpl_dir = tf_home / f"tpl-{TEMPLATE}"
    written: dict[str, Path] = {"templateflow_home": tf_home}
    write_json(
        tf_home / "dataset_description.json",
        {
            "Name": "TemplateFlow (synthetic subset written by neurossm-synth)",
            "BIDSVersion": "1.1.0",
            "DatasetType": "raw",
        },
    )
    template_description = json.loads(_data_file(f"tpl-{TEMPLATE}_template_description.json").read_text())
    write_json(tpl_dir / "template_description.json", template_description)
    # Schaefer in every template the participant level reads it from (one synthetic grid, so the
    # same parcels under each template's names); the first template's files are the returned ones
    for space in reversed(SPACES):
        for atlas in SCHAEFER_DESCS:
            volume, table = atlas_files(atlas, tf_home, Path(), space=space)
            written[atlas] = write_nifti(volume, volumes.schaefer, affine, xform_code="mni")
            # TemplateFlow's label tables are the same in both templates; ours is packaged once
            table.write_bytes(packaged_path(table.name.replace(space, TEMPLATE)).read_bytes())
    from neurossm_app.synthetic.surface import install_fslr_dlabels  # it builds on these volumes

    # --space fsLR: the dlabels of a small synthetic surface, as "<atlas>-fsLR"
    written.update(zip((f"{key}-fsLR" for key in SCHAEFER_DESCS), install_fslr_dlabels(tf_home), strict=True))

    nilearn_data = Path(cache_dir) / "nilearn_data"
    aal_dir = nilearn_data / "aal_3v2" / "AAL3"
    written["nilearn_data"] = nilearn_data
    written["aal3v2"] = write_nifti(aal_dir / "AAL3v1.nii", volumes.aal, affine, xform_code="mni")
    (aal_dir / "AAL3v1.xml").write_text(_aal_xml(aal_names()), encoding="ISO-8859-1")
    return written


#: ``atlas-`` label of the custom-atlas example (:func:`write_custom_atlas`).
CUSTOM_ATLAS_LABEL = "Synth100"


def write_custom_atlas(root: Path, label: str = CUSTOM_ATLAS_LABEL) -> dict[str, Path]:
    """A 100-parcel atlas as a user would bring it: a BIDS atlas dataset at ``root``.

    The parcels are the synthetic Schaefer-400 parcels merged four by four in their label order
    (50 per hemisphere, posterior to anterior), so an effect planted in Schaefer parcels is
    carried by theirs. Written in the bids-examples ``atlas-*`` layout, once per template of
    :data:`neurossm_app.atlases.SPACES`::

        root/dataset_description.json                              (DatasetType atlas)
        root/atlas-<label>_description.json
        root/tpl-<space>/anat/tpl-<space>_atlas-<label>_res-2_dseg.nii.gz (+ .json)
        root/tpl-<space>/anat/tpl-<space>_atlas-<label>_dseg.tsv   (index, name)

    Use it as ``-d atlases=root --atlas <label>``, or give one image to ``--atlas`` (its table is
    found without the ``res-`` entity).

    Returns
    -------
    dict of str to pathlib.Path
        ``root`` and one image per template (keyed by the template name).
    """
    volumes = build_atlas_volumes()
    parcels = np.where(volumes.schaefer > 0, (volumes.schaefer.astype(np.int16) - 1) // 4 + 1, 0)
    sides = ["LH"] * 50 + ["RH"] * 50
    table = pd.DataFrame(
        {"index": np.arange(1, 101), "name": [f"{label}_{s}_{i % 50 + 1}" for i, s in enumerate(sides)]}
    )
    root = Path(root)
    write_json(
        root / "dataset_description.json",
        {"Name": f"{label}: synthetic 100-parcel atlas (neurossm-synth)", "BIDSVersion": "1.10.0",
         "DatasetType": "atlas"},
    )  # fmt: skip
    write_json(
        root / f"atlas-{label}_description.json",
        {"Name": label, "Description": "synthetic Schaefer-400 parcels merged four by four",
         "License": "CC0"},
    )  # fmt: skip
    written = {"root": root}
    for space in SPACES:
        folder = root / f"tpl-{space}" / "anat"
        stem = f"tpl-{space}_atlas-{label}"
        written[space] = write_nifti(
            folder / f"{stem}_res-2_dseg.nii.gz", parcels.astype(np.int16), volumes.grid.affine
        )
        write_json(folder / f"{stem}_res-2_dseg.json", {"Type": "dseg", "SpatialReference": space})
        folder.joinpath(f"{stem}_dseg.tsv").write_text(table.to_csv(sep="\t", index=False))
    return written
