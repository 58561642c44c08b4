"""``group --predict-with`` and ``neurossm-app-export`` through the real command lines (issue 18).

One site trains a tiny NeuroSSM (3 folds x 1 seed) on a planted sex effect; another site,
generated with another seed (and longer runs), is predicted from the run folder and from the
exported bundle. The participant-level series are written directly
(:func:`tests.test_group_fakedata.write_participant_outputs`) under Schaefer-400 ROI names, so
``--analysis`` finds them in the synthetic atlas.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurossm_app.cli import main
from neurossm_app.cli.export import main as export_main
from neurossm_app.files import read_tsv
from neurossm_app.synthetic.atlas import schaefer_names
from tests.test_group_fakedata import write_participant_outputs

N_ROIS = 11
SMALL = [
    "--dynamic-length", "64", "--epochs", "20", "--batch-size", "4", "--lr", "5e-3",
    "--d-model", "16", "--n-layers", "1", "--d-state", "8", "--scales", "1", "2",
    "--folds", "3", "--seeds", "0", "--omp-nthreads", "1", "--device", "cpu",
    "--weight-decay", "0.01", "--augment", "none", "--inner-val", "0", "--baselines", "none",
]  # fmt: skip


def write_site(root: Path, seed: int, **options) -> tuple[Path, Path]:
    """A site's participant outputs, ROI columns renamed to Schaefer-400 names (in the atlas)."""
    options = {"n_subjects": 16, "n_volumes": 100, "effect_size": 1.5, "n_rois": N_ROIS, **options}
    bids, out = write_participant_outputs(root, seed=seed, **options)
    names = schaefer_names("schaefer400")[: options["n_rois"]]
    for path in out.rglob("*_stat-mean_timeseries.tsv"):
        lines = path.read_text().split("\n", 1)
        path.write_text("\t".join(names) + "\n" + lines[1])
    return bids, out


def predict(bids: Path, out: Path, model: Path, *extra: str) -> int:
    return main([str(bids), str(out), "group", "--predict-with", str(model), "--omp-nthreads", "1", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Site A: 24 subjects of 90 volumes; the finished run folder."""
    bids, out = write_site(tmp_path_factory.mktemp("site-a"), seed=5, n_subjects=24, n_volumes=90)
    assert main([str(bids), str(out), "group", *SMALL, "--run-name", "site-a"]) == 0
    return out / "group" / "site-a"


@pytest.fixture(scope="module")
def site_b(tmp_path_factory) -> tuple[Path, Path]:
    return write_site(tmp_path_factory.mktemp("site-b"), seed=9)


@pytest.fixture(scope="module")
def from_folder(trained, site_b) -> Path:
    bids, out = site_b
    assert predict(bids, out, trained, "--run-name", "from-folder") == 0
    return out / "group" / "from-folder"


def test_ensemble_predicts_another_site(from_folder, capsys):
    summary = json.loads((from_folder / "summary.json").read_text())
    accuracy = summary["metrics"]["scan"]["accuracy"]
    subjects = summary["metrics"]["subject"]["accuracy"]
    print(f"ensemble accuracy on site B: scans {accuracy:.3f}, subjects {subjects:.3f}")
    assert accuracy >= 0.9
    assert summary["metrics"]["scan"]["n"] == 16 and summary["metrics"]["subject"]["n"] == 16
    assert summary["model"]["checkpoints"] == ["fold-0_seed-0", "fold-1_seed-0", "fold-2_seed-0"]
    assert summary["dataset"]["n_subjects"] == 16 and summary["dataset"]["volumes"]["min"] == 100
    assert (
        summary["training_cohort"]["n_subjects"] == 24 and summary["training_cohort"]["volumes"]["max"] == 90
    )
    assert summary["inputs"]["participant_settings"]["Space"] == "MNI152NLin2009cAsym"
    assert (from_folder / "report.html").is_file() and list((from_folder / "logs").glob("*_predict_*.log"))
    assert not [p for p in from_folder.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_predictions_hold_the_ensemble_mean_of_every_checkpoint(from_folder):
    table = read_tsv(from_folder / "predictions.tsv")
    assert list(table.columns) == [
        "level", "scan", "subject", "session", "task", "acquisition", "run", "n_scans", "n_volumes",
        "repetition_time", "true_label", "predicted_label", "prob_F", "prob_M",
    ]  # fmt: skip
    scans, subjects = table[table["level"] == "scan"], table[table["level"] == "subject"]
    assert len(scans) == 16 and len(subjects) == 16 and (scans["n_volumes"] == 100).all()
    assert "\t1\t100\t0.72\t" in (from_folder / "predictions.tsv").read_text()  # counts written as integers
    models = read_tsv(from_folder / "model_predictions.tsv")
    assert len(models) == 3 * 16 and sorted(models["fold"].unique()) == [0, 1, 2]
    mean = models.groupby("scan")[["prob_F", "prob_M"]].mean().loc[scans["scan"]]
    assert np.allclose(mean.to_numpy(), scans[["prob_F", "prob_M"]].to_numpy(), atol=2e-6)
    assert np.allclose(scans[["prob_F", "prob_M"]].sum(axis=1), 1.0, atol=1e-5)
    assert set(scans["true_label"]) == {"F", "M"}


def test_bundle_round_trip_predicts_identically(trained, site_b, from_folder, tmp_path):
    bundle = tmp_path / "site-a.zip"
    assert export_main([str(trained), str(bundle)]) == 0
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        text = b"".join(archive.read(n) for n in names if not n.endswith(".safetensors"))
    assert {"manifest.json", "model.json", "MODEL.md"} <= names
    assert (
        sum(n.endswith(".safetensors") for n in names) == 3
        and sum(n.startswith("checkpoints/") for n in names) == 6
    )
    assert b"sub-" not in text and b"participant_label" not in text  # no subject identifiers
    assert not any(n.endswith(".tsv") for n in names)  # no time series
    bids, out = site_b
    assert predict(bids, out, bundle, "--run-name", "from-bundle") == 0
    ours = (out / "group" / "from-bundle" / "predictions.tsv").read_text()
    assert ours == (from_folder / "predictions.tsv").read_text()
    summary = json.loads((out / "group" / "from-bundle" / "summary.json").read_text())
    assert summary["model"]["kind"] == "bundle"
    assert (
        summary["model"]["model_id"]
        == json.loads((from_folder / "summary.json").read_text())["model"]["model_id"]
    )


def test_export_never_overwrites_and_refuses_unfinished_runs(trained, tmp_path, capsys):
    bundle = tmp_path / "exists.zip"
    bundle.write_text("mine")
    assert export_main([str(trained), str(bundle)]) == 73
    assert bundle.read_text() == "mine" and "never overwrites" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained, unfinished)
    (unfinished / "units" / "fold-1_seed-0" / "unit.json").unlink()
    assert export_main([str(unfinished), str(tmp_path / "b.zip")]) == 65
    assert "not a finished group run: 1 of 3 unit(s)" in capsys.readouterr().err
    assert not (tmp_path / "b.zip").exists()
    assert export_main([]) == 64
    captured = capsys.readouterr()
    assert captured.out.startswith("usage: neurossm-app-export") and captured.err.count("\n") == 1


def _rewrite(bundle: Path, target: Path, change) -> Path:
    """A copy of ``bundle`` whose members went through ``change(name, data) -> (name, data) | None``."""
    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(target, "w") as copy:
        for name in source.namelist():
            changed = change(name, source.read(name))
            if changed is not None:
                copy.writestr(*changed)
    return target


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda n, d: (n, d[:-1] + bytes([d[-1] ^ 1])) if n.endswith("seed-0.safetensors") else (n, d),
            "differs from its SHA-256 in manifest.json",
        ),
        (
            lambda n, d: None if n.endswith("fold-2_seed-0.json") else (n, d),
            "incomplete (1 member(s) missing",
        ),
        (lambda n, d: (n, d) if n != "MODEL.md" else ("../MODEL.md", d), "is not a plain relative name"),
        (lambda n, d: (n, d.replace(b'"F"', b'"X"')) if n == "model.json" else (n, d), "model.json differs"),
    ],
    ids=["weights-changed", "member-missing", "zip-slip", "record-changed"],
)
def test_tampered_bundle_is_refused(trained, site_b, tmp_path, capsys, change, message):
    bundle = tmp_path / "good.zip"
    assert export_main([str(trained), str(bundle)]) == 0
    bad = _rewrite(bundle, tmp_path / "bad.zip", change)
    bids, out = site_b
    assert predict(bids, out, bad, "--run-name", "tampered") == 65
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "is refused" in err
    assert not (out / "group" / "tampered").exists()


def _refused(trained, root, capsys, *extra) -> str:
    bids, out = root
    assert predict(bids, out, trained, "--run-name", "refused", *extra) == 65
    assert not (out / "group").exists()  # refused before anything was written
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    return err


def test_another_atlas_is_refused(trained, tmp_path, capsys):
    root = write_site(tmp_path, seed=3, atlas_label="AAL3v2")
    err = _refused(trained, root, capsys)
    assert "trained on atlas Schaefer400n17 (11 ROIs)" in err and "has series of atlas AAL3v2 only" in err


def test_other_rois_or_another_order_are_refused(trained, tmp_path, capsys):
    err = _refused(trained, write_site(tmp_path / "fewer", seed=3, n_rois=10), capsys)
    assert "10 ROIs here, 11 in the model; missing: 17Networks_LH_" in err
    bids, out = write_site(tmp_path / "order", seed=3)
    for path in out.rglob("*_stat-mean_timeseries.tsv"):
        table = read_tsv(path)
        table[list(reversed(table.columns))].to_csv(path, sep="\t", index=False, na_rep="n/a")
    err = _refused(trained, (bids, out), capsys)
    assert "the same 11 ROIs in another order (column 1 is '17Networks_" in err


def test_other_cleaning_settings_are_refused(trained, tmp_path, capsys):
    bids, out = write_site(tmp_path, seed=3)
    for sidecar in out.rglob("*_stat-mean_timeseries.json"):
        sidecar.write_text(
            json.dumps({**json.loads(sidecar.read_text()), "FDThreshold": 0.3, "Detrend": True})
        )
    err = _refused(trained, (bids, out), capsys)
    assert "other participant-level settings than the model's training data" in err
    assert (
        "Detrend True here, not recorded in the model; FDThreshold 0.3 here, not recorded in the model" in err
    )


def test_classes_the_model_does_not_know_are_refused(trained, tmp_path, capsys):
    bids, out = write_site(tmp_path, seed=3)
    table = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    table.loc[:2, "sex"] = "X"
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    err = _refused(trained, (bids, out), capsys)
    assert "class(es) 'X' (3 subject(s)) that the model does not know (its classes: F, M)" in err


def test_series_shorter_than_the_window_are_refused(trained, tmp_path, capsys):
    err = _refused(trained, write_site(tmp_path, seed=3, n_volumes=50), capsys)
    assert "16 scan(s) are shorter than the model's training window of 64 volumes" in err


def test_without_labels_and_without_overwriting(trained, site_b, tmp_path, capsys):
    site_a = trained.parent.parent  # site A's OUTPUT_DIR, where the training run is
    config = (trained / "config.json").read_bytes()
    assert predict(site_a.parent / "bids", site_a, trained, "--run-name", "site-a") == 64
    assert "holds a training run; choose another --run-name (nothing was changed)" in capsys.readouterr().err
    assert (trained / "config.json").read_bytes() == config and not (
        trained / "predictions.tsv"
    ).read_text().startswith("level")
    bids, out = site_b
    assert predict(bids, out, trained, "--epochs", "3") == 64
    assert "--epochs train a model and cannot be combined with --predict-with" in capsys.readouterr().err
    assert predict(bids, out, trained, "--participants-tsv", str(tmp_path / "none.tsv")) == 66
    empty = tmp_path / "participants.tsv"
    empty.write_text("participant_id\tage\nsub-01\t30\n")
    assert predict(bids, out, trained, "--participants-tsv", str(empty), "--run-name", "unlabelled") == 0
    summary = json.loads((out / "group" / "unlabelled" / "summary.json").read_text())
    assert summary["metrics"] is None and sum(summary["predicted"]["scans"].values()) == 16
    assert read_tsv(out / "group" / "unlabelled" / "predictions.tsv")["true_label"].isna().all()


def test_scan_back_ends_agree(trained, site_b):
    """Item 5: the numba (cpu) and PyTorch (torch) scans give the same probabilities."""
    import torch

    from neurossm_app.group.predict import ensemble_probabilities
    from neurossm_app.group.predict_inputs import load_new_cohort
    from neurossm_app.group.trained import load_trained_model

    model = load_trained_model(trained)
    bids, out = site_b
    cohort = load_new_cohort(model, out, bids / "participants.tsv", {})
    device = torch.device("cpu")
    numba = ensemble_probabilities(model, cohort.series, device, 4, backend="cpu")
    pytorch = ensemble_probabilities(model, cohort.series, device, 4, backend="torch")
    assert numba.shape == (3, 16, 2)
    assert np.abs(numba - pytorch).max() < 1e-4


def test_analysis_on_the_new_subjects(trained, site_b, atlas_cache, tmp_path):
    bids, out = site_b
    terms = tmp_path / "terms.json"
    terms.write_text(json.dumps({"F": None, "M": None}))
    argv = [
        "--run-name",
        "with-cpa",
        "--analysis",
        "--class-terms",
        str(terms),
        "--neurosynth-dir",
        str(tmp_path),
    ]
    assert predict(bids, out, trained, *argv) == 0
    run = out / "group" / "with-cpa"
    assert len(list((run / "cpa" / "fold-0_seed-0").glob("*_cpa.npz"))) == 16
    assert len(list((run / "cpa").glob("fold-*_seed-0"))) == 3
    analysis = json.loads((run / "cpa" / "analysis.json").read_text())
    assert analysis["n_scan_records"] == 3 * 16 and analysis["checkpoints"][0] == "fold-0_seed-0"
    tables = sorted(p.name for p in (run / "maps").glob("*_desc-cpa_rois.tsv"))
    assert [name.split("_label-")[1].split("_")[0] for name in tables] == ["F", "M"]
    assert read_tsv(run / "maps" / tables[0])["roi"].tolist() == schaefer_names("schaefer400")[:N_ROIS]
    assert "Calibrated pathway weights" in (run / "report.html").read_text()


def test_what_is_not_a_trained_model_is_refused(trained, site_b, from_folder, tmp_path, capsys):
    bids, out = site_b
    assert predict(bids, out, from_folder, "--run-name", "again") == 65
    assert "is a prediction run; give the group run that trained the model" in capsys.readouterr().err
    assert predict(bids, out, tmp_path / "nothing.zip") == 66
    assert "--predict-with" in capsys.readouterr().err
    (tmp_path / "not.zip").write_text("plain text")
    assert predict(bids, out, tmp_path / "not.zip") == 65
    assert "is not a readable zip file" in capsys.readouterr().err
    assert predict(bids, out, trained, "--atlas", "aal3v2", "--run-name", "again") == 65
    assert (
        "--atlas aal3v2 (AAL3v2) is another atlas than the model's (Schaefer400n17" in capsys.readouterr().err
    )
    assert not (out / "group" / "again").exists()
