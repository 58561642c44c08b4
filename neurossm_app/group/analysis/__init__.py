"""``group --analysis``: CPA of every held-out scan, class maps, Neurosynth reference scores.

Reads what the units wrote (checkpoints, ``splits.tsv``) and the same normalized series the
evaluation used (:func:`neurossm_app.group.data.load_dataset`), and writes under ``RUN_DIR``:

``cpa/seed-S/<scan>_cpa.npz``
    One per held-out scan and seed (:func:`neurossm_app.group.cpa.save_cpa`); the scan's fold is
    the unit whose test set it was in. Existing files made by the same checkpoint are reused.
``cpa/atlas-<A>_label-<class>_desc-classMean_cpa.npz``, ``cpa/atlas-<A>_desc-classMeans_cpa.tsv``
    Class means (see :func:`~.class_means.class_means`) and a per-class table of pathway weights.
``maps/space-MNI152NLin2009cAsym_atlas-<A>_label-<class>_desc-<desc>_<suffix>.nii.gz`` (+ ``.json``)
    ``cpaScore_statmap``, ``cpaTop25_mask``, ``cpaDominantPathway_dseg`` (+ ``.tsv``), and when the
    class has a Neurosynth term ``neurosynthReferenceScore_statmap`` and
    ``neurosynthReferenceTop25_mask``; ``..._label-<class>_desc-cpa_rois.tsv`` (the same values per
    ROI); ``..._atlas-<A>_desc-neurosynthReference_scores.tsv`` (one row per class).
``cpa/analysis.json``
    Options, terms, counts and software versions.

The modules, in the order the step uses them (:func:`~.pipeline.run_cpa_analysis`):

- :mod:`.options`: :class:`~.options.AnalysisOptions`, what ``--analysis`` adds to the settings
- :mod:`.cpa_cache`: subject-level CPA of the held-out scans, cached per checkpoint
- :mod:`.class_means`: class-level CPA (subjects first, then seeds)
- :mod:`.references`: class terms and parcellated Neurosynth reference vectors
- :mod:`.scoring`: class-specific scores (partial r, permutation p, Dice of the top 25%)
- :mod:`.writers`: the files above
- :mod:`.pipeline`: the step, top-down; :func:`~.pipeline.prepare_analysis` checks its inputs
  (Neurosynth files and terms, atlas image and ROI names, map cache) before any unit trains
"""

from neurossm_app.group.analysis.options import AnalysisOptions
from neurossm_app.group.analysis.pipeline import AnalysisInputs, prepare_analysis, run_cpa_analysis

__all__ = ["AnalysisInputs", "AnalysisOptions", "prepare_analysis", "run_cpa_analysis"]
