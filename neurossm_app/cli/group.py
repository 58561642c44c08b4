"""``neurossm-app BIDS_DIR OUTPUT_DIR group``: settings from options, then the group run."""

from __future__ import annotations

import argparse
import logging

LOGGER = logging.getLogger("neurossm_app")

# Command-line destinations that map one-to-one onto GroupSettings fields.
_OVERRIDES = (
    "target",
    "run_name",
    "atlas",
    "dynamic_length",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "folds",
    "seeds",
    "skip_cross_validation",
    "test_size",
    "baselines",
    "d_model",
    "n_layers",
    "d_state",
    "d_conv",
    "expand",
    "scales",
    "signals",
    "bidirectional",
    "dropout",
    "augment",
    "inner_val",
    "tune",
    "cv_group",
    "participant_label",
    "session_label",
    "task_id",
    "device",
    "omp_nthreads",
)


def group_settings_from_options(opts: argparse.Namespace):
    """Resolve the preset and the command-line overrides into :class:`GroupSettings`."""
    from neurossm_app.group.presets import resolve_settings

    overrides = {name: getattr(opts, name, None) for name in _OVERRIDES}
    return resolve_settings(opts.preset, overrides)


def run_group(opts: argparse.Namespace) -> None:
    """Train and cross-validate NeuroSSM (and the baselines) on the participant-level series."""
    import torch

    from neurossm_app.bids import RUN_ENTITIES, find_fmriprep_dir, load_filter_file
    from neurossm_app.errors import UsageError
    from neurossm_app.group.run import run_group_level

    settings = group_settings_from_options(opts)
    if settings.skip_cross_validation and opts.fold not in (None, 0):
        raise UsageError(
            f"--fold {opts.fold} with --skip-cross-validation: the hold-out split has fold 0 only."
        )
    torch.set_num_threads(settings.omp_nthreads)
    bold_filters = load_filter_file(opts.bids_filter_file).get("bold", {})
    run_filters = {k: v for k, v in bold_filters.items() if k in RUN_ENTITIES}
    participants_tsv = opts.participants_tsv or opts.bids_dir / "participants.tsv"
    LOGGER.info(
        "settings: %s",
        ", ".join(f"{k}={v}" for k, v in settings.to_dict().items() if v is not None),
    )
    analysis = None
    if getattr(opts, "analysis", False):
        from neurossm_app.group.analysis import AnalysisOptions

        analysis = AnalysisOptions(
            neurosynth_dir=opts.neurosynth_dir,
            class_terms=opts.class_terms,
            cpa_subjects=opts.cpa_subjects,
            n_permutations=opts.n_permutations,
            atlas_dir=getattr(opts, "atlas_dir", None),
        )
    run_group_level(
        settings,
        opts.output_dir,
        participants_tsv,
        run_filters=run_filters,
        fold=opts.fold,
        seed=opts.seed,
        analysis=analysis,
        fmriprep_dir=find_fmriprep_dir(opts.bids_dir, opts.derivatives),
        command_line=[str(a) for a in getattr(opts, "command_line", [])],
    )
