"""Group-level options of ``neurossm-app`` (training, cross-validation, outputs).

Options that a preset sets default to ``None`` here ("from the preset"); the resolved value of
every setting is logged and saved to ``OUTPUT_DIR/group/<run-name>/config.json``.

argparse only converts the settings' types: their values are checked once, with every problem
reported together, by :func:`neurossm_app.group.presets.check_settings`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neurossm_app.argtypes import abs_path, non_negative_int
from neurossm_app.group.neurosynth import default_neurosynth_dir
from neurossm_app.group.nulls import NULL_MODELS
from neurossm_app.group.presets import (
    AUGMENTATIONS,
    DEFAULT_PRESET,
    DEVICES,
    KNOWN_BASELINES,
    TUNE_CHOICES,
    preset_names,
)
from neurossm_app.model.vocabulary import SIGNALS

_SIGNALS_METAVAR = "{" + ",".join(SIGNALS) + "}"
_BASELINES_METAVAR = "{" + ",".join([*KNOWN_BASELINES, "none"]) + "}"
_AUGMENT_METAVAR = "{" + ",".join([*AUGMENTATIONS, "none"]) + "}"

_FROM_PRESET = "default: from --preset"


def add_group_options(parser: argparse.ArgumentParser) -> None:
    """Add the "Group level" option groups to ``parser``."""
    _add_dataset_options(parser)
    _add_model_options(parser)
    _add_training_options(parser)
    _add_validation_options(parser)
    _add_analysis_options(parser)


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """Dataset and outputs: --preset, --target, --run-name."""
    group = parser.add_argument_group("Group level: dataset and outputs")
    group.add_argument(
        "--preset",
        choices=preset_names(),
        default=DEFAULT_PRESET,
        help="settings of one study of the NeuroSSM paper (atlas, target, window); hcp-rest: "
        "schaefer400, participants:sex, 600 volumes; hcp-task: schaefer400, task, 150; "
        "ppmi: aal3v2, participants:group, 100",
    )
    group.add_argument(
        "--target",
        metavar="TARGET",
        help="what to classify: 'participants:COLUMN' (a participants.tsv column) or 'task' "
        f"({_FROM_PRESET})",
    )
    group.add_argument(
        "--run-name",
        metavar="NAME",
        help="results go to OUTPUT_DIR/group/NAME (letters, digits, '-'); default: the preset name "
        "(with --predict-with: predict-<the model's run name>)",
    )
    group.add_argument(
        "--cache-dir",
        type=abs_path,
        metavar="DIR",
        help="the series cache: the selected series consolidated into one memory-mapped file per atlas "
        "and selection, built by the first call and reused by the next ones and by every --fold/--seed "
        "unit (default: OUTPUT_DIR/group/.cache; safe to delete)",
    )
    group.add_argument(
        "--predict-with",
        type=abs_path,
        metavar="MODEL",
        help="apply a trained model to the selected scans instead of training: MODEL is a finished "
        "group run folder (OUTPUT_DIR/group/<run-name>) or a bundle from neurossm-app-export; the "
        "mean of its fold x seed checkpoints' probabilities predicts (docs/usage.md, Using a trained model)",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Model: the NeuroSSM architecture."""
    group = parser.add_argument_group("Group level: model")
    group.add_argument("--d-model", type=int, metavar="D", help=f"embedding width ({_FROM_PRESET}, 128)")
    group.add_argument(
        "--n-layers", type=int, metavar="N", help=f"Mamba blocks per pathway ({_FROM_PRESET}, 2)"
    )
    group.add_argument("--d-state", type=int, metavar="N", help=f"SSM state size ({_FROM_PRESET}, 16)")
    group.add_argument(
        "--d-conv", type=int, metavar="K", help=f"causal convolution width ({_FROM_PRESET}, 4)"
    )
    group.add_argument(
        "--expand", type=int, metavar="E", help=f"inner width factor of a block ({_FROM_PRESET}, 2)"
    )
    group.add_argument(
        "--scales",
        type=int,
        nargs="+",
        metavar="S",
        help=f"temporal scales (average pooling strides) of the pathways ({_FROM_PRESET}, 1 2 4)",
    )
    group.add_argument(
        "--signals",
        nargs="+",
        metavar=_SIGNALS_METAVAR,
        help=f"signals of the pathways: raw BOLD and/or its first difference ({_FROM_PRESET}, raw diff)",
    )
    group.add_argument(
        "--no-bidirectional",
        dest="bidirectional",
        action="store_const",
        const=False,
        default=None,
        help="scan forward in time only (default: forward and time-reversed scans, summed)",
    )
    group.add_argument(
        "--dropout", type=float, metavar="P", help=f"dropout probability ({_FROM_PRESET}, 0.1)"
    )


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    """Training: window, epochs, optimiser, device."""
    group = parser.add_argument_group("Group level: training")
    group.add_argument(
        "--dynamic-length",
        type=int,
        metavar="VOLUMES",
        help="training window in volumes; every run must be at least this long "
        f"({_FROM_PRESET}: 600, 150 or 100)",
    )
    group.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help=f"passes over the training scans ({_FROM_PRESET}, 30)",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help=f"windows per optimizer step ({_FROM_PRESET}, 16)",
    )
    group.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        help=f"peak learning rate of the one-cycle schedule ({_FROM_PRESET}, 1e-3)",
    )
    group.add_argument(
        "--weight-decay", type=float, metavar="W", help=f"AdamW weight decay ({_FROM_PRESET}, 0.01)"
    )
    group.add_argument(
        "--augment",
        nargs="+",
        metavar=_AUGMENT_METAVAR,
        help="augmentations of the training windows: scale (one amplitude factor per window, "
        "0.8-1.25), noise (white, SD 0.1), roi-dropout (each ROI set to 0 with probability 0.1, as a "
        "missing ROI), time-mask (one span of up to 10%% of the volumes set to 0, as censored ones); "
        f"'none' for none ({_FROM_PRESET}; docs/model.md)",
    )
    group.add_argument(
        "--inner-val",
        type=float,
        metavar="FRACTION",
        help="hold out this fraction of each training fold's subjects (or --cv-group groups) as an "
        "inner validation split, stratified and grouped like the folds; its best epoch's weights are "
        f"kept (early stopping) and --tune chooses on it; 0: none, keep the last epoch ({_FROM_PRESET})",
    )
    group.add_argument(
        "--tune",
        choices=TUNE_CHOICES,
        help="lr-wd: train one model per learning rate x weight decay pair of a small grid "
        "(docs/model.md) and keep the best on the inner validation split (about 5x the training "
        f"time); none: use --lr and --weight-decay ({_FROM_PRESET}, none)",
    )
    group.add_argument(
        "--device",
        default="auto",
        metavar="{" + ",".join(DEVICES) + "}",
        help="where NeuroSSM trains: auto picks the GPU when torch sees one (with mamba-ssm's kernels "
        "when they import, else the slower PyTorch scan and a warning); cuda requires the GPU and "
        "the kernels",
    )


def _add_validation_options(parser: argparse.ArgumentParser) -> None:
    """Validation: folds, seeds, hold-out, baselines, one unit."""
    group = parser.add_argument_group("Group level: validation")
    group.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help=f"folds of the stratified cross-validation grouped by subject ({_FROM_PRESET}, 5)",
    )
    group.add_argument(
        "--cv-group",
        metavar="COLUMN",
        help="group the folds by this participants.tsv column instead of the subject (site, family, "
        "person): no value of it is ever on both sides of a split; default: the subject",
    )
    group.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="S",
        help=f"repeat the cross-validation with these seeds ({_FROM_PRESET}, 0 1 2)",
    )
    group.add_argument(
        "--skip-cross-validation",
        action="store_const",
        const=True,
        default=None,
        help="one stratified hold-out split by subject instead of k folds (see --test-size)",
    )
    group.add_argument(
        "--test-size",
        type=float,
        metavar="FRACTION",
        help=f"fraction of subjects held out with --skip-cross-validation ({_FROM_PRESET}, 0.2)",
    )
    group.add_argument(
        "--baselines",
        nargs="+",
        metavar=_BASELINES_METAVAR,
        help=f"classical models run on the same folds; 'none' disables them ({_FROM_PRESET}, fc-logreg)",
    )
    group.add_argument(
        "--fold",
        type=non_negative_int,
        metavar="K",
        help="run only fold K (0-based; an HPC array task); a later call without --fold/--seed aggregates",
    )
    group.add_argument(
        "--seed",
        type=non_negative_int,
        metavar="S",
        help="run only the units of seed S (one of --seeds); combine with --fold for one unit",
    )


def _add_analysis_options(parser: argparse.ArgumentParser) -> None:
    """CPA and the Neurosynth reference: --analysis and its inputs."""
    group = parser.add_argument_group("Group level: CPA and Neurosynth reference (docs/cpa.md)")
    group.add_argument(
        "--analysis",
        action="store_true",
        help="after training: Calibrated Pathway Attribution of every held-out scan, class maps and "
        "their comparison with Neurosynth term meta-analyses (NIfTI maps under group/<run-name>/maps)",
    )
    group.add_argument(
        "--neurosynth-dir",
        type=Path,
        default=default_neurosynth_dir(),
        metavar="DIR",
        help="Neurosynth cache: NiMARE's files in DIR/neurosynth (never downloaded at run time: fetch "
        "them with `neurossm-app-fetch --atlas none --neurosynth DIR`), term maps in DIR/maps "
        "(default: $NEUROSYNTH_DIR, else ~/.cache/neurossm-app/neurosynth)",
    )
    group.add_argument(
        "--class-terms",
        type=Path,
        metavar="FILE",
        help='JSON {"CLASS": "neurosynth term" or null} replacing the preset\'s class-term table',
    )
    group.add_argument(
        "--cpa-subjects",
        choices=["correct", "all"],
        default="correct",
        help="held-out scans averaged into the class maps: correctly classified ones, or all",
    )
    group.add_argument(
        "--null-model",
        choices=NULL_MODELS,
        default=NULL_MODELS[0],
        help="null of the reference score's p-value: brainsmash, surrogate maps with the CPA map's "
        "spatial autocorrelation (variogram-matched on the distances between ROI centroids; Burt et al. "
        "2020), or permutation, ROI permutations (ignore spatial autocorrelation, p too small)",
    )
    group.add_argument(
        "--n-null-maps",
        type=non_negative_int,
        default=1000,
        metavar="N",
        help="surrogates or permutations of the reference score's p-value; p is shown to floor(log10 N) "
        "decimals (0: no p-value)",
    )
