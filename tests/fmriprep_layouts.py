"""fMRIPrep derivative trees as real releases write them, filled with tiny images.

Three releases, by the file names and sidecar keys that differ between them:

- ``"1.5"`` (fMRIPrep 1.2 to 1.5): ``dataset_description.json`` with ``PipelineDescription``
  and no ``DatasetType``; ``desc-confounds_regressors.tsv``; BOLD at the native output grid
  (no ``res-``); BOLD sidecars ``RepetitionTime``, ``SkullStripped``, ``TaskName``.
- ``"20.2"``: the names of bids-examples' ``ds000001-fmriprep`` (fMRIPrep 20.2.0rc0), whose
  ``dataset_description.json`` and sidecars are copied from ``tests/data/fmriprep_releases``;
  ``desc-confounds_timeseries.tsv``; ``res-2`` when asked for.
- ``"23"`` (23.x, 24.x): ``desc-confounds_timeseries.tsv``, ``res-`` variants, sidecars with
  ``SliceTimingCorrected``, ``StartTime`` and BIDS-URI ``Sources`` (``bids:raw:...``), and
  ``DatasetLinks`` in ``dataset_description.json``.

Every BOLD file has its ``desc-brain_mask`` (same grid), its ``boldref`` and one confounds
file per run (no ``space-``), with the columns of that release. Images are small boxes of
cortex in MNI space (:data:`BOX_CENTER_MM`), so a run of 40 volumes is at most a few MB (res-1).

``write_fmriprep`` is what tests call; ``write_raw_bids`` writes the raw dataset beside it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

DATA = Path(__file__).parent / "data" / "fmriprep_releases"
DS000001 = "ds000001-fmriprep"

#: Voxel sizes (mm) per ``res-`` value; ``None`` is a native output grid, anisotropic as an
#: acquisition often is (fMRIPrep keeps the BOLD's own voxel size when no ``res-`` is asked for).
GRIDS_MM = {None: (3.0, 3.0, 3.33), "1": (1.0, 1.0, 1.0), "2": (2.0, 2.0, 2.0)}
#: Centre and size of the imaged box, in MNI mm: lateral cortex of the right hemisphere, where
#: the synthetic and the real Schaefer atlases both have parcels.
BOX_CENTER_MM = (52.0, -18.0, 14.0)
BOX_SIZE_MM = (24.0, 30.0, 30.0)

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass(frozen=True)
class Release:
    """What one fMRIPrep release names and writes differently."""

    version: str
    confounds_suffix: str  # "regressors" (<= 20.1) or "timeseries" (>= 20.2)
    tissue: tuple[str, ...]  # tissue signals of the confounds file
    extra: tuple[str, ...] = ()  # further columns (rmsd, ...)
    bold_keys: tuple[str, ...] = ("RepetitionTime", "SkullStripped", "TaskName")


RELEASES = {
    "1.5": Release("1.5.0", "regressors", ("global_signal", "csf", "white_matter")),
    "20.2": Release("20.2.0rc0", "timeseries", ("global_signal", "csf", "white_matter", "csf_wm"), ("rmsd",)),
    "23": Release(
        "23.2.1",
        "timeseries",
        ("global_signal", "csf", "white_matter", "csf_wm"),
        ("rmsd",),
        ("RepetitionTime", "SkullStripped", "SliceTimingCorrected", "StartTime", "TaskName", "Sources"),
    ),
}


@dataclass
class FmriprepTree:
    """What :func:`write_fmriprep` wrote."""

    root: Path
    release: str
    bolds: list[Path] = field(default_factory=list)
    masks: list[Path] = field(default_factory=list)
    confounds: list[Path] = field(default_factory=list)


def dataset_description(release: str) -> dict:
    """The ``dataset_description.json`` of a release (20.2: ds000001-fmriprep's own)."""
    if release == "20.2":
        return json.loads((DATA / f"{DS000001}_dataset_description.json").read_text())
    version = RELEASES[release].version
    archive = f"https://github.com/nipreps/fmriprep/archive/{version}.tar.gz"
    if release == "1.5":
        return {
            "Name": "fMRIPrep - fMRI PREProcessing workflow",
            "BIDSVersion": "1.1.1",
            "PipelineDescription": {"Name": "fMRIPrep", "Version": version, "CodeURL": archive},
            "CodeURL": "https://github.com/poldracklab/fmriprep",
            "HowToAcknowledge": "Please cite our paper (https://doi.org/10.1038/s41592-018-0235-4).",
        }
    return {
        "Name": "fMRIPrep - fMRI PREProcessing workflow",
        "BIDSVersion": "1.8.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": version, "CodeURL": archive}],
        "HowToAcknowledge": "Please cite our paper (https://doi.org/10.1038/s41592-018-0235-4).",
        "DatasetLinks": {"raw": "/data/raw", "templateflow": "https://github.com/templateflow/templateflow"},
    }


def grid(res: str | None) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the box at the voxel size of ``res`` (see :data:`GRIDS_MM`)."""
    zooms = np.array(GRIDS_MM[res])
    shape = tuple(int(n) for n in np.maximum(np.round(np.array(BOX_SIZE_MM) / zooms), 2))
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = np.array(BOX_CENTER_MM) - zooms * (np.array(shape) - 1) / 2
    return shape, affine


def _save(data: np.ndarray, affine: np.ndarray, path: Path, tr: float | None = None) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(affine, code=4)  # 4: MNI152
    image.header.set_sform(affine, code=4)
    if tr is not None:
        image.header.set_zooms((*image.header.get_zooms()[:3], tr))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def confounds_table(
    release: str, volumes: int, rng: np.random.Generator, expansions: bool = True
) -> pd.DataFrame:
    """A confounds table with the columns of ``release`` (values: smooth noise).

    ``expansions=False`` leaves out the ``_derivative1``, ``_power2`` and
    ``_derivative1_power2`` columns, as some hand-made or older tables do.
    """
    spec = RELEASES[release]
    columns: dict[str, np.ndarray] = {}
    for name in (*spec.tissue, *MOTION):
        base = np.cumsum(rng.normal(0, 0.05, volumes)) + (100.0 if name in spec.tissue else 0.0)
        columns[name] = base
        if expansions:
            derivative = np.r_[np.nan, np.diff(base)]
            columns[f"{name}_derivative1"] = derivative
            columns[f"{name}_power2"] = base**2
            columns[f"{name}_derivative1_power2"] = derivative**2
    fd = np.abs(rng.normal(0.1, 0.05, volumes))
    fd[0] = np.nan
    columns["framewise_displacement"] = fd
    columns["dvars"] = np.r_[np.nan, np.abs(rng.normal(20, 2, volumes - 1))]
    columns["std_dvars"] = np.r_[np.nan, np.abs(rng.normal(1, 0.1, volumes - 1))]
    for name in spec.extra:
        columns[name] = np.r_[np.nan, np.abs(rng.normal(0.05, 0.01, volumes - 1))]
    for i in range(3):
        columns[f"t_comp_cor_{i:02d}"] = rng.normal(0, 0.1, volumes)
    for i in range(6):
        columns[f"a_comp_cor_{i:02d}"] = rng.normal(0, 0.1, volumes)
    for i in range(2):
        columns[f"cosine{i:02d}"] = np.cos(np.pi * (i + 1) * (np.arange(volumes) + 0.5) / volumes) * 0.1
    outlier = np.zeros(volumes)
    outlier[0] = 1.0
    columns["non_steady_state_outlier00"] = outlier
    return pd.DataFrame(columns)


def _compcor_sidecar() -> dict:
    """The confounds sidecar's CompCor entries (nilearn's ``load_confounds`` reads them)."""
    meta = {}
    for i in range(6):
        mask = ("CSF", "WM", "combined")[i % 3]
        meta[f"a_comp_cor_{i:02d}"] = {"Method": "aCompCor", "Mask": mask, "Retained": True}
    for i in range(3):
        meta[f"t_comp_cor_{i:02d}"] = {"Method": "tCompCor", "Retained": True}
    return meta


def _bold_sidecar(release: str, task: str, tr: float, raw_name: str, res: str | None) -> dict:
    if release == "20.2" and res == "2":
        sidecar = json.loads(
            (DATA / f"{DS000001}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.json").read_text()
        )
        return {**sidecar, "RepetitionTime": tr, "TaskName": task}
    values = {
        "RepetitionTime": tr,
        "SkullStripped": False,
        "SliceTimingCorrected": False,
        "StartTime": 0.0,
        "TaskName": task,
        "Sources": [f"bids:raw:{raw_name}"],
    }
    return {key: values[key] for key in RELEASES[release].bold_keys}


def _mask_sidecar(release: str, raw_name: str, res: str | None) -> dict | None:
    if release == "1.5":
        return None  # 1.5 wrote no mask sidecars
    if release == "20.2" and res == "2":
        sidecar = json.loads(
            (DATA / f"{DS000001}_space-MNI152NLin2009cAsym_res-2_desc-brain_mask.json").read_text()
        )
        return {**sidecar, "RawSources": [raw_name]}
    return (
        {"RawSources": [raw_name]}
        if release == "20.2"
        else {"Type": "Brain", "Sources": [f"bids:raw:{raw_name}"]}
    )


def write_fmriprep(
    root: Path,
    release: str = "20.2",
    subjects: tuple[str, ...] = ("01",),
    sessions: tuple[str | None, ...] = (None,),
    task: str = "rest",
    runs: tuple[int | None, ...] = (1,),
    spaces: tuple[tuple[str, str | None], ...] = (("MNI152NLin2009cAsym", None),),
    volumes: int = 40,
    tr: float = 2.0,
    seed: int = 0,
    confounds: bool = True,
    expansions: bool = True,
    confounds_source: Path | None = None,
) -> FmriprepTree:
    """Write an fMRIPrep derivative tree of ``release`` under ``root``.

    Parameters
    ----------
    spaces
        ``(space, res)`` pairs written for every run; ``res`` ``None`` is the native grid
        (3 x 3 x 3.33 mm, no ``res-`` entity), ``"1"`` and ``"2"`` the ``res-1``/``res-2`` grids.
    runs
        Run numbers; ``None`` for a run without a ``run-`` entity.
    confounds
        ``False`` writes no confounds file at all.
    confounds_source
        A real confounds TSV (and its JSON beside it, if any) copied for every run instead of
        the generated table; ``volumes`` then follows its row count.

    Returns
    -------
    FmriprepTree
        The root and the BOLD, mask and confounds files, in writing order.
    """
    rng = np.random.default_rng(seed)
    spec = RELEASES[release]
    if confounds_source is not None:
        volumes = len(pd.read_csv(confounds_source, sep="\t"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(dataset_description(release), indent=4))
    tree = FmriprepTree(root, release)
    for subject in subjects:
        for session in sessions:
            for run in runs:
                _write_run(tree, spec, subject, session, task, run, spaces, volumes, tr, rng, confounds,
                           expansions, confounds_source)  # fmt: skip
    return tree


def _write_run(
    tree, spec, subject, session, task, run, spaces, volumes, tr, rng, confounds, expansions, source
):
    release = tree.release
    folder = tree.root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "func"
    stem = "_".join(
        p for p in (f"sub-{subject}", f"ses-{session}" if session else "", f"task-{task}",
                    f"run-{run}" if run is not None else "") if p
    )  # fmt: skip
    raw_name = f"{folder.relative_to(tree.root).as_posix()}/{stem}_bold.nii.gz"
    for space, res in spaces:
        shape, affine = grid(res)
        prefix = f"{stem}_space-{space}" + (f"_res-{res}" if res else "")
        signal = rng.normal(1000, 10, (*shape, volumes)).astype(np.float32)
        bold = _save(signal, affine, folder / f"{prefix}_desc-preproc_bold.nii.gz", tr)
        bold.with_name(bold.name.replace(".nii.gz", ".json")).write_text(
            json.dumps(_bold_sidecar(release, task, tr, raw_name, res), indent=2)
        )
        mask = _save(np.ones(shape, np.uint8), affine, folder / f"{prefix}_desc-brain_mask.nii.gz")
        mask_meta = _mask_sidecar(release, raw_name, res)
        if mask_meta is not None:
            mask.with_name(mask.name.replace(".nii.gz", ".json")).write_text(json.dumps(mask_meta, indent=2))
        _save(signal[..., 0], affine, folder / f"{prefix}_boldref.nii.gz")
        tree.bolds.append(bold)
        tree.masks.append(mask)
    if not confounds:
        return
    tsv = folder / f"{stem}_desc-confounds_{spec.confounds_suffix}.tsv"
    if source is not None:
        shutil.copyfile(source, tsv)
        if Path(source).with_suffix(".json").is_file():
            shutil.copyfile(Path(source).with_suffix(".json"), tsv.with_suffix(".json"))
    else:
        confounds_table(release, volumes, rng, expansions).to_csv(tsv, sep="\t", index=False, na_rep="n/a")
        tsv.with_suffix(".json").write_text(json.dumps(_compcor_sidecar(), indent=2))
    tree.confounds.append(tsv)


def write_raw_bids(root: Path, subjects: tuple[str, ...] = ("01",), task: str = "rest") -> Path:
    """A raw BIDS dataset's top-level files and one (empty) BOLD sidecar per subject."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "raw", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in subjects))
    (root / f"task-{task}_bold.json").write_text(json.dumps({"RepetitionTime": 2.0, "TaskName": task}))
    return root
