"""The group level's data path at the scale of the study's cohorts: TSV parsing vs the series cache.

Two cohort shapes, scaled down by ``--scales`` (the fraction of their runs written):

- ``hcp-rest``: 4,000 runs (1,000 subjects x 4 runs) x 1,200 volumes x 400 ROIs, window 600;
- ``biobank``: 20,000 runs (one per subject) x 490 volumes x 400 ROIs, window 400.

The participant-level outputs are written directly (not through the participant level): the
``_stat-mean_timeseries.tsv`` files as the participant level formats them (``n/a`` for an
excluded ROI), from ``--templates`` distinct random series copied run after run (parsing cost
does not depend on the values), each run with its own JSON sidecar and coverage file, and a
``participants.tsv`` with the ``sex`` target.

Every measurement runs in a fresh Python process, one after the other, so each has its own
peak resident memory (``ru_maxrss``, which counts the memory-mapped pages a process touched) and
no state carries over:

- ``tsv``: today's path without a cache: pybids index (no saved index), then every TSV parsed and
  normalized into memory (``load_dataset`` without ``cache_dir``);
- ``cold``: no series cache and no saved pybids index yet: index (saved to ``--bids-database-dir``),
  parse, normalize and write the cache;
- ``warm``: both exist (a later call, or any unit of an array job after the first);
- ``train``: a warm start, then NeuroSSM's real training step (``training_batches`` +
  ``Optimisation.step``, batch 16) for ``--steps`` steps: time to the first step (from the start
  of the call's work, imports excluded) and steps per second after it; then evaluation of every
  scan at full length (``predict_proba``, batch 16); ``--model tiny`` (d_model 16, 1 layer,
  scale 1, raw) keeps the CPU step short so the data path shows; ``preset`` is the study's model
  (see ``bench_train.py`` for its step time alone);
- ``train-tsv``: the same on the in-memory series of the ``tsv`` path (peak memory side by side).

"Cold" means no cache: the TSVs were just written, so they are in the kernel's page cache (this
machine cannot drop it); on a cluster's file system a first read of them is slower still.

Usage::

    .venv/bin/python benchmarks/bench_group_scale.py --cohorts hcp-rest biobank --scales 0.025 0.05 \\
        --data /tmp/bench-group-scale --json group_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

COHORTS = {
    "hcp-rest": {"runs": 4000, "runs_per_subject": 4, "volumes": 1200, "rois": 400, "window": 600},
    "biobank": {"runs": 20000, "runs_per_subject": 1, "volumes": 490, "rois": 400, "window": 400},
}
ATLAS = "Schaefer400n17"
SPACE = "MNI152NLin2009cAsym"
STATUS = Path("/proc/self/status")


def write_cohort(root: Path, cohort: str, scale: float, templates: int, seed: int = 0) -> dict:
    """Participant-level outputs of ``scale`` x the cohort's runs under ``root/out``; returns its shape."""
    import numpy as np

    from neurossm_app.bids import build_path

    shape = COHORTS[cohort]
    n_runs = max(2 * shape["runs_per_subject"], round(shape["runs"] * scale))
    n_subjects = -(-n_runs // shape["runs_per_subject"])
    bids, out = root / "bids", root / "out"
    shutil.rmtree(root, ignore_errors=True)
    bids.mkdir(parents=True)
    out.mkdir(parents=True)
    description = {"Name": "bench", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}
    (out / "dataset_description.json").write_text(json.dumps(description))
    subjects = [f"{i + 1:05d}" for i in range(n_subjects)]
    rows = ["participant_id\tsex"] + [f"sub-{s}\t{'F' if i % 2 else 'M'}" for i, s in enumerate(subjects)]
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(seed)
    names = [f"ROI{r:03d}" for r in range(shape["rois"])]
    sources = []
    for k in range(templates):
        values = rng.standard_normal((shape["volumes"], shape["rois"])).astype(np.float32) * 3 + 10
        path = root / f"template-{k}.tsv"
        lines = ["\t".join(names)]
        text = np.char.mod("%.6g", values)
        if k % 2:
            text[:, -1] = "n/a"  # an excluded ROI, as the participant level writes it
        lines += ["\t".join(row) for row in text]
        path.write_text("\n".join(lines) + "\n")
        sources.append(path)
    coverage = "roi\tcoverage\n" + "".join(f"{n}\t1.0\n" for n in names)
    started = time.monotonic()
    for index in range(n_runs):
        subject = subjects[index // shape["runs_per_subject"]]
        run = index % shape["runs_per_subject"] + 1 if shape["runs_per_subject"] > 1 else None
        entities = {"subject": subject, "task": "rest", "run": run, "space": SPACE, "atlas": ATLAS}
        path = build_path(out, {**entities, "stat": "mean"}, "timeseries", ".tsv")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[index % templates], path)
        build_path(out, {**entities, "stat": "coverage"}, "bold", ".tsv").write_text(coverage)
        sidecar = {"RepetitionTime": 0.72, "Atlas": ATLAS, "ExcludedROIs": [], "CensoredVolumes": []}
        sidecar["Run"] = index  # every sidecar its own content
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return {
        "cohort": cohort,
        "scale": scale,
        "runs": n_runs,
        "subjects": n_subjects,
        "volumes": shape["volumes"],
        "rois": shape["rois"],
        "window": shape["window"],
        "tsv_gb": sum(p.stat().st_size for p in out.rglob("*_timeseries.tsv")) / 1e9,
        "write_s": time.monotonic() - started,
    }


# --- one measurement, in its own process -------------------------------------------------------


def _memory() -> dict:
    fields = {}
    for line in STATUS.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024  # MB
    fields["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return fields


def _load(root: Path, mode: str, window: int, workers: int = 1):
    from neurossm_app.group.data import load_dataset, select_timeseries

    database = root / "db" if mode != "tsv" else None
    cache = root / "out" / "group" / ".cache" if mode != "tsv" else None
    started = time.monotonic()
    selection = select_timeseries(root / "out", ATLAS, database_dir=database)
    indexed = time.monotonic()
    dataset = load_dataset(
        selection.scans, "participants:sex", root / "bids" / "participants.tsv", ATLAS, window,
        selection.excluded, cache, root / "out", workers,
    )  # fmt: skip
    return dataset, {"index_s": indexed - started, "load_s": time.monotonic() - indexed}


def _train(dataset, window: int, steps: int, model_kind: str) -> dict:
    import numpy as np
    import torch

    from neurossm_app.group.evaluate import predict_proba
    from neurossm_app.group.models import build_neurossm
    from neurossm_app.group.train import Optimisation, TrainSettings, seed_everything, training_batches

    started = time.monotonic()
    seed_everything(0)
    fields = {"d_model": 16, "n_layers": 1, "scales": [1], "signals": ["raw"]} if model_kind == "tiny" else {}
    model, _ = build_neurossm({"n_rois": len(dataset.roi_names), "n_classes": len(dataset.classes), **fields})
    settings = TrainSettings(window=window, epochs=1, batch_size=16, lr=1e-3, weight_decay=0.01)
    device = torch.device("cpu")
    optimisation = Optimisation.build(model, settings, dataset.labels, len(dataset.classes), steps, device)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(dataset.series))
    labels = torch.as_tensor(dataset.labels, dtype=torch.long)[order]
    model.train()
    batches = training_batches(dataset.series, order, settings, rng)
    cut, stepped, first = [], [], None
    for step in range(steps):
        before = time.monotonic()
        x = next(batches, None)
        if x is None:
            break
        ready = time.monotonic()
        optimisation.step(x, labels[step * 16 : (step + 1) * 16])
        done = time.monotonic()
        first = first or done
        cut.append(ready - before)
        stepped.append(done - ready)
    # the first step compiles the numba scan kernels: steps/s from the second on
    result = {"first_step_s": first - started, "first_cut_s": cut[0], "steps": len(cut)}
    if len(cut) > 1:
        result["steps_per_s"] = (len(cut) - 1) / (sum(cut[1:]) + sum(stepped[1:]))
        result["cut_s_per_batch"] = sum(cut[1:]) / (len(cut) - 1)
    result["train_memory"] = _memory()
    evaluated = time.monotonic()
    predict_proba(model, dataset.series, device, 16)
    result["eval_s"] = time.monotonic() - evaluated
    return result


def compare_cutting(root: Path, window: int, rounds: int, batches: int = 4) -> dict:
    """Seconds per batch of 16 windows, and per batch of 16 whole scans copied (evaluation), from
    the series in memory, the memory map with its pages released after each batch (what training
    does) and the memory map without releasing; interleaved round-robin, medians. The windows of
    the three are checked to be the same."""
    import statistics

    import torch

    from neurossm_app.group.series_cache import SeriesStore, release
    from neurossm_app.group.train import TrainSettings, training_batches

    cached, _ = _load(root, "warm", window)
    memory, _ = _load(root, "tsv", window)
    store = cached.series
    variants = {
        "memory": memory.series,
        "mmap+release": store,
        "mmap": SeriesStore(store.values, store.offsets, store.lengths, store.n_rois),  # release: no-op
    }
    settings = TrainSettings(window=window, epochs=1, batch_size=16, lr=1e-3, weight_decay=0.0)
    times = {name: {"cut": [], "copy": []} for name in variants}
    for round_ in range(rounds):
        first = {}
        for name, series in variants.items():
            rng = np.random.default_rng(round_)
            order = rng.permutation(len(series))
            started = time.monotonic()
            cut = list(zip(range(batches), training_batches(series, order, settings, rng), strict=False))
            times[name]["cut"].append((time.monotonic() - started) / len(cut))
            first[name] = cut[0][1]
            started = time.monotonic()
            for b in range(batches):
                chosen = order[b * 16 : (b + 1) * 16]
                _ = [np.array(series[i]) for i in chosen]
                release(series, chosen)
            times[name]["copy"].append((time.monotonic() - started) / batches)
        assert all(torch.equal(first["memory"], x) for x in first.values()), "windows differ"
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()} | {
        "memory_status": _memory()
    }


def measure(root: Path, mode: str, window: int, steps: int, model_kind: str, workers: int = 1) -> dict:
    """One ``tsv``/``cold``/``warm``/``train``/``train-tsv`` measurement (this process's peaks)."""
    if mode == "compare":
        return compare_cutting(root, window, steps)
    if mode == "cold":
        shutil.rmtree(root / "out" / "group" / ".cache", ignore_errors=True)
        shutil.rmtree(root / "db", ignore_errors=True)
    started = time.monotonic()
    dataset, result = _load(root, "tsv" if mode == "train-tsv" else mode, window, workers)
    result["scans"] = len(dataset.series)
    result["load_memory"] = _memory()
    if mode.startswith("train"):
        result |= _train(dataset, window, steps, model_kind)
        result["to_first_step_s"] = result["index_s"] + result["load_s"] + result["first_step_s"]
    result["total_s"] = time.monotonic() - started
    result["memory"] = _memory()
    return result


# --- the driver --------------------------------------------------------------------------------


def _in_process(args: argparse.Namespace, root: Path, mode: str, window: int) -> dict:
    command = [
        sys.executable, __file__, "--measure", mode, "--root", str(root), "--window", str(window),
        "--steps", str(args.steps), "--model", args.model, "--threads", str(args.threads),
        "--nprocs", str(args.nprocs),
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.monotonic() - started
    return result


def _row(shape: dict, mode: str, r: dict) -> str:
    cells = [
        shape["cohort"], f"{shape['scale']:g}", str(shape["runs"]), mode,
        f"{r['index_s']:.1f}", f"{r['load_s']:.1f}", f"{r['index_s'] + r['load_s']:.1f}",
        f"{r['memory']['peak_mb']:.0f}",
        f"{r.get('to_first_step_s', float('nan')):.1f}", f"{r.get('steps_per_s', float('nan')):.2f}",
        f"{r.get('cut_s_per_batch', float('nan')):.3f}", f"{r.get('eval_s', float('nan')):.1f}",
        f"{r['memory'].get('RssAnon', float('nan')):.0f} / {r['memory'].get('RssFile', float('nan')):.0f}",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _compare_rows(result: dict) -> str:
    """The ``compare`` measurement as a table: ms per batch of each way of reading."""
    lines = ["| series | cut 16 windows, ms | copy 16 scans, ms |", "|---|---|---|"]
    for name in ("memory", "mmap+release", "mmap"):
        lines.append(f"| {name} | {1000 * result[name]['cut']:.1f} | {1000 * result[name]['copy']:.1f} |")
    return "\n".join(lines)


HEADER = (
    "| cohort | scale | runs | path | index s | load s | index + load s | peak RSS MB | to first step s "
    "| steps/s | cut s/batch | eval s | RSS anon / file MB at end |\n|" + "---|" * 13
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohorts", nargs="+", choices=sorted(COHORTS), default=["hcp-rest", "biobank"])
    parser.add_argument("--scales", nargs="+", type=float, default=[0.025, 0.05])
    parser.add_argument("--data", type=Path, default=Path("/tmp/bench-group-scale"))
    parser.add_argument("--templates", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--model", choices=["tiny", "preset"], default="tiny")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nprocs", type=int, default=1, help="processes that parse the TSVs of a cold build")
    parser.add_argument("--modes", nargs="+", default=["tsv", "cold", "warm", "train", "train-tsv"])
    parser.add_argument("--keep", action="store_true", help="keep the synthetic outputs")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    if args.measure:
        import bids.layout  # noqa: F401 - imports outside the timed work
        import torch

        import neurossm_app.group.data
        import neurossm_app.group.train  # noqa: F401

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.root, args.measure, args.window, args.steps, args.model, args.nprocs)))
        return 0
    results = []
    print(HEADER, flush=True)
    for cohort in args.cohorts:
        for scale in args.scales:
            root = args.data / f"{cohort}-{scale:g}"
            shape = write_cohort(root, cohort, scale, args.templates)
            for mode in args.modes:
                result = _in_process(args, root, mode, shape["window"])
                results.append({**shape, "mode": mode, **result})
                print(_compare_rows(result) if mode == "compare" else _row(shape, mode, result), flush=True)
            cache = sum(p.stat().st_size for p in (root / "out" / "group" / ".cache").glob("*.f32")) / 1e9
            results[-1]["cache_gb"] = cache
            print(f"<!-- {cohort} x {scale:g}: {shape['tsv_gb']:.2f} GB of TSV, cache {cache:.2f} GB -->")
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
