"""Building NeuroSSM from the group settings (the only place the group level touches the model API)."""

from __future__ import annotations

from typing import Any

from torch import nn

from neurossm_app.errors import DataError


def build_neurossm(config: dict[str, Any], backend: str = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """A freshly initialised NeuroSSM (uses the global torch RNG: seed first).

    Parameters
    ----------
    config
        ``NeuroSSMConfig`` fields: ``n_rois``, ``n_classes`` and the architecture.
    backend
        Selective-scan back end (``auto``, ``cpu``, ``torch``, ``cuda``); not saved.

    Returns
    -------
    model : torch.nn.Module
        ``model(x (B, R, T), lengths (B,) | None) -> (B, C)`` logits.
    config : dict
        ``NeuroSSMConfig.to_dict()``: what the checkpoint must save to rebuild the model.
    """
    from neurossm_app.model import NeuroSSM, NeuroSSMConfig

    try:
        model_config = NeuroSSMConfig.from_dict(dict(config))
    except (TypeError, ValueError, KeyError) as err:
        raise DataError(f"invalid NeuroSSM configuration {config} ({err}).") from None
    model = NeuroSSM.from_config(model_config, backend=backend)
    return model, model_config.to_dict()
