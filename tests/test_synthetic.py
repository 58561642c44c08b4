"""neurossm-synth: BIDS validity, fMRIPrep naming, offline atlases, ground truth, determinism."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurossm_app.synthetic import SyntheticDatasetError, main, make_dataset
from neurossm_app.synthetic.atlas import aal_names, schaefer_label_table
from neurossm_app.synthetic.signals import framewise_displacement

N_SUBJECTS, N_VOLUMES = 4, 60
SPACE = "space-MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tasks, two runs: exercises run entities and task effects (4 subjects, 60 volumes)."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    return make_dataset(out, subjects=N_SUBJECTS, tasks=["rest", "motor"], runs=2, volumes=N_VOLUMES, seed=3)


@pytest.fixture(scope="module")
def single_run_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Defaults except size: one rest run, no run entity."""
    out = tmp_path_factory.mktemp("synth1") / "ds"
    return make_dataset(out, subjects=N_SUBJECTS, volumes=N_VOLUMES, seed=0)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _preproc(root: Path, subject: str = "01", entities: str = "task-rest") -> Path:
    func = root / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
    return func / f"sub-{subject}_{entities}_{SPACE}_desc-preproc_bold.nii.gz"


def test_raw_dataset_passes_bids_validator(dataset: Path) -> None:
    validator = Path(sys.executable).parent / "bids-validator-deno"
    if not validator.exists():
        pytest.skip(f"bids-validator-deno not installed next to {sys.executable}")
    result = subprocess.run(
        [str(validator), str(dataset), "--json"], capture_output=True, text=True, check=False
    )
    report = json.loads(result.stdout)
    errors = [issue for issue in report["issues"]["issues"] if issue["severity"] == "error"]
    assert errors == [], errors[:3]


def test_participants_are_balanced_and_independent(tmp_path: Path) -> None:
    from neurossm_app.synthetic.dataset import assign_participants

    table = assign_participants(40, np.random.default_rng(1))
    assert table["participant_id"].iloc[0] == "sub-01"
    assert table["sex"].value_counts().to_dict() == {"F": 20, "M": 20}
    assert table["group"].value_counts().to_dict() == {"PD": 20, "Control": 20}
    assert pd.crosstab(table["sex"], table["group"]).to_numpy().tolist() == [[10, 10], [10, 10]]


def test_pybids_finds_fmriprep_outputs(dataset: Path) -> None:
    from bids import BIDSLayout

    layout = BIDSLayout(dataset / "derivatives" / "fmriprep", validate=False, is_derivative=True)
    bolds = layout.get(desc="preproc", suffix="bold", extension=".nii.gz")
    assert len(bolds) == N_SUBJECTS * 2 * 2
    entities = bolds[0].get_entities()
    assert entities["space"] == "MNI152NLin2009cAsym" and "res" not in entities
    assert {b.entities["run"] for b in bolds} == {1, 2}
    assert bolds[0].get_metadata()["RepetitionTime"] == pytest.approx(0.72)
    masks = layout.get(desc="brain", suffix="mask", extension=".nii.gz")
    confounds = layout.get(desc="confounds", suffix="timeseries", extension=".tsv")
    assert len(masks) == len(confounds) == len(bolds)
    image = nib.load(bolds[0].path)
    assert image.shape[3] == N_VOLUMES and image.get_data_dtype() == np.float32
    assert image.header.get_zooms()[3] == pytest.approx(0.72)
    assert image.header.get_xyzt_units() == ("mm", "sec")
    assert image.shape[:3] == nib.load(masks[0].path).shape


def test_confounds_columns_follow_fmriprep(single_run_dataset: Path) -> None:
    func = single_run_dataset / "derivatives" / "fmriprep" / "sub-01" / "func"
    table = pd.read_csv(func / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t")
    for base in ("global_signal", "csf", "white_matter", "trans_x", "rot_z"):
        for suffix in ("", "_derivative1", "_power2", "_derivative1_power2"):
            assert f"{base}{suffix}" in table.columns
    for column in (
        "framewise_displacement",
        "dvars",
        "std_dvars",
        "rmsd",
        "cosine00",
        "a_comp_cor_00",
        "t_comp_cor_00",
        "c_comp_cor_00",
        "w_comp_cor_00",
    ):
        assert column in table.columns
    assert table[["framewise_displacement", "trans_x_derivative1"]].iloc[0].isna().all()
    assert table["trans_x"].iloc[1:].notna().all()
    motion = table[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]].to_numpy()
    np.testing.assert_allclose(
        framewise_displacement(motion)[1:], table["framewise_displacement"][1:], rtol=1e-6
    )
    metadata = json.loads((func / "sub-01_task-rest_desc-confounds_timeseries.json").read_text())
    assert metadata["a_comp_cor_00"]["Mask"] == "combined"
    assert metadata["c_comp_cor_00"]["Mask"] == "CSF" and metadata["w_comp_cor_00"]["Mask"] == "WM"
    assert metadata["t_comp_cor_00"]["Method"] == "tCompCor"
    bold = nib.load(_preproc(single_run_dataset)).get_fdata(dtype=np.float32)
    mask = (
        nib.load(
            str(_preproc(single_run_dataset)).replace("desc-preproc_bold", "desc-brain_mask")
        ).get_fdata()
        > 0
    )
    np.testing.assert_allclose(bold[mask].mean(0), table["global_signal"], rtol=1e-4)


@pytest.mark.parametrize(
    ("strategy", "kwargs"),
    [
        ("simple", {}),
        ("scrubbing", {}),
        ("compcor", {}),
        (
            None,
            {
                "strategy": ["motion", "wm_csf", "global_signal"],
                "motion": "full",
                "wm_csf": "full",
                "global_signal": "full",
            },
        ),
        (None, {"strategy": ("high_pass", "motion", "compcor"), "compcor": "anat_combined"}),
    ],
)
def test_nilearn_load_confounds(single_run_dataset: Path, strategy: str | None, kwargs: dict) -> None:
    from nilearn.interfaces.fmriprep import load_confounds, load_confounds_strategy

    image = str(_preproc(single_run_dataset))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if strategy is not None:
            confounds, sample_mask = load_confounds_strategy(image, denoise_strategy=strategy)
        else:
            confounds, sample_mask = load_confounds(image, **kwargs)
    assert confounds.shape[0] == N_VOLUMES and not confounds.isna().any().any()
    if kwargs.get("motion") == "full":
        assert confounds.shape[1] == 36
    if kwargs.get("compcor") == "anat_combined":
        assert any(column.startswith("a_comp_cor") for column in confounds.columns)
        assert any(column.startswith("cosine") for column in confounds.columns)
    if sample_mask is not None:
        assert 0 < len(sample_mask) <= N_VOLUMES


def test_atlases_found_offline_by_real_fetchers(dataset: Path) -> None:
    cache = dataset / "sourcedata" / "atlases"
    script = textwrap.dedent(
        """
        import socket, sys
        def _refuse(*args, **kwargs):
            raise RuntimeError("network access attempted")
        socket.socket.connect = _refuse
        from templateflow import api
        dseg = api.get("MNI152NLin2009cAsym", resolution=2, atlas="Schaefer2018",
                       desc="400Parcels17Networks", suffix="dseg", extension=".nii.gz")
        table = api.get("MNI152NLin2009cAsym", atlas="Schaefer2018", desc="400Parcels7Networks",
                        suffix="dseg", extension=".tsv")
        from nilearn.datasets import fetch_atlas_aal
        aal = fetch_atlas_aal(version="3v2", verbose=0)
        print(dseg); print(table); print(aal.maps); print(len(aal.labels))
        """
    )
    env = {
        **os.environ,
        "TEMPLATEFLOW_HOME": str(cache / "templateflow"),
        "NILEARN_DATA": str(cache / "nilearn_data"),
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dseg, table, aal_maps, n_labels = result.stdout.split()
    assert Path(dseg).is_relative_to(cache) and Path(table).is_relative_to(cache)
    assert Path(aal_maps) == cache / "nilearn_data" / "aal_3v2" / "AAL3" / "AAL3v1.nii"
    assert int(n_labels) == 167  # background + 166 regions

    image = nib.load(dseg)
    labels = np.asarray(image.dataobj)
    assert image.shape == (97, 115, 97) and labels.dtype == np.int16
    np.testing.assert_allclose(image.affine[:3, 3], [-96, -132, -78])
    assert set(np.unique(labels)) == set(range(401))
    x_mm = nib.affines.apply_affine(image.affine, np.argwhere(labels > 0))[:, 0]
    left = labels[labels > 0] <= 200
    assert (x_mm[left] < 0).all() and (x_mm[~left] > 0).all()
    names = pd.read_csv(table, sep="\t")
    assert list(names.columns[:2]) == ["index", "name"] and names["name"].iloc[0] == "7Networks_LH_Vis_1"
    aal_labels = np.asarray(nib.load(aal_maps).dataobj)
    assert set(np.unique(aal_labels)) - {0} == set(aal_names())


def test_truth_names_planted_rois_of_each_atlas(dataset: Path) -> None:
    truth = json.loads((dataset / "sourcedata" / "synthetic_truth.json").read_text())
    assert truth["schema"] == "neurossm-synth-truth/1"
    tables = {
        "schaefer400": set(schaefer_label_table("400Parcels17Networks")["name"]),
        "schaefer400-7n": set(schaefer_label_table("400Parcels7Networks")["name"]),
        "aal3v2": set(aal_names().values()),
    }
    assert set(truth["atlases"]) == set(tables)
    for atlas, names in tables.items():
        targets = truth["atlases"][atlas]["targets"]
        assert set(targets) == {"sex", "group", "task"}
        assert set(targets["task"]) == {"motor"}  # rest is the baseline class
        assert set(targets["sex"]) == {"F", "M"} and set(targets["group"]) == {"PD", "Control"}
        all_rois = []
        for classes in targets.values():
            for spec in classes.values():
                assert spec["signal"] in {"raw", "diff"} and spec["rois"]
                assert set(spec["rois"]) <= names
                all_rois += spec["rois"]
        assert len(all_rois) == len(set(all_rois))  # no ROI carries two effects


def test_planted_effect_is_in_the_bold(single_run_dataset: Path) -> None:
    """After regressing motion and global signal out of parcel means, the planted parcels share a
    signal (in the pathway the truth names) that other parcels do not."""
    root = single_run_dataset
    truth = json.loads((root / "sourcedata" / "synthetic_truth.json").read_text())["atlases"]["schaefer400"]
    names = schaefer_label_table()["name"].tolist()
    tpl = root / "sourcedata" / "atlases" / "templateflow" / "tpl-MNI152NLin2009cAsym"
    atlas = nib.load(
        tpl / "tpl-MNI152NLin2009cAsym_res-02_atlas-Schaefer2018_desc-400Parcels17Networks_dseg.nii.gz"
    )
    labels = np.asarray(atlas.dataobj)[::2, ::2, ::2]  # the 4 mm grid is every other 2 mm voxel
    bold = nib.load(_preproc(root)).get_fdata(dtype=np.float32)
    assert labels.shape == bold.shape[:3]
    func = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    confounds = pd.read_csv(func / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t")
    nuisance = confounds[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "global_signal"]]
    design = np.column_stack([np.ones(N_VOLUMES), nuisance.to_numpy()])  # (T, 8)
    parcels = np.stack([bold[labels == p].mean(0) for p in range(1, 401)], axis=1)  # (T, 400)
    parcels -= design @ np.linalg.lstsq(design, parcels, rcond=None)[0]
    subject = pd.read_csv(root / "participants.tsv", sep="\t").iloc[0]
    for target in ("sex", "group"):
        planted = truth["targets"][target][subject[target]]
        index = [names.index(name) for name in planted["rois"]]
        series = np.diff(parcels, axis=0) if planted["signal"] == "diff" else parcels
        reference = series[:, index].mean(1)
        correlation = np.array([np.corrcoef(series[:, p], reference)[0, 1] for p in range(400)])
        others = np.setdiff1d(np.arange(400), index)
        assert np.median(correlation[index]) > 0.4, (target, planted["signal"])
        assert abs(np.median(correlation[others])) < 0.15


def test_same_seed_same_bytes_other_seed_differs(single_run_dataset: Path, tmp_path: Path) -> None:
    # two processes write the participants: each has its own random stream, so the bytes match
    again = make_dataset(tmp_path / "again", subjects=N_SUBJECTS, volumes=N_VOLUMES, seed=0, nprocs=2)
    assert _tree_hashes(again) == _tree_hashes(single_run_dataset)
    other = make_dataset(tmp_path / "other", subjects=N_SUBJECTS, volumes=N_VOLUMES, seed=1)
    assert (
        _tree_hashes(other)[str(_preproc(other).relative_to(other))]
        != _tree_hashes(single_run_dataset)[str(_preproc(single_run_dataset).relative_to(single_run_dataset))]
    )


def test_refuses_non_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    (user_dir / "precious.txt").write_text("keep me")
    assert main([str(user_dir), "--subjects", "2", "--volumes", "20", "--force"]) == 73
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "not empty" in error
    assert (user_dir / "precious.txt").read_text() == "keep me"
    with pytest.raises(SyntheticDatasetError, match="not empty"):
        make_dataset(user_dir, subjects=2, volumes=20)


def test_force_replaces_own_output_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    argv = [str(out), "--subjects", "2", "--volumes", "20", "--voxel-size", "8"]
    assert main(argv) == 0
    assert "TEMPLATEFLOW_HOME" in capsys.readouterr().out
    assert main(argv) == 73
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force", "--seed", "5"]) == 0
    assert json.loads((out / "sourcedata" / "synthetic_truth.json").read_text())["parameters"]["seed"] == 5


def test_usage_errors_exit_64(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "x"), "--subjects", "one"]) == 64
    assert main([str(tmp_path / "x"), "--subjects", "1"]) == 64
    assert main([str(tmp_path / "x"), "--tasks", "rest,bad-label"]) == 64
    assert len(capsys.readouterr().err.strip().splitlines()) == 3
    assert not (tmp_path / "x").exists()


def test_voxel_size_2_gives_the_res2_grid(tmp_path: Path) -> None:
    out = make_dataset(tmp_path / "ds2", subjects=2, volumes=20, voxel_size=2, sessions=["1"])
    func = out / "derivatives" / "fmriprep" / "sub-01" / "ses-1" / "func"
    image = nib.load(func / f"sub-01_ses-1_task-rest_{SPACE}_res-2_desc-preproc_bold.nii.gz")
    assert image.shape == (97, 115, 97, 20)
    np.testing.assert_allclose(
        image.affine, np.array([[2, 0, 0, -96], [0, 2, 0, -132], [0, 0, 2, -78], [0, 0, 0, 1]])
    )
    assert (func / f"sub-01_ses-1_task-rest_{SPACE}_res-2_desc-brain_mask.nii.gz").exists()
    assert (out / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz").exists()


def test_atlas_cache_under_entity_like_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([str(tmp_path / "ds"), "--atlas-cache", str(tmp_path / "atlas-cache")])
    assert code == 64 and "TemplateFlow" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
