"""Parcel means and cleaning against nilearn's NiftiLabelsMasker on small random images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurossm_app.config import CleaningSettings
from neurossm_app.errors import DataError
from neurossm_app.participant.clean import clean_signals
from neurossm_app.participant.parcellate import parcel_means, prepare_layout

SHAPE = (7, 9, 11)  # unequal sizes so axis mix-ups fail
N_VOLS = 23


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(3)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    bold = rng.normal(100, 5, (*SHAPE, N_VOLS)).astype(np.float32)
    labels = rng.integers(0, 6, SHAPE).astype(np.int16)  # 0 = background, ROIs 1..5
    labels[labels == 4] = 0  # ROI 4 absent from the image
    mask = np.ones(SHAPE, bool)
    mask[:2] = False
    paths = {}
    for name, data in (("bold", bold), ("labels", labels), ("mask", mask.astype(np.uint8))):
        img = nib.Nifti1Image(data, affine)
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(img, paths[name])
    return paths, labels, mask


def test_parcel_means_equal_masker(images):
    from nilearn.maskers import NiftiLabelsMasker

    paths, labels, mask = images
    indices = np.array([1, 2, 3, 4, 5])
    ours, coverage = parcel_means(paths["bold"], labels, mask, indices, block_size=5)
    masker = NiftiLabelsMasker(labels_img=str(paths["labels"]), mask_img=str(paths["mask"]), strategy="mean")
    theirs = masker.fit_transform(str(paths["bold"]))
    present = [0, 1, 2, 4]
    assert ours.shape == (N_VOLS, 5)
    np.testing.assert_allclose(ours[:, present], theirs, rtol=1e-6)
    assert np.isnan(ours[:, 3]).all()
    assert coverage[3] == 0
    assert 0.6 < coverage[0] < 0.9  # two of seven x-slices are outside the mask


def test_layout_counts_only_masked_voxels():
    labels = np.array([[[1, 1], [2, 0]], [[2, 2], [1, 0]]])
    mask = np.array([[[1, 0], [1, 1]], [[1, 1], [1, 1]]], bool)
    layout = prepare_layout(labels, mask, np.array([1, 2]))
    assert layout.counts.tolist() == [2, 3]
    np.testing.assert_allclose(layout.coverage, [2 / 3, 1.0])


def test_nan_in_bold_is_a_clear_error(images, tmp_path):
    paths, labels, mask = images
    img = nib.load(paths["bold"])
    data = img.get_fdata(dtype=np.float32)
    x, y, z = np.argwhere((labels == 1) & mask)[0]
    data[x, y, z, 7] = np.nan
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), bad)
    with pytest.raises(DataError, match="NaN or Inf values"):
        parcel_means(bad, labels, mask, np.array([1, 2, 3]))


def test_clean_keeps_length_and_censors_rows():
    rng = np.random.default_rng(0)
    signals = rng.normal(size=(60, 4))
    signals[:, 2] = np.nan  # an ROI without coverage
    confounds = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    kept = np.setdiff1d(np.arange(60), [10, 11, 40])
    settings = CleaningSettings(high_pass=0.01, low_pass=0.1)
    out = clean_signals(signals, confounds, kept, 2.0, settings)
    assert out.shape == (60, 4)
    assert np.isnan(out[[10, 11, 40]]).all()
    assert np.isnan(out[:, 2]).all()
    finite = out[kept][:, [0, 1, 3]]
    assert np.isfinite(finite).all()
    np.testing.assert_allclose(finite.mean(axis=0), 0, atol=1e-8)


def test_clean_rejects_mismatched_confounds():
    with pytest.raises(DataError, match="rows but the BOLD run has"):
        clean_signals(np.zeros((10, 2)), pd.DataFrame(np.zeros((9, 1))), None, 2.0, CleaningSettings())


def test_filter_degrees_of_freedom():
    from neurossm_app.participant.clean import filter_degrees_of_freedom

    # HCP: TR 0.72 s, 0.01-0.1 Hz keeps 2 * 0.09 * T * TR values
    assert filter_degrees_of_freedom(200, 0.72, CleaningSettings()) == 25
    assert filter_degrees_of_freedom(1200, 0.72, CleaningSettings()) == 155
    # no low-pass: everything above the high-pass edge up to Nyquist
    assert filter_degrees_of_freedom(200, 0.72, CleaningSettings(low_pass=None)) == 197


def test_mask_on_another_affine_names_the_difference(images, tmp_path):
    """Same shape, shifted affine: the message gives the shapes and the affines' largest difference."""
    from neurossm_app.bids import BoldRun
    from neurossm_app.participant.preflight import check_run

    paths, _, mask = images
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[0, 3] = 1.5
    shifted = tmp_path / "shifted_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), shifted)
    confounds = tmp_path / "confounds.tsv"
    confounds.write_text("a\n" + "0\n" * N_VOLS)
    run = BoldRun(paths["bold"], shifted, confounds, 2.0, {"subject": "01", "task": "rest"})
    with pytest.raises(
        DataError,
        match=r"\(grid \(7, 9, 11\)\).*\(grid \(7, 9, 11\)\); their affines differ by up to 1\.5 mm",
    ):
        check_run(run)


def test_input_fingerprint_reads_the_gzip_trailer(tmp_path):
    import gzip
    import os

    from neurossm_app.participant.extract import input_fingerprint

    path = tmp_path / "bold.nii.gz"
    path.write_bytes(gzip.compress(b"abc" * 1000))
    first = input_fingerprint(path)
    os.utime(path, ns=(5, 5))
    assert input_fingerprint(path) == first
    path.write_bytes(gzip.compress(b"abd" * 1000))
    assert input_fingerprint(path) != first
    plain = tmp_path / "bold.nii"
    plain.write_bytes(b"abc")
    before = input_fingerprint(plain)
    os.utime(plain, ns=(5, 5))
    assert input_fingerprint(plain) != before  # uncompressed: size and modification time


@pytest.mark.parametrize("n_threads", [1, 2], ids=["isal", "rapidgzip"])
def test_truncated_gzip_is_a_clear_error(images, tmp_path, n_threads):
    """Pre-flight catches truncation first; parcel_means still fails with a DataError, not EOFError."""
    import gzip

    paths, labels, mask = images
    raw = gzip.decompress(paths["bold"].read_bytes())
    whole = gzip.compress(raw, compresslevel=1)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="ends early"):
        parcel_means(cut, labels, mask, np.array([1, 2, 3]), block_size=4, n_threads=n_threads)


REAL_ATLAS = Path(__file__).parent / "data" / "atlases"  # TemplateFlow's Schaefer-400 (README there)
SCHAEFER7 = "tpl-MNI152NLin2009cAsym_res-02_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.nii.gz"


def _real_atlas_dataset(root: Path, n_vols: int) -> Path:
    """A raw BIDS folder with an fMRIPrep run on the real atlas's 97 x 115 x 97 grid at 2 mm.

    Each parcel's voxels share a time course plus noise (int16, as fMRIPrep may store BOLD); the
    brain mask leaves out the lowest 30 slices, so some parcels fall under --min-coverage.
    """
    atlas = nib.load(REAL_ATLAS / SCHAEFER7)
    labels = np.asarray(atlas.dataobj).astype(np.int32)
    rng = np.random.default_rng(7)
    courses = rng.normal(0, 30, (labels.max() + 1, n_vols))
    bold = np.zeros((*labels.shape, n_vols), np.int16)
    inside = labels > 0
    bold[inside] = np.round(1000 + courses[labels[inside]] + rng.normal(0, 10, (inside.sum(), n_vols)))
    mask = inside.copy()
    mask[:, :, :30] = False
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "real atlas", "BIDSVersion": "1.10.0"}')
    fmriprep = root / "derivatives" / "fmriprep"
    func = fmriprep / "sub-01" / "func"
    func.mkdir(parents=True)
    (fmriprep / "dataset_description.json").write_text(
        '{"Name": "fMRIPrep", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}'
    )
    stem = func / "sub-01_task-rest_space-MNI152NLin2009cAsym_res-2"
    image = nib.Nifti1Image(bold, atlas.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.0
    nib.save(image, f"{stem}_desc-preproc_bold.nii.gz")
    Path(f"{stem}_desc-preproc_bold.json").write_text('{"RepetitionTime": 2.0, "SkullStripped": true}')
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), atlas.affine), f"{stem}_desc-brain_mask.nii.gz")
    # one non-steady-state volume, flagged as fMRIPrep does (one column per volume)
    confounds = pd.DataFrame(
        {
            "framewise_displacement": [np.nan, *rng.uniform(0, 0.3, n_vols - 1)],
            "non_steady_state_outlier00": np.eye(n_vols)[0],
        }
    )
    confounds.to_csv(
        func / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a"
    )
    return root


def test_real_schaefer_atlas_equals_masker(tmp_path, monkeypatch):
    """The participant level with TemplateFlow's real Schaefer-400 (7 networks) image, through the
    CLI, equals NiftiLabelsMasker on the same image and run."""
    from neurossm_app.cli import main
    from neurossm_app.files import read_tsv
    from tests.nilearn_rebuild import compare_with_masker, masker_series, resolved_sources

    home = tmp_path / "templateflow" / "tpl-MNI152NLin2009cAsym"
    home.mkdir(parents=True)
    for name in (SCHAEFER7, "tpl-MNI152NLin2009cAsym_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.tsv"):
        shutil.copyfile(REAL_ATLAS / name, home / name)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home.parent))
    ds = _real_atlas_dataset(tmp_path / "ds", n_vols=20)
    out = tmp_path / "out"
    argv = [str(ds), str(out), "participant", "--skip-bids-validation", "-w", str(tmp_path / "w")]
    options = ["--atlas", "schaefer400-7n", "--confounds", "none", "--low-pass", "none", "--nprocs", "1"]
    assert main([*argv, *options]) == 0  # 19 volumes: too few for a band-pass (33), not a high-pass (18)
    (tsv,) = sorted(out.glob("sub-01/func/*_stat-mean_timeseries.tsv"))
    ours = read_tsv(tsv)
    meta = json.loads(tsv.with_suffix(".json").read_text())
    assert ours.shape == (20, 400) and ours.columns[0] == "7Networks_LH_Vis_1"
    assert meta["DummyVolumes"] == [0] and 0 < len(meta["ExcludedROIs"]) < 200
    bold, mask, confounds, atlas = resolved_sources(meta, out)
    assert atlas.name == SCHAEFER7
    masker, theirs, kept = masker_series(meta, bold, mask, confounds, atlas, 20)
    assert compare_with_masker(ours, meta, masker, theirs, kept) == 400 - len(meta["ExcludedROIs"])
