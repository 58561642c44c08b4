"""The group level, top-down: check the inputs, train the units, aggregate, analyse, report.

``OUTPUT_DIR/group/<run-name>/`` holds:

- ``config.json``: the resolved settings (checked on every later call of the run), software
  versions, training details and the dataset summary (:mod:`.run_folder`);
- ``splits.tsv``: the test fold of every scan per seed (fixed at the first call);
- ``units/fold-K_seed-S/``: one unit's ``history.tsv``, ``metrics.tsv``, ``predictions.tsv`` and
  its completion marker ``unit.json``; ``checkpoints/``: the trained NeuroSSM of each unit
  (:mod:`.units`);
- ``metrics.tsv``, ``predictions.tsv``, ``summary.json``: every complete unit, aggregated
  (:mod:`.aggregate`);
- with ``--analysis``, ``cpa/`` and ``maps/`` (:mod:`.analysis`); ``report.html``;
- ``logs/``: one log file per call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from neurossm_app.atlases import ATLASES
from neurossm_app.errors import UsageError
from neurossm_app.group.aggregate import aggregate_units
from neurossm_app.group.checkpoints import read_checkpoint_info
from neurossm_app.group.data import GroupDataset, check_lengths, find_timeseries, load_dataset
from neurossm_app.group.presets import GroupSettings
from neurossm_app.group.run_folder import check_or_save_config, log_to_file, run_directory
from neurossm_app.group.splits import build_splits, check_fold_counts, load_or_save_splits, unit_split
from neurossm_app.group.train import resolve_device
from neurossm_app.group.units import read_marker, run_unit, unit_dir

LOGGER = logging.getLogger("neurossm_app")


def run_group_level(
    settings: GroupSettings,
    output_dir: Path,
    participants_tsv: Path,
    run_filters: dict[str, Any] | None = None,
    fold: int | None = None,
    seed: int | None = None,
    analysis=None,
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

    Returns
    -------
    Path
        The run folder.
    """
    # Read and check the data before creating anything: a failing call leaves no folder behind.
    dataset = load_inputs(settings, output_dir, participants_tsv, run_filters)
    units = select_units(settings, fold, seed)
    device = resolve_device(settings.device)
    run_dir = run_directory(output_dir, settings.run_name)
    with log_to_file(run_dir, call_tag(fold, seed)) as log_path:
        LOGGER.info(
            "group level: run %s (preset %s) in %s; log %s",
            settings.run_name,
            settings.preset,
            run_dir,
            log_path,
        )
        summary = dataset.summary()
        log_dataset(summary)
        check_or_save_config(run_dir, settings, summary)
        splits = fixed_splits(run_dir, settings, dataset)
        train_units(run_dir, dataset, splits, units, settings, device)
        if fold is not None or seed is not None:
            LOGGER.info("done; run the group level without --fold/--seed to aggregate the units")
            return run_dir
        aggregate(run_dir, settings, summary)
        if analysis is not None:
            from neurossm_app.group.analysis import run_cpa_analysis

            run_cpa_analysis(run_dir, settings, dataset, splits, analysis, device)
        report(run_dir)
    return run_dir


def load_inputs(
    settings: GroupSettings, output_dir: Path, participants_tsv: Path, run_filters: dict[str, Any] | None
) -> GroupDataset:
    """The selected time series with their labels, checked against the window and the folds."""
    atlas_label = ATLASES[settings.atlas].bids_label
    scans = find_timeseries(
        output_dir,
        atlas_label,
        list(settings.participant_label or []),
        list(settings.session_label or []),
        list(settings.task_id or []),
        run_filters,
    )
    dataset = load_dataset(scans, settings.target, participants_tsv, atlas_label)
    check_lengths(dataset, settings.dynamic_length)
    check_fold_counts(
        dataset.labels, dataset.subjects, dataset.classes, settings.folds, settings.skip_cross_validation
    )
    return dataset


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


def fixed_splits(run_dir: Path, settings: GroupSettings, dataset: GroupDataset) -> pd.DataFrame:
    """The test fold of every scan per seed, saved in ``splits.tsv`` at the first call and reused."""
    splits = build_splits(
        [s.name for s in dataset.scans],
        dataset.subjects,
        [dataset.classes[i] for i in dataset.labels],
        dataset.labels,
        settings.seeds,
        settings.n_folds,
        settings.skip_cross_validation,
        settings.test_size,
    )
    return load_or_save_splits(run_dir / "splits.tsv", splits, settings.run_name)


def train_units(
    run_dir: Path,
    dataset: GroupDataset,
    splits: pd.DataFrame,
    units: list[tuple[int, int]],
    settings: GroupSettings,
    device: torch.device,
) -> None:
    """Train every unit of ``units`` that is not complete yet; complete ones are kept."""
    for fold, seed in units:
        # A damaged finished unit stops the call before hours of training, not after.
        marker = read_marker(run_dir, fold, seed)
        if marker is not None:
            read_checkpoint_info(run_dir / marker["checkpoint"])
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
        run_unit(dataset, train, test, fold, seed, settings, run_dir, device)


def aggregate(run_dir: Path, settings: GroupSettings, summary: dict[str, Any]) -> None:
    """Aggregate every complete unit (:func:`~.aggregate.aggregate_units`) and log the results."""
    result = aggregate_units(run_dir, settings, summary)
    for model, values in result["models"].items():
        LOGGER.info(
            "%s: accuracy %s, balanced accuracy %s, ROC-AUC %s",
            model,
            _mean_sd_text(values["accuracy"]),
            _mean_sd_text(values["balanced_accuracy"]),
            _mean_sd_text(values["roc_auc"]),
        )
    LOGGER.info("results in %s (metrics.tsv, summary.json, predictions.tsv)", run_dir)


def report(run_dir: Path) -> None:
    """``RUN_DIR/report.html`` from what the run folder holds."""
    from neurossm_app.reports.group import build_group_report

    LOGGER.info("report: %s", build_group_report(run_dir))


def _mean_sd_text(values: dict[str, Any]) -> str:
    if values["mean"] is None:
        return "n/a"
    sd = f" ± {values['sd']:.3f}" if values["sd"] is not None else ""
    return f"{values['mean']:.3f}{sd} (n={values['n']})"
