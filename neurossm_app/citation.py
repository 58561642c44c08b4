"""``logs/CITATION.md``: a methods paragraph with versions and references for every run."""

from __future__ import annotations

import os
import re
from pathlib import Path

from neurossm_app import __version__
from neurossm_app.bids import TEMPLATE_SPACE
from neurossm_app.files import write_text

_REFERENCES = """\
- Esteban O, et al. (2019). fMRIPrep: a robust preprocessing pipeline for functional MRI. Nat Methods 16:111-116.
- Gorgolewski K, et al. (2011). Nipype: a flexible, lightweight and extensible neuroimaging data processing framework in Python. Front Neuroinform 5:13.
- Abraham A, et al. (2014). Machine learning for neuroimaging with scikit-learn. Front Neuroinform 8:14 (nilearn).
- Ciric R, et al. (2022). TemplateFlow: FAIR-sharing of multi-scale, multi-species brain models. Nat Methods 19:1568-1571.
- Salo T, et al. (2023). NiMARE: Neuroimaging Meta-Analysis Research Environment. Aperture Neuro 3.
- Gu A, Dao T (2023). Mamba: Linear-Time Sequence Modeling with Selective State Spaces. arXiv:2312.00752.
"""


def write_citation(
    output_dir: str | os.PathLike, atlas=None, settings=None, space: str = TEMPLATE_SPACE
) -> Path:
    """Write (or refresh) ``OUTPUT_DIR/logs/CITATION.md``.

    The methods paragraph names every atlas OUTPUT_DIR holds series of (``atlas``, this call's,
    and those of earlier calls, read from the series' file names), with their references.
    """
    import nilearn
    import nipype

    lines = [
        "# Methods boilerplate",
        "",
        f"Results were generated with neurossm-app {__version__}, which uses Nipype {nipype.__version__} "
        f"and nilearn {nilearn.__version__}.",
    ]
    if atlas is not None and settings is not None:
        atlases = _atlases(Path(output_dir), atlas)
        named = " and ".join(f"the {label} atlas ({n_rois} regions)" for label, n_rois, _ in atlases)
        bands = f"{settings.high_pass or 0}-{settings.low_pass or 'Nyquist'} Hz"
        hcp = _from_hcp(Path(output_dir))
        lines.append(
            f"Preprocessed BOLD runs ({'HCP minimal preprocessing' if hcp else 'fMRIPrep'}, {space}) were "
            f"parcellated{', separately,' if len(atlases) > 1 else ''} with {named} "
            + _parcellation(space, len(atlases), settings.min_coverage)
            + " Parcel signals were denoised with nilearn.signal.clean: linear detrending "
            f"{'on' if settings.detrend else 'off'}, the '{settings.strategy}' confound set "
            f"({'computed from the HCP motion parameters, wmparc and brain mask' if hcp else 'fMRIPrep'}), "
            f"Butterworth band-pass {bands}, standardization '{settings.standardize}'."
        )
        references = [_HCP_REFERENCE] if hcp else []
        references += list(dict.fromkeys(citation for _, _, citation in atlases if citation))
        if references:
            lines += ["", "Atlas references:" if len(references) > 1 else "Atlas reference:"]
            lines += [f"- {citation}" for citation in references]
    lines += ["", "## References", "", _REFERENCES]
    return write_text(Path(output_dir) / "logs" / "CITATION.md", "\n".join(lines))


_HCP_REFERENCE = (
    "Glasser MF, et al. (2013). The minimal preprocessing pipelines for the Human Connectome Project. "
    "NeuroImage 80:105-124."
)


def _from_hcp(output_dir: Path) -> bool:
    """Whether OUTPUT_DIR's series come from HCP's own outputs (``--input-type hcp`` links ``hcp``)."""
    from neurossm_app.bids import dataset_links

    return any(re.fullmatch(r"hcp\d*", name) for name in dataset_links(output_dir))


def _parcellation(space: str, n_atlases: int, min_coverage: float) -> str:
    """How the series were parcellated: grayordinates (``fsLR``) or voxels."""
    if space == "fsLR":
        return (
            "by averaging the 91k grayordinates of each parcel, matched to the fsLR 32k atlas by "
            f"structure and vertex; regions with less than {min_coverage:.0%} of their grayordinates "
            "in the dtseries were excluded."
        )
    each = "Each atlas was" if n_atlases > 1 else "The atlas was"
    return (
        f"by averaging voxels within the brain mask. {each} resampled to each run's grid with "
        f"nearest-neighbour interpolation; regions with less than {min_coverage:.0%} of their voxels "
        "inside the brain mask were excluded."
    )


def _atlases(output_dir: Path, atlas) -> list[tuple[str, int, str]]:
    """``(label, regions, reference)`` of ``atlas`` and of every other atlas OUTPUT_DIR holds
    series of (regions: the columns of one of its series), sorted by label."""
    from neurossm_app.atlases import ATLASES

    found = {atlas.spec.bids_label: (atlas.n_rois, atlas.spec.citation)}
    for series in sorted(output_dir.glob("sub-*/**/*_atlas-*_stat-mean_timeseries.tsv")):
        label = re.search(r"_atlas-([A-Za-z0-9]+)_", series.name)
        if label is None or label.group(1) in found:
            continue
        with open(series, encoding="utf-8", errors="replace") as handle:
            n_rois = handle.readline().count("\t") + 1
        citation = next((s.citation for s in ATLASES.values() if s.bids_label == label.group(1)), "")
        found[label.group(1)] = (n_rois, citation)
    return [(label, *found[label]) for label in sorted(found)]
