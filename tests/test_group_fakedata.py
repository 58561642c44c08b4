"""A small generator of participant-level outputs for the group-level tests (and its own checks).

It writes exactly what the participant level writes (names from ``build_path``, ``n/a`` for
missing ROIs and censored volumes, a JSON sidecar last) without running nipype, with a planted
class effect: a slow oscillation shared by a few ROIs in one class, on AR(1) noise everywhere.
Dimensions are deliberately unequal (ROIs != volumes != subjects) so axis mix-ups fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from neurossm_app.bids import build_path, pybids_config

SPACE = "MNI152NLin2009cAsym"


def write_participant_outputs(
    root: Path,
    n_subjects: int = 12,
    n_rois: int = 11,
    n_volumes: int = 90,
    tasks: tuple[str, ...] = ("rest",),
    runs: int = 1,
    sessions: tuple[str, ...] | None = None,
    atlas_label: str = "Schaefer400n17",
    effect_size: float = 1.2,
    seed: int = 0,
    with_missing: bool = True,
) -> tuple[Path, Path]:
    """Write ``root/bids/participants.tsv`` and participant-level series under ``root/out``.

    The sex effect (F) lives in ROIs 0-2; task ``k`` (sorted, the first one has none) puts its
    oscillation, at its own frequency, in ROIs ``2k .. 2k+2``.

    Returns
    -------
    bids_dir, output_dir : Path
    """
    rng = np.random.default_rng(seed)
    bids_dir, out_dir = root / "bids", root / "out"
    bids_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (bids_dir / "dataset_description.json").write_text(json.dumps({"Name": "fake", "BIDSVersion": "1.10.0"}))
    (out_dir / "dataset_description.json").write_text(
        json.dumps({"Name": "fake", "BIDSVersion": "1.10.0", "DatasetType": "derivative"})
    )
    subjects = [f"{i + 1:02d}" for i in range(n_subjects)]
    sexes = ["F" if i % 2 == 0 else "M" for i in range(n_subjects)]
    groups = ["PD" if i % 3 else "HC" for i in range(n_subjects)]
    pd.DataFrame(
        {"participant_id": [f"sub-{s}" for s in subjects], "sex": sexes, "group": groups, "age": 30}
    ).to_csv(bids_dir / "participants.tsv", sep="\t", index=False)
    roi_names = [f"ROI{r:03d}_net{r % 3}" for r in range(n_rois)]
    time = np.arange(n_volumes)
    for index, (subject, sex) in enumerate(zip(subjects, sexes, strict=True)):
        for session in sessions or (None,):
            for task_index, task in enumerate(sorted(tasks)):
                for run in range(1, runs + 1):
                    noise = np.zeros((n_volumes, n_rois))
                    shocks = rng.standard_normal((n_volumes, n_rois))
                    for t in range(n_volumes):
                        noise[t] = 0.5 * noise[t - 1] + shocks[t] if t else shocks[t]
                    series = noise
                    if sex == "F":
                        wave = np.sin(2 * np.pi * 0.07 * time + rng.uniform(0, 2 * np.pi))
                        series[:, 0:3] += effect_size * wave[:, None]
                    if task_index > 0:
                        freq = 0.04 + 0.05 * task_index
                        wave = np.sin(2 * np.pi * freq * time + rng.uniform(0, 2 * np.pi))
                        rois = slice(2 * task_index, 2 * task_index + 3)
                        series[:, rois] += effect_size * wave[:, None]
                    series = 10 + 3 * series  # raw units; the group level re-standardizes
                    excluded = []
                    if with_missing and index % 4 == 1:
                        excluded = [roi_names[-1]]
                        series[:, -1] = np.nan
                    censored = []
                    if with_missing and index % 5 == 2:
                        censored = [3, 4, n_volumes - 7]
                        series[censored, :] = np.nan
                    entities = {
                        "subject": subject,
                        "session": session,
                        "task": task,
                        "run": run if runs > 1 else None,
                        "space": SPACE,
                        "atlas": atlas_label,
                    }
                    path = build_path(out_dir, {**entities, "stat": "mean"}, "timeseries", ".tsv")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    pd.DataFrame(series, columns=roi_names).to_csv(path, sep="\t", index=False, na_rep="n/a")
                    coverage = build_path(out_dir, {**entities, "stat": "coverage"}, "bold", ".tsv")
                    pd.DataFrame({"roi": roi_names, "coverage": 1.0}).to_csv(coverage, sep="\t", index=False)
                    sidecar = {
                        "RepetitionTime": 0.72,
                        "Atlas": atlas_label,
                        "ExcludedROIs": excluded,
                        "CensoredVolumes": censored,
                    }
                    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return bids_dir, out_dir


def test_pybids_parses_our_output_names(tmp_path):
    from bids import BIDSLayout

    _, out = write_participant_outputs(tmp_path, n_subjects=2, n_volumes=20, sessions=("A",), runs=2)
    layout = BIDSLayout(out, validate=False, config=pybids_config(), is_derivative=True)
    found = layout.get(suffix="timeseries", extension=".tsv", return_type="object")
    assert len(found) == 4
    for item in found:
        assert item.entities["atlas"] == "Schaefer400n17"
        assert item.entities["stat"] == "mean"
        assert item.entities["session"] == "A"
        assert item.entities["space"] == SPACE
    coverage = layout.get(suffix="bold", stat="coverage", extension=".tsv")
    assert len(coverage) == 4


def test_generator_writes_missing_values(tmp_path):
    _, out = write_participant_outputs(tmp_path, n_subjects=6, n_volumes=50)
    frame = pd.read_csv(next(out.glob("sub-02/func/*timeseries.tsv")), sep="\t", na_values="n/a")
    assert frame.iloc[:, -1].isna().all()
    frame = pd.read_csv(next(out.glob("sub-03/func/*timeseries.tsv")), sep="\t", na_values="n/a")
    assert frame.iloc[[3, 4, 43]].isna().all().all()
