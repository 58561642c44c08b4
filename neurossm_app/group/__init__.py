"""Group level: train and cross-validate NeuroSSM on the participant-level ROI time series.

Read :mod:`.run` first: :func:`.run.run_group_level` is the whole level, top-down.

- :mod:`.presets`: the study presets and the resolved :class:`~.presets.GroupSettings`
- :mod:`.data`: finding series with pybids, what is left out and why, missing-value handling
- :mod:`.labels`: class labels from ``participants.tsv`` (missing-value spellings) or the task
- :mod:`.inputs`: the sidecars: inputs made alike, repetition times, the fMRIPrep version
- :mod:`.splits`: folds by subject, saved to ``splits.tsv``
- :mod:`.run_folder`: the run folder, its ``config.json`` and per-call logs
- :mod:`.units`: one (fold, seed) unit: train, test, write, mark complete
- :mod:`.train`, :mod:`.evaluate`: random-window training, full-length testing, metrics
- :mod:`.baseline`: the ``fc-logreg`` baseline
- :mod:`.checkpoints`: safetensors + JSON checkpoints
- :mod:`.aggregate`: the run-level tables from the complete units; :mod:`.subjects`: the
  subject-level results
- :mod:`.analysis`: ``--analysis``: CPA (:mod:`.cpa`), class maps (:mod:`.maps`) and Neurosynth
  reference scores (:mod:`.neurosynth`)

Nothing here imports nipype; the model is used through :mod:`.models` only.
"""
