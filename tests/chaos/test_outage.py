"""Broker outages under load: RabbitMQ stopped and started, then a Redis that is both broker
and result backend. The worker reconnects by itself, logs its attempts, ``/readyz`` says
unready meanwhile, every ``acks_late`` task runs and every result is stored; a publish from
celeriac's producer during the outage either goes through after the reconnect or raises
:class:`~runtime.errors.BrokerConnectionError`: never lost in silence.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from runtime import App
from runtime.errors import BrokerConnectionError
from tests.chaos.conftest import ChaosRun
from tests.chaos.servers import LocalRedis, local_redis, rabbitmq, rabbitmq_restored
from tests.controller.test_probes import free_port, get
from tests.interop.conftest import Broker, WorkerProcess

#: Slots per worker: ~2 ms of work each, so the load outlasts the outage.
CONCURRENCY = 2
#: Tasks finished before the broker goes away.
BEFORE = 200
#: How long it stays away (seconds).
OUTAGE = 4.0

pytestmark = [pytest.mark.integration, pytest.mark.interop, pytest.mark.timeout(600)]


def _readiness(port: int, status: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while get(port, "/readyz")[0] != status:
        assert time.monotonic() < deadline, f"/readyz never answered {status}"
        time.sleep(0.1)


class PublishAcross(threading.Thread):
    """celeriac's producer, connected before the outage, publishing once more during it."""

    def __init__(self, url: str, queue: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.queue = queue
        self.connected = threading.Event()
        self.outage = threading.Event()
        #: ``("sent", task id)`` or ``("refused", error text)``, for each publish.
        self.outcomes: list[tuple[str, str]] = []

    def run(self) -> None:
        asyncio.run(self._publish())

    async def _publish(self) -> None:
        app = App("producer", broker=self.url)
        try:
            sent = await app.send_task("chaos.late", args=(self.queue,), queue=self.queue)
            self.outcomes.append(("sent", sent.id))
            self.connected.set()
            await asyncio.to_thread(self.outage.wait)
            try:
                async with asyncio.timeout(120):
                    sent = await app.send_task("chaos.late", args=(self.queue,), queue=self.queue)
                self.outcomes.append(("sent", sent.id))
            except BrokerConnectionError as exc:
                self.outcomes.append(("refused", str(exc)))
        finally:
            await app.aclose()


def _outage_under_load(
    chaos: ChaosRun, worker_url: str, stop: Callable[[], None], start: Callable[[], None]
) -> tuple[WorkerProcess, PublishAcross, list[str]]:
    """Send the tasks, start a worker with probes, take the broker away for ``OUTAGE`` seconds
    once ``BEFORE`` tasks ran, publish during it, and bring it back; the worker, the
    publisher and the ids sent by the Celery client."""
    ids = chaos.send("chaos.late")
    port = free_port()
    worker = chaos.start(CONCURRENCY, "--http-port", str(port))
    publisher = PublishAcross(worker_url, chaos.queue)
    publisher.start()
    assert publisher.connected.wait(30)
    chaos.wait_for_all(BEFORE, timeout=60)
    stop()
    publisher.outage.set()
    _readiness(port, 503)
    time.sleep(OUTAGE)
    assert chaos.finished() < len(ids), "the load ended before the outage did"
    start()
    _readiness(port, 200)
    publisher.join(timeout=150)
    assert not publisher.is_alive()
    return worker, publisher, ids


def _check(
    chaos: ChaosRun, worker: WorkerProcess, publisher: PublishAcross, ids: list[str]
) -> dict[str, int]:
    """Nothing lost: every task the client and the producer sent ran; the worker reconnected
    by itself, in the same process, and said so."""
    sent = [value for outcome, value in publisher.outcomes if outcome == "sent"]
    refused = [value for outcome, value in publisher.outcomes if outcome == "refused"]
    assert all("broker" in text.lower() for text in refused), refused
    expected = set(ids) | set(sent)
    chaos.wait_for_all(len(expected))
    runs = chaos.runs()
    print(
        f"\nchaos outage {chaos.broker.kind}: tasks={len(expected)} completed={len(runs)} "
        f"duplicates={sum(n - 1 for n in runs.values())} lost={len(expected - set(runs))} "
        f"publish during outage: {publisher.outcomes[1][0]}"
    )
    assert expected == set(runs)
    assert worker.proc.poll() is None  # the same worker, never restarted
    return runs


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_rabbitmq_stopped_and_started_under_load(chaos: ChaosRun, broker: Broker) -> None:
    """``rabbitmqctl stop_app``, four seconds, ``start_app``: nothing lost."""
    with rabbitmq_restored():
        worker, publisher, ids = _outage_under_load(
            chaos, broker.url, lambda: rabbitmq("stop_app"), lambda: rabbitmq("start_app")
        )
    _check(chaos, worker, publisher, ids)
    attempts = [line for line in worker.lines if "reconnect" in line.lower()]
    assert attempts, "the worker never logged a reconnect attempt"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A Redis of the test's own, to stop and start."""
    with local_redis(tmp_path) as server:
        yield server


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_redis_broker_and_backend_stopped_and_started_under_load(
    chaos: ChaosRun, own_redis: LocalRedis, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The Redis that is both broker and result backend shut down for four seconds and
    started again: every task runs and every result is in the backend after."""
    url = own_redis.url
    client = Celery("outage", broker=url, backend=url, set_as_current=False)
    chaos.broker = Broker("redis", url, url)
    chaos.client = client
    chaos.start_worker = functools.partial(start_worker, broker_url=url)
    chaos.worker_args = ("--result-backend", url)
    try:
        worker, publisher, ids = _outage_under_load(
            chaos, url, own_redis.stop, own_redis.start
        )  # fmt: skip
        runs = _check(chaos, worker, publisher, ids)
        stored = redis.Redis.from_url(url)
        try:
            missing = [i for i in runs if not stored.exists(f"celery-task-meta-{i}")]
        finally:
            stored.close()
        assert missing == []
        assert client.AsyncResult(ids[-1]).get(timeout=10) == ids[-1]
    finally:
        client.backend.client.close()
    attempts = [line for line in worker.lines if "retry" in line.lower()]
    assert attempts, "the worker never logged a reconnect attempt"


@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_a_warm_stop_while_the_backend_is_away_keeps_the_task(chaos: ChaosRun) -> None:
    """The result backend never answers: the worker retries the write until SIGTERM, stops
    within its grace, and the ``acks_late`` message is back in the queue, not acknowledged."""
    chaos.worker_args = ("--result-backend", f"redis://127.0.0.1:{free_port()}/0")
    worker = chaos.start(1, "--grace", "2")
    (task_id,) = chaos.send("chaos.late", 1)
    worker.wait_for("result_backend_retry", timeout=30, attempt=3)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert chaos.runs() == {task_id: 1}
    assert chaos.broker.ready(chaos.queue) == 1
