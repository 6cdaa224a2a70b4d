# syntax=docker/dockerfile:1
# The endodoc API image (CPU). It also runs the migration Job, the reconciliation CronJob and
# the CPU worker of the compose setup. Build from the repository root:
#   docker build -f infra/docker/api.Dockerfile -t endodoc/api:0.1.0 .

FROM python:3.11-slim-bookworm AS build

# PyPI's torch 2.14.1 wheel for x86_64 is a CUDA build (several GB). Point this at a CPU-only
# wheel index to get a smaller image; the pins in pyproject.toml still apply.
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY workers ./workers
COPY migrations ./migrations

RUN python -m venv /opt/endodoc \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
         /opt/endodoc/bin/pip install --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1; \
       fi \
    && /opt/endodoc/bin/pip install .

FROM python:3.11-slim-bookworm

# The same user and group ids as the Helm chart's podSecurityContext.
RUN groupadd --system --gid 10001 endodoc \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/endodoc/scratch endodoc \
    && mkdir -p /var/lib/endodoc/blobs /var/lib/endodoc/scratch \
    && chown -R 10001:10001 /var/lib/endodoc

COPY --from=build /opt/endodoc /opt/endodoc

ENV PATH=/opt/endodoc/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/endodoc/scratch \
    ENDODOC_DATA_DIR=/var/lib/endodoc/scratch \
    ENDODOC_BLOB_DIR=/var/lib/endodoc/blobs

USER 10001:10001
WORKDIR /var/lib/endodoc/scratch
EXPOSE 8000
CMD ["endodoc", "serve", "--host", "0.0.0.0", "--port", "8000"]
