"""The Celery app the stock monitors (Flower, ``celery events``) run with in the event tests:
the broker and its transport options come from ``MONITOR_BROKER_URL`` and
``MONITOR_TRANSPORT_OPTIONS`` (JSON), so a Redis test's key prefix reaches them too."""

from __future__ import annotations

import json
import os

from celery import Celery

app = Celery("monitor", broker=os.environ["MONITOR_BROKER_URL"], set_as_current=True)
app.conf.broker_transport_options = json.loads(os.environ.get("MONITOR_TRANSPORT_OPTIONS", "{}"))
