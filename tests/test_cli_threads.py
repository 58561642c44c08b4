"""``--omp-nthreads`` bounds threads for one command only: the process is given back as it was.

``neurossm_app.cli.main`` runs in the caller's process (a notebook, these tests), so the thread
variables it sets for nipype's workers, threadpoolctl's limits and torch's thread count must be
restored when it returns, whatever the outcome.
"""

from __future__ import annotations

import os

import pytest
import torch
from threadpoolctl import threadpool_info

from neurossm_app import cli
from neurossm_app.cli import THREAD_VARIABLES, main


def _limits() -> dict[str, int]:
    return {info["filepath"]: info["num_threads"] for info in threadpool_info()}


@pytest.fixture
def thread_environment(monkeypatch):
    """Values unlike the one passed on the command line, one variable unset."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    return {var: os.environ.get(var) for var in THREAD_VARIABLES}


def test_participant_command_sets_threads_inside_and_restores_them(tmp_path, monkeypatch, thread_environment):
    seen = {}

    def fake_participant(opts):  # where nipype's MultiProc workers would be started
        seen["environment"] = {var: os.environ.get(var) for var in THREAD_VARIABLES}
        seen["limits"] = set(_limits().values())

    monkeypatch.setattr("neurossm_app.cli.participant.run_participant", fake_participant)
    before = _limits()
    argv = [
        str(tmp_path),
        str(tmp_path / "out"),
        "participant",
        "--omp-nthreads",
        "1",
        "-w",
        str(tmp_path / "w"),
    ]
    assert main(argv) == 0
    assert seen["environment"] == dict.fromkeys(THREAD_VARIABLES, "1")
    assert seen["limits"] <= {1}
    assert {var: os.environ.get(var) for var in THREAD_VARIABLES} == thread_environment
    assert _limits() == before


def test_group_command_restores_environment_and_torch_threads_after_an_error(
    tmp_path, capsys, thread_environment
):
    """The group level sets torch's thread count; it fails here (no inputs) after doing so."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bids = tmp_path / "bids"
        bids.mkdir()
        assert main([str(bids), str(tmp_path / "out"), "group", "--omp-nthreads", "1"]) == 66
        assert "participant` first" in capsys.readouterr().err
        assert {var: os.environ.get(var) for var in THREAD_VARIABLES} == thread_environment
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(torch_threads)


def test_limit_threads_restores_after_an_exception(thread_environment):
    with pytest.raises(RuntimeError, match="inside"), cli.limit_threads(1):
        assert os.environ["MKL_NUM_THREADS"] == "1"
        raise RuntimeError("inside")
    assert {var: os.environ.get(var) for var in THREAD_VARIABLES} == thread_environment
