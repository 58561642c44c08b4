"""Any parcellation (issue 17): atlases as label images, BIDS atlas datasets, every Schaefer
resolution, and the group level's choice among the atlases of OUTPUT_DIR.

The real CBIG Schaefer-400 image on the FSL MNI152 2 mm grid (tests/data/atlases, MIT licence)
is parcellated as nilearn's NiftiLabelsMasker does it; a 100-parcel atlas dataset from
``neurossm-synth --custom-atlas`` goes through both levels of the real CLI.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurossm_app.atlases import ATLASES, get_atlas
from neurossm_app.custom_atlas import load_file_atlas, resolve_atlas
from neurossm_app.errors import DataError, InputMissingError, UsageError
from neurossm_app.group.atlas_choice import atlas_of_series, choose_atlas, present_atlases
from tests.test_fetch import fake_templateflow  # noqa: F401 - a fixture

DATA = Path(__file__).parent / "data" / "atlases"
CBIG = DATA / "Schaefer2018_400Parcels_17Networks_order_FSLMNI152_2mm.nii.gz"
NLIN6 = "MNI152NLin6Asym"
NLIN2009 = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def synth_atlases(tmp_path_factory) -> Path:
    """The 100-parcel atlas dataset of ``neurossm-synth --custom-atlas``."""
    from neurossm_app.synthetic.atlas import write_custom_atlas

    return write_custom_atlas(tmp_path_factory.mktemp("atlases") / "synth100")["root"]


# --------------------------------------------------------------------------------------------
# The real CBIG image on HCP's volumetric grid, against nilearn
# --------------------------------------------------------------------------------------------


def test_cbig_schaefer400_on_the_fsl_grid_matches_nilearn(tmp_path):
    from nilearn.maskers import NiftiLabelsMasker

    from neurossm_app.participant.extract import resample_atlas
    from neurossm_app.participant.parcellate import parcel_means

    atlas = load_file_atlas(CBIG, NLIN6)
    assert atlas.n_rois == 400 and atlas.names[0] == "17Networks_LH_VisCent_ExStr_1"
    assert atlas.spec.bids_label == "Schaefer2018400Parcels17NetworksorderFSLMNI1522mm"
    img = nib.load(CBIG)
    labels = np.asarray(img.dataobj)
    rng = np.random.default_rng(0)
    n_vols = 6
    # each parcel its own mean level, plus voxel noise: a wrong voxel-to-parcel mapping shows
    level = rng.normal(100, 20, 401)[labels.astype(int)]
    bold = (level[..., None] + rng.normal(0, 5, (*labels.shape, n_vols))).astype(np.float32)
    bold_file = tmp_path / "bold.nii"
    nib.save(nib.Nifti1Image(bold, img.affine), bold_file)
    mask = np.zeros(labels.shape, np.uint8)
    mask[:, 20:, :] = 1  # the most posterior parcels lose part of their voxels
    mask_file = tmp_path / "mask.nii"
    nib.save(nib.Nifti1Image(mask, img.affine), mask_file)

    on_bold = resample_atlas(atlas.image, bold_file, tmp_path / "atlas_on_bold.nii.gz")
    ours, coverage = parcel_means(
        bold_file, np.asarray(nib.load(on_bold).dataobj), mask > 0, np.array(atlas.indices)
    )
    masker = NiftiLabelsMasker(labels_img=str(CBIG), mask_img=str(mask_file), strategy="mean")
    gc.freeze()  # nilearn runs gc.collect() per image it reads: seconds in a full test process
    try:
        with pytest.warns(UserWarning, match="labels were removed"):  # the two parcels out of the mask
            theirs = masker.fit_transform(str(bold_file))
    finally:
        gc.unfreeze()
    kept = [int(v) for v in masker.region_ids_.values() if v != "background" and int(v) != 0]
    columns = [atlas.indices.index(v) for v in kept]
    partly = (coverage > 0) & (coverage < 1)
    assert len(kept) == 398 and partly.sum() > 5 and np.isnan(ours[:, coverage == 0]).all()
    np.testing.assert_allclose(ours[:, columns], theirs, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Label images and their tables: one clear error each
# --------------------------------------------------------------------------------------------


def _write(folder: Path, name: str, data: np.ndarray, table: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    if table is not None:
        stem = name.removesuffix(".nii.gz")
        pd.DataFrame(table).to_csv(folder / f"{stem}.tsv", sep="\t", index=False)
    return path


LABELS = np.array([[[0, 1], [2, 3]], [[3, 2], [1, 0]]], dtype=np.int16)
TABLE = {"index": [0, 1, 2, 3], "name": ["bg", "a", "b", "c"]}


def test_label_image_with_its_table(tmp_path):
    path = _write(tmp_path, "my parcels.nii.gz", LABELS, TABLE)
    atlas = resolve_atlas(str(path), space=NLIN2009)
    assert atlas.indices == (1, 2, 3) and atlas.names == ("a", "b", "c")
    assert atlas.spec.bids_label == "myparcels" and atlas.uri == str(path)
    assert atlas.provenance()["AtlasSHA256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert resolve_atlas(str(path), "Mine", space=NLIN2009).spec.bids_label == "Mine"
    bids_named = _write(tmp_path, f"tpl-{NLIN2009}_res-2_atlas-Mine_desc-fine_dseg.nii.gz", LABELS)
    pd.DataFrame(TABLE).to_csv(tmp_path / f"tpl-{NLIN2009}_atlas-Mine_dseg.tsv", sep="\t", index=False)
    assert resolve_atlas(str(bids_named), space=NLIN2009).spec.bids_label == "Minefine"


@pytest.mark.parametrize(
    ("name", "data", "table", "error", "message"),
    [
        ("a.nii.gz", LABELS, None, InputMissingError, "label table of atlas"),
        ("a.nii.gz", LABELS, {"index": [1, 2], "name": ["a", "b"]}, DataError, "1 label value(s)"),
        ("a.nii.gz", LABELS * 0.5, TABLE, DataError, "non-integer values"),
        ("a.nii.gz", LABELS[..., None].repeat(2, -1), TABLE, DataError, "is 4D"),
        ("a.nii.gz", LABELS, {"index": [1, 2, 3], "roi": ["a", "b", "c"]}, DataError, "index and name"),
        (f"tpl-{NLIN6}_atlas-X_dseg.nii.gz", LABELS, TABLE, DataError, f"in space {NLIN6}"),
    ],
)
def test_bad_label_images_are_one_line(tmp_path, name, data, table, error, message):
    path = _write(tmp_path, name, data, table)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        resolve_atlas(str(path), space=NLIN2009)
    assert "\n" not in str(caught.value) and error.exit_code in (65, 66)


def test_atlas_outside_the_runs_field_of_view_is_refused(tmp_path):
    bold = tmp_path / "bold.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), bold)
    path = _write(tmp_path, "a.nii.gz", LABELS, TABLE)
    assert resolve_atlas(str(path), space=NLIN2009, reference=bold).n_rois == 3
    shifted = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted[:3, 3] = 500.0  # scanner coordinates, say
    nib.save(nib.Nifti1Image(LABELS, shifted), path)
    with pytest.raises(DataError, match="100% outside the field of view of bold.nii"):
        resolve_atlas(str(path), space=NLIN2009, reference=bold)


def test_dlabel_atlas_for_fslr_runs(atlas_cache, tmp_path):
    from neurossm_app.cifti import dlabel_table

    synthetic = atlas_cache / "templateflow" / "tpl-fsLR"
    dlabel = tmp_path / "tpl-fsLR_atlas-Mine_den-32k_dseg.dlabel.nii"
    shutil.copy(next(synthetic.glob("*_desc-400Parcels17Networks_dseg.dlabel.nii")), dlabel)
    indices, names = dlabel_table(dlabel)
    atlas = resolve_atlas(str(dlabel), space="fsLR")  # no TSV: the dlabel's own table
    assert (atlas.indices, atlas.names, atlas.spec.bids_label) == (indices, names, "Mine")
    table = tmp_path / "tpl-fsLR_atlas-Mine_dseg.tsv"
    pd.DataFrame({"index": indices, "name": [f"p{i}" for i in indices]}).to_csv(table, sep="\t", index=False)
    assert resolve_atlas(str(dlabel), space="fsLR").names[:2] == ("p1", "p2")
    pd.DataFrame({"index": indices[:-1], "name": names[:-1]}).to_csv(table, sep="\t", index=False)
    with pytest.raises(DataError, match=f"1 label value.s. of atlas .* \\({indices[-1]}\\)"):
        resolve_atlas(str(dlabel), space="fsLR")
    dataset = tmp_path / "atlases" / "tpl-fsLR" / "anat"  # bids-examples' atlas-4S keeps its dlabels so
    dataset.mkdir(parents=True)
    shutil.copy(dlabel, dataset / "tpl-fsLR_atlas-Mine_scale-400_den-91k_dseg.dlabel.nii")
    found = resolve_atlas("Mine", datasets={"atlases": tmp_path / "atlases"}, space="fsLR")
    assert found.image.parent == dataset and found.names == names and found.spec.bids_label == "Mine"
    with pytest.raises(DataError, match="cannot parcellate runs in MNI152NLin6Asym: they take a NIfTI"):
        resolve_atlas(str(dlabel), space=NLIN6)
    with pytest.raises(DataError, match="cannot parcellate runs in fsLR: they take a .dlabel.nii"):
        resolve_atlas(str(_write(tmp_path, "v.nii.gz", LABELS, TABLE)), space="fsLR")


def test_unknown_atlas_names_every_form():
    with pytest.raises(UsageError, match="-d atlases=PATH") as caught:
        resolve_atlas("Glasser", space=NLIN2009)
    assert "schaefer<N>" in str(caught.value) and "label image" in str(caught.value)


# --------------------------------------------------------------------------------------------
# BIDS atlas datasets (-d atlases=PATH)
# --------------------------------------------------------------------------------------------


def test_atlas_dataset_in_both_templates(synth_atlases):
    for space in (NLIN2009, NLIN6):
        atlas = resolve_atlas(
            "Synth100", datasets={"fmriprep": Path("/x"), "atlases": synth_atlases}, space=space
        )
        assert atlas.n_rois == 100 and atlas.spec.bids_label == "Synth100" and atlas.space == space
        assert atlas.uri == f"bids:atlases:tpl-{space}/anat/tpl-{space}_atlas-Synth100_res-2_dseg.nii.gz"
        assert atlas.link == "atlases" and atlas.root == synth_atlases
        assert atlas.provenance()["AtlasSource"] == "BIDS atlas dataset -d atlases"
    data = np.asarray(nib.load(atlas.image).dataobj)
    assert set(np.unique(data)) == set(range(101))


def test_atlas_dataset_variants_spaces_and_absence(synth_atlases, tmp_path):
    root = tmp_path / "atlases"
    shutil.copytree(synth_atlases, root)
    anat = root / f"tpl-{NLIN6}" / "anat"
    # XCP-D's layout beside it, with a table above the image; and a second variant of Synth100
    _write(root / "atlas-Xcp", f"atlas-Xcp_space-{NLIN6}_res-2_dseg.nii.gz", LABELS)
    pd.DataFrame(TABLE).to_csv(root / "atlas-Xcp" / "atlas-Xcp_dseg.tsv", sep="\t", index=False)
    assert resolve_atlas("Xcp", datasets={"atlases": root}, space=NLIN6).names == ("a", "b", "c")
    shutil.copy(
        anat / f"tpl-{NLIN6}_atlas-Synth100_res-2_dseg.nii.gz",
        anat / f"tpl-{NLIN6}_atlas-Synth100_desc-lh_res-1_dseg.nii.gz",
    )
    with pytest.raises(UsageError, match="several atlases; pick one: Synth100, Synth100_desc-lh"):
        resolve_atlas("Synth100", datasets={"atlases": root}, space=NLIN6)
    picked = resolve_atlas("Synth100_desc-lh", datasets={"atlases": root}, space=NLIN6)
    assert picked.spec.bids_label == "Synth100lh" and "res-1" in picked.image.name
    with pytest.raises(DataError, match=f"in space {NLIN6} only"):
        resolve_atlas("Xcp", datasets={"atlases": root}, space=NLIN2009)
    with pytest.raises(InputMissingError, match="it has Synth100, Xcp"):
        resolve_atlas("Gordon", datasets={"atlases": root}, space=NLIN6)


def test_synth_writes_the_custom_atlas_example(tmp_path, monkeypatch, capsys):
    from neurossm_app.synthetic import cli

    monkeypatch.setattr(cli, "make_dataset", lambda out_dir, **_: out_dir.absolute())  # the atlas only
    assert cli.main([str(tmp_path / "ds"), "--custom-atlas", str(tmp_path / "atlases")]) == 0
    assert f"-d atlases={tmp_path / 'atlases'} --atlas Synth100" in capsys.readouterr().out
    assert resolve_atlas("Synth100", datasets={"atlases": tmp_path / "atlases"}, space=NLIN6).n_rois == 100
    (tmp_path / "file").write_text("")
    assert cli.main([str(tmp_path / "ds"), "--custom-atlas", str(tmp_path / "file" / "x")]) == 73
    assert capsys.readouterr().err.startswith("neurossm-synth: error: cannot write --custom-atlas")


# --------------------------------------------------------------------------------------------
# Schaefer-2018 at every resolution
# --------------------------------------------------------------------------------------------


def test_schaefer_registry_covers_templateflow(monkeypatch, tmp_path):
    keys = [k for k in ATLASES if k.startswith("schaefer")]
    assert len(keys) == 20 and ATLASES["schaefer1000-7n"].desc == "1000Parcels7Networks"
    assert ATLASES["schaefer100"].bids_label == "Schaefer100n17"
    home = tmp_path / "tf"
    folder = home / f"tpl-{NLIN6}"
    _write(folder, f"tpl-{NLIN6}_res-02_atlas-Schaefer2018_desc-100Parcels7Networks_dseg.nii.gz", LABELS)
    pd.DataFrame(TABLE).to_csv(
        folder / f"tpl-{NLIN6}_atlas-Schaefer2018_desc-100Parcels7Networks_dseg.tsv", sep="\t", index=False
    )
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    atlas = get_atlas("schaefer100-7n", space=NLIN6)
    assert atlas.names == ("a", "b", "c") and atlas.uri.startswith(f"bids:templateflow:tpl-{NLIN6}/")
    assert atlas.provenance()["AtlasSource"] == f"TemplateFlow tpl-{NLIN6}"
    with pytest.raises(InputMissingError, match="neurossm-app-fetch --atlas schaefer100 "):
        get_atlas("schaefer100", space=NLIN6)


def test_fetch_any_schaefer_resolution(fake_templateflow, tmp_path):  # noqa: F811
    from neurossm_app import fetch

    calls, _ = fake_templateflow
    assert fetch._atlas_keys(["all", "schaefer1000"]) == [
        "schaefer400",
        "schaefer400-7n",
        "aal3v2",
        "schaefer1000",
    ]
    assert fetch.main(["--atlas", "schaefer200-7n", "--templateflow-home", str(tmp_path / "tf")]) == 0
    assert {c["desc"] for c in calls} == {"200Parcels7Networks"}
    assert {(c["template"], c.get("resolution")) for c in calls} >= {(NLIN6, 1), (NLIN6, 2), (NLIN2009, 2)}


# --------------------------------------------------------------------------------------------
# The group level's choice among the atlases of OUTPUT_DIR
# --------------------------------------------------------------------------------------------


def test_group_atlas_choice(tmp_path):
    out = tmp_path / "out"
    for sub, label in (("01", "Synth100"), ("02", "Schaefer400n17")):
        func = out / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        (func / f"sub-{sub}_task-rest_space-{NLIN6}_atlas-{label}_stat-mean_timeseries.tsv").write_text("a\n")
        (func / f"sub-{sub}_task-rest_space-{NLIN6}_atlas-{label}_stat-coverage_bold.tsv").write_text("a\n")
    present = present_atlases(out)
    assert present == ["Schaefer400n17", "Synth100"]
    assert choose_atlas(None, "schaefer400", present, out) == "schaefer400"
    assert choose_atlas("Schaefer400n17", "aal3v2", present, out) == "schaefer400"
    assert choose_atlas("Synth100", "schaefer400", present, out) == "Synth100"
    assert choose_atlas("/data/tpl-X_atlas-Synth100_res-2_dseg.nii.gz", "aal3v2", present, out) == "Synth100"
    assert choose_atlas(None, "aal3v2", ["Synth100"], out) == "Synth100"  # the only one present
    with pytest.raises(
        UsageError, match=r"several atlases \(Schaefer400n17, Synth100\) and none of the preset's \(AAL3v2\)"
    ):
        choose_atlas(None, "aal3v2", present, out)
    with pytest.raises(InputMissingError, match=r"\(found atlas Schaefer400n17, Synth100\)"):
        choose_atlas("schaefer100", "schaefer400", present, out)
    assert choose_atlas("Gordon", "schaefer400", [], out) == "Gordon"  # the selection reports it


def test_maps_atlas_of_a_custom_label_comes_from_the_sidecars(tmp_path):
    out = tmp_path / "out"
    func = out / "sub-01" / "func"
    func.mkdir(parents=True)
    sidecar = func / f"sub-01_task-rest_space-{NLIN2009}_atlas-Mine_stat-mean_timeseries.json"
    with pytest.raises(InputMissingError, match="no readable sidecar of atlas Mine"):
        atlas_of_series(out, "Mine")
    sidecar.write_text(json.dumps({"AtlasFile": "bids:atlases:gone_dseg.nii.gz", "Space": NLIN2009}))
    (out / "dataset_description.json").write_text(
        json.dumps({"DatasetLinks": {"atlases": tmp_path.as_uri()}})
    )
    with pytest.raises(InputMissingError, match="bids:atlases:gone_dseg.nii.gz .* is not there"):
        atlas_of_series(out, "Mine")
    _write(tmp_path, "gone_dseg.nii.gz", LABELS, TABLE)
    assert atlas_of_series(out, "Mine").names == ("a", "b", "c")


# --------------------------------------------------------------------------------------------
# Must show: a 100-parcel custom atlas through both levels of the real CLI
# --------------------------------------------------------------------------------------------


def test_custom_atlas_through_both_levels(rest_dataset, synth_atlases, tmp_path, capsys):
    from neurossm_app.cli import main
    from tests.test_group_cli import SMALL

    out = tmp_path / "out"
    participant = [
        str(rest_dataset), str(out), "participant", "--skip-bids-validation", "-w", str(tmp_path / "work"),
        "--nprocs", "2", "--low-pass", "none", "-d", f"atlases={synth_atlases}", "--atlas", "Synth100",
    ]  # fmt: skip
    assert main(participant) == 0
    series = sorted(out.glob("sub-*/func/*_atlas-Synth100_stat-mean_timeseries.tsv"))
    assert len(series) == 4 and pd.read_csv(series[0], sep="\t").shape[1] == 100
    sidecar = json.loads(series[0].with_suffix(".json").read_text())
    image = synth_atlases / f"tpl-{NLIN2009}" / "anat" / f"tpl-{NLIN2009}_atlas-Synth100_res-2_dseg.nii.gz"
    assert sidecar["AtlasFile"] == f"bids:atlases:{image.relative_to(synth_atlases)}"
    assert sidecar["AtlasSHA256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    links = json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]
    assert links["atlases"] == synth_atlases.resolve().as_uri()

    # one short hold-out unit of the smallest model: the ROI count, not the learning, is under test
    group = [str(rest_dataset), str(out), "group", *SMALL, "--dynamic-length", "32", "--epochs", "1",
             "--scales", "1", "--signals", "raw", "--no-bidirectional", "--skip-cross-validation",
             "--test-size", "0.5", "--baselines", "none"]  # fmt: skip
    assert main([*group, "--atlas", "schaefer400"]) == 66  # absent: one line naming what is there
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].endswith("run the participant level with this atlas.") and "(found atlas Synth100)" in err[-1]
    )
    assert main(group) == 0  # the preset's Schaefer-400 is absent: the only atlas present is used
    run = out / "group" / "hcp-rest"
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["atlas"] == "Synth100" and config["atlas_label"] == "Synth100"
    assert config["dataset"]["n_rois"] == 100
    checkpoint = json.loads(next((run / "checkpoints").glob("model-neurossm_*.json")).read_text())
    assert checkpoint["config"]["n_rois"] == 100 and checkpoint["atlas"] == "Synth100"
    # --analysis draws its maps on the image the sidecars name, found again through DatasetLinks
    maps_atlas = atlas_of_series(out, "Synth100")
    assert maps_atlas.image == image and maps_atlas.n_rois == 100
