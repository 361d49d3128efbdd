"""A Celery project as it would run under ``celery beat``: a ``beat_schedule`` with an interval
entry and a crontab entry, and the task they fire, which records each run in a Redis list
(``BEAT_RECORDS``). The broker and queue come from the environment."""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery
from celery.schedules import crontab

app = Celery("beatproj", broker=os.environ.get("BEAT_BROKER", "memory://"))
app.conf.task_default_queue = os.environ.get("BEAT_QUEUE", "celery")
app.conf.beat_schedule = {
    "every-two-seconds": {"task": "beatproj.record", "schedule": 2.0, "args": ("interval",)},
    "every-minute": {"task": "beatproj.record", "schedule": crontab(), "args": ("cron",)},
}


@app.task(name="beatproj.record", bind=True)
def record(self, label: str) -> None:  # type: ignore[no-untyped-def]
    """Record which entry fired this run, when it ran, and its task id."""
    client = redis.Redis.from_url(os.environ["BEAT_BROKER"])
    entry = {"label": label, "ran": time.time(), "id": self.request.id}
    client.rpush(os.environ["BEAT_RECORDS"], json.dumps(entry))
