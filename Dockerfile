# One image for every learnloop process: `docker run IMAGE worker feedback`, `... worker trainer`,
# `... db upgrade`; docker-compose.yml picks the command per service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY learners learners
COPY streams streams
COPY workers workers

# The `train` extra (torch, transformers, peft, mlflow, the MiniLM base model) goes into the one
# image so that the trainer runs from it too. Trade-off: from the default index, torch on
# linux/x86_64 is the CUDA build and brings the nvidia-* wheels, several GB, which every service
# then carries although only the trainer uses them (and only the trainer can use a GPU). To get a
# slim image for feedback/conversations/api/lag-exporter, build a second image from this file with
# `pip install .` instead and point those services at it.
RUN pip install '.[train]' \
    && groupadd --system --gid 10001 learnloop \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/learnloop --create-home learnloop

# DATA_DIR holds what a process keeps locally (the trainer's work files, caches); the trainer mounts
# a volume here. The learners file is mounted at /etc/learnloop/learners.toml by compose.
ENV LEARNLOOP_DATA_DIR=/var/lib/learnloop \
    HOME=/var/lib/learnloop \
    MLFLOW_DISABLE_TELEMETRY=true
WORKDIR /var/lib/learnloop
USER 10001:10001

# Health is checked by the orchestrator (docker-compose.yml probes each service's /metrics or
# /healthz; Kubernetes uses probes), not by the image: each process listens on a different port.
HEALTHCHECK NONE

ENTRYPOINT ["learnloop"]
CMD ["--help"]
