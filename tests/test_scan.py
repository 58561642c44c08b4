"""The selective scan against an independent float64 sequential reference.

Relative error here is ``max|ours - ref| / max|ref|`` over a whole tensor (the output or
one gradient), which stays meaningful when individual reference entries are near zero.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numba
import pytest
import torch
import torch.nn.functional as F

from neurossm_app.model import backends
from neurossm_app.model import scan as scan_mod
from neurossm_app.model.backends import OptionalKernels
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


def test_cpu_channel_sums_of_db_dc_accumulate_in_float64():
    """dB and dC sum over channels; at L = 4096 a float32 sum loses what cancellation leaves.

    Channels 32-47 repeat channels 0-15 with ``u`` negated, so their dB and dC terms cancel
    exactly and the gradient is what channels 16-31 (``u`` 1e-4 as large) add. A float32
    accumulator rounds that to the large terms' precision: 4.6e-4 relative error in dB with the
    float32 accumulators this kernel had; 1.5e-7 (dB) and 2.2e-7 (dC) in float64. Batch 2 and
    one thread keep the three blocks in one channel group, so the sum runs in the kernel, not
    in the caller's float64 reduction.
    """
    inputs = make_inputs(2, 48, 4, 4096, True, seed=3)
    for name in ("delta", "z"):
        inputs[name][:, 32:48] = inputs[name][:, 0:16]
    for name in ("A", "D", "delta_bias"):
        inputs[name][32:48] = inputs[name][0:16]
    inputs["u"][:, 32:48] = -inputs["u"][:, 0:16]
    inputs["u"][:, 16:32] *= 1e-4
    w = torch.randn(2, 48, 4096, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w[:, 32:48] = w[:, 0:16]

    def grads(fn, dtype):
        leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in inputs.items()}
        (fn(**leaves, delta_softplus=True).double() * w).sum().backward()
        return {k: v.grad for k, v in leaves.items()}

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ours = grads(lambda **kw: selective_scan(**kw, backend="cpu"), torch.float32)
    finally:
        torch.set_num_threads(before)
    ref = grads(selective_scan_torch, torch.float64)  # the torch loop, all in float64
    for name in ("B", "C"):
        assert rel_err(ours[name], ref[name]) < 1e-5, (name, rel_err(ours[name], ref[name]))


def test_softplus_above_20_is_the_identity_as_in_torch():
    """delta + delta_bias spans 10 to 30: both sides of the threshold of 20 above which
    torch's softplus (the forward here, and the reference) and the kernels' derivative
    (``xv <= 20`` in the backward) are the identity."""
    inputs = make_inputs(2, 19, 5, 40, True, seed=9)
    inputs["delta"] = torch.linspace(-10.0, 10.0, 2 * 19 * 40).reshape(2, 19, 40)
    inputs["delta_bias"] = torch.full((19,), 20.0)
    inputs["A"] = -torch.rand(19, 5, generator=torch.Generator().manual_seed(2)) * 0.05  # slow decay
    assert (inputs["delta"] + 20.0 > 20.0).float().mean() == pytest.approx(0.5, abs=0.01)
    used = set(NAMES)
    ref_out, ref_grads = run_with_grads(reference_scan, inputs, used, True)  # F.softplus, float64
    for backend in ("cpu", "torch"):
        out, grads = run_with_grads(
            lambda backend=backend, **kw: selective_scan(**kw, backend=backend), inputs, used, True
        )
        assert rel_err(out, ref_out) < 1e-5, backend
        for name in used:
            assert rel_err(grads[name], ref_grads[name]) < 1e-5, (backend, name)


def test_cpu_scan_bounds_numba_by_torch_threads_and_restores_it(monkeypatch):
    inputs = make_inputs(2, 20, 4, 20, False)
    bare = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    forward, backward = backends.NUMBA_KERNELS.get()
    seen = []

    def recording(kernel):
        def run(*args):
            seen.append(numba.get_num_threads())
            return kernel(*args)

        return run

    probe = OptionalKernels("recording kernels", lambda: (recording(forward), recording(backward)))
    monkeypatch.setattr(backends, "NUMBA_KERNELS", probe)
    torch_before, numba_before = torch.get_num_threads(), numba.get_num_threads()
    try:
        torch.set_num_threads(1)
        leaves = {k: v.clone().requires_grad_() for k, v in bare.items()}
        out1 = selective_scan(**leaves, backend="cpu")
        out1.sum().backward()
        assert seen == [1, 1]  # forward and backward ran on torch's one thread
        assert numba.get_num_threads() == numba_before  # ... and numba's own setting is back
    finally:
        torch.set_num_threads(torch_before)
    out2 = selective_scan(**bare, backend="cpu")
    torch.testing.assert_close(out1.detach(), out2, rtol=0, atol=0)


def test_loading_the_kernels_leaves_the_process_as_it_was():
    """In a fresh process: numba's first load sets no environment variable, and torch keeps
    its thread count (starting numba's OpenMP pool resets the shared count; it is put back)."""
    code = textwrap.dedent(
        """
        import os, torch
        torch.set_num_threads(1)
        torch.ones(64, 64) @ torch.ones(64, 64)  # torch's OpenMP runtime is initialised
        from neurossm_app.model.scan import selective_scan
        env = dict(os.environ)
        u = torch.randn(2, 20, 30)
        selective_scan(u, torch.rand(2, 20, 30), -torch.rand(20, 4), torch.randn(2, 4, 30),
                       torch.randn(2, 4, 30), backend="cpu")
        print(torch.get_num_threads(), dict(os.environ) == env, "NUMBA_NUM_THREADS" in os.environ)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "True", "False"]


def test_fallback_warns_once_and_uses_torch(monkeypatch):
    def broken():
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(backends, "NUMBA_KERNELS", OptionalKernels("numba kernels", broken))
    inputs = make_inputs(2, 9, 3, 12, True)
    with pytest.warns(
        RuntimeWarning, match=r"unavailable \(ImportError: No module named 'numba'\); falling back"
    ):
        out = selective_scan(**inputs, delta_softplus=True, backend="cpu")
    assert not scan_mod.cpu_kernels_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        assert scan_mod.resolve_backend("auto", torch.device("cpu")) == "torch"
        again = selective_scan(**inputs, delta_softplus=True, backend="auto")
    expected = selective_scan_torch(**inputs, delta_softplus=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_torch_backend_computes_in_float32_under_autocast():
    inputs = make_inputs(2, 9, 3, 12, True)
    half = {k: v.to(torch.bfloat16) if k in ("u", "delta", "B", "C", "z") else v for k, v in inputs.items()}
    expected = selective_scan_torch(**{k: v.float() for k, v in half.items()}, delta_softplus=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = selective_scan_torch(**half, delta_softplus=True)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected.to(torch.bfloat16), rtol=0, atol=0)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compile_cpu_kernels_compiles_both_passes_of_the_dtype(dtype):
    """``make venv``'s warm-up (scripts/compile_kernels.py) leaves forward and backward compiled."""
    from neurossm_app.model import backends
    from neurossm_app.model.scan import compile_cpu_kernels

    compile_cpu_kernels(dtype)
    name = str(dtype).removeprefix("torch.")
    for kernel in backends.NUMBA_KERNELS.get():
        assert any(name in str(signature) for signature in kernel.signatures), kernel.signatures
