# neurossm-app: the BIDS App with the atlases baked in, in two variants from this one file.
#
#   docker build -t neurossm-app:0.1.0 --build-arg VERSION=0.1.0 .                          # CUDA (default)
#   docker build -t neurossm-app:0.1.0-cpu --build-arg VERSION=0.1.0 --build-arg VARIANT=cpu .
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" \
#       -v /data/bids:/data:ro -v /data/out:/out -v /scratch/work:/work \
#       neurossm-app:0.1.0 /data /out participant -w /work
#
# VARIANT=cuda: a CUDA "devel" stage (builder) makes the wheels of causal-conv1d and mamba-ssm and
# a CUDA "runtime" stage (base-cuda) installs them with the CUDA build of PyTorch, so no compiler,
# CUDA headers or build cache end up in the image. VARIANT=cpu: base-cpu is Debian with the CPU
# build of PyTorch and no mamba-ssm (the app's own selective scan), a slim image for
# participant-level array jobs and CPU group runs. Every later layer is shared: the app, the baked
# atlases, the non-root user, the environment, the entrypoint and the labels. Nothing is
# downloaded at run time, and Apptainer's bind of the host $HOME cannot hide the atlases (/opt).
# docs/installation.md explains the build arguments; scripts/container-smoke.sh builds the cpu
# variant and runs both levels in it; tests/test_containers.py keeps this file, singularity.def
# and setup.cfg in agreement.

# Versions, shared by every stage. torch, CUDA and Python must match the prebuilt kernels of
# mamba-ssm/causal-conv1d (or set KERNELS_FORCE_BUILD=TRUE to compile them here).
ARG VERSION=0.1.0
ARG VARIANT=cuda
ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
ARG MAMBA_SSM_VERSION=2.3.0
ARG CAUSAL_CONV1D_VERSION=1.6.0
# mamba-ssm imports transformers' generation utilities at import time; 2.3.0 accepts transformers
# 4.46 to 5 (setup.cfg's cuda extra bounds it), pinned here to a release tested with it.
ARG TRANSFORMERS_VERSION=4.46.3
ARG PIP_VERSION=24.3.1
# The cpu variant: a Debian 12 base (Python 3.11 from Debian) and the CPU build of PyTorch. An
# empty CPU_TORCH_INDEX_URL installs torch from the default index (pip's own configuration).
ARG CPU_BASE_IMAGE=debian:bookworm-slim
ARG CPU_TORCH_VERSION=2.5.1
ARG CPU_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# --------------------------------------------------------------------------------------------
# cuda variant, stage 1: the kernels' wheels
FROM nvidia/cuda:12.4.1-devel-ubuntu22.04 AS builder

ARG PYTHON_VERSION
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG MAMBA_SSM_VERSION
ARG CAUSAL_CONV1D_VERSION
ARG PIP_VERSION
# TRUE compiles the CUDA kernels here instead of downloading the upstream prebuilt wheels for this
# torch/CUDA/Python combination (slow: tens of minutes per package; MAX_JOBS bounds the memory).
ARG KERNELS_FORCE_BUILD=FALSE
ARG MAX_JOBS=4

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive

# Python from the deadsnakes PPA: Ubuntu 22.04 ships 3.10 only.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-dev" "python${PYTHON_VERSION}-venv" git \
 && rm -rf /var/lib/apt/lists/*

RUN "python${PYTHON_VERSION}" -m venv /opt/build-venv
ENV PATH=/opt/build-venv/bin:$PATH
RUN pip install --no-cache-dir "pip==${PIP_VERSION}" setuptools==75.6.0 wheel==0.45.1 packaging==24.2 \
      ninja==1.11.1.3 \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# No GPU is visible during `docker build`, so torch's extension builder cannot detect one: name
# Ampere (8.0, 8.6), Ada (8.9) and Hopper (9.0, PTX for newer). When they compile, mamba-ssm and
# causal-conv1d add their own -gencode list (Volta, Ampere, Hopper), which takes precedence.
ENV CUDA_HOME=/usr/local/cuda \
    TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX"
WORKDIR /build
RUN MAMBA_FORCE_BUILD="${KERNELS_FORCE_BUILD}" CAUSAL_CONV1D_FORCE_BUILD="${KERNELS_FORCE_BUILD}" \
    MAX_JOBS="${MAX_JOBS}" \
    pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels \
      "causal-conv1d==${CAUSAL_CONV1D_VERSION}" "mamba-ssm==${MAMBA_SSM_VERSION}"

# --------------------------------------------------------------------------------------------
# cuda variant, stage 2: CUDA runtime, Python, the CUDA build of torch and the kernels
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04 AS base-cuda

ARG PYTHON_VERSION
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG MAMBA_SSM_VERSION
ARG CAUSAL_CONV1D_VERSION
ARG TRANSFORMERS_VERSION
ARG PIP_VERSION

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive

# The same Python as the builder; the PPA tooling is removed again afterwards.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/*

# torch from the CUDA index, then the kernels built above (pinned, so pip never picks a newer
# mamba-ssm source release it cannot build).
COPY --from=builder /wheels /tmp/wheels
RUN "python${PYTHON_VERSION}" -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir "pip==${PIP_VERSION}" \
 && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && /opt/venv/bin/pip install --no-cache-dir --find-links /tmp/wheels \
      "torch==${TORCH_VERSION}" \
      "mamba-ssm==${MAMBA_SSM_VERSION}" \
      "causal-conv1d==${CAUSAL_CONV1D_VERSION}" \
      "transformers==${TRANSFORMERS_VERSION}" \
 && rm -rf /tmp/wheels \
 && /opt/venv/bin/python -c "import causal_conv1d, mamba_ssm.ops.selective_scan_interface"

# --------------------------------------------------------------------------------------------
# cpu variant: Debian's Python 3.11 and the CPU build of torch
FROM ${CPU_BASE_IMAGE} AS base-cpu

ARG PIP_VERSION
ARG CPU_TORCH_VERSION
ARG CPU_TORCH_INDEX_URL
# Only for builds that reach the package index through a mounted pip configuration (the smoke
# test); a build argument is seen by RUN steps and not kept in the image.
ARG PIP_CONFIG_FILE

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# hadolint ignore=SC2086
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir "pip==${PIP_VERSION}" \
 && /opt/venv/bin/pip install --no-cache-dir ${CPU_TORCH_INDEX_URL:+--index-url "${CPU_TORCH_INDEX_URL}"} \
      "torch==${CPU_TORCH_VERSION}"

# --------------------------------------------------------------------------------------------
# Shared by both variants: the app, the atlases, the user, the environment
# hadolint ignore=DL3006
FROM base-${VARIANT} AS final

ARG VERSION
ARG VARIANT
# The image name written to dataset_description.json (GeneratedBy.Container.Tag).
ARG IMAGE_NAME=neurossm-app
# fetch: the real atlases, downloaded once at build time (production). synthetic: the atlases of
# neurossm-synth, for builds without network access to TemplateFlow and nilearn's servers (the
# container smoke test); never ship such an image. The label below says which an image holds.
ARG ATLAS_SOURCE=fetch
# 1: also bake Neurosynth (version 7, abstract terms; about 1 GB) into NEUROSYNTH_DIR.
ARG FETCH_NEUROSYNTH=0
ARG PIP_CONFIG_FILE

LABEL org.opencontainers.image.title="neurossm-app" \
      org.opencontainers.image.description="BIDS App: fMRIPrep derivatives to ROI time series (participant) and NeuroSSM classification with CPA explanations (group)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/neurossm-app/neurossm-app" \
      org.opencontainers.image.url="https://github.com/neurossm-app/neurossm-app" \
      org.opencontainers.image.licenses="MIT" \
      io.github.neurossm-app.variant="${VARIANT}" \
      io.github.neurossm-app.atlas-source="${ATLAS_SOURCE}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# neurossm-app (with its cuda extra in the cuda variant, satisfied by the kernels of base-cuda);
# bids-validator-deno lets the participant level validate BIDS_DIR as it does outside containers.
COPY pyproject.toml setup.cfg README.md /tmp/src/
COPY neurossm_app /tmp/src/neurossm_app
RUN extras=""; if [ "${VARIANT}" = "cuda" ]; then extras="[cuda]"; fi \
 && pip install --no-cache-dir "/tmp/src${extras}" bids-validator-deno==3.0.2 \
 && rm -rf /tmp/src \
 && pip check \
 && test "$(neurossm-app --version)" = "neurossm-app ${VERSION}"

ENV NIPYPE_NO_ET=1 \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NILEARN_DATA=/opt/nilearn_data \
    NEUROSYNTH_DIR=/opt/neurosynth \
    MPLCONFIGDIR=/tmp/mpl \
    NUMBA_CACHE_DIR=/tmp/numba \
    HOME=/home/neurossm \
    NEUROSSM_CONTAINER_TAG="${IMAGE_NAME}:${VERSION}"

# Schaefer2018 400 (7 and 17 networks, res-1 and res-2, label tables) and AAL3v2, read-only for
# everyone; Neurosynth only with FETCH_NEUROSYNTH=1. The synthetic source takes the generator's
# atlases (same file names and label tables, synthetic parcels) instead.
RUN if [ "${ATLAS_SOURCE}" = "synthetic" ]; then \
      neurossm-synth /tmp/synth --subjects 2 --volumes 20 --atlas-cache /tmp/atlases \
      && mv /tmp/atlases/templateflow "${TEMPLATEFLOW_HOME}" \
      && mv /tmp/atlases/nilearn_data "${NILEARN_DATA}" \
      && rm -rf /tmp/synth /tmp/atlases; \
    else \
      neurossm-app-fetch --atlas all --templateflow-home "${TEMPLATEFLOW_HOME}" --nilearn-data "${NILEARN_DATA}"; \
    fi \
 && mkdir -p "${NEUROSYNTH_DIR}" \
 && if [ "${FETCH_NEUROSYNTH}" = "1" ]; then \
      neurossm-app-fetch --atlas none --neurosynth "${NEUROSYNTH_DIR}"; \
    fi \
 && chmod -R a+rX "${TEMPLATEFLOW_HOME}" "${NILEARN_DATA}" "${NEUROSYNTH_DIR}"

# A fixed non-root user (uid 1000); HOME is writable by any uid, so `docker run -u "$(id -u):$(id -g)"`
# (outputs owned by you) works too. The name is kept for readability (DL3066 asks for the uid).
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash neurossm \
 && chmod 0777 /home/neurossm
# hadolint ignore=DL3066
USER neurossm
WORKDIR /home/neurossm

# As the runtime user and with the runtime environment: the app starts and the atlases resolve
# from the baked caches without the network.
RUN neurossm-app --version && neurossm-app-fetch --check

ENTRYPOINT ["neurossm-app"]
