"""HCP-YA inputs (``--input-type hcp``) and CIFTI grayordinates (``--space fsLR``), through the real CLIs.

One small HCP-layout dataset from ``neurossm-synth --layout hcp --cifti`` (2 subjects, motor and
wm, 64 volumes, 6 mm voxels) serves every test. The references are written here without neurossm_app's code:
confounds from the HCP files with pandas and numpy, volumetric series with nilearn's
``NiftiLabelsMasker``, grayordinate series as a plain per-label mean over nibabel's CIFTI-2 axes,
each cleaned with ``nilearn.signal.clean`` as the sidecar says.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurossm_app.cli import main
from neurossm_app.files import read_tsv

#: wmparc labels as docs/usage.md defines them (HCP input: WM and CSF signals).
WM = [2, 41, 77, *range(251, 256), 5001, 5002, *range(3000, 3036), *range(4000, 4036)]
CSF = [4, 5, 14, 15, 24, 43, 44, 72]
RUN = "sub-01_task-motor_dir-LR_run-1"
DLABEL = "templateflow/tpl-fsLR/tpl-fsLR_atlas-Schaefer2018_den-32k_desc-400Parcels17Networks_dseg.dlabel.nii"
FOLDER = "01/MNINonLinear/Results/tfMRI_MOTOR_LR"
OPTIONS = ["--nprocs", "2", "--confounds", "36P", "--low-pass", "none"]


@pytest.fixture(scope="module")
def hcp_dir(tmp_path_factory, atlas_cache):
    from neurossm_app.synthetic.cli import main as synth

    root = tmp_path_factory.mktemp("hcp") / "HCP"
    argv = [str(root), "--layout", "hcp", "--cifti", "--subjects", "2", "--tasks", "motor,wm", "--volumes",
            "64", "--voxel-size", "6", "--seed", "3", "--atlas-cache", str(atlas_cache)]  # fmt: skip
    assert synth(argv) == 0
    return root


def _participant(hcp_dir, out, *extra):
    argv = [str(hcp_dir), str(out), "participant", "--input-type", "hcp", "-w", str(out.parent / "work")]
    return main([*argv, *OPTIONS, *extra])


@pytest.fixture(scope="module")
def volume_outputs(hcp_dir):
    out = hcp_dir.parent / "out-volume"
    assert _participant(hcp_dir, out, "--participant-label", "01", "--task-id", "MOTOR") == 0
    return out


@pytest.fixture(scope="module")
def cifti_outputs(hcp_dir):
    out = hcp_dir.parent / "out-fslr"
    assert _participant(hcp_dir, out, "--space", "fsLR") == 0
    return out


def _hcp_confounds(folder, bold_data: np.ndarray, regressors: list[str]) -> pd.DataFrame:
    """36P from HCP's own files: Movement_Regressors.txt (degrees -> radians), wmparc, brain mask."""
    move = np.loadtxt(folder / "Movement_Regressors.txt")[:, :6]
    move[:, 3:] = np.deg2rad(move[:, 3:])
    base = pd.DataFrame(move, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"])
    wmparc = np.asarray(nib.load(folder.parents[1] / "ROIs" / "wmparc.2.nii.gz").dataobj)
    mask = np.asarray(nib.load(folder / "brainmask_fs.2.nii.gz").dataobj) > 0
    for name, where in (
        ("white_matter", np.isin(wmparc, WM)),
        ("csf", np.isin(wmparc, CSF)),
        ("global_signal", mask),
    ):
        base[name] = bold_data[where].mean(axis=0)
    table = {}
    for column in base:
        diff = base[column].diff()
        table |= {column: base[column], f"{column}_derivative1": diff, f"{column}_power2": base[column] ** 2,
                  f"{column}_derivative1_power2": diff**2}  # fmt: skip
    confounds = pd.DataFrame(table)[regressors]
    confounds.iloc[0] = confounds.iloc[0].fillna(confounds.iloc[1])  # nilearn's first-row fill
    return confounds


def _series(out, space: str):
    stem = out / "sub-01" / "func" / f"{RUN}_space-{space}_atlas-Schaefer400n17_stat-mean_timeseries"
    return read_tsv(stem.with_suffix(".tsv")), json.loads(stem.with_suffix(".json").read_text())


def _relative_error(ours: pd.DataFrame, reference: np.ndarray, columns) -> float:
    got = ours.iloc[:, columns].to_numpy()
    return float(np.abs(got - reference).max() / np.abs(reference).max())


def test_hcp_volumes_equal_nilearn_masker(volume_outputs, hcp_dir, atlas_cache):
    from nilearn.maskers import NiftiLabelsMasker

    ours, meta = _series(volume_outputs, "MNI152NLin6Asym")
    assert meta["RepetitionTimeSource"].startswith("NIfTI header") and meta["RepetitionTime"] == 0.72
    assert meta["InputType"] == "hcp" and meta["Space"] == "MNI152NLin6Asym"
    assert meta["Sources"][0] == f"bids:hcp:{FOLDER}/tfMRI_MOTOR_LR.nii.gz"
    folder = hcp_dir / FOLDER
    bold = nib.load(folder / "tfMRI_MOTOR_LR.nii.gz")
    confounds = _hcp_confounds(folder, np.asarray(bold.dataobj, dtype=np.float64), meta["ConfoundRegressors"])
    assert len(meta["ConfoundRegressors"]) == 36
    labels = atlas_cache / "templateflow/tpl-MNI152NLin6Asym"
    labels = labels / "tpl-MNI152NLin6Asym_res-02_atlas-Schaefer2018_desc-400Parcels17Networks_dseg.nii.gz"
    masker = NiftiLabelsMasker(
        labels_img=str(labels), mask_img=str(folder / "brainmask_fs.2.nii.gz"), strategy="mean",
        detrend=True, standardize=meta["Standardize"], high_pass=0.01, low_pass=None, t_r=0.72,
        dtype="float64",
    )  # fmt: skip
    theirs = masker.fit_transform(str(folder / "tfMRI_MOTOR_LR.nii.gz"), confounds=confounds)
    pairs = [(c, int(v)) for c, v in masker.region_ids_.items() if c != "background"]
    pairs = [(c, v) for c, v in pairs if ours.columns[v - 1] not in meta["ExcludedROIs"]]
    assert len(pairs) > 100
    error = _relative_error(ours, theirs[:, [c for c, _ in pairs]], [v - 1 for _, v in pairs])
    assert error < 1e-5


def _per_label_mean(dtseries, dlabel) -> tuple[np.ndarray, dict[int, int]]:
    """(T, labels) plain means over the grayordinates whose (structure, vertex) the dlabel labels."""
    series_axis, label_axis = dtseries.header.get_axis(1), dlabel.header.get_axis(1)
    values = np.asarray(dlabel.dataobj)[0].astype(int)
    label_of = {}
    for name, where, sub in label_axis.iter_structures():
        for vertex, value in zip(sub.vertex, values[where], strict=True):
            label_of[(name, int(vertex))] = value
    members: dict[int, list[int]] = {}
    for name, where, sub in series_axis.iter_structures():
        positions = np.arange(series_axis.size)[where]
        if sub.volume_mask.any():
            continue  # subcortical voxels: no cortical label
        for position, vertex in zip(positions, sub.vertex, strict=True):
            members.setdefault(label_of.get((name, int(vertex)), 0), []).append(position)
    data = np.asarray(dtseries.dataobj, dtype=np.float64)
    labels = sorted(k for k in members if k)
    return np.stack([data[:, members[k]].mean(axis=1) for k in labels], 1), {
        k: len(members[k]) for k in labels
    }


def test_hcp_grayordinates_equal_a_per_label_mean(cifti_outputs, hcp_dir, atlas_cache):
    from nilearn.signal import clean

    ours, meta = _series(cifti_outputs, "fsLR_den-91k")
    assert meta["Space"] == "fsLR" and meta["SurfaceRegistration"] == "MSMAll"
    assert meta["RepetitionTimeSource"].startswith("CIFTI series axis")
    folder = hcp_dir / FOLDER
    dtseries = nib.load(folder / "tfMRI_MOTOR_LR_Atlas_MSMAll.dtseries.nii")
    dlabel = nib.load(atlas_cache / DLABEL)
    # the synthetic mesh is laid out as HCP's and TemplateFlow's: the dlabel lists vertices the
    # dtseries leaves out (medial wall), and the dtseries subcortical voxels the dlabel lacks
    assert dlabel.shape[1] > dtseries.header.get_axis(1).surface_mask.sum()
    assert dtseries.header.get_axis(1).volume_mask.any()
    means, _ = _per_label_mean(dtseries, dlabel)
    bold = np.asarray(nib.load(folder / "tfMRI_MOTOR_LR.nii.gz").dataobj, dtype=np.float64)
    confounds = _hcp_confounds(folder, bold, meta["ConfoundRegressors"])
    theirs = clean(
        means, detrend=True, standardize=meta["Standardize"], confounds=confounds.to_numpy(), high_pass=0.01,
        low_pass=None, t_r=0.72, standardize_confounds=True, filter="butterworth",
    )  # fmt: skip
    assert ours.shape == (64, 400) and not ours.isna().any().any()
    assert _relative_error(ours, theirs, list(range(400))) < 1e-5
    coverage = read_tsv(
        cifti_outputs
        / "sub-01/func"
        / f"{RUN}_space-fsLR_den-91k_atlas-Schaefer400n17_stat-coverage_bold.tsv"
    )
    assert (coverage["coverage"] == 1).all()
    citation = (cifti_outputs / "logs" / "CITATION.md").read_text()
    assert "(HCP minimal preprocessing, fsLR)" in citation and "91k grayordinates" in citation
    assert "Glasser MF" in citation and "voxels within the brain mask" not in citation


def test_fmriprep_cifti_output_is_read_with_space_fslr(tmp_path, atlas_cache):
    """fMRIPrep --cifti-output's space-fsLR_den-91k_bold.dtseries.nii (TR from its sidecar) with
    fMRIPrep's confounds: the plain per-label mean, cleaned as the sidecar says."""
    from nilearn.signal import clean

    from neurossm_app.synthetic.cli import main as synth
    from tests.nilearn_rebuild import sidecar_confounds

    root = tmp_path / "ds"
    argv = [str(root), "--cifti", "--subjects", "2", "--volumes", "48", "--voxel-size", "6",
            "--atlas-cache", str(atlas_cache)]  # fmt: skip
    assert synth(argv) == 0
    out = tmp_path / "out"
    argv = [str(root), str(out), "participant", "--space", "fsLR", "--participant-label", "01", "--confounds",
            "24P", "--low-pass", "none", "--skip-bids-validation", "-w", str(tmp_path / "w")]  # fmt: skip
    assert main(argv) == 0
    stem = out / "sub-01/func/sub-01_task-rest_space-fsLR_den-91k_atlas-Schaefer400n17_stat-mean_timeseries"
    ours, meta = read_tsv(stem.with_suffix(".tsv")), json.loads(stem.with_suffix(".json").read_text())
    func = root / "derivatives/fmriprep/sub-01/func"
    assert meta["Sources"] == [
        "bids:fmriprep:sub-01/func/sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii",
        "bids:fmriprep:sub-01/func/sub-01_task-rest_desc-confounds_timeseries.tsv",
    ]
    means, _ = _per_label_mean(nib.load(func / "sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii"),
                               nib.load(atlas_cache / DLABEL))  # fmt: skip
    confounds = sidecar_confounds(meta, func / "sub-01_task-rest_desc-confounds_timeseries.tsv")
    theirs = clean(
        means, detrend=True, standardize=meta["Standardize"], confounds=confounds.to_numpy(), high_pass=0.01,
        low_pass=None, t_r=meta["RepetitionTime"], standardize_confounds=True, filter="butterworth",
    )  # fmt: skip
    kept = [t for t in range(48) if t not in meta["CensoredVolumes"]]
    assert _relative_error(ours.iloc[kept], theirs[kept], list(range(400))) < 1e-5


def test_grayordinates_without_a_parcel_are_na_with_their_coverage(hcp_dir, atlas_cache, tmp_path):
    """A dtseries lacking parcel 1's vertices (and listing the rest in another order) still gets
    every other parcel's mean; parcel 1 is n/a with coverage 0."""
    from neurossm_app.cifti import cifti_parcel_means

    dtseries = nib.load(hcp_dir / FOLDER / "tfMRI_MOTOR_LR_Atlas_MSMAll.dtseries.nii")
    dlabel_file = atlas_cache / DLABEL
    dlabel = nib.load(dlabel_file)
    expected, _ = _per_label_mean(dtseries, dlabel)
    axis = dtseries.header.get_axis(1)
    left = axis[axis.name == "CIFTI_STRUCTURE_CORTEX_LEFT"]
    values = np.asarray(dlabel.dataobj)[0].astype(int)
    parcel_one = set(np.flatnonzero(values[: left.nvertices["CIFTI_STRUCTURE_CORTEX_LEFT"]] == 1))
    keep = np.array([not (n == "CIFTI_STRUCTURE_CORTEX_LEFT" and v in parcel_one)
                     for n, v in zip(axis.name, axis.vertex, strict=True)])  # fmt: skip
    # right hemisphere first: positions change, structures and vertices do not
    right = np.flatnonzero(keep & (axis.name == "CIFTI_STRUCTURE_CORTEX_RIGHT"))
    rest = np.flatnonzero(keep & (axis.name != "CIFTI_STRUCTURE_CORTEX_RIGHT"))
    data = np.asarray(dtseries.dataobj)
    new_axis = axis[right] + axis[rest]
    header = nib.cifti2.Cifti2Header.from_axes((dtseries.header.get_axis(0), new_axis))
    path = tmp_path / "cut.dtseries.nii"
    nib.save(nib.Cifti2Image(data[:, np.concatenate([right, rest])], header), str(path))
    signals, coverage = cifti_parcel_means(path, dlabel_file, list(range(1, 401)))
    assert np.isnan(signals[:, 0]).all() and coverage[0] == 0 and (coverage[1:] == 1).all()
    assert np.abs(signals[:, 1:] - expected[:, 1:]).max() / np.abs(expected).max() < 1e-6


def test_group_trains_on_hcp_grayordinates_with_the_task_preset(cifti_outputs, hcp_dir):
    args = ["--preset", "hcp-task", "--dynamic-length", "32", "--epochs", "3", "--batch-size", "4",
            "--d-model", "8", "--n-layers", "1", "--d-state", "4", "--scales", "1", "--skip-cross-validation",
            "--test-size", "0.5", "--seeds", "0", "--omp-nthreads", "1", "--augment", "none",
            "--inner-val", "0", "--baselines", "none"]  # fmt: skip
    assert main([str(hcp_dir), str(cifti_outputs), "group", *args]) == 0
    summary = json.loads((cifti_outputs / "group" / "hcp-task" / "summary.json").read_text())
    assert summary["classes"] == ["motor", "wm"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--confounds", "acompcor"], "with --input-type hcp choose one of none, simple, 24P, 36P"),
        (["--dvars-thresh", "1.5"], "censor with --fd-thresh"),
        (["--space", "MNI152NLin2009cAsym"], "pass --space MNI152NLin6Asym or --space fsLR"),
    ],
)
def test_hcp_refuses_what_hcp_lacks(hcp_dir, tmp_path, capsys, extra, message):
    assert _participant(hcp_dir, tmp_path / "out", *extra) == 64
    assert message in capsys.readouterr().err
    assert not any((tmp_path / "out").glob("sub-*"))


def test_hcp_run_names_map_as_xcp_d_maps_them():
    from neurossm_app.hcp import hcp_run_entities

    assert hcp_run_entities("100307", "rfMRI_REST1_LR") == {
        "subject": "100307", "task": "rest", "direction": "LR", "run": 1}  # fmt: skip
    assert hcp_run_entities("100307", "rfMRI_REST2_RL")["run"] == 2
    assert hcp_run_entities("100307", "tfMRI_MOTOR_RL") == {
        "subject": "100307", "task": "motor", "direction": "RL", "run": 1}  # fmt: skip
    assert hcp_run_entities("100307", "tfMRI_WM_LR")["task"] == "wm"
    assert hcp_run_entities("100307", "rfMRI_REST1_7T_PA") is None  # not an HCP-YA 3T run folder


def test_hcp_runs_that_cannot_be_read_fail_alone(hcp_dir, tmp_path):
    """A run without its brain mask, and one whose Movement_Regressors.txt is shorter than the run,
    fail alone (one line each, naming the files); the other runs get their confounds tables, in
    fMRIPrep's column names."""
    import shutil

    from neurossm_app.hcp import add_hcp_confounds, collect_hcp_runs

    shutil.copytree(hcp_dir / "02", tmp_path / "HCP" / "02")
    movement = tmp_path / "HCP/02/MNINonLinear/Results/tfMRI_WM_LR/Movement_Regressors.txt"
    movement.write_text("".join(movement.read_text().splitlines(keepends=True)[:10]))
    (tmp_path / "HCP/02/MNINonLinear/Results/tfMRI_MOTOR_LR/brainmask_fs.2.nii.gz").unlink()
    shutil.copytree(hcp_dir / "01", tmp_path / "HCP" / "01")
    runs, incomplete = collect_hcp_runs(tmp_path / "HCP")
    assert list(incomplete) == ["sub-02_task-motor_dir-LR_run-1"]
    assert "lacks brainmask_fs.2.nii.gz" in str(incomplete["sub-02_task-motor_dir-LR_run-1"])
    assert runs[-1].name == "sub-02_task-motor_dir-LR_run-1"  # after the complete runs
    done, failures = add_hcp_confounds(runs, tmp_path / "work", "36P", n_workers=2, failures=incomplete)
    assert sorted(failures) == ["sub-02_task-motor_dir-LR_run-1", "sub-02_task-wm_dir-LR_run-1"]
    assert "has 10 rows but" in str(failures["sub-02_task-wm_dir-LR_run-1"])
    table = pd.read_csv(done[0].confounds, sep="\t")
    wanted = {"trans_x", "rot_z", "framewise_displacement", "white_matter", "csf", "global_signal"}
    assert wanted <= set(table)
    assert len(table) == 64 and np.isnan(table["framewise_displacement"][0])


def test_hcp_task_names_are_the_task_presets_classes():
    """HCP-YA's seven tasks become the task labels that the hcp-task preset's classes (and their
    Neurosynth terms) are keyed by."""
    from importlib import resources

    from neurossm_app.hcp import hcp_run_entities

    terms = json.loads((resources.files("neurossm_app") / "data/neurosynth/class_terms.json").read_text())
    classes = {k for k, v in terms["presets"]["hcp-task"]["terms"].items() if v}
    hcp = ("EMOTION", "GAMBLING", "LANGUAGE", "MOTOR", "RELATIONAL", "SOCIAL", "WM")
    assert {hcp_run_entities("1", f"tfMRI_{name}_RL")["task"] for name in hcp} == classes
