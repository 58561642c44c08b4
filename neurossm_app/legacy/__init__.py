"""``neurossm-app-import``: ROI arrays of the original NeuroSSM code -> participant-level outputs.

The original research code reads ``Dataset/Data/dataset_hcpRest_schaefer.npy``,
``dataset_hcpTask_schaefer.npy``, ``dataset_ppmi_atlas-AAL-3V2.pickle`` and
``HCP_1200/Preprocessed/pheno.csv``. This package turns those files into exactly what
``neurossm-app BIDS_DIR OUTPUT_DIR participant`` writes (time-series TSVs named by
:func:`neurossm_app.bids.build_path`, JSON sidecars, ``participants.tsv``,
``dataset_description.json``), so the group level runs on them unchanged.

Modules: :mod:`.load` (files, the restricted unpickler), :mod:`.records` (structures -> samples),
:mod:`.labels` (phenotype tables and label values), :mod:`.convert` (checks, plan, outputs),
:mod:`.cli` (the command line).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run ``neurossm-app-import``; returns the exit code."""
    from neurossm_app.legacy.cli import main as _main

    return _main(argv)
