"""Neurosynth reference maps: NiMARE's real conversion, the synthetic database, class terms, scores."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import nimare
import numpy as np
import pytest

from neurossm_app.bids import group_map_name, sanitize_label
from neurossm_app.errors import DataError, InputMissingError
from neurossm_app.fetch import NEUROSYNTH_FILES
from neurossm_app.group import maps
from neurossm_app.group.neurosynth import (
    NeurosynthDatabase,
    cached_term_map,
    ensure_neurosynth,
    resolve_class_terms,
    term_slug,
)

NIMARE_DATA = Path(nimare.__file__).parent / "tests" / "data"


@pytest.fixture(scope="module")
def nimare_copy(tmp_path_factory) -> Path:
    """The Neurosynth-format test files shipped inside ``nimare``, in our cache layout."""
    directory = tmp_path_factory.mktemp("nimare-neurosynth")
    (directory / "neurosynth").mkdir()
    for name in NEUROSYNTH_FILES:
        shutil.copy(NIMARE_DATA / name, directory / "neurosynth" / name)
    return directory


def test_term_selection_matches_nimare_get_studies_by_label(nimare_copy):
    from nimare.io import convert_neurosynth_to_dataset

    files = [nimare_copy / "neurosynth" / n for n in NEUROSYNTH_FILES]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = convert_neurosynth_to_dataset(
            str(files[0]),
            str(files[1]),
            annotations_files={"features": str(files[2]), "vocabulary": str(files[3])},
        )
    database = NeurosynthDatabase.open(nimare_copy)
    assert len(database.study_ids) == len(dataset.ids) == 20
    for term in ("activations", "acquisition", "12"):
        ours, rest = database.studies_with_term(term)
        theirs = dataset.get_studies_by_label(f"terms_abstract_tfidf__{term}", label_threshold=0.001)
        assert sorted(f"{s}-1" for s in ours) == sorted(theirs) and len(ours) + len(rest) == 20
    # coordinates through nimare.io.convert_neurosynth_to_dataset, in MNI
    assert len(database.dataset.coordinates) == 1420
    assert set(database.dataset.coordinates["space"]) == {"mni152_2mm"}


def test_real_format_meta_analysis_and_cache(nimare_copy, tmp_path, atlas_cache):
    database = NeurosynthDatabase.open(nimare_copy)
    image, info = cached_term_map(database, "activations", tmp_path)
    assert (
        info["n_studies_term"] == 8 and info["n_studies_rest"] == 12 and info["map"] == "z_desc-association"
    )
    assert (tmp_path / "term-activations_z.nii.gz").is_file() and np.isfinite(image.get_fdata()).all()
    again, _ = cached_term_map(database, "activations", tmp_path)  # read back, not recomputed
    np.testing.assert_array_equal(again.get_fdata(), image.get_fdata())
    with pytest.raises(DataError, match="'no such term' are not in the vocabulary") as err:
        database.check_terms(["activations", "no such term"])
    assert err.value.exit_code == 65


def test_synthetic_database_is_what_nimare_fetches_and_points_at_planted_rois(tmp_path, atlas_cache):
    from neurossm_app.atlases import get_atlas
    from neurossm_app.synthetic.atlas import schaefer_names
    from neurossm_app.synthetic.effects import planted_effects, truth_record
    from neurossm_app.synthetic.neurosynth import write_neurosynth_database

    record = truth_record(planted_effects(["rest", "motor", "wm"]), {})
    write_neurosynth_database(tmp_path, record, seed=2)
    assert sorted(p.name for p in (tmp_path / "neurosynth").iterdir()) == sorted(NEUROSYNTH_FILES)
    database = NeurosynthDatabase.open(tmp_path)
    assert {"motor", "working memory", "parkinson"} <= set(database.vocabulary)
    assert "rest" not in database.vocabulary  # classes without an effect or a term get no studies
    image, info = cached_term_map(database, "motor", tmp_path / "maps")
    assert info["n_studies_term"] == 40
    atlas = get_atlas("schaefer400")
    names = schaefer_names("schaefer400")
    indices = maps.roi_indices(atlas.names, atlas.indices, tuple(names))
    reference = maps.parcellate(image, nib.load(atlas.image), indices)
    top = maps.top_mask(reference)
    planted = [names.index(r) for r in record["atlases"]["schaefer400"]["targets"]["task"]["motor"]["rois"]]
    assert top[planted].mean() >= 0.8


def test_missing_data_is_exit_66_naming_the_directory_and_command_without_downloading(tmp_path, monkeypatch):
    import nimare.extract

    def fetch(**kwargs):
        raise AssertionError("the group level must not download")

    monkeypatch.setattr(nimare.extract, "fetch_neurosynth", fetch)
    directory = tmp_path / "cache" / "neurosynth"
    with pytest.raises(InputMissingError) as err:
        ensure_neurosynth(directory)
    message = str(err.value)
    assert err.value.exit_code == 66 and "\n" not in message
    assert f"not found in {directory} (missing neurosynth/{NEUROSYNTH_FILES[0]} and 3 more)" in message
    assert f"neurossm-app-fetch --atlas none --neurosynth {directory}" in message
    assert "neurosynth/neurosynth" not in message and ".);" not in message
    assert not directory.exists()  # nothing created
    (directory / "neurosynth").mkdir(parents=True)
    for name in NEUROSYNTH_FILES[:3]:
        (directory / "neurosynth" / name).write_bytes(b"x")
    (directory / "neurosynth" / NEUROSYNTH_FILES[3]).write_bytes(b"")  # an empty placeholder is missing
    with pytest.raises(InputMissingError, match=f"missing neurosynth/{NEUROSYNTH_FILES[3]}\\)"):
        ensure_neurosynth(directory)


def test_class_terms_from_presets_and_override(tmp_path):
    terms, _ = resolve_class_terms("hcp-task", "task", ("language", "motor", "rest", "wm"))
    assert terms == {"language": "language", "motor": "motor", "rest": None, "wm": "working memory"}
    terms, _ = resolve_class_terms("ppmi", "participants:group", ("Control", "PD"))
    assert terms == {"Control": None, "PD": "parkinson"}
    assert resolve_class_terms("hcp-rest", "participants:sex", ("F", "M"))[0] == {"F": None, "M": None}
    # a preset's table only applies to the target it was written for
    assert resolve_class_terms("hcp-task", "participants:sex", ("F", "M"))[0] == {"F": None, "M": None}
    override = tmp_path / "terms.json"
    override.write_text(json.dumps({"F": "face", "M": None}))
    terms, source = resolve_class_terms("hcp-rest", "participants:sex", ("F", "M"), override)
    assert terms == {"F": "face", "M": None} and source == str(override)
    override.write_text(json.dumps(["motor"]))
    with pytest.raises(DataError, match="must be one JSON object"):
        resolve_class_terms("hcp-task", "task", ("motor",), override)
    with pytest.raises(InputMissingError):
        resolve_class_terms("hcp-task", "task", ("motor",), tmp_path / "absent.json")
    assert term_slug("working memory") == "workingMemory" and term_slug("Parkinson's") == "parkinsonS"


def test_roi_volume_top_mask_and_scores():
    labels = np.zeros((5, 6, 7), dtype=np.int16)
    labels[0, :, :] = 3
    labels[1:3, :, :] = 7
    labels[4, :3, :] = 9  # ROI 12 is in the table but has no voxel
    atlas = nib.Nifti1Image(labels, np.diag([2.0, 2.0, 2.0, 1.0]))
    indices = np.array([3, 7, 9, 12])
    image = maps.roi_volume(atlas, indices, np.array([0.5, -1.0, 2.0, 4.0]))
    data = np.asarray(image.dataobj)
    assert image.shape == atlas.shape and np.allclose(image.affine, atlas.affine)
    assert data[0, 0, 0] == 0.5 and data[2, 5, 6] == -1.0 and data[4, 0, 0] == 2.0 and data[3, 0, 0] == 0
    values = maps.parcellate(image, atlas, indices)
    np.testing.assert_allclose(values[:3], [0.5, -1.0, 2.0])
    assert np.isnan(values[3])
    for n_rois in (4, 11, 400):
        assert maps.top_mask(np.arange(n_rois)).sum() == math.ceil(n_rois / 4)
    assert maps.dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == 0.5
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(60)
    specific = rng.standard_normal(60)
    x = shared + specific
    y = 2 * shared + specific + 0.1 * rng.standard_normal(60)
    r, p = maps.partial_correlation(x, y, shared[:, None], n_null=300, seed=1)
    assert r > 0.95 and p == pytest.approx(1 / 301)
    noise_x, noise_y = np.random.default_rng(12).standard_normal((2, 60))
    r0, p0 = maps.partial_correlation(shared + noise_x, shared + noise_y, shared[:, None], 300, 1)
    assert abs(r0) < 0.3 and p0 > 0.05
    assert sanitize_label("working-memory 2") == "workingmemory2"
    assert group_map_name("AAL3v2", "PD", "cpaScore", "statmap", ".nii.gz") == (
        "space-MNI152NLin2009cAsym_atlas-AAL3v2_label-PD_desc-cpaScore_statmap.nii.gz"
    )
    assert group_map_name("AAL3v2", None, "neurosynthReference", "scores", ".tsv") == (
        "space-MNI152NLin2009cAsym_atlas-AAL3v2_desc-neurosynthReference_scores.tsv"
    )
