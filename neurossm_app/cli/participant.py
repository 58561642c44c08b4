"""``neurossm-app BIDS_DIR OUTPUT_DIR participant``: settings from options, then the workflow."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from neurossm_app import __version__
from neurossm_app.cli.participant_failures import failures_from_crashes, runs_failed
from neurossm_app.cli.plugins import load_plugin_file, plugin_and_args
from neurossm_app.errors import NeurossmError
from neurossm_app.heap import frozen_heap
from neurossm_app.logfiles import held_log_records, log_to_file
from neurossm_app.provenance import PARTICIPANT_PACKAGES, call_provenance

LOGGER = logging.getLogger("neurossm_app")

#: Seconds between MultiProc's polls of its workers (see docs/performance.md, "Participant level:
#: whole calls"): short next to a node, long enough that the scheduler's loop costs ~1% of a core.
POLL_SECONDS = 0.05


def run_participant(opts: argparse.Namespace) -> None:
    """Select runs, build the nipype workflow, run it, and write provenance files; once the
    checks pass, the call's log goes to ``OUTPUT_DIR/logs/`` (as the group level's does)."""
    with ExitStack() as log_files:
        _run_participant(opts, log_files, log_files.enter_context(held_log_records()))


def _run_participant(opts: argparse.Namespace, log_files: ExitStack, earlier: list) -> None:
    from neurossm_app.bids import check_output_dir, dataset_description
    from neurossm_app.citation import write_citation
    from neurossm_app.participant.output_settings import (
        check_output_settings,
        record_output_settings,
        space_of,
    )
    from neurossm_app.participant.validation import finish_validation, start_validation

    # A bad --use-plugin file is refused before anything is written.
    plugin = load_plugin_file(opts.use_plugin) if opts.use_plugin else None
    output_dir = check_output_dir(opts.bids_dir, opts.output_dir)
    settings = _cleaning_settings(opts)
    # The validator (a separate process, about a second) checks BIDS_DIR while pybids indexes
    # the derivatives and the runs are checked; its verdict is still the first one reported.
    # HCP's own layout is not BIDS: nothing for the validator to check (XCP-D does not either)
    skip_validation = opts.skip_bids_validation or opts.input_type == "hcp"
    validation = None if skip_validation else start_validation(opts.bids_dir)
    try:
        runs, failures, atlas = _select_runs(opts, settings)
    finally:
        finish_validation(validation, opts.bids_dir)
    made = check_output_settings(output_dir, settings, space_of(runs))  # refused before any write
    subjects = sorted({r.entities["subject"] for r in runs})
    good = [r for r in runs if r.name not in failures]
    if not good:  # every run failed the checks: nothing is written
        raise runs_failed([r.name for r in runs], failures)
    LOGGER.info(
        "participant level: %d run(s) of %d subject(s), atlas %s (%d ROIs), confounds %s",
        len(good),
        len(subjects),
        atlas.spec.bids_label,
        atlas.n_rois,
        settings.strategy,
    )
    log_path = log_files.enter_context(log_to_file(output_dir, _log_tag(subjects), earlier))
    LOGGER.info("log %s", log_path)
    provenance = call_provenance(getattr(opts, "command_line", None), PARTICIPANT_PACKAGES)
    LOGGER.info("command: %s", provenance["command_line"])
    progress = _ProgressLog(good, output_dir, failures, provenance)
    try:
        failures.update(_run_workflow(good, atlas, settings, output_dir, opts, progress, plugin))
    finally:
        progress.settle()
        # Provenance goes beside results only: a call that fails before any run is written (say,
        # on NaN in a BOLD file) leaves OUTPUT_DIR without files that look like a derivative.
        if progress.done:
            dataset_description(output_dir, [opts.bids_dir], links=_dataset_links(opts, output_dir, atlas))
            write_citation(output_dir, atlas=atlas, settings=settings, space=made["Space"])
            record_output_settings(output_dir, made)
    if progress.done:  # a call that wrote nothing leaves no report either
        _write_reports(output_dir, subjects, progress, failures, provenance)
        LOGGER.info("done: ROI time series for %d run(s) are in %s", progress.done, output_dir)
    if failures:
        raise runs_failed([r.name for r in runs], failures)


def _log_tag(subjects: list[str]) -> str:
    """``participant_sub-<label>`` for one subject (an HPC array task), else ``participant``."""
    return f"participant_sub-{subjects[0]}" if len(subjects) == 1 else "participant"


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


def _select_runs(opts: argparse.Namespace, settings):
    """The selected runs, those that fail the pre-flight checks (run name -> error), and the atlas.

    Every run is checked, so every known data error is reported at once; a run that fails is left
    out and the others are processed.
    """
    from neurossm_app.custom_atlas import resolve_atlas
    from neurossm_app.fmriprep import collect_bold_runs, find_fmriprep_dir, load_filter_file
    from neurossm_app.participant.preflight import check_runs

    failures: dict[str, NeurossmError] = {}
    selection = _selection(opts, load_filter_file(opts.bids_filter_file))
    if opts.input_type == "hcp":
        runs, failures = _hcp_runs(opts, settings, selection)
    else:
        fmriprep_dir = find_fmriprep_dir(opts.bids_dir, opts.derivatives)
        runs = collect_bold_runs(
            fmriprep_dir,
            **selection,
            database_dir=opts.bids_database_dir,
            link=_fmriprep_link(opts.output_dir, fmriprep_dir),
        )
    # an HCP run whose confounds could not be made has failed already
    failures |= check_runs([r for r in runs if r.name not in failures], settings, opts.nprocs)
    if failures and len(failures) < len(runs):
        LOGGER.warning(
            "pre-flight: %d of %d run(s) fail the checks and are left out (one line each at the end)",
            len(failures),
            len(runs),
        )
    first = runs[0]  # the atlas is read in the runs' space, and must lie in a run's field of view
    atlas = resolve_atlas(
        opts.atlas, opts.atlas_label, opts.derivatives, opts.atlas_dir, first.space, first.bold
    )
    return runs, failures, atlas


def _fmriprep_link(output_dir: Path, fmriprep_dir: Path) -> str:
    """The ``DatasetLinks`` name of the fMRIPrep dataset in this OUTPUT_DIR (``fmriprep``, or
    ``fmriprep2``... when an earlier call linked another folder)."""
    from neurossm_app.bids import free_link_name
    from neurossm_app.fmriprep import FMRIPREP_LINK

    return free_link_name(output_dir, FMRIPREP_LINK, fmriprep_dir)


def _selection(opts: argparse.Namespace, bids_filters: dict) -> dict:
    """The options that select runs (with the ``--bids-filter-file``'s filters), as
    :func:`~neurossm_app.fmriprep.collect_bold_runs` and :func:`~neurossm_app.hcp.collect_hcp_runs`
    take them."""
    return {
        "participant_labels": opts.participant_label,
        "session_labels": opts.session_label,
        "task_ids": opts.task_id,
        "bids_filters": bids_filters,
        "space": opts.space,
    }


def _hcp_runs(opts: argparse.Namespace, settings, selection: dict):
    """The HCP-YA runs (``--input-type hcp``) that ``selection`` (:func:`_selection`) selects, with
    their confounds tables made (or reused) under ``-w``, and the runs whose table could not be
    made (run name -> error)."""
    from neurossm_app.bids import free_link_name
    from neurossm_app.hcp import (
        HCP_LINK,
        add_hcp_confounds,
        check_hcp_settings,
        collect_hcp_runs,
        find_hcp_dir,
    )

    check_hcp_settings(settings.strategy, settings.std_dvars_threshold)
    hcp_dir = find_hcp_dir(opts.bids_dir, opts.derivatives)
    link = free_link_name(opts.output_dir, HCP_LINK, hcp_dir)
    runs, incomplete = collect_hcp_runs(hcp_dir, **selection, link=link)
    folder = opts.work_dir / f"neurossm_{__version__.replace('.', '_')}" / "hcp_confounds"
    return add_hcp_confounds(runs, folder, settings.strategy, opts.nprocs, incomplete)


def _dataset_links(opts: argparse.Namespace, output_dir: Path, atlas) -> dict[str, Path]:
    """The datasets the sidecars' BIDS URIs point into: fMRIPrep's and the atlas cache."""
    from neurossm_app.fmriprep import find_fmriprep_dir

    if opts.input_type == "hcp":
        from neurossm_app.bids import free_link_name
        from neurossm_app.hcp import HCP_LINK, find_hcp_dir

        hcp_dir = find_hcp_dir(opts.bids_dir, opts.derivatives)
        links = {free_link_name(output_dir, HCP_LINK, hcp_dir): hcp_dir}
    else:
        fmriprep_dir = find_fmriprep_dir(opts.bids_dir, opts.derivatives)
        links = {_fmriprep_link(output_dir, fmriprep_dir): fmriprep_dir}
    if atlas.root is not None:
        links[atlas.link] = atlas.root
    return links


def _run_workflow(
    runs, atlas, settings, output_dir: Path, opts: argparse.Namespace, progress: _ProgressLog, plugin
) -> dict[str, NeurossmError]:
    """Run every run's branch; returns the runs that failed (run name -> error).

    No node failure stops the others (``stop_on_first_crash`` is off). Ctrl-C or SIGTERM stops
    the workers before the interrupt goes on.
    """
    from neurossm_app.interrupts import stop_child_processes
    from neurossm_app.participant.workflow import branch_name, init_participant_wf

    work_dir = opts.work_dir / f"neurossm_{__version__.replace('.', '_')}"
    # This call's crash reports only: array jobs of other subjects (and earlier calls) may share -w.
    crash_dir = work_dir / "crash" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    _configure_nipype(crash_dir, opts.verbose)
    workflow = init_participant_wf(runs, atlas, settings, output_dir, work_dir, opts.omp_nthreads)
    name, args = plugin_and_args(plugin, len(runs), opts.nprocs, opts.mem_mb, progress)
    failed: dict[str, NeurossmError] = {}
    try:
        # MultiProc collects garbage before each submission: dozens of 0.2-0.4 s collections
        # per call, while the workers waited (neurossm_app.heap)
        with frozen_heap(), _nipype_crashes_unlogged(opts.verbose):
            workflow.run(plugin=name, plugin_args=args)
    except KeyboardInterrupt:
        stop_child_processes()
        raise
    except Exception as err:  # noqa: BLE001 - nipype wraps node errors; recover ours
        failed = failures_from_crashes(crash_dir, {branch_name(r): r.name for r in runs})
        if not failed:
            raise NeurossmError(
                f"the participant workflow failed: {str(err).strip().splitlines()[0]} (re-run with -v)"
            ) from None
    if "status_callback" not in args:  # a *Graph plugin: no callback counted the written runs
        progress.done = len(runs) - len(failed)
    return failed


def _configure_nipype(crash_dir: Path, verbose: int) -> None:
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    nipype_config.update_config(
        {
            "execution": {
                "crashdump_dir": str(crash_dir),
                "crashfile_format": "txt",
                "stop_on_first_crash": False,  # one run's failure never stops the others
                "remove_unnecessary_outputs": False,
                "hash_method": "content",
                # MultiProc sleeps this long between polls of its workers (2 s by default, made
                # for minute-long nodes); a run here is three nodes of about a second or less.
                "poll_sleep_duration": POLL_SECONDS,
            },
            "monitoring": {"enabled": False},
            # nipype's per-node lines only with -v; _ProgressLog reports finished runs
            "logging": {
                key: "INFO" if verbose else "WARNING"
                for key in ("workflow_level", "interface_level", "utils_level")
            },
        }
    )
    nipype_logging.update_logging(nipype_config)


#: nipype's warnings about a failed node (one line per failed run replaces them without -v).
_NODE_FAILED = ("[Node] Error on", "Storing result file without outputs")


def _below_error(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
        return False
    return not (record.levelno == logging.WARNING and str(record.msg).startswith(_NODE_FAILED))


@contextmanager
def _nipype_crashes_unlogged(verbose: int) -> Iterator[None]:
    """Without -v, nipype's records of failed nodes (each crash with its traceback) are dropped:
    the call prints one line per failed run instead. Forked workers inherit the filter."""
    logger = logging.getLogger("nipype.workflow")
    if not verbose:
        logger.addFilter(_below_error)
    try:
        yield
    finally:
        logger.removeFilter(_below_error)


class _ProgressLog:
    """nipype status callback: one log line per finished run (nipype's own lines need -v), and
    each subject's report as soon as all its runs are written, while the workers go on with
    other subjects (rather than one after the other once the workflow is done)."""

    def __init__(
        self,
        runs: list,
        output_dir: Path,
        failures: dict[str, NeurossmError] | None = None,
        provenance: dict | None = None,
    ):
        self.total = len(runs)
        self.done = 0
        self.output_dir = output_dir
        # both sinks of every run of a subject, still to finish
        self.pending = Counter(2 * [r.entities["subject"] for r in runs])
        self.reports: dict[str, Path] = {}
        self.failures = failures or {}  # runs the pre-flight checks left out, for the reports
        self.provenance = provenance  # the call's version, command line and date, for the reports
        self.runs = runs
        self.started = time.time()
        self.failed_branches: set[str] = set()  # runs (workflow branches) with a failed node

    def settle(self) -> None:
        """After Ctrl-C or SIGTERM, count the runs whose sidecar (written last) this call wrote:
        the interrupt may have come between a sink's end and its callback."""
        from neurossm_app.interrupts import interrupted

        if interrupted():
            self.done = max(self.done, sum(self._written(run) for run in self.runs))

    def _written(self, run) -> bool:
        pattern = f"**/{run.name}_space-*_stat-mean_timeseries.json"
        subject_dir = self.output_dir / f"sub-{run.entities['subject']}"
        return any(p.stat().st_mtime >= self.started for p in subject_dir.glob(pattern))

    def __call__(self, node, status: str) -> None:
        from neurossm_app.interrupts import raise_if_interrupted

        # nipype turns an interrupt inside a node into that node's failure and goes on; the
        # callback that follows (the plugin's loop, outside any node) raises it again.
        raise_if_interrupted()
        branch = node.fullname.rsplit(".", 1)[0]
        if status == "exception":
            self.failed_branches.add(branch)
        # nipype calls a node "ended" that failed (MultiProc, after "exception") or that was
        # skipped because its run failed (Linear)
        if status != "end" or node.name not in ("ds_timeseries", "ds_report"):
            return
        if branch in self.failed_branches:
            return
        subject = node.inputs.entities["subject"]
        if node.name == "ds_timeseries":
            self.done += 1
            from neurossm_app.bids import run_label

            LOGGER.info("[%d/%d] %s written", self.done, self.total, run_label(node.inputs.entities))
        self.pending[subject] -= 1
        if self.pending[subject] == 0:
            self.reports[subject] = _subject_report(self.output_dir, subject, self.failures, self.provenance)


def _write_reports(
    output_dir: Path, subjects: list[str], progress: _ProgressLog, failures: dict, provenance: dict
) -> None:
    """Every subject's report; those with a failed run (built again) say which and why."""
    reports = [
        progress.reports[s]
        if s in progress.reports and not _of_subject(failures, s)
        else _subject_report(output_dir, s, failures, provenance)
        for s in subjects
    ]
    LOGGER.info(
        "reports: %s", reports[0] if len(reports) == 1 else f"{output_dir}/sub-*.html ({len(reports)})"
    )


def _of_subject(failures: dict[str, NeurossmError], subject: str) -> dict[str, str]:
    """The failed runs of one subject (run name -> why), from the run names (``sub-<label>_...``)."""
    return {name: str(err) for name, err in failures.items() if name.split("_")[0] == f"sub-{subject}"}


def _subject_report(
    output_dir: Path, subject: str, failures: dict | None = None, provenance: dict | None = None
) -> Path:
    from neurossm_app.reports.participant import build_participant_report

    failed = _of_subject(failures or {}, subject)
    return build_participant_report(output_dir, subject, failed=failed, provenance=provenance)
