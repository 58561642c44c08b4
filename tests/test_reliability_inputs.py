"""Bad inputs through the real CLI: each one exit code, one line naming the file and the fix.

Every case copies a small synthetic dataset, breaks one thing, runs ``neurossm-app`` in-process
with the network blocked, and checks:

- the BIDS-App exit code of docs/troubleshooting.md's table;
- exactly one line on standard error, with no traceback, that names the file (or option) at
  fault and says what to do;
- nothing new under OUTPUT_DIR: a failing participant call may leave an empty OUTPUT_DIR, a failing
  group call may leave only its log file in ``group/<run>/logs/`` (documented in troubleshooting.md);
- every file under BIDS_DIR (and, at group level, the participant outputs) byte-identical.

The table in docs/troubleshooting.md is checked against :data:`CASES` (ids, codes), so the two
cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurossm_app.cli import main
from tests.conftest import make_synthetic
from tests.test_group_fakedata import write_participant_outputs
from tests.test_reliability_common import (
    FMRIPREP,
    TINY_GROUP,
    copy_dataset,
    error_line,
    files_under,
    no_network_env,
    run_cli,
    tree_digest,
)

FUNC01 = FMRIPREP / "sub-01" / "func"
BOLD01 = FUNC01 / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
MASK01 = FUNC01 / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz"
CONF01 = FUNC01 / "sub-01_task-rest_desc-confounds_timeseries.tsv"
SIDECAR01 = FUNC01 / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.json"


@dataclass
class Setup:
    """Where one case runs: BIDS_DIR, OUTPUT_DIR, extra options, and what must stay unchanged."""

    bids: Path
    out: Path
    args: list[str]
    inputs: list[Path]


@dataclass(frozen=True)
class Case:
    """One broken input: how to break it, the exit code and what the error line must say."""

    id: str
    level: str  # "participant" or "group"
    breaks: Callable[[Path, Path], Setup]  # (copied dataset, scratch folder) -> Setup
    code: int
    says: tuple[str, ...]  # substrings of the error line: the file or option, and the fix


# --- participant level: the dataset is a copy of a 4-subject synthetic BIDS + fMRIPrep dataset --------


def _participant(ds: Path, tmp: Path, *args: str, bids: Path | None = None, out: Path | None = None):
    return Setup(bids or ds, out or tmp / "out", ["--participant-label", "01", *args], [ds])


def _bids_missing(ds, tmp):
    return _participant(ds, tmp, bids=tmp / "no_such_dataset")


def _not_bids(ds, tmp):
    folder = tmp / "holiday_photos"
    folder.mkdir()
    (folder / "IMG_0001.txt").write_text("not a BIDS dataset\n")
    setup = _participant(ds, tmp, bids=folder)
    setup.inputs.append(folder)
    return setup


def _output_is_bids(ds, tmp):
    return _participant(ds, tmp, out=ds)


def _output_inside_bids(ds, tmp):
    return _participant(ds, tmp, out=ds / "results")


def _output_uncreatable(ds, tmp):
    (tmp / "a_file").write_text("a regular file, not a folder\n")
    return _participant(ds, tmp, out=tmp / "a_file" / "out")


def _output_read_only(ds, tmp):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod cannot stop root writing (output-uncreatable covers exit 73)")
    parent = tmp / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    return _participant(ds, tmp, out=parent / "out")


def _label_not_found(ds, tmp):
    setup = _participant(ds, tmp)
    setup.args[1] = "99"
    return setup


def _label_with_path(ds, tmp):
    setup = _participant(ds, tmp)
    setup.args[1] = "../01"
    return setup


def _filter_file(ds, tmp, text: str | None):
    path = tmp / "filters.json"
    if text is not None:
        path.write_text(text)
    return _participant(ds, tmp, "--bids-filter-file", str(path))


def _filter_bad_json(ds, tmp):
    return _filter_file(ds, tmp, '{"bold": {"task": "rest",}}')


def _filter_wrong_shape(ds, tmp):
    return _filter_file(ds, tmp, '["bold", "task-rest"]')


def _filter_missing(ds, tmp):
    return _filter_file(ds, tmp, None)


def _task_selects_nothing(ds, tmp):
    return _participant(ds, tmp, "--task-id", "motor")


def _fmriprep_missing(ds, tmp):
    import shutil

    shutil.rmtree(ds / FMRIPREP)
    return _participant(ds, tmp)


def _other_space_only(ds, tmp):
    for path in (ds / FUNC01).glob("*space-MNI152NLin2009cAsym*"):
        path.rename(path.with_name(path.name.replace("space-MNI152NLin2009cAsym", "space-T1w")))
    return _participant(ds, tmp)


def _mask_other_grid(ds, tmp):
    mask = nib.load(ds / MASK01)
    data = np.asarray(mask.dataobj)[:-2, :-1, :]
    nib.save(nib.Nifti1Image(data, mask.affine, mask.header), ds / MASK01)
    return _participant(ds, tmp)


def _mask_missing(ds, tmp):
    (ds / MASK01).unlink()
    return _participant(ds, tmp)


def _confounds_missing(ds, tmp):
    (ds / CONF01).unlink()
    (ds / CONF01).with_suffix(".json").unlink()
    return _participant(ds, tmp)


def _confounds_rows(ds, tmp):
    lines = (ds / CONF01).read_text().splitlines(keepends=True)
    (ds / CONF01).write_text("".join(lines[:-5]))
    return _participant(ds, tmp)


def _tr_missing(ds, tmp):
    sidecar = json.loads((ds / SIDECAR01).read_text())
    del sidecar["RepetitionTime"]
    (ds / SIDECAR01).write_text(json.dumps(sidecar))
    return _participant(ds, tmp)


def _bold_3d(ds, tmp):
    bold = nib.load(ds / BOLD01)
    nib.save(nib.Nifti1Image(np.asarray(bold.dataobj[..., 0]), bold.affine), ds / BOLD01)
    return _participant(ds, tmp)


def _bold_truncated(ds, tmp):
    data = (ds / BOLD01).read_bytes()
    (ds / BOLD01).write_bytes(data[: len(data) * 2 // 3])
    return _participant(ds, tmp)


def _bold_with(value: float):
    def breaks(ds, tmp):
        bold = nib.load(ds / BOLD01)
        data = np.asarray(bold.dataobj, dtype=np.float32)
        data[:, :, data.shape[2] // 2, 40] = value  # one damaged slice of one volume
        nib.save(nib.Nifti1Image(data, bold.affine, bold.header), ds / BOLD01)
        return _participant(ds, tmp)

    return breaks


def _aal_absent(ds, tmp):
    (tmp / "empty_nilearn_data").mkdir()
    return _participant(ds, tmp, "--atlas", "aal3v2", "--atlas-dir", str(tmp / "empty_nilearn_data"))


# --- group level: a copy of participant-level outputs (BIDS_DIR holds participants.tsv) ----------------


def _group(root: Path, tmp: Path, *args: str) -> Setup:
    return Setup(root / "bids", root / "out", [*TINY_GROUP, *args], [root / "bids", root / "out"])


def _no_participant_outputs(root, tmp):
    empty = tmp / "empty_out"
    empty.mkdir()
    return Setup(root / "bids", empty, list(TINY_GROUP), [root / "bids"])


def _participants_tsv(root: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = root / "bids" / "participants.tsv"
    edit(pd.read_csv(path, sep="\t", dtype=str)).to_csv(path, sep="\t", index=False)


def _label_column_missing(root, tmp):
    _participants_tsv(root, lambda t: t.drop(columns="sex"))
    return _group(root, tmp)


def _participants_missing(root, tmp):
    (root / "bids" / "participants.tsv").unlink()
    return _group(root, tmp)


def _single_class(root, tmp):
    _participants_tsv(root, lambda t: t.assign(sex="F"))
    return _group(root, tmp)


def _fewer_subjects_than_folds(root, tmp):
    return _group(root, tmp, "--folds", "10")


def _runs_shorter_than_window(root, tmp):
    return _group(root, tmp, "--dynamic-length", "120")


def _damaged_timeseries(root, tmp):
    path = next((root / "out").glob("sub-03/func/*_stat-mean_timeseries.tsv"))
    path.write_text(path.read_text().replace("\n", "\tx\n", 5))
    return _group(root, tmp)


def _corrupt_checkpoint(root, tmp):
    setup = _group(root, tmp)
    assert main([str(setup.bids), str(setup.out), "group", *setup.args, "--fold", "0", "--seed", "0"]) == 0
    checkpoint = next((setup.out / "group").glob("*/checkpoints/*fold-0_seed-0.safetensors"))
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    return setup


CASES = [
    Case("bids-dir-missing", "participant", _bids_missing, 66, ("no_such_dataset", "does not exist")),
    Case("bids-dir-not-bids", "participant", _not_bids, 66, ("holiday_photos", "pass -d fmriprep=PATH")),
    Case("output-is-bids-dir", "participant", _output_is_bids, 64, ("inside BIDS_DIR", "choose a folder")),
    Case("output-inside-bids-dir", "participant", _output_inside_bids, 64, ("results", "choose a folder")),
    Case("output-uncreatable", "participant", _output_uncreatable, 73, ("a_file/out", "choose")),
    Case("output-read-only", "participant", _output_read_only, 73, ("read_only/out", "choose")),
    Case("label-not-found", "participant", _label_not_found, 18, ("99", "found: 01, 02, 03, 04")),
    Case("label-with-path", "participant", _label_with_path, 64, ("'../01'", "letters and digits")),
    Case("filter-file-bad-json", "participant", _filter_bad_json, 65, ("filters.json", "line 1")),
    Case("filter-file-not-a-map", "participant", _filter_wrong_shape, 65, ("filters.json", '{"bold"')),
    Case("filter-file-missing", "participant", _filter_missing, 66, ("filters.json", "does not exist")),
    Case("filters-select-nothing", "participant", _task_selects_nothing, 18, ("task=", "check the")),
    Case("fmriprep-missing", "participant", _fmriprep_missing, 66, ("fmriprep", "-d fmriprep=PATH")),
    Case("fmriprep-other-space", "participant", _other_space_only, 66, ("T1w", "--output-spaces")),
    Case("mask-bold-grid-mismatch", "participant", _mask_other_grid, 65, ("brain_mask", "use the mask")),
    Case("mask-missing", "participant", _mask_missing, 66, ("sub-01_task-rest", "brain_mask")),
    Case("confounds-missing", "participant", _confounds_missing, 66, ("sub-01", "confounds_timeseries")),
    Case("confounds-row-mismatch", "participant", _confounds_rows, 65, ("confounds_timeseries", "same")),
    Case("repetition-time-missing", "participant", _tr_missing, 65, ("preproc_bold", "add it")),
    Case("bold-3d", "participant", _bold_3d, 65, ("preproc_bold", "4D BOLD")),
    Case("bold-truncated-gzip", "participant", _bold_truncated, 65, ("preproc_bold", "re-copy")),
    Case("bold-nan", "participant", _bold_with(np.nan), 65, ("preproc_bold", "NaN or Inf", "check")),
    Case("bold-inf", "participant", _bold_with(np.inf), 65, ("preproc_bold", "NaN or Inf", "check")),
    Case("atlas-aal3v2-absent", "participant", _aal_absent, 66, ("empty_nilearn_data", "neurossm-app-fetch")),
    Case("group-no-participant-outputs", "group", _no_participant_outputs, 66, ("empty_out", "participant")),
    Case("group-label-column-missing", "group", _label_column_missing, 65, ("participants.tsv", "'sex'")),
    Case("group-participants-tsv-missing", "group", _participants_missing, 66, ("participants.tsv", "--")),
    Case("group-single-class", "group", _single_class, 65, ("only one class", "--target")),
    Case("group-fewer-subjects-than-folds", "group", _fewer_subjects_than_folds, 64, ("8", "--folds")),
    Case("group-runs-shorter-than-window", "group", _runs_shorter_than_window, 65, ("120", "--dynamic-")),
    Case("group-damaged-timeseries", "group", _damaged_timeseries, 65, ("sub-03", "re-run")),
    Case("group-corrupt-checkpoint", "group", _corrupt_checkpoint, 65, ("fold-0_seed-0", "re-run")),
]


@pytest.fixture(scope="module")
def broken_base(tmp_path_factory, atlas_cache) -> Path:
    """The dataset each participant case copies: four subjects of 60 volumes."""
    # nipype binds its log handler to the sys.stderr of its first import: make that the real one,
    # not a capsys buffer that a later test would find closed.
    import nipype.pipeline.engine  # noqa: F401

    return make_synthetic(tmp_path_factory.mktemp("base") / "ds", atlas_cache, subjects=4, volumes=60, seed=3)


@pytest.fixture(scope="module")
def group_base(tmp_path_factory) -> Path:
    """Participant-level outputs each group case copies: eight subjects (4 F, 4 M) of 70 volumes."""
    root = tmp_path_factory.mktemp("group_base")
    write_participant_outputs(root, n_subjects=8, n_volumes=70, seed=3)
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every internet connection of this process (nothing may be downloaded at run time)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(101, "network access blocked by the test")

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse(self, address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, broken_base, group_base, tmp_path, capsys, no_network):
    if case.level == "participant":
        ds = copy_dataset(broken_base, tmp_path / "ds")
        setup = case.breaks(ds, tmp_path)
        # 60 volumes at TR 0.72 s: with the 0.01-0.1 Hz band-pass 36P would be refused for its
        # degrees of freedom before the broken file is read
        extra = ["--skip-bids-validation", "-w", str(tmp_path / "work"), "--nprocs", "1"]
        extra += ["--low-pass", "none"]
    else:
        root = copy_dataset(group_base, tmp_path / "root")
        setup = case.breaks(root, tmp_path)
        extra = []
    before_inputs = {str(p): tree_digest(p) for p in setup.inputs}
    before_outputs = files_under(setup.out)
    capsys.readouterr()

    code = main([str(setup.bids), str(setup.out), case.level, *setup.args, *extra])

    err = capsys.readouterr().err
    line = error_line(err)
    assert len(err.strip().splitlines()) == 1, err
    assert code == case.code, line
    assert line.startswith("neurossm-app: error: "), line
    for text in case.says:
        assert text in line, f"{text!r} not in {line!r}"
    for root, before in before_inputs.items():
        after = tree_digest(Path(root))
        assert {name: after.get(name) for name in before} == before, f"files under {root} were changed"
        if Path(root) != setup.out:
            assert set(after) == set(before), f"new files under {root}: {set(after) - set(before)}"
    new = files_under(setup.out) - before_outputs
    if setup.out == setup.bids or setup.bids in setup.out.parents:
        assert not setup.out.exists() or setup.out == setup.bids
    # What a refused call may leave: its log (the group run's, or a participant call's once its
    # checks passed), and the series cache of inputs that were read whole (group/.cache: complete
    # files or a lock, safe to delete, docs/outputs.md)
    allowed = re.compile(
        r"group/[^/]+/logs/[^/]+\.log|logs/\d{8}T\d{6}_participant(_sub-[^_/]+)?_\d+\.log|group/\.cache/[^/]+"
    )
    assert not [name for name in new if not allowed.fullmatch(name)], f"left behind: {sorted(new)}"
    if not case.id.startswith("atlas-"):  # an absent atlas may be looked for online (atlases.py)
        assert not no_network, f"tried to connect: {no_network}"


def test_schaefer_absent_offline(broken_base, tmp_path):
    """An empty TEMPLATEFLOW_HOME (read at import, so in a fresh process) and no network: exit 66."""
    ds = copy_dataset(broken_base, tmp_path / "ds")
    before = tree_digest(ds)
    empty = tmp_path / "empty_templateflow"
    empty.mkdir()
    env, _ = no_network_env(Path(os.environ["NILEARN_DATA"]).parent, tmp_path, TEMPLATEFLOW_HOME=str(empty))
    out = tmp_path / "out"
    args = [ds, out, "participant", "--participant-label", "01", "--skip-bids-validation"]
    result = run_cli([*args, "-w", tmp_path / "work", "--nprocs", "1"], env)
    line = error_line(result.stderr)
    assert result.returncode == 66, result.stderr
    assert "Schaefer2018" in line and str(empty) in line and "neurossm-app-fetch --atlas schaefer400" in line
    assert tree_digest(ds) == before
    assert not files_under(out)


def _table_rows(section: str) -> dict[str, int]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text()
    body = text.split(section, 1)[1]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (\d+) \|", body, flags=re.MULTILINE)
    return {case: int(code) for case, code in rows}


def test_troubleshooting_lists_every_case():
    """docs/troubleshooting.md's table of this suite names every case with its exit code."""
    documented = _table_rows("## Cases the test suite checks")
    expected = {c.id: c.code for c in CASES} | {"atlas-schaefer400-absent": 66}
    assert {case: documented.get(case) for case in expected} == expected
