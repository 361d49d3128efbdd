"""SQS only: what a worker on SQS must do that the other brokers' tests do not show.

The plain-task interop tests (``@every_broker`` in ``test_worker.py``) run on SQS too: a stock
Celery client publishes through kombu's own SQS transport (boto3; publishing needs no pycurl)
to a local moto server, and ``celeriac worker`` consumes.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from .conftest import Broker, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.interop]

StartWorker = Callable[..., WorkerProcess]


@pytest.mark.parametrize("broker", ["sqs"], indirect=True)
def test_sigterm_ends_a_long_poll_and_the_worker(
    start_worker: StartWorker, broker: Broker, unique_name: str
) -> None:
    worker = start_worker(unique_name, broker_url=f"{broker.url}&wait_time_seconds=20")

    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout=15) == 0  # not held until the 20 s poll ends
    worker.wait_for("worker_stopped")
