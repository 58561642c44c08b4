"""One subject never sinks the batch; SIGTERM ends a call cleanly; ``--use-plugin`` (issue 15).

Through the real CLI (a subprocess, network blocked) on a four-subject synthetic dataset with one
or two subjects broken:

- a run that fails in the workflow (NaN in its BOLD) leaves the other three written, one line for
  it with our error text (no traceback), "1 of 4 runs failed", exit 65, and its subject's report
  says why; a crash report another call left in the same ``-w`` is not taken for this call's;
- runs that fail the pre-flight checks (a truncated BOLD, a mask on another grid) are all reported,
  one line each, and left out while the good runs are written, and so is a run whose confounds
  lack a column the strategy needs; when every run fails the checks nothing is written;
- SIGTERM once the first run is written: exit 143, the interrupt line, no process of the call left,
  every written series complete (series, coverage and sidecar; no temporary file);
- ``--use-plugin``: the plugin file's name and arguments reach ``workflow.run``; a bad file is one
  line and exit 64.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurossm_app import __version__
from neurossm_app.cli import main
from neurossm_app.cli.plugins import load_plugin_file, plugin_and_args
from neurossm_app.errors import InputMissingError, UsageError
from tests.conftest import make_synthetic
from tests.test_reliability_common import (
    FMRIPREP,
    copy_dataset,
    files_under,
    no_network_env,
    run_cli,
    start_cli,
)

#: Few volumes, few regressors and no low-pass: a run takes about a second.
OPTIONS = ["--skip-bids-validation", "--confounds", "24P", "--low-pass", "none", "--omp-nthreads", "1"]
STALE = "STALE ERROR OF ANOTHER CALL"


def _func(ds: Path, subject: str, suffix: str) -> Path:
    return next((ds / FMRIPREP / f"sub-{subject}" / "func").glob(f"*{suffix}"))


def _nan_in_bold(ds: Path, subject: str) -> None:
    path = _func(ds, subject, "desc-preproc_bold.nii.gz")
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[:, :, data.shape[2] // 2, 30] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)


def _truncate_bold(ds: Path, subject: str) -> None:
    path = _func(ds, subject, "desc-preproc_bold.nii.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _mask_on_other_grid(ds: Path, subject: str) -> None:
    path = _func(ds, subject, "desc-brain_mask.nii.gz")
    mask = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj)[:-2, :-1, :], mask.affine, mask.header), path)


def _drop_confound_column(ds: Path, subject: str, column: str) -> None:
    path = _func(ds, subject, "desc-confounds_timeseries.tsv")
    table = pd.read_csv(path, sep="\t", keep_default_na=False)
    table.drop(columns=[column]).to_csv(path, sep="\t", index=False)


def _failure_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("neurossm-app: run ")]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def _series(out: Path) -> list[str]:
    return sorted(p.name.split("_")[0] for p in out.glob("sub-*/func/*_stat-mean_timeseries.tsv"))


def _complete(out: Path) -> None:
    """Every series has its sidecar and coverage file, and no temporary file is left."""
    for tsv in out.glob("sub-*/func/*_stat-mean_timeseries.tsv"):
        assert tsv.with_suffix(".json").is_file(), tsv
        assert Path(str(tsv).replace("stat-mean_timeseries.tsv", "stat-coverage_bold.tsv")).is_file(), tsv
    for sidecar in out.glob("sub-*/func/*_stat-mean_timeseries.json"):
        assert sidecar.with_suffix(".tsv").is_file(), sidecar
    assert not [n for n in files_under(out) if Path(n).name.startswith(".")]


@pytest.fixture(scope="module")
def base(tmp_path_factory, atlas_cache) -> Path:
    return make_synthetic(
        tmp_path_factory.mktemp("batch") / "ds", atlas_cache, subjects=4, volumes=60, seed=3
    )


@pytest.fixture(scope="module")
def one_broken(base, tmp_path_factory, atlas_cache):
    """sub-03's BOLD has NaN (found in the workflow); -w holds another call's crash report."""
    root = tmp_path_factory.mktemp("one_broken")
    ds = copy_dataset(base, root / "ds")
    _nan_in_bold(ds, "03")
    work = root / "work"
    for folder in ("crash", "crash/20200101-000000-1"):  # the old shared folder and another call's
        crash_dir = work / f"neurossm_{__version__.replace('.', '_')}" / folder
        crash_dir.mkdir(parents=True)
        (crash_dir / "crash-20200101-000000-user-extract-0.txt").write_text(
            "Node: neurossm_participant_wf.sub01_taskrest_wf.extract\n\nTraceback (most recent call last):\n"
            f"neurossm_app.errors.DataError: {STALE}\n"
        )
        future = time.time() + 3600  # newer than this call's own reports, as a running job's are
        os.utime(crash_dir / "crash-20200101-000000-user-extract-0.txt", (future, future))
    env, _ = no_network_env(atlas_cache, root)
    out = root / "out"
    result = run_cli([ds, out, "participant", *OPTIONS, "-w", work, "--nprocs", "2"], env)
    return result, out


def test_broken_subject_among_four_writes_the_other_three(one_broken):
    result, out = one_broken
    assert result.returncode == 65, result.stderr[-3000:]
    assert _series(out) == ["sub-01", "sub-02", "sub-04"]
    _complete(out)
    assert (out / "dataset_description.json").is_file()
    assert "Traceback" not in result.stderr and "crash report" not in result.stderr


def test_one_line_per_failed_run_then_the_count(one_broken):
    result, _ = one_broken
    failed = _failure_lines(result.stderr)
    assert len(failed) == 1, result.stderr
    assert failed[0].startswith("neurossm-app: run sub-03_task-rest failed: ")
    assert "preproc_bold" in failed[0] and "NaN or Inf" in failed[0]
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "1 of 4 runs failed" in errors[0], result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]


def test_stale_crash_report_is_not_reported(one_broken):
    result, _ = one_broken
    assert STALE not in result.stderr
    assert not [line for line in _failure_lines(result.stderr) if "sub-01" in line]


def test_failed_run_is_in_its_subjects_report(one_broken):
    _, out = one_broken
    report = (out / "sub-03.html").read_text()
    assert "Failed runs" in report and "sub-03_task-rest" in report and "NaN or Inf" in report
    assert "Failed runs" not in (out / "sub-01.html").read_text()


def test_preflight_reports_every_bad_run_and_processes_the_others(base, tmp_path, atlas_cache):
    ds = copy_dataset(base, tmp_path / "ds")
    _truncate_bold(ds, "02")
    _mask_on_other_grid(ds, "03")
    _drop_confound_column(ds, "04", "trans_x")  # 24P needs it
    env, _ = no_network_env(atlas_cache, tmp_path)
    out = tmp_path / "out"
    # --nprocs 2 with four runs: the checks run in two forked processes (preflight.check_runs),
    # and their errors still come back one per run, in run order
    result = run_cli([ds, out, "participant", *OPTIONS, "-w", tmp_path / "work", "--nprocs", "2"], env)
    assert result.returncode == 65, result.stderr[-3000:]
    failed = _failure_lines(result.stderr)
    names = [line.split()[2] for line in failed]
    assert names == ["sub-02_task-rest", "sub-03_task-rest", "sub-04_task-rest"], result.stderr
    assert "re-copy" in failed[0] and "brain_mask" in failed[1] and "use the mask" in failed[1]
    assert "confounds" in failed[2] and "trans_x" in failed[2]
    assert "pre-flight: 3 of 4 run(s) fail the checks and are left out" in result.stderr
    assert "3 of 4 runs failed" in _error_lines(result.stderr)[-1]
    assert _series(out) == ["sub-01"]
    _complete(out)
    assert "Traceback" not in result.stderr

    # Every selected run fails the checks: the same lines, and nothing is written.
    out = tmp_path / "out_none"
    args = [ds, out, "participant", *OPTIONS, "--participant-label", "02", "03", "-w", tmp_path / "work"]
    result = run_cli(args, env)
    assert result.returncode == 65, result.stderr[-3000:]
    assert len(_failure_lines(result.stderr)) == 2
    assert "2 of 2 runs failed" in _error_lines(result.stderr)[-1] and "no run was written" in result.stderr
    assert not files_under(out)


def _processes_left(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_workers_and_keeps_complete_outputs(base, tmp_path, atlas_cache):
    env, _ = no_network_env(atlas_cache, tmp_path)
    out = tmp_path / "out"
    args = [base, out, "participant", *OPTIONS, "-w", tmp_path / "work", "--nprocs", "2"]
    log = tmp_path / "call.log"
    process = start_cli(args, env, log)  # its own process group: the workers are in it too
    deadline = time.monotonic() + 240
    while not any(out.glob("sub-*/func/*_timeseries.json")) and process.poll() is None:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    assert process.poll() is None, "finished before the signal: " + log.read_text()[-2000:]
    os.kill(process.pid, signal.SIGTERM)  # the main process only: it must stop its workers itself
    assert process.wait(timeout=60) == 143, log.read_text()[-3000:]
    text = log.read_text()
    assert "neurossm-app: interrupted; complete outputs are kept, re-run to finish." in text
    assert "Traceback" not in text, text[-3000:]
    assert not _processes_left(process.pid), "a worker outlived the call"
    assert 1 <= len(_series(out)) < 4
    _complete(out)
    assert (out / "dataset_description.json").is_file()  # provenance beside what was written


# --- --use-plugin ------------------------------------------------------------------------------


def test_plugin_file_is_read_and_checked(tmp_path):
    good = tmp_path / "plugin.yml"
    good.write_text("plugin: MultiProc\nplugin_args: {n_procs: 3, maxtasksperchild: 1}\n")
    assert load_plugin_file(good) == ("MultiProc", {"n_procs": 3, "maxtasksperchild": 1})
    (tmp_path / "linear.yml").write_text("plugin: Linear\n")
    assert load_plugin_file(tmp_path / "linear.yml") == ("Linear", {})
    cases = {
        "plugin: [MultiProc\n": "not valid YAML (line",
        "plugin_args: {n_procs: 2}\n": "'plugin: NAME'",
        "- MultiProc\n": "'plugin: NAME'",
        "plugin: Slurm\n": "choose one of",
        "plugin: SLURM\nplugin_args: --time=1:00:00\n": "must be a mapping",
    }
    for text, says in cases.items():
        bad = tmp_path / "bad.yml"
        bad.write_text(text)
        with pytest.raises(UsageError) as err:
            load_plugin_file(bad)
        assert f"--use-plugin {bad}" in str(err.value) and says in str(err.value), (text, str(err.value))
    with pytest.raises(InputMissingError, match="does not exist"):
        load_plugin_file(tmp_path / "absent.yml")


def test_plugin_arguments_fill_in_the_call_options():
    callback = object()
    name, args = plugin_and_args(("MultiProc", {"n_procs": 3}), 4, 8, 2048, callback)
    assert name == "MultiProc"
    assert args == {"n_procs": 3, "raise_insufficient": False, "memory_gb": 2.0, "status_callback": callback}
    assert plugin_and_args(("SLURM", {"sbatch_args": "-t 10"}), 4, 8, None, callback) == (
        "SLURM",
        {"sbatch_args": "-t 10", "status_callback": callback},
    )
    assert plugin_and_args(("SLURMGraph", {}), 4, 8, None, callback) == ("SLURMGraph", {})
    assert plugin_and_args(None, 1, 8, None, callback) == ("Linear", {"status_callback": callback})
    assert plugin_and_args(None, 2, 2, None, callback)[0] == "MultiProc"


def test_use_plugin_reaches_workflow_run(base, tmp_path, monkeypatch):
    from nipype.pipeline import engine

    calls = []
    monkeypatch.setattr(
        engine.Workflow, "run", lambda self, plugin, plugin_args: calls.append((plugin, plugin_args))
    )
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 1\n  maxtasksperchild: 1\n")
    args = [str(base), str(tmp_path / "out"), "participant", *OPTIONS, "-w", str(tmp_path / "work")]
    assert main([*args, "--participant-label", "01", "--use-plugin", str(plugin)]) == 0
    assert [(name, {k: v for k, v in a.items() if k != "status_callback"}) for name, a in calls] == [
        ("MultiProc", {"n_procs": 1, "maxtasksperchild": 1, "raise_insufficient": False})
    ]
    assert callable(calls[0][1]["status_callback"])


def test_bad_plugin_file_is_one_line_exit_64(base, tmp_path, capsys):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: MultiProc\nplugin_args: [n_procs, 2]\n")
    out = tmp_path / "out"
    capsys.readouterr()
    code = main([str(base), str(out), "participant", *OPTIONS, "--use-plugin", str(plugin)])
    err = capsys.readouterr().err
    assert code == 64, err
    assert err.strip().splitlines() == [
        f"neurossm-app: error: --use-plugin {plugin}: 'plugin_args' must be a mapping of the plugin's "
        "arguments; e.g. 'plugin: SLURM' and 'plugin_args: {sbatch_args: --time=01:00:00}' (docs/hpc.md)."
    ]
    assert not out.exists()


# --- the pieces ---------------------------------------------------------------------------------


def test_sigterm_waits_for_an_uninterrupted_block():
    from neurossm_app.interrupts import Terminated, handle_signals, uninterrupted

    steps, before = [], signal.getsignal(signal.SIGTERM)
    with handle_signals() as state, pytest.raises(Terminated):
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run by now; the block still finishes
            steps.append("block finished")
        steps.append("not reached")
    assert steps == ["block finished"] and state["received"] == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_crash_report_causes(tmp_path):
    from neurossm_app.cli.participant_failures import error_in_crash_report, failures_from_crashes
    from neurossm_app.errors import DataError, NeurossmError

    ours = "Traceback (most recent call last):\n\tneurossm_app.errors.DataError: bad.nii.gz is 3D; ...\n"
    error = error_in_crash_report(f"Node: wf.sub01_taskrest_wf.extract\n{ours}", tmp_path / "c.txt")
    assert isinstance(error, DataError) and str(error) == "bad.nii.gz is 3D; ..."
    other = (
        "nipype.pipeline.engine.nodes.NodeExecutionError: Exception raised while executing Node extract.\n"
        "\tTraceback (most recent call last):\n\tValueError: boom\n"
    )
    error = error_in_crash_report(other, tmp_path / "c.txt")
    assert type(error) is NeurossmError and str(error).startswith(
        "unexpected ValueError: boom (crash report: "
    )
    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    (crash_dir / "crash-1-user-extract-a.txt").write_text(f"Node: wf.sub02_taskrest_wf.extract\n{ours}")
    (crash_dir / "crash-2-user-extract-b.txt").write_text(f"Node: wf.sub09_taskrest_wf.extract\n{ours}")
    found = failures_from_crashes(crash_dir, {"sub02_taskrest_wf": "sub-02_task-rest"})
    assert list(found) == ["sub-02_task-rest"]  # sub-09 is no run of this call
