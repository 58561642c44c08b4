"""Parallel safety: many processes writing into one OUTPUT_DIR at once, as on an HPC array.

What we support (docs/hpc.md, docs/troubleshooting.md): any number of participant-level processes
for *different* subjects may write into the same OUTPUT_DIR at once, each with its own ``-w`` work
directory (recommended) or sharing one; group-level units (``--fold K --seed S``) of one run may
run at once, and a later plain ``group`` call aggregates them without retraining.

Every process runs with the network blocked (``tests/test_reliability_common.py``), so these runs
also show that neither level needs the network when the atlases are in the local caches.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from neurossm_app.files import read_tsv
from tests.conftest import make_synthetic
from tests.test_reliability_common import TINY_GROUP, files_under, no_network_env, run_cli, start_cli

N_SUBJECTS = 4  # two share a -w, two have their own: both cases, on the suite's two cores
N_VOLUMES = 60


def _wait_all(processes, timeout: float = 400) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
        except Exception:  # noqa: BLE001 - a hung process fails the test after we clean up
            process.kill()
            codes.append(process.wait())
    return codes


def _start_participants(ds: Path, out: Path, env: dict, root: Path):
    """A participant process per subject, all at once: sub-01..02 share one -w, sub-03..04 have their own."""
    processes, logs = [], []
    for index in range(1, N_SUBJECTS + 1):
        label = f"{index:02d}"
        work = root / "work_shared" if index <= N_SUBJECTS // 2 else root / f"work_{label}"
        log = root / f"participant_{label}.log"
        args = [
            ds,
            out,
            "participant",
            "--participant-label",
            label,
            "--skip-bids-validation",
            "--low-pass",
            "none",
        ]
        processes.append(start_cli([*args, "-w", work, "--nprocs", "1", "--omp-nthreads", "1"], env, log))
        logs.append(log)
    return _wait_all(processes), logs


def _check_participant_outputs(out: Path) -> None:
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "neurossm-app"
    assert (out / "logs" / "CITATION.md").read_text().startswith("# Methods boilerplate")
    series = sorted(out.glob("sub-*/func/*_stat-mean_timeseries.tsv"))
    assert [p.name.split("_")[0] for p in series] == [f"sub-{i:02d}" for i in range(1, N_SUBJECTS + 1)]
    columns = None
    for path in series:
        frame = read_tsv(path)
        assert frame.shape[0] == N_VOLUMES and frame.shape[1] > 100
        assert all(pd.api.types.is_float_dtype(t) for t in frame.dtypes), path
        columns = columns or list(frame.columns)
        assert list(frame.columns) == columns
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["RepetitionTime"] > 0 and sidecar["Atlas"] == "Schaefer400n17"
        coverage = path.with_name(path.name.replace("stat-mean_timeseries.tsv", "stat-coverage_bold.tsv"))
        assert list(read_tsv(coverage)["roi"]) == columns
    # No temporary file of the atomic writes is left, and every subject has its report.
    assert not [name for name in files_under(out) if Path(name).name.startswith(".")]
    assert len(list(out.glob("sub-*.html"))) == N_SUBJECTS


def test_parallel_participants_then_parallel_group_units(tmp_path, atlas_cache):
    """One test (one xdist worker): four participant processes, then two group units, then aggregation."""
    ds = make_synthetic(tmp_path / "ds", atlas_cache, subjects=N_SUBJECTS, volumes=N_VOLUMES, seed=11)
    out = tmp_path / "out"
    env, netlog = no_network_env(atlas_cache, tmp_path)

    codes, logs = _start_participants(ds, out, env, tmp_path)
    for code, log in zip(codes, logs, strict=True):
        assert code == 0, log.read_text()[-3000:]
    _check_participant_outputs(out)
    assert not netlog.exists(), netlog.read_text()

    args = [ds, out, "group", *TINY_GROUP, "--run-name", "parallel"]
    units = [
        start_cli([*args, "--fold", str(fold), "--seed", "0"], env, tmp_path / f"group_fold{fold}.log")
        for fold in (0, 1)
    ]
    for fold, code in enumerate(_wait_all(units)):
        assert code == 0, (tmp_path / f"group_fold{fold}.log").read_text()[-3000:]
    run = out / "group" / "parallel"
    markers = [run / "units" / f"fold-{fold}_seed-0" / "unit.json" for fold in (0, 1)]
    stamps = [m.stat().st_mtime_ns for m in markers]
    assert json.loads((run / "config.json").read_text())["settings"]["folds"] == 2
    assert not (run / "metrics.tsv").exists()

    result = run_cli(args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m.stat().st_mtime_ns for m in markers] == stamps  # aggregated, not retrained
    assert "is complete; skipping it" in result.stderr
    metrics = read_tsv(run / "metrics.tsv")
    assert sorted(metrics["fold"]) == [0, 1] and metrics["accuracy"].between(0, 1).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["units"] == {"expected": 2, "complete": 2, "missing": []}
    predictions = read_tsv(run / "predictions.tsv")
    assert sorted(predictions["subject"].astype(int)) == list(range(1, N_SUBJECTS + 1))
    assert not [name for name in files_under(run) if Path(name).name.startswith(".")]
    assert not netlog.exists(), netlog.read_text()
