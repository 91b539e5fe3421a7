# syntax=docker/dockerfile:1.7
# Three images from one file:
#   api      slim Python, no torch; the API and the dashboard (/ui): docker build --target api -t tunedock-api .
#   runner   CUDA + torch + the Unsloth stack: docker build --target runner -t tunedock-runner .
#   serving  vLLM's OpenAI server + serving/:  docker build --target serving -t tunedock-serving .
# Versions in the runner are the set checked together on an H100 (see DESIGN.md / bench/RESULTS.md).
ARG PYTHON_IMAGE=python:3.12.7-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
ARG NODE_IMAGE=node:20.18.1-bookworm-slim

# ---------------------------------------------------------------------------------------------
# The dashboard's browser assets (uPlot) from the npm registry, pinned by package-lock.json; the
# api image serves them itself, so browsers never reach a CDN.
FROM ${NODE_IMAGE} AS ui
WORKDIR /ui
COPY service/ui/package.json service/ui/package-lock.json ./
RUN npm ci --no-audit --no-fund

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS api
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNEDOCK_HOST=0.0.0.0 TUNEDOCK_PORT=8080 TUNEDOCK_DATA_DIR=/data
# wordnet-base: WordNet 3.0 for the METEOR grader's synonyms (TUNEDOCK_WORDNET_DIR).
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends wordnet-base \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tunedock \
 && useradd --system --uid 10001 --gid tunedock --home-dir /app --shell /usr/sbin/nologin tunedock \
 && mkdir -p /data && chown tunedock:tunedock /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY --from=ui /ui/node_modules ./service/ui/node_modules
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-compile .
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["python", "-m", "service", "api"]

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runner
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH TUNEDOCK_DATA_DIR=/data HF_HUB_OFFLINE=1
# The CUDA image's Ubuntu archive moves under us; Python comes from the distribution (24.04: 3.12).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
      cmake wordnet-base \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && groupadd --system --gid 10001 tunedock \
 && useradd --system --uid 10001 --gid tunedock --home-dir /app --shell /usr/sbin/nologin tunedock \
 && mkdir -p /data && chown tunedock:tunedock /data
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install torch==2.11.0 --index-url https://download.pytorch.org/whl/cu130
COPY pyproject.toml README.md ./
COPY service ./service
# ".[train]" is this repository; every training package it pulls is pinned on the same line.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-compile ".[train]" transformers==5.17.0 peft==0.21.0 trl==1.15.0 \
      datasets==4.8.5 bitsandbytes==0.50.2 unsloth==2026.10.9 unsloth_zoo==2026.10.9
# llama.cpp's quantizer and runtime for GGUF exports (service/training/native/build.sh); generic
# x86-64 code, since the image runs on hosts other than the one that built it.
RUN GGML_NATIVE=OFF bash service/training/native/build.sh python /opt/venv/bin/tunedock-llama
USER 10001:10001
# The runner releases its lease and lets the child finish an upload on SIGTERM.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service", "runner"]

# ---------------------------------------------------------------------------------------------
FROM ${VLLM_IMAGE} AS serving
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNEDOCK_DATA_DIR=/data VLLM_ALLOW_RUNTIME_LORA_UPDATING=True HF_HUB_OFFLINE=1
WORKDIR /opt/tunedock
COPY pyproject.toml README.md ./
COPY service ./service
COPY serving ./serving
# vLLM's image brings torch, transformers and vLLM; add the service's light dependencies and the
# LoRA resolver plugin (an entry point of this package).
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-compile .
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=180s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["python3", "-m", "serving"]
