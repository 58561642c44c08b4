#!/usr/bin/env bash
# Container smoke test: build the cpu variant of the Dockerfile with podman, then run both levels
# inside it the way Apptainer runs an image on HPC, and check the outputs from the host.
#
#   bash scripts/container-smoke.sh [WORK_DIR]
#
# - The base image is Debian 12 made by mmdebstrap from Debian's packages and imported into podman
#   (registry images cannot be pulled on machines without registry access).
# - The build reaches the package index through the host's pip configuration and certificate
#   bundle, bound read-only into the build; nothing of them ends up in the image.
# - The atlases come from the synthetic generator (ATLAS_SOURCE=synthetic, labelled in the image):
#   TemplateFlow's and nilearn's servers are out of reach here. Release builds fetch the real ones.
# - The runs use another uid than the image's user, a read-only root filesystem, no network, the
#   data bound read-only and a writable output and work folder, as `apptainer run` would.
# Without podman it says why and exits 0; .ci/run installs podman, runc and mmdebstrap first.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v podman >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "container smoke test skipped: podman and mmdebstrap are not installed (Debian: apt-get install podman runc mmdebstrap)"
    exit 0
fi

version=$(python3 -c "import re; print(re.search(r'__version__ = \"(.+)\"', open('neurossm_app/__init__.py').read())[1])")
work=${1:-$(mktemp -d /tmp/neurossm-smoke.XXXXXX)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
image=localhost/neurossm-app:${version}-cpu
base=localhost/neurossm-base:bookworm
# crun fails on hybrid cgroup hosts and podman's default ulimits are refused in some sandboxes.
engine_opts=(--runtime runc)
limits=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
start=$SECONDS

say() { printf '== %s\n' "$*"; }
fail() { printf 'container smoke test FAILED: %s\n' "$*" >&2; exit 1; }

if ! podman image exists "$base"; then
    say "base image: Debian 12 (mmdebstrap minbase) -> $base"
    mmdebstrap --quiet --variant=minbase bookworm "$work/rootfs.tar"
    podman import --quiet "$work/rootfs.tar" "$base" >/dev/null
    rm -f "$work/rootfs.tar"
fi

# pip inside the build: the host's index settings, certificate bundle and local wheels, bound
# read-only under /tmp/host-pip and named by PIP_CONFIG_FILE, a build argument: RUN steps see it,
# the image's environment does not keep it. Only the empty mount points stay in the image's /tmp,
# which a run hides under its own /tmp.
host_pip=/tmp/host-pip
pip_conf="$work/pip.conf"
mounts=(-v "$pip_conf:$host_pip/pip.conf:ro")
pip_setting() { python3 -m pip config get "global.$1" 2>/dev/null || true; }
{
    echo "[global]"
    cert=${PIP_CERT:-$(pip_setting cert)}
    if [ -n "$cert" ] && [ -f "$cert" ]; then
        echo "cert = $host_pip/ca-bundle.crt"
        mounts+=(-v "$cert:$host_pip/ca-bundle.crt:ro")
    fi
    n=0
    links=()
    for dir in ${PIP_FIND_LINKS:-$(pip_setting find-links)}; do
        [ -d "$dir" ] || continue
        n=$((n + 1)) && links+=("$host_pip/links-$n") && mounts+=(-v "$dir:$host_pip/links-$n:ro")
    done
    [ ${#links[@]} -gt 0 ] && echo "find-links = ${links[*]}"
    indexes=()
    for url in $(pip_setting extra-index-url); do
        # a local index links its files relative to the index root: bind the root
        dir=${url#file://}
        [ "$dir" != "$url" ] && [ -d "$dir" ] || continue
        n=$((n + 1)) && mounts+=(-v "${dir%/simple}:$host_pip/index-$n:ro")
        indexes+=("file://$host_pip/index-$n${dir#"${dir%/simple}"}")
    done
    [ ${#indexes[@]} -gt 0 ] && echo "extra-index-url = ${indexes[*]}"
    true
} >"$pip_conf"
# The CPU wheel the Makefile installs (a local file on these machines); override to test another.
torch_version=${CPU_TORCH_VERSION:-2.13.0}

say "building $image (cpu variant, torch $torch_version, synthetic atlases)"
build_start=$SECONDS
podman build --format docker "${engine_opts[@]}" "${limits[@]}" "${mounts[@]}" \
    --build-arg VERSION="$version" --build-arg VARIANT=cpu --build-arg CPU_BASE_IMAGE="$base" \
    --build-arg CPU_TORCH_VERSION="$torch_version" --build-arg CPU_TORCH_INDEX_URL= \
    --build-arg ATLAS_SOURCE=synthetic --build-arg IMAGE_NAME=neurossm-app \
    --build-arg PIP_CONFIG_FILE="$host_pip/pip.conf" \
    --tag "$image" --file Dockerfile . >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log"; fail "podman build (log: $work/build.log)"; }
build_s=$((SECONDS - build_start))
size=$(podman image inspect "$image" --format '{{.Size}}')
labels=$(podman image inspect "$image" --format '{{index .Labels "io.github.neurossm-app.variant"}} {{index .Labels "io.github.neurossm-app.atlas-source"}}')
[ "$labels" = "cpu synthetic" ] || fail "image labels say '$labels', expected 'cpu synthetic'"
say "built in ${build_s} s, $((size / 1000000)) MB; labels: variant/atlas-source = $labels"

# As Apptainer: an unknown uid, read-only image, no network, data read-only, outputs writable.
mkdir -p "$work/data" "$work/out" "$work/scratch"
chmod 0777 "$work/data" "$work/out" "$work/scratch"
run_as=(podman run --rm "${engine_opts[@]}" "${limits[@]}" --user 4242:4242 --read-only --tmpfs /tmp
    --network none -v "$work/out:/out" -v "$work/scratch:/work")
in_image() { "${run_as[@]}" -v "$work/data:/data:ro" "$@"; }

say "neurossm-app --version"
[ "$(in_image "$image" --version)" = "neurossm-app $version" ] || fail "--version"
say "neurossm-app-fetch --check (baked atlases, offline)"
in_image --entrypoint neurossm-app-fetch "$image" --check || fail "neurossm-app-fetch --check"

say "synthetic dataset (written by the image's neurossm-synth)"
"${run_as[@]}" -v "$work/data:/data" --entrypoint neurossm-synth "$image" /data/bids \
    --subjects 6 --tasks motor,language --volumes 120 --tr 2.0 --seed 3 >"$work/synth.log" 2>&1 \
    || { tail -n 20 "$work/synth.log"; fail "neurossm-synth"; }

say "participant level"
in_image "$image" /data/bids /out participant -w /work --nprocs 2 --confounds simple --skip-bids-validation \
    >"$work/participant.log" 2>&1 || { tail -n 20 "$work/participant.log"; fail "participant level"; }
n_series=$(find "$work/out" -name '*_timeseries.tsv' | wc -l)
[ "$n_series" -eq 12 ] || fail "expected 12 time-series files, found $n_series"
ls "$work"/out/sub-*.html >/dev/null || fail "no participant reports"

say "group level with --analysis (synthetic Neurosynth files)"
in_image "$image" /data/bids /out group --preset hcp-task --dynamic-length 60 --folds 2 --seeds 0 \
    --epochs 3 --d-model 8 --n-layers 1 --analysis --neurosynth-dir /data/bids/sourcedata/neurosynth \
    >"$work/group.log" 2>&1 || { tail -n 20 "$work/group.log"; fail "group level"; }
run_dir="$work/out/group/hcp-task"
for file in metrics.tsv summary.json predictions.tsv report.html cpa/analysis.json; do
    [ -s "$run_dir/$file" ] || fail "group output $file is missing"
done
n_maps=$(find "$run_dir/maps" -name '*.nii.gz' | wc -l)
[ "$n_maps" -gt 0 ] || fail "no NIfTI maps in $run_dir/maps"
grep -q "<html" "$run_dir/report.html" || fail "report.html is not HTML"
python3 - "$run_dir/summary.json" <<'EOF' || fail "summary.json has no NeuroSSM accuracy"
import json, sys
summary = json.load(open(sys.argv[1]))
accuracy = summary["models"]["neurossm"]["accuracy"]["mean"]
assert accuracy is not None and 0 <= accuracy <= 1, accuracy
EOF
owner=$(stat -c %u "$run_dir/summary.json")
[ "$owner" = 4242 ] || fail "outputs are owned by uid $owner, not the calling uid 4242"

say "passed in $((SECONDS - start)) s (build ${build_s} s, image $((size / 1000000)) MB); logs in $work"
