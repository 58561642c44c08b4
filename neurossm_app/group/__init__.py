"""Group level: train and cross-validate NeuroSSM on the participant-level ROI time series.

- :mod:`.presets`: the study presets and the resolved :class:`~.presets.GroupSettings`
- :mod:`.data`: finding series with pybids, labels, missing-value handling
- :mod:`.splits`: folds by subject, saved to ``splits.tsv``
- :mod:`.train`, :mod:`.evaluate`: random-window training, full-length testing, metrics
- :mod:`.baseline`: the ``fc-logreg`` baseline
- :mod:`.checkpoints`: safetensors + JSON checkpoints
- :mod:`.units`, :mod:`.aggregate`, :mod:`.run`: one (fold, seed) unit, the run-level tables,
  and the whole run with resume

Nothing here imports nipype; the model is used through :mod:`.models` only.
"""
