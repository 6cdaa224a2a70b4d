# syntax=docker/dockerfile:1
# The endodoc GPU worker image: one Celery worker process per GPU. Build from the
# repository root:
#   docker build -f infra/docker/worker.Dockerfile -t endodoc/worker:0.1.0 .
#
# PyPI's torch 2.14.1 wheel is built for CUDA 13.0 and brings its own CUDA and cuDNN
# libraries, so the base image only needs to match the driver: CUDA 13.0 needs an NVIDIA
# driver of the 580 series or newer on the GPU nodes.

ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu22.04

FROM ${CUDA_IMAGE} AS build

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# endodoc needs Python 3.11, which Ubuntu 22.04 ships only from the deadsnakes archive.
# Its package versions change with every upload, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY workers ./workers
COPY migrations ./migrations
RUN python3.11 -m venv /opt/endodoc && /opt/endodoc/bin/pip install .

FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 \
    && apt-get purge -y --auto-remove gpg-agent software-properties-common \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 endodoc \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/endodoc/scratch endodoc \
    && mkdir -p /var/lib/endodoc/blobs /var/lib/endodoc/scratch \
    && chown -R 10001:10001 /var/lib/endodoc

COPY --from=build /opt/endodoc /opt/endodoc

ENV PATH=/opt/endodoc/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/endodoc/scratch \
    ENDODOC_DATA_DIR=/var/lib/endodoc/scratch \
    ENDODOC_BLOB_DIR=/var/lib/endodoc/blobs \
    ENDODOC_MODEL__DEVICE=cuda \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER 10001:10001
WORKDIR /var/lib/endodoc/scratch
# One solo-pool Celery worker on one GPU; it loads the model before it takes tasks.
CMD ["endodoc", "worker", "--queues=embed"]
