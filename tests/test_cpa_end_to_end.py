"""``group --analysis`` end to end: planted task effects -> NeuroSSM -> CPA -> Neurosynth scores.

The participant-level series are written directly (names from ``build_path``, the synthetic
Schaefer-400 ROI names), in the parcels ``neurossm-synth``'s truth record names for the tasks
motor and wm (transient, "diff") and language (slow, "raw"), plus ``rest``, the generator's
baseline task with no effect. nipype and the BOLD simulation are skipped (the participant level
alone takes minutes), and so is its 0.01-0.1 Hz band-pass, which would remove the fast effects
below. The Neurosynth database is ``neurossm-synth``'s, built from the same truth record.

The waveforms are chosen so that each effect lives in one kind of pathway:

- background: AR(1) with coefficient 0.5, whose first difference has the same variance as the
  series itself, so differencing neither helps nor hurts it;
- slow: a 0.03-0.06 Hz sinusoid, shrunk about 5 times by differencing (raw pathways see it);
- transient: 3-volume alternating-sign bursts (+a, -a, +a), about one every 10 volumes, whose
  energy sits near the Nyquist frequency: differencing multiplies it by about 3 (diff pathways
  see it).

Why ``rest``: without a class that has no effect, a 3-class model recognises one class by the
absence of the other two classes' effects, and CPA then (correctly) credits the other classes'
ROIs for it (measured before: wm 0% of its planted ROIs in its top 25%). Why 5 folds x 2 seeds:
CPA of a single small model is noisy (a model's input weights on the 380 unplanted ROIs random-
walk during training); averaging over 10 models gives stable class maps (measured on 6 data
seeds, docs/cpa.md). Why 15 epochs: the models reach their test accuracy by epoch 9-12, and
the class maps of 15 epochs recover the planted ROIs as those of 30 did (same 6 seeds, half the
training time; ``benchmarks/cpa_recovery.py --epochs``).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurossm_app.bids import build_path
from neurossm_app.cli import main
from neurossm_app.files import read_tsv
from neurossm_app.group.cpa import load_cpa
from neurossm_app.synthetic.atlas import schaefer_names
from neurossm_app.synthetic.effects import planted_effects, truth_record
from neurossm_app.synthetic.neurosynth import write_neurosynth_database
from neurossm_app.synthetic.recovery import planted_recovery

TASKS = ("language", "motor", "wm")  # tasks with a planted effect
CLASSES = (*TASKS, "rest")  # written in this order; the group level sorts the labels
N_SUBJECTS, N_VOLUMES, TR = 18, 150, 0.72
PHI = 0.5  # AR(1) coefficient of the background (unit variance)
SLOW_AMPLITUDE, BURST_AMPLITUDE = 4.0, 2.0
ATLAS = "Schaefer400n17"
PREFIX = f"space-MNI152NLin2009cAsym_atlas-{ATLAS}"
pytestmark = pytest.mark.slow

ARGS = [
    "--preset", "hcp-task", "--dynamic-length", "100", "--epochs", "15", "--batch-size", "8", "--lr", "1e-2",
    "--weight-decay", "0.1", "--d-model", "16", "--n-layers", "1", "--d-state", "8", "--scales", "1", "2",
    "--folds", "5", "--seeds", "0", "1", "--baselines", "none", "--omp-nthreads", "1", "--device", "cpu",
    "--augment", "none", "--inner-val", "0",  # as measured before issue 24 changed the defaults
]  # fmt: skip


def ar1_background(rng: np.random.Generator) -> np.ndarray:
    """(T, R) unit-variance AR(1) noise, stationary from the first volume."""
    shocks = rng.standard_normal((N_VOLUMES, 400))
    x = np.zeros_like(shocks)
    x[0] = shocks[0] / math.sqrt(1 - PHI**2)
    for t in range(1, N_VOLUMES):
        x[t] = PHI * x[t - 1] + shocks[t]
    return x * math.sqrt(1 - PHI**2)


def effect_waveform(kind: str, rng: np.random.Generator) -> np.ndarray:
    """(T,) the planted effect of one run: ``"slow"`` sinusoid or ``"transient"`` bursts."""
    if kind == "slow":
        seconds = np.arange(N_VOLUMES) * TR
        frequency, phase = rng.uniform(0.03, 0.06), rng.uniform(0, 2 * np.pi)
        return SLOW_AMPLITUDE * np.sin(2 * np.pi * frequency * seconds + phase)
    wave = np.zeros(N_VOLUMES)
    onset = int(rng.integers(0, 5))
    while onset < N_VOLUMES - 3:
        wave[onset : onset + 3] = BURST_AMPLITUDE * np.array([1.0, -1.0, 1.0])
        onset += int(rng.integers(6, 14))
    return wave


def planted_series(task: str, truth: dict, names: list[str], rng: np.random.Generator) -> np.ndarray:
    """(T, R) BOLD-like series: background plus the task's effect in its planted parcels."""
    x = ar1_background(rng)
    if task in truth:  # rest carries no effect
        columns = [names.index(r) for r in truth[task]["rois"]]
        x[:, columns] += effect_waveform(truth[task]["effect"], rng)[:, None]
    return 100 + 5 * x


def write_dataset(root: Path, seed: int) -> tuple[list[str], dict, list[str], Path]:
    """Write the planted series under ``root/out`` and the Neurosynth database.

    Returns
    -------
    argv : list of str
        ``group --analysis`` arguments for :func:`neurossm_app.cli.main`.
    truth : dict
        Class -> truth-record entry (``rois``, ``signal``, ``effect``) of the effect classes.
    names : list of str
        ROI names (Schaefer-400, 17 networks), the TSV columns.
    neurosynth : Path
        The ``--neurosynth-dir``.
    """
    bids, out = root / "bids", root / "out"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "cpa", "BIDSVersion": "1.10.0"}))
    out.mkdir()
    (out / "dataset_description.json").write_text(
        json.dumps({"Name": "cpa", "BIDSVersion": "1.10.0", "DatasetType": "derivative"})
    )
    record = truth_record(planted_effects(list(TASKS)), {"tasks": list(TASKS)})
    truth = record["atlases"]["schaefer400"]["targets"]["task"]
    names = schaefer_names("schaefer400")
    rng = np.random.default_rng(seed)
    for subject in (f"{i + 1:02d}" for i in range(N_SUBJECTS)):
        for task in CLASSES:
            entities = {"subject": subject, "task": task, "space": "MNI152NLin2009cAsym", "atlas": ATLAS}
            path = build_path(out, {**entities, "stat": "mean"}, "timeseries", ".tsv")
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(planted_series(task, truth, names, rng), columns=names).to_csv(
                path, sep="\t", index=False, float_format="%.4f"
            )
            path.with_suffix(".json").write_text(json.dumps({"RepetitionTime": TR, "Atlas": ATLAS}))
    neurosynth = root / "neurosynth"
    write_neurosynth_database(neurosynth, record, seed=1)
    argv = [str(bids), str(out), "group", *ARGS, "--analysis", "--neurosynth-dir", str(neurosynth)]
    return argv, truth, names, neurosynth


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, atlas_cache):
    root = tmp_path_factory.mktemp("cpa-e2e")
    argv, truth, names, neurosynth = write_dataset(root, seed=11)
    assert main([*argv, "--n-null-maps", "500"]) == 0  # the default null: brainsmash
    return root / "out" / "group" / "hcp-task", truth, names, neurosynth


def test_training_separates_the_tasks(analysed):
    run, *_ = analysed
    summary = json.loads((run / "summary.json").read_text())
    accuracy = summary["models"]["neurossm"]["accuracy"]["mean"]
    assert accuracy >= 0.8, f"NeuroSSM accuracy {accuracy:.2f}: the CPA checks below need a trained model"


def test_cpa_files_per_held_out_scan(analysed):
    run, _, names, _ = analysed
    files = sorted((run / "cpa" / "seed-0").glob("*_cpa.npz"))
    assert len(files) == N_SUBJECTS * len(CLASSES)
    arrays = load_cpa(files[0])
    assert arrays["pathway_maps"].shape == (4, len(names)) and list(arrays["roi_names"]) == names
    assert list(arrays["pathway_names"]) == ["raw_s1", "raw_s2", "diff_s1", "diff_s2"]
    assert (
        str(arrays["true_label"]) in CLASSES and int(arrays["seed"]) == 0 and int(arrays["fold"]) in range(5)
    )
    assert arrays["cpa"].shape == (len(names),) and arrays["dominant_pathway"].shape == (len(names),)


def test_planted_rois_in_top_quarter_and_in_their_pathway(analysed):
    """At least 80% of each class's planted ROIs in its CPA top 25%, dominated by their pathway.

    The issue asks for transient ROIs dominated by a diff pathway; the slow ones are checked
    against raw pathways too (design section 9: tests check CPA finds the planted pathways).
    """
    run, truth, names, _ = analysed
    recovery = planted_recovery(run, truth)
    assert list(recovery.index) == list(TASKS)
    assert (recovery["n_top25"] == math.ceil(len(names) / 4)).all()
    for task, row in recovery.iterrows():
        assert row["in_top25"] >= 0.8, f"{task}: {row['in_top25']:.0%} of the planted ROIs in the CPA top 25%"
        assert row["in_own_pathway"], f"{task} ({row['signal']} effect): {row['dominant']}"


def test_reference_scores_are_positive(analysed):
    run, *_ = analysed
    scores = read_tsv(run / "maps" / f"{PREFIX}_desc-neurosynthReference_scores.tsv").set_index("class")
    assert list(scores.index) == sorted(CLASSES)
    assert scores.loc["wm", "term"] == "working memory"
    effects = scores.loc[list(TASKS)]
    assert (effects["partial_r"] > 0).all(), effects["partial_r"].to_dict()
    assert (effects["n_null_maps"] == 500).all() and (effects["null_model"] == "brainsmash").all()
    # p = (1 + #{r_null >= r}) / (1 + 500): a whole number of surrogates, and on the planted
    # effects none or almost none of them reaches r (measured: p = 1/501 for all three classes
    # under the spatial null too, partial r 0.30-0.37).
    exceeding = effects["p_value"] * 501 - 1
    assert np.allclose(exceeding, exceeding.round(), atol=1e-3), effects["p_value"].to_dict()
    assert (effects["p_value"] <= 0.01).all(), effects["p_value"].to_dict()
    # rest has no Neurosynth term: CPA maps only, no score
    assert pd.isna(scores.loc["rest", "term"]) and pd.isna(scores.loc["rest", "partial_r"])


def test_maps_are_on_the_atlas_grid(analysed, atlas_cache):
    from neurossm_app.atlases import get_atlas

    run, _, names, neurosynth = analysed
    atlas = nib.load(get_atlas("schaefer400").image)
    labels = np.asarray(atlas.dataobj).astype(int)
    n_top = math.ceil(len(names) / 4)
    for task in TASKS:
        for desc, suffix in [
            ("cpaScore", "statmap"), ("cpaTop25", "mask"), ("cpaDominantPathway", "dseg"),
            ("neurosynthReferenceScore", "statmap"), ("neurosynthReferenceTop25", "mask"),
        ]:  # fmt: skip
            path = run / "maps" / f"{PREFIX}_label-{task}_desc-{desc}_{suffix}.nii.gz"
            image = nib.load(path)
            assert image.shape == atlas.shape and np.allclose(image.affine, atlas.affine)
            assert json.loads(Path(str(path).replace(".nii.gz", ".json")).read_text())["Class"] == task
            data = np.asarray(image.dataobj)
            if suffix == "mask":
                assert len(np.unique(labels[data > 0])) == n_top
            # each ROI's voxels hold one value
            assert all(len(np.unique(data[labels == k])) == 1 for k in (1, 137, 400))
        lut = pd.read_csv(run / "maps" / f"{PREFIX}_label-{task}_desc-cpaDominantPathway_dseg.tsv", sep="\t")
        assert list(lut.columns) == ["index", "name"] and list(lut["index"]) == [1, 2, 3, 4]
    # rest (no term) gets the three CPA maps and no reference maps
    assert len(list((run / "maps").glob(f"{PREFIX}_label-rest_desc-cpa*.nii.gz"))) == 3
    assert not list((run / "maps").glob(f"{PREFIX}_label-rest_desc-neurosynth*"))
    # the term maps are cached beside the database and reused
    assert sorted(p.name for p in (neurosynth / "maps").glob("*.nii.gz")) == [
        "term-language_z.nii.gz", "term-motor_z.nii.gz", "term-workingMemory_z.nii.gz",
    ]  # fmt: skip


@pytest.fixture
def finished_run(analysed, tmp_path):
    """A copy of the analysed run's OUTPUT_DIR (training and subject-level CPA are reused)."""
    run, truth, names, neurosynth = analysed
    out = tmp_path / "out"
    shutil.copytree(run.parents[1], out)
    shutil.rmtree(out / "group" / "hcp-task" / "maps")
    return out, neurosynth


def _argv(out: Path, *extra: str) -> list[str]:
    return [str(out.parent / "bids"), str(out), "group", *ARGS, "--analysis", *extra]


def test_classes_without_terms_get_cpa_maps_only(finished_run, tmp_path):
    out, _ = finished_run
    (out.parent / "bids").mkdir()
    terms = tmp_path / "terms.json"
    terms.write_text(json.dumps(dict.fromkeys(CLASSES)))
    # no term: the Neurosynth directory is never looked at
    assert main(_argv(out, "--class-terms", str(terms), "--neurosynth-dir", str(tmp_path / "absent"))) == 0
    maps_dir = out / "group" / "hcp-task" / "maps"
    assert len(list(maps_dir.glob("*_desc-cpaScore_statmap.nii.gz"))) == len(CLASSES)
    assert not list(maps_dir.glob("*neurosynthReference*.nii.gz"))
    scores = read_tsv(maps_dir / f"{PREFIX}_desc-neurosynthReference_scores.tsv")
    assert scores["term"].isna().all() and scores["partial_r"].isna().all()


def test_unknown_term_is_exit_65_and_missing_data_offline_exit_66(
    finished_run, tmp_path, monkeypatch, capsys
):
    import urllib.error

    import nimare.extract

    out, neurosynth = finished_run
    (out.parent / "bids").mkdir()
    terms = tmp_path / "terms.json"
    terms.write_text(json.dumps({"motor": "motor", "wm": "n-back working memory"}))
    assert main(_argv(out, "--class-terms", str(terms), "--neurosynth-dir", str(neurosynth))) == 65
    captured = capsys.readouterr()
    assert "'n-back working memory' are not in the vocabulary" in captured.err + captured.out

    def offline(**kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(nimare.extract, "fetch_neurosynth", offline)
    empty = tmp_path / "empty-cache"
    assert main(_argv(out, "--neurosynth-dir", str(empty))) == 66
    captured = capsys.readouterr()
    assert f"neurossm-app-fetch --atlas none --neurosynth {empty}" in captured.err + captured.out


def test_group_report_renders_every_section(analysed, tmp_path):
    """The group report of an ``--analysis`` run, as a person sees it in headless Chromium."""
    from tests.browser import render

    run, *_ = analysed
    page = render(run / "report.html", screenshot=tmp_path / "report.png")
    assert page.console_errors == []
    assert page.broken_images == 0
    for heading in (
        "Dataset", "Performance", "Confusion matrices", "ROC curves", "Learning curves",
        "Calibrated pathway weights", "CPA and Neurosynth reference maps", "Reference scores",
        "How to read these results, and what CPA does not show",
    ):  # fmt: skip
        assert heading in page.headings
    # metrics, confusion, ROC, learning curves, pathway weights, then a CPA glass brain per
    # class and a reference one per class with a term (baselines are off in this run)
    assert len(page.figure_sizes) == 5 + len(CLASSES) + len(TASKS)
    assert all(width > 100 and height > 50 for width, height in page.figure_sizes)
    assert all(f"class {label}" in page.headings for label in CLASSES)
    assert "±" in page.text and "partial_r" in page.text  # numbers readable as text too
    # p at the precision of 500 surrogates (1/501 reads "< 0.01", never 0.0020), the null named
    assert "< 0.01" in page.text and "BrainSMASH" in page.text and "0.0020" not in page.text
    assert "Provenance" in page.headings and "correctly classified held-out scans" in page.text
    assert "recognised by elimination" in page.text  # what CPA does not show, said on the page


def test_recovery_table_that_the_demo_prints(analysed, tmp_path, capsys):
    """``python -m neurossm_app.synthetic.recovery``, which ends ``make demo``, on this run: every
    class meets the checks (exit 0); told that language's effect sits in the ROIs its map ranks
    lowest, language fails them and the exit code says so (1)."""
    from neurossm_app.synthetic.recovery import main as recovery

    run, *_ = analysed
    record = truth_record(planted_effects(list(TASKS)), {"tasks": list(TASKS)})
    truth_file = tmp_path / "sourcedata" / "synthetic_truth.json"
    truth_file.parent.mkdir()
    truth_file.write_text(json.dumps(record))
    assert recovery([str(tmp_path), str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == list(TASKS)
    assert all(line.endswith("  met") for line in lines[1:4]), lines
    assert "500 brainsmash null maps" in lines[4]

    language = record["atlases"]["schaefer400"]["targets"]["task"]["language"]
    rois = read_tsv(run / "maps" / f"{PREFIX}_label-language_desc-cpa_rois.tsv")
    language["rois"] = rois.nsmallest(len(language["rois"]), "cpa")["roi"].tolist()
    truth_file.write_text(json.dumps(record))
    assert recovery([str(tmp_path), str(run)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("language") and " 0 of 16 (0%)" in lines[1] and lines[1].endswith("NOT met")
    assert all(line.endswith("  met") for line in lines[2:4]), lines
