"""celeriac inside an application's own event loop: produce, run and read results."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import pytest
from celery import Celery

from runtime import App
from runtime.errors import BrokerConnectionError
from runtime.worker import Worker

pytestmark = [pytest.mark.integration]


async def test_worker_in_the_callers_loop(amqp_url: str, redis_url: str, unique_name: str) -> None:
    app = App("embedded", broker=amqp_url, result_backend=redis_url, default_queue=unique_name)

    @app.task(name="embedded.mul")
    async def mul(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x * y

    @app.task(name="embedded.fail")
    def fail() -> None:
        raise LookupError("nothing here")

    handlers_before = signal.getsignal(signal.SIGTERM)
    try:
        async with app.worker(queues=[unique_name], concurrency=4) as worker:
            assert signal.getsignal(signal.SIGTERM) is handlers_before
            results = [await mul.delay(i, 3) for i in range(10)]
            values = [await r.get(timeout=10) for r in results]
            failed = await fail.apply_async()
            with pytest.raises(LookupError, match="nothing here"):
                await failed.get(timeout=10)
        assert worker.processed == 11
    finally:
        await app.aclose()

    assert values == [i * 3 for i in range(10)]


async def test_worker_that_cannot_reach_the_broker_raises_at_once(unique_name: str) -> None:
    app = App("embedded", broker="amqp://guest:guest@127.0.0.1:1//")

    with pytest.raises(BrokerConnectionError, match=r"127\.0\.0\.1:1"):
        async with app.worker(queues=[unique_name]):
            pytest.fail("the block must not run")


async def test_celeriac_producer_feeds_a_result_a_celery_client_reads(
    amqp_url: str, redis_url: str, unique_name: str
) -> None:
    """celeriac's own send_task produces what celeriac's worker runs; state goes PENDING→SUCCESS."""
    app = App("embedded", broker=amqp_url, result_backend=redis_url)

    @app.task(name="embedded.echo", queue=unique_name)
    async def echo(value: Any) -> Any:
        return value

    try:
        async with app.worker(queues=[unique_name], concurrency=1):
            handle = await echo.apply_async(({"nested": [1, "ü"]},))
            assert await handle.get(timeout=10) == {"nested": [1, "ü"]}
            assert await handle.ready()
    finally:
        await app.aclose()


async def test_extended_results_are_read_by_a_celery_client(
    amqp_url: str, redis_url: str, unique_name: str
) -> None:
    app = App("embedded", broker=amqp_url, result_backend=redis_url, result_extended=True)

    @app.task(name="embedded.sum", queue=unique_name)
    def total(*numbers: int) -> int:
        return sum(numbers)

    client = Celery("reader", broker="memory://", backend=redis_url, set_as_current=False)
    client.conf.result_extended = True
    try:
        async with app.worker(queues=[unique_name], concurrency=1, hostname="w1@test"):
            handle = await total.apply_async((1, 2, 3))
            assert await handle.get(timeout=10) == 6
        result = client.AsyncResult(handle.id)
        assert (result.name, result.args, result.kwargs) == ("embedded.sum", [1, 2, 3], {})
        assert (result.worker, result.queue, result.retries) == ("w1@test", unique_name, 0)
        assert result.date_done is not None
    finally:
        client.backend.client.close()
        await app.aclose()


async def test_a_stop_during_start_up_is_honoured(amqp_url: str, unique_name: str) -> None:
    app = App("embedded", broker=amqp_url)
    worker = Worker(app, queues=[unique_name], concurrency=1, hostname="w@test")
    worker.stop()  # e.g. SIGTERM while still connecting

    await asyncio.wait_for(worker.run(), timeout=10)

    assert worker.ready.is_set()
    assert worker.processed == 0


_IMPORTS_PROBE = """
import asyncio, sys
from runtime import App

broker, backend, queue = sys.argv[1], sys.argv[2] or None, sys.argv[3]
app = App("imports", broker=broker, result_backend=backend, default_queue=queue)

@app.task(name="imports.noop")
async def noop() -> None:
    pass

async def main() -> None:
    async with app.worker(queues=[queue], concurrency=2) as worker:
        await noop.delay()
        while worker.processed < 1:
            await asyncio.sleep(0.01)
    heavy = ("redis", "hiredis", "ctypes", "prometheus_client", "pebble")
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
    print("loaded:" + ",".join(loaded))

asyncio.run(main())
"""


@pytest.mark.parametrize("with_backend", [False, True], ids=["rabbitmq-only", "redis-backend"])
async def test_a_worker_loads_what_it_uses_only(
    amqp_url: str, redis_url: str, unique_name: str, with_backend: bool
) -> None:
    """A worker runs a task without loading the libraries only some workers use: redis-py
    (10.4 MiB of RSS) without a Redis backend, nor ever ctypes (a time limit in a thread),
    prometheus-client (``--metrics-port``) or pebble (``--processes``)."""
    probe = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _IMPORTS_PROBE,
        amqp_url,
        redis_url if with_backend else "",
        unique_name,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(probe.communicate(), timeout=60)
    assert probe.returncode == 0, err.decode()
    [loaded] = [line[7:] for line in out.decode().splitlines() if line.startswith("loaded:")]
    assert loaded == ("hiredis,redis" if with_backend else "")
