"""The selective scan against an independent float64 sequential reference.

Relative error here is ``max|ours - ref| / max|ref|`` over a whole tensor (the output or
one gradient), which stays meaningful when individual reference entries are near zero.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from neurossm_app.model import scan as scan_mod
from neurossm_app.model.scan import selective_scan, selective_scan_torch

# A kernel that failed to compile would fall back to torch with a RuntimeWarning and pass
# silently; make that an error here (the fallback test expects the warning explicitly).
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max|ours - ref| / max|ref| (in float64)."""
    ours, ref = ours.double(), ref.double()
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence written out step by step in float64, one state update per time step.

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,  y_t = C_t h_t + D u_t,  out_t = y_t silu(z_t)
    """
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    dt = delta if delta_bias is None else delta + delta_bias.double()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64)  # (B, D, N)
    ys = []
    for t in range(u.shape[2]):
        dt_t = dt[:, :, t, None]  # (B, D, 1)
        h = torch.exp(dt_t * A) * h + dt_t * B[:, None, :, t] * u[:, :, t, None]
        y = (h * C[:, None, :, t]).sum(-1)  # (B, D)
        if D is not None:
            y = y + D.double() * u[:, :, t]
        ys.append(y)
    out = torch.stack(ys, dim=-1)  # (B, D, L)
    if z is not None:
        out = out * F.silu(z.double())
    return out


def make_inputs(batch, dim, d_state, length, softplus, seed=0, dtype=torch.float32):
    """Random Mamba-like inputs; unequal sizes so that axis mix-ups fail."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    u = randn(batch, dim, length)
    if softplus:
        delta = randn(batch, dim, length) * 0.5 - 2.0
    else:
        delta = torch.rand(batch, dim, length, generator=g, dtype=torch.float64) * 0.2 + 1e-3
    A = -torch.exp(randn(dim, d_state) * 0.5)
    B = randn(batch, d_state, length)
    C = randn(batch, d_state, length)
    D = randn(dim)
    z = randn(batch, dim, length)
    delta_bias = randn(dim) * 0.3
    return {k: v.to(dtype) for k, v in zip(NAMES, (u, delta, A, B, C, D, z, delta_bias), strict=True)}


def run_with_grads(fn, inputs, used, softplus, seed=1):
    """Output and gradients of <out, w> for a fixed random w, w.r.t. the used inputs."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if k in used}
    out = fn(**leaves, delta_softplus=softplus)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (out.double() * w).sum().backward()
    return out.detach(), {k: v.grad for k, v in leaves.items()}


OPTIONAL = [(), ("D",), ("z",), ("delta_bias",), ("D", "z", "delta_bias")]


@pytest.mark.parametrize("optional", OPTIONAL, ids=lambda o: "+".join(o) or "bare")
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_matches_reference_forward_and_backward(backend, softplus, optional):
    inputs = make_inputs(3, 19, 7, 53, softplus)
    used = {"u", "delta", "A", "B", "C", *optional}
    ref_out, ref_grads = run_with_grads(reference_scan, inputs, used, softplus)
    out, grads = run_with_grads(lambda **kw: selective_scan(**kw, backend=backend), inputs, used, softplus)
    assert out.shape == (3, 19, 53) and out.dtype == torch.float32
    assert rel_err(out, ref_out) < 1e-5
    assert set(grads) == used
    for name in used:
        assert grads[name].shape == inputs[name].shape, name
        assert rel_err(grads[name], ref_grads[name]) < 1e-5, name


@pytest.mark.parametrize("length", [1, 2, 3, 17, 64, 255, 1000])
def test_cpu_lengths(length):
    inputs = make_inputs(2, 21, 5, length, True, seed=length)
    used = set(NAMES)
    ref_out, ref_grads = run_with_grads(reference_scan, inputs, used, True)
    out, grads = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inputs, used, True)
    assert rel_err(out, ref_out) < 1e-5
    for name in used:
        assert rel_err(grads[name], ref_grads[name]) < 1e-5, name


def test_cpu_long_sequence_float32_error_bound():
    """The acceptance bound: relative error < 1e-5 in float32 at L = 2048, output and grads."""
    inputs = make_inputs(2, 18, 16, 2048, True, seed=7)
    used = set(NAMES)
    ref_out, ref_grads = run_with_grads(reference_scan, inputs, used, True)
    out, grads = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inputs, used, True)
    errors = {"out": rel_err(out, ref_out)}
    errors.update({k: rel_err(grads[k], ref_grads[k]) for k in used})
    assert max(errors.values()) < 1e-5, errors


def test_cpu_single_batch_uses_channel_groups():
    # batch 1 splits the channels into several groups (partial sums of dB and dC).
    inputs = make_inputs(1, 50, 6, 40, True, seed=3)
    used = set(NAMES)
    ref_out, ref_grads = run_with_grads(reference_scan, inputs, used, True)
    out, grads = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inputs, used, True)
    assert rel_err(out, ref_out) < 1e-5
    for name in used:
        assert rel_err(grads[name], ref_grads[name]) < 1e-5, name


def test_cpu_float64_is_exact():
    inputs = make_inputs(2, 17, 4, 30, True, seed=5, dtype=torch.float64)
    used = set(NAMES)
    ref_out, ref_grads = run_with_grads(reference_scan, inputs, used, True)
    out, grads = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inputs, used, True)
    assert out.dtype == torch.float64
    assert rel_err(out, ref_out) < 1e-12
    for name in used:
        assert rel_err(grads[name], ref_grads[name]) < 1e-12, name


def test_cpu_matches_torch_backend():
    inputs = make_inputs(4, 33, 16, 300, True, seed=11)
    used = set(NAMES)
    out_cpu, g_cpu = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inputs, used, True)
    out_t, g_t = run_with_grads(selective_scan_torch, inputs, used, True)
    assert rel_err(out_cpu, out_t) < 1e-5
    for name in used:
        assert rel_err(g_cpu[name], g_t[name]) < 1e-5, name


def test_cpu_respects_torch_thread_count():
    inputs = make_inputs(2, 20, 4, 20, False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out1 = selective_scan(**{k: inputs[k] for k in ("u", "delta", "A", "B", "C")}, backend="cpu")
        import numba

        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    out2 = selective_scan(**{k: inputs[k] for k in ("u", "delta", "A", "B", "C")}, backend="cpu")
    assert torch.equal(out1, out2)


def test_fallback_warns_once_and_uses_torch(monkeypatch):
    def broken():
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(scan_mod, "_load_kernels", broken)
    monkeypatch.setattr(scan_mod, "_KERNELS", None)
    monkeypatch.setattr(scan_mod, "_KERNEL_ERROR", None)
    monkeypatch.setattr(scan_mod, "_WARNED", False)
    inputs = make_inputs(2, 9, 3, 12, True)
    with pytest.warns(RuntimeWarning, match="falling back to the slower PyTorch scan"):
        out = selective_scan(**inputs, delta_softplus=True, backend="cpu")
    assert not scan_mod.cpu_kernels_available()
    assert scan_mod.resolve_backend("auto", torch.device("cpu")) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        again = selective_scan(**inputs, delta_softplus=True, backend="auto")
    expected = selective_scan_torch(**inputs, delta_softplus=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_auto_picks_cpu_kernel_on_cpu():
    assert scan_mod.resolve_backend("auto", torch.device("cpu")) == "cpu"


def test_bad_arguments_are_explained():
    inputs = make_inputs(2, 9, 3, 12, False)
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(**inputs, backend="gpu")
    with pytest.raises(ValueError, match="needs tensors on a GPU"):
        selective_scan(**inputs, backend="cuda")
    bad = dict(inputs, B=inputs["B"].transpose(1, 2))
    with pytest.raises(ValueError, match=r"B must be \(batch, d_state, length\)"):
        selective_scan(**bad)
    with pytest.raises(ValueError, match=r"A must be \(dim=9, d_state\)"):
        selective_scan(**dict(inputs, A=inputs["A"].T))
