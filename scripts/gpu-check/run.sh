#!/usr/bin/env bash
# The device check, as one `run` call on the device machine (docs/performance.md says how):
# build or reuse the kernels (build.py), then check.py's four sections; the results, the log and
# the built kernels (for a rerun) go to $OUT. Extra arguments go to check.py (e.g.
# --sections cpa,fold --deadline-s 200).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-.device/gpu-check/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 NIPYPE_NO_ET=1
export NUMBA_CACHE_DIR=/tmp/numba-cache
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | tee "$out/check.log"
nvcc --version 2>&1 | tail -2 | tee -a "$out/check.log"
python3 scripts/gpu-check/check.py --out "$out" "$@" 2>&1 | tee -a "$out/check.log"
exit "${PIPESTATUS[0]}"
