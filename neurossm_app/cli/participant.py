"""``neurossm-app BIDS_DIR OUTPUT_DIR participant``: settings from options, then the workflow."""

from __future__ import annotations

import argparse
import gc
import logging
import re
from collections import Counter
from pathlib import Path

from neurossm_app import __version__
from neurossm_app.errors import DataError, NeurossmError

LOGGER = logging.getLogger("neurossm_app")

#: Seconds between MultiProc's polls of its workers (see docs/performance.md, "Participant level:
#: whole calls"): short next to a node, long enough that the scheduler's loop costs ~1% of a core.
POLL_SECONDS = 0.05


def run_participant(opts: argparse.Namespace) -> None:
    """Select runs, build the nipype workflow, run it, and write provenance files."""
    from neurossm_app.bids import check_output_dir, dataset_description
    from neurossm_app.citation import write_citation
    from neurossm_app.participant.output_settings import (
        check_output_settings,
        record_output_settings,
        space_of,
    )
    from neurossm_app.participant.validation import finish_validation, start_validation

    output_dir = check_output_dir(opts.bids_dir, opts.output_dir)
    settings = _cleaning_settings(opts)
    # The validator (a separate process, about a second) checks BIDS_DIR while pybids indexes
    # the derivatives and the runs are checked; its verdict is still the first one reported.
    validation = None if opts.skip_bids_validation else start_validation(opts.bids_dir)
    try:
        runs, atlas = _select_runs(opts)
    finally:
        finish_validation(validation, opts.bids_dir)
    made = check_output_settings(output_dir, settings, space_of(runs))  # refused before any write
    subjects = sorted({r.entities["subject"] for r in runs})
    LOGGER.info(
        "participant level: %d run(s) of %d subject(s), atlas %s (%d ROIs), confounds %s",
        len(runs),
        len(subjects),
        atlas.spec.bids_label,
        atlas.n_rois,
        settings.strategy,
    )
    progress = _ProgressLog(runs, output_dir)
    try:
        _run_workflow(runs, atlas, settings, output_dir, opts, progress)
    finally:
        # Provenance goes beside results only: a call that fails before any run is written (say,
        # on NaN in a BOLD file) leaves OUTPUT_DIR without files that look like a derivative.
        if progress.done:
            dataset_description(output_dir, [opts.bids_dir], links=_dataset_links(opts, output_dir, atlas))
            write_citation(output_dir, atlas=atlas, settings=settings, space=made["Space"])
            record_output_settings(output_dir, made)
    reports = [progress.reports.get(s) or _subject_report(output_dir, s) for s in subjects]
    LOGGER.info(
        "reports: %s", reports[0] if len(reports) == 1 else f"{output_dir}/sub-*.html ({len(reports)})"
    )
    LOGGER.info("done: ROI time series for %d run(s) are in %s", len(runs), output_dir)


def _cleaning_settings(opts: argparse.Namespace):
    """The denoising settings the options ask for."""
    from neurossm_app.config import CleaningSettings

    return CleaningSettings(
        strategy=opts.confounds,
        high_pass=opts.high_pass,
        low_pass=opts.low_pass,
        detrend=opts.detrend,
        standardize=opts.standardize,
        fd_threshold=opts.fd_thresh,
        std_dvars_threshold=opts.dvars_thresh,
        dummy_scans=opts.dummy_scans,
        min_coverage=opts.min_coverage,
    )


def _select_runs(opts: argparse.Namespace):
    """The runs to process, checked (pre-flight), and the atlas."""
    from neurossm_app.atlases import get_atlas
    from neurossm_app.fmriprep import collect_bold_runs, find_fmriprep_dir, load_filter_file
    from neurossm_app.participant.preflight import check_run

    fmriprep_dir = find_fmriprep_dir(opts.bids_dir, opts.derivatives)
    runs = collect_bold_runs(
        fmriprep_dir,
        participant_labels=opts.participant_label,
        session_labels=opts.session_label,
        task_ids=opts.task_id,
        bids_filters=load_filter_file(opts.bids_filter_file),
        database_dir=opts.bids_database_dir,
        space=opts.space,
        link=_fmriprep_link(opts.output_dir, fmriprep_dir),
    )
    for run in runs:
        check_run(run)
    return runs, get_atlas(opts.atlas or "schaefer400", opts.atlas_dir, space=runs[0].space)


def _fmriprep_link(output_dir: Path, fmriprep_dir: Path) -> str:
    """The ``DatasetLinks`` name of the fMRIPrep dataset in this OUTPUT_DIR (``fmriprep``, or
    ``fmriprep2``... when an earlier call linked another folder)."""
    from neurossm_app.bids import free_link_name
    from neurossm_app.fmriprep import FMRIPREP_LINK

    return free_link_name(output_dir, FMRIPREP_LINK, fmriprep_dir)


def _dataset_links(opts: argparse.Namespace, output_dir: Path, atlas) -> dict[str, Path]:
    """The datasets the sidecars' BIDS URIs point into: fMRIPrep's and the atlas cache."""
    from neurossm_app.fmriprep import find_fmriprep_dir

    fmriprep_dir = find_fmriprep_dir(opts.bids_dir, opts.derivatives)
    links = {_fmriprep_link(output_dir, fmriprep_dir): fmriprep_dir}
    if atlas.root is not None:
        links[atlas.link] = atlas.root
    return links


def _run_workflow(
    runs, atlas, settings, output_dir: Path, opts: argparse.Namespace, progress: _ProgressLog
) -> None:
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    from neurossm_app.participant.workflow import init_participant_wf

    work_dir = opts.work_dir / f"neurossm_{__version__.replace('.', '_')}"
    crash_dir = work_dir / "crash"
    nipype_config.update_config(
        {
            "execution": {
                "crashdump_dir": str(crash_dir),
                "crashfile_format": "txt",
                "stop_on_first_crash": True,
                "remove_unnecessary_outputs": False,
                "hash_method": "content",
                # MultiProc sleeps this long between polls of its workers (2 s by default, made
                # for minute-long nodes); a run here is three nodes of about a second or less.
                "poll_sleep_duration": POLL_SECONDS,
            },
            "monitoring": {"enabled": False},
            # nipype's per-node lines only with -v; _ProgressLog reports finished runs
            "logging": {
                key: "INFO" if opts.verbose else "WARNING"
                for key in ("workflow_level", "interface_level", "utils_level")
            },
        }
    )
    nipype_logging.update_logging(nipype_config)
    workflow = init_participant_wf(runs, atlas, settings, output_dir, work_dir, opts.omp_nthreads)
    plugin_args = {
        "n_procs": opts.nprocs,
        "raise_insufficient": False,
        "status_callback": progress,
    }
    if opts.mem_mb:
        plugin_args["memory_gb"] = opts.mem_mb / 1024
    plugin = "MultiProc" if opts.nprocs > 1 and len(runs) > 1 else "Linear"
    # MultiProc runs a full gc.collect() before each submission and nilearn one per image it
    # reads; with pybids, pandas and nipype (and the group options' torch) loaded, each scanned
    # ~300,000 objects, 0.2-0.4 s, dozens of times per call, while the workers waited. Frozen
    # objects are skipped (in forked workers too); the process gets them back afterwards.
    gc.freeze()
    try:
        workflow.run(
            plugin=plugin,
            plugin_args=plugin_args
            if plugin == "MultiProc"
            else {"status_callback": plugin_args["status_callback"]},
        )
    except Exception as err:  # noqa: BLE001 - nipype wraps node errors; recover ours
        raise _error_from_crash(crash_dir, err) from None
    finally:
        gc.unfreeze()


class _ProgressLog:
    """nipype status callback: one log line per finished run (nipype's own lines need -v), and
    each subject's report as soon as all its runs are written, while the workers go on with
    other subjects (rather than one after the other once the workflow is done)."""

    def __init__(self, runs: list, output_dir: Path):
        self.total = len(runs)
        self.done = 0
        self.output_dir = output_dir
        # both sinks of every run of a subject, still to finish
        self.pending = Counter(2 * [r.entities["subject"] for r in runs])
        self.reports: dict[str, Path] = {}

    def __call__(self, node, status: str) -> None:
        if status != "end" or node.name not in ("ds_timeseries", "ds_report"):
            return
        subject = node.inputs.entities["subject"]
        if node.name == "ds_timeseries":
            self.done += 1
            from neurossm_app.bids import run_label

            LOGGER.info("[%d/%d] %s written", self.done, self.total, run_label(node.inputs.entities))
        self.pending[subject] -= 1
        if self.pending[subject] == 0:
            self.reports[subject] = _subject_report(self.output_dir, subject)


def _subject_report(output_dir: Path, subject: str) -> Path:
    from neurossm_app.reports.participant import build_participant_report

    return build_participant_report(output_dir, subject)


_OUR_ERROR = re.compile(r"neurossm_app\.errors\.(\w+): (.+)")


def _error_from_crash(crash_dir: Path, err: Exception) -> NeurossmError:
    """Turn a nipype node crash back into the user-facing error it carried."""
    from neurossm_app import errors

    crashes = (
        sorted(crash_dir.glob("crash-*.txt"), key=lambda p: p.stat().st_mtime) if crash_dir.exists() else []
    )
    for crash in reversed(crashes):
        found = _OUR_ERROR.findall(crash.read_text(errors="replace"))
        if found:
            name, message = found[-1]
            return getattr(errors, name, DataError)(message.strip())
    where = f" (crash report: {crashes[-1]})" if crashes else ""
    return DataError(f"the participant workflow failed: {str(err).splitlines()[0]}{where}")
