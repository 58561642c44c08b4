# neurossm-app: the BIDS App with the CUDA kernels of mamba-ssm and the atlases baked in.
#
#   docker build -t neurossm-app:0.1.0 --build-arg VERSION=0.1.0 .
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" \
#       -v /data/bids:/data:ro -v /data/out:/out -v /scratch/work:/work \
#       neurossm-app:0.1.0 /data /out participant -w /work
#
# Stage "builder" (CUDA devel: nvcc and headers) makes the wheels of causal-conv1d, mamba-ssm and
# neurossm-app; the final stage (CUDA runtime) installs them, so no compiler, CUDA headers or build
# cache end up in the image. Then the atlases are fetched once, at build time, into /opt: nothing
# is downloaded at run time, and Apptainer's bind of the host $HOME cannot hide them.
# docs/installation.md explains the build arguments; tests/test_containers.py keeps this file,
# singularity.def and setup.cfg in agreement.

# Versions, shared by both stages. torch, CUDA and Python must match the prebuilt kernels of
# mamba-ssm/causal-conv1d (or set KERNELS_FORCE_BUILD=TRUE to compile them here).
ARG VERSION=0.1.0
ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
ARG MAMBA_SSM_VERSION=2.2.4
ARG CAUSAL_CONV1D_VERSION=1.5.0.post8
# mamba-ssm 2.2.x imports transformers' generation utilities at import time; newer transformers
# releases removed some of them, which would make `import mamba_ssm` fail (and the app fall back
# to the slow PyTorch scan). Pin a release from the same months as mamba-ssm 2.2.4.
ARG TRANSFORMERS_VERSION=4.46.3
ARG PIP_VERSION=24.3.1

# --------------------------------------------------------------------------------------------
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

COPY pyproject.toml setup.cfg README.md ./
COPY neurossm_app ./neurossm_app
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --------------------------------------------------------------------------------------------
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04

ARG VERSION
ARG PYTHON_VERSION
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG MAMBA_SSM_VERSION
ARG CAUSAL_CONV1D_VERSION
ARG TRANSFORMERS_VERSION
ARG PIP_VERSION
# The image name written to dataset_description.json (GeneratedBy.Container.Tag).
ARG IMAGE_NAME=neurossm-app
# 1: also bake Neurosynth (version 7, abstract terms; about 1 GB) into NEUROSYNTH_DIR.
ARG FETCH_NEUROSYNTH=0

LABEL org.opencontainers.image.title="neurossm-app" \
      org.opencontainers.image.description="BIDS App: fMRIPrep derivatives to ROI time series (participant) and NeuroSSM classification with CPA explanations (group)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/neurossm-app/neurossm-app" \
      org.opencontainers.image.url="https://github.com/neurossm-app/neurossm-app" \
      org.opencontainers.image.licenses="MIT"

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

RUN "python${PYTHON_VERSION}" -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# torch first, from the CUDA index; then neurossm-app with its `cuda` extra, resolved against the
# wheels built above (pinned, so pip never picks a newer mamba-ssm source release it cannot build).
# bids-validator-deno lets the participant level validate BIDS_DIR as it does outside containers.
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-cache-dir "pip==${PIP_VERSION}" \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip install --no-cache-dir --find-links /tmp/wheels \
      "neurossm-app[cuda]==${VERSION}" \
      "torch==${TORCH_VERSION}" \
      "mamba-ssm==${MAMBA_SSM_VERSION}" \
      "causal-conv1d==${CAUSAL_CONV1D_VERSION}" \
      "transformers==${TRANSFORMERS_VERSION}" \
      bids-validator-deno==3.0.2 \
 && rm -rf /tmp/wheels \
 && python -c "import causal_conv1d, mamba_ssm.ops.selective_scan_interface" \
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
# everyone; Neurosynth only with FETCH_NEUROSYNTH=1.
RUN neurossm-app-fetch --atlas all --templateflow-home "${TEMPLATEFLOW_HOME}" --nilearn-data "${NILEARN_DATA}" \
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
