#!/usr/bin/env bash
# End-to-end demo on synthetic data, CPU only: called by `make demo` with .venv on PATH.
set -euo pipefail
demo=${1:-demo}
rm -rf "$demo/data" "$demo/out" "$demo/work"
mkdir -p "$demo"

echo "== 1/3 synthetic BIDS dataset with fMRIPrep derivatives and planted effects"
neurossm-synth "$demo/data" --subjects 24 --volumes 160 --seed 0

atlas_cache="$demo/data/sourcedata/atlases"
export TEMPLATEFLOW_HOME="$PWD/$atlas_cache/templateflow"
export NILEARN_DATA="$PWD/$atlas_cache/nilearn_data"

echo "== 2/3 participant level: ROI time series (Schaefer-400, 36P confounds)"
neurossm-app "$demo/data" "$demo/out" participant -w "$demo/work" --nprocs 2

echo "== 3/3 group level: NeuroSSM cross-validation (target: sex)"
if neurossm-app --help | grep -q -- "--preset"; then
    neurossm-app "$demo/data" "$demo/out" group -w "$demo/work" --preset hcp-rest \
        --target participants:sex --dynamic-length 100 --folds 3 --seeds 0 --epochs 15 \
        --d-model 32 --n-layers 1
fi

echo
echo "Results:"
echo "  participant-level time series: $demo/out/sub-*/func/"
[ -d "$demo/out/group" ] && echo "  group-level metrics and checkpoints: $(ls -d "$demo"/out/group/*)"
echo "  methods boilerplate: $demo/out/logs/CITATION.md"
