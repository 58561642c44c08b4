"""A model bundle: a trained group run's ensemble in one zip that travels without the data.

``neurossm-app-export RUN_DIR BUNDLE.zip`` (:func:`export_bundle`) writes:

``manifest.json``
    The format and the SHA-256 of every other member.
``model.json``
    :func:`~neurossm_app.group.trained.model_record`: resolved settings, atlas and ROI names,
    classes, how the training inputs were made, the training cohort's counts, the cross-validated
    metrics, the software versions of the training and of the export.
``checkpoints/model-neurossm_fold-K_seed-S.safetensors`` and ``.json``
    Every fold x seed checkpoint: weights and the JSON that rebuilds the model.
``MODEL.md``
    The model card: what it was trained on, how well it did, what inputs it expects.

No subject identifiers and no time series are written. :func:`read_bundle` reads the members in
memory (nothing is extracted, so no member name can reach outside a folder), checks every
member against the manifest and refuses anything missing, extra or changed; loading never
unpickles (JSON and safetensors only).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

from neurossm_app.errors import DataError, InputMissingError, OutputError
from neurossm_app.files import write_atomic
from neurossm_app.group.trained import Checkpoint, TrainedModel, read_run_folder

BUNDLE_FORMAT = "neurossm-app model bundle 1"
MANIFEST = "manifest.json"
RECORD = "model.json"
MODEL_CARD = "MODEL.md"
#: A bundle's members together may not inflate to more than this (a zip bomb is refused).
MAX_BUNDLE_BYTES = 8 << 30


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_members(trained: TrainedModel) -> dict[str, bytes]:
    """Every member of the bundle of ``trained`` except the manifest, by name."""
    from neurossm_app.provenance import GROUP_PACKAGES, software_versions

    record = {**trained.record, "exported_with": software_versions(GROUP_PACKAGES)}
    members = {RECORD: _json_bytes(record)}
    for checkpoint in trained.checkpoints:
        stem = f"checkpoints/{Path(checkpoint.info['weights']).stem}"
        members[f"{stem}.safetensors"] = checkpoint.weights
        members[f"{stem}.json"] = _json_bytes(checkpoint.info)
    members[MODEL_CARD] = model_card(record).encode()
    return members


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, default=str) + "\n").encode()


def export_bundle(run_dir: Path, bundle: Path) -> Path:
    """Write the bundle of the finished run ``run_dir`` to ``bundle`` (atomically; never over a file).

    Raises
    ------
    InputMissingError, DataError
        ``run_dir`` is not a finished group run (:func:`~.trained.read_run_folder`).
    OutputError
        ``bundle`` exists, or its folder is missing or not writable.
    """
    if bundle.exists():
        raise OutputError(f"{bundle} exists; neurossm-app-export never overwrites: give a new file name.")
    if not bundle.parent.is_dir():
        raise OutputError(f"cannot write {bundle}: {bundle.parent} is not a folder; create it first.")
    if not run_dir.is_dir():
        raise InputMissingError(f"RUN_DIR {run_dir} is not a folder; give OUTPUT_DIR/group/<run-name>.")
    data = bundle_bytes(read_run_folder(run_dir))
    try:
        write_atomic(bundle, lambda tmp: tmp.write_bytes(data))
    except OSError as err:
        raise OutputError(f"cannot write {bundle}: {err.strerror}; check the folder's permissions.") from None
    return bundle


def _refused(path: Path, why: str) -> DataError:
    return DataError(
        f"model bundle {path} is refused: {why}; export it again from its run folder "
        "(neurossm-app-export RUN_DIR BUNDLE.zip) and copy it whole."
    )


def read_members(path: Path) -> dict[str, bytes]:
    """Every member of the bundle at ``path``, read in memory and checked against its manifest.

    Raises
    ------
    DataError
        Not a zip, a member name that is not a plain relative path, members missing from or not
        listed in the manifest, a member whose SHA-256 differs, or too large.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            unsafe = [n for n in names if n.startswith(("/", "\\")) or "\\" in n or ".." in n.split("/")]
            if unsafe:
                raise _refused(path, f"member {unsafe[0]!r} is not a plain relative name")
            if len(set(names)) != len(names):
                raise _refused(path, "a member name appears twice")
            if sum(info.file_size for info in infos) > MAX_BUNDLE_BYTES:
                raise _refused(path, f"its members inflate to more than {MAX_BUNDLE_BYTES >> 30} GiB")
            if MANIFEST not in names:
                raise _refused(path, f"it has no {MANIFEST} (not a neurossm-app bundle, or incomplete)")
            members = {name: archive.read(name) for name in names}
    except zipfile.BadZipFile as err:
        raise _refused(path, f"it is not a readable zip file ({err})") from None
    except OSError as err:
        raise _refused(path, f"it cannot be read ({err.strerror})") from None
    return _checked(path, members)


def _checked(path: Path, members: dict[str, bytes]) -> dict[str, bytes]:
    """The members without the manifest, each checked against it."""
    try:
        manifest = json.loads(members.pop(MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _refused(path, f"{MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise _refused(path, f"{MANIFEST} is not a {BUNDLE_FORMAT!r} manifest")
    listed = manifest.get("sha256")
    if not isinstance(listed, dict):
        raise _refused(path, f"{MANIFEST} lists no members")
    missing = sorted(set(listed) - set(members))
    if missing:
        raise _refused(path, f"it is incomplete ({len(missing)} member(s) missing, e.g. {missing[0]})")
    extra = sorted(set(members) - set(listed))
    if extra:
        raise _refused(path, f"member {extra[0]} is not listed in {MANIFEST}")
    changed = [name for name, data in members.items() if _sha256(data) != listed[name]]
    if changed:
        raise _refused(
            path, f"member {changed[0]} differs from its SHA-256 in {MANIFEST} (changed or damaged)"
        )
    return members


def read_bundle(path: Path) -> TrainedModel:
    """The ensemble in the bundle at ``path`` (:func:`read_members`; JSON and safetensors only).

    Raises
    ------
    DataError
        A tampered, incomplete or inconsistent bundle.
    """
    members = read_members(path)
    try:
        record = json.loads(members[RECORD])
        checkpoints = []
        for entry in record["checkpoints"]:
            stem = f"checkpoints/{Path(entry['weights']).stem}"
            info = json.loads(members[f"{stem}.json"])
            weights = members[f"{stem}.safetensors"]
            if _sha256(weights) != info["sha256"] or info["sha256"] != entry["sha256"]:
                raise _refused(path, f"{stem}.safetensors differs from the SHA-256 its description records")
            checkpoints.append(Checkpoint(int(entry["fold"]), int(entry["seed"]), info, weights))
    except (KeyError, TypeError, ValueError) as err:
        why = f"{type(err).__name__}: {err}"
        raise _refused(path, f"{RECORD} or a checkpoint description is incomplete ({why})") from None
    if not checkpoints:
        raise _refused(path, "it holds no checkpoint")
    return TrainedModel(path, "bundle", record, tuple(checkpoints))


def _metric_text(values: dict[str, Any] | None) -> str:
    if not values or values.get("mean") is None:
        return "n/a"
    sd = f" ± {values['sd']:.3f}" if values.get("sd") is not None else ""
    return f"{values['mean']:.3f}{sd}"


def model_card(record: dict[str, Any]) -> str:
    """``MODEL.md``: what the model was trained on, how well it did, what inputs it expects."""
    settings, cohort, cv = record["settings"], record["training_cohort"], record["cross_validation"]
    classes = cohort.get("classes", {})
    lines = [
        f"# NeuroSSM model `{record['run_name']}`",
        "",
        f"Classifies `{record['target']}` into {len(record['classes'])} classes: "
        + ", ".join(f"`{c}`" for c in record["classes"])
        + f". An ensemble of {len(record['checkpoints'])} checkpoints (folds x seeds); predictions are "
        "the mean of their class probabilities.",
        "",
        "## Trained on",
        "",
        f"- {cohort.get('n_subjects')} subjects, {cohort.get('n_scans')} scans: "
        + ", ".join(f"{k} {v.get('subjects')} subjects / {v.get('scans')} scans" for k, v in classes.items()),
        "- volumes per scan: "
        + ", ".join(f"{k} {v:g}" for k, v in cohort.get("volumes", {}).items())
        + "; repetition times: "
        + ", ".join(f"{n} scans at {tr} s" for tr, n in cohort.get("repetition_time", {}).items()),
        f"- preset `{settings.get('preset')}`, fMRIPrep {record.get('fmriprep_version')}",
        "",
        "## How well it did (cross-validated)",
        "",
        f"{cv.get('protocol')}. Mean ± SD over folds and seeds:",
        "",
        "| model | level | accuracy | balanced accuracy | ROC-AUC |",
        "|---|---|---|---|---|",
    ]
    for level, models in (("scan", cv.get("models") or {}), ("subject", cv.get("subject_level") or {})):
        for name, values in models.items():
            row = [_metric_text(values.get(m)) for m in ("accuracy", "balanced_accuracy", "roc_auc")]
            lines.append(f"| {name} | {level} | " + " | ".join(row) + " |")
    lines += [
        "",
        "## Inputs it expects",
        "",
        f"- participant-level series of atlas `{record['atlas_label']}` (`--atlas {record['atlas']}`), "
        f"{len(record['roi_names'])} ROIs in the order of `model.json` `roi_names`",
        f"- at least {settings.get('dynamic_length')} volumes per run (the training window)",
        "- made with these participant-level settings (`neurossm-app ... group --predict-with` "
        "refuses others):",
        "",
    ]
    lines += [f"  - `{k}`: `{v}`" for k, v in record["participant_settings"].items()]
    lines += ["", f"Normalization: {record['normalization']}.", ""]
    return "\n".join(lines)


def bundle_bytes(trained: TrainedModel) -> bytes:
    """The bundle of ``trained`` as the bytes of a zip file (:func:`export_bundle` writes them)."""
    members = bundle_members(trained)
    manifest = {"format": BUNDLE_FORMAT, "sha256": {name: _sha256(data) for name, data in members.items()}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, _json_bytes(manifest))
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()
