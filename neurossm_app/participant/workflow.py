"""The participant-level nipype workflow: one branch per BOLD run."""

from __future__ import annotations

import os
from pathlib import Path

from nipype.pipeline import engine as pe

from neurossm_app.atlases import Atlas
from neurossm_app.bids import BoldRun
from neurossm_app.config import CleaningSettings
from neurossm_app.participant.extract import input_fingerprint
from neurossm_app.participant.interfaces import DerivativesSink, ExtractCiftiRun, ExtractRun, RunReportlets


def init_run_wf(
    run: BoldRun,
    atlas: Atlas,
    settings: CleaningSettings,
    output_dir: str | os.PathLike,
    omp_nthreads: int = 1,
    name: str = "run_wf",
) -> pe.Workflow:
    """Extract denoised ROI time series from one preprocessed BOLD run.

    Three nodes: ``extract`` (atlas resampling, parcellation and cleaning, each well under a
    second on a small run, so one node rather than three), ``ds_timeseries`` (the outputs) and
    ``ds_report`` (the figures, drawn while other runs extract).

    Parameters
    ----------
    run
        The run's BOLD, mask and confounds files, TR and entities.
    atlas
        The resolved atlas (label image in MNI152NLin2009cAsym and label table).
    settings
        Denoising settings.
    output_dir
        OUTPUT_DIR; outputs are named by :func:`neurossm_app.bids.build_path`.
    omp_nthreads
        Threads the ``extract`` node inflates a gzipped BOLD image with (and reserves in
        MultiProc's accounting).

    Outputs
    -------
    ds_timeseries.out_files
        The time-series TSV, coverage TSV and JSON sidecar.
    ds_report.out_files
        The run's report figures (SVG) in ``OUTPUT_DIR/sub-X/figures``.
    """
    workflow = pe.Workflow(name=name)
    extract = _extract_node(run, atlas, settings, omp_nthreads)
    ds_timeseries = _timeseries_sink(run, atlas, settings, output_dir)
    ds_report = pe.Node(
        RunReportlets(
            output_dir=str(Path(output_dir).resolve()),
            entities=dict(run.entities),
            atlas_label=atlas.spec.bids_label,
            **_confounds_input(run),
            **({"mask_file": str(run.mask)} if run.mask is not None else {}),  # a CIFTI run has none
            indices=list(atlas.indices),
            fd_threshold=settings.fd_threshold,
        ),
        name="ds_report",
    )
    workflow.connect([
        (extract, ds_timeseries, [("clean_file", "clean_file"),
                                  ("coverage_file", "coverage_file"),
                                  ("metadata_file", "metadata_file")]),
        (extract, ds_report, [("atlas_file", "atlas_file"),
                              ("raw_file", "raw_file"),
                              ("coverage_file", "coverage_file"),
                              ("clean_file", "clean_file"),
                              ("metadata_file", "metadata_file")]),
    ])  # fmt: skip
    return workflow


def _extract_node(run: BoldRun, atlas: Atlas, settings: CleaningSettings, omp_nthreads: int) -> pe.Node:
    """The run's extraction, keyed in the cache by the BOLD file's fingerprint (not its bytes)."""
    inputs = {
        "bold_file": str(run.bold),
        "bold_fingerprint": input_fingerprint(run.bold),
        **_confounds_input(run),
        "atlas_file": str(atlas.image),
        "indices": list(atlas.indices),
        "names": list(atlas.names),
        "repetition_time": run.repetition_time,
        "settings": settings.to_dict(),
    }
    if run.is_cifti:  # grayordinates: the dlabel's parcels, no grid to resample to, no mask
        return pe.Node(ExtractCiftiRun(**inputs), name="extract")
    return pe.Node(
        ExtractRun(**inputs, mask_file=str(run.mask), n_threads=omp_nthreads),
        name="extract",
        n_procs=omp_nthreads,
    )


def _confounds_input(run: BoldRun) -> dict[str, str]:
    """The ``confounds_file`` input of a node, left undefined when the run has none."""
    return {"confounds_file": str(run.confounds)} if run.confounds is not None else {}


def _timeseries_sink(
    run: BoldRun, atlas: Atlas, settings: CleaningSettings, output_dir: str | os.PathLike
) -> pe.Node:
    """Writes the run's outputs; runs in the scheduling process (it only copies files)."""
    return pe.Node(
        DerivativesSink(
            output_dir=str(Path(output_dir).resolve()),
            entities={**run.entities, "space": run.space},
            atlas_label=atlas.spec.bids_label,
            atlas_file=atlas.uri,
            atlas_provenance=atlas.provenance(),
            repetition_time=run.repetition_time,
            settings=settings.to_dict(),
            sources=list(run.sources) or [str(p) for p in (run.bold, run.mask, run.confounds) if p],
            run_metadata=dict(run.metadata),
        ),
        name="ds_timeseries",
        run_without_submitting=True,
    )


def init_participant_wf(
    runs: list[BoldRun],
    atlas: Atlas,
    settings: CleaningSettings,
    output_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    omp_nthreads: int = 1,
    name: str = "neurossm_participant_wf",
) -> pe.Workflow:
    """One :func:`init_run_wf` branch per run, under a single workflow.

    The work directory caches every node, so re-running with the same inputs and settings
    recomputes nothing (outputs are still re-written by the sinks). Each run is its own branch;
    runs share no node.
    """
    workflow = pe.Workflow(name=name, base_dir=str(work_dir))
    for run in runs:
        branch = init_run_wf(
            run, atlas, settings, output_dir, omp_nthreads=omp_nthreads, name=branch_name(run)
        )
        workflow.add_nodes([branch])
    return workflow


def branch_name(run: BoldRun) -> str:
    """The name of the run's branch (``sub01_taskrest_wf``), as nipype's crash reports give it."""
    return f"{run.name.replace('-', '')}_wf"
