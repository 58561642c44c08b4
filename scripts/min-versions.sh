#!/usr/bin/env bash
# The declared minimum versions, tested: every install_requires floor of setup.cfg installed
# exactly (torch aside: the pinned CPU wheel, as in the Makefile) into a separate venv, then a fast
# subset of the tests that reaches each dependency. Called by `make test-min` (CI, after `make test`).
#   scripts/min-versions.sh [VENV]        VENV defaults to build/venv-min (git- and docker-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${1:-build/venv-min}
BIN=$VENV/bin
start=$SECONDS

pip_install() {  # quiet, less the warnings about unreachable extra index folders
    "$BIN/python" -m pip install --quiet "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
}

# The venv is rebuilt whenever the floors change (its copy of the constraints is the stamp).
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PYTHON" scripts/min_constraints.py setup.cfg > "$constraints"
if ! cmp -s "$constraints" "$VENV/constraints.txt"; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    pip_install --upgrade pip setuptools wheel
    pip_install torch==2.13.0
    pip_install -c "$constraints" -e . pytest
    cp "$constraints" "$VENV/constraints.txt"
fi
echo "== minimum versions in $VENV ($((SECONDS - start)) s): torch==2.13.0 $(grep -v '^#' "$VENV/constraints.txt" | tr '\n' ' ')"

# Each dependency is reached by at least one file: pybids + nipype (naming, workflow graphs, the
# participant level end to end), nilearn + nibabel + templateflow (parcellation, confounds against
# NiftiLabelsMasker, atlas fetchers), NiMARE (Neurosynth), numba + torch + einops + safetensors
# (the scan kernels, the model, checkpoints), scikit-learn (splits, baseline, metrics), pandas
# (the legacy importer); NiftiLabelsMasker is compared with one confounds strategy, not three.
# About 3 minutes on 2 cores. numba's cache goes to the venv: two numba versions would overwrite
# each other's cache files beside the sources.
echo "== fast tests on the minimum versions"
NIPYPE_NO_ET=1 NUMBA_CACHE_DIR="$VENV/numba-cache" "$BIN/python" -m pytest -p no:cacheprovider -q \
    -m "not slow" -k "not (nilearn_masker and (none or simple))" --durations=10 \
    tests/test_bids_naming.py tests/test_parcellate.py tests/test_fetch.py tests/test_neurosynth.py \
    tests/test_mamba.py tests/test_neurossm.py tests/test_group_core.py tests/test_legacy.py \
    tests/test_participant_cli.py
