"""A trained NeuroSSM ensemble, read from a finished group run folder or from its bundle.

Both sources give the same :class:`TrainedModel`: the model record (:func:`model_record`: the
resolved settings, classes, atlas and ROI names, how the training inputs were made, the training
cohort's counts, the cross-validated metrics) and every fold x seed checkpoint as the bytes of its
safetensors file and its JSON description. Predictions are made from these bytes alone, so a run
folder and the bundle exported from it predict identically. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurossm_app.errors import DataError, InputMissingError

#: Fields of ``config.json``'s dataset summary that describe the training cohort without naming
#: anyone (``excluded`` lists subjects and is left out).
COHORT_FIELDS = ("atlas", "n_rois", "n_subjects", "n_scans", "classes", "volumes", "repetition_time")


@dataclass(frozen=True)
class Checkpoint:
    """One fold x seed model: its description (the checkpoint ``.json``) and weights (bytes)."""

    fold: int
    seed: int
    info: dict[str, Any]
    weights: bytes

    @property
    def name(self) -> str:
        """``fold-K_seed-S``."""
        return f"fold-{self.fold}_seed-{self.seed}"


@dataclass(frozen=True)
class TrainedModel:
    """An ensemble of trained NeuroSSM checkpoints and what they were trained on.

    Attributes
    ----------
    source : Path
        The run folder or bundle it was read from.
    kind : str
        ``"run folder"`` or ``"bundle"``.
    record : dict
        :func:`model_record`.
    checkpoints : tuple of Checkpoint
        Seed-major, as the run's units.
    """

    source: Path
    kind: str
    record: dict[str, Any]
    checkpoints: tuple[Checkpoint, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.record["classes"])

    @property
    def roi_names(self) -> tuple[str, ...]:
        return tuple(self.record["roi_names"])

    @property
    def atlas_label(self) -> str:
        return str(self.record["atlas_label"])

    @property
    def dynamic_length(self) -> int:
        return int(self.record["settings"]["dynamic_length"])

    @property
    def model_id(self) -> str:
        """SHA-256 over the checkpoints' SHA-256s: the same for a run folder and its bundle."""
        digest = hashlib.sha256()
        for checkpoint in self.checkpoints:
            digest.update(f"{checkpoint.name}:{checkpoint.info['sha256']}\n".encode())
        return digest.hexdigest()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputMissingError(f"{path} is missing: {what}.") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is unreadable: {what}.") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} is not a JSON object: {what}.")
    return value


def model_record(run_dir: Path, checkpoints: list[Checkpoint]) -> dict[str, Any]:
    """What a prediction needs to know about a finished run, without subject identifiers.

    Parameters
    ----------
    run_dir : Path
        ``OUTPUT_DIR/group/<run-name>`` with ``config.json`` and ``summary.json``.
    checkpoints : list of Checkpoint
        The run's checkpoints (their ROI names are the model's input order).

    Returns
    -------
    dict
        ``run_name``, ``settings`` (resolved, ``participant_label`` left out), ``atlas``,
        ``atlas_label``, ``target``, ``classes``, ``roi_names``, ``normalization``,
        ``participant_settings`` (how the training inputs were made), ``training_cohort``
        (:data:`COHORT_FIELDS`), ``cross_validation`` (protocol, metrics per model, subject level,
        chance), ``fmriprep_version``, ``software`` (of the training), ``checkpoints``.
    """
    hint = "give a finished group run folder (OUTPUT_DIR/group/<run-name>) or a bundle"
    config = _read_json(run_dir / "config.json", hint)
    summary = _read_json(run_dir / "summary.json", f"{hint}; run the group level without --fold/--seed")
    inputs = config.get("inputs")
    if not isinstance(inputs, dict) or "participant_settings" not in inputs:
        raise DataError(
            f"{run_dir / 'config.json'} does not record how the training inputs were made (a run from "
            "an older neurossm-app); retrain with this version to predict with it."
        )
    settings = {k: v for k, v in config["settings"].items() if k != "participant_label"}
    dataset = config.get("dataset", {})
    first = checkpoints[0].info
    return {
        "run_name": settings["run_name"],
        "settings": settings,
        "atlas": settings["atlas"],
        "atlas_label": config.get("atlas_label", first.get("atlas")),
        "target": settings["target"],
        "classes": list(first["classes"]),
        "roi_names": list(first["roi_names"]),
        "normalization": config.get("normalization", first.get("normalization")),
        "participant_settings": inputs["participant_settings"],
        "training_cohort": {k: dataset[k] for k in COHORT_FIELDS if k in dataset},
        "cross_validation": {
            "protocol": summary.get("protocol"),
            "units": summary.get("units"),
            "models": summary.get("models"),
            "subject_level": (summary.get("subject_level") or {}).get("models"),
            "chance": summary.get("chance"),
        },
        "fmriprep_version": (inputs.get("fmriprep") or {}).get("version", "unknown"),
        "software": config.get("software", {}),
        "checkpoints": [
            {"fold": c.fold, "seed": c.seed, "weights": c.info["weights"], "sha256": c.info["sha256"]}
            for c in checkpoints
        ],
    }


def read_run_folder(run_dir: Path) -> TrainedModel:
    """The ensemble of a finished group run (every unit complete, checkpoints checked).

    Raises
    ------
    InputMissingError
        No ``config.json``/``summary.json`` (not a group run folder, or never aggregated).
    DataError
        Units missing, or a damaged checkpoint.
    """
    from neurossm_app.group.checkpoints import read_checkpoint_info
    from neurossm_app.group.units import read_marker

    config = _read_json(run_dir / "config.json", "give a finished group run folder or a bundle")
    if config.get("mode") == "prediction":
        raise DataError(
            f"{run_dir} is a prediction run; give the group run that trained the model "
            f"({config.get('model', {}).get('source', 'see its config.json')})."
        )
    if not isinstance(config.get("settings"), dict):
        raise DataError(f"{run_dir / 'config.json'} has no settings: not a group run folder.")
    seeds = config["settings"]["seeds"]
    n_folds = 1 if config["settings"]["skip_cross_validation"] else config["settings"]["folds"]
    units = [(fold, seed) for seed in seeds for fold in range(n_folds)]
    checkpoints, missing = [], []
    for fold, seed in units:
        marker = read_marker(run_dir, fold, seed)
        if marker is None:
            missing.append(f"fold-{fold}_seed-{seed}")
            continue
        path = run_dir / marker["checkpoint"]
        info = read_checkpoint_info(path)
        checkpoints.append(Checkpoint(fold, seed, info, path.read_bytes()))
    if missing:
        raise DataError(
            f"{run_dir} is not a finished group run: {len(missing)} of {len(units)} unit(s) are not "
            f"complete ({', '.join(missing[:4])}); finish training (run the group level) before "
            "predicting with it."
        )
    return TrainedModel(run_dir, "run folder", model_record(run_dir, checkpoints), tuple(checkpoints))


def load_trained_model(path: Path) -> TrainedModel:
    """``--predict-with``: a run folder or a bundle (``.zip``), checked.

    Raises
    ------
    InputMissingError
        Nothing at ``path``.
    DataError
        An unfinished run, a damaged checkpoint, a tampered or incomplete bundle, or a model
        that expects another input normalization than this version makes.
    """
    from neurossm_app.group.bundle import read_bundle
    from neurossm_app.group.data import NORMALIZATION

    path = Path(path)
    if path.is_dir():
        trained = read_run_folder(path)
    elif path.is_file():
        trained = read_bundle(path)
    else:
        raise InputMissingError(
            f"--predict-with {path} does not exist; give a finished group run folder "
            "(OUTPUT_DIR/group/<run-name>) or a bundle written by neurossm-app-export."
        )
    check_consistent(trained)
    if trained.record.get("normalization") != NORMALIZATION:
        raise DataError(
            f"the model in {path} expects another input normalization "
            f"({trained.record.get('normalization')!r}); predict with the neurossm-app version that "
            "trained it."
        )
    return trained


#: What a checkpoint's description must hold to be used.
CHECKPOINT_FIELDS = ("config", "classes", "roi_names", "weights", "sha256")


def check_consistent(trained: TrainedModel) -> None:
    """Every checkpoint describes the same classes and ROIs as the model record.

    Raises
    ------
    DataError
        A description without a field it needs, or with other classes or ROI names.
    """
    for checkpoint in trained.checkpoints:
        lacking = [k for k in CHECKPOINT_FIELDS if k not in checkpoint.info]
        if lacking:
            raise DataError(f"checkpoint {checkpoint.name} of {trained.source} has no {', '.join(lacking)}.")
        if (
            tuple(checkpoint.info["classes"]) != trained.classes
            or tuple(checkpoint.info["roi_names"]) != trained.roi_names
        ):
            raise DataError(
                f"checkpoint {checkpoint.name} of {trained.source} was trained on other classes or ROIs "
                "than the model's others; retrain or export the run again."
            )


def build_member(checkpoint: Checkpoint, backend: str = "auto"):
    """The NeuroSSM of one checkpoint, in eval mode on the CPU, from its bytes (safetensors).

    Raises
    ------
    DataError
        Weights that safetensors cannot read or that do not fit the saved configuration.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from neurossm_app.group.models import build_neurossm

    try:
        state = load_safetensors(checkpoint.weights)
    except (SafetensorError, ValueError) as err:
        raise DataError(
            f"checkpoint {checkpoint.name} cannot be read ({err}); export the model again."
        ) from None
    model, _ = build_neurossm(checkpoint.info["config"], backend=backend)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise DataError(
            f"checkpoint {checkpoint.name}'s weights do not fit its config ({str(err).splitlines()[0]})."
        ) from None
    return model.eval()
