"""NeuroSSM: shapes, padding invariance, ablation, pathway-input gradients, a planted task."""

from __future__ import annotations

import json

import pytest
import torch

from neurossm_app.model.blocks import (
    BiMambaBlock,
    Pathway,
    flip_valid,
    pool_time,
    temporal_difference,
    time_mask,
)
from neurossm_app.model.neurossm import NeuroSSM, NeuroSSMConfig, config_problems, pathway_names

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

SMALL = {"d_model": 16, "n_layers": 2, "d_state": 4, "d_conv": 3, "expand": 2}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return NeuroSSM(n_rois=7, n_classes=3, **SMALL).eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 7, 23, generator=g)


def test_output_shape_and_pathway_order(model, batch):
    assert model(batch).shape == (4, 3)
    assert model.pathway_names == ("raw_s1", "raw_s2", "raw_s4", "diff_s1", "diff_s2", "diff_s4")
    assert pathway_names(["diff"], [3, 1]) == ("diff_s3", "diff_s1")
    one = NeuroSSM(7, 2, scales=(2,), signals=("diff",), bidirectional=False, **SMALL)
    assert one.pathway_names == ("diff_s2",) and one(batch).shape == (4, 2)


def test_config_round_trip_through_json():
    cfg = NeuroSSMConfig(n_rois=166, n_classes=2, scales=(1, 3), signals=("diff",))
    again = NeuroSSMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.scales, tuple)
    assert "backend" not in cfg.to_dict()
    m = NeuroSSM.from_config(cfg, backend="torch")
    assert m.config == cfg and m.backend == "torch"
    with pytest.raises(ValueError, match="Unknown NeuroSSM configuration keys"):
        NeuroSSMConfig.from_dict({**cfg.to_dict(), "backend": "cpu"})
    with pytest.raises(ValueError, match="signals must be distinct values"):
        NeuroSSMConfig(n_rois=3, n_classes=2, signals=("raw", "deriv"))
    with pytest.raises(ValueError, match="scales must be distinct positive"):
        NeuroSSMConfig(n_rois=3, n_classes=2, scales=(2, 2))


def test_config_problems_are_all_reported_at_once():
    problems = config_problems(d_model=0, d_state=2, scales=(1, 1), signals=("raw",), dropout=1.0)
    assert [(p.field, p.value) for p in problems] == [("d_model", 0), ("scales", (1, 1)), ("dropout", 1.0)]
    assert str(problems[0]) == "d_model must be a positive integer, got 0"
    assert config_problems(d_model=128) == []  # fields not given are not checked
    with pytest.raises(ValueError) as err:
        NeuroSSMConfig(n_rois=0, n_classes=1, expand=0)
    assert str(err.value) == (
        "Invalid NeuroSSM configuration: n_rois must be a positive integer, got 0; expand must be "
        "a positive integer, got 0; n_classes must be an integer of at least 2, got 1."
    )


def test_residual_stream_and_readout_stay_float32_under_autocast(model, batch):
    """As mamba-ssm's residual_in_fp32: only the mixers' insides run in bf16."""
    dtypes = {}

    def record(module, args, output):
        dtypes.setdefault(f"{type(module).__name__} in", set()).add(args[0].dtype)
        dtypes.setdefault(f"{type(module).__name__} out", set()).add(output.dtype)

    for module in model.modules():
        if isinstance(module, (BiMambaBlock, Pathway)):
            module.register_forward_hook(record)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch)
        assert model.pathways["raw_s1"].blocks[0].fwd(torch.randn(2, 5, 16)).dtype == torch.bfloat16
    assert set().union(*dtypes.values()) == {torch.float32}, dtypes  # the blocks' h in and out
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, model(batch), rtol=0.05, atol=0.05)


def test_checkpoint_serves_both_backends(batch):
    torch.manual_seed(2)
    a = NeuroSSM(7, 3, backend="cpu", **SMALL).eval()
    b = NeuroSSM.from_config(a.config, backend="torch").eval()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(batch), b(batch), rtol=1e-5, atol=1e-5)


def test_pooling_and_difference_helpers():
    x = torch.arange(10.0).reshape(1, 1, 10)
    mask = time_mask(torch.tensor([7]), 1, 10, x)
    pooled, pmask = pool_time(x, mask, 4)
    # windows [0..3], [4..6] (7 valid steps -> ceil(7/4) = 2 windows), [8, 9] padding
    torch.testing.assert_close(pooled[0, 0], torch.tensor([1.5, 5.0, 0.0]))
    torch.testing.assert_close(pmask[0], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(temporal_difference(x)[0, 0, :3], torch.tensor([0.0, 1.0, 1.0]))
    h = torch.arange(5.0).reshape(1, 5, 1)
    assert flip_valid(h, torch.tensor([3]))[0, :, 0].tolist() == [2.0, 1.0, 0.0, 3.0, 4.0]


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_padding_changes_nothing(backend):
    torch.manual_seed(3)
    m = NeuroSSM(5, 2, backend=backend, **SMALL).eval()
    g = torch.Generator().manual_seed(4)
    lengths = [19, 7, 12, 1]
    samples = [torch.randn(5, n, generator=g) for n in lengths]
    alone = torch.cat([m(s[None]) for s in samples])
    padded = torch.randn(len(samples), 5, 19, generator=g) * 100  # garbage padding
    for i, s in enumerate(samples):
        padded[i, :, : s.shape[1]] = s
    together = m(padded, lengths=torch.tensor(lengths))
    assert (together - alone).abs().max() < 1e-5


def test_ablation(model, batch):
    base = model(batch)
    for name in model.pathway_names:
        assert not torch.allclose(model(batch, ablate=name), base)
    everything = model(batch, ablate=model.pathway_names)
    other = model(torch.randn_like(batch) * 3, ablate=model.pathway_names)
    torch.testing.assert_close(everything, other, rtol=0, atol=0)
    assert torch.allclose(everything, everything[:1].expand_as(everything))
    with pytest.raises(ValueError, match=r"Cannot ablate unknown pathway\(s\) \['raw_s3'\]"):
        model(batch, ablate="raw_s3")


@pytest.mark.parametrize("input_requires_grad", [False, True])
def test_pathway_inputs_get_gradients(model, batch, input_requires_grad):
    x = batch.clone().requires_grad_(input_requires_grad)
    lengths = torch.tensor([23, 20, 9, 14])
    logits, inputs = model(x, lengths=lengths, return_pathway_inputs=True)
    assert list(inputs) == list(model.pathway_names)
    assert inputs["raw_s1"].shape == (4, 7, 23) and inputs["diff_s4"].shape == (4, 7, 6)
    grads = torch.autograd.grad(logits[:, 1].sum(), list(inputs.values()))
    for name, grad in zip(inputs, grads, strict=True):
        assert grad.shape == inputs[name].shape
        assert grad.abs().sum() > 0, name
    # sample 2 has 9 valid steps: ceil(9 / 2) = 5 valid windows at scale 2
    g2 = grads[model.pathway_names.index("raw_s2")]
    assert g2[2, :, 5:].abs().max() == 0 and g2[2, :, :5].abs().max() > 0


def test_bad_inputs_are_explained(model, batch):
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, n_rois=7, time\)"):
        model(batch[:, :5])
    with pytest.raises(ValueError, match="lengths must be integers"):
        model(batch, lengths=torch.tensor([23, 24, 1, 1]))


def planted_problem(n_per_class=12, n_rois=6, n_time=48, seed=0):
    """Class 1 has a fast transient (a 2-step spike) in ROIs 0-1 at a random time."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n_per_class, n_rois, n_time, generator=g) * 0.5
    y = torch.arange(2).repeat_interleave(n_per_class)
    onsets = torch.randint(4, n_time - 6, (n_per_class,), generator=g)
    for i, t in enumerate(onsets.tolist()):
        x[n_per_class + i, :2, t : t + 2] += 3.0
    x = (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)  # z-score per ROI
    return x, y


def test_tiny_model_overfits_planted_problem():
    torch.manual_seed(0)
    x, y = planted_problem()
    m = NeuroSSM(6, 2, d_model=16, n_layers=1, d_state=4, scales=(1, 2), dropout=0.0)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    accuracy = 0.0
    for _ in range(60):
        opt.zero_grad()
        logits = m(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()
        accuracy = (logits.argmax(1) == y).float().mean().item()
        if accuracy == 1.0:
            break
    m.eval()
    with torch.no_grad():
        assert (m(x).argmax(1) == y).float().mean().item() == 1.0
