"""Output names, label parsing and the workflow graph (built, not run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurossm_app.atlases import ATLASES, Atlas
from neurossm_app.bids import BoldRun, build_path, pybids_config, strip_prefix
from neurossm_app.config import CleaningSettings
from neurossm_app.errors import UsageError


def test_build_path_orders_entities():
    path = build_path(
        "/out",
        {
            "run": 2,
            "task": "rest",
            "subject": "01",
            "session": "A",
            "space": "MNI152NLin2009cAsym",
            "atlas": "Schaefer400n17",
            "stat": "mean",
        },
        "timeseries",
        ".tsv",
    )
    assert path == Path(
        "/out/sub-01/ses-A/func/sub-01_ses-A_task-rest_run-2_space-MNI152NLin2009cAsym"
        "_atlas-Schaefer400n17_stat-mean_timeseries.tsv"
    )


def test_build_path_refuses_path_separators():
    with pytest.raises(UsageError, match="letters and digits"):
        build_path("/out", {"subject": "../etc", "task": "rest"}, "timeseries", ".tsv")


@pytest.mark.parametrize("label, expected", [("sub-01", "01"), ("01", "01"), (" ab3 ", "ab3")])
def test_strip_prefix(label, expected):
    assert strip_prefix(label, "sub") == expected


@pytest.mark.parametrize("label", ["sub-", "../x", "a/b", "sub-01_x"])
def test_strip_prefix_rejects(label):
    with pytest.raises(UsageError):
        strip_prefix(label, "sub")


def test_pybids_parses_our_names(tmp_path):
    from bids import BIDSLayout

    (tmp_path / "dataset_description.json").write_text(
        '{"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": "t"}]}'
    )
    ents = {
        "subject": "02",
        "task": "motor",
        "run": 1,
        "space": "MNI152NLin2009cAsym",
        "atlas": "AAL3v2",
        "stat": "mean",
    }
    path = build_path(tmp_path, ents, "timeseries", ".tsv")
    path.parent.mkdir(parents=True)
    path.write_text("a\tb\n1\t2\n")
    layout = BIDSLayout(tmp_path, validate=False, config=pybids_config())
    (found,) = layout.get(suffix="timeseries", extension=".tsv")
    for key, value in ents.items():
        assert str(found.entities[key]) == str(value)


@pytest.mark.parametrize("strategy", ["none", "36P", "acompcor"])
@pytest.mark.parametrize("n_runs", [1, 3])
def test_workflow_graph_builds(tmp_path, strategy, n_runs):
    from neurossm_app.participant.workflow import init_participant_wf

    files = {}
    for name in ("bold.nii.gz", "mask.nii.gz", "conf.tsv", "atlas.nii.gz"):
        files[name] = tmp_path / name
        files[name].write_text("")
    runs = [
        BoldRun(
            files["bold.nii.gz"],
            files["mask.nii.gz"],
            files["conf.tsv"],
            2.0,
            {"subject": "01", "task": "rest", "run": i + 1},
        )
        for i in range(n_runs)
    ]
    atlas = Atlas(ATLASES["schaefer400"], files["atlas.nii.gz"], (1, 2), ("a", "b"))
    wf = init_participant_wf(
        runs, atlas, CleaningSettings(strategy=strategy), tmp_path / "out", tmp_path / "w"
    )
    names = wf.list_node_names()
    # one extraction node (resample, parcellate, clean) and two sinks per run, for every strategy
    assert len(names) == 3 * n_runs
    for node in ("extract", "ds_timeseries", "ds_report"):
        assert sum(name.endswith(f".{node}") for name in names) == n_runs


@pytest.mark.parametrize("apptainer, kind", [(None, "docker"), ("/img.sif", "singularity")])
def test_dataset_description_names_the_container(tmp_path, monkeypatch, apptainer, kind):
    import json

    from neurossm_app.bids import dataset_description

    monkeypatch.setenv("NEUROSSM_CONTAINER_TAG", "neurossm-app:0.1.0")
    monkeypatch.delenv("SINGULARITY_CONTAINER", raising=False)
    if apptainer:
        monkeypatch.setenv("APPTAINER_CONTAINER", apptainer)
    else:
        monkeypatch.delenv("APPTAINER_CONTAINER", raising=False)
    path = dataset_description(tmp_path, [tmp_path / "raw"])
    generated = json.loads(path.read_text())["GeneratedBy"][0]
    assert generated["Container"] == {"Type": kind, "Tag": "neurossm-app:0.1.0"}
