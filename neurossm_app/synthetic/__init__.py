"""Synthetic BIDS + fMRIPrep-derivative datasets with planted class effects (``neurossm-synth``).

``make_dataset(out_dir, **options)`` (and the ``neurossm-synth OUT_DIR`` command) writes::

    OUT_DIR/
      dataset_description.json README CHANGES participants.tsv participants.json task-<T>_bold.json
      sub-XX/[ses-S/]anat/sub-XX[_ses-S]_T1w.nii.gz
      sub-XX/[ses-S/]func/sub-XX[_ses-S]_task-T[_run-N]_bold.nii.gz       (small, int16)
      derivatives/fmriprep/dataset_description.json
      derivatives/fmriprep/sub-XX/[ses-S/]func/
          ..._space-MNI152NLin2009cAsym[_res-2]_desc-preproc_bold.nii.gz (+ .json)
          ..._space-MNI152NLin2009cAsym[_res-2]_desc-brain_mask.nii.gz
          ..._desc-confounds_timeseries.tsv (+ .json)
      sourcedata/synthetic_truth.json
      sourcedata/neurosynth/neurosynth/        -> group --neurosynth-dir OUT_DIR/sourcedata/neurosynth
      sourcedata/atlases/templateflow/     -> TEMPLATEFLOW_HOME
      sourcedata/atlases/nilearn_data/     -> NILEARN_DATA (or fetch_atlas_aal(data_dir=...))

Atlas lookup: set ``TEMPLATEFLOW_HOME=<cache>/templateflow`` *before* templateflow is imported
(it reads the variable at import); with the directory present and non-empty, templateflow uses it
as is and never touches the network, so no other variable is needed. For AAL3v2 pass
``data_dir=<cache>/nilearn_data`` or set ``NILEARN_DATA``.

Ground truth (``sourcedata/synthetic_truth.json``)::

    {"schema": "neurossm-synth-truth/1",
     "parameters": {"subjects": ..., "tasks": [...], "seed": ..., ...},
     "atlases": {
       "schaefer400" | "schaefer400-7n" | "aal3v2": {
         "description": "...",
         "targets": {
           "sex" | "group" | "task": {
             CLASS: {"rois": [ROI names of that atlas], "signal": "raw" | "diff",
                     "effect": "slow" | "transient" | "burst"}}}}}}

Classes without an effect have no entry (e.g. task ``rest``); the ``task`` target only exists
with two or more tasks. ``signal`` names the NeuroSSM pathway where the effect lives: ``raw`` for
a 0.015-0.03 Hz oscillation, ``diff`` for sparse 3-volume alternating-sign bursts (removed by a
0.1 Hz low-pass: keep them with the participant level's ``--low-pass none``).
"""

from neurossm_app.synthetic.cli import main
from neurossm_app.synthetic.dataset import SyntheticDatasetError, make_dataset

__all__ = ["SyntheticDatasetError", "main", "make_dataset"]
