# syntax=docker/dockerfile:1
# nextclick's images. No Docker engine runs on the development machines or in CI: the test suite lints
# this file (hadolint) and checks its structure (tests/test_deploy_image.py); it has not been built there.
#
#   docker build -t nextclick:0.1.0 .                                         # serving, CPU (default target)
#   docker build --build-arg ACCELERATOR=cuda -t nextclick:0.1.0-cuda .      # serving, onnxruntime-gpu
#   docker build --target training -t nextclick-training:0.1.0 .             # python -m training.retrain
#   docker build --target training --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#       -t nextclick-training:0.1.0-cuda .                                     # the same on a GPU (--device cuda)
#
# Serving runs `python -m stream_app worker` with onnxruntime and no torch; training carries torch (CPU
# wheel, pinned as in pyproject.toml). Each final stage gets only a virtual environment built in its own
# build stage, runs as an unprivileged user, and is configured by NEXTCLICK_* variables (docs/configuration.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG ACCELERATOR=cpu

# --- the Python every stage runs on: the slim CPU image, or a CUDA runtime base ----------------------
FROM ${PYTHON_IMAGE} AS python-cpu

FROM ${CUDA_IMAGE} AS python-cuda
# Ubuntu's python3 (3.12) goes with the CUDA base's release; pinning its patch level breaks on updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# One of the two stages above, both tagged (hadolint cannot resolve a stage name built from an ARG).
# hadolint ignore=DL3006
FROM python-${ACCELERATOR} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    NEXTCLICK_DATA_DIR=/var/lib/nextclick/data \
    NEXTCLICK_ARTIFACT_DIR=/var/lib/nextclick/artifacts \
    NEXTCLICK_ARTIFACT_CACHE_DIR=/var/lib/nextclick/cache \
    NEXTCLICK_TABLE_DIR=/var/lib/nextclick/tables \
    NEXTCLICK_WEB_PORT=6066
# The settings' defaults point into a source checkout; in an image every path above is a volume.
RUN groupadd --system --gid 10001 nextclick \
    && useradd --system --uid 10001 --gid nextclick --create-home --home-dir /home/nextclick nextclick \
    && mkdir -p /var/lib/nextclick/data /var/lib/nextclick/artifacts /var/lib/nextclick/cache \
        /var/lib/nextclick/tables \
    && chown -R nextclick:nextclick /var/lib/nextclick

# --- the package's source, which both build stages install ---------------------------------------------
FROM python-base AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream_app stream_app
COPY models models
COPY training training

# --- serving ------------------------------------------------------------------------------------------
FROM source AS serving-build
ARG ACCELERATOR
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
# onnxruntime and onnxruntime-gpu share one module: the CPU build goes before the GPU build comes in.
RUN python3 -m venv /opt/venv \
    && pip install "./[rocksdb,ann]" \
    && if [ "$ACCELERATOR" = cuda ]; then \
        pip uninstall -y onnxruntime \
        && pip install "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"; \
    fi

# --- training -----------------------------------------------------------------------------------------
FROM source AS training-build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# torch first, from the CPU-only index: the default wheel pulls several GB of CUDA libraries. A CUDA index
# (TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128) gives a torch that trains on a GPU: its wheel
# carries the CUDA libraries, so the slim base serves it (the node's driver comes in through the NVIDIA runtime).
RUN python3 -m venv /opt/venv \
    && pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}" \
    && pip install "./[train]"

FROM python-base AS training
COPY --from=training-build /opt/venv /opt/venv
COPY configs /opt/nextclick/configs
WORKDIR /opt/nextclick
USER 10001:10001
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "training.retrain"]
CMD ["--help"]

# The serving image is the last stage, so a plain `docker build .` gives it.
FROM python-base AS serving
COPY --from=serving-build /opt/venv /opt/venv
WORKDIR /home/nextclick
USER 10001:10001
EXPOSE 6066
# /livez answers while the event loop runs; readiness (/readyz) is the orchestrator's business.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ['NEXTCLICK_WEB_PORT'], timeout=4)"]
ENTRYPOINT ["python", "-m", "stream_app", "worker"]
CMD ["-l", "info"]
