"""How reliably CPA recovers planted effects: the CPA end-to-end test's protocol over data seeds.

Not a speed benchmark: the numbers behind docs/cpa.md's "What CPA recovers on synthetic data".
For each data seed, the planted ROI series of ``tests/test_cpa_end_to_end.py`` (18 subjects x
language / motor / wm / rest, the same waveforms and model settings, 5 folds x 2 seeds) are
written to a temporary folder and run through ``neurossm-app group --analysis``; the script prints
per class the fraction of planted ROIs in the CPA top 25%, whether every planted ROI is dominated
by a pathway of its effect's signal, and the partial r with the Neurosynth reference. The test
asserts this for seed 11 only; the sweep shows that seed is not a lucky one.

Usage (about 45 s per seed with 2 threads; the synthetic atlases are written to the temporary
folder, nothing is downloaded)::

    .venv/bin/python benchmarks/cpa_recovery.py --seeds 1 2 3 4 5 11 --json cpa_recovery.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 11], help="data seeds")
    parser.add_argument("--threads", type=int, default=2, help="--omp-nthreads of the group level")
    parser.add_argument(
        "--epochs", type=int, help="train this many epochs instead of the test's (to check a shorter test)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cpa-recovery-"))
    # templateflow reads TEMPLATEFLOW_HOME when imported: set it before any neurossm_app import
    os.environ["TEMPLATEFLOW_HOME"] = str(work / "atlases" / "templateflow")
    os.environ["NILEARN_DATA"] = str(work / "atlases" / "nilearn_data")
    sys.path.insert(0, str(ROOT))
    from neurossm_app.cli import main as neurossm_app
    from neurossm_app.synthetic.atlas import install_atlases
    from neurossm_app.synthetic.recovery import planted_recovery
    from tests.test_cpa_end_to_end import write_dataset

    install_atlases(work / "atlases")
    rows = []
    for seed in args.seeds:
        root = work / f"seed-{seed}"
        argv, truth, _, _ = write_dataset(root, seed)
        if args.epochs is not None:
            argv[argv.index("--epochs") + 1] = str(args.epochs)
        started = time.monotonic()
        extra = ["--n-null-maps", "200", "--omp-nthreads", str(args.threads)]
        if neurossm_app([*argv, *extra]) != 0:
            print(f"seed {seed}: the group level failed", file=sys.stderr)
            return 1
        seconds = time.monotonic() - started
        run = root / "out" / "group" / "hcp-task"
        summary = json.loads((run / "summary.json").read_text())
        accuracy = summary["models"]["neurossm"]["accuracy"]["mean"]
        for task, row in planted_recovery(run, truth).iterrows():
            rows.append(
                {"seed": seed, "seconds": seconds, "accuracy": accuracy, "class": task, **row.to_dict()}
            )

    print("\nseed  seconds  accuracy  class      signal  in top 25%  own pathway  partial r")
    for row in rows:
        own = "yes" if row["in_own_pathway"] else "no"
        print(
            f"{row['seed']:>4}  {row['seconds']:>7.0f}  {row['accuracy']:>8.3f}  {row['class']:<9}  "
            f"{row['signal']:<6}  "
            f"{row['in_top25']:>10.0%}  {own:>11}  {row['partial_r']:>9.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
