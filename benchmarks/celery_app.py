"""The Celery side of the benchmarks: the same task names, run by Celery's own worker."""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "bench",
    broker=os.environ.get("CELERIAC_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
)
app.conf.update(worker_hijack_root_logger=False, task_ignore_result=True)


@app.task(name="noop")
def noop() -> None:
    """Does nothing."""
