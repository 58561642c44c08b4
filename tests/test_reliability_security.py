"""Security: no unpickling of user data, no network at run time, no path escapes from OUTPUT_DIR.

The container's non-root ``USER`` is checked statically by
``tests/test_containers.py::test_runs_as_non_root_user`` (not repeated here), and the legacy
importer's ``--allow-pickle`` path (a restricted unpickler, refused without the flag) by
``tests/test_legacy.py::test_pickle_and_object_arrays_need_allow_pickle``,
``test_restricted_unpickler_refuses_code_even_with_allow_pickle`` (the gadgets: ``DataFrame.to_csv``
under a dotted name, ``builtins.getattr`` chains, ``numpy.load``, ``pandas.read_pickle``,
``os.system``, each shown to work unrestricted and refused through the CLI without running),
``test_restricted_unpickler_rebuilds_numpy_and_pandas_data`` and
``test_allowed_globals_are_exact_names_of_classes_and_reconstructors``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from neurossm_app.cli import main
from neurossm_app.errors import DataError
from neurossm_app.group.checkpoints import file_sha256, load_neurossm
from tests.test_group_fakedata import write_participant_outputs
from tests.test_reliability_common import TINY_GROUP, error_line, no_network_env, run_cli

PACKAGE = Path(__file__).resolve().parents[1] / "neurossm_app"

# Calls that run code named inside a file. Allowed only where listed (the legacy importer's
# restricted unpickler, reached only with --allow-pickle).
UNSAFE = {
    "pickle.load/loads": re.compile(r"\b(c?pickle|_pickle)\.loads?\("),
    "an Unpickler": re.compile(r"\bUnpickler\b"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "pandas.read_pickle": re.compile(r"\bread_pickle\("),
    "joblib/dill/cloudpickle/shelve/marshal": re.compile(
        r"^\s*(import|from)\s+(joblib|dill|cloudpickle|shelve|marshal)\b", re.MULTILINE
    ),
}
ALLOWED = {("legacy/load.py", "an Unpickler"), ("legacy/load.py", "allow_pickle=True")}


class _Payload:
    """Unpickling this creates a folder: proof that a file's code ran."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.makedirs, (self.sentinel,))


def _calls(source: str, name: str) -> list[str]:
    """The full text of every ``name(...)`` call in ``source`` (balanced parentheses)."""
    found = []
    for match in re.finditer(re.escape(name) + r"\(", source):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(source)):
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            if depth == 0:
                break
        found.append(source[match.start() : end + 1])
    return found


def test_nothing_unpickles_user_data():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE))
        source = path.read_text()
        for what, pattern in UNSAFE.items():
            if pattern.search(source) and (name, what) not in ALLOWED:
                problems.append(f"{name}: {what}")
        for call in _calls(source, "torch.load"):
            if not re.search(r"weights_only\s*=\s*True", call):
                problems.append(f"{name}: {call} without weights_only=True")
    assert not problems, problems
    # The one allowed unpickler is the restricted one, and only behind allow_pickle.
    legacy = (PACKAGE / "legacy" / "load.py").read_text()
    assert "class RestrictedUnpickler(pickle.Unpickler)" in legacy and "def find_class" in legacy


def test_pickle_in_place_of_a_checkpoint_is_refused(tmp_path, capsys):
    bids, out = write_participant_outputs(tmp_path, n_subjects=8, n_volumes=70, seed=6)
    args = [str(bids), str(out), "group", *TINY_GROUP]
    assert main([*args, "--fold", "0", "--seed", "0"]) == 0
    run = out / "group" / "hcp-rest"
    checkpoint = run / "checkpoints" / "model-neurossm_fold-0_seed-0.safetensors"
    sentinel = tmp_path / "code_ran"
    torch.save({"weights": torch.zeros(3), "payload": _Payload(sentinel)}, checkpoint)  # a pickle
    capsys.readouterr()

    # The group level refuses it (hash) without reading it.
    assert main(args) == 65
    line = error_line(capsys.readouterr().err)
    assert str(checkpoint) in line and "SHA-256" in line and "re-run" in line
    assert not sentinel.exists()

    # Even with the recorded hashes forged to match, the weights loader reads safetensors only.
    meta = checkpoint.with_suffix(".json")
    marker = run / "units" / "fold-0_seed-0" / "unit.json"
    for path, key in ((meta, "sha256"), (marker, "checkpoint_sha256")):
        data = json.loads(path.read_text())
        data[key] = file_sha256(checkpoint)
        path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="safetensors cannot read it"):
        load_neurossm(checkpoint)
    assert not sentinel.exists()
    main(args)  # aggregation reads hashes and tables, never the weights
    assert not sentinel.exists()


def test_network_block_works(tmp_path):
    """The harness the offline tests rely on refuses connections (else they would prove nothing)."""
    env, netlog = no_network_env(tmp_path, tmp_path)
    code = "import socket; socket.create_connection(('pypi.org', 443), timeout=5)"
    result = subprocess.run(["python", "-c", code], env=env, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "blocked by the test harness" in result.stderr
    assert "pypi.org" in netlog.read_text()


def test_both_levels_run_without_network(rest_dataset, tmp_path, atlas_cache):
    """Participant (MultiProc workers included) and group level, every connection refused."""
    env, netlog = no_network_env(atlas_cache, tmp_path)
    out = tmp_path / "out"
    args = [rest_dataset, out, "participant", "--skip-bids-validation", "-w", tmp_path / "work"]
    participant = run_cli([*args, "--nprocs", "2", "--low-pass", "none"], env)
    assert participant.returncode == 0, participant.stderr[-3000:]
    assert len(list(out.glob("sub-*/func/*_timeseries.json"))) == 4
    group = run_cli([rest_dataset, out, "group", *TINY_GROUP, "--epochs", "1"], env)
    assert group.returncode == 0, group.stderr[-3000:]
    assert (out / "group" / "hcp-rest" / "summary.json").is_file()
    assert not netlog.exists(), netlog.read_text()


@pytest.mark.parametrize("level", ["participant", "group"])
@pytest.mark.parametrize("label", ["../x", "01/../../x", "sub-../../x", "/etc"])
def test_participant_label_cannot_escape(tmp_path, capsys, level, label):
    bids, out = write_participant_outputs(tmp_path, n_subjects=4, n_volumes=40, seed=1)
    before = {p for p in tmp_path.rglob("*")}
    assert main([str(bids), str(out), level, "--participant-label", label, "--skip-bids-validation"]) == 64
    assert "letters and digits" in error_line(capsys.readouterr().err)
    assert {p for p in tmp_path.rglob("*")} == before


@pytest.mark.parametrize("name", ["../../x", "..", ".", "a/b", "/tmp/neurossm-escape"])
def test_run_name_cannot_escape(tmp_path, capsys, name):
    bids, out = write_participant_outputs(tmp_path, n_subjects=8, n_volumes=40, seed=1)
    before = {p for p in tmp_path.rglob("*")}
    assert main([str(bids), str(out), "group", *TINY_GROUP, "--run-name", name]) == 64
    assert "--run-name" in error_line(capsys.readouterr().err)
    assert {p for p in tmp_path.rglob("*")} == before
    assert not Path("/tmp/neurossm-escape").exists()


def test_class_label_cannot_escape(tmp_path, capsys):
    """A participants.tsv value like ``../../evil`` (a class label) never becomes a path."""
    bids, out = write_participant_outputs(tmp_path, n_subjects=8, n_volumes=40, seed=1)
    table = bids / "participants.tsv"
    pd.read_csv(table, sep="\t").replace({"sex": {"F": "../../evil"}}).to_csv(table, sep="\t", index=False)
    before = {p for p in tmp_path.rglob("*")}
    code = main([str(bids), str(out), "group", *TINY_GROUP])
    run, cache = out / "group" / "hcp-rest", out / "group" / ".cache"  # the series cache: named by hashes
    new = {p for p in tmp_path.rglob("*")} - before
    kept = (run, run.parent, cache)
    outside = [p for p in new if run not in p.parents and cache not in p.parents and p not in kept]
    assert not outside, outside
    assert not [p for p in new if "evil" in p.name], "a class label became a file name unsanitized"
    if code != 0:  # refusing such a label is fine too, with one line naming it
        assert code in (64, 65) and "evil" in error_line(capsys.readouterr().err)


def test_class_labels_that_share_a_file_name_are_refused(tmp_path, capsys):
    """``../../evil`` and ``evil`` both become ``label-evil``: one would overwrite the other's maps."""
    bids, out = write_participant_outputs(tmp_path, n_subjects=8, n_volumes=40, seed=1)
    table = bids / "participants.tsv"
    frame = pd.read_csv(table, sep="\t")
    frame["sex"] = ["../../evil", "evil"] * 4
    frame.to_csv(table, sep="\t", index=False)
    assert main([str(bids), str(out), "group", *TINY_GROUP]) == 65
    line = error_line(capsys.readouterr().err)
    assert "'../../evil' and 'evil'" in line and "label-evil" in line and "rename" in line
    assert not (out / "group").exists()
