"""NeuroSSM: the model (PyTorch only; nothing here imports nipype or BIDS code).

- :mod:`.scan`: the selective scan with ``cpu`` (numba), ``torch`` and ``cuda`` back ends
- :mod:`.backends`: which back end runs where (once per process), the CUDA kernels' limits
- :mod:`.mamba`: a Mamba block with ``mamba_ssm.Mamba``'s parameters
- :mod:`.blocks`: masking, pooling, residual bidirectional Mamba blocks, one pathway
- :mod:`.neurossm`: the multiscale differential classifier and its config
- :mod:`.vocabulary`: names the command line offers (no torch: building the parser stays fast)

The package's names are imported on first use (PEP 562), so that importing a torch-free
submodule (:mod:`.vocabulary`) does not import torch.
"""

from importlib import import_module

_LAZY = {
    "Mamba": "neurossm_app.model.mamba",
    "NeuroSSM": "neurossm_app.model.neurossm",
    "NeuroSSMConfig": "neurossm_app.model.neurossm",
    "pathway_names": "neurossm_app.model.neurossm",
    "selective_scan": "neurossm_app.model.scan",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
