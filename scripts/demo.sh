#!/usr/bin/env bash
# End-to-end demo on synthetic data, CPU only: called by `make demo` with .venv on PATH.
set -euo pipefail
demo=${1:-demo}
mkdir -p "$demo"
demo=$(cd "$demo" && pwd)  # absolute: DEMO_DIR may be relative or absolute
rm -rf "$demo/data" "$demo/out" "$demo/work"
start=$SECONDS

# The design (docs/usage.md, "The demo's design"): rest has no effect, so no class is recognised
# only by the absence of the others' effects; language carries a slow 0.015-0.03 Hz wave (a raw-
# pathway effect), motor and wm sparse 3-volume bursts (difference-pathway effects).
echo "== 1/3 synthetic BIDS dataset: 12 subjects x 4 tasks (rest, motor, language, wm), fMRIPrep derivatives"
neurossm-synth "$demo/data" --subjects 12 --tasks rest,motor,language,wm --volumes 150 --tr 2.0 --seed 4

# TemplateFlow and nilearn read these caches; nothing is downloaded.
export TEMPLATEFLOW_HOME="$demo/data/sourcedata/atlases/templateflow"
export NILEARN_DATA="$demo/data/sourcedata/atlases/nilearn_data"

# No low-pass: a 0.1 Hz low-pass would remove the bursts, and with them what the difference
# pathways are for (docs/cpa.md).
echo "== 2/3 participant level: Schaefer-400 ROI time series, 36P confounds, 0.01 Hz high-pass"
neurossm-app "$demo/data" "$demo/out" participant -w "$demo/work" --nprocs 2 --skip-bids-validation \
    --low-pass none

# Fifteen small models (5 folds x 3 seeds, 20 epochs): the class maps average over them; the CPA
# of one small model is noisy (docs/cpa.md, "What CPA recovers on synthetic data").
echo "== 3/3 group level: NeuroSSM 5-fold cross-validation x 3 seeds, CPA vs Neurosynth, report"
neurossm-app "$demo/data" "$demo/out" group --preset hcp-task --dynamic-length 100 \
    --folds 5 --seeds 0 1 2 --epochs 20 --d-model 16 --n-layers 1 --d-state 8 --scales 1 2 \
    --batch-size 8 --lr 1e-2 --weight-decay 0.1 --augment none --inner-val 0 --omp-nthreads 2 \
    --analysis --neurosynth-dir "$demo/data/sourcedata/neurosynth" --n-null-maps 200

run="$demo/out/group/hcp-task"
echo
echo "What CPA found, against the effects the generator planted (sourcedata/synthetic_truth.json):"
python -m neurossm_app.synthetic.recovery "$demo/data" "$run" \
    || echo "(not every class met the checks: docs/cpa.md says what CPA can and cannot recover)"
echo
echo "Done in $((SECONDS - start)) s. Results:"
echo "  participant reports:     $demo/out/sub-*.html"
echo "  ROI time series:         $demo/out/sub-*/func/*_timeseries.tsv"
echo "  metrics (per fold):      $run/metrics.tsv"
echo "  summary (mean and SD):   $run/summary.json"
echo "  CPA maps (NIfTI):        $run/maps/"
echo "  group report:            $run/report.html"
echo "  methods boilerplate:     $demo/out/logs/CITATION.md"
