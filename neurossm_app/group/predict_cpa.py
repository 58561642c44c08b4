"""``--analysis`` with ``--predict-with``: CPA of the new subjects, class maps, reference scores.

As in training (:mod:`.analysis`), each scan's CPA explains one class logit of one model, and
the class maps average subjects first, then models. Here every scan is explained by every
checkpoint of the ensemble (``cpa/fold-K_seed-S/<scan>_cpa.npz``), for its true class where the
data give one and for the ensemble's predicted class otherwise; ``--cpa-subjects correct`` keeps
the scans a checkpoint classifies as that class. The class means, maps, tables and scores are
written by the training code (:func:`~.analysis.pipeline.write_analysis`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurossm_app.group.analysis.pipeline import AnalysisInputs, write_analysis
from neurossm_app.group.cpa import compute_cpa, save_cpa
from neurossm_app.group.predict_inputs import NewCohort
from neurossm_app.group.presets import GroupSettings
from neurossm_app.group.train import deterministic_algorithms
from neurossm_app.group.trained import TrainedModel, build_member

LOGGER = logging.getLogger("neurossm_app")

TARGET_CLASS = "the true class of each scan where the data give one, else the ensemble's predicted class"


def explained_classes(cohort: NewCohort, classes: tuple[str, ...], ensemble: np.ndarray) -> list[int]:
    """The class whose logit is explained for every scan: its true class, else the predicted one."""
    return [
        classes.index(label) if label is not None else int(ensemble[i].argmax())
        for i, label in enumerate(cohort.labels)
    ]


def predict_cpa(
    run_dir: Path,
    settings: GroupSettings,
    trained: TrainedModel,
    cohort: NewCohort,
    ensemble: np.ndarray,
    options: Any,
    device: torch.device,
    inputs: AnalysisInputs,
) -> dict[str, Any]:
    """CPA of every new scan with every checkpoint, then the training code's class maps.

    Parameters
    ----------
    ensemble : numpy.ndarray, (N, C)
        The ensemble's probabilities (chooses the explained class of unlabelled scans).
    inputs : AnalysisInputs
        :func:`~.analysis.pipeline.prepare_analysis`'s result, checked before predicting.

    Returns
    -------
    dict
        The content of ``cpa/analysis.json``.
    """
    targets = explained_classes(cohort, trained.classes, ensemble)
    records = []
    for checkpoint in trained.checkpoints:
        LOGGER.info("CPA of %d scan(s) with %s", len(cohort.scans), checkpoint.name)
        model = build_member(checkpoint).to(device)
        for i, scan in enumerate(cohort.scans):
            with deterministic_algorithms():
                result = compute_cpa(model, cohort.series[i], targets[i], device)
            save_cpa(
                run_dir / "cpa" / checkpoint.name / f"{scan.name}_cpa.npz", result,
                scan=scan.name, subject=scan.subject, fold=checkpoint.fold, seed=checkpoint.seed,
                true_label=cohort.labels[i] or "n/a", predicted_label=trained.classes[result.predicted],
                target_class=targets[i], classes=np.array(trained.classes, dtype=str),
                roi_names=np.array(trained.roi_names, dtype=str), checkpoint_sha256=checkpoint.info["sha256"],
            )  # fmt: skip
            records.append(
                {
                    "scan": scan.name,
                    "subject": scan.subject,
                    "seed": checkpoint.name,  # class means average subjects, then these models
                    "fold": checkpoint.fold,
                    "true": targets[i],
                    "predicted": int(result.predicted),
                    "weighted_maps": result.weighted_maps,
                    "weights": result.weights,
                    "pathway_names": tuple(result.pathway_names),
                }
            )
    extra = {"target_class": TARGET_CLASS, "checkpoints": [c.name for c in trained.checkpoints]}
    return write_analysis(
        run_dir, settings, (trained.classes, trained.roi_names), records, options, inputs, extra
    )
