"""The group level from settings to outputs: data, folds, the missing units, aggregation.

``OUTPUT_DIR/group/<run-name>/`` holds:

- ``config.json``: the resolved settings (checked on every later call of the run), software
  versions, training details and the dataset summary;
- ``splits.tsv``: the test fold of every scan per seed (fixed at the first call);
- ``units/fold-K_seed-S/``: one unit's ``history.tsv``, ``metrics.tsv``, ``predictions.tsv`` and
  its completion marker ``unit.json``; ``checkpoints/``: the trained NeuroSSM of each unit;
- ``metrics.tsv``, ``predictions.tsv``, ``summary.json``: every complete unit, aggregated;
- ``logs/``: one log file per call.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from neurossm_app.atlases import ATLASES
from neurossm_app.errors import DataError, OutputError, UsageError
from neurossm_app.files import write_json
from neurossm_app.group.aggregate import aggregate_units
from neurossm_app.group.checkpoints import read_checkpoint_info
from neurossm_app.group.data import NORMALIZATION, check_lengths, find_timeseries, load_dataset
from neurossm_app.group.presets import GroupSettings
from neurossm_app.group.splits import build_splits, check_fold_counts, load_or_save_splits, unit_split
from neurossm_app.group.train import resolve_device
from neurossm_app.group.units import read_marker, run_unit, unit_dir
from neurossm_app.provenance import GROUP_PACKAGES, software_versions

LOGGER = logging.getLogger("neurossm_app")

TRAINING_DETAILS = {
    "optimizer": "AdamW",
    "schedule": "OneCycleLR (peak lr, default pct_start 0.3, cosine annealing)",
    "grad_clip_norm": 1.0,
    "loss": "cross-entropy with inverse class-frequency weights",
    "training_samples": "one random window of dynamic_length volumes per training scan and epoch",
    "evaluation": "full-length held-out scans, padded per batch and masked with lengths",
    "mixed_precision": "CUDA only: bf16 where supported, else fp16 with a gradient scaler",
    "baseline_fc_logreg": "Pearson correlations (upper triangle, Fisher z) + StandardScaler + "
    "LogisticRegression(C=1, lbfgs)",
}


def run_directory(output_dir: Path, run_name: str) -> Path:
    """``OUTPUT_DIR/group/<run-name>``, refusing names that would leave ``OUTPUT_DIR/group``."""
    base = (output_dir / "group").resolve()
    run_dir = (base / run_name).resolve()
    if run_dir.parent != base:
        raise UsageError(f"--run-name {run_name!r} must name a folder directly under {base}.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {run_dir}: {err.strerror}; check OUTPUT_DIR permissions.") from None
    if not os.access(run_dir, os.W_OK):
        raise OutputError(f"{run_dir} is not writable; choose another OUTPUT_DIR.")
    return run_dir


@contextmanager
def log_to_file(run_dir: Path, tag: str):
    """Copy the ``neurossm_app`` log of this call to ``RUN_DIR/logs/<time>_<tag>_<pid>.log``."""
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    path = logs / f"{time.strftime('%Y%m%dT%H%M%S')}_{tag}_{os.getpid()}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("neurossm_app")
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()


def check_or_save_config(run_dir: Path, settings: GroupSettings, dataset_summary: dict[str, Any]) -> None:
    """Write ``config.json`` at the first call; later calls must use the same settings.

    Raises
    ------
    UsageError
        The run was started with other settings.
    """
    path = run_dir / "config.json"
    wanted = settings.result_fields()
    if path.is_file():
        try:
            saved = json.loads(path.read_text())["settings"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path} is unreadable; choose a new --run-name or delete {run_dir}.") from None
        changed = [k for k in wanted if saved.get(k) != wanted[k]]
        if changed:
            shown = ", ".join(f"{k} {saved.get(k)!r} -> {wanted[k]!r}" for k in changed[:4])
            raise UsageError(
                f"run {settings.run_name!r} in {run_dir} was started with other settings ({shown}); "
                "repeat the original options, or choose a new --run-name."
            )
        return
    write_json(
        path,
        {
            "settings": wanted,
            "runtime": {"device": settings.device, "omp_nthreads": settings.omp_nthreads},
            "atlas_label": ATLASES[settings.atlas].bids_label,
            "normalization": NORMALIZATION,
            "training": TRAINING_DETAILS,
            "dataset": dataset_summary,
            "software": software_versions(GROUP_PACKAGES),
        },
    )


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


def run_group_analysis(
    settings: GroupSettings,
    output_dir: Path,
    participants_tsv: Path,
    run_filters: dict[str, Any] | None = None,
    fold: int | None = None,
    seed: int | None = None,
    analysis=None,
) -> Path:
    """Run the missing units of a group run, then aggregate (unless ``fold``/``seed`` is given).

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
    units = select_units(settings, fold, seed)
    device = resolve_device(settings.device)
    run_dir = run_directory(output_dir, settings.run_name)
    tag = "all" if fold is None and seed is None else f"fold-{fold}_seed-{seed}".replace("None", "all")
    with log_to_file(run_dir, tag) as log_path:
        LOGGER.info(
            "group level: run %s (preset %s) in %s; log %s",
            settings.run_name,
            settings.preset,
            run_dir,
            log_path,
        )
        summary = dataset.summary()
        missing = summary["missing_values"]
        LOGGER.info(
            "%d scan(s) of %d subject(s), %d ROIs (%s), classes: %s",
            summary["n_scans"],
            summary["n_subjects"],
            summary["n_rois"],
            atlas_label,
            ", ".join(
                f"{k} ({v['scans']} scans, {v['subjects']} subjects)" for k, v in summary["classes"].items()
            ),
        )
        LOGGER.info(
            "missing values: %d ROI column(s) in %d scan(s), %d censored volume(s) in %d scan(s), "
            "%.2f%% of all values; z-scored over finite values, then set to 0",
            missing["missing_roi_columns"],
            missing["scans_with_missing_rois"],
            missing["censored_volumes"],
            missing["scans_with_censored_volumes"],
            100 * missing["missing_fraction"],
        )
        check_or_save_config(run_dir, settings, summary)
        names = [s.name for s in dataset.scans]
        splits = build_splits(
            names,
            dataset.subjects,
            [dataset.classes[i] for i in dataset.labels],
            dataset.labels,
            settings.seeds,
            settings.n_folds,
            settings.skip_cross_validation,
            settings.test_size,
        )
        splits = load_or_save_splits(run_dir / "splits.tsv", splits, settings.run_name)
        for unit_fold, unit_seed_ in units:
            # A damaged finished unit stops the call before hours of training, not after.
            marker = read_marker(run_dir, unit_fold, unit_seed_)
            if marker is not None:
                read_checkpoint_info(run_dir / marker["checkpoint"])
        LOGGER.info("training on %s with %d thread(s)", device, torch.get_num_threads())
        for unit_fold, unit_seed_ in units:
            if read_marker(run_dir, unit_fold, unit_seed_) is not None:
                LOGGER.info(
                    "unit fold-%d seed-%d is complete; skipping it (delete %s to redo it)",
                    unit_fold,
                    unit_seed_,
                    unit_dir(run_dir, unit_fold, unit_seed_),
                )
                continue
            train, test = unit_split(splits, names, unit_fold, unit_seed_)
            run_unit(dataset, train, test, unit_fold, unit_seed_, settings, run_dir, device)
        if fold is not None or seed is not None:
            LOGGER.info("done; run the group level without --fold/--seed to aggregate the units")
            return run_dir
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
        if analysis is not None:
            from neurossm_app.group.analysis import run_analysis

            run_analysis(run_dir, settings, dataset, splits, analysis, device)
        from neurossm_app.reports.group import build_group_report

        LOGGER.info("report: %s", build_group_report(run_dir))
    return run_dir


def _mean_sd_text(values: dict[str, Any]) -> str:
    if values["mean"] is None:
        return "n/a"
    sd = f" ± {values['sd']:.3f}" if values["sd"] is not None else ""
    return f"{values['mean']:.3f}{sd} (n={values['n']})"
