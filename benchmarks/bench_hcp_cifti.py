"""HCP-size inputs: the confounds pass over a volumetric HCP run and the parcellation of a 91k dtseries.

Two numbers for docs/performance.md ("Participant level: HCP inputs and grayordinates"):

- ``tissue_signals``: the one pass over an HCP volumetric run (FSL MNI152 2 mm grid, 91 x 109 x 91)
  that ``--input-type hcp`` makes for the WM, CSF and global signals of its confounds table;
- ``cifti_parcel_means``: 400 parcels of an fsLR 32k dlabel over a dtseries laid out as HCP's
  (29,696 + 29,716 cortical vertices of 32,492, then subcortical voxels), 1200 volumes.

The data are random (timing only), written once under ``--data`` and reused::

    .venv/bin/python benchmarks/bench_hcp_cifti.py --data /tmp/bench-hcp --volumes 200 1200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np

GRID = (91, 109, 91)
VERTICES = 32492
KEPT = {"CIFTI_STRUCTURE_CORTEX_LEFT": 29696, "CIFTI_STRUCTURE_CORTEX_RIGHT": 29716}


def volumetric_run(folder: Path, volumes: int, rng: np.random.Generator) -> tuple[Path, Path, Path]:
    """A gzipped 2 mm run (in-brain voxels only non-zero), its mask and a wmparc."""
    bold = folder / f"bold-{volumes}.nii.gz"
    mask_file, wmparc_file = folder / "mask.nii.gz", folder / "wmparc.nii.gz"
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [90, -126, -72]
    mask = np.zeros(GRID, bool)
    mask[15:76, 15:95, 10:80] = True
    if not bold.exists():
        base = rng.normal(1000, 50, GRID).astype(np.float32)
        data = base[..., None] + rng.normal(0, 5, (*GRID, volumes)).astype(np.float32)
        data[~mask] = 0
        image = nib.Nifti1Image(data, affine)
        image.header.set_zooms((2, 2, 2, 0.72))
        nib.save(image, bold)
        wmparc = np.zeros(GRID, np.int16)
        wmparc[mask] = 5001
        wmparc[40:50, 50:60, 40:50] = 4
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), mask_file)
        nib.save(nib.Nifti1Image(wmparc, affine), wmparc_file)
    return bold, mask_file, wmparc_file


def cifti_run(folder: Path, volumes: int, rng: np.random.Generator) -> tuple[Path, Path]:
    """A dtseries with HCP's grayordinate counts (random medial walls) and a 400-parcel dlabel."""
    dtseries, dlabel = folder / f"run-{volumes}.dtseries.nii", folder / "atlas.dlabel.nii"
    if dtseries.exists():
        return dtseries, dlabel
    axis = None
    for structure, count in KEPT.items():
        part = nib.cifti2.BrainModelAxis.from_surface(
            np.sort(rng.choice(VERTICES, count, replace=False)), VERTICES, structure
        )
        axis = part if axis is None else axis + part
    deep = np.zeros(GRID, bool)
    deep[30:60, 40:70, 20:55] = True
    axis = axis + nib.cifti2.BrainModelAxis.from_mask(
        deep, "CIFTI_STRUCTURE_THALAMUS_LEFT", np.diag([-2.0, 2, 2, 1])
    )
    series = nib.cifti2.SeriesAxis(0.0, 0.72, volumes, "SECOND")
    data = rng.normal(size=(volumes, axis.size)).astype(np.float32)
    nib.save(nib.Cifti2Image(data, nib.cifti2.Cifti2Header.from_axes((series, axis))), str(dtseries))
    full = nib.cifti2.BrainModelAxis.from_surface(
        np.arange(VERTICES), VERTICES, "CIFTI_STRUCTURE_CORTEX_LEFT"
    )
    full = full + nib.cifti2.BrainModelAxis.from_surface(
        np.arange(VERTICES), VERTICES, "CIFTI_STRUCTURE_CORTEX_RIGHT"
    )
    values = np.concatenate([rng.integers(1, 201, VERTICES), rng.integers(201, 401, VERTICES)])
    table = {
        0: ("???", (0.0, 0.0, 0.0, 0.0)),
        **{k: (f"parcel{k}", (1.0, 0.0, 0.0, 1.0)) for k in range(1, 401)},
    }
    labels = nib.cifti2.LabelAxis(["parcels"], [table])
    header = nib.cifti2.Cifti2Header.from_axes((labels, full))
    nib.save(nib.Cifti2Image(values[None].astype(np.float32), header), str(dlabel))
    return dtseries, dlabel


def main() -> None:
    from neurossm_app.cifti import cifti_parcel_means
    from neurossm_app.hcp import tissue_signals

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/bench-hcp"))
    parser.add_argument("--volumes", type=int, nargs="+", default=[200, 1200])
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    opts.data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for volumes in opts.volumes:
        bold, mask, wmparc = volumetric_run(opts.data, volumes, rng)
        start = time.perf_counter()
        tissue_signals(bold, mask, wmparc)
        rows.append(("tissue_signals (HCP confounds pass)", volumes, time.perf_counter() - start))
        dtseries, dlabel = cifti_run(opts.data, volumes, rng)
        start = time.perf_counter()
        cifti_parcel_means(dtseries, dlabel, list(range(1, 401)))
        rows.append(("cifti_parcel_means (400 parcels, 91k)", volumes, time.perf_counter() - start))
    print("| step | volumes | seconds |\n|---|---|---|")
    for name, volumes, seconds in rows:
        print(f"| {name} | {volumes} | {seconds:.1f} |")
    if opts.json:
        opts.json.write_text(
            json.dumps([dict(zip(("step", "volumes", "seconds"), r, strict=True)) for r in rows])
        )


if __name__ == "__main__":
    main()
