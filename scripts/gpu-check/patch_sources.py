"""Patch the unpacked mamba-ssm and causal-conv1d sources for the device check's build.

Run by ``prepare.sh`` on the sources it downloaded into the git-ignored ``.device/gpu-check/src``;
nothing upstream is ever committed. Each patch must match exactly as often as expected, or the
script stops and says which: sources of another version need a look, not a silent half-patch.

Patches:

- ``at-error``: ``AT_ERROR(...)`` becomes ``TORCH_CHECK(false, ...)`` in the C++ of both
  packages (the macro is deprecated and newer PyTorch may drop it; same message either way).
- ``fp32-bf16-real``: mamba-ssm's dispatch drops the float16 input and complex weight branches,
  so only the fp32 and bf16 real kernels (4 of 10 translation units) are compiled: the check
  runs on sm_90, where the group level trains in bf16 (and fp32 for the comparisons), and the
  build must fit in the device's minutes. A float16 or complex call then fails with the upstream
  "not implemented for input type" error.

Usage::

    python3 scripts/gpu-check/patch_sources.py .device/gpu-check/src
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HALF_INPUT = re.compile(
    r"if \(ITYPE == at::ScalarType::Half\) \{\s*\\\s*using input_t = at::Half;\s*\\\s*"
    r"__VA_ARGS__\(\);\s*\\\s*\} else if \(ITYPE == at::ScalarType::BFloat16\)"
)
COMPLEX_WEIGHT = re.compile(
    r"\} else if \(WTYPE == at::ScalarType::ComplexFloat\) \{\s*\\\s*"
    r"using weight_t = c10::complex<float>;\s*\\\s*__VA_ARGS__\(\);\s*\\\s*(\} else \{)"
)


def _sub(pattern: re.Pattern, replacement: str, text: str, expected: int, where: Path) -> str:
    new, count = pattern.subn(replacement, text)
    if count != expected:
        raise SystemExit(
            f"{where}: expected {expected} match(es) of {pattern.pattern[:60]}..., found {count}"
        )
    return new


def patch_at_error(path: Path) -> int:
    text = path.read_text()
    count = text.count("AT_ERROR(")
    if count:
        path.write_text(text.replace("AT_ERROR(", "TORCH_CHECK(false, "))
    return count


def main(src: Path) -> int:
    mamba = next(src.glob("mamba_ssm-*"), None)
    conv = next(src.glob("causal_conv1d-*"), None)
    if mamba is None or conv is None:
        raise SystemExit(f"{src} must hold the unpacked mamba_ssm-* and causal_conv1d-* sources")
    done_file = src / "PATCHES.json"
    if done_file.exists():
        print(f"already patched: {done_file.read_text().strip()}")
        return 0
    applied = {"at-error": {}}
    for path in sorted([*mamba.glob("csrc/**/*.cpp"), *conv.glob("csrc/**/*.cpp")]):
        count = patch_at_error(path)
        if count:
            applied["at-error"][str(path.relative_to(src))] = count
    scan_cpp = mamba / "csrc" / "selective_scan" / "selective_scan.cpp"
    text = scan_cpp.read_text()
    text = _sub(HALF_INPUT, "if (ITYPE == at::ScalarType::BFloat16)", text, 1, scan_cpp)
    text = _sub(COMPLEX_WEIGHT, r"\1", text, 1, scan_cpp)
    scan_cpp.write_text(text)
    applied["fp32-bf16-real"] = str(scan_cpp.relative_to(src))
    applied["sources"] = {"mamba_ssm": mamba.name, "causal_conv1d": conv.name}
    done_file.write_text(json.dumps(applied, indent=1) + "\n")
    print(json.dumps(applied))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.split("Usage::")[1].strip())
    raise SystemExit(main(Path(sys.argv[1])))
