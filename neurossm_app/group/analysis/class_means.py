"""Class-level CPA: the subject-level attributions averaged per class."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

LOGGER = logging.getLogger("neurossm_app")


@dataclass
class ClassMean:
    """Class-level CPA (see :func:`class_means`).

    Attributes
    ----------
    weighted_maps : numpy.ndarray, (P, R)
        Mean of ``w_p m_p(r)``; its sum over p is the class CPA.
    weights : numpy.ndarray, (P,)
        Mean calibration weights.
    n_subjects, n_scans, n_seeds : int
        Distinct subjects, scan-seed pairs and seeds that contributed.
    """

    weighted_maps: np.ndarray
    weights: np.ndarray
    n_subjects: int
    n_scans: int
    n_seeds: int

    @property
    def cpa(self) -> np.ndarray:
        """Class CPA, (R,)."""
        return self.weighted_maps.sum(axis=0)

    @property
    def dominant(self) -> np.ndarray:
        """Dominant pathway of the class mean per ROI (index), (R,)."""
        return self.weighted_maps.argmax(axis=0)


def class_means(
    records: list[dict[str, Any]], n_classes: int, subjects: str = "correct"
) -> dict[int, ClassMean]:
    """Class-level CPA: subjects first, then seeds.

    For each seed and class, each subject's selected scans of that class (``correct``: those the
    model classified correctly; ``all``: every one) are averaged, then the subjects are averaged
    (so subjects with more runs do not weigh more), then the seeds. Classes with no selected scan
    are left out.
    """
    out = {}
    for label in range(n_classes):
        per_seed_maps, per_seed_weights, subjects_used, n_scans = [], [], set(), 0
        for seed in sorted({r["seed"] for r in records}):
            chosen = [
                r for r in records
                if r["seed"] == seed and r["true"] == label and (subjects == "all" or r["predicted"] == label)
            ]  # fmt: skip
            if not chosen:
                continue
            by_subject: dict[str, list[dict[str, Any]]] = {}
            for r in chosen:
                by_subject.setdefault(r["subject"], []).append(r)
            maps = [np.mean([r["weighted_maps"] for r in rs], axis=0) for rs in by_subject.values()]
            weights = [np.mean([r["weights"] for r in rs], axis=0) for rs in by_subject.values()]
            per_seed_maps.append(np.mean(maps, axis=0))
            per_seed_weights.append(np.mean(weights, axis=0))
            subjects_used |= set(by_subject)
            n_scans += len(chosen)
        if per_seed_maps:
            out[label] = ClassMean(
                np.mean(per_seed_maps, axis=0),
                np.mean(per_seed_weights, axis=0),
                len(subjects_used),
                n_scans,
                len(per_seed_maps),
            )
    return out


def warn_classes_without_mean(classes: tuple[str, ...], means: dict[int, ClassMean], subjects: str) -> None:
    """One warning per class that got no class mean (no selected held-out scan)."""
    for label, name in enumerate(classes):
        if label not in means:
            LOGGER.warning(
                "class %s: no %s; no CPA map for it",
                name,
                "correctly classified held-out scan (try --cpa-subjects all)"
                if subjects == "correct"
                else "held-out scan",
            )
