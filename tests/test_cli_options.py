"""What ``neurossm-app``'s option handling tells a user: honest help, one sentence per mistake."""

from __future__ import annotations

import re

import pytest

from neurossm_app.cli import main
from neurossm_app.cli.parser import build_parser


def _help() -> str:
    return re.sub(r"\s+", " ", build_parser().format_help())


def test_flags_show_no_default_of_their_destination():
    """A flag stores a constant; argparse would print the destination's default (True for
    ``--no-detrend``), which reads as if the flag were on by default."""
    text = _help()
    assert "(default: True)" not in text and "(default: False)" not in text
    assert (
        "--no-detrend do not remove a linear trend before filtering (default: the trend is removed)" in text
    )
    assert "shows tracebacks on errors (default" not in text  # -v counts; no "(default: 0)"
    for action in build_parser()._actions:
        if action.nargs == 0 and action.help and "(default:" in action.help:
            assert "True" not in action.help and "False" not in action.help, action.option_strings
    # options with values still show theirs
    assert "fMRIPrep confounds regressed out (default: 36P)" in text


@pytest.mark.parametrize("inside", [False, True], ids=["file", "under-a-file"])
def test_work_dir_that_is_a_file_exits_73_with_one_sentence(tmp_path, capsys, inside):
    regular = tmp_path / "work.txt"
    regular.write_text("not a folder")
    work = regular / "sub" if inside else regular
    argv = [str(tmp_path), str(tmp_path / "out"), "participant", "--skip-bids-validation", "-w", str(work)]
    assert main(argv) == 73
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and "Errno" not in err[0]
    assert f"-w/--work-dir {work}" in err[0] and "not a directory; give a folder" in err[0]
    assert regular.read_text() == "not a folder" and not (tmp_path / "out").exists()


def test_work_dir_is_not_checked_at_group_level(tmp_path, capsys):
    """The group level never uses -w: a file there is no reason to stop."""
    regular = tmp_path / "work"
    regular.write_text("")
    bids = tmp_path / "bids"
    bids.mkdir()
    assert main([str(bids), str(tmp_path / "out"), "group", "-w", str(regular)]) == 66
    assert "participant` first" in capsys.readouterr().err
