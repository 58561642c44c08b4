"""Parcel means of a 4D image: neurossm-app's streaming extraction vs nilearn's masker vs reading.

Each measurement runs in its own process and reports its wall time and peak resident memory,
so the numbers do not contaminate each other. Images are synthetic, on the real 2 mm
MNI152NLin2009cAsym grid (97 x 115 x 97), with 400 parcels, gzipped.

    python benchmarks/bench_parcellate.py --lengths 300 1200 --json results.json
    python benchmarks/bench_parcellate.py --lengths 1200 --threads 1 2   # ours at 1 and 2 threads

Prints a markdown table with ratios (docs/performance.md holds the last run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (97, 115, 97)
AFFINE = np.array([[2.0, 0, 0, -96], [0, 2.0, 0, -132], [0, 0, 2.0, -78], [0, 0, 0, 1]])
N_PARCELS = 400


def make_inputs(folder: Path, n_vols: int, seed: int = 0) -> dict[str, Path]:
    """Write a gzipped 4D image, a 400-parcel atlas and a brain mask into ``folder``."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1).reshape(-1, 3)
    centre = (np.array(SHAPE) - 1) / 2
    radius = np.array([38.0, 48.0, 38.0])
    inside = (((grid - centre) / radius) ** 2).sum(axis=1) <= 1.0
    seeds = grid[inside][rng.choice(inside.sum(), N_PARCELS, replace=False)]
    labels = np.zeros(len(grid), np.int16)
    labels[inside] = cKDTree(seeds).query(grid[inside])[1] + 1
    labels = labels.reshape(SHAPE)
    mask = inside.reshape(SHAPE).copy()
    mask[:, :, :8] = False  # part of some parcels outside the mask, as with real data

    paths = {
        "atlas": folder / "atlas.nii.gz",
        "mask": folder / "mask.nii.gz",
        "bold": folder / f"bold_{n_vols}.nii.gz",
    }
    nib.save(nib.Nifti1Image(labels, AFFINE), paths["atlas"])
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), paths["mask"])
    parcel_signal = rng.normal(size=(N_PARCELS + 1, n_vols)).cumsum(axis=1).astype(np.float32)
    header = nib.Nifti1Header()
    header.set_data_shape((*SHAPE, n_vols))
    header.set_data_dtype(np.float32)
    header.set_zooms((2.0, 2.0, 2.0, 2.0))
    img = nib.Nifti1Image(np.zeros((1, 1, 1, 1), np.float32), AFFINE, header)
    img.header.set_data_shape((*SHAPE, n_vols))
    # Write volume by volume so making a 1200-volume image never holds it whole in memory.
    with nib.openers.Opener(paths["bold"], "wb") as handle:
        img.header.write_to(handle)
        handle.write(b"\x00" * (int(img.header["vox_offset"]) - handle.tell()))
        flat_labels = labels.ravel(order="F")
        for t in range(n_vols):
            volume = (
                1000
                + 20 * parcel_signal[flat_labels, t]
                + rng.normal(0, 5, flat_labels.size).astype(np.float32)
            )
            handle.write(volume.astype("<f4").tobytes())
    return paths


def _worker(method: str, paths: dict[str, str]) -> dict:
    start = time.perf_counter()
    if method == "read":
        data = np.asarray(nib.load(paths["bold"]).dataobj)
        signals = np.zeros((data.shape[-1], 1))
    elif method == "masker":
        from nilearn.maskers import NiftiLabelsMasker

        masker = NiftiLabelsMasker(labels_img=paths["atlas"], mask_img=paths["mask"], strategy="mean")
        signals = masker.fit_transform(paths["bold"])
    else:  # ours-<N>t: N threads inflate (ISA-L for one, rapidgzip for more)
        from neurossm_app.participant.parcellate import parcel_means

        labels = np.asarray(nib.load(paths["atlas"]).dataobj)
        mask = np.asarray(nib.load(paths["mask"]).dataobj) > 0
        n_threads = int(method.removeprefix("ours-").removesuffix("t"))
        signals, _ = parcel_means(
            paths["bold"], labels, mask, np.arange(1, N_PARCELS + 1), n_threads=n_threads
        )
        signals = signals[:, ~np.isnan(signals).all(axis=0)]
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(paths["out"], signals)
    return {"method": method, "wall_s": wall, "peak_mb": peak_mb}


def _measure(method: str, paths: dict[str, Path], out: Path) -> dict:
    spec = json.dumps({**{k: str(v) for k, v in paths.items()}, "out": str(out)})
    result = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--paths", spec],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[300, 1200])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", type=Path, help="folder for the images (default: a temporary one)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="inflate threads of ours")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of each ours-<N>t, interleaved; the fastest is kept"
    )
    parser.add_argument("--only-ours", action="store_true", help="skip the read and masker references")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, json.loads(args.paths))))
        return

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-parcellate-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n_vols in args.lengths:
        paths = make_inputs(folder, n_vols)
        size_mb = os.path.getsize(paths["bold"]) / 1e6
        results = {} if args.only_ours else {"read": _measure("read", paths, folder / f"read_{n_vols}.npy")}
        for _ in range(args.rounds):  # ours at each thread count, alternating (load hits all alike)
            for method in (f"ours-{n}t" for n in args.threads):
                result = _measure(method, paths, folder / f"{method}_{n_vols}.npy")
                result["rounds_s"] = [*results.get(method, {}).get("rounds_s", []), result["wall_s"]]
                if method not in results or result["wall_s"] < results[method]["wall_s"]:
                    results[method] = result
                else:
                    results[method]["rounds_s"] = result["rounds_s"]
        ours = np.load(folder / f"ours-{args.threads[0]}t_{n_vols}.npy")
        rel = float("nan")
        if not args.only_ours:
            results["masker"] = _measure("masker", paths, folder / f"masker_{n_vols}.npy")
            theirs = np.load(folder / f"masker_{n_vols}.npy")
            rel = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        rows.append(
            {"volumes": n_vols, "gz_mb": size_mb, "rel_error": rel, **{m: r for m, r in results.items()}}
        )
        print(
            f"T={n_vols}: "
            + ", ".join(f"{m} {r['wall_s']:.1f} s / {r['peak_mb']:.0f} MB" for m, r in results.items()),
            file=sys.stderr,
        )

    print(
        "| T | .nii.gz MB | read s | ours s | masker s | masker/ours | ours/read "
        "| read MB | ours MB | masker MB | max rel. error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in [] if args.only_ours else rows:
        r, o, m = row["read"], row[f"ours-{args.threads[0]}t"], row["masker"]
        print(
            f"| {row['volumes']} | {row['gz_mb']:.0f} | {r['wall_s']:.1f} | {o['wall_s']:.1f} "
            f"| {m['wall_s']:.1f} "
            f"| {m['wall_s'] / o['wall_s']:.2f} | {o['wall_s'] / r['wall_s']:.2f} | {r['peak_mb']:.0f} "
            f"| {o['peak_mb']:.0f} | {m['peak_mb']:.0f} | {row['rel_error']:.1e} |"
        )
    if len(args.threads) > 1:
        print("\n| T | " + " | ".join(f"ours, {n} thread(s): s (rounds)" for n in args.threads) + " |")
        print("|---|" + "---|" * len(args.threads))
        for row in rows:
            cells = [row[f"ours-{n}t"] for n in args.threads]
            shown = [f"{c['wall_s']:.1f} ({', '.join(f'{t:.1f}' for t in c['rounds_s'])})" for c in cells]
            print(f"| {row['volumes']} | " + " | ".join(shown) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
