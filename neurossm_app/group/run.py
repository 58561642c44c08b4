"""The group level, top-down: check the inputs, train the units, aggregate, analyse, report.

Everything a call can fail on is checked before anything is created (:func:`run_group_level`):
the options and device, the inputs (made alike, labelled, long enough: :mod:`.data`,
:mod:`.inputs`), the run folder's writability, each unit's resume state and, with ``--analysis``,
that step's inputs. ``OUTPUT_DIR/group/<run-name>/`` then holds:

- ``config.json``: the resolved settings (checked on every later call of the run), software
  versions, training details, the dataset summary and how the inputs were made (:mod:`.run_folder`);
- ``splits.tsv``: the test fold and TR of every scan per seed (fixed at the first call);
- ``units/fold-K_seed-S/``: one unit's ``history.tsv``, ``metrics.tsv``, ``predictions.tsv`` and
  its completion marker ``unit.json``; ``checkpoints/``: the trained NeuroSSM of each unit
  (:mod:`.units`);
- ``metrics.tsv``, ``predictions.tsv``, ``subject_predictions.tsv``, ``summary.json``: every
  complete unit, aggregated (:mod:`.aggregate`, :mod:`.subjects`);
- with ``--analysis``, ``cpa/`` and ``maps/`` (:mod:`.analysis`); ``report.html``;
- ``logs/``: one log file per call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from neurossm_app import atlases
from neurossm_app.errors import UsageError
from neurossm_app.group.aggregate import aggregate_units
from neurossm_app.group.checkpoints import read_checkpoint_info
from neurossm_app.group.data import GroupDataset, load_dataset, select_timeseries
from neurossm_app.group.inputs import input_record, tr_counts, warn_mixed_trs
from neurossm_app.group.presets import GroupSettings
from neurossm_app.group.run_folder import (
    check_config,
    held_log_records,
    log_to_file,
    run_directory,
    run_directory_path,
    save_config,
)
from neurossm_app.group.series_cache import default_cache_dir
from neurossm_app.group.splits import (
    build_splits,
    check_fold_counts,
    fold_groups,
    group_unit,
    load_or_save_splits,
    saved_splits,
    split_groups,
    unit_split,
)
from neurossm_app.group.train import resolve_device
from neurossm_app.group.units import read_marker, run_unit, unit_dir
from neurossm_app.provenance import call_provenance

LOGGER = logging.getLogger("neurossm_app")


@dataclass(frozen=True)
class InputCaches:
    """``--cache-dir`` (the series cache; ``None``: ``OUTPUT_DIR/group/.cache``),
    ``--bids-database-dir`` (the saved pybids index of OUTPUT_DIR; ``None``: none) and
    ``--nprocs`` (processes that parse the TSVs when a large cache is built)."""

    cache_dir: Path | None = None
    database_dir: Path | None = None
    workers: int = 1


def run_group_level(
    settings: GroupSettings,
    output_dir: Path,
    participants_tsv: Path,
    run_filters: dict[str, Any] | None = None,
    fold: int | None = None,
    seed: int | None = None,
    analysis=None,
    fmriprep_dir: Path | None = None,
    command_line: list[str] | None = None,
    caches: InputCaches | None = None,
) -> Path:
    """Run the missing units of a group run, then aggregate, analyse and report (unless ``fold``/``seed``).

    Parameters
    ----------
    settings : GroupSettings
    output_dir : Path
        OUTPUT_DIR (participant-level outputs in, ``group/<run-name>`` out).
    participants_tsv : Path
        Labels for ``participants:COLUMN`` targets.
    run_filters : dict, optional
        Extra pybids filters on run entities.
    fold, seed : int, optional
        Run only these units (an HPC array task); a later plain call aggregates.
    analysis : neurossm_app.group.analysis.AnalysisOptions, optional
        ``--analysis``: CPA, class maps and Neurosynth scores after aggregation.
    fmriprep_dir : Path, optional
        The fMRIPrep derivatives, where their version is looked for besides the sidecars' sources.
    command_line : list of str, optional
        The call's argv (program name first), recorded in ``summary.json`` and the report.
    caches : InputCaches, optional
        Where the series cache and the pybids index live (default: the series cache in
        ``OUTPUT_DIR/group/.cache``, no saved index).

    Returns
    -------
    Path
        The run folder.
    """
    # Everything is checked before anything is created: a failing call exits within seconds
    # and leaves nothing behind, not even the run folder (its log gets the checks' lines after).
    with held_log_records() as earlier:
        units = select_units(settings, fold, seed)
        device = resolve_device(settings.device)
        dataset, inputs = load_inputs(
            settings, output_dir, participants_tsv, run_filters, fmriprep_dir, caches or InputCaches()
        )
        run_dir = run_directory_path(output_dir, settings.run_name)
        groups = fold_groups(dataset.subjects, settings.cv_group, participants_tsv)
        splits = check_resume_state(run_dir, settings, dataset, units, groups)
        prepared = check_analysis(settings, dataset, analysis, run_dir) if analysis is not None else None
        provenance = call_provenance(command_line)
    run_dir = run_directory(output_dir, settings.run_name)
    with log_to_file(run_dir, call_tag(fold, seed), earlier) as log_path:
        LOGGER.info(
            "group level: run %s (preset %s) in %s; log %s",
            settings.run_name, settings.preset, run_dir, log_path,
        )  # fmt: skip
        LOGGER.info("command: %s", provenance["command_line"])
        summary = dataset.summary()
        log_dataset(summary)
        save_config(run_dir, settings, summary, inputs)
        splits = load_or_save_splits(run_dir / "splits.tsv", splits, settings.run_name)
        train_units(run_dir, dataset, splits, units, settings, device)
        if fold is not None or seed is not None:
            LOGGER.info("done; run the group level without --fold/--seed to aggregate the units")
            return run_dir
        aggregate(run_dir, settings, dataset, {"inputs": inputs, "provenance": provenance})
        if analysis is not None:
            from neurossm_app.group.analysis import run_cpa_analysis

            run_cpa_analysis(run_dir, settings, dataset, splits, analysis, device, prepared)
        report(run_dir)
    return run_dir


def load_inputs(
    settings: GroupSettings,
    output_dir: Path,
    participants_tsv: Path,
    run_filters: dict[str, Any] | None,
    fmriprep_dir: Path | None = None,
    caches: InputCaches = InputCaches(),
) -> tuple[GroupDataset, dict[str, Any]]:
    """The selected time series with their labels, checked against the window and the folds.

    The series are read through the series cache (:mod:`.series_cache`) and the pybids index of
    OUTPUT_DIR is reused from ``caches.database_dir`` (:mod:`.output_index`).

    Returns
    -------
    dataset : GroupDataset
        Scans made alike, long enough for the window, of labelled subjects (the others listed in
        ``dataset.excluded``).
    inputs : dict
        :func:`~neurossm_app.group.inputs.input_record`, for ``config.json``, ``summary.json``
        and the report.
    """
    atlas_label = atlases.atlas_label(settings.atlas)
    selection = select_timeseries(
        output_dir,
        atlas_label,
        list(settings.participant_label or []),
        list(settings.session_label or []),
        list(settings.task_id or []),
        run_filters,
        caches.database_dir,
    )
    dataset = load_dataset(
        selection.scans, settings.target, participants_tsv, atlas_label, settings.dynamic_length,
        selection.excluded, caches.cache_dir or default_cache_dir(output_dir), output_dir, caches.workers,
    )  # fmt: skip
    check_fold_counts(
        dataset.labels, fold_groups(dataset.subjects, settings.cv_group, participants_tsv), dataset.classes,
        settings.folds, settings.skip_cross_validation, group_unit(settings.cv_group),
    )  # fmt: skip
    warn_mixed_trs(tr_counts(dataset.repetition_times), settings.dynamic_length)
    inputs = input_record(
        dataset.participant_settings, dataset.sidecars, dataset.repetition_times, output_dir, fmriprep_dir
    )
    return dataset, inputs


def check_resume_state(
    run_dir: Path,
    settings: GroupSettings,
    dataset: GroupDataset,
    units: list[tuple[int, int]],
    groups: list[str] | None = None,
) -> pd.DataFrame:
    """Check what earlier calls of the run left (read only) and return the splits to use.

    The saved settings (``config.json``), the saved splits (``splits.tsv``) and the checkpoint of
    every complete unit of ``units``: a damaged finished unit stops the call before hours of
    training, not after.

    Raises
    ------
    UsageError
        Other settings than the run was started with.
    DataError
        Other data, or a damaged checkpoint.
    """
    splits = build_splits(
        [s.name for s in dataset.scans],
        dataset.subjects,
        [dataset.classes[i] for i in dataset.labels],
        dataset.labels,
        settings.seeds,
        settings.n_folds,
        settings.skip_cross_validation,
        settings.test_size,
        dataset.repetition_times,
        groups,
    )
    check_config(run_dir, settings)
    saved = saved_splits(run_dir / "splits.tsv", splits, settings.run_name)
    for fold, seed in units:
        marker = read_marker(run_dir, fold, seed)
        if marker is not None:
            read_checkpoint_info(run_dir / marker["checkpoint"])
    return splits if saved is None else saved


def check_analysis(settings: GroupSettings, dataset: GroupDataset, analysis, run_dir: Path):
    """``--analysis``'s inputs (:func:`~neurossm_app.group.analysis.prepare_analysis`), checked now."""
    from neurossm_app.group.analysis import prepare_analysis

    return prepare_analysis(settings, dataset.classes, dataset.roi_names, analysis, run_dir)


def select_units(settings: GroupSettings, fold: int | None, seed: int | None) -> list[tuple[int, int]]:
    """The units a call runs: all, or those of ``--fold``/``--seed``.

    Raises
    ------
    UsageError
        ``fold`` or ``seed`` outside the run.
    """
    if fold is not None and not 0 <= fold < settings.n_folds:
        raise UsageError(f"--fold {fold} is out of range; folds are 0 to {settings.n_folds - 1}.")
    if seed is not None and seed not in settings.seeds:
        raise UsageError(
            f"--seed {seed} is not one of --seeds {' '.join(map(str, settings.seeds))}; "
            "add it to --seeds (the same list in every call of the run)."
        )
    return [(f, s) for f, s in settings.units if (fold is None or f == fold) and (seed is None or s == seed)]


def call_tag(fold: int | None, seed: int | None) -> str:
    """``all``, or ``fold-K_seed-S`` (``all`` for the one not given): names the call's log file."""
    if fold is None and seed is None:
        return "all"
    return f"fold-{fold}_seed-{seed}".replace("None", "all")


def log_dataset(summary: dict[str, Any]) -> None:
    """Log what was selected (:meth:`GroupDataset.summary`): scans, classes and missing values."""
    missing = summary["missing_values"]
    classes = ", ".join(
        f"{k} ({v['scans']} scans, {v['subjects']} subjects)" for k, v in summary["classes"].items()
    )
    LOGGER.info(
        "%d scan(s) of %d subject(s), %d ROIs (%s), classes: %s",
        summary["n_scans"], summary["n_subjects"], summary["n_rois"], summary["atlas"], classes,
    )  # fmt: skip
    LOGGER.info(
        "missing values: %d ROI column(s) in %d scan(s), %d censored volume(s) in %d scan(s), "
        "%.2f%% of all values; z-scored over finite values, then set to 0",
        missing["missing_roi_columns"], missing["scans_with_missing_rois"], missing["censored_volumes"],
        missing["scans_with_censored_volumes"], 100 * missing["missing_fraction"],
    )  # fmt: skip
    if summary["excluded"]:
        LOGGER.info(
            "left out: %s",
            "; ".join(
                f"{e['subject']} ({len(e['scans'])} scan(s): {e['reason']})" for e in summary["excluded"]
            ),
        )


def train_units(
    run_dir: Path,
    dataset: GroupDataset,
    splits: pd.DataFrame,
    units: list[tuple[int, int]],
    settings: GroupSettings,
    device: torch.device,
) -> None:
    """Train every unit of ``units`` that is not complete yet; complete ones are kept
    (their checkpoints were checked by :func:`check_resume_state`)."""
    LOGGER.info("training on %s with %d thread(s)", device, torch.get_num_threads())
    names = [s.name for s in dataset.scans]
    for fold, seed in units:
        if read_marker(run_dir, fold, seed) is not None:
            LOGGER.info(
                "unit fold-%d seed-%d is complete; skipping it (delete %s to redo it)",
                fold, seed, unit_dir(run_dir, fold, seed),
            )  # fmt: skip
            continue
        train, test = unit_split(splits, names, fold, seed)
        groups = split_groups(splits, names, seed)
        run_unit(dataset, train, test, fold, seed, settings, run_dir, device, groups)


def aggregate(run_dir: Path, settings: GroupSettings, dataset: GroupDataset, extra: dict[str, Any]) -> None:
    """Aggregate every complete unit (:func:`~.aggregate.aggregate_units`) and log the results."""
    times = {scan.name: t for scan, t in zip(dataset.scans, dataset.repetition_times, strict=True)}
    result = aggregate_units(run_dir, settings, dataset.summary(), times, extra)
    per_subject = result.get("subject_level", {}).get("models", {})
    for level, models in (("per scan", result["models"]), ("per subject", per_subject)):
        for model, values in models.items():
            LOGGER.info(
                "%s %s: accuracy %s, balanced accuracy %s, ROC-AUC %s",
                model,
                level,
                _mean_sd_text(values["accuracy"]),
                _mean_sd_text(values["balanced_accuracy"]),
                _mean_sd_text(values["roc_auc"]),
            )
    LOGGER.info(
        "results in %s (metrics.tsv, summary.json, predictions.tsv, subject_predictions.tsv)", run_dir
    )


def report(run_dir: Path) -> None:
    """``RUN_DIR/report.html`` from what the run folder holds."""
    from neurossm_app.heap import frozen_heap
    from neurossm_app.reports.group import build_group_report

    with frozen_heap():  # nilearn's plotting collects garbage once per image it reads
        LOGGER.info("report: %s", build_group_report(run_dir))


def _mean_sd_text(values: dict[str, Any]) -> str:
    if values["mean"] is None:
        return "n/a"
    sd = f" ± {values['sd']:.3f}" if values["sd"] is not None else ""
    return f"{values['mean']:.3f}{sd} (n={values['n']})"
