"""Which regions carry which planted class effect, and the ground-truth record of it.

Effects are defined on cortical AAL3v1 regions; because each cortical AAL region is a union of
whole synthetic Schaefer parcels (see :mod:`neurossm_app.synthetic.atlas`), the same voxels are
named once per atlas in the truth file. Two kinds of effect:

``slow``
    A sinusoid at 0.015-0.03 Hz (random per run): lives in the raw signal (``"signal": "raw"``).
``transient``
    Sparse 4-8 s plateaus with sharp ~2-TR edges (``"signal": "diff"``), made to survive a
    0.01-0.1 Hz band-pass: the sex and group targets' second kind. A plateau that survives a
    0.1 Hz low-pass is about as visible in the raw signal, and CPA of a trained NeuroSSM mostly
    credits these to raw pathways.
``burst``
    Sparse 3-volume alternating-sign bursts (+1, -1, +1), one every 6-14 volumes: they live in
    the first temporal difference (``"signal": "diff"``), and the task effects that are not slow
    are bursts. Near the Nyquist frequency, they are a test pattern for the difference pathways
    rather than a haemodynamic response, and a 0.01-0.1 Hz band-pass removes most of them: run
    the participant level with ``--low-pass none`` to keep them (``make demo`` does; docs/cpa.md,
    "What CPA recovers on synthetic data").
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from neurossm_app.synthetic.atlas import (
    SCHAEFER_DESCS,
    aal3_region_table,
    build_atlas_volumes,
    schaefer_names,
)

SIGNAL_OF_KIND = {"slow": "raw", "transient": "diff", "burst": "diff"}
#: Effect size in BOLD units (baseline ~1000; ROI-level background noise SD ~10): the sinusoid's
#: amplitude, a plateau's height, a burst's peak. Strong enough that a small NeuroSSM separates
#: 12 subjects x 4 tasks after 36P cleaning without a low-pass (``make demo``), and 16-40
#: subjects by sex after a band-pass (docs/performance.md).
AMPLITUDE = {"slow": 28.0, "transient": 44.0, "burst": 20.0}

#: target -> class -> (kind, cortical AAL3v1 regions). Classes absent here carry no effect.
PLANTED_EFFECTS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "sex": {
        "F": ("transient", ("Cingulate_Post_L", "Precuneus_R", "Angular_L")),
        "M": ("slow", ("Frontal_Sup_Medial_R", "Temporal_Mid_L", "Occipital_Mid_R")),
    },
    "group": {
        "PD": ("slow", ("Supp_Motor_Area_L", "Supp_Motor_Area_R", "Paracentral_Lobule_L")),
        "Control": ("transient", ("Frontal_Inf_Tri_R", "Insula_L", "Parietal_Sup_R")),
    },
}
#: The seven HCP tasks get plausible regions; other task names get unused regions (see task_effect).
TASK_EFFECTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "motor": ("burst", ("Precentral_L", "Postcentral_L", "Precentral_R")),
    "language": ("slow", ("Temporal_Sup_L", "Frontal_Inf_Oper_L", "Temporal_Pole_Mid_L")),
    "wm": ("burst", ("Frontal_Mid_2_L", "Frontal_Mid_2_R", "Parietal_Inf_L")),
    "emotion": ("slow", ("Fusiform_R", "OFClat_R", "Temporal_Inf_R")),
    "gambling": ("burst", ("OFCmed_L", "Frontal_Med_Orb_R", "ACC_pre_L")),
    "relational": ("slow", ("Frontal_Sup_2_L", "Frontal_Sup_2_R", "Parietal_Inf_R")),
    "social": ("burst", ("SupraMarginal_R", "Temporal_Mid_R", "Temporal_Pole_Sup_R")),
}
#: Tasks that carry no effect of their own (the baseline class of a task classifier).
BASELINE_TASKS = frozenset({"rest"})


@dataclass(frozen=True)
class Effect:
    """One planted class effect.

    Attributes
    ----------
    target, label : str
        e.g. ``("sex", "F")`` or ``("task", "motor")``.
    kind : {"slow", "transient", "burst"}
    aal_regions : tuple of str
        Cortical AAL3v1 region names.
    schaefer_parcels : tuple of int
        Schaefer-400 parcel indices (1-400) whose voxels carry the effect.
    """

    target: str
    label: str
    kind: str
    aal_regions: tuple[str, ...]
    schaefer_parcels: tuple[int, ...]

    @property
    def signal(self) -> str:
        """Pathway the effect shows in: ``"raw"`` or ``"diff"``."""
        return SIGNAL_OF_KIND[self.kind]


def _used_regions() -> set[str]:
    used = {name for classes in PLANTED_EFFECTS.values() for _, names in classes.values() for name in names}
    return used | {name for _, names in TASK_EFFECTS.values() for name in names}


def task_effect(task: str) -> tuple[str, tuple[str, ...]] | None:
    """Kind and regions of a task's effect; ``None`` for baseline tasks such as ``rest``.

    Unknown task names get three cortical regions used by no other effect, picked by a hash of
    the name (stable across runs and machines), and a kind from the same hash.
    """
    if task in BASELINE_TASKS:
        return None
    if task in TASK_EFFECTS:
        return TASK_EFFECTS[task]
    regions = aal3_region_table()
    free = sorted(set(regions.loc[regions["kind"] == "cortex", "name"]) - _used_regions())
    rng = np.random.default_rng(zlib.crc32(task.encode()))
    picked = tuple(sorted(rng.choice(free, size=3, replace=False).tolist()))
    kind = ("slow", "burst")[zlib.crc32(task.encode()) % 2]
    return kind, picked


def _make_effect(target: str, label: str, kind: str, aal_regions: tuple[str, ...]) -> Effect:
    volumes = build_atlas_volumes()
    index_of = {
        name: int(index) for index, name in aal3_region_table()[["index", "name"]].itertuples(index=False)
    }
    parcels = sorted(p for name in aal_regions for p in volumes.aal_parcels[index_of[name]])
    return Effect(target, label, kind, tuple(aal_regions), tuple(parcels))


def planted_effects(tasks: list[str]) -> list[Effect]:
    """All effects of a dataset with these tasks (task effects only when there are 2+ tasks).

    Returns
    -------
    list of Effect
    """
    effects = [
        _make_effect(target, label, kind, regions)
        for target, classes in PLANTED_EFFECTS.items()
        for label, (kind, regions) in classes.items()
    ]
    if len(tasks) > 1:
        for task in tasks:
            spec = task_effect(task)
            if spec is not None:
                effects.append(_make_effect("task", task, *spec))
    return effects


def truth_record(effects: list[Effect], parameters: dict) -> dict:
    """The ``sourcedata/synthetic_truth.json`` content.

    Schema::

        {"schema": "neurossm-synth-truth/1",
         "parameters": {...generator options...},
         "atlases": {ATLAS: {"description": str,
                             "targets": {TARGET: {CLASS: {"rois": [ROI names of ATLAS],
                                                          "signal": "raw" | "diff",
                                                          "effect": "slow" | "transient" | "burst"}}}}}}

    ``ATLAS`` is one of ``schaefer400`` (17-network names), ``schaefer400-7n`` (7-network names
    of the same parcels) and ``aal3v2`` (AAL3v1 names); ``TARGET`` is ``sex``, ``group`` or
    ``task``; a class without an effect has no entry.
    """
    descriptions = {
        "schaefer400": "TemplateFlow MNI152NLin2009cAsym Schaefer2018 desc-400Parcels17Networks names",
        "schaefer400-7n": "TemplateFlow MNI152NLin2009cAsym Schaefer2018 desc-400Parcels7Networks names",
        "aal3v2": "nilearn fetch_atlas_aal(version='3v2') AAL3v1 names",
    }
    atlases: dict[str, dict] = {}
    for atlas, description in descriptions.items():
        targets: dict[str, dict] = {}
        for effect in effects:
            if atlas in SCHAEFER_DESCS:
                names = schaefer_names(atlas)
                rois = [names[p - 1] for p in effect.schaefer_parcels]
            else:
                rois = list(effect.aal_regions)
            targets.setdefault(effect.target, {})[effect.label] = {
                "rois": rois,
                "signal": effect.signal,
                "effect": effect.kind,
            }
        atlases[atlas] = {"description": description, "targets": targets}
    return {"schema": "neurossm-synth-truth/1", "parameters": parameters, "atlases": atlases}
