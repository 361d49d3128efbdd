"""taskiq's rows in the benchmark suite: its own worker runs its own messages on RabbitMQ and
Redis (token sizes; nothing here is about speed), and the messages the harness pre-loads in
bulk are the ones taskiq's client sends."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import pytest
import redis.asyncio

from benchmarks import dialects
from benchmarks.dialects import Call
from benchmarks.systems import taskiq
from benchmarks.taskiq_app import make_broker
from tests.integration.tiny_runs import tiny_run

pytestmark = [pytest.mark.integration]

TASKIQ = dialects.of(taskiq(10))


@pytest.mark.timeout(300)
def test_a_tiny_run_measures_taskiq_on_both_brokers(
    tmp_path: Path, amqp_url: str, redis_url: str
) -> None:
    rows = tiny_run(
        tmp_path, "--brokers", "amqp,redis", "--families", "taskiq", amqp=amqp_url, redis=redis_url
    ).rows
    assert not [r for r in rows if "error" in r]
    # No eta row: taskiq's messages carry no due time.
    assert {(r["scenario"], r["broker"]) for r in rows} == {
        (scenario, broker)
        for scenario in ("noop", "results", "io", "latency", "mixed")
        for broker in ("amqp", "redis")
    }
    assert {r["system"] for r in rows} == {"taskiq -c 100", "taskiq -c 20", "taskiq -c 2"}
    # Each row waited for taskiq to drain its queue, store every result or stamp every task.
    assert all(r["rate"] > 0 for r in rows if r["scenario"] in ("noop", "results"))
    for row in (r for r in rows if r["scenario"] == "latency"):
        assert row["sent"] == 40
        assert 0 < row["start_p50_ms"] <= row["start_max_ms"]
        assert "result_p50_ms" not in row  # a taskiq result does not say when it was stored
    assert all(0 < r["efficiency"] <= 1 for r in rows if r["scenario"] == "io")
    assert all(r["short_wait_max_ms"] > 0 for r in rows if r["scenario"] == "mixed")


async def test_the_pre_loaded_message_is_the_one_taskiqs_client_sends_on_redis(
    redis_url: str, unique_name: str
) -> None:
    call = Call("bench.stamp", (1.5, "key"))
    async with TASKIQ.publisher(redis_url, unique_name) as publisher:
        await publisher.send(call)
    assert await TASKIQ.preload(redis_url, unique_name, [call]) == 1

    async with redis.asyncio.Redis.from_url(redis_url) as client:
        loaded, sent = await client.lrange(unique_name, 0, -1)  # LPUSH: the last first
        await client.delete(unique_name)

    assert loaded == sent
    assert json.loads(sent) == {
        "task_id": call.id, "task_name": "bench.stamp", "labels": {}, "labels_types": {},
        "args": [1.5, "key"], "kwargs": {},
    }  # fmt: skip


async def test_the_pre_loaded_message_is_the_one_taskiqs_client_sends_on_rabbitmq(
    amqp_url: str, unique_name: str
) -> None:
    call = Call("noop")
    async with TASKIQ.publisher(amqp_url, unique_name) as publisher:
        await publisher.send(call)
    assert await TASKIQ.preload(amqp_url, unique_name, [call]) == 1

    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(unique_name)
        sent, loaded = [await queue.get(no_ack=True) for _ in range(2)]
        # Declared as taskiq's worker declares it, classic: declaring it again with other
        # arguments would fail (PRECONDITION_FAILED).
        declared = await channel.declare_queue(
            unique_name, durable=True, arguments={
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{unique_name}.dead",
                "x-queue-type": "classic",
            },
        )  # fmt: skip
        assert declared.declaration_result.message_count == 0

    assert loaded.body == sent.body
    assert json.loads(sent.body)["task_id"] == call.id
    assert loaded.headers == sent.headers == {"task_id": call.id, "task_name": "noop"}
    assert loaded.delivery_mode == sent.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_taskiq_rows_refuse_a_call_with_a_due_time(redis_url: str, unique_name: str) -> None:
    due = Call("noop", eta=datetime.now(UTC))
    with pytest.raises(ValueError, match="no ETA"):
        await TASKIQ.preload(redis_url, unique_name, [due])


async def test_taskiqs_redis_worker_outlives_a_queue_empty_past_redis_pys_socket_timeout(
    redis_url: str, unique_name: str
) -> None:
    """redis-py 8 reads with a 5 s timeout by default, and taskiq's ``BRPOP`` blocks with
    none: without ``socket_timeout=None`` its listener raised ``redis.TimeoutError`` (the
    worker process died, losing the tasks it ran) once the queue was empty for 5 s."""
    broker = make_broker(redis_url, unique_name)
    await broker.startup()
    listening = broker.listen()
    first = asyncio.ensure_future(anext(listening))
    try:
        await asyncio.sleep(6)
        assert not first.done(), first  # still waiting, past redis-py's 5 s
        async with redis.asyncio.Redis.from_url(redis_url) as client:
            await client.lpush(unique_name, b"after the wait")
        assert await asyncio.wait_for(first, 5) == b"after the wait"
    finally:
        first.cancel()
        await broker.shutdown()
