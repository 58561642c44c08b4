#!/usr/bin/env bash
# The custom-atlas example on synthetic data, CPU only: called by `make demo-atlas` with .venv on
# PATH. A 100-parcel atlas of one's own, as a BIDS atlas dataset, through both levels.
set -euo pipefail
demo=${1:-demo/custom-atlas}
mkdir -p "$demo"
demo=$(cd "$demo" && pwd)  # absolute: DEMO_DIR may be relative or absolute
rm -rf "$demo/data" "$demo/atlases" "$demo/out" "$demo/work"
start=$SECONDS

echo "== 1/3 synthetic BIDS dataset (12 subjects x 3 tasks, planted task effects) and a 100-parcel atlas dataset"
neurossm-synth "$demo/data" --subjects 12 --tasks motor,language,wm --volumes 150 --tr 2.0 --seed 4 \
    --custom-atlas "$demo/atlases"

# The real fetchers read these caches; nothing is downloaded.
export TEMPLATEFLOW_HOME="$demo/data/sourcedata/atlases/templateflow"
export NILEARN_DATA="$demo/data/sourcedata/atlases/nilearn_data"

echo "== 2/3 participant level: -d atlases=$demo/atlases --atlas Synth100 (label image + index/name TSV)"
neurossm-app "$demo/data" "$demo/out" participant -w "$demo/work" --nprocs 2 --skip-bids-validation \
    -d atlases="$demo/atlases" --atlas Synth100 --low-pass none  # keeps motor's and wm's fast bursts

echo "== 3/3 group level: NeuroSSM on the 100 ROIs (the only atlas in OUTPUT_DIR), 3-fold cross-validation of the task"
neurossm-app "$demo/data" "$demo/out" group --preset hcp-task --dynamic-length 120 \
    --folds 3 --seeds 0 --epochs 30 --d-model 32 --n-layers 1 --omp-nthreads 2

run="$demo/out/group/hcp-task"
echo
echo "Done in $((SECONDS - start)) s. Results:"
echo "  ROI time series (100 columns): $demo/out/sub-*/func/*_atlas-Synth100_stat-mean_timeseries.tsv"
echo "  their sidecars (AtlasFile, AtlasSHA256): $demo/out/sub-*/func/*_atlas-Synth100_stat-mean_timeseries.json"
echo "  metrics (per fold):            $run/metrics.tsv"
echo "  group report:                  $run/report.html"
