"""A stock Celery 5.7 client drives ``celeriac worker`` over RabbitMQ and over Redis (the
``broker`` fixture), results in Redis."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from billiard.exceptions import TimeLimitExceeded
from celery import Celery
from celery.exceptions import NotRegistered, TaskRevokedError

from tests.proxy import TcpProxy

from .app import PaymentDeclined
from .conftest import Broker, WorkerProcess, eventually, every_broker

pytestmark = [pytest.mark.integration, pytest.mark.interop]

StartWorker = Callable[..., WorkerProcess]


NESTED = {"list": [1, 2.5, None, True], "map": {"ünïcode": "☃ żółć"}, "empty": {}}


@every_broker
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_values_round_trip(
    serializer: str, start_worker: StartWorker, celery_client: Celery, unique_name: str,
    broker: Broker,
) -> None:  # fmt: skip
    start_worker(unique_name)
    # SQS refuses a MessageBody of 1 MiB or more, and kombu base64s the body twice there.
    large = 500_000 if broker.kind == "sqs" else 1_000_000

    def call(name: str, *args: Any, **kwargs: Any) -> Any:
        result = celery_client.send_task(
            name, args=args, kwargs=kwargs, queue=unique_name, serializer=serializer
        )
        return result.get(timeout=15)

    assert call("interop.add", 2, 3) == 5
    assert call("interop.echo", "a", None, NESTED, k="v") == {
        "args": ["a", None, NESTED],
        "kwargs": {"k": "v"},
    }
    assert call("interop.size", "x" * large) == large  # a large payload, in a thread
    assert call("interop.echo") == {"args": [], "kwargs": {}}


@every_broker
def test_failure_arrives_as_the_tasks_exception(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    start_worker(unique_name)
    result = celery_client.send_task("interop.decline", args=("card expired",), queue=unique_name)

    with pytest.raises(PaymentDeclined) as caught:
        result.get(timeout=15)

    assert caught.value.args == ("card expired", 402)
    assert result.state == "FAILURE"
    assert "PaymentDeclined" in result.traceback


@every_broker
def test_started_is_visible_while_a_slow_task_runs(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    start_worker(unique_name)
    result = celery_client.send_task("interop.slow", args=(1.5,), queue=unique_name)

    eventually(lambda: result.state == "STARTED")

    assert result.info["hostname"].startswith("celeriac@")
    assert result.get(timeout=15) == "slept"


@every_broker
def test_request_carries_id_and_hostname(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    start_worker(unique_name)
    result = celery_client.send_task("interop.whoami", queue=unique_name)

    assert result.get(timeout=15) == {
        "id": result.id,
        "hostname": f"celeriac@{socket.gethostname()}",
    }


@every_broker
def test_queue_time_limits(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    """The queue's cap (soft 0.5 s, hard 1 s here) applies to tasks sent without limits."""
    start_worker(unique_name, env={"CELERIAC_QUEUE_LIMITS": f"{unique_name}=0.5/1"})

    soft = celery_client.send_task("interop.cleanup_on_soft_limit", queue=unique_name)
    hard = celery_client.send_task("interop.ignores_limits", queue=unique_name)

    assert soft.get(timeout=15) == "cleaned up"
    with pytest.raises(TimeLimitExceeded) as caught:
        hard.get(timeout=15)
    assert caught.value.args == (1.0,)
    assert hard.traceback is None


@every_broker
def test_message_limits_below_the_queue_cap(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    start_worker(unique_name)  # an unnamed queue: no cap
    result = celery_client.send_task(
        "interop.ignores_limits", queue=unique_name, time_limit=1, soft_time_limit=0.5
    )

    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=15)


def test_bad_input_is_dead_lettered_with_its_reason(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, broker: Broker
) -> None:
    worker = start_worker(unique_name)
    with broker.connection() as conn:
        producer = conn.Producer()
        producer.publish(
            b"{not json", routing_key=unique_name, content_type="application/json",
            content_encoding="utf-8", headers={"task": "interop.add", "id": "bad-1"},
        )  # fmt: skip
        producer.publish(
            b"!!python/object:os.system", routing_key=unique_name,
            content_type="application/x-yaml", content_encoding="utf-8",
            headers={"task": "interop.add", "id": "bad-2"},
        )  # fmt: skip
    unknown = celery_client.send_task("interop.nope", queue=unique_name)

    with pytest.raises(NotRegistered):
        unknown.get(timeout=15)
    assert celery_client.send_task("interop.add", (1, 1), queue=unique_name).get(timeout=15) == 2
    worker.wait_for("task_unknown")
    dead = broker.dead_letters(unique_name)

    reasons = sorted(m.headers["x-celeriac-reason"] for m in dead)
    assert len(reasons) == 3
    assert reasons[0].startswith("malformed: body: invalid JSON")
    assert reasons[1].startswith("malformed: content_type: refused content type")
    assert reasons[2] == "unknown task 'interop.nope'"
    assert {bytes(m.body, "utf-8") if isinstance(m.body, str) else m.body for m in dead} >= {
        b"{not json",
        b"!!python/object:os.system",
    }
    assert all(m.headers["x-celeriac-queue"] == unique_name for m in dead)


def test_sigterm_lets_the_running_task_finish_and_leaves_the_queue_alone(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, broker: Broker
) -> None:
    worker = start_worker(unique_name, concurrency=1)
    running = celery_client.send_task("interop.slow", args=(1.5,), queue=unique_name)
    worker.wait_for("task_started", task_id=running.id)

    worker.signal(signal.SIGTERM)
    waiting = [celery_client.send_task("interop.add", (i, i), queue=unique_name) for i in range(3)]

    assert worker.wait() == 0
    assert running.get(timeout=5) == "slept"
    assert broker.ready(unique_name) == 3
    assert all(result.state == "PENDING" for result in waiting)


def test_sigkill_during_an_acks_late_task_runs_it_again(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    first = start_worker(unique_name, concurrency=1)
    result = celery_client.send_task("interop.sync_slow", args=(1,), queue=unique_name)
    first.wait_for("task_started", task_id=result.id)

    first.signal(signal.SIGKILL)
    first.wait()
    second = start_worker(unique_name, concurrency=1)

    assert result.get(timeout=20) == "slept"
    second.wait_for("task_succeeded", task_id=result.id)


def test_short_tasks_are_never_stuck_behind_a_long_one(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, broker: Broker
) -> None:
    """Worker A is busy with two long tasks; every short task sent next runs on idle worker B.

    A worker with Celery's default prefetch would also hold short messages it cannot start,
    and they would wait out the long tasks; here A holds nothing beyond its free slots.
    """
    busy = start_worker(unique_name, concurrency=2)
    long_task = celery_client.send_task("interop.slow", args=(6,), queue=unique_name)
    long_late = celery_client.send_task("interop.sync_slow", args=(6,), queue=unique_name)
    busy.wait_for("task_started", task_id=long_task.id)
    busy.wait_for("task_started", task_id=long_late.id)
    start_worker(unique_name, concurrency=2)

    started = time.monotonic()
    short = [celery_client.send_task("interop.add", (i, 1), queue=unique_name) for i in range(20)]

    assert [r.get(timeout=4) for r in short] == [i + 1 for i in range(20)]
    assert time.monotonic() - started < 4  # well before the long tasks end
    assert long_task.state == "STARTED"
    assert not long_late.ready()
    assert broker.ready(unique_name) == 0
    assert long_task.get(timeout=15) == "slept"
    assert long_late.get(timeout=15) == "slept"


@pytest.mark.parametrize(
    ("broker", "queue_type"),
    [("amqp", "classic"), ("amqp", "quorum"), ("redis", "classic")],
    indirect=["broker"],
)
def test_broker_connection_loss(
    queue_type: str,
    start_worker: StartWorker,
    celery_client: Celery,
    unique_name: str,
    broker: Broker,
) -> None:
    """The connection drops mid-task: running tasks finish and their results are stored; the
    worker reconnects and goes on consuming (pushed or fetched).

    On RabbitMQ the acks_late message, whose channel died, is redelivered and runs again (a
    delivery tag means nothing on a new channel). On Redis the delivery's record outlives the
    connection: it is acked once Redis answers again, and runs once.
    """
    celery_client.conf.task_create_missing_queue_type = queue_type
    proxy = TcpProxy(broker.url)
    try:
        env = {"CELERIAC_QUEUE_TYPE": queue_type}
        worker = start_worker(unique_name, broker_url=proxy.url, env=env)
        early = celery_client.send_task("interop.slow", args=(2,), queue=unique_name)
        late = celery_client.send_task("interop.sync_slow", args=(2,), queue=unique_name)
        worker.wait_for("task_started", task_id=early.id)
        worker.wait_for("task_started", task_id=late.id)

        proxy.drop()

        assert early.get(timeout=15) == "slept"
        assert late.get(timeout=20) == "slept"
        after = celery_client.send_task("interop.add", (20, 22), queue=unique_name)
        assert after.get(timeout=20) == 42
        assert worker.proc.poll() is None
        runs_of_late = [r for r in worker.records if r.get("event") == "task_started"
                        and r.get("task_id") == late.id]  # fmt: skip
        assert len(runs_of_late) == (2 if broker.kind == "amqp" else 1)
    finally:
        proxy.close()


def test_second_signal_ends_at_once_and_acks_late_messages_come_back(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, broker: Broker
) -> None:
    worker = start_worker(unique_name, concurrency=2)
    early = celery_client.send_task("interop.slow", args=(60,), queue=unique_name)
    late = celery_client.send_task("interop.sync_slow", args=(60,), queue=unique_name)
    worker.wait_for("task_started", task_id=early.id)
    worker.wait_for("task_started", task_id=late.id)

    worker.signal(signal.SIGTERM)
    worker.wait_for("worker_stopping")
    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout=10) == 0
    # The early-acked message is gone; the acks_late one is back in the queue.
    eventually(lambda: broker.ready(unique_name) == 1)


def test_oversize_message_is_dead_lettered(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, broker: Broker
) -> None:
    """Over the 16 MiB body limit: refused before decoding, dead-lettered, worker goes on."""
    start_worker(unique_name)
    with broker.connection() as conn:
        conn.Producer().publish(
            b"x" * (16 * 1024 * 1024 + 1), routing_key=unique_name,
            content_type="application/json", content_encoding="utf-8",
            headers={"task": "interop.add", "id": "huge-1"},
        )  # fmt: skip

    assert celery_client.send_task("interop.add", (2, 2), queue=unique_name).get(timeout=20) == 4
    dead: list[Any] = []

    def dead_lettered() -> bool:
        dead.extend(broker.dead_letters(unique_name))  # reading a message removes it
        return bool(dead)

    eventually(dead_lettered)
    assert len(dead) == 1
    assert "size" in dead[0].headers["x-celeriac-reason"]
    assert len(dead[0].body) == 16 * 1024 * 1024 + 1


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_quorum_queues(
    start_worker: StartWorker, amqp_url: str, redis_url: str, unique_name: str
) -> None:
    """A Celery client set up for quorum queues, and ``--queue-type quorum`` on the worker."""
    client = Celery("quorum-client", broker=amqp_url, backend=redis_url, set_as_current=False)
    client.conf.task_create_missing_queue_type = "quorum"
    try:
        start_worker(unique_name, env={"CELERIAC_QUEUE_TYPE": "quorum"})
        results = [client.send_task("interop.add", (i, i), queue=unique_name) for i in range(5)]
        assert [r.get(timeout=15) for r in results] == [0, 2, 4, 6, 8]
    finally:
        client.backend.client.close()


@every_broker
def test_arguments_that_do_not_fit_fail_before_running(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    start_worker(unique_name)
    result = celery_client.send_task("interop.add", args=(1,), queue=unique_name)

    with pytest.raises(TypeError, match=r"^add\(\) missing 1 required positional argument: 'y'$"):
        result.get(timeout=15)


@every_broker
def test_a_task_that_ignores_cancellation_cannot_hold_the_exit(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    worker = start_worker(unique_name)
    stuck = celery_client.send_task("interop.unkillable", queue=unique_name)
    worker.wait_for("task_started", task_id=stuck.id)

    worker.signal(signal.SIGTERM)
    worker.wait_for("worker_stopping")
    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout=10) == 0


def test_a_warm_stop_gives_back_a_task_held_for_its_eta(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, broker: Broker
) -> None:
    """Due within two seconds, a task is held by the worker, not deferred to the broker."""
    worker = start_worker(unique_name)
    later = celery_client.send_task("interop.add", (1, 1), queue=unique_name, countdown=1.9)
    eventually(lambda: broker.ready(unique_name) == 0)  # the worker holds it

    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout=10) == 0
    assert broker.ready(unique_name) == 1
    assert later.state == "PENDING"


@every_broker
def test_a_message_that_expired_while_waiting_is_revoked(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    start_worker(unique_name)
    result = celery_client.send_task(
        "interop.add", (1, 1), queue=unique_name, countdown=1.5, expires=0.5
    )

    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=15)
    assert result.state == "REVOKED"
    assert result.date_done is not None  # REVOKED is a ready state: Celery dates it


@every_broker
def test_a_task_that_ignores_its_result_stores_nothing(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    worker = start_worker(unique_name)
    result = celery_client.send_task("interop.quiet", queue=unique_name)
    worker.wait_for("task_succeeded", task_id=result.id)

    assert result.state == "PENDING"


def test_an_idle_fetching_worker_survives_a_lost_connection(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, broker: Broker
) -> None:
    """Quorum mode on RabbitMQ, and Redis always, poll while idle: a drop mid-poll is
    retried, not fatal."""
    celery_client.conf.task_create_missing_queue_type = "quorum"
    proxy = TcpProxy(broker.url)
    try:
        env = {"CELERIAC_QUEUE_TYPE": "quorum"}
        worker = start_worker(unique_name, broker_url=proxy.url, env=env)
        time.sleep(0.3)  # idle: polling
        proxy.drop()

        result = celery_client.send_task("interop.add", (5, 6), queue=unique_name)

        assert result.get(timeout=20) == 11
        assert worker.proc.poll() is None
    finally:
        proxy.close()
