"""Whole participant-level calls, as a user times them: ``neurossm-app ... participant`` against a
nilearn script doing the same work.

Every measurement is a whole process: interpreter start, imports, indexing, pre-flight, the work,
the outputs (and, for neurossm-app, the report). Methods alternate round-robin within each
scenario, so load from other jobs hits them alike; the median of the rounds is reported.

Scenarios (synthetic ``neurossm-synth`` data, TR 2 s, made once under ``--data`` and reused):

- ``run300``, ``run1200``: one run of 300 or 1200 volumes on the 2 mm grid (97 x 115 x 97);
- ``cohort``: ``--subjects`` subjects (default 20) of 200 volumes on the 4 mm grid, one call with
  ``--nprocs 2``; the nilearn script processes the same runs one after the other in one process.

Methods:

- ``ours-Nt``: ``neurossm-app BIDS OUT participant --skip-bids-validation -w WORK --nprocs P
  --omp-nthreads N`` (defaults: 36P confounds, 0.01-0.1 Hz, detrend, z-score), fresh OUT and WORK
  per call; P is 1 for one run, 2 for the cohort;
- ``nilearn``: per run, ``load_confounds`` with the same 36P arguments, then
  ``NiftiLabelsMasker(labels, mask_img, strategy="mean", detrend, standardize, high_pass,
  low_pass, t_r).fit_transform(bold, confounds)`` and the TSV written, in one process;
- ``baseline`` (with ``--baseline-src DIR``): ``ours-1t`` run from another source tree, for
  example ``git archive <commit> | tar -x -C DIR``.

Measured per call: wall time; CPU time (user + system of the process and every descendant it
waited for, from ``wait4``: nipype's MultiProc workers included); the largest single process's
peak resident set (``ru_maxrss``); and the peak of the summed resident sets of the process tree,
sampled every 0.1 s from /proc (shared pages counted in each process: an upper bound). For
``ours``, the time nipype recorded for each run's ``extract`` and ``ds_report`` nodes, and their
sum over (wall x nprocs): how full the scheduler kept its worker slots, which other jobs' load
slows down but does not empty (unlike the CPU share).

    python benchmarks/bench_participant.py --data /tmp/bench-participant --json participant.json
    python benchmarks/bench_participant.py --quick    # a few minutes: T = 150, 6 subjects, 1 round

Prints a Markdown table per scenario (docs/performance.md holds the last run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NILEARN_SCRIPT = r"""
import json, sys
import pandas as pd
from nilearn.interfaces.fmriprep import load_confounds
from nilearn.maskers import NiftiLabelsMasker

spec = json.loads(sys.argv[1])
for run in spec["runs"]:
    confounds, sample_mask = load_confounds(run["bold"], demean=False, **spec["confounds"])
    masker = NiftiLabelsMasker(
        labels_img=spec["atlas"], mask_img=run["mask"], strategy="mean", detrend=True,
        standardize="zscore_sample", high_pass=0.01, low_pass=0.1, t_r=run["tr"],
    )
    signals = masker.fit_transform(run["bold"], confounds=confounds, sample_mask=sample_mask)
    pd.DataFrame(signals).to_csv(run["out"], sep="\t", index=False)
"""

OURS = "import sys; from neurossm_app.cli import main; sys.exit(main(sys.argv[1:]))"
SYNTH = "import sys; from neurossm_app.synthetic.cli import main; sys.exit(main(sys.argv[1:]))"

ATLAS_PATH = (
    "from neurossm_app.atlases import get_atlas; from neurossm_app.participant.clean import "
    "CONFOUND_STRATEGIES; import json; atlas = get_atlas('schaefer400'); "
    "print(json.dumps({'atlas': str(atlas.image), 'confounds': CONFOUND_STRATEGIES['36P']}))"
)


def make_dataset(root: Path, subjects: int, volumes: int, voxel_size: int) -> Path:
    """A synthetic dataset under ``root``, made once (a marker file says it is complete)."""
    ds = root / f"ds_{subjects}x{volumes}_{voxel_size}mm"
    if (ds / ".complete").exists():
        return ds
    shutil.rmtree(ds, ignore_errors=True)
    print(f"making {ds} ...", file=sys.stderr, flush=True)
    subprocess.run(
        [sys.executable, "-c", SYNTH, str(ds), "--subjects", str(max(subjects, 2)),
         "--volumes", str(volumes), "--voxel-size", str(voxel_size), "--tr", "2.0", "--seed", "7"],
        check=True, capture_output=True,
    )  # fmt: skip
    (ds / ".complete").write_text("")
    return ds


def dataset_env(ds: Path, pythonpath: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "NIPYPE_NO_ET": "1",
        "TEMPLATEFLOW_HOME": str(ds / "sourcedata" / "atlases" / "templateflow"),
        "NILEARN_DATA": str(ds / "sourcedata" / "atlases" / "nilearn_data"),
    }
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def _tree_rss_mb(root: int) -> float:
    """Summed resident set of ``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total * os.sysconf("SC_PAGE_SIZE") / 1e6


def measure(argv: list[str], env: dict[str, str], log: Path) -> dict:
    """Run one whole process; wall, CPU (with waited-for descendants), peaks; fail loudly."""
    peak = [0.0]
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], _tree_rss_mb(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{argv[:3]}... failed ({process.returncode}); see {log}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_process_mb": usage.ru_maxrss / 1024,
        "tree_peak_mb": peak[0],
    }


def node_seconds(work: Path) -> dict[str, float]:
    """Mean duration nipype recorded for each run's ``extract`` and ``ds_report`` nodes, and their
    sum over all runs (``nodes_s``: the time worker slots were busy)."""
    from nipype.utils.filemanip import loadpkl

    found = {}
    for node in ("extract", "ds_report"):
        times = [loadpkl(p).runtime.duration for p in work.rglob(f"{node}/result_{node}.pklz")]
        if times:
            found[f"{node}_s"] = statistics.mean(times)
            found["nodes_s"] = found.get("nodes_s", 0.0) + sum(times)
    return found


def runs_of(ds: Path, subjects: list[str]) -> list[dict]:
    import json as _json

    runs = []
    for subject in subjects:
        func = ds / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
        bold = next(func.glob("*_desc-preproc_bold.nii.gz"))
        mask = next(func.glob("*_desc-brain_mask.nii.gz"))
        tr = _json.loads(bold.with_name(bold.name.replace(".nii.gz", ".json")).read_text())["RepetitionTime"]
        runs.append({"bold": str(bold), "mask": str(mask), "tr": tr})
    return runs


def scenario_commands(
    name: str, ds: Path, subjects: list[str], nprocs: int, threads: list[int], tmp: Path, baseline: str | None
) -> dict[str, tuple[list[str], dict, Path | None]]:
    """method -> (argv, env, work dir or None)."""
    env = dataset_env(ds)
    query = subprocess.run(
        [sys.executable, "-c", ATLAS_PATH], env=env, capture_output=True, text=True, check=True
    )
    found = json.loads(query.stdout)
    runs = runs_of(ds, subjects)
    for index, run in enumerate(runs):
        run["out"] = str(tmp / f"{name}_nilearn_{index}.tsv")
    spec = json.dumps({"atlas": found["atlas"], "confounds": found["confounds"], "runs": runs})
    commands: dict[str, tuple[list[str], dict, Path | None]] = {}
    label = ["--participant-label", *subjects]
    for n in threads:
        out, work = tmp / f"{name}_out_{n}t", tmp / f"{name}_work_{n}t"
        commands[f"ours-{n}t"] = (_ours_argv(ds, out, work, label, nprocs, n), env, work)
    if baseline:
        out, work = tmp / f"{name}_out_baseline", tmp / f"{name}_work_baseline"
        commands["baseline"] = (_ours_argv(ds, out, work, label, nprocs, 1), dataset_env(ds, baseline), work)
    commands["nilearn"] = ([sys.executable, "-c", NILEARN_SCRIPT, spec], env, None)
    return commands


def _ours_argv(ds: Path, out: Path, work: Path, label: list[str], nprocs: int, threads: int) -> list[str]:
    return [
        *(sys.executable, "-c", OURS, str(ds), str(out), "participant", *label),
        *("--skip-bids-validation", "-w", str(work), "--nprocs", str(nprocs), "--omp-nthreads", str(threads)),
    ]


def run_scenario(
    name: str,
    ds: Path,
    subjects: list[str],
    nprocs: int,
    threads: list[int],
    rounds: int,
    tmp: Path,
    baseline: str | None,
) -> dict:
    commands = scenario_commands(name, ds, subjects, nprocs, threads, tmp, baseline)
    results: dict[str, list[dict]] = {method: [] for method in commands}
    for round_ in range(rounds):
        for method, (argv, env, work) in commands.items():
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
                shutil.rmtree(Path(argv[argv.index("participant") - 1]), ignore_errors=True)
            result = measure(argv, env, tmp / f"{name}_{method}_{round_}.log")
            if work is not None:
                result.update(node_seconds(work))
            result["load"] = os.getloadavg()[0]
            results[method].append(result)
            shown = ", ".join(f"{k} {v:.2f}" for k, v in result.items())
            print(f"{name} round {round_} {method}: {shown}", file=sys.stderr, flush=True)
    summary = {
        method: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for method, rows in results.items()
    }
    return {
        "scenario": name,
        "subjects": len(subjects),
        "nprocs": nprocs,
        "rounds": results,
        "median": summary,
    }


def print_table(result: dict) -> None:
    """Medians over rounds; the ratio and the CPU share are taken per round (methods of one round
    ran back to back, under the same load), then their median."""
    rounds, procs = result["rounds"], result["nprocs"]
    print(f"\n{result['scenario']} ({result['subjects']} run(s), --nprocs {procs}), median of rounds:\n")
    print(
        "| method | wall s | CPU s | CPU / (wall x nprocs) | nilearn wall / wall | largest process MB "
        "| tree peak MB | extract node s | report node s | nodes / (wall x nprocs) | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method, rows in rounds.items():
        n = procs if method != "nilearn" else 1
        m = result["median"][method]
        share = statistics.median(r["cpu_s"] / (r["wall_s"] * n) for r in rows)
        busy = statistics.median(r.get("nodes_s", float("nan")) / (r["wall_s"] * n) for r in rows)
        ratio = statistics.median(
            ref["wall_s"] / r["wall_s"] for ref, r in zip(rounds["nilearn"], rows, strict=True)
        )
        print(
            f"| {method} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {share:.0%} | {ratio:.2f} "
            f"| {m['max_process_mb']:.0f} | {m['tree_peak_mb']:.0f} | {m.get('extract_s', float('nan')):.2f} "
            f"| {m.get('ds_report_s', float('nan')):.2f} | {busy:.0%} | {m['load']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    scenarios = ["run300", "run1200", "cohort"]
    parser.add_argument("--scenarios", nargs="+", default=scenarios, choices=scenarios)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=20, help="subjects of the cohort scenario")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="--omp-nthreads of ours (one run)"
    )
    parser.add_argument("--baseline-src", help="source tree of another neurossm-app to run as 'baseline'")
    parser.add_argument("--data", type=Path, help="where the synthetic datasets are made and reused")
    parser.add_argument(
        "--quick", action="store_true", help="T = 150 and a 6-subject cohort of 100 volumes, 1 round"
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--table", type=Path, help="print the tables of a --json file and stop")
    args = parser.parse_args()
    if args.table:
        for result in json.loads(args.table.read_text()):
            print_table(result)
        return
    if args.quick:
        args.rounds, args.subjects = 1, 6
    data = args.data or Path(tempfile.mkdtemp(prefix="bench-participant-"))
    data.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="calls-", dir=data))
    results = []
    for name in args.scenarios:
        if name == "cohort":
            ds = make_dataset(data, args.subjects, 100 if args.quick else 200, 4)
            subjects = [f"{i:02d}" for i in range(1, args.subjects + 1)]
            results.append(run_scenario(name, ds, subjects, 2, [1], args.rounds, tmp, args.baseline_src))
        else:
            volumes = 150 if args.quick else int(name[3:])
            ds = make_dataset(data, 2, volumes, 2)
            results.append(
                run_scenario(name, ds, ["01"], 1, args.threads, args.rounds, tmp, args.baseline_src)
            )
        print_table(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
