"""The group level's use of the back-end resolver (issue 25): ``--device cuda`` refuses without
mamba-ssm's kernels, the autocast dtype follows the compute capability, and a unit records the
back end it ran on. No GPU is needed: torch's CUDA queries are patched."""

from __future__ import annotations

import json

import pytest
import torch

from neurossm_app.cli import main
from neurossm_app.errors import EX_UNAVAILABLE, BackendUnavailableError
from neurossm_app.group import train
from neurossm_app.model import backends
from neurossm_app.model.backends import OptionalKernels
from tests.test_group_fakedata import write_participant_outputs


def _broken() -> None:
    raise ImportError("cannot import name 'GreedySearchDecoderOnlyOutput' from 'transformers'")


@pytest.fixture
def gpu_without_kernels(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "MAMBA_SSM", OptionalKernels("mamba-ssm", _broken))


def test_device_cuda_without_kernels_is_an_error(gpu_without_kernels):
    with pytest.raises(BackendUnavailableError, match="GreedySearchDecoderOnlyOutput") as raised:
        train.resolve_device("cuda")
    assert raised.value.exit_code == EX_UNAVAILABLE == 69
    assert "--device auto" in str(raised.value)
    # auto still picks the GPU; the PyTorch scan runs there (with one warning, tested elsewhere)
    assert train.resolve_device("auto").type == "cuda"


def test_device_cuda_without_kernels_exits_69_through_the_cli(gpu_without_kernels, tmp_path, capsys):
    bids, out = write_participant_outputs(tmp_path, n_subjects=6, n_volumes=40)
    argv = [str(bids), str(out), "group", "--target", "participants:sex", "--dynamic-length", "30"]
    assert main([*argv, "--folds", "2", "--epochs", "1", "--device", "cuda"]) == 69
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mamba-ssm's CUDA kernels do not import" in err[0], err
    assert not list((out / "group").glob("*/units/*/unit.json"))


@pytest.mark.parametrize(
    ("capability", "dtype"), [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16)]
)
def test_autocast_dtype_follows_the_compute_capability(monkeypatch, capability, dtype):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # torch >= 2.4 calls emulated bf16 "supported" on Volta/Turing; the choice must not follow it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert train.autocast_dtype(torch.device("cuda")) == dtype
    assert train.autocast_dtype(torch.device("cpu")) is None


def test_a_unit_records_its_scan_back_end(tmp_path):
    bids, out = write_participant_outputs(tmp_path, n_subjects=6, n_volumes=40)
    argv = [str(bids), str(out), "group", "--target", "participants:sex", "--dynamic-length", "30"]
    argv += ["--folds", "2", "--seeds", "0", "--epochs", "1", "--d-model", "8", "--n-layers", "1"]
    assert main([*argv, "--device", "cpu", "--fold", "0", "--seed", "0"]) == 0
    (marker,) = (out / "group").glob("*/units/fold-0_seed-0/unit.json")
    unit = json.loads(marker.read_text())
    expected = backends.backend_summary("cpu", d_state=16, d_conv=4)
    assert unit["scan_backend"] == expected["scan_backend"] in ("cpu", "torch")
    assert unit["conv_backend"] == "torch"
