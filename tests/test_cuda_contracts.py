"""The ``cuda`` back end without a GPU: mamba-ssm's and causal-conv1d's contracts, and its resolution.

The fakes below stand in for ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` and
``causal_conv1d.causal_conv1d_fn``. Each asserts what the C++ behind the real one checks
(``selective_scan.cpp`` of mamba-ssm 2.3.0, ``causal_conv1d.cpp`` of causal-conv1d 1.6.0: dtypes,
shapes, ``stride(-1) == 1``, ``d_state <= 256``, widths 2 to 4), records how it was called, and
computes the reference result in float32 or better from the inputs as given, casting back to the
input dtype as the kernels do. Forcing the ``cuda`` back end through them on CPU, under bf16
autocast too, runs every line of our CUDA path except the kernels themselves.
"""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from neurossm_app.errors import UsageError
from neurossm_app.group.presets import resolve_settings
from neurossm_app.model import NeuroSSM, backends
from neurossm_app.model import mamba as mamba_mod
from neurossm_app.model import scan as scan_mod
from neurossm_app.model.backends import (
    OptionalKernels,
    autocast_dtype_for_capability,
    backend_summary,
    cuda_backend_status,
    resolve_backend,
)
from neurossm_app.model.mamba import Mamba
from tests.test_scan import reference_scan

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def rel_err(ours: torch.Tensor, ref: torch.Tensor, floor: float = 1e-300) -> float:
    """max|ours - ref| / max|ref| (``floor`` at least, for tensors that are 0 but for round-off)."""
    ours, ref = ours.double(), ref.double()
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(floor)).item()


def grad_errors(ours, ref) -> list[float]:
    """:func:`rel_err` of every gradient, floored at 1e-3 of the largest reference gradient
    (the key projection's bias, for one, has a zero gradient: softmax ignores a common shift)."""
    floor = 1e-3 * max(r.abs().max().item() for r in ref)
    return [rel_err(a, b, floor) for a, b in zip(ours, ref, strict=True)]


def fake_selective_scan_fn(calls: list):
    """``selective_scan_fn`` with the C++ checks of ``selective_scan_fwd`` as assertions."""

    def selective_scan_fn(
        u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
    ):
        batch, dim, length = u.shape
        assert u.dtype in FLOATS and delta.dtype == u.dtype
        assert A.dtype == torch.float32 and A.shape[0] == dim  # real weights
        d_state = A.shape[1]
        assert d_state <= 256
        for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
            if t is not None:
                assert t.stride(-1) == 1, f"{name} must be contiguous in time"
        for name, t in (("B", B), ("C", C)):  # input-dependent: (batch, d_state, L), input dtype
            assert t.shape == (batch, d_state, length) and t.dtype == u.dtype, name
        assert delta.shape == u.shape
        if z is not None:
            assert z.shape == u.shape and z.dtype == u.dtype
        for name, t in (("D", D), ("delta_bias", delta_bias)):
            if t is not None:
                assert t.dtype == torch.float32 and t.shape == (dim,) and t.stride(-1) == 1, name
        assert not return_last_state
        calls.append(
            {
                "dtype": u.dtype,
                "shape": tuple(u.shape),
                "softplus": delta_softplus,
                "z": z is not None,
                "D": D,
                "delta_bias": delta_bias,
            }
        )
        with torch.autocast(u.device.type, enabled=False):
            out = reference_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return out.to(u.dtype)

    return selective_scan_fn


def fake_causal_conv1d_fn(calls: list):
    """``causal_conv1d_fn`` with the C++ checks of ``causal_conv1d_fwd`` as assertions."""

    def causal_conv1d_fn(
        x,
        weight,
        bias=None,
        seq_idx=None,
        initial_states=None,
        return_final_states=False,
        final_states_out=None,
        activation=None,
    ):
        assert x.dim() == 3 and x.dtype in FLOATS and weight.dtype in FLOATS
        _, dim, length = x.shape
        width = weight.shape[-1]
        assert weight.shape == (dim, width) and 2 <= width <= 4
        assert x.stride(2) == 1  # channel-first layout, contiguous in time
        if bias is not None:
            assert bias.dtype == weight.dtype and bias.shape == (dim,) and bias.stride(-1) == 1
        assert activation in (None, "silu", "swish")
        assert seq_idx is None and initial_states is None and not return_final_states
        calls.append({"dtype": x.dtype, "width": width, "activation": activation})
        with torch.autocast(x.device.type, enabled=False):
            b = None if bias is None else bias.float()
            out = F.conv1d(x.float(), weight.float()[:, None, :], b, padding=width - 1, groups=dim)
            out = out[..., :length]
            if activation is not None:
                out = F.silu(out)
        return out.to(x.dtype)

    return causal_conv1d_fn


@pytest.fixture
def fake_cuda(monkeypatch):
    """The ``cuda`` back end on CPU tensors, through the fakes; yields the recorded calls."""
    calls = {"scan": [], "conv": []}
    monkeypatch.setattr(
        backends, "MAMBA_SSM", OptionalKernels("fake", lambda: fake_selective_scan_fn(calls["scan"]))
    )
    monkeypatch.setattr(
        backends, "CAUSAL_CONV1D", OptionalKernels("fake", lambda: fake_causal_conv1d_fn(calls["conv"]))
    )

    def on_cpu_as_on_gpu(backend, device, d_state=None):
        return resolve_backend(backend, torch.device("cuda"), d_state)

    monkeypatch.setattr(mamba_mod, "resolve_backend", on_cpu_as_on_gpu)
    monkeypatch.setattr(scan_mod, "resolve_backend", on_cpu_as_on_gpu)
    return calls


def grads_of(model, x, lengths, autocast: bool):
    """Logits, and the gradients of a fixed function of them w.r.t. parameters and pathway inputs."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, inputs = model(x, lengths, return_pathway_inputs=True)
    weights = torch.linspace(-1.0, 1.0, logits.numel()).reshape(logits.shape)
    leaves = [*inputs.values(), *model.parameters()]
    grads = torch.autograd.grad((logits.float() * weights).sum(), leaves)
    return logits.detach(), grads


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    model = NeuroSSM(11, 3, d_model=16, n_layers=1, d_state=8, d_conv=4, scales=(1, 2), dropout=0.0)
    with torch.no_grad():  # away from the symmetric initialisation, so mix-ups show
        for module in model.modules():
            if isinstance(module, Mamba):
                module.A_log.add_(0.3 * torch.randn_like(module.A_log))
                module.D.add_(0.5 * torch.randn_like(module.D))
    x = torch.randn(3, 11, 37)
    lengths = torch.tensor([37, 29, 20])
    return model.eval(), x, lengths


def test_mamba_block_calls_the_kernels_as_mamba_ssm_does(fake_cuda):
    torch.manual_seed(1)
    m = Mamba(24, d_state=7, d_conv=3, backend="cuda")
    x = torch.randn(2, 33, 24, requires_grad=True)
    out_cuda = m(x)
    g_cuda = torch.autograd.grad(out_cuda.square().sum(), [x, *m.parameters()])
    (scan,) = fake_cuda["scan"]
    (conv,) = fake_cuda["conv"]
    # The slow path of mamba_simple.Mamba: softplus and delta_bias in the kernel, gate z, skip D.
    assert scan["softplus"] and scan["z"] and scan["shape"] == (2, 48, 33)
    torch.testing.assert_close(scan["delta_bias"], m.dt_proj.bias.float(), rtol=0, atol=0)
    torch.testing.assert_close(scan["D"], m.D.float(), rtol=0, atol=0)
    assert conv == {"dtype": torch.float32, "width": 3, "activation": "silu"}
    m.backend = "torch"
    out_torch = m(x)
    g_torch = torch.autograd.grad(out_torch.square().sum(), [x, *m.parameters()])
    assert rel_err(out_cuda, out_torch) < 1e-5
    for a, b in zip(g_cuda, g_torch, strict=True):
        assert rel_err(a, b) < 1e-5


def test_neurossm_cuda_path_matches_torch_in_float32(fake_cuda, small_model):
    model, x, lengths = small_model
    model.set_backend("cuda")
    logits_cuda, g_cuda = grads_of(model, x, lengths, autocast=False)
    # 4 pathways x 2 directions, one block each: 8 scans and 8 convolutions, all float32.
    assert len(fake_cuda["scan"]) == 8 and len(fake_cuda["conv"]) == 8
    assert {c["dtype"] for c in fake_cuda["scan"] + fake_cuda["conv"]} == {torch.float32}
    model.set_backend("torch")
    logits_torch, g_torch = grads_of(model, x, lengths, autocast=False)
    assert rel_err(logits_cuda, logits_torch) < 1e-5
    assert max(grad_errors(g_cuda, g_torch)) < 1e-4


def test_neurossm_cuda_path_under_bf16_autocast(fake_cuda, small_model):
    """Under autocast the kernels get bf16 activations (their contract: one input dtype) and
    float32 A, D and delta_bias; logits stay float32. Both paths then agree to bf16 precision:
    the convolution differs (fp32 in the kernel, bf16 in PyTorch), the scan does not."""
    model, x, lengths = small_model
    logits_ref, g_ref = grads_of(model.set_backend("torch") or model, x, lengths, autocast=False)
    model.set_backend("cuda")
    logits_cuda, g_cuda = grads_of(model, x, lengths, autocast=True)
    assert {c["dtype"] for c in fake_cuda["scan"] + fake_cuda["conv"]} == {torch.bfloat16}
    assert logits_cuda.dtype == torch.float32
    model.set_backend("torch")
    logits_torch, g_torch = grads_of(model, x, lengths, autocast=True)
    assert logits_torch.dtype == torch.float32
    # bf16 keeps 8 bits. The two paths are closer to each other than to the float32 result
    # (logits: 2.9e-4 apart, 1.6e-3 from float32; gradients: 1.1e-2 and 1.2e-2, measured).
    assert rel_err(logits_cuda, logits_torch) < rel_err(logits_torch, logits_ref)
    between, from_ref = grad_errors(g_cuda, g_torch), grad_errors(g_torch, g_ref)
    for a, b in zip(between, from_ref, strict=True):
        assert a < max(2 * b, 2e-2)


def test_kernel_limits_are_refused_for_cuda_and_avoided_by_auto(fake_cuda):
    with pytest.raises(ValueError, match="d_state 300 is over 256, the limit of mamba-ssm's scan kernel"):
        Mamba(16, d_state=300, backend="cuda")
    with pytest.raises(ValueError, match="d_conv 5 is outside 2-4, the widths of causal-conv1d's kernel"):
        Mamba(16, d_conv=5, backend="cuda")
    x = torch.randn(2, 9, 16)
    Mamba(16, d_state=300, backend="auto")(x)  # auto on a GPU: the torch back end
    assert fake_cuda["scan"] == [] and fake_cuda["conv"] == []
    Mamba(16, d_conv=5, backend="auto")(x)  # mamba-ssm's scan, PyTorch's convolution
    assert len(fake_cuda["scan"]) == 1 and fake_cuda["conv"] == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_state": 300}, "--device cuda: --d-state 300 is over 256, the limit of mamba-ssm's scan kernel"),
        ({"d_conv": 5}, "--device cuda: --d-conv 5 is outside 2-4, the widths of causal-conv1d's kernel"),
        ({"d_conv": 1}, "--d-conv 1 is outside 2-4"),
    ],
)
def test_settings_refuse_kernel_limits_with_device_cuda(overrides, message):
    with pytest.raises(UsageError, match=message):
        resolve_settings("hcp-rest", {**overrides, "device": "cuda"})
    resolve_settings("hcp-rest", {**overrides, "device": "auto"})  # the PyTorch parts take them


def test_fallback_on_gpu_warns_once_with_the_import_error(monkeypatch):
    def broken():
        raise ImportError("cannot import name 'GreedySearchDecoderOnlyOutput' from 'transformers.generation'")

    monkeypatch.setattr(backends, "MAMBA_SSM", OptionalKernels("mamba-ssm", broken))
    gpu = torch.device("cuda")  # no tensor is made: nothing touches a GPU
    with pytest.warns(RuntimeWarning, match="GreedySearchDecoderOnlyOutput.*PyTorch scan"):
        assert resolve_backend("auto", gpu) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(resolve_backend("auto", gpu) == "torch" for _ in range(24))  # one model forward
    with pytest.raises(ImportError, match="needs mamba-ssm's CUDA kernels.*GreedySearchDecoderOnlyOutput"):
        resolve_backend("cuda", gpu)
    status = cuda_backend_status()
    assert not status.available and "GreedySearchDecoderOnlyOutput" in status.error
    assert "do not import" in status.describe()
    assert backend_summary(gpu)["scan_backend"] == "torch"
    assert "GreedySearchDecoderOnlyOutput" in backend_summary(gpu)["cuda_error"]


def test_mamba_ssm_without_its_compiled_module_is_unavailable(monkeypatch):
    """mamba-ssm after 2.3.2 imports without ``selective_scan_cuda`` and fails in the first
    forward; the probe asks for the compiled module, so ``auto`` falls back instead."""
    package = types.ModuleType("mamba_ssm")
    package.__path__ = []
    ops = types.ModuleType("mamba_ssm.ops")
    ops.__path__ = []
    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_cuda = None
    interface.selective_scan_fn = lambda *args, **kwargs: pytest.fail("the forward must not run")
    for name, module in (
        ("mamba_ssm", package),
        ("mamba_ssm.ops", ops),
        ("mamba_ssm.ops.selective_scan_interface", interface),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", None)  # import fails as when not built
    probe = OptionalKernels("mamba-ssm", backends._load_selective_scan_fn)
    monkeypatch.setattr(backends, "MAMBA_SSM", probe)
    assert probe.get() is None and "selective_scan_cuda" in probe.error
    with pytest.warns(RuntimeWarning, match="selective_scan_cuda"):
        assert resolve_backend("auto", torch.device("cuda")) == "torch"


@pytest.mark.parametrize(
    ("probe", "device", "error"),
    [
        ("MAMBA_SSM", "cuda", ModuleNotFoundError("No module named 'mamba_ssm'")),
        ("NUMBA_KERNELS", "cpu", OSError("libllvmlite.so: cannot open shared object file")),
    ],
)
def test_each_optional_back_end_is_loaded_once(monkeypatch, probe, device, error):
    calls = []

    def load():
        calls.append(1)
        raise error

    monkeypatch.setattr(backends, probe, OptionalKernels(probe, load))
    with pytest.warns(RuntimeWarning, match=str(error)):
        for _ in range(10):
            assert resolve_backend("auto", torch.device(device)) == "torch"
    cuda_backend_status()
    backends.cpu_kernels_available()
    assert calls == [1]


def test_backend_summary_on_cpu():
    assert backend_summary("cpu") == {"scan_backend": "cpu", "conv_backend": "torch"}
    assert backend_summary("cpu", backend="torch")["scan_backend"] == "torch"


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [
        (None, None),
        ((6, 0), torch.float16),  # Pascal
        ((7, 0), torch.float16),  # V100: bf16 only emulated
        ((7, 5), torch.float16),  # T4
        ((8, 0), torch.bfloat16),  # A100
        ((8, 9), torch.bfloat16),
        ((9, 0), torch.bfloat16),  # H100, H200
        ((12, 0), torch.bfloat16),
    ],
)
def test_autocast_dtype_follows_compute_capability(capability, dtype):
    assert autocast_dtype_for_capability(capability) == dtype
