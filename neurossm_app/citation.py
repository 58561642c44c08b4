"""``logs/CITATION.md``: a methods paragraph with versions and references for every run."""

from __future__ import annotations

import os
from pathlib import Path

from neurossm_app import __version__
from neurossm_app.files import write_text

_REFERENCES = """\
- Esteban O, et al. (2019). fMRIPrep: a robust preprocessing pipeline for functional MRI. Nat Methods 16:111-116.
- Gorgolewski K, et al. (2011). Nipype: a flexible, lightweight and extensible neuroimaging data processing framework in Python. Front Neuroinform 5:13.
- Abraham A, et al. (2014). Machine learning for neuroimaging with scikit-learn. Front Neuroinform 8:14 (nilearn).
- Ciric R, et al. (2022). TemplateFlow: FAIR-sharing of multi-scale, multi-species brain models. Nat Methods 19:1568-1571.
- Salo T, et al. (2023). NiMARE: Neuroimaging Meta-Analysis Research Environment. Aperture Neuro 3.
- Gu A, Dao T (2023). Mamba: Linear-Time Sequence Modeling with Selective State Spaces. arXiv:2312.00752.
"""


def write_citation(output_dir: str | os.PathLike, atlas=None, settings=None) -> Path:
    """Write (or refresh) ``OUTPUT_DIR/logs/CITATION.md``."""
    import nilearn
    import nipype

    lines = [
        "# Methods boilerplate",
        "",
        f"Results were generated with neurossm-app {__version__}, which uses Nipype {nipype.__version__} "
        f"and nilearn {nilearn.__version__}.",
    ]
    if atlas is not None and settings is not None:
        bands = f"{settings.high_pass or 0}-{settings.low_pass or 'Nyquist'} Hz"
        lines.append(
            f"Preprocessed BOLD runs (fMRIPrep, MNI152NLin2009cAsym) were parcellated with the "
            f"{atlas.spec.bids_label} atlas ({atlas.n_rois} regions; resampled to each run's grid with "
            f"nearest-neighbour interpolation; regions with less than {settings.min_coverage:.0%} of their "
            f"voxels inside the brain mask were excluded) by averaging voxels within the brain mask. "
            f"Parcel signals were denoised with nilearn.signal.clean: linear detrending "
            f"{'on' if settings.detrend else 'off'}, the '{settings.strategy}' fMRIPrep confound set, "
            f"Butterworth band-pass {bands}, standardization '{settings.standardize}'."
        )
        if atlas.spec.citation:
            lines += ["", "Atlas reference:", f"- {atlas.spec.citation}"]
    lines += ["", "## References", "", _REFERENCES]
    return write_text(Path(output_dir) / "logs" / "CITATION.md", "\n".join(lines))
