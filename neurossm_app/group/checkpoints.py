"""NeuroSSM checkpoints: weights as safetensors plus a JSON description, never pickle.

``checkpoints/model-neurossm_fold-K_seed-S.safetensors`` holds the state dict;
``model-neurossm_fold-K_seed-S.json`` beside it holds what is needed to rebuild and use the model:
the ``NeuroSSMConfig``, class names, atlas and ROI names, the input normalization, the window
length, and the SHA-256 of the weights file (so a damaged file is detected before use).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurossm_app.errors import DataError
from neurossm_app.files import atomic_path, write_json

CHECKPOINT_FORMAT = "neurossm-app checkpoint 1"


def checkpoint_path(run_dir: Path, fold: int, seed: int) -> Path:
    """``RUN_DIR/checkpoints/model-neurossm_fold-K_seed-S.safetensors``."""
    return run_dir / "checkpoints" / f"model-neurossm_fold-{fold}_seed-{seed}.safetensors"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: Path, model: nn.Module, description: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s weights to ``path`` and ``description`` (+ format, hash) beside it.

    Parameters
    ----------
    path
        ``.safetensors`` destination; the JSON goes to ``path.with_suffix(".json")``.
    model
        Any module; its state dict is copied to contiguous CPU tensors (shared tensors are
        saved once per name, which ``load_state_dict`` accepts).
    description
        JSON-ready fields (config, classes, atlas, ROI names, normalization, ...).

    Returns
    -------
    dict
        The JSON written.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CHECKPOINT_FORMAT})
        sha = file_sha256(tmp)
    info = {"format": CHECKPOINT_FORMAT, **description, "weights": path.name, "sha256": sha}
    write_json(path.with_suffix(".json"), info)
    return info


def _damaged(path: Path, why: str) -> DataError:
    return DataError(
        f"checkpoint {path} is damaged ({why}); delete it and its unit folder "
        "(units/fold-K_seed-S) and re-run the group level to retrain that unit."
    )


def weights_path(path: Path) -> Path:
    """The ``.safetensors`` file of a checkpoint given by either of its two files.

    Raises
    ------
    DataError
        ``path`` ends in neither ``.safetensors`` nor ``.json``.
    """
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".safetensors")
    if path.suffix != ".safetensors":
        raise DataError(
            f"{path} is not a checkpoint file; give its .safetensors (or the .json beside it), "
            "e.g. RUN_DIR/checkpoints/model-neurossm_fold-0_seed-0.safetensors."
        )
    return path


def read_checkpoint_info(path: Path) -> dict[str, Any]:
    """Read and check the JSON of checkpoint ``path`` (its ``.safetensors`` or its ``.json``).

    Raises
    ------
    DataError
        Missing or unreadable JSON, another format, or weights whose hash does not match.
    """
    path = weights_path(path)
    meta = path.with_suffix(".json")
    if not path.is_file() or not meta.is_file():
        raise _damaged(path, "the .safetensors or its .json is missing")
    try:
        info = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _damaged(path, f"{meta.name} is not valid JSON") from None
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        raise _damaged(path, f"{meta.name} is not a {CHECKPOINT_FORMAT!r} description")
    if file_sha256(path) != info.get("sha256"):
        raise _damaged(path, "its SHA-256 differs from the one recorded in the .json")
    return info


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint's weights (CPU) and description.

    Returns
    -------
    state_dict : dict of str -> torch.Tensor
    info : dict
        The JSON description (``config``, ``classes``, ``roi_names``, ...).

    Raises
    ------
    DataError
        Damaged or missing files.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = weights_path(path)
    info = read_checkpoint_info(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise _damaged(path, f"safetensors cannot read it: {err}") from None
    return state, info


def load_neurossm(path: Path, backend: str = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained NeuroSSM from its checkpoint (in eval mode, on the CPU).

    ``path`` is the checkpoint's ``.safetensors`` or the ``.json`` beside it.

    Raises
    ------
    DataError
        Damaged files, or weights that do not fit the saved configuration.
    """
    from neurossm_app.group.models import build_neurossm

    path = weights_path(path)
    state, info = load_checkpoint(path)
    model, _ = build_neurossm(info["config"], backend=backend)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise _damaged(path, f"weights do not match the saved config: {str(err).splitlines()[0]}") from None
    return model.eval(), info
