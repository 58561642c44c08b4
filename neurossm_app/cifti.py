"""CIFTI-2 grayordinates: dlabel label tables and per-parcel means of a dtseries.

Grayordinates are matched through nibabel's CIFTI-2 axes, never by position: a dtseries
grayordinate takes the label of the dlabel element with the same structure
(``CIFTI_STRUCTURE_CORTEX_LEFT``, ...) and the same vertex index (surfaces) or voxel (volumes).
HCP's 91k dtseries leave the medial wall out and list subcortical voxels that a cortical
parcellation does not label; TemplateFlow's fsLR dlabel files may list every vertex of the mesh.
Both are handled because neither order nor count is assumed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from neurossm_app.errors import DataError

#: Names a dlabel gives its unlabelled key (``???`` in Connectome Workbench files).
_UNLABELLED = {"???", "", "Unknown", "unknown", "Medial_Wall", "medial_wall"}
#: CIFTI series units -> seconds.
_TIME_UNITS = {"SECOND": 1.0, "MSEC": 1e-3, "USEC": 1e-6}


def load_cifti(path: str | os.PathLike, kind: str) -> nib.Cifti2Image:
    """A CIFTI-2 file whose last axis is a :class:`~nibabel.cifti2.BrainModelAxis`.

    ``kind`` is ``dtseries`` (first axis a SeriesAxis) or ``dlabel`` (first axis a LabelAxis).
    Raises :class:`DataError` (one line) when the file is not such a file.
    """
    try:
        img = nib.load(os.fspath(path))
        axes = [img.header.get_axis(i) for i in range(img.ndim)]
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for a broken file
        raise DataError(f"cannot read CIFTI file {path} ({type(err).__name__}); re-copy it.") from None
    first = nib.cifti2.SeriesAxis if kind == "dtseries" else nib.cifti2.LabelAxis
    if len(axes) != 2 or not isinstance(axes[0], first) or not isinstance(axes[1], nib.cifti2.BrainModelAxis):
        raise DataError(
            f"{path} is not a CIFTI-2 {kind} file ({first.__name__} x BrainModelAxis expected, found "
            f"{' x '.join(type(a).__name__ for a in axes)})."
        )
    return img


def dlabel_table(path: str | os.PathLike) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Label values and names of a dlabel's first map, without the unlabelled key (0, ``???``)."""
    label_axis = load_cifti(path, "dlabel").header.get_axis(0)
    table = label_axis.label[0]  # {key: (name, rgba)}
    pairs = sorted(
        (int(k), str(v[0])) for k, v in table.items() if int(k) != 0 and str(v[0]) not in _UNLABELLED
    )
    return tuple(k for k, _ in pairs), tuple(n for _, n in pairs)


def series_step(path: str | os.PathLike) -> float:
    """Seconds between the rows of a dtseries (its SeriesAxis step), for runs without a sidecar."""
    axis = load_cifti(path, "dtseries").header.get_axis(0)
    unit = str(axis.unit).upper()
    if unit not in _TIME_UNITS:
        raise DataError(f"{path}: the series axis is in {axis.unit}, not time; is it a dtseries of BOLD?")
    return float(axis.step) * _TIME_UNITS[unit]


def _elements(axis: nib.cifti2.BrainModelAxis) -> dict[str, dict]:
    """Per structure: element -> its position on the axis.

    An element is a vertex index (surface) or a voxel ``(i, j, k)`` (volume).
    """
    out = {}
    for name, where, sub in axis.iter_structures():
        positions = np.arange(axis.size)[where]
        if sub.volume_mask.any():
            keys = [tuple(int(c) for c in v) for v in sub.voxel]
        else:
            keys = [int(v) for v in sub.vertex]
        out[name] = dict(zip(keys, positions.tolist(), strict=True))
    return out


def _check_same_meshes(series: nib.cifti2.BrainModelAxis, labels: nib.cifti2.BrainModelAxis, path) -> None:
    """Refuse a dlabel on another mesh (vertex counts) or volume grid than the dtseries."""
    for name, count in series.nvertices.items():
        if name in labels.nvertices and labels.nvertices[name] != count:
            raise DataError(
                f"{path}: {name} has {labels.nvertices[name]} vertices in the atlas but {count} in the "
                "dtseries; the atlas must be on the same mesh (fsLR 32k for 91k grayordinates)."
            )
    if series.volume_mask.any() and labels.volume_mask.any():
        if series.volume_shape != labels.volume_shape or not np.allclose(series.affine, labels.affine):
            raise DataError(
                f"{path}: the atlas's volume grid is not the dtseries's; use an atlas on its grid."
            )


def grayordinate_labels(
    series_axis, label_axis, label_values: np.ndarray, dlabel_path: str | os.PathLike = "the atlas"
) -> np.ndarray:
    """The dlabel value of every dtseries grayordinate, matched by structure and vertex or voxel.

    Parameters
    ----------
    series_axis, label_axis : BrainModelAxis
        The dtseries's and the dlabel's grayordinates.
    label_values : (G_label,) int
        The dlabel's first map.

    Returns
    -------
    (G_series,) int64
        0 where the dlabel has no such element (or labels it 0).
    """
    _check_same_meshes(series_axis, label_axis, dlabel_path)
    label_values = np.asarray(label_values).astype(np.int64)
    labels_of = _elements(label_axis)
    out = np.zeros(series_axis.size, np.int64)
    for name, lookup in _elements(series_axis).items():
        if name not in labels_of:
            continue
        theirs = labels_of[name]
        for element, position in lookup.items():
            found = theirs.get(element)
            if found is not None:
                out[position] = label_values[found]
    return out


@dataclass(frozen=True)
class CiftiParcels:
    """Which dtseries grayordinates belong to which ROI."""

    order: np.ndarray  # (G_roi,) grayordinate positions sorted by ROI column
    starts: np.ndarray  # (n_present,) start of each present ROI in ``order``
    present: np.ndarray  # (n_present,) column of each present ROI
    counts: np.ndarray  # (R,) grayordinates per ROI in the dtseries
    coverage: np.ndarray  # (R,) share of each ROI's dlabel elements found in the dtseries


def cifti_parcels(dtseries_file, dlabel_file, indices) -> CiftiParcels:
    """Match the grayordinates of a dtseries to the ROIs ``indices`` of a dlabel (one per column)."""
    series_axis = load_cifti(dtseries_file, "dtseries").header.get_axis(1)
    dlabel = load_cifti(dlabel_file, "dlabel")
    values = np.asarray(dlabel.dataobj)[0]
    labels = grayordinate_labels(series_axis, dlabel.header.get_axis(1), values, dlabel_file)
    indices = np.asarray(indices, dtype=np.int64)
    lookup = {int(v): i for i, v in enumerate(indices)}
    column = np.array([lookup.get(int(v), -1) for v in labels], np.int64)
    totals = np.array([np.count_nonzero(values == v) for v in indices], np.float64)
    counts = np.bincount(column[column >= 0], minlength=indices.size)
    coverage = np.where(totals > 0, counts / np.maximum(totals, 1), 0.0)
    inside = np.flatnonzero(column >= 0)
    order = inside[np.argsort(column[inside], kind="stable")]
    present, starts = np.unique(column[order], return_index=True)
    return CiftiParcels(order, starts, present, counts, coverage)


def cifti_parcel_means(
    dtseries_file: str | os.PathLike, dlabel_file: str | os.PathLike, indices, block_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Mean signal per ROI over its grayordinates in a dtseries.

    Returns
    -------
    signals : (T, R) float64
        NaN for ROIs with no grayordinate in the dtseries.
    coverage : (R,) float64
        Share of each ROI's dlabel grayordinates present in the dtseries.
    """
    parcels = cifti_parcels(dtseries_file, dlabel_file, indices)
    if parcels.present.size == 0:
        raise DataError(
            f"no atlas ROI has a grayordinate in {dtseries_file}; is it a fsLR 91k dtseries and the atlas "
            "an fsLR 32k dlabel?"
        )
    img = load_cifti(dtseries_file, "dtseries")
    n_vols = img.shape[0]
    signals = np.full((n_vols, len(parcels.counts)), np.nan)
    for start in range(0, n_vols, block_size):
        block = np.asarray(img.dataobj[start : start + block_size], dtype=np.float64)  # (b, G)
        sums = np.add.reduceat(block[:, parcels.order], parcels.starts, axis=1)  # (b, n_present)
        if not np.isfinite(sums).all():
            raise DataError(
                f"{dtseries_file} has NaN or Inf values in atlas grayordinates (rows {start}-"
                f"{start + block.shape[0] - 1}); check the preprocessing of this run."
            )
        signals[start : start + block.shape[0], parcels.present] = sums / parcels.counts[parcels.present]
    return signals, parcels.coverage
