#!/usr/bin/env bash
# `make demo` for HCP's layout, CPU only: called by `make demo-hcp` with .venv on PATH. The same
# synthetic subjects written as HCP-YA's minimal-preprocessing outputs (with fsLR grayordinates),
# read with --input-type hcp into both spaces, and the hcp-task preset trained on the grayordinates.
set -euo pipefail
demo=${1:-demo-hcp}
mkdir -p "$demo"
demo=$(cd "$demo" && pwd)
rm -rf "$demo/hcp" "$demo/out" "$demo/out-fslr" "$demo/work"
start=$SECONDS

echo "== 1/4 synthetic HCP-YA layout: 12 subjects x 3 tasks, <subject>/MNINonLinear/Results/tfMRI_*"
neurossm-synth "$demo/hcp" --layout hcp --cifti --subjects 12 --tasks motor,language,wm --volumes 150 \
    --tr 2.0 --seed 4

export TEMPLATEFLOW_HOME="$demo/hcp/sourcedata/atlases/templateflow"
export NILEARN_DATA="$demo/hcp/sourcedata/atlases/nilearn_data"

echo "== 2/4 participant level, volumes: MNI152NLin6Asym, Schaefer-400, 36P from HCP's own files"
# no low-pass: it would remove motor's and wm's fast bursts (docs/usage.md, "Planted effects")
neurossm-app "$demo/hcp" "$demo/out" participant --input-type hcp -w "$demo/work" --nprocs 2 --low-pass none

echo "== 3/4 participant level, grayordinates: --space fsLR, the fsLR Schaefer-400 dlabel"
neurossm-app "$demo/hcp" "$demo/out-fslr" participant --input-type hcp --space fsLR -w "$demo/work" --nprocs 2 \
    --low-pass none

echo "== 4/4 group level on the grayordinates: hcp-task, 3-fold cross-validation"
neurossm-app "$demo/hcp" "$demo/out-fslr" group --preset hcp-task --dynamic-length 120 \
    --folds 3 --seeds 0 --epochs 60 --d-model 32 --n-layers 1 --omp-nthreads 2

echo
echo "Done in $((SECONDS - start)) s. Results:"
echo "  volumetric series:       $demo/out/sub-*/func/*_space-MNI152NLin6Asym_*_timeseries.tsv"
echo "  grayordinate series:     $demo/out-fslr/sub-*/func/*_space-fsLR_den-91k_*_timeseries.tsv"
echo "  group report:            $demo/out-fslr/group/hcp-task/report.html"
