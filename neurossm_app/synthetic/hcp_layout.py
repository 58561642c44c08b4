"""The HCP-YA minimal-preprocessing layout (``neurossm-synth --layout hcp``) of simulated runs.

What ``neurossm-app --input-type hcp`` reads (:mod:`neurossm_app.hcp`)::

    <subject>/MNINonLinear/ROIs/wmparc.2.nii.gz
    <subject>/MNINonLinear/Results/<run>/<run>.nii.gz, brainmask_fs.2.nii.gz,
        Movement_Regressors.txt[, <run>_Atlas_MSMAll.dtseries.nii]

No JSON sidecars, as in HCP's download: the TR is the NIfTI header's ``pixdim[4]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurossm_app.synthetic.files import write_masked_series, write_nifti
from neurossm_app.synthetic.surface import write_dtseries

#: FreeSurfer labels the synthetic tissues get in wmparc (left, right): unsegmented WM, lateral
#: ventricles, cortex (ctx-?h-unknown), thalamus.
WMPARC_LABELS = {"white_matter": (5001, 5002), "csf": (4, 43), "cortex": (1000, 2000), "deep_grey": (10, 49)}


def hcp_run_name(task: str, run: int | None) -> str:
    """The HCP folder of a run: odd runs phase-encoded LR, even RL, in pairs (``rfMRI_REST1_LR``,
    ``rfMRI_REST1_RL``, ``rfMRI_REST2_LR``; ``tfMRI_MOTOR_LR``, ``tfMRI_MOTOR_RL``, ``tfMRI_MOTOR2_LR``)."""
    number = run or 1
    direction, pair = ("LR" if number % 2 else "RL"), (number + 1) // 2
    if task == "rest":
        return f"rfMRI_REST{pair}_{direction}"
    return f"tfMRI_{task.upper()}{pair if pair > 1 else ''}_{direction}"


def write_wmparc(hcp_dir: Path, subject: str, anatomy) -> Path:
    """``<subject>/MNINonLinear/ROIs/wmparc.2.nii.gz`` (where HCP's PostFreeSurfer writes it) from
    the synthetic tissues."""
    flat = np.zeros(len(anatomy.xyz), np.int16)
    left = anatomy.xyz[:, 0] < 0
    for tissue, (lh, rh) in WMPARC_LABELS.items():
        flat[anatomy.tissue[tissue] & left] = lh
        flat[anatomy.tissue[tissue] & ~left] = rh
    volume = np.zeros(anatomy.grid.shape, np.int16)
    volume[anatomy.brain] = flat
    path = Path(hcp_dir) / subject / "MNINonLinear" / "ROIs" / "wmparc.2.nii.gz"
    return write_nifti(path, volume, anatomy.grid.affine, xform_code="mni")


def movement_regressors(motion: np.ndarray) -> np.ndarray:
    """HCP's 12 columns from (T, 6) translations (mm) and rotations (radians): the six in mm and
    degrees, then their backward differences (0 at the first volume)."""
    params = np.concatenate([motion[:, :3], np.rad2deg(motion[:, 3:])], axis=1)
    return np.concatenate([params, np.vstack([np.zeros((1, 6)), np.diff(params, axis=0)])], axis=1)


def write_hcp_run(
    hcp_dir: Path, subject: str, run_name: str, bold: np.ndarray, motion: np.ndarray, anatomy, tr: float,
    sources: np.ndarray | None,
) -> Path:  # fmt: skip
    """One run's folder (``bold``: (V, T) in-brain voxel series; ``motion``: (T, 6)); returns it.

    With ``sources`` (:func:`.surface.vertex_sources`), the run's dtseries is written too."""
    folder = Path(hcp_dir) / subject / "MNINonLinear" / "Results" / run_name
    affine = anatomy.grid.affine
    write_masked_series(folder / f"{run_name}.nii.gz", bold, anatomy.brain, affine, tr, xform_code="mni")
    write_nifti(folder / "brainmask_fs.2.nii.gz", anatomy.brain.astype(np.uint8), affine, xform_code="mni")
    np.savetxt(folder / "Movement_Regressors.txt", movement_regressors(motion), fmt="%.6f", delimiter="  ")
    if sources is not None:
        write_dtseries(folder / f"{run_name}_Atlas_MSMAll.dtseries.nii", bold, anatomy, tr, sources)
    return folder
