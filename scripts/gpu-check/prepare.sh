#!/usr/bin/env bash
# Prepare the device check (docs/performance.md, "GPU: the prepared device check"), here, with
# network access: download the source distributions of mamba-ssm and causal-conv1d from PyPI
# into the git-ignored .device/gpu-check/, unpack and patch them for the device's toolchain
# (scripts/gpu-check/patch_sources.py). The device has no network; `run` carries the folder.
#
#   bash scripts/gpu-check/prepare.sh                 # download, unpack, patch
#   bash scripts/gpu-check/prepare.sh --prebuilt DIR  # also keep the kernels a first run built
#                                                     # (DIR: that run's files_at), so a rerun
#                                                     # skips the build
#
# Versions: the [cuda] extra's pins (setup.cfg); override with MAMBA_SSM_VERSION and
# CAUSAL_CONV1D_VERSION. Nothing here is committed: .device/ is in .gitignore.
set -euo pipefail
cd "$(dirname "$0")/../.."

MAMBA_SSM_VERSION=${MAMBA_SSM_VERSION:-2.3.0}
CAUSAL_CONV1D_VERSION=${CAUSAL_CONV1D_VERSION:-1.6.0}
PYTHON=${PYTHON:-.venv/bin/python}
DEST=.device/gpu-check

if ! git check-ignore -q "$DEST"; then
    echo "prepare.sh: $DEST is not git-ignored; refusing to put upstream sources there" >&2
    exit 1
fi
mkdir -p "$DEST/sdist" "$DEST/src"

# --no-build-isolation and the SKIP flags: pip only reads the metadata of the sdists (their
# setup.py imports torch, which the environment has); nothing is compiled here.
MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
    --dest "$DEST/sdist" "mamba-ssm==${MAMBA_SSM_VERSION}" "causal-conv1d==${CAUSAL_CONV1D_VERSION}"

for archive in "$DEST/sdist/mamba_ssm-${MAMBA_SSM_VERSION}.tar.gz" \
               "$DEST/sdist/causal_conv1d-${CAUSAL_CONV1D_VERSION}.tar.gz"; do
    name=$(basename "$archive" .tar.gz)
    if [ ! -d "$DEST/src/$name" ]; then
        tar -xzf "$archive" -C "$DEST/src"
    fi
done
"$PYTHON" scripts/gpu-check/patch_sources.py "$DEST/src"

if [ "${1:-}" = "--prebuilt" ]; then
    from=${2:?--prebuilt needs the folder where the files of the first run came back}
    mkdir -p "$DEST/prebuilt"
    cp "$from"/*.so.gz* "$from"/build-info.json "$DEST/prebuilt/"
    echo "prebuilt kernels kept in $DEST/prebuilt: $(ls "$DEST/prebuilt" | tr '\n' ' ')"
fi
du -sh "$DEST"
echo "ready: run 'bash scripts/gpu-check/run.sh' on the device with carry [\"$DEST\"]"
