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
    return _load_with_axes(path, kind)[0]


def _load_with_axes(path: str | os.PathLike, kind: str) -> tuple[nib.Cifti2Image, list]:
    """:func:`load_cifti` and the file's axes (building a 91k BrainModelAxis takes a second: once)."""
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
    return img, axes


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


def cifti_parcels(series_axis: nib.cifti2.BrainModelAxis, dlabel_file, indices) -> CiftiParcels:
    """Match the grayordinates of a dtseries (its BrainModelAxis) to the ROIs ``indices`` of a
    dlabel (one per column)."""
    dlabel, (_, label_axis) = _load_with_axes(dlabel_file, "dlabel")
    values = np.asarray(dlabel.dataobj)[0]
    labels = grayordinate_labels(series_axis, label_axis, values, dlabel_file)
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
    dtseries_file: str | os.PathLike, dlabel_file: str | os.PathLike, indices, block_size: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Mean signal per ROI over its grayordinates in a dtseries.

    The file is read in blocks of ``block_size`` grayordinates: CIFTI stores each grayordinate's
    series contiguously, so a block is one read (a block of rows would be one read per
    grayordinate), and memory stays at about T x ``block_size`` x 8 bytes.

    Returns
    -------
    signals : (T, R) float64
        NaN for ROIs with no grayordinate in the dtseries.
    coverage : (R,) float64
        Share of each ROI's dlabel grayordinates present in the dtseries.
    """
    img, (_, series_axis) = _load_with_axes(dtseries_file, "dtseries")
    parcels = cifti_parcels(series_axis, dlabel_file, indices)
    if parcels.present.size == 0:
        raise DataError(
            f"no atlas ROI has a grayordinate in {dtseries_file}; is it a fsLR 91k dtseries and the atlas "
            "an fsLR 32k dlabel?"
        )
    sums = np.zeros((img.shape[0], len(parcels.counts)))
    column = np.full(img.shape[1], -1, np.int64)
    column[parcels.order] = np.repeat(parcels.present, np.diff([*parcels.starts, parcels.order.size]))
    for first in range(0, img.shape[1], block_size):
        # this block's ROI grayordinates, still sorted by ROI (``order`` is)
        mine = parcels.order[(parcels.order >= first) & (parcels.order < first + block_size)]
        if mine.size == 0:
            continue
        block = np.asarray(img.dataobj[:, first : first + block_size])  # (T, b), as stored
        rois, starts = np.unique(column[mine], return_index=True)
        # summed in float64, as the volumetric parcel means are
        sums[:, rois] += np.add.reduceat(block[:, mine - first], starts, axis=1, dtype=np.float64)
    if not np.isfinite(sums[:, parcels.present]).all():
        rows = np.flatnonzero(~np.isfinite(sums[:, parcels.present]).all(axis=1))
        raise DataError(
            f"{dtseries_file} has NaN or Inf values in atlas grayordinates (rows {rows[0]}-{rows[-1]}); "
            "check the preprocessing of this run."
        )
    signals = np.full_like(sums, np.nan)
    signals[:, parcels.present] = sums[:, parcels.present] / parcels.counts[parcels.present]
    return signals, parcels.coverage
