"""NeuroSSM: the model (PyTorch only; nothing here imports nipype or BIDS code).

- :mod:`.scan`: the selective scan with ``cpu`` (numba), ``torch`` and ``cuda`` back ends
- :mod:`.backends`: which back end runs where (once per process), the CUDA kernels' limits
- :mod:`.mamba`: a Mamba block with ``mamba_ssm.Mamba``'s parameters
- :mod:`.blocks`: masking, pooling, residual bidirectional Mamba blocks, one pathway
- :mod:`.neurossm`: the multiscale differential classifier and its config
"""

from neurossm_app.model.mamba import Mamba
from neurossm_app.model.neurossm import NeuroSSM, NeuroSSMConfig, pathway_names
from neurossm_app.model.scan import selective_scan

__all__ = ["Mamba", "NeuroSSM", "NeuroSSMConfig", "pathway_names", "selective_scan"]
