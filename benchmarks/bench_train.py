"""Training throughput of NeuroSSM: windows per second of the group level's real training step.

One step is what :func:`neurossm_app.group.train.train_model` does per batch: cut the random
windows, forward, class-weighted cross-entropy, backward, gradient clipping, AdamW, one-cycle
schedule (and, on CUDA, the autocast dtype of :func:`~neurossm_app.group.train.autocast_dtype`:
bf16 from compute capability 8.0, else fp16 with a gradient scaler). The benchmark calls ``train_model``
itself (one epoch of ``--steps-per-call`` batches per call), on synthetic windows of each
preset's shape, with the model the group level builds (:func:`neurossm_app.group.models.
build_neurossm` with the preset's architecture: d_model 128, 2 layers, scales 1 2 4, raw + diff,
bidirectional), after :func:`~neurossm_app.group.train.seed_everything` as the group level does.

Each step's time is read by a forward pre-hook: from the start of one forward to the start of
the next (or to the end of the call), so it holds the whole step and the next batch's window
cutting, but not the optimizer and scheduler construction of each call. Back ends are
interleaved round-robin (every round runs one call per back end), the first ``--warmup``
rounds are dropped (numba compilation, allocator warm-up), and the median step is reported,
so background load falls on every back end alike.

Agreement between the back ends: the loss of the first call (same initial weights, data and
dropout masks) and, before the rounds, every parameter's gradient of one batch (eval mode, the
autocast of ``train_model``), as the largest relative difference over the parameters.

Peak memory per back end, taken in the first round: on CPU the resident-set high-water mark of
this process during its call (the counter ``resource.getrusage().ru_maxrss`` reports, reset
before the call through ``/proc/self/clear_refs`` after returning freed heap memory to the OS;
where that is impossible, the process-wide peak so far, marked with ``*``); on CUDA
``torch.cuda.max_memory_allocated`` (reset before the call).

Threads: ``--threads`` (default 1, as the group level's ``--omp-nthreads``) bounds torch, BLAS
and numba alike, set before they are imported, as the CLI does.

Devices: ``cpu`` compares back ends ``cpu`` (numba kernels) and ``torch`` (the plain loop
reference); ``cuda``, when ``torch.cuda.is_available()``, compares ``torch`` and ``cuda``
(``mamba_ssm`` kernels). Without a GPU the CUDA part prints ``skipped: no CUDA device``.

Usage::

    .venv/bin/python benchmarks/bench_train.py --json bench_train.json
    .venv/bin/python benchmarks/bench_train.py --devices cuda --steps 10 --warmup 2 --steps-per-call 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

#: Classes of each preset's target in the original study (the presets do not fix them: data do).
N_CLASSES = {"hcp-rest": 2, "hcp-task": 7, "ppmi": 2}
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class Shape:
    """One preset's training problem."""

    preset: str
    n_rois: int
    n_classes: int
    window: int
    batch_size: int
    lr: float
    weight_decay: float
    model_fields: dict


def preset_shape(preset: str, batch_size: int | None) -> Shape:
    """Window, batch and architecture of ``preset``; ROI count from its atlas's label table."""
    from neurossm_app.atlases import roi_names
    from neurossm_app.group.presets import resolve_settings

    settings = resolve_settings(preset, {"batch_size": batch_size})
    return Shape(
        preset=preset,
        n_rois=len(roi_names(settings.atlas)),
        n_classes=N_CLASSES[preset],
        window=settings.dynamic_length,
        batch_size=settings.batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        model_fields=settings.model_fields(),
    )


# ---------------------------------------------------------------------------------------------
# Memory


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so RSS is close to the live memory.

    Without it, memory a previous call freed but glibc kept would count towards the next
    call's peak, whichever back end that is.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux); False if unsupported."""
    _trim_heap()
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB; NaN where unreadable."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _current_rss_mb() -> float:
    """Resident set size now in MB (Linux), else NaN."""
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """The RSS high-water mark in MB: VmHWM (Linux; what ru_maxrss reports), else ru_maxrss."""
    peak = _status_mb("VmHWM")
    if not math.isnan(peak):
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, else kB


# ---------------------------------------------------------------------------------------------
# Timing


class StepClock:
    """Forward pre-hook that records when each forward starts (after a GPU sync)."""

    def __init__(self, sync: bool) -> None:
        self.sync = sync
        self.starts: list[float] = []

    def __call__(self, module, args) -> None:
        if self.sync:
            import torch

            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def step_times(self, end: float) -> list[float]:
        """Seconds of each step: forward start to next forward start, the last to ``end``."""
        marks = [*self.starts, end]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def make_data(shape: Shape, n_series: int, seed: int):
    """``n_series`` z-scored-like (R, window) series and balanced labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    series = [rng.standard_normal((shape.n_rois, shape.window), dtype=np.float32) for _ in range(n_series)]
    labels = np.arange(n_series, dtype=np.int64) % shape.n_classes
    return series, labels


def batch_gradients(model, series, labels, shape: Shape, device) -> list:
    """Every parameter's gradient of the class-weighted loss of one batch (the first windows
    of the first scans), in eval mode (no dropout) and with the autocast of ``train_model``."""
    import numpy as np
    import torch

    from neurossm_app.group.train import autocast_dtype, class_weights

    windows = np.stack([s[:, : shape.window] for s in series[: shape.batch_size]])
    x = torch.from_numpy(windows).to(device)
    y = torch.as_tensor(labels[: shape.batch_size], dtype=torch.long, device=device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(labels, shape.n_classes).to(device))
    amp = autocast_dtype(device)
    model.eval()
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        loss = loss_fn(model(x).float(), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    model.train()
    return [g.detach().double().cpu() for g in grads]


def gradient_difference(ours: list, ref: list) -> float:
    """max over parameters of max|ours - ref| / max|ref|, the denominator floored at 1e-3 of
    the largest reference gradient (some gradients are 0 but for round-off: the attention
    keys' bias, which softmax ignores)."""
    floor = 1e-3 * max(r.abs().max().item() for r in ref)
    pairs = zip(ours, ref, strict=True)
    return max((a - b).abs().max().item() / max(b.abs().max().item(), floor) for a, b in pairs)


def bench_shape(shape: Shape, backends: list[str], device_name: str, args) -> dict:
    """Interleaved training calls for every back end on one preset's shape.

    Returns
    -------
    dict
        Per back end: median step seconds, windows per second, peak memory (MB), the loss of
        the first call (same initial weights, data and dropout masks for every back end).
    """
    import torch

    from neurossm_app.group.models import build_neurossm
    from neurossm_app.group.train import TrainSettings, seed_everything, train_model

    device = torch.device(device_name)
    on_gpu = device.type == "cuda"
    series, labels = make_data(shape, shape.batch_size * args.steps_per_call, args.seed)
    settings = TrainSettings(
        window=shape.window,
        epochs=1,
        batch_size=shape.batch_size,
        lr=shape.lr,
        weight_decay=shape.weight_decay,
    )
    config = {"n_rois": shape.n_rois, "n_classes": shape.n_classes, **shape.model_fields}
    models, clocks = {}, {}
    for backend in backends:
        seed_everything(args.seed)  # as the group level does before building: same weights for all
        model, _ = build_neurossm(config, backend=backend)
        clocks[backend] = StepClock(sync=on_gpu)
        model.register_forward_pre_hook(clocks[backend])
        models[backend] = model.to(device)
    n_params = sum(p.numel() for p in models[backends[0]].parameters())
    grads = {b: batch_gradients(models[b], series, labels, shape, device) for b in backends}

    times: dict[str, list[float]] = {b: [] for b in backends}
    peaks: dict[str, list[float]] = {b: [] for b in backends}
    before: dict[str, list[float]] = {b: [] for b in backends}
    first_loss: dict[str, float] = {}
    rss_reset = True
    for round_ in range(args.warmup + args.steps):
        # Memory is measured in the first round only: returning freed memory to the OS before a
        # call (needed to attribute the peak to one back end) makes that call fault its pages in
        # again, which costs time that real training does not spend; so that round is a warm-up
        # unless --warmup 0.
        measure_memory = round_ == 0
        for backend in backends:
            clock = clocks[backend]
            clock.starts.clear()
            if on_gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            elif measure_memory:
                rss_reset = _reset_peak_rss() and rss_reset
            start_mb = torch.cuda.memory_allocated(device) / 2**20 if on_gpu else _current_rss_mb()
            torch.manual_seed(args.seed + round_)  # same dropout masks for every back end
            history = train_model(
                models[backend],
                series,
                labels,
                shape.n_classes,
                settings,
                args.seed + round_,
                device,
                description=f"{shape.preset} {backend}",
            )
            if on_gpu:
                torch.cuda.synchronize()
            end = time.perf_counter()
            if measure_memory:
                first_loss[backend] = float(history["loss"].iloc[0])
                peaks[backend].append(
                    torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else _peak_rss_mb()
                )
                before[backend].append(start_mb)
            if round_ >= args.warmup:
                times[backend].extend(clock.step_times(end))
        print(
            f"  {shape.preset} {device_name} round {round_ + 1}/{args.warmup + args.steps}: "
            + ", ".join(f"{b} {times[b][-1]:.3f} s" if times[b] else f"{b} (warm-up)" for b in backends),
            file=sys.stderr,
            flush=True,
        )
    results = {}
    for backend in backends:
        median = statistics.median(times[backend])
        results[backend] = {
            "step_s": median,
            "step_s_all": times[backend],
            "windows_per_s": shape.batch_size / median,
            "peak_mb": max(peaks[backend]),
            "start_mb": statistics.median(before[backend]),
            "first_loss": first_loss[backend],
            "grad_rel_diff": gradient_difference(grads[backend], grads[backends[0]]),
        }
    return {
        "preset": shape.preset,
        "device": device_name,
        "n_rois": shape.n_rois,
        "n_classes": shape.n_classes,
        "window": shape.window,
        "batch_size": shape.batch_size,
        "n_params": n_params,
        "rss_reset": rss_reset,
        "backends": results,
    }


# ---------------------------------------------------------------------------------------------
# Report


def print_table(rows: list[dict], backends: list[str], on_gpu: bool) -> None:
    """Markdown table: per back end seconds per step, windows/s, peak memory; then the ratio."""
    ref, other = backends[0], backends[-1]
    mem = "peak alloc MB" if on_gpu else "peak RSS MB"
    header = ["preset", "R x window", "classes", "batch"]
    for b in backends:
        header += [f"{b} s/step", f"{b} windows/s"]
    if len(backends) > 1:
        header.append(f"{other} / {ref} time")
    header += [f"{b} {mem} (at call start)" for b in backends]
    if len(backends) > 1:
        header += [f"first-step loss diff, {ref} vs {other}", "gradient diff"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * 4 + "---:|" * (len(header) - 4))
    for row in rows:
        res = row["backends"]
        cells = [
            row["preset"],
            f"{row['n_rois']} x {row['window']}",
            str(row["n_classes"]),
            str(row["batch_size"]),
        ]
        for b in backends:
            cells += [f"{res[b]['step_s']:.3f}", f"{res[b]['windows_per_s']:.2f}"]
        if len(backends) > 1:
            cells.append(f"{res[other]['step_s'] / res[ref]['step_s']:.1f}x")
        star = "" if on_gpu or row["rss_reset"] else "*"
        cells += [f"{res[b]['peak_mb']:.0f}{star} ({res[b]['start_mb']:.0f})" for b in backends]
        if len(backends) > 1:
            cells.append(f"{abs(res[ref]['first_loss'] - res[other]['first_loss']):.1e}")
            cells.append(f"{res[other]['grad_rel_diff']:.1e}")
        print("| " + " | ".join(cells) + " |")
    if not on_gpu and not all(row["rss_reset"] for row in rows):
        print("\n* process-wide peak so far (the RSS high-water mark could not be reset here)")


def machine_info(threads: int) -> dict:
    import numba
    import torch

    cpu = platform.processor() or platform.machine()
    try:  # "model name" and "cpu family" of the cores (the name alone can be as terse as "AMD EPYC")
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (
                line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines()
            )
            if key.strip() in ("model name", "cpu family")
        )
        if "model name" in fields:
            cpu = fields["model name"] + (
                f" (family {fields['cpu family']})" if "cpu family" in fields else ""
            )
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "numba": numba.__version__,
        "python": sys.version.split()[0],
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        from neurossm_app.model.backends import cuda_backend_status

        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = list(torch.cuda.get_device_capability(0))
        info["cuda"] = torch.version.cuda
        info["kernels"] = cuda_backend_status().describe()
    return info


def usable_backends(device: str, wanted: list[str]) -> tuple[list[str], list[str]]:
    """The back ends of ``wanted`` that run on ``device``, and a reason for each one dropped."""
    import torch

    from neurossm_app.model.scan import cpu_kernels_available, resolve_backend

    keep, notes = [], []
    for backend in wanted:
        if backend == "cpu" and device == "cpu" and not cpu_kernels_available():
            notes.append("cpu: numba kernels unavailable (the model would silently use torch)")
            continue
        try:
            resolve_backend(backend, torch.device(device))
        except (ValueError, ImportError) as err:
            notes.append(f"{backend}: {err}")
            continue
        keep.append(backend)
    return keep, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=list(N_CLASSES), choices=list(N_CLASSES))
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["cpu", "torch"],
        choices=["auto", "cpu", "torch"],
        help="scan back ends compared on CPU; ratios are to the first (default: cpu torch)",
    )
    parser.add_argument(
        "--gpu-backends",
        nargs="+",
        default=["cuda", "torch"],
        choices=["auto", "cuda", "torch"],
        help="scan back ends compared on the GPU; ratios are to the first (default: cuda torch)",
    )
    parser.add_argument("--batch-size", type=int, help="windows per step (default: the preset's, 16)")
    parser.add_argument("--steps", type=int, default=3, help="timed rounds per back end (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds dropped first (default 1)")
    parser.add_argument(
        "--steps-per-call", type=int, help="batches per train_model call (default 1 on CPU, 5 on GPU)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch (and numba) threads (default 1, as the group level's --omp-nthreads)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")

    # As the CLI's limit_threads, before numba and torch are imported (the BLAS pools size
    # themselves at load). The scan bounds numba by torch's count itself; a numba pool that reset
    # torch's count made every PyTorch operation wait at a barrier (30x slower steps under load).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)  # the cpu back end follows torch's thread count
    # seed_everything asks for deterministic kernels with warn_only; one warning is enough.
    warnings.filterwarnings("once", message=".*deterministic.*")
    meta = machine_info(args.threads)
    print(
        f"# NeuroSSM training step (forward + backward + clip + AdamW), {meta['cpu']}, "
        f"{meta['cores']} cores, {args.threads} threads, torch {meta['torch']}, numba {meta['numba']}; "
        f"median step of {args.steps} round(s) after {args.warmup} warm-up round(s), back ends interleaved\n"
    )
    report: dict = {
        "meta": meta,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("CUDA: skipped: no CUDA device (torch.cuda.is_available() is False)\n")
            report["cuda"] = {"skipped": "no CUDA device"}
            continue
        wanted = args.backends if device == "cpu" else args.gpu_backends
        backends, notes = usable_backends(device, wanted)
        for note in notes:
            print(f"{device.upper()}: back end skipped: {note}")
        if not backends:
            report[device] = {"skipped": "; ".join(notes)}
            continue
        saved = args.steps_per_call
        args.steps_per_call = saved or (5 if device == "cuda" else 1)
        rows = []
        for preset in args.presets:
            shape = preset_shape(preset, args.batch_size)
            rows.append(bench_shape(shape, backends, device, args))
        steps_per_call, args.steps_per_call = args.steps_per_call, saved
        if device == "cuda":
            from neurossm_app.group.train import autocast_dtype

            amp = autocast_dtype(torch.device("cuda"))
            where = f"GPU {meta.get('gpu')}, {str(amp).removeprefix('torch.')} autocast; {meta['kernels']}"
        else:
            where = f"CPU, {args.threads} threads, float32"
        print(f"\n## {where}; {steps_per_call} step(s) per call\n")
        print_table(rows, backends, device == "cuda")
        print()
        report[device] = {"rows": rows, "steps_per_call": steps_per_call, "skipped_backends": notes}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
