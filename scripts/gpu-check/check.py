"""The device check: neurossm-app's CUDA path against its reference back ends, on one GPU.

Run once on the device machine (``run.sh``; docs/performance.md has the exact call). It builds or
reuses mamba-ssm's and causal-conv1d's kernels for sm_90 (``build.py``), then, in order:

(a) ``scan``: :func:`~neurossm_app.model.scan.selective_scan` with the ``cuda`` back end against
    the ``torch`` back end, float32, with ``z``, ``D``, ``delta_bias`` and the softplus in the
    kernel, at three sizes (one with L = 4096 > 2048, where the kernel works in chunks): the output
    and the gradients of all eight inputs; then once with bf16 activations;
(b) ``model``: a whole NeuroSSM with R = 400 and the default architecture, the same weights on
    both back ends, a batch of mixed lengths: logits, pathway-input and parameter gradients, in
    float32 and under bf16 autocast; and how far two identical cuda runs differ (determinism);
(c) ``cpa``: :func:`~neurossm_app.group.cpa.compute_cpa` on the GPU against the CPU (``cpu``
    back end, else ``torch``), its repeatability on the GPU, and a checkpoint round trip
    (save on the GPU, load on the GPU and on the CPU);
(d) ``fold``: the group level's ``train_model`` at the hcp-rest shape (R = 400, window 600,
    batch 16): seconds per step, peak GPU memory, and the time of a fold extrapolated from it.

Each section is written to ``OUT/gpu-check.json`` as soon as it ends (an error is recorded and
the next section runs), so a run stopped by its time limit still returns what it measured;
``--deadline-s`` skips sections that would start too late, ``--sections`` reruns some.

``--dry-run`` rehearses everything but the CUDA calls on the CPU: no build, ``cpu`` (numba)
stands for ``cuda`` against ``torch``, tiny sizes, the same code paths and JSON.

Usage::

    python3 scripts/gpu-check/check.py --out "$OUT"               # on the device (run.sh)
    .venv/bin/python scripts/gpu-check/check.py --dry-run --out /tmp/gpu-check   # here
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

#: Agreement expected of the cuda back end with the torch one (max |a - b| / max |b|).
TOLERANCE = {"float32": {"out": 1e-4, "grad": 1e-3}, "bfloat16": {"out": 5e-2, "grad": 1e-1}}


@dataclass(frozen=True)
class Context:
    device: torch.device
    fast: str  # the back end under test: "cuda", or "cpu" in a dry run
    dry_run: bool

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def rel_err(ours: torch.Tensor, ref: torch.Tensor, floor: float = 1e-30) -> float:
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    return float((ours - ref).abs().max() / max(float(ref.abs().max()), floor))


def grad_errors(ours, ref) -> list[float]:
    """Per-tensor :func:`rel_err`, floored at 1e-3 of the largest reference gradient."""
    floor = 1e-3 * max(float(r.abs().max()) for r in ref)
    return [rel_err(a, b, floor) for a, b in zip(ours, ref, strict=True)]


# ---------------------------------------------------------------------------------------------
# (a) the scan


def _scan_with_grads(fn, inp: dict, keys: tuple[str, ...], ctx: Context):
    leaves = {k: inp[k].detach().clone().requires_grad_() for k in keys}
    start = time.perf_counter()
    out = fn(**leaves)
    (out.float() * inp["w"]).sum().backward()
    ctx.sync()
    return out.detach(), {k: v.grad for k, v in leaves.items()}, time.perf_counter() - start


def section_scan(ctx: Context) -> dict:
    from bench_scan import FULL, make_inputs

    from neurossm_app.model.scan import selective_scan, selective_scan_torch

    sizes = (
        [(2, 32, 4, 50), (1, 16, 4, 2100)]
        if ctx.dry_run
        else [(4, 256, 16, 150), (2, 512, 16, 1200), (1, 256, 16, 4096)]
    )

    def fast(**kw):
        return selective_scan(**kw, delta_softplus=True, backend=ctx.fast)

    def ref(**kw):
        return selective_scan_torch(**kw, delta_softplus=True)

    def compare(inp: dict, dtype: str) -> dict:
        out_f, g_f, t_f = _scan_with_grads(fast, inp, FULL, ctx)
        out_r, g_r, t_r = _scan_with_grads(ref, inp, FULL, ctx)
        grads = {k: rel_err(g_f[k], g_r[k]) for k in FULL}
        tol = TOLERANCE[dtype]
        return {
            "batch_dim_state_length": list(inp["u"].shape[:2]) + [inp["A"].shape[1], inp["u"].shape[2]],
            "dtype": dtype,
            "out_dtype": str(out_f.dtype).removeprefix("torch."),
            "out_rel_err": rel_err(out_f, out_r),
            "grad_rel_err": grads,
            "ok": out_f.dtype == inp["u"].dtype
            and rel_err(out_f, out_r) < tol["out"]
            and max(grads.values()) < tol["grad"],
            "fast_s": round(t_f, 4),
            "torch_s": round(t_r, 4),
            "_out": out_f,
        }

    rows = []
    for batch, dim, d_state, length in sizes:
        inp = make_inputs(batch, dim, d_state, length, device=ctx.device)
        inp = {**inp, "delta": inp["delta_raw"]}
        fast(**{k: inp[k] for k in FULL})  # warm-up (kernel load, JIT)
        rows.append(compare(inp, "float32"))
    # bf16 activations, float32 A, D and delta_bias: what the Mamba block passes under autocast.
    half = {k: v.to(torch.bfloat16) if k in ("u", "delta", "B", "C", "z") else v for k, v in inp.items()}
    rows.append(compare(half, "bfloat16"))
    rows[-1]["out_rel_err_vs_float32"] = rel_err(rows[-1]["_out"], rows[-2]["_out"])
    for row in rows:
        del row["_out"]
    return {"rows": rows, "ok": all(r["ok"] for r in rows)}


# ---------------------------------------------------------------------------------------------
# (b) the whole model


def _model(ctx: Context, n_rois: int = 400):
    from neurossm_app.model import NeuroSSM

    torch.manual_seed(0)
    small = {"d_model": 16, "n_layers": 1} if ctx.dry_run else {}
    return NeuroSSM(n_rois, 2, **small).eval()


def _logits_and_grads(model, x, lengths, autocast: bool):
    amp = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast)
    with amp:
        logits, inputs = model(x, lengths, return_pathway_inputs=True)
    leaves = [*inputs.values(), *model.parameters()]
    weights = torch.linspace(-1.0, 1.0, logits.numel(), device=logits.device).reshape(logits.shape)
    grads = torch.autograd.grad((logits.float() * weights).sum(), leaves)
    return logits.detach(), list(inputs), grads


def section_model(ctx: Context) -> dict:
    model = _model(ctx).to(ctx.device)
    n_time = 64 if ctx.dry_run else 600
    lengths = torch.tensor([n_time, n_time * 6 // 7, n_time * 2 // 3, n_time // 2])
    x = torch.randn(4, 400, n_time, generator=torch.Generator().manual_seed(1)).to(ctx.device)
    result = {
        "batch_rois_time": [4, 400, n_time],
        "lengths": lengths.tolist(),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    for label, autocast in (("float32", False), ("bf16_autocast", True)):
        model.set_backend(ctx.fast)
        start = time.perf_counter()
        logits_f, names, g_f = _logits_and_grads(model, x, lengths, autocast)
        ctx.sync()
        t_f = time.perf_counter() - start
        model.set_backend("torch")
        start = time.perf_counter()
        logits_r, _, g_r = _logits_and_grads(model, x, lengths, autocast)
        ctx.sync()
        t_r = time.perf_counter() - start
        errors = grad_errors(g_f, g_r)
        result[label] = {
            "logits_rel_err": rel_err(logits_f, logits_r),
            "logits_dtype": str(logits_f.dtype).removeprefix("torch."),
            "pathway_input_grad_rel_err": dict(zip(names, errors[: len(names)], strict=True)),
            "param_grad_rel_err_max": max(errors[len(names) :]),
            "fast_s": round(t_f, 3),
            "torch_s": round(t_r, 3),
        }
        tol = TOLERANCE["float32" if not autocast else "bfloat16"]
        result[label]["ok"] = result[label]["logits_rel_err"] < tol["out"] and max(errors) < tol["grad"]
    # Determinism: the same call twice on the back end under test.
    model.set_backend(ctx.fast)
    first = _logits_and_grads(model, x, lengths, False)
    second = _logits_and_grads(model, x, lengths, False)
    result["repeat"] = {
        "logits_max_abs_diff": float((first[0] - second[0]).abs().max()),
        "grad_rel_diff_max": max(grad_errors(second[2], first[2])),
        "pathway_input_grad_rel_diff_max": max(
            grad_errors(second[2][: len(first[1])], first[2][: len(first[1])])
        ),
    }
    result["ok"] = result["float32"]["ok"] and result["bf16_autocast"]["ok"]
    return result


# ---------------------------------------------------------------------------------------------
# (c) CPA and checkpoints


def _top_quarter(values: np.ndarray) -> set[int]:
    return set(np.argsort(values)[::-1][: math.ceil(len(values) / 4)].tolist())


def section_cpa(ctx: Context) -> dict:
    from neurossm_app.group.checkpoints import load_neurossm, save_checkpoint
    from neurossm_app.group.cpa import compute_cpa
    from neurossm_app.model.backends import cpu_kernels_available

    model = _model(ctx)
    series = np.random.default_rng(3).standard_normal((400, 64 if ctx.dry_run else 300)).astype(np.float32)
    gpu_model = copy.deepcopy(model).to(ctx.device)
    gpu_model.set_backend(ctx.fast)
    start = time.perf_counter()
    on_gpu = compute_cpa(gpu_model, series, 1, device=ctx.device)
    t_gpu = time.perf_counter() - start
    again = compute_cpa(gpu_model, series, 1, device=ctx.device)
    # On the device: the CPU's own best back end. In a dry run the "GPU" is the cpu back end, so
    # the reference is torch, or the comparison would be with itself.
    cpu_backend = "torch" if ctx.dry_run or not cpu_kernels_available() else "cpu"
    model.set_backend(cpu_backend)
    start = time.perf_counter()
    on_cpu = compute_cpa(model, series, 1, device="cpu")
    t_cpu = time.perf_counter() - start
    top_gpu, top_cpu = _top_quarter(on_gpu.cpa), _top_quarter(on_cpu.cpa)
    result = {
        "series_rois_time": list(series.shape),
        "reference_backend": f"{cpu_backend} (CPU)",
        "pathway_maps_max_abs_diff": float(np.abs(on_gpu.pathway_maps - on_cpu.pathway_maps).max()),
        "cpa_rel_err": float(np.abs(on_gpu.cpa - on_cpu.cpa).max() / np.abs(on_cpu.cpa).max()),
        "logit_drops_max_abs_diff": float(np.abs(on_gpu.logit_drops - on_cpu.logit_drops).max()),
        "weights_max_abs_diff": float(np.abs(on_gpu.weights - on_cpu.weights).max()),
        "top25_dice": 2 * len(top_gpu & top_cpu) / (len(top_gpu) + len(top_cpu)),
        "dominant_agreement": float(np.mean(on_gpu.dominant == on_cpu.dominant)),
        "gpu_repeat_cpa_max_abs_diff": float(np.abs(on_gpu.cpa - again.cpa).max()),
        "gpu_s": round(t_gpu, 3),
        "cpu_s": round(t_cpu, 3),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model-neurossm_fold-0_seed-0.safetensors"
        save_checkpoint(path, gpu_model, {"config": gpu_model.config.to_dict()})
        back, _ = load_neurossm(path, backend=ctx.fast)
        back = back.to(ctx.device)
        x = torch.from_numpy(series)[None].to(ctx.device)
        with torch.no_grad():
            original, reloaded = gpu_model(x), back(x)
            cpu_model, _ = load_neurossm(path, backend=cpu_backend)
            on_host = cpu_model(x.cpu())
    result["checkpoint"] = {
        "reload_same_device_max_abs_diff": float((original - reloaded).abs().max()),
        "reload_on_cpu_logits_rel_err": rel_err(on_host, original),
    }
    result["ok"] = (
        result["cpa_rel_err"] < 1e-3
        and result["top25_dice"] > 0.95
        and result["checkpoint"]["reload_same_device_max_abs_diff"] == 0.0
        and result["checkpoint"]["reload_on_cpu_logits_rel_err"] < 1e-4
    )
    return result


# ---------------------------------------------------------------------------------------------
# (d) one fold at the hcp-rest shape


def _time_training(ctx: Context, backend: str, shape: dict, steps: int, warmup: int) -> dict:
    from bench_train import StepClock

    from neurossm_app.group.models import build_neurossm
    from neurossm_app.group.train import TrainSettings, autocast_dtype, train_model

    torch.manual_seed(0)
    config = {"n_rois": shape["n_rois"], "n_classes": 2, **shape["model_fields"]}
    model, _ = build_neurossm(config, backend=backend)
    clock = StepClock(sync=ctx.device.type == "cuda")
    model.register_forward_pre_hook(clock)
    n_series = shape["batch_size"] * (steps + warmup)
    rng = np.random.default_rng(0)
    series = [
        rng.standard_normal((shape["n_rois"], shape["window"] + 50), dtype=np.float32)
        for _ in range(n_series)
    ]
    labels = np.arange(n_series) % 2
    settings = TrainSettings(
        window=shape["window"],
        epochs=1,
        batch_size=shape["batch_size"],
        lr=shape["lr"],
        weight_decay=shape["weight_decay"],
    )
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    history = train_model(model, series, labels, 2, settings, 0, ctx.device, description=f"check {backend}")
    ctx.sync()
    times = clock.step_times(time.perf_counter())[warmup:]
    return {
        "backend": backend,
        "autocast": str(autocast_dtype(ctx.device)).removeprefix("torch."),
        "steps_timed": len(times),
        "step_s_median": statistics.median(times),
        "step_s_all": [round(t, 4) for t in times],
        "peak_gpu_mb": torch.cuda.max_memory_allocated(ctx.device) / 2**20
        if ctx.device.type == "cuda"
        else None,
        "loss": float(history["loss"].iloc[0]),
    }


def section_fold(ctx: Context, deadline: float) -> dict:
    from neurossm_app.group.presets import resolve_settings

    settings = resolve_settings("hcp-rest", {})
    shape = {
        "n_rois": 40 if ctx.dry_run else 400,
        "window": 64 if ctx.dry_run else settings.dynamic_length,
        "batch_size": 4 if ctx.dry_run else settings.batch_size,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "model_fields": {
            **settings.model_fields(),
            **({"d_model": 16, "n_layers": 1} if ctx.dry_run else {}),
        },
    }
    steps, warmup = (2, 1) if ctx.dry_run else (20, 3)
    fast = _time_training(ctx, ctx.fast, shape, steps, warmup)
    result = {
        "shape": {k: v for k, v in shape.items() if k != "model_fields"},
        "epochs": settings.epochs,
        ctx.fast: fast,
    }
    # A fold of the hcp-rest study: about 800 training scans (1,000 subjects, 5 folds), one
    # window per scan and epoch.
    steps_per_fold = math.ceil(800 / shape["batch_size"]) * settings.epochs
    result["fold_estimate"] = {
        "train_scans": 800,
        "steps": steps_per_fold,
        "hours": fast["step_s_median"] * steps_per_fold / 3600,
    }
    if time.perf_counter() + 120 < deadline:  # the torch loop: 3 steps, seconds each on a GPU
        result["torch"] = _time_training(ctx, "torch", shape, 2, 1)
        result["torch_over_fast"] = result["torch"]["step_s_median"] / fast["step_s_median"]
    else:
        result["torch"] = {"skipped": "not enough time left"}
    return result


# ---------------------------------------------------------------------------------------------


def environment(ctx: Context) -> dict:
    from neurossm_app.model.backends import backend_summary, cuda_backend_status

    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "dry_run": ctx.dry_run,
        "backend_summary": backend_summary(ctx.device, ctx.fast if ctx.fast == "cuda" else "auto"),
    }
    if ctx.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(ctx.device)
        env["capability"] = list(torch.cuda.get_device_capability(ctx.device))
        env["kernels"] = cuda_backend_status().describe()
    try:
        import numba

        env["numba"] = numba.__version__
    except Exception as err:  # noqa: BLE001 - record why, the cpu back end then falls back
        env["numba"] = f"does not import ({type(err).__name__}: {err})"
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU: no build, no CUDA")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ROOT / ".device" / "gpu-check" / "out"))
    )
    parser.add_argument("--sections", default="scan,model,cpa,fold", help="comma-separated, in this order")
    parser.add_argument(
        "--deadline-s", type=float, default=400, help="start no section after this many seconds"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.deadline_s
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "gpu-check.json"
    report: dict = {}

    def save() -> None:
        report_path.write_text(json.dumps(report, indent=1, default=str) + "\n")

    from build import ensure_kernels

    try:
        report["build"] = ensure_kernels(args.out, dry_run=args.dry_run)
    except SystemExit as err:
        report["build"] = {"error": str(err)}
        if not args.dry_run:
            save()
            print(json.dumps(report, indent=1))
            return 1
    if args.dry_run:
        ctx = Context(torch.device("cpu"), "cpu", True)
    else:
        if not torch.cuda.is_available():
            report["error"] = "torch sees no GPU"
            save()
            return 1
        ctx = Context(torch.device("cuda"), "cuda", False)
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 comparisons in float32
        torch.backends.cudnn.allow_tf32 = False
    report["env"] = environment(ctx)
    save()
    if not ctx.dry_run and not report["env"]["kernels"].startswith("mamba-ssm "):
        report["error"] = f"the cuda back end is unavailable: {report['env']['kernels']}"
        save()
        print(json.dumps(report, indent=1))
        return 1
    sections = {
        "scan": lambda: section_scan(ctx),
        "model": lambda: section_model(ctx),
        "cpa": lambda: section_cpa(ctx),
        "fold": lambda: section_fold(ctx, deadline),
    }
    for name in args.sections.split(","):
        if time.perf_counter() > deadline:
            report[name] = {"skipped": f"past --deadline-s {args.deadline_s}"}
            continue
        print(f"[check] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            report[name] = sections[name]()
        except Exception as err:  # noqa: BLE001 - record it, run the next section
            report[name] = {
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-3000:],
            }
        report[name]["seconds"] = round(time.perf_counter() - start, 1)
        save()
        outcome = report[name].get("ok", report[name].get("error", "done"))
        print(f"[check] {name}: {outcome} ({report[name]['seconds']} s)", flush=True)
    report["total_s"] = round(time.perf_counter() - started, 1)
    save()
    print(json.dumps(report, indent=1, default=str))
    return (
        0
        if all(
            report.get(n, {}).get("ok", True) is not False and "error" not in report.get(n, {})
            for n in sections
        )
        else 2
    )


if __name__ == "__main__":
    raise SystemExit(main())
