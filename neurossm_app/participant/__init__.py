"""Participant level: fMRIPrep derivatives -> denoised ROI time series (nipype, nilearn)."""
