"""The participant-level nipype workflow: one branch per BOLD run."""

from __future__ import annotations

import os
from pathlib import Path

from nipype.pipeline import engine as pe

from neurossm_app.atlases import Atlas
from neurossm_app.bids import BoldRun
from neurossm_app.config import CleaningSettings
from neurossm_app.participant.interfaces import (
    CleanSignals,
    DerivativesSink,
    Parcellate,
    ResampleAtlas,
    RunReportlets,
)


def init_run_wf(
    run: BoldRun,
    atlas: Atlas,
    settings: CleaningSettings,
    output_dir: str | os.PathLike,
    name: str = "run_wf",
) -> pe.Workflow:
    """Extract denoised ROI time series from one preprocessed BOLD run.

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

    Outputs
    -------
    ds_timeseries.out_files
        The time-series TSV, coverage TSV and JSON sidecar.
    ds_report.out_files
        The run's report figures (SVG) in ``OUTPUT_DIR/sub-X/figures``.
    """
    workflow = pe.Workflow(name=name)
    resample = pe.Node(
        ResampleAtlas(atlas_file=str(atlas.image), bold_file=str(run.bold)), name="resample_atlas"
    )
    parcellate = pe.Node(
        Parcellate(
            bold_file=str(run.bold),
            mask_file=str(run.mask),
            indices=list(atlas.indices),
            names=list(atlas.names),
        ),
        name="parcellate",
    )
    clean = pe.Node(
        CleanSignals(
            bold_file=str(run.bold), repetition_time=run.repetition_time, settings=settings.to_dict()
        ),
        name="clean",
    )
    ds_timeseries = pe.Node(
        DerivativesSink(
            output_dir=str(Path(output_dir).resolve()),
            entities=dict(run.entities),
            atlas_label=atlas.spec.bids_label,
            atlas_file=str(atlas.image),
            repetition_time=run.repetition_time,
            settings=settings.to_dict(),
            sources=[str(run.bold), str(run.mask), str(run.confounds)],
        ),
        name="ds_timeseries",
        run_without_submitting=True,
    )
    ds_report = pe.Node(
        RunReportlets(
            output_dir=str(Path(output_dir).resolve()),
            entities=dict(run.entities),
            confounds_file=str(run.confounds),
            mask_file=str(run.mask),
            indices=list(atlas.indices),
            fd_threshold=settings.fd_threshold,
        ),
        name="ds_report",
    )
    workflow.connect([
        (resample, parcellate, [("out_file", "atlas_file")]),
        (parcellate, clean, [("raw_file", "raw_file"), ("coverage_file", "coverage_file")]),
        (clean, ds_timeseries, [("clean_file", "clean_file"), ("metadata_file", "metadata_file")]),
        (parcellate, ds_timeseries, [("coverage_file", "coverage_file")]),
        (resample, ds_report, [("out_file", "atlas_file")]),
        (parcellate, ds_report, [("raw_file", "raw_file"), ("coverage_file", "coverage_file")]),
        (clean, ds_report, [("clean_file", "clean_file"), ("metadata_file", "metadata_file")]),
    ])  # fmt: skip
    return workflow


def init_participant_wf(
    runs: list[BoldRun],
    atlas: Atlas,
    settings: CleaningSettings,
    output_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    name: str = "neurossm_participant_wf",
) -> pe.Workflow:
    """One :func:`init_run_wf` branch per run, under a single workflow.

    The work directory caches every node, so re-running with the same inputs and settings
    recomputes nothing (outputs are still re-written by the sinks).
    """
    workflow = pe.Workflow(name=name, base_dir=str(work_dir))
    for run in runs:
        branch = init_run_wf(run, atlas, settings, output_dir, name=f"{_safe(run.name)}_wf")
        workflow.add_nodes([branch])
    return workflow


def _safe(name: str) -> str:
    return name.replace("-", "")
