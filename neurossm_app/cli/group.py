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
    overrides["atlas"] = group_atlas(opts)
    return resolve_settings(opts.preset, overrides)


def group_atlas(opts: argparse.Namespace) -> str:
    """``--atlas`` (or ``--atlas-label``) among the atlases of OUTPUT_DIR, else the preset's or the
    only one there (:func:`~neurossm_app.group.atlas_choice.choose_atlas`)."""
    from neurossm_app.group.atlas_choice import choose_atlas, present_atlases
    from neurossm_app.group.presets import DEFAULT_PRESET, load_presets

    preset = load_presets().get(opts.preset or DEFAULT_PRESET, {})
    requested = getattr(opts, "atlas_label", None) or opts.atlas
    default = preset.get("atlas", "schaefer400")
    return choose_atlas(requested, default, present_atlases(opts.output_dir), opts.output_dir)


def run_group(opts: argparse.Namespace) -> None:
    """Train and cross-validate NeuroSSM (and the baselines) on the participant-level series,
    or with ``--predict-with`` apply a trained model to them (:func:`run_predict`)."""
    import torch

    if getattr(opts, "predict_with", None) is not None:
        run_predict(opts)
        return

    from neurossm_app.bids import RUN_ENTITIES, find_fmriprep_dir, load_filter_file
    from neurossm_app.errors import UsageError
    from neurossm_app.group.run import InputCaches, run_group_level

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
    run_group_level(
        settings,
        opts.output_dir,
        participants_tsv,
        run_filters=run_filters,
        fold=opts.fold,
        seed=opts.seed,
        analysis=analysis_options(opts),
        fmriprep_dir=find_fmriprep_dir(opts.bids_dir, opts.derivatives),
        command_line=[str(a) for a in getattr(opts, "command_line", [])],
        caches=InputCaches(
            getattr(opts, "cache_dir", None),
            getattr(opts, "bids_database_dir", None),
            getattr(opts, "nprocs", 1),
        ),
    )


def analysis_options(opts: argparse.Namespace):
    """``--analysis`` and its options as :class:`AnalysisOptions`, or ``None`` without it."""
    if not getattr(opts, "analysis", False):
        return None
    from neurossm_app.group.analysis import AnalysisOptions

    return AnalysisOptions(
        neurosynth_dir=opts.neurosynth_dir,
        class_terms=opts.class_terms,
        cpa_subjects=opts.cpa_subjects,
        null_model=opts.null_model,
        n_null_maps=opts.n_null_maps,
        atlas_dir=getattr(opts, "atlas_dir", None),
    )


#: Options that train or shape a model: with ``--predict-with`` the model's own values apply.
_TRAINING_ONLY = tuple(n for n in _OVERRIDES if n not in {"target", "run_name", "atlas", "participant_label",
    "session_label", "task_id", "device", "omp_nthreads"}) + ("fold", "seed")  # fmt: skip


def run_predict(opts: argparse.Namespace) -> None:
    """``group --predict-with MODEL``: the model's checkpoints applied to the selected scans."""
    import torch

    from neurossm_app.bids import RUN_ENTITIES, find_fmriprep_dir, load_filter_file
    from neurossm_app.errors import UsageError
    from neurossm_app.group.predict import PredictRequest, default_run_name, run_prediction

    given = [n for n in _TRAINING_ONLY if getattr(opts, n, None) is not None]
    if given:
        shown = ", ".join("--" + n.replace("_", "-") for n in given)
        raise UsageError(
            f"{shown} train a model and cannot be combined with --predict-with, which applies the "
            "model's own settings; drop them."
        )
    torch.set_num_threads(opts.omp_nthreads)
    bold_filters = load_filter_file(opts.bids_filter_file).get("bold", {})
    request = PredictRequest(
        model=opts.predict_with,
        output_dir=opts.output_dir,
        run_name=opts.run_name or default_run_name(opts.predict_with),
        participants_tsv=opts.participants_tsv or opts.bids_dir / "participants.tsv",
        selection={
            "participant_labels": list(opts.participant_label or []),
            "session_labels": list(opts.session_label or []),
            "task_ids": list(opts.task_id or []),
            "run_filters": {k: v for k, v in bold_filters.items() if k in RUN_ENTITIES},
        },
        target=opts.target,
        atlas=opts.atlas,
        device=opts.device,
        analysis=analysis_options(opts),
        fmriprep_dir=find_fmriprep_dir(opts.bids_dir, opts.derivatives),
        command_line=[str(a) for a in getattr(opts, "command_line", [])],
    )
    run_prediction(request)
