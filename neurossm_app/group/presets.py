"""Group-level presets and the resolved settings of one group run.

A preset (``data/presets/group_presets.json``) holds the settings of one study of the original
NeuroSSM paper (its default atlas, target, window length) plus neurossm-app's training defaults;
the CLI overrides any field, and the result is a frozen :class:`GroupSettings` handed explicitly to the
code that needs it and saved as ``config.json`` next to the outputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from functools import cache
from importlib import resources
from typing import Any

from neurossm_app.errors import UsageError

PRESETS_FILE = "group_presets.json"
DEFAULT_PRESET = "hcp-rest"
KNOWN_BASELINES = ("fc-logreg", "stats-logreg")
DEVICES = ("auto", "cpu", "cuda")
#: ``--tune`` choices: ``none`` trains with ``lr`` and ``weight_decay``; ``lr-wd`` chooses them on
#: the inner validation split from :data:`neurossm_app.group.selection.LR_WD_GRID`.
TUNE_CHOICES = ("none", "lr-wd")
#: --augment names, in the order they are applied (group/train.py:augment_windows).
AUGMENTATIONS = ("scale", "noise", "roi-dropout", "time-mask")
_RUN_NAME = re.compile(r"^[A-Za-z0-9-]+$")

# Settings that change the numbers; a resumed run must agree with the saved run on all of them.
# (device, threads and which unit to run may differ between the calls of one run.)
RUNTIME_ONLY_FIELDS = ("device", "omp_nthreads")


@dataclass(frozen=True)
class GroupSettings:
    """Everything that determines the results of one group run.

    Attributes
    ----------
    preset
        Name of the preset the settings started from.
    run_name
        Folder under ``OUTPUT_DIR/group/``.
    atlas
        An :data:`neurossm_app.atlases.ATLASES` key, or the ``atlas-`` label of an atlas of the
        user's; the preset's is a default only (:mod:`neurossm_app.group.atlas_choice`).
    target
        ``participants:COLUMN`` or ``task``.
    dynamic_length
        Training window length in volumes.
    epochs, batch_size, lr, weight_decay
        AdamW with a one-cycle schedule peaking at ``lr``.
    folds
        Number of cross-validation folds (ignored with ``skip_cross_validation``).
    seeds
        Repetitions of the whole protocol with different splits and initialisations.
    skip_cross_validation, test_size
        One stratified hold-out split by subject, ``test_size`` of the subjects held out.
    cv_group
        ``participants.tsv`` column whose values group the folds (site, family, person); ``None``:
        the subject.
    baselines
        Classical models run on the same folds (``fc-logreg``), possibly empty.
    d_model, n_layers, d_state, d_conv, expand, scales, signals, bidirectional, dropout
        :class:`neurossm_app.model.NeuroSSMConfig` fields.
    augment
        Augmentations of the training windows (:data:`neurossm_app.group.train.AUGMENTATIONS`).
    inner_val
        Fraction of each training fold's groups held out as the inner validation split that
        chooses the epoch (and with ``tune``, the learning rate and weight decay); 0: none.
    tune
        :data:`TUNE_CHOICES`.
    participant_label, session_label, task_id
        Data selection (``None``: everything).
    device, omp_nthreads
        Where and with how many threads training runs (do not change the numbers on CPU).
    """

    preset: str
    run_name: str
    atlas: str
    target: str
    dynamic_length: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    folds: int
    seeds: tuple[int, ...]
    skip_cross_validation: bool
    test_size: float
    baselines: tuple[str, ...]
    d_model: int
    n_layers: int
    d_state: int
    d_conv: int
    expand: int
    scales: tuple[int, ...]
    signals: tuple[str, ...]
    bidirectional: bool
    dropout: float
    augment: tuple[str, ...]
    inner_val: float
    tune: str
    cv_group: str | None = None
    participant_label: tuple[str, ...] | None = None
    session_label: tuple[str, ...] | None = None
    task_id: tuple[str, ...] | None = None
    device: str = "auto"
    omp_nthreads: int = 1

    @property
    def n_folds(self) -> int:
        """Folds per seed: 1 for a hold-out split."""
        return 1 if self.skip_cross_validation else self.folds

    @property
    def units(self) -> list[tuple[int, int]]:
        """Every (fold, seed) unit of work, seed-major."""
        return [(fold, seed) for seed in self.seeds for fold in range(self.n_folds)]

    def model_fields(self) -> dict[str, Any]:
        """The keyword arguments of ``NeuroSSMConfig`` other than ``n_rois`` and ``n_classes``."""
        return {
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "expand": self.expand,
            "scales": tuple(self.scales),
            "signals": tuple(self.signals),
            "bidirectional": self.bidirectional,
            "dropout": self.dropout,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def result_fields(self) -> dict[str, Any]:
        """:meth:`to_dict` without the runtime-only fields: what a resumed run must match."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_ONLY_FIELDS}


@cache
def load_presets() -> dict[str, dict[str, Any]]:
    """Read the preset table shipped in ``neurossm_app/data/presets``.

    Returns
    -------
    dict
        Preset name -> every :class:`GroupSettings` field it sets (defaults merged in).
    """
    text = (resources.files("neurossm_app") / "data" / "presets" / PRESETS_FILE).read_text()
    table = json.loads(text)
    return {name: {**table["defaults"], **values} for name, values in table["presets"].items()}


def preset_names() -> list[str]:
    """The ``--preset`` choices."""
    return list(load_presets())


def resolve_settings(preset: str | None, overrides: dict[str, Any]) -> GroupSettings:
    """Merge ``overrides`` (``None`` values ignored) into ``preset`` and check the result.

    Parameters
    ----------
    preset
        A preset name; ``None`` means :data:`DEFAULT_PRESET`.
    overrides
        Field name -> value from the command line.

    Raises
    ------
    UsageError
        Unknown preset, or values out of range / inconsistent with each other.
    """
    presets = load_presets()
    name = preset or DEFAULT_PRESET
    if name not in presets:
        raise UsageError(f"unknown --preset {name!r}; choose one of {', '.join(presets)}.")
    values: dict[str, Any] = {k: v for k, v in presets[name].items() if k != "description"}
    values["preset"] = name
    values["run_name"] = name
    values["skip_cross_validation"] = False
    names = {f.name for f in fields(GroupSettings)}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"unknown group setting {key}")
        if value is not None:
            values[key] = value
    for key in ("seeds", "baselines", "scales", "signals", "augment"):
        values[key] = tuple(values[key])
    for key in ("participant_label", "session_label", "task_id"):
        # Sorted: the selection, not the spelling of the command, must match when a run resumes.
        if values.get(key):
            values[key] = tuple(sorted(set(values[key])))
        else:
            values[key] = None
    for key in ("baselines", "augment"):
        if values[key] in (("none",), ("None",)):
            values[key] = ()
    settings = GroupSettings(**values)
    check_settings(settings)
    return settings


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def _shown(value: Any) -> str:
    """A value as typed on the command line (``1 2 4`` for a tuple)."""
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def check_settings(settings: GroupSettings) -> None:
    """Collect every problem with ``settings`` and raise them as one :class:`UsageError`.

    The one place group settings are checked (the command line only converts types): the
    architecture through :func:`neurossm_app.model.neurossm.config_problems`, the CUDA kernels'
    limits when ``--device cuda`` asks for them, and the group level's own fields.
    """
    # imported here: both import torch, and the command line's parser imports this module
    from neurossm_app.model.backends import cuda_kernel_problems
    from neurossm_app.model.neurossm import config_problems

    problems = [
        f"{_option(p.field)} {p.requirement} (got {_shown(p.value)})"
        for p in config_problems(**settings.model_fields())
    ]
    if settings.device == "cuda":
        problems += [
            f"--device cuda: {_option(field)} {value} {reason}"
            for field, value, reason in cuda_kernel_problems(settings.d_state, settings.d_conv)
        ]
    problems += _run_problems(settings)
    problems += _selection_problems(settings)
    if problems:
        raise UsageError("; ".join(problems) + ".")


def _run_problems(settings: GroupSettings) -> list[str]:
    """Problems with the fields that are not the architecture's."""
    problems = []
    if not _RUN_NAME.match(settings.run_name):
        problems.append(
            f"--run-name {settings.run_name!r} must be letters, digits and '-' only (it names a folder)"
        )
    if settings.target != "task" and not re.match(r"^participants:[^\s]+$", settings.target):
        problems.append(f"--target {settings.target!r} must be 'task' or 'participants:COLUMN'")
    for key in ("dynamic_length", "epochs", "batch_size"):
        if getattr(settings, key) < 1:
            problems.append(f"{_option(key)} must be a positive integer (got {getattr(settings, key)})")
    if not settings.lr > 0:
        problems.append(f"--lr must be positive (got {settings.lr})")
    if settings.weight_decay < 0:
        problems.append(f"--weight-decay must not be negative (got {settings.weight_decay})")
    if not settings.skip_cross_validation and settings.folds < 2:
        problems.append(f"--folds must be at least 2 (got {settings.folds}); use --skip-cross-validation")
    if not 0.0 < settings.test_size < 1.0:
        problems.append(f"--test-size must be between 0 and 1 (got {settings.test_size})")
    if not settings.seeds:
        problems.append("--seeds needs at least one seed")
    if len(set(settings.seeds)) != len(settings.seeds):
        problems.append(f"--seeds has duplicates ({_shown(settings.seeds)})")
    if any(s < 0 for s in settings.seeds):
        problems.append(f"--seeds must be non-negative integers (got {_shown(settings.seeds)})")
    bad = [b for b in settings.baselines if b not in KNOWN_BASELINES]
    if bad:
        problems.append(
            f"unknown --baselines {', '.join(bad)}; choose from {', '.join(KNOWN_BASELINES)} or 'none'"
        )
    if settings.device not in DEVICES:
        problems.append(f"--device must be one of {', '.join(DEVICES)} (got {settings.device})")
    return problems


def _selection_problems(settings: GroupSettings) -> list[str]:
    """Problems with the model-selection, augmentation and fold-grouping fields."""
    problems = []
    bad = [a for a in settings.augment if a not in AUGMENTATIONS]
    if bad:
        problems.append(
            f"unknown --augment {', '.join(bad)}; choose from {', '.join(AUGMENTATIONS)} or 'none'"
        )
    if not 0.0 <= settings.inner_val < 0.5:
        problems.append(f"--inner-val must be at least 0 and below 0.5 (got {settings.inner_val})")
    if settings.tune not in TUNE_CHOICES:
        problems.append(f"--tune must be one of {', '.join(TUNE_CHOICES)} (got {settings.tune})")
    elif settings.tune != "none" and settings.inner_val == 0:
        problems.append(f"--tune {settings.tune} chooses on the inner validation split: give --inner-val > 0")
    if settings.cv_group is not None and not re.match(r"^[^\s]+$", settings.cv_group):
        problems.append(f"--cv-group {settings.cv_group!r} must name one participants.tsv column")
    return problems
