# The drop-in worker image: `docker run … celeriac worker -A your.module:app -Q standard`.
# WORKER_QUEUES, CELERIAC_BROKER_URL (or CELERY_BROKER_URL) and CELERIAC_RESULT_BACKEND
# configure it as they configure a Celery worker container; `--group NAME --profile fast` with
# CELERIAC_GROUPS_FILE=examples/groups.toml runs one of DATAMIMIC's worker groups (compose.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY runtime ./runtime
COPY controller ./controller
COPY examples ./examples
RUN pip install --no-cache-dir . && useradd --create-home celeriac
USER celeriac

# SIGTERM: stop consuming, let running tasks finish (--grace), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["celeriac"]
CMD ["worker", "-A", "examples.tasks:app", "--log-format", "json"]
