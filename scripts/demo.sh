#!/usr/bin/env bash
# End-to-end demo on synthetic data, CPU only: called by `make demo` with .venv on PATH.
set -euo pipefail
demo=${1:-demo}
mkdir -p "$demo"
demo=$(cd "$demo" && pwd)  # absolute: DEMO_DIR may be relative or absolute
rm -rf "$demo/data" "$demo/out" "$demo/work"
start=$SECONDS

echo "== 1/3 synthetic BIDS dataset: 12 subjects x 3 tasks, fMRIPrep derivatives, planted task effects"
neurossm-synth "$demo/data" --subjects 12 --tasks motor,language,wm --volumes 150 --tr 2.0 --seed 4

# The real fetchers read these caches; nothing is downloaded.
export TEMPLATEFLOW_HOME="$demo/data/sourcedata/atlases/templateflow"
export NILEARN_DATA="$demo/data/sourcedata/atlases/nilearn_data"

echo "== 2/3 participant level: Schaefer-400 ROI time series, 36P confounds, 0.01-0.1 Hz"
neurossm-app "$demo/data" "$demo/out" participant -w "$demo/work" --nprocs 2 --skip-bids-validation

echo "== 3/3 group level: NeuroSSM 3-fold cross-validation of the task, CPA vs Neurosynth, report"
neurossm-app "$demo/data" "$demo/out" group --preset hcp-task --dynamic-length 120 \
    --folds 3 --seeds 0 --epochs 60 --d-model 32 --n-layers 1 --omp-nthreads 2 \
    --analysis --neurosynth-dir "$demo/data/sourcedata/neurosynth"

run="$demo/out/group/hcp-task"
echo
echo "Done in $((SECONDS - start)) s. Results:"
echo "  participant reports:     $demo/out/sub-*.html"
echo "  ROI time series:         $demo/out/sub-*/func/*_timeseries.tsv"
echo "  metrics (per fold):      $run/metrics.tsv"
echo "  summary (mean and SD):   $run/summary.json"
echo "  CPA maps (NIfTI):        $run/maps/"
echo "  group report:            $run/report.html"
echo "  methods boilerplate:     $demo/out/logs/CITATION.md"
