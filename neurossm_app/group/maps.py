"""ROI vectors <-> atlas-grid NIfTI images, and the scores that compare two ROI vectors.

An ROI-space map is a volume on the atlas grid (same shape and affine as the atlas image) in
which every voxel of ROI r holds the value of ROI r, and voxels outside the ROIs hold 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neurossm_app.errors import DataError
from neurossm_app.files import atomic_path, write_json, write_text

#: Fraction of the ROIs in a "top" mask.
TOP_FRACTION = 0.25


def roi_indices(atlas_names: tuple[str, ...], atlas_indices: tuple[int, ...], roi_names: tuple[str, ...]):
    """The label value in the atlas image of every ROI in ``roi_names``, (R,) int64.

    Raises
    ------
    DataError
        An ROI of the time series is not in the atlas label table.
    """
    lookup = dict(zip(atlas_names, atlas_indices, strict=True))
    missing = [name for name in roi_names if name not in lookup]
    if missing:
        raise DataError(
            f"{len(missing)} ROI(s) of the time series are not in the atlas label table "
            f"(first: {missing[0]!r}); the participant level used another atlas version."
        )
    return np.array([lookup[name] for name in roi_names], dtype=np.int64)


def roi_volume(atlas_img, indices: np.ndarray, values: np.ndarray, dtype: Any = np.float32):
    """A volume on the atlas grid holding ``values[r]`` in the voxels of ROI ``indices[r]``.

    Parameters
    ----------
    atlas_img : nibabel.Nifti1Image
        Integer label image.
    indices : numpy.ndarray, (R,) int
        Label values of the ROIs.
    values : numpy.ndarray, (R,)
    dtype
        Output data type (float32 for scores, uint8 for masks, int16 for segmentations).

    Returns
    -------
    nibabel.Nifti1Image
        Same shape and affine as ``atlas_img``; 0 outside the ROIs.
    """
    import nibabel as nib

    labels = np.asarray(atlas_img.dataobj).astype(np.int64)
    lut = np.zeros(max(int(labels.max()), int(np.max(indices))) + 1, dtype=np.float64)
    lut[np.asarray(indices)] = np.asarray(values, dtype=np.float64)
    data = np.where(labels > 0, lut[np.clip(labels, 0, None)], 0).astype(dtype)
    image = nib.Nifti1Image(data, atlas_img.affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(atlas_img.affine, code=4)  # MNI
    image.header.set_sform(atlas_img.affine, code=4)
    return image


def parcellate(image, atlas_img, indices: np.ndarray) -> np.ndarray:
    """Mean of ``image`` within every ROI after resampling it to the atlas grid.

    Parameters
    ----------
    image : nibabel.Nifti1Image
        A 3-D statistical map (any MNI grid).
    atlas_img : nibabel.Nifti1Image
    indices : numpy.ndarray, (R,) int

    Returns
    -------
    numpy.ndarray, (R,) float64
        NaN for an ROI with no voxel in the atlas image.
    """
    from nilearn.image import resample_to_img

    resampled = resample_to_img(
        image, atlas_img, interpolation="continuous", force_resample=True, copy_header=True
    )
    values = np.asarray(resampled.dataobj, dtype=np.float64).ravel()
    labels = np.asarray(atlas_img.dataobj).astype(np.int64).ravel()
    values = np.where(np.isfinite(values), values, 0.0)
    return _label_means(labels, [values], indices)[0]


def roi_centroids(atlas_img, indices: np.ndarray) -> np.ndarray:
    """The centre of mass of every ROI's voxels in the atlas image's world space, (R, 3) mm.

    Parameters
    ----------
    atlas_img : nibabel.Nifti1Image
        Integer label image.
    indices : numpy.ndarray, (R,) int
        Label values of the ROIs.

    Returns
    -------
    numpy.ndarray, (R, 3) float64
        NaN rows for ROIs without a voxel.
    """
    labels = np.asarray(atlas_img.dataobj).astype(np.int64)

    def voxel_index(axis: int) -> np.ndarray:  # one axis at a time: 1 mm atlases are big
        shape = [1, 1, 1]
        shape[axis] = labels.shape[axis]
        return np.broadcast_to(np.arange(labels.shape[axis], dtype=np.float64).reshape(shape), labels.shape)

    flat = np.clip(labels, 0, None).ravel()
    ijk = _label_means(flat, (voxel_index(axis).ravel() for axis in range(3)), indices)  # (3, R) voxels
    return (atlas_img.affine[:3, :3] @ ijk + atlas_img.affine[:3, 3:]).T


def _label_means(labels: np.ndarray, weights, indices: np.ndarray) -> np.ndarray:
    """(K, R) mean of each of K per-voxel arrays over the voxels of label ``indices[r]``.

    ``labels`` is the flat (V,) non-negative label image, ``weights`` an iterable of (V,) arrays
    (consumed one at a time). NaN for a label with no voxel.
    """
    size = max(int(labels.max()), int(np.max(indices))) + 1
    counts = np.bincount(labels, minlength=size)
    sums = np.stack([np.bincount(labels, weights=w, minlength=size) for w in weights])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return means[:, np.asarray(indices)]


def top_mask(values: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Boolean mask of the ``ceil(fraction * R)`` largest values (ties broken by ROI order), (R,)."""
    values = np.asarray(values, dtype=np.float64)
    n_top = math.ceil(fraction * len(values))
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    mask = np.zeros(len(values), dtype=bool)
    mask[order[:n_top]] = True
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2 |a & b| / (|a| + |b|)`` of two boolean masks (NaN when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else float("nan")


def _design(n_rois: int, covariates: np.ndarray) -> np.ndarray:
    """An intercept and ``covariates`` (R, K), (R, K + 1)."""
    return np.column_stack([np.ones(n_rois), np.asarray(covariates, dtype=np.float64).reshape(n_rois, -1)])


def residualize(values: np.ndarray, covariates: np.ndarray) -> np.ndarray:
    """Least-squares residual of ``values`` (R,) on an intercept and ``covariates`` (R, K)."""
    design = _design(len(values), covariates)
    beta, *_ = np.linalg.lstsq(design, values, rcond=None)
    return values - design @ beta


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / denominator) if denominator > 1e-12 else float("nan")


def partial_correlation(
    x: np.ndarray,
    y: np.ndarray,
    covariates: np.ndarray,
    n_null: int = 1000,
    seed: int = 0,
    null_model: str = "permutation",
    distances: np.ndarray | None = None,
) -> tuple[float, float]:
    """Partial correlation of ``x`` and ``y`` given ``covariates``, with a one-sided p-value.

    Both vectors are residualized on an intercept and the covariates (least squares); r is the
    Pearson correlation of the residuals. The null: ``n_null`` maps of the residual of ``y``
    (:func:`neurossm_app.group.nulls.null_maps`: BrainSMASH surrogates that keep its spatial
    autocorrelation, given the ROIs' ``distances``, or ROI permutations, which do not), each
    residualized like ``y`` and correlated with the residual of ``x``;
    ``p = (1 + #{r_null >= r}) / (1 + n_null)`` (r greater than by chance).

    Returns
    -------
    r, p : float
        NaN when a residual is constant; ``p`` is NaN without null maps.
    """
    from neurossm_app.group.nulls import null_maps

    design = _design(len(x), covariates)
    rx = residualize(np.asarray(x, float), covariates)
    ry = residualize(np.asarray(y, float), covariates)
    r = _correlation(rx, ry)
    if not np.isfinite(r) or n_null < 1:
        return r, float("nan")
    maps = null_maps(ry, n_null, seed, null_model, distances)  # (N, R)
    residuals = maps - (maps @ np.linalg.pinv(design).T) @ design.T  # each residualized like y
    residuals -= residuals.mean(axis=1, keepdims=True)
    rx_c = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean())
    with np.errstate(invalid="ignore", divide="ignore"):
        null = (residuals @ rx_c) / np.linalg.norm(residuals, axis=1)
    return r, float((1 + np.sum(null >= r - 1e-12)) / (1 + n_null))


def save_nifti(path: Path, image, sidecar: dict[str, Any] | None = None) -> Path:
    """Write ``image`` atomically, and ``sidecar`` as ``<name>.json`` beside it."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    if sidecar is not None:
        write_json(Path(str(path).removesuffix(".nii.gz") + ".json"), sidecar)
    return path


def save_dseg_table(path: Path, names: list[str]) -> Path:
    """BIDS dseg look-up table: ``index\\tname`` rows, indices from 1 (0 is background)."""
    rows = ["index\tname", *(f"{i}\t{name}" for i, name in enumerate(names, start=1))]
    return write_text(path, "\n".join(rows) + "\n")


def describe(text: str, **extra: Any) -> dict[str, Any]:
    """JSON sidecar body: ``Description`` plus fields (kept JSON-serialisable)."""
    return json.loads(json.dumps({"Description": text, **extra}, default=str))


@dataclass(frozen=True)
class AtlasGrid:
    """The atlas image that ROI-space maps are written on, and the label value of every ROI.

    Attributes
    ----------
    image_path : Path
    image : nibabel.Nifti1Image
        Integer label image.
    indices : numpy.ndarray, (R,) int64
        Label value of each ROI, in the order of the time series' columns (:func:`roi_indices`).
    """

    image_path: Path
    image: Any
    indices: np.ndarray

    @classmethod
    def load(cls, atlas, roi_names: tuple[str, ...]) -> AtlasGrid:
        """From a :class:`neurossm_app.atlases.Atlas` and the ROI names of the time series."""
        import nibabel as nib

        return cls(atlas.image, nib.load(atlas.image), roi_indices(atlas.names, atlas.indices, roi_names))

    def volume(self, values: np.ndarray, dtype: Any = np.float32):
        """:func:`roi_volume` of ``values`` (R,) on this grid."""
        return roi_volume(self.image, self.indices, values, dtype)

    def parcellate(self, image) -> np.ndarray:
        """:func:`parcellate` of ``image`` with this atlas, (R,) (NaN for an ROI without voxels)."""
        return parcellate(image, self.image, self.indices)

    def centroids(self) -> np.ndarray:
        """:func:`roi_centroids` of this atlas, (R, 3) mm."""
        return roi_centroids(self.image, self.indices)
