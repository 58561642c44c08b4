"""Group-level options of ``neurossm-app`` (training, cross-validation, outputs).

Options that a preset sets default to ``None`` here ("from the preset"); the resolved value of
every setting is logged and saved to ``OUTPUT_DIR/group/<run-name>/config.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neurossm_app.argtypes import non_negative_int, positive_float, positive_int
from neurossm_app.group.neurosynth import default_neurosynth_dir
from neurossm_app.group.presets import DEFAULT_PRESET, KNOWN_BASELINES, preset_names
from neurossm_app.model.neurossm import SIGNALS

_FROM_PRESET = "default: from --preset"


def add_group_options(parser: argparse.ArgumentParser) -> None:
    """Add the "Group level" option groups to ``parser``."""
    data = parser.add_argument_group("Group level: dataset and outputs")
    data.add_argument(
        "--preset",
        choices=preset_names(),
        default=DEFAULT_PRESET,
        help="settings of one study of the NeuroSSM paper (atlas, target, window); hcp-rest: "
        "schaefer400, participants:sex, 600 volumes; hcp-task: schaefer400, task, 150; "
        "ppmi: aal3v2, participants:group, 100",
    )
    data.add_argument(
        "--target",
        metavar="TARGET",
        help="what to classify: 'participants:COLUMN' (a participants.tsv column) or 'task' "
        f"({_FROM_PRESET})",
    )
    data.add_argument(
        "--run-name",
        metavar="NAME",
        help="results go to OUTPUT_DIR/group/NAME (letters, digits, '-'); default: the preset name",
    )

    model = parser.add_argument_group("Group level: model")
    model.add_argument(
        "--d-model", type=positive_int, metavar="D", help=f"embedding width ({_FROM_PRESET}, 128)"
    )
    model.add_argument(
        "--n-layers", type=positive_int, metavar="N", help=f"Mamba blocks per pathway ({_FROM_PRESET}, 2)"
    )
    model.add_argument(
        "--d-state", type=positive_int, metavar="N", help=f"SSM state size ({_FROM_PRESET}, 16)"
    )
    model.add_argument(
        "--d-conv", type=positive_int, metavar="K", help=f"causal convolution width ({_FROM_PRESET}, 4)"
    )
    model.add_argument(
        "--expand", type=positive_int, metavar="E", help=f"inner width factor of a block ({_FROM_PRESET}, 2)"
    )
    model.add_argument(
        "--scales",
        type=positive_int,
        nargs="+",
        metavar="S",
        help=f"temporal scales (average pooling strides) of the pathways ({_FROM_PRESET}, 1 2 4)",
    )
    model.add_argument(
        "--signals",
        choices=SIGNALS,
        nargs="+",
        help=f"signals of the pathways: raw BOLD and/or its first difference ({_FROM_PRESET}, raw diff)",
    )
    model.add_argument(
        "--no-bidirectional",
        dest="bidirectional",
        action="store_const",
        const=False,
        default=None,
        help="scan forward in time only (default: forward and time-reversed scans, summed)",
    )
    model.add_argument(
        "--dropout", type=float, metavar="P", help=f"dropout probability ({_FROM_PRESET}, 0.1)"
    )

    train = parser.add_argument_group("Group level: training")
    train.add_argument(
        "--dynamic-length",
        type=positive_int,
        metavar="VOLUMES",
        help="training window in volumes; every run must be at least this long "
        f"({_FROM_PRESET}: 600, 150 or 100)",
    )
    train.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help=f"passes over the training scans ({_FROM_PRESET}, 30)",
    )
    train.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help=f"windows per optimizer step ({_FROM_PRESET}, 16)",
    )
    train.add_argument(
        "--lr",
        type=positive_float,
        metavar="LR",
        help=f"peak learning rate of the one-cycle schedule ({_FROM_PRESET}, 1e-3)",
    )
    train.add_argument(
        "--weight-decay", type=float, metavar="W", help=f"AdamW weight decay ({_FROM_PRESET}, 0.01)"
    )
    train.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where NeuroSSM trains; auto picks cuda when a GPU is visible",
    )

    cv = parser.add_argument_group("Group level: validation")
    cv.add_argument(
        "--folds",
        type=positive_int,
        metavar="K",
        help=f"folds of the stratified cross-validation grouped by subject ({_FROM_PRESET}, 5)",
    )
    cv.add_argument(
        "--seeds",
        type=non_negative_int,
        nargs="+",
        metavar="S",
        help=f"repeat the cross-validation with these seeds ({_FROM_PRESET}, 0 1 2)",
    )
    cv.add_argument(
        "--skip-cross-validation",
        action="store_const",
        const=True,
        default=None,
        help="one stratified hold-out split by subject instead of k folds (see --test-size)",
    )
    cv.add_argument(
        "--test-size",
        type=float,
        metavar="FRACTION",
        help=f"fraction of subjects held out with --skip-cross-validation ({_FROM_PRESET}, 0.2)",
    )
    cv.add_argument(
        "--baselines",
        nargs="+",
        choices=[*KNOWN_BASELINES, "none"],
        help=f"classical models run on the same folds; 'none' disables them ({_FROM_PRESET}, fc-logreg)",
    )
    cv.add_argument(
        "--fold",
        type=non_negative_int,
        metavar="K",
        help="run only fold K (0-based; an HPC array task); a later call without --fold/--seed aggregates",
    )
    cv.add_argument(
        "--seed",
        type=non_negative_int,
        metavar="S",
        help="run only the units of seed S (one of --seeds); combine with --fold for one unit",
    )

    explain = parser.add_argument_group("Group level: CPA and Neurosynth reference (docs/cpa.md)")
    explain.add_argument(
        "--analysis",
        action="store_true",
        help="after training: Calibrated Pathway Attribution of every held-out scan, class maps and "
        "their comparison with Neurosynth term meta-analyses (NIfTI maps under group/<run-name>/maps)",
    )
    explain.add_argument(
        "--neurosynth-dir",
        type=Path,
        default=default_neurosynth_dir(),
        metavar="DIR",
        help="Neurosynth cache: NiMARE's files in DIR/neurosynth (downloaded on first use; offline, "
        "pre-fetch with `neurossm-app-fetch --atlas none --neurosynth DIR`), term maps in DIR/maps "
        "(default: $NEUROSYNTH_DIR, else ~/.cache/neurossm-app/neurosynth)",
    )
    explain.add_argument(
        "--class-terms",
        type=Path,
        metavar="FILE",
        help='JSON {"CLASS": "neurosynth term" or null} replacing the preset\'s class-term table',
    )
    explain.add_argument(
        "--cpa-subjects",
        choices=["correct", "all"],
        default="correct",
        help="held-out scans averaged into the class maps: correctly classified ones, or all",
    )
    explain.add_argument(
        "--n-permutations",
        type=non_negative_int,
        default=1000,
        metavar="N",
        help="ROI permutations of the reference score's p-value",
    )
