"""Build (or reuse) the CUDA kernels of mamba-ssm and causal-conv1d for sm_90, on the device.

The sources come from ``prepare.sh`` (``.device/gpu-check/src``, patched). Each extension is
compiled with :func:`torch.utils.cpp_extension.load` for compute capability 9.0 only
(``TORCH_CUDA_ARCH_LIST=9.0``, the H200), with upstream's nvcc flags, into
``.device/gpu-check/build/<name>/``; the upstream packages' own ``setup.py`` (every architecture,
downloads of prebuilt wheels) is never run. A ``.so`` that a previous run left in
``.device/gpu-check/prebuilt/`` (gzipped, with ``build-info.json``) is reused when it was built
for the same torch, CUDA and sources. Each fresh build is saved, stripped and gzipped, to
``$OUT`` so that the next run can skip the build (``prepare.sh --prebuilt``).

:func:`ensure_kernels` leaves both packages importable (``sys.path``): ``mamba_ssm`` and
``causal_conv1d`` from the sources, their compiled modules from the build folders.

Usage (``check.py`` calls it; alone, to see what it would compile)::

    python3 scripts/gpu-check/build.py [--dry-run]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".device" / "gpu-check"
ARCH = "9.0"

NVCC_FLAGS = [  # upstream setup.py's, without --ptxas-options=-v and -lineinfo (log size, .so size)
    "-O3",
    "-std=c++17",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
    "--threads",
    "4",
]


def source_dirs() -> dict[str, Path]:
    """The unpacked, patched sources; stops with the command to run when they are missing."""
    src = WORK / "src"
    found = {
        "mamba_ssm": next(src.glob("mamba_ssm-*"), None),
        "causal_conv1d": next(src.glob("causal_conv1d-*"), None),
    }
    if None in found.values() or not (src / "PATCHES.json").is_file():
        raise SystemExit(f"no patched sources in {src}: run `bash scripts/gpu-check/prepare.sh` first (here)")
    return found


def extensions(dirs: dict[str, Path]) -> dict[str, dict]:
    """``cpp_extension.load`` arguments of each compiled module."""
    patches = json.loads((WORK / "src" / "PATCHES.json").read_text())
    scan = dirs["mamba_ssm"] / "csrc" / "selective_scan"
    kinds = ["fwd_fp32", "fwd_bf16", "bwd_fp32_real", "bwd_bf16_real"]
    if "fp32-bf16-real" not in patches:
        kinds += ["fwd_fp16", "bwd_fp16_real", "bwd_fp32_complex", "bwd_fp16_complex", "bwd_bf16_complex"]
    conv = dirs["causal_conv1d"] / "csrc"
    return {
        "selective_scan_cuda": {
            "sources": [scan / "selective_scan.cpp", *(scan / f"selective_scan_{k}.cu" for k in kinds)],
            "extra_cflags": ["-O3", "-std=c++17"],
            "extra_cuda_cflags": NVCC_FLAGS,
            "extra_include_paths": [scan],
        },
        "causal_conv1d_cuda": {
            "sources": [
                conv / f
                for f in (
                    "causal_conv1d.cpp",
                    "causal_conv1d_fwd.cu",
                    "causal_conv1d_bwd.cu",
                    "causal_conv1d_update.cu",
                )
            ],
            "extra_cflags": ["-O3"],
            "extra_cuda_cflags": NVCC_FLAGS,
            "extra_include_paths": [conv],
        },
    }


def build_info(dirs: dict[str, Path]) -> dict:
    import torch

    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "arch": ARCH,
        "sources": {k: v.name for k, v in dirs.items()},
        "patches": sorted(json.loads((WORK / "src" / "PATCHES.json").read_text())),
    }


def _parts(folder: Path, name: str) -> list[Path]:
    """``NAME.so.gz`` or its pieces ``NAME.so.gz.0``, ``.1``, ... in order."""
    whole = folder / f"{name}.so.gz"
    if whole.is_file():
        return [whole]
    pieces = [p for p in folder.glob(f"{name}.so.gz.*") if p.suffix[1:].isdigit()]
    return sorted(pieces, key=lambda p: int(p.suffix[1:]))


def _reuse_prebuilt(name: str, folder: Path, info: dict) -> bool:
    prebuilt = WORK / "prebuilt"
    parts = _parts(prebuilt, name)
    meta = prebuilt / "build-info.json"
    if not parts or not meta.is_file():
        return False
    saved = json.loads(meta.read_text())
    if saved != info:
        print(f"[build] {name}: the prebuilt one was built for {saved}, not {info}: rebuilding", flush=True)
        return False
    folder.mkdir(parents=True, exist_ok=True)
    packed = b"".join(p.read_bytes() for p in parts)
    (folder / f"{name}.so").write_bytes(gzip.decompress(packed))
    print(f"[build] {name}: reused {', '.join(p.name for p in parts)}", flush=True)
    return True


#: What comes back from the device: files of at most 16 MiB each (README of the device tool).
PIECE_BYTES = 15 * 2**20


def _save_for_rerun(name: str, so: Path, out: Path | None, info: dict) -> None:
    """Strip, gzip and (over 15 MiB) split ``so`` into ``out``, beside ``build-info.json``."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    stripped = so.with_suffix(".stripped.so")
    shutil.copy(so, stripped)
    if shutil.which("strip"):
        subprocess.run(["strip", "--strip-debug", str(stripped)], check=False)
    packed = gzip.compress(stripped.read_bytes(), compresslevel=6)
    stripped.unlink()
    if len(packed) <= PIECE_BYTES:
        (out / f"{name}.so.gz").write_bytes(packed)
    else:
        for i in range(0, len(packed), PIECE_BYTES):
            (out / f"{name}.so.gz.{i // PIECE_BYTES}").write_bytes(packed[i : i + PIECE_BYTES])
    (out / "build-info.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"[build] {name}: saved to {out} ({len(packed) / 2**20:.1f} MiB gzipped)", flush=True)


def ensure_kernels(out: Path | None = None, dry_run: bool = False) -> dict:
    """Build or reuse both modules, put everything on ``sys.path``; returns a record of it."""
    dirs = source_dirs()
    record: dict = {"sources": {k: v.name for k, v in dirs.items()}}
    specs = extensions(dirs)
    if dry_run:
        record["would_compile"] = {k: [Path(s).name for s in v["sources"]] for k, v in specs.items()}
        return record
    from torch.utils.cpp_extension import load

    os.environ["TORCH_CUDA_ARCH_LIST"] = ARCH  # this script's process only
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 8))
    info = build_info(dirs)
    record["build_info"] = info
    for name, spec in specs.items():
        folder = WORK / "build" / name
        start = time.perf_counter()
        if not _reuse_prebuilt(name, folder, info):
            folder.mkdir(parents=True, exist_ok=True)
            print(f"[build] {name}: compiling {len(spec['sources'])} files for sm_90 ...", flush=True)
            sys.modules[name] = load(  # imported once: `import name` finds this module
                name=name,
                sources=[str(s) for s in spec["sources"]],
                extra_cflags=spec["extra_cflags"],
                extra_cuda_cflags=spec["extra_cuda_cflags"],
                extra_include_paths=[str(p) for p in spec["extra_include_paths"]],
                build_directory=str(folder),
                verbose=False,
            )
            _save_for_rerun(name, folder / f"{name}.so", out, info)
        record[f"{name}_s"] = round(time.perf_counter() - start, 1)
        sys.path.insert(0, str(folder))
    for path in dirs.values():
        sys.path.insert(0, str(path))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list what would be compiled, compile nothing")
    args = parser.parse_args(argv)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    print(json.dumps(ensure_kernels(out, dry_run=args.dry_run), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
