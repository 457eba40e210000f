# syntax=docker/dockerfile:1
# Hark's serving image: the server, its client CLI and the bundled model store. No torch, no training code.
#
#   docker build -t hark:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -p 50051:50051 hark:0.1.0
#
# Runs as an unprivileged user (uid 10001) and writes nothing outside /tmp, so it runs with a read-only
# root filesystem. The HEALTHCHECK is `hark health` (grpc.health.v1; exit 0 only when SERVING).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with Hark and its serving dependencies ---------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/hark

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
# `.`, not `.[train]`: the serving image never carries torch or the training pipeline.
RUN /opt/hark/bin/pip install .

# ---- runtime: the venv, the model store, an unprivileged user ----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 hark \
    && useradd --system --uid 10001 --gid hark --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin hark

COPY --from=build /opt/hark /opt/hark
COPY model_store/ /app/model_store/

# Settings: see the README's Settings table; any HARK_* variable overrides these. Nothing may write
# outside /tmp: numba's cache goes there, onnxruntime's telemetry store (under $HOME) is off.
ENV PATH=/opt/hark/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba \
    ORT_DISABLE_TELEMETRY=1 \
    HARK_HOST=0.0.0.0 \
    HARK_PORT=50051 \
    HARK_METRICS_HOST=0.0.0.0 \
    HARK_METRICS_PORT=9464 \
    HARK_WEBSOCKET_PORT=8765 \
    HARK_OIP_HTTP_PORT=8000 \
    HARK_MODEL_STORE=/app/model_store \
    HARK_LOG_FORMAT=json

WORKDIR /app
USER 10001:10001

# 50051: gRPC (Classifier, health, reflection). 9464: Prometheus metrics.
EXPOSE 50051 9464 8765 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "exec hark health --server \"127.0.0.1:${HARK_PORT}\" --timeout 3"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["hark"]
CMD ["serve"]
