"""Crash safety: SIGKILL at any moment leaves nothing a later run mistakes for complete, and a re-run
resumes to exactly the results of an uninterrupted run.

- :func:`test_kill_inside_an_atomic_write`: the primitive every output goes through
  (``neurossm_app.files``), killed in the middle of writing a file;
- :func:`test_participant_killed_mid_run_then_rerun`: a participant run killed after its first
  subject, re-run with the same ``-w``, compared byte-for-byte with an uninterrupted run;
- :func:`test_group_killed_during_training_then_rerun`: a plain ``group`` call killed after its
  first unit, re-run, ``metrics.tsv`` and ``predictions.tsv`` compared with an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neurossm_app.group.checkpoints import read_checkpoint_info
from tests.conftest import make_synthetic
from tests.test_group_fakedata import write_participant_outputs
from tests.test_reliability_common import TINY_GROUP, files_under, no_network_env, run_cli, start_cli

_KILLED_WRITER = """
import os, signal, sys
from neurossm_app.files import write_atomic


def writer(tmp):
    with open(tmp, "w") as handle:
        handle.write("col\\n1\\n")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # dies half-way through its output


write_atomic(sys.argv[1], writer)
"""


def _kill_when(process: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILL ``process`` (and its workers) as soon as ``ready()``; True if it was still running."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    running = process.poll() is None
    if running:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    return running


def _results(out: Path) -> dict[str, bytes]:
    """Result files by relative path: not reports (their SVGs carry random ids) and not the calls'
    own logs (``logs/<time>_participant_<pid>.log``: a killed call keeps the lines it wrote)."""
    names = [n for n in files_under(out) if not Path(n).name.startswith(".") and not n.endswith(".html")]
    return {
        name: (out / name).read_bytes()
        for name in names
        if "/figures/" not in name and not (name.startswith("logs/") and name.endswith(".log"))
    }


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
def test_kill_inside_an_atomic_write(tmp_path, existing):
    target = tmp_path / "sub-01_stat-mean_timeseries.tsv"
    if existing:
        target.write_text("col\n0\n")
    result = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], check=False)
    assert result.returncode == -signal.SIGKILL
    if existing:
        assert target.read_text() == "col\n0\n"  # the old file is intact
    else:
        assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{target.name}.")  # hidden: pybids skips it


def test_participant_killed_mid_run_then_rerun(tmp_path, atlas_cache):
    ds = make_synthetic(tmp_path / "ds", atlas_cache, subjects=2, volumes=60, seed=5)
    env, _ = no_network_env(atlas_cache, tmp_path)
    common = [
        "participant",
        "--skip-bids-validation",
        "--nprocs",
        "1",
        "--omp-nthreads",
        "1",
        "--low-pass",
        "none",
    ]

    reference = run_cli([ds, tmp_path / "reference", *common, "-w", tmp_path / "work_reference"], env)
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "out"
    args = [ds, out, *common, "-w", tmp_path / "work"]
    process = start_cli(args, env, tmp_path / "killed.log")
    assert _kill_when(process, lambda: any(out.glob("sub-*/func/*_timeseries.json"))), "finished too soon"

    # What survived the kill is either complete (sidecar present) and final, or absent.
    expected = _results(tmp_path / "reference")
    survived = _results(out)
    complete = [name for name in survived if name.endswith("_timeseries.json")]
    assert len(complete) == 1  # killed between the two subjects
    for name, data in survived.items():
        assert data == expected[name], f"{name} differs from the uninterrupted run's"

    rerun = run_cli(args, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _results(out) == expected
    from neurossm_app.group.data import find_timeseries

    assert len(find_timeseries(out, "Schaefer400n17")) == 2  # no leftover temporary file is read


def test_group_killed_during_training_then_rerun(tmp_path):
    bids, out = write_participant_outputs(tmp_path, n_subjects=9, n_volumes=70, seed=8)
    env, _ = no_network_env(tmp_path, tmp_path)  # no atlas is needed at group level
    args = [bids, out, "group", *TINY_GROUP, "--folds", "3", "--epochs", "20"]

    reference = run_cli([*args, "--run-name", "reference"], env)
    assert reference.returncode == 0, reference.stderr[-3000:]

    run = out / "group" / "killed"
    process = start_cli([*args, "--run-name", "killed"], env, tmp_path / "killed.log")
    assert _kill_when(process, lambda: any(run.glob("units/*/unit.json"))), "finished too soon"
    assert not (run / "metrics.tsv").exists() and not (run / "summary.json").exists()
    done = sorted(p.parent.name for p in run.glob("units/*/unit.json"))
    assert 1 <= len(done) < 3
    for unit in done:  # a finished unit's checkpoint is whole
        fold, seed = (int(part.split("-")[1]) for part in unit.split("_"))
        read_checkpoint_info(run / "checkpoints" / f"model-neurossm_fold-{fold}_seed-{seed}.safetensors")

    rerun = run_cli([*args, "--run-name", "killed"], env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "is complete; skipping it" in rerun.stderr
    ref_run = out / "group" / "reference"
    for name in ("metrics.tsv", "predictions.tsv", "splits.tsv"):
        assert (run / name).read_bytes() == (ref_run / name).read_bytes(), name
