"""The Celery side of the retry hand-off test: a stock Celery worker runs ``retries.handoff``.

Broker, its transport options (JSON) and result backend come from ``INTEROP_BROKER_URL``,
``INTEROP_BROKER_OPTIONS`` and ``INTEROP_REDIS_URL``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

app = Celery(
    "interop-celery-retries",
    broker=os.environ.get("INTEROP_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    broker_transport_options=json.loads(os.environ.get("INTEROP_BROKER_OPTIONS", "{}")),
)


@app.task(name="retries.handoff", bind=True)
def handoff(self: Any, label: str) -> dict[str, Any]:
    """Say who ran this retry, and what the message told the worker."""
    request = self.request
    return {
        "by": "celery",
        "retries": request.retries,
        "args": list(request.args),
        "id": request.id,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "eta": request.eta,
    }
