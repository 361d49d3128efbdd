"""A stock Celery 5.7 client publishes through kombu's own SQS transport (boto3, no pycurl
needed to publish) to a local SQS (moto); ``celeriac worker`` consumes; results in Redis.

The worker finds the server as an operator's would: ``--broker sqs://KEY:SECRET@`` and the
endpoint and region in the environment (``AWS_ENDPOINT_URL_SQS``, ``AWS_DEFAULT_REGION``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
from celery import Celery

from tests.sqs_server import ACCESS_KEY, REGION, SECRET_KEY, delete_sqs_queues

from .app import PaymentDeclined
from .conftest import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.interop]

StartWorker = Callable[..., WorkerProcess]


def _endpoint(sqs_url: str) -> str:
    return dict(parse_qsl(urlsplit(sqs_url).query))["endpoint_url"]


@pytest.fixture
def sqs_worker(start_worker: StartWorker, sqs_url: str, unique_name: str) -> Iterator[None]:
    """``celeriac worker -Q <unique_name> --broker sqs://KEY:SECRET@``, endpoint from the env."""
    start_worker(
        unique_name,
        broker=f"sqs://{ACCESS_KEY}:{SECRET_KEY}@",
        env={"AWS_ENDPOINT_URL_SQS": _endpoint(sqs_url), "AWS_DEFAULT_REGION": REGION},
    )
    yield
    asyncio.run(delete_sqs_queues(sqs_url, [unique_name, f"{unique_name}.dead"]))


@pytest.fixture
def sqs_client(sqs_url: str, redis_url: str) -> Iterator[Celery]:
    """A stock Celery client on kombu's SQS transport (``sqs://KEY:SECRET@host:port``)."""
    endpoint = urlsplit(_endpoint(sqs_url))
    broker = f"sqs://{ACCESS_KEY}:{SECRET_KEY}@{endpoint.hostname}:{endpoint.port}"
    app = Celery("client", broker=broker, backend=redis_url, set_as_current=False)
    app.conf.broker_transport_options = {"is_secure": False, "region": REGION}
    yield app
    app.backend.client.close()


@pytest.mark.usefixtures("sqs_worker")
def test_a_celery_client_gets_the_result(sqs_client: Celery, unique_name: str) -> None:
    result = sqs_client.send_task("interop.add", args=(2, 3), queue=unique_name)

    assert result.get(timeout=20) == 5


@pytest.mark.usefixtures("sqs_worker")
def test_a_failure_arrives_as_the_tasks_exception(sqs_client: Celery, unique_name: str) -> None:
    result = sqs_client.send_task("interop.decline", args=("card expired",), queue=unique_name)

    with pytest.raises(PaymentDeclined) as caught:
        result.get(timeout=20)

    assert caught.value.args == ("card expired", 402)
    assert result.state == "FAILURE"


def test_sigterm_ends_a_long_poll_and_the_worker(
    start_worker: StartWorker, sqs_url: str, unique_name: str
) -> None:
    worker = start_worker(
        unique_name,
        broker=f"sqs://{ACCESS_KEY}:{SECRET_KEY}@?wait_time_seconds=20",
        env={"AWS_ENDPOINT_URL_SQS": _endpoint(sqs_url), "AWS_DEFAULT_REGION": REGION},
    )

    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout=15) == 0  # not held until the 20 s poll ends
    worker.wait_for("worker_stopped")
    asyncio.run(delete_sqs_queues(sqs_url, [unique_name, f"{unique_name}.dead"]))
