# llmqueue's image: the package and its runtime dependencies only, run as a non-root user.
#
#   docker build -t llmqueue .
#   docker run --rm llmqueue --help
#   docker run --rm -e REDIS_URL=redis://redis.internal:6379/0 -e LLM_MODEL=... -e LLM_API_KEY=... llmqueue
#
# The entrypoint is the `llmqueue` command; the default command runs a worker with JSON logs and
# Prometheus metrics on port 9100. Settings come from the environment (LLM_*, WORKER_*, REDIS_URL) and
# from ./config.toml in the working directory /work when one is mounted there (or LLMQUEUE_CONFIG).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the package build reads (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY llmqueue ./llmqueue
# A plain, non-editable install with no extras: the runtime dependencies and nothing else.
RUN python -m venv /opt/llmqueue && /opt/llmqueue/bin/pip install .

FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 llmqueue \
    && useradd --system --uid 10001 --gid llmqueue --create-home --home-dir /home/llmqueue llmqueue \
    && mkdir /work && chown llmqueue:llmqueue /work
COPY --from=build /opt/llmqueue /opt/llmqueue
ENV PATH=/opt/llmqueue/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True
USER llmqueue
WORKDIR /work
EXPOSE 9100
ENTRYPOINT ["llmqueue"]
CMD ["worker", "--metrics-port", "9100", "--log-format", "json"]
