FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY learners learners
COPY streams streams
COPY workers workers
RUN pip install --no-cache-dir . && useradd --system learnloop
USER learnloop
ENV LEARNLOOP_DATA_DIR=/tmp/learnloop
ENTRYPOINT ["learnloop"]
