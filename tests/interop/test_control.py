"""Remote control and revocation as a Celery user sees them, on RabbitMQ and Redis.

A stock Celery 5.7 client pings, inspects, revokes and shuts down ``celeriac worker``; and
celeriac's own ``app.revoke`` is obeyed by a stock ``celery worker`` as well as by celeriac.
Every worker gets a node name of its own (``<unique_name>@<host>``) and every command names
its destination: on RabbitMQ the ``celery.pidbox`` exchange is shared by every worker on the
broker, other tests' too.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable

import pytest
import redis
from celery import Celery
from celery.exceptions import TaskRevokedError

from runtime import App
from tests.conftest import _NAMES

from .app import app as interop_app
from .conftest import Broker, WorkerProcess, eventually

pytestmark = [pytest.mark.integration, pytest.mark.interop]

StartWorker = Callable[..., WorkerProcess]
StartCelery = Callable[..., subprocess.Popen[str]]
Counts = Callable[[], dict[str, int]]


@pytest.fixture
def node(unique_name: str) -> str:
    """The celeriac worker's node name in this test."""
    return f"{unique_name}@{socket.gethostname()}"


def test_ping_and_inspect_get_celerys_replies(
    start_worker: StartWorker, celery_client: Celery, node: str, unique_name: str,
    broker: Broker,
) -> None:  # fmt: skip
    worker = start_worker(unique_name, hostname=node)
    control = celery_client.control

    assert control.ping(destination=[node], timeout=5) == [{node: {"ok": "pong"}}]
    assert control.ping(destination=[f"other-{node}"], timeout=0.5) == []
    by_pattern = control.broadcast(
        "ping", reply=True, pattern=f"{unique_name}@.*", matcher="pcre", limit=1, timeout=5
    )
    assert by_pattern == [{node: {"ok": "pong"}}]
    unknown = control.broadcast("no_such_command", reply=True, destination=[node], timeout=5)
    assert unknown == [{node: {"error": "KeyError('no_such_command')"}}]

    running = celery_client.send_task("interop.slow", args=(5,), queue=unique_name)
    worker.wait_for("task_started", task_id=running.id)
    inspect = control.inspect(destination=[node], timeout=5)

    assert inspect.registered() == {node: sorted(interop_app.tasks)}
    [active] = inspect.active()[node]
    assert {k: active[k] for k in ("id", "name", "type", "args", "kwargs", "hostname")} == {
        "id": running.id,
        "name": "interop.slow",
        "type": "interop.slow",
        "args": [5],
        "kwargs": {},
        "hostname": node,
    }
    assert active["acknowledged"] is True
    assert active["worker_pid"] == worker.proc.pid
    assert abs(active["time_start"] - time.time()) < 10
    assert active["delivery_info"]["routing_key"] == unique_name
    assert inspect.reserved() == {node: []}
    assert inspect.scheduled() == {node: []}
    assert inspect.query_task(running.id)[node][running.id][0] == "active"

    stats = inspect.stats()[node]
    assert stats["pid"] == worker.proc.pid
    assert stats["total"] == {"interop.slow": 1}
    assert stats["pool"]["max-concurrency"] == 2
    assert stats["prefetch_count"] == 2
    assert stats["broker"]["transport"] == broker.kind
    assert stats["broker"]["hostname"] == "127.0.0.1"
    assert "password" not in stats["broker"]
    assert isinstance(stats["uptime"], int)
    assert stats["rusage"]["maxrss"] > 0

    [queue] = inspect.active_queues()[node]
    assert queue["name"] == queue["routing_key"] == unique_name
    assert queue["durable"] is True
    assert queue["exchange"]["name"] == unique_name
    assert queue["exchange"]["type"] == "direct"
    assert inspect.conf()[node]["task_default_queue"] == "celery"
    assert running.id not in inspect.revoked()[node]  # the ids of earlier tests may be there
    assert inspect.clock()[node]["clock"] > 0
    assert running.get(timeout=15) == "slept"


def test_a_revoked_countdown_task_never_runs(
    *, start_worker: StartWorker, celery_client: Celery, node: str, unique_name: str,
    broker: Broker, counts: Counts,
) -> None:  # fmt: skip
    worker = start_worker(unique_name, hostname=node)
    key = f"{unique_name}:runs"
    doomed = celery_client.send_task("interop.count", (key,), queue=unique_name, countdown=3)
    kept = celery_client.send_task("interop.count", (key,), queue=unique_name, countdown=3)
    eventually(lambda: broker.ready(unique_name) == 0)  # the worker holds both

    celery_client.control.revoke(doomed.id)

    assert kept.get(timeout=15) == "celeriac"  # the countdown is over
    worker.wait_for("task_revoked", task_id=doomed.id, reason="revoked")
    assert counts() == {kept.id: 1}
    assert doomed.state == "REVOKED"
    with pytest.raises(TaskRevokedError, match="revoked"):
        doomed.get(timeout=5)
    inspect = celery_client.control.inspect(destination=[node], timeout=5)
    assert doomed.id in inspect.revoked()[node]


def test_revoked_ids_survive_a_worker_restart(
    *, start_worker: StartWorker, celery_client: Celery, node: str, unique_name: str,
    redis_url: str, counts: Counts,
) -> None:  # fmt: skip
    first = start_worker(unique_name, hostname=node)
    task_id = str(uuid.uuid4())
    celery_client.control.revoke(task_id)
    inspect = celery_client.control.inspect(destination=[node], timeout=5)
    eventually(lambda: task_id in inspect.revoked()[node])
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    results = redis.Redis.from_url(redis_url)
    try:
        results.delete(f"celery-task-meta-{task_id}")  # the new worker must store REVOKED itself
    finally:
        results.close()

    second = start_worker(unique_name, hostname=node)
    key = f"{unique_name}:runs"
    doomed = celery_client.send_task("interop.count", (key,), queue=unique_name, task_id=task_id)
    after = celery_client.send_task("interop.count", (key,), queue=unique_name)

    assert after.get(timeout=15) == "celeriac"
    second.wait_for("task_revoked", task_id=task_id, reason="revoked")
    assert counts() == {after.id: 1}
    with pytest.raises(TaskRevokedError, match="revoked"):
        doomed.get(timeout=5)


def test_terminate_stops_a_running_coroutine_task(
    start_worker: StartWorker, celery_client: Celery, node: str, unique_name: str
) -> None:
    worker = start_worker(unique_name, hostname=node, concurrency=1)
    long = celery_client.send_task("interop.slow", args=(60,), queue=unique_name)
    worker.wait_for("task_started", task_id=long.id)
    asked = time.monotonic()

    reply = celery_client.control.revoke(
        long.id, terminate=True, destination=[node], reply=True, timeout=5
    )

    assert reply == [{node: {"ok": f"terminate: {long.id}"}}]
    with pytest.raises(TaskRevokedError, match="terminated"):
        long.get(timeout=10)
    assert long.state == "REVOKED"
    assert time.monotonic() - asked < 5
    worker.wait_for("task_revoked", task_id=long.id, reason="terminated")
    # The one slot is free again.
    assert celery_client.send_task("interop.add", (1, 2), queue=unique_name).get(timeout=10) == 3


def test_shutdown_stops_the_worker_gracefully(
    start_worker: StartWorker, celery_client: Celery, node: str, unique_name: str,
    broker: Broker,
) -> None:  # fmt: skip
    worker = start_worker(unique_name, hostname=node)
    running = celery_client.send_task("interop.slow", args=(1.5,), queue=unique_name)
    worker.wait_for("task_started", task_id=running.id)

    celery_client.control.shutdown(destination=[node])

    assert worker.wait() == 0
    worker.wait_for("worker_stopping")
    assert running.get(timeout=5) == "slept"  # the running task was let finish
    waiting = celery_client.send_task("interop.add", (1, 1), queue=unique_name)
    eventually(lambda: broker.ready(unique_name) == 1)
    assert waiting.state == "PENDING"


@pytest.fixture
def celery_queue() -> str:
    """A queue of the test's own for the stock Celery worker (deleted after the session)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    _NAMES.append(name)
    return name


def test_celeriacs_revoke_is_obeyed_by_celery_and_by_celeriac(
    *, start_celery_worker: StartCelery, start_worker: StartWorker, celery_client: Celery,
    broker: Broker, redis_url: str, node: str, unique_name: str, celery_queue: str,
    counts: Counts,
) -> None:  # fmt: skip
    start_celery_worker(celery_queue, broker_url=broker.client_url, concurrency=1,
                        keyprefix=broker.client_options.get("global_keyprefix", ""))  # fmt: skip
    start_worker(unique_name, hostname=node)
    key = f"{unique_name}:runs"

    def send(queue: str) -> tuple[str, str]:
        doomed = celery_client.send_task("interop.count", (key,), queue=queue, countdown=3)
        kept = celery_client.send_task("interop.count", (key,), queue=queue, countdown=3)
        return doomed.id, kept.id

    (doomed_celery, kept_celery), (doomed_celeriac, kept_celeriac) = (
        send(celery_queue),
        send(unique_name),
    )

    async def revoke() -> None:
        app = App("revoker", broker=broker.url, result_backend=redis_url)
        try:
            await app.revoke([doomed_celery, doomed_celeriac])
        finally:
            await app.aclose()

    asyncio.run(revoke())

    assert celery_client.AsyncResult(kept_celery).get(timeout=20) == "celery"
    assert celery_client.AsyncResult(kept_celeriac).get(timeout=20) == "celeriac"
    for doomed in (doomed_celery, doomed_celeriac):
        with pytest.raises(TaskRevokedError, match="revoked"):
            celery_client.AsyncResult(doomed).get(timeout=10)
    time.sleep(0.5)  # a doomed task running late would have counted by now
    assert counts() == {kept_celery: 1, kept_celeriac: 1}


def test_a_celery_worker_learns_celeriacs_revoked_ids_when_it_starts(
    *, start_celery_worker: StartCelery, start_worker: StartWorker, celery_client: Celery,
    broker: Broker, node: str, unique_name: str, celery_queue: str, counts: Counts,
) -> None:  # fmt: skip
    """Celery's mingle: a starting Celery worker asks every node for its revoked ids (``hello``)
    and celeriac answers."""
    start_worker(unique_name, hostname=node)
    task_id = str(uuid.uuid4())
    celery_client.control.revoke(task_id, destination=[node])
    inspect = celery_client.control.inspect(destination=[node], timeout=5)
    eventually(lambda: task_id in inspect.revoked()[node])

    start_celery_worker(celery_queue, broker_url=broker.client_url, concurrency=1, mingle=True,
                        keyprefix=broker.client_options.get("global_keyprefix", ""))  # fmt: skip
    key = f"{unique_name}:runs"
    doomed = celery_client.send_task("interop.count", (key,), queue=celery_queue, task_id=task_id)
    after = celery_client.send_task("interop.count", (key,), queue=celery_queue)

    assert after.get(timeout=20) == "celery"  # one process: the doomed message came first
    assert counts() == {after.id: 1}
    assert doomed.state == "REVOKED"


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_a_second_worker_of_the_same_name_runs_without_remote_control(
    start_worker: StartWorker, celery_client: Celery, node: str, unique_name: str
) -> None:
    """On RabbitMQ the node queue is exclusive: as Celery warns, node names must be unique."""
    start_worker(unique_name, hostname=node)
    second = start_worker(unique_name, hostname=node)

    second.wait_for("remote_control_unavailable", node=node)
    assert celery_client.control.ping(destination=[node], timeout=5) == [{node: {"ok": "pong"}}]
    results = [celery_client.send_task("interop.add", (i, i), queue=unique_name) for i in range(6)]
    assert [r.get(timeout=15) for r in results] == [0, 2, 4, 6, 8, 10]


@pytest.mark.parametrize("broker", ["sqs"], indirect=True)
def test_on_sqs_the_worker_runs_without_remote_control(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    worker = start_worker(unique_name)

    record = worker.wait_for("remote_control_unavailable")
    assert "fanout" in record["reason"]
    assert celery_client.send_task("interop.add", (2, 3), queue=unique_name).get(timeout=30) == 5


def test_inspect_scheduled_lists_a_task_held_for_its_eta(
    start_worker: StartWorker, celery_client: Celery, node: str, unique_name: str
) -> None:
    """Due within two seconds, a task is held by the worker (not deferred to the broker), so
    ``inspect scheduled`` lists it, as Celery's does for its ETA tasks."""
    start_worker(unique_name, hostname=node)
    held = celery_client.send_task("interop.add", (1, 2), queue=unique_name, countdown=1.9)
    time.sleep(0.3)

    [entry] = celery_client.control.inspect(destination=[node], timeout=5).scheduled()[node]

    assert (entry["request"]["id"], entry["request"]["name"]) == (held.id, "interop.add")
    assert entry["request"]["args"] == [1, 2]
    assert entry["eta"] is not None
    assert held.get(timeout=10) == 3
