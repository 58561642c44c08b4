"""``group --predict-with MODEL``: a trained ensemble applied to new subjects, top-down.

Everything is checked before any model runs (:func:`run_prediction`): the model (a finished run
folder or a bundle, :mod:`.trained`, :mod:`.bundle`), the device, the run folder, the new cohort
against the model (:mod:`.predict_inputs`) and, with ``--analysis``, that step's inputs. The
results are written into a hidden folder beside ``OUTPUT_DIR/group/<run-name>/`` and moved into
place when complete, so a failed or killed call leaves nothing half-written:

- ``predictions.tsv``: per scan and per subject (``level``), the ensemble's probabilities (the mean
  over every fold x seed checkpoint), its predicted class, the true label when the data give one;
- ``model_predictions.tsv``: every checkpoint's probabilities per scan;
- ``summary.json``: metrics where labels exist, the new and the training cohort, the inputs, the
  provenance; ``config.json``: the model and the selection;
- with ``--analysis``, ``cpa/`` and ``maps/`` as in training (one CPA per scan and checkpoint);
- ``report.html``; ``logs/``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurossm_app.errors import DataError, OutputError, UsageError
from neurossm_app.files import write_json, write_tsv
from neurossm_app.group.evaluate import METRICS, classification_metrics, predict_proba
from neurossm_app.group.inputs import input_record
from neurossm_app.group.predict_inputs import NewCohort, load_new_cohort
from neurossm_app.group.presets import GroupSettings
from neurossm_app.group.run_folder import held_log_records, log_to_file, run_directory_path
from neurossm_app.group.train import deterministic_algorithms, resolve_device
from neurossm_app.group.trained import TrainedModel, build_member, load_trained_model
from neurossm_app.group.units import ENTITY_COLUMNS
from neurossm_app.provenance import GROUP_PACKAGES, software_versions

LOGGER = logging.getLogger("neurossm_app")

MODE = "prediction"
ENSEMBLE = "mean of the class probabilities of every fold x seed checkpoint; scans at full length"


@dataclass(frozen=True)
class PredictRequest:
    """What a prediction call asks for (the command line, resolved).

    Attributes
    ----------
    model : Path
        ``--predict-with``: a finished run folder or a bundle.
    output_dir : Path
        OUTPUT_DIR: the new cohort's participant-level series; results in ``group/<run_name>``.
    run_name : str
    participants_tsv : Path
        True labels (optional: a missing file or column means predictions without labels).
    selection : dict
        :func:`~neurossm_app.group.data.select_timeseries` keyword arguments.
    target : str or None
        Where true labels come from (default: the model's target).
    atlas : str or None
        ``--atlas``, when given: must be the model's.
    device : str
    analysis : AnalysisOptions or None
    fmriprep_dir : Path or None
    command_line : list of str or None
    """

    model: Path
    output_dir: Path
    run_name: str
    participants_tsv: Path
    selection: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    atlas: str | None = None
    device: str = "auto"
    analysis: Any = None
    fmriprep_dir: Path | None = None
    command_line: list[str] | None = None


def run_prediction(request: PredictRequest) -> Path:
    """Check, predict, write; returns ``OUTPUT_DIR/group/<run-name>``.

    Raises
    ------
    InputMissingError
        No model, no series (66).
    DataError
        A damaged or tampered model; data the model cannot read (65).
    UsageError
        The run folder holds something else (64).
    """
    from neurossm_app.provenance import call_provenance

    with held_log_records() as earlier:
        check_request(request)
        trained = load_trained_model(request.model)
        check_atlas_option(request.atlas, trained)
        device = resolve_device(request.device)
        run_dir = run_directory_path(request.output_dir, request.run_name)
        check_replaceable(run_dir, trained)
        target = request.target or trained.record["target"]
        cohort = load_new_cohort(
            trained, request.output_dir, request.participants_tsv, request.selection, target
        )
        settings = model_settings(trained)
        prepared = None
        if request.analysis is not None:
            from neurossm_app.group.analysis import prepare_analysis

            prepared = prepare_analysis(
                settings,
                trained.classes,
                trained.roi_names,
                request.analysis,
                run_dir,
                references_optional=True,
            )
        extra = {
            "inputs": input_record(
                cohort.participant_settings, cohort.sidecars, cohort.repetition_times, request.output_dir,
                request.fmriprep_dir,
            ),
            "provenance": call_provenance(request.command_line),
        }  # fmt: skip
    with staged_directory(run_dir) as staging, log_to_file(staging, "predict", earlier) as log_path:
        LOGGER.info(
            "prediction: %d scan(s) of %d subject(s) with the %d checkpoint(s) of %s; log %s",
            len(cohort.scans), len({s.subject for s in cohort.scans}), len(trained.checkpoints),
            trained.source, run_dir / "logs" / log_path.name,
        )  # fmt: skip
        write_config(staging, request, trained, target, device)
        proba = ensemble_probabilities(trained, cohort.series, device, settings.batch_size)
        summary = write_predictions(
            staging, trained, cohort, proba, {"run_name": request.run_name, "target": target, **extra}
        )
        log_metrics(summary)
        if request.analysis is not None:
            from neurossm_app.group.predict_cpa import predict_cpa

            predict_cpa(
                staging, settings, trained, cohort, proba.mean(axis=0), request.analysis, device, prepared
            )
        from neurossm_app.reports.predict import build_prediction_report

        build_prediction_report(staging)
    LOGGER.info("predictions in %s (predictions.tsv, summary.json, report.html)", run_dir)
    return run_dir


def check_request(request: PredictRequest) -> None:
    """The options a prediction uses, checked together.

    Raises
    ------
    UsageError
        A run name that is not letters, digits and '-', a malformed --target, an unknown --device.
    """
    from neurossm_app.group.presets import DEVICES

    problems = []
    if not re.fullmatch(r"[A-Za-z0-9-]+", request.run_name):
        problems.append(
            f"--run-name {request.run_name!r} must be letters, digits and '-' only (it names a folder)"
        )
    if request.target is not None and not re.fullmatch(r"task|participants:\S+", request.target):
        problems.append(f"--target {request.target!r} must be 'task' or 'participants:COLUMN'")
    if request.device not in DEVICES:
        problems.append(f"--device must be one of {', '.join(DEVICES)} (got {request.device})")
    if problems:
        raise UsageError("; ".join(problems) + ".")


def check_atlas_option(atlas: str | None, trained: TrainedModel) -> None:
    """``--atlas``, when given, must be the model's atlas (the model reads only its ROIs)."""
    from neurossm_app.group.atlas_choice import requested_label

    if atlas is not None and requested_label(atlas) != trained.atlas_label:
        raise DataError(
            f"--atlas {atlas} ({requested_label(atlas)}) is another atlas than the model's "
            f"({trained.atlas_label}, --atlas {trained.record['atlas']}); drop --atlas: the model's applies."
        )


def default_run_name(model: Path) -> str:
    """``predict-<the model's folder or bundle name>``, letters, digits and '-' only."""
    stem = model.name.removesuffix(".zip")
    return "predict-" + (re.sub(r"[^A-Za-z0-9-]+", "-", stem).strip("-") or "model")


def model_settings(trained: TrainedModel) -> GroupSettings:
    """The model's resolved settings as :class:`GroupSettings`; fields an older run did not record
    take its preset's values."""
    from neurossm_app.group.presets import resolve_settings

    names = {f.name for f in fields(GroupSettings)} - {"preset"}
    saved = trained.record["settings"]
    return resolve_settings(saved.get("preset"), {k: v for k, v in saved.items() if k in names})


def check_replaceable(run_dir: Path, trained: TrainedModel) -> None:
    """A run folder may be written only when new, empty, or an earlier prediction of this model.

    Raises
    ------
    UsageError
        It holds a training run, another model's prediction, or other files (nothing is changed).
    """
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        config = None
    if isinstance(config, dict) and config.get("mode") == MODE:
        if config.get("model", {}).get("model_id") == trained.model_id:
            LOGGER.info("replacing the earlier prediction of this model in %s", run_dir)
            return
        what = "a prediction of another model"
    elif isinstance(config, dict) and "settings" in config:
        what = "a training run"
    else:
        what = "other files"
    raise UsageError(f"{run_dir} holds {what}; choose another --run-name (nothing was changed).")


@contextmanager
def staged_directory(run_dir: Path) -> Iterator[Path]:
    """A hidden folder beside ``run_dir``, moved onto it when the block succeeds (else removed).

    An earlier ``run_dir`` (:func:`check_replaceable`) is moved aside first and deleted after.

    Raises
    ------
    OutputError
        The folder cannot be created.
    """
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.partial-", dir=run_dir.parent))
    except OSError as err:
        raise OutputError(f"cannot create {run_dir}: {err.strerror}; check OUTPUT_DIR permissions.") from None
    os.chmod(staging, 0o755)
    try:
        yield staging
        old = None
        if run_dir.exists():
            old = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
            os.replace(run_dir, old)
        os.replace(staging, run_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_config(
    run_dir: Path, request: PredictRequest, trained: TrainedModel, target: str, device: torch.device
) -> None:
    """``config.json``: the model used, the selection and where it ran."""
    write_json(
        run_dir / "config.json",
        {
            "mode": MODE,
            "model": {
                "source": str(trained.source),
                "kind": trained.kind,
                "model_id": trained.model_id,
                "run_name": trained.record["run_name"],
                "checkpoints": [c.name for c in trained.checkpoints],
            },
            "selection": {k: v for k, v in request.selection.items() if v},
            "target": target,
            "runtime": {"device": str(device)},
            "software": software_versions(GROUP_PACKAGES),
        },
    )


def ensemble_probabilities(
    trained: TrainedModel,
    series: list[np.ndarray],
    device: torch.device,
    batch_size: int,
    backend: str = "auto",
) -> np.ndarray:
    """Every checkpoint's class probabilities of full-length scans.

    Parameters
    ----------
    series : list of numpy.ndarray, each (R, T_i)
        Normalized scans.
    backend : str
        Selective-scan back end (``auto``, ``cpu``, ``torch``, ``cuda``).

    Returns
    -------
    numpy.ndarray, (M, N, C) float64
        Checkpoint x scan x class; the ensemble is the mean over axis 0.
    """
    out = []
    for checkpoint in trained.checkpoints:
        model = build_member(checkpoint, backend)
        with deterministic_algorithms():
            out.append(predict_proba(model, series, device, batch_size))
    return np.stack(out)


def scan_table(cohort: NewCohort, classes: tuple[str, ...], proba: np.ndarray) -> pd.DataFrame:
    """One row per scan: identity, length, TR, true and predicted label, ``prob_<class>``."""
    rows: dict[str, Any] = {"level": "scan", "scan": [s.name for s in cohort.scans]}
    for entity in ENTITY_COLUMNS:
        rows[entity] = [s.entities.get(entity) for s in cohort.scans]
    rows["n_scans"] = 1
    rows["n_volumes"] = cohort.lengths
    rows["repetition_time"] = cohort.repetition_times
    rows["true_label"] = cohort.labels
    rows["predicted_label"] = [classes[k] for k in proba.argmax(axis=1)]
    for k, name in enumerate(classes):
        rows[f"prob_{name}"] = np.round(proba[:, k], 6)
    return pd.DataFrame(rows)


def subject_table(scans: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per subject and true label: the mean of its scans' ensemble probabilities."""
    columns = [f"prob_{c}" for c in classes]
    grouped = scans.groupby(["subject", "true_label"], sort=False, dropna=False)
    table = grouped[columns].mean().reset_index()
    table.insert(0, "level", "subject")
    table["n_scans"] = grouped.size().to_numpy()
    table["predicted_label"] = [classes[k] for k in table[columns].to_numpy().argmax(axis=1)]
    table[columns] = table[columns].round(6)
    return table.reindex(columns=scans.columns)


def model_table(cohort: NewCohort, trained: TrainedModel, proba: np.ndarray) -> pd.DataFrame:
    """``model_predictions.tsv``: one row per checkpoint and scan."""
    frames = []
    for m, checkpoint in enumerate(trained.checkpoints):
        rows: dict[str, Any] = {
            "scan": [s.name for s in cohort.scans],
            "subject": [s.subject for s in cohort.scans],
        }
        rows |= {"fold": checkpoint.fold, "seed": checkpoint.seed, "true_label": cohort.labels}
        rows["predicted_label"] = [trained.classes[k] for k in proba[m].argmax(axis=1)]
        for k, name in enumerate(trained.classes):
            rows[f"prob_{name}"] = np.round(proba[m][:, k], 6)
        frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)


def labelled_metrics(rows: pd.DataFrame, classes: tuple[str, ...]) -> dict[str, Any] | None:
    """:data:`~.evaluate.METRICS` over the rows with a true label (``None`` when none has one)."""
    chosen = rows[rows["true_label"].notna()]
    if chosen.empty:
        return None
    index = {name: k for k, name in enumerate(classes)}
    values = classification_metrics(
        np.array([index[v] for v in chosen["true_label"]]), chosen[[f"prob_{c}" for c in classes]].to_numpy()
    )
    return {**{k: (None if np.isnan(v) else v) for k, v in values.items()}, "n": len(chosen)}


def _mean_sd(values: list[float | None]) -> dict[str, Any]:
    finite = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "n": len(finite),
    }


def write_predictions(
    run_dir: Path, trained: TrainedModel, cohort: NewCohort, proba: np.ndarray, extra: dict[str, Any]
) -> dict[str, Any]:
    """``predictions.tsv``, ``model_predictions.tsv`` and ``summary.json``; returns the summary."""
    classes = trained.classes
    scans = scan_table(cohort, classes, proba.mean(axis=0))
    subjects = subject_table(scans, classes)
    models = model_table(cohort, trained, proba)
    table = pd.concat([scans, subjects], ignore_index=True)
    table["n_volumes"] = table["n_volumes"].astype("Int64")  # integers beside the subject rows' n/a
    write_tsv(run_dir / "predictions.tsv", table)
    write_tsv(run_dir / "model_predictions.tsv", models)
    metrics = None
    if scans["true_label"].notna().any():
        per_model = [
            labelled_metrics(rows, classes) for _, rows in models.groupby(["seed", "fold"], sort=False)
        ]
        metrics = {
            "scan": labelled_metrics(scans, classes),
            "subject": labelled_metrics(subjects, classes),
            "checkpoints_scan": {m: _mean_sd([v[m] for v in per_model]) for m in METRICS},
        }
    summary = {
        "run_name": extra.get("run_name"),
        "mode": MODE,
        "classes": list(classes),
        "ensemble": ENSEMBLE,
        "model": model_summary(trained),
        "metrics": metrics,
        "predicted": {
            level: {c: int((rows["predicted_label"] == c).sum()) for c in classes}
            for level, rows in (("scans", scans), ("subjects", subjects))
        },
        "dataset": cohort.summary(),
        "training_cohort": trained.record["training_cohort"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def model_summary(trained: TrainedModel) -> dict[str, Any]:
    """The ``model`` entry of ``summary.json``: where it came from and how it did in training."""
    record = trained.record
    return {
        "source": str(trained.source),
        "kind": trained.kind,
        "model_id": trained.model_id,
        "run_name": record["run_name"],
        "preset": record["settings"].get("preset"),
        "target": record["target"],
        "atlas": record["atlas_label"],
        "dynamic_length": trained.dynamic_length,
        "checkpoints": [c.name for c in trained.checkpoints],
        "cross_validation": record["cross_validation"],
    }


def log_metrics(summary: dict[str, Any]) -> None:
    """One log line per level with labels, or what was predicted."""
    metrics = summary["metrics"]
    if metrics is None:
        LOGGER.info("no true labels: predicted %s", summary["predicted"]["subjects"])
        return
    for level in ("scan", "subject"):
        values = metrics[level]
        LOGGER.info(
            "ensemble per %s (%d labelled): accuracy %.3f, balanced accuracy %.3f",
            level, values["n"], values["accuracy"], values["balanced_accuracy"],
        )  # fmt: skip
