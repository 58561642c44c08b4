"""Byte-for-byte reproducible writers (NIfTI-gz with gzip mtime 0, sorted JSON, TSV)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

#: gzip level for NIfTI files: noisy float data barely compresses, so favour speed.
GZIP_LEVEL = 1


def write_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    tr: float | None = None,
    xform_code: str = "mni",
) -> Path:
    """Write a NIfTI-1 image; ``.nii.gz`` paths are gzipped with mtime 0 (same bytes every run).

    Parameters
    ----------
    path : pathlib.Path
        ``.nii`` or ``.nii.gz`` destination (parents are created).
    data : numpy.ndarray, shape (X, Y, Z) or (X, Y, Z, T)
        Written with its own dtype.
    affine : numpy.ndarray, shape (4, 4)
    tr : float, optional
        Repetition time in seconds, stored in ``pixdim[4]`` of 4-D images.
    xform_code : str
        NIfTI qform/sform code name (``"mni"``, ``"scanner"``, ...).

    Returns
    -------
    pathlib.Path
    """
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_xyzt_units("mm", "sec")
    if data.ndim == 4:
        zooms = tuple(float(z) for z in np.abs(np.diag(affine)[:3]))
        header.set_zooms((*zooms, float(tr if tr is not None else 1.0)))
    image.set_qform(affine, code=xform_code)
    image.set_sform(affine, code=xform_code)
    raw = image.to_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0))
    else:
        path.write_bytes(raw)
    return path


def write_masked_series(
    path: Path,
    series: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    tr: float,
    *,
    xform_code: str = "mni",
) -> Path:
    """Stream a 4-D float32 ``.nii.gz`` volume by volume from in-mask time series.

    Never holds the whole 4-D array (a 2 mm, 200-volume run would be ~0.9 GB); the bytes are
    the same as :func:`write_nifti` would give up to the gzip level.

    Parameters
    ----------
    path : pathlib.Path
        ``.nii.gz`` destination.
    series : numpy.ndarray, shape (V, T)
        Time series of the ``V`` voxels of ``mask``, in C order of ``mask``; 0 elsewhere.
    mask : numpy.ndarray of bool, shape (X, Y, Z)
    affine : numpy.ndarray, shape (4, 4)
    tr : float
        Repetition time in seconds (``pixdim[4]``).

    Returns
    -------
    pathlib.Path
    """
    n_vols = series.shape[1]
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((*mask.shape, n_vols))
    header.set_xyzt_units("mm", "sec")
    header.set_zooms((*(float(z) for z in np.abs(np.diag(affine)[:3])), float(tr)))
    header.set_qform(affine, code=xform_code)
    header.set_sform(affine, code=xform_code)
    header["vox_offset"] = 352
    volume = np.zeros(mask.shape, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as stream,
    ):
        stream.write(header.binaryblock + b"\x00" * 4)  # 348-byte header + empty extension flag
        for frame in range(n_vols):
            volume[mask] = series[:, frame]
            stream.write(volume.tobytes(order="F"))
    return path


def write_json(path: Path, content: Any) -> Path:
    """Write indented, key-sorted JSON with a trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def write_tsv(path: Path, table: pd.DataFrame, *, float_format: str | None = None) -> Path:
    """Write a tab-separated table, missing values as ``n/a`` (BIDS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format=float_format, lineterminator="\n")
    return path
