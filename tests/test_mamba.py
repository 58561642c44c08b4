"""The Mamba block: mamba_ssm's parameters, back-end agreement, step-by-step semantics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from neurossm_app.model.mamba import Mamba

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def mamba_ssm_parameter_table(d_model, d_state=16, d_conv=4, expand=2):
    """Names and shapes of ``mamba_ssm.Mamba(d_model)``'s parameters (defaults: bias=False,
    conv_bias=True), written out from ``mamba_ssm/modules/mamba_simple.py``."""
    d_inner = expand * d_model
    dt_rank = math.ceil(d_model / 16)
    return {
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


@pytest.mark.parametrize("d_model", [64, 128])
def test_parameter_names_and_shapes_match_mamba_ssm(d_model):
    m = Mamba(d_model)
    got = {name: tuple(p.shape) for name, p in m.named_parameters()}
    assert got == mamba_ssm_parameter_table(d_model)
    # state_dict has exactly the same entries (no buffers of our own)
    assert set(m.state_dict()) == set(got)


def test_initialisation_follows_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(48, d_state=8, dt_min=0.002, dt_max=0.05)
    assert m.dt_rank == 3 and m.d_inner == 96
    expected_a = torch.arange(1, 9, dtype=torch.float32).log().expand(96, 8)
    torch.testing.assert_close(m.A_log.detach(), expected_a)
    assert m.A_log.dtype == torch.float32 and m.A_log._no_weight_decay
    torch.testing.assert_close(m.D.detach(), torch.ones(96))
    assert m.D._no_weight_decay and m.dt_proj.bias._no_reinit
    dt = F.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    bound = 3**-0.5
    assert m.dt_proj.weight.abs().max() <= bound
    assert m.in_proj.bias is None and m.out_proj.bias is None
    assert m.conv1d.groups == 96 and m.conv1d.padding == (3,)
    const = Mamba(32, dt_init="constant", dt_scale=2.0)
    torch.testing.assert_close(const.dt_proj.weight.detach(), torch.full((64, 2), 2 * 2**-0.5))
    with pytest.raises(ValueError, match="dt_init must be"):
        Mamba(32, dt_init="kaiming")


def test_state_dict_round_trip_gives_same_outputs():
    torch.manual_seed(1)
    a, b = Mamba(40, d_state=6), Mamba(40, d_state=6)
    x = torch.randn(3, 29, 40)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_cpu_and_torch_backends_agree():
    torch.manual_seed(2)
    m = Mamba(36, d_state=5, d_conv=3, backend="cpu")
    x = torch.randn(3, 41, 36, requires_grad=True)
    out_cpu = m(x)
    g_cpu = torch.autograd.grad(out_cpu.square().sum(), [x, *m.parameters()])
    m.backend = "torch"
    out_t = m(x)
    g_t = torch.autograd.grad(out_t.square().sum(), [x, *m.parameters()])
    torch.testing.assert_close(out_cpu, out_t, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_cpu, g_t, strict=True):
        scale = b.abs().max()
        assert (a - b).abs().max() <= 1e-5 * scale


def reference_step_by_step(m: Mamba, hidden_states: torch.Tensor) -> torch.Tensor:
    """``mamba_ssm.Mamba.step`` semantics, one token at a time, in float64.

    The conv state is the last ``d_conv`` inputs of the convolution (zeros at the start), the
    SSM state is ``(B, d_inner, d_state)``; written independently of our module's forward.
    """
    p = {k: v.detach().double() for k, v in m.state_dict().items()}
    batch, length, _ = hidden_states.shape
    conv_state = torch.zeros(batch, m.d_inner, m.d_conv, dtype=torch.float64)
    ssm_state = torch.zeros(batch, m.d_inner, m.d_state, dtype=torch.float64)
    A = -torch.exp(p["A_log"])  # (d_inner, d_state)
    outs = []
    for t in range(length):
        xz = hidden_states[:, t].double() @ p["in_proj.weight"].T  # (B, 2 d_inner)
        x, z = xz.chunk(2, dim=-1)
        conv_state = torch.roll(conv_state, shifts=-1, dims=-1)
        conv_state[:, :, -1] = x
        x = (conv_state * p["conv1d.weight"][:, 0]).sum(-1) + p["conv1d.bias"]
        x = F.silu(x)
        x_db = x @ p["x_proj.weight"].T
        dt, B, C = torch.split(x_db, [m.dt_rank, m.d_state, m.d_state], dim=-1)
        dt = F.softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])  # (B, d_inner)
        dA = torch.exp(dt[:, :, None] * A)
        dB = dt[:, :, None] * B[:, None, :]
        ssm_state = ssm_state * dA + x[:, :, None] * dB
        y = (ssm_state * C[:, None, :]).sum(-1) + p["D"] * x
        y = y * F.silu(z)
        outs.append(y @ p["out_proj.weight"].T)
    return torch.stack(outs, dim=1)  # (B, L, d_model)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_forward_matches_step_by_step_decoding(backend):
    torch.manual_seed(3)
    m = Mamba(24, d_state=7, d_conv=4, backend=backend)
    with torch.no_grad():  # move away from the symmetric init so mix-ups show
        m.A_log.add_(0.3 * torch.randn_like(m.A_log))
        m.D.add_(0.5 * torch.randn_like(m.D))
        m.conv1d.bias.normal_()
    x = torch.randn(2, 37, 24)
    expected = reference_step_by_step(m, x)
    got = m(x).double()
    assert ((got - expected).abs().max() / expected.abs().max()) < 1e-5


def test_causal():
    torch.manual_seed(4)
    m = Mamba(16, d_state=4)
    x = torch.randn(2, 20, 16)
    y = m(x)
    x2 = x.clone()
    x2[:, 12:] = torch.randn(2, 8, 16)
    torch.testing.assert_close(m(x2)[:, :12], y[:, :12])


def test_cuda_backend_explains_missing_gpu():
    m = Mamba(16, backend="cuda")
    with pytest.raises(ValueError, match="needs tensors on a GPU"):
        m(torch.randn(1, 5, 16))
