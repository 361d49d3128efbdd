"""Remote control and revocation on the in-process broker: a worker in the test's own loop,
commands sent and replies read as Celery's mailbox would."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import types
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from protocol import WireMessage
from protocol.control import ControlRequest, ReplyTo, encode_control
from runtime import App
from runtime.transports.memory import MemoryTransport
from runtime.worker import Worker

NODE = "w1@test"


class Client:
    """Celery's ``app.control`` side, on the memory broker: broadcast, then read the reply
    queue ``<oid>.reply.celery.pidbox``."""

    def __init__(self, url: str) -> None:
        self.transport = MemoryTransport(url)
        self.oid = str(uuid.uuid4())

    async def send(self, message: WireMessage) -> None:
        await self.transport.broadcast(message, exchange="celery.pidbox")

    async def call(self, method: str, destination: str = NODE, **arguments: Any) -> Any:
        """The reply of ``destination`` to ``method``; ``None`` if none came within 0.5 s."""
        ticket = str(uuid.uuid4())
        request = ControlRequest(
            method, arguments, destination=(destination,), ticket=ticket,
            reply_to=ReplyTo("reply.celery.pidbox", self.oid),
        )  # fmt: skip
        await self.send(encode_control(request))
        replies = self.transport.broker.queue(f"{self.oid}.reply.celery.pidbox").messages
        for _ in range(50):
            if replies:
                reply = replies.popleft().message
                assert reply.headers["ticket"] == ticket
                return json.loads(reply.body)[destination]
            await asyncio.sleep(0.01)
        return None


@pytest.fixture
def app() -> App:
    app = App("control", broker=f"memory://{uuid.uuid4().hex}", default_queue="q")
    app.runs: list[str] = []  # type: ignore[attr-defined]
    app.ended: list[str] = []  # type: ignore[attr-defined]

    @app.task(name="t.record", bind=True)
    async def record(self: Any) -> None:
        app.runs.append(self.request.id)  # type: ignore[attr-defined]

    @app.task(name="t.forever", rate_limit="5/s")
    async def forever() -> None:
        await asyncio.Event().wait()

    @app.task(name="t.spin", acks_late=True)
    def spin() -> None:
        try:
            while True:
                time.sleep(0.005)
        finally:
            app.ended.append(threading.current_thread().name)  # type: ignore[attr-defined]

    return app


@pytest.fixture
async def worker(app: App) -> AsyncIterator[Worker]:
    async with app.worker(queues=["q"], concurrency=1, hostname=NODE, grace=1) as running:
        yield running
    await app.aclose()


@pytest.fixture
def client(app: App) -> Client:
    return Client(app.broker_url)


async def _eventually(condition: Any, timeout: float = 3) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not true within {timeout}s"
        await asyncio.sleep(0.01)


async def test_commands_reply_as_celerys(worker: Worker, client: Client, app: App) -> None:
    assert await client.call("ping") == {"ok": "pong"}
    assert await client.call("ping", destination="w2@test") is None
    assert await client.call("no_such") == {"error": "KeyError('no_such')"}
    assert await client.call("registered") == ["t.forever [rate_limit=5/s]", "t.record", "t.spin"]
    assert await client.call("registered", taskinfoitems=["acks_late", "_private"]) == [
        "t.forever [acks_late=False]", "t.record [acks_late=False]", "t.spin [acks_late=True]",
    ]  # fmt: skip
    assert await client.call("reserved") == []
    assert await client.call("query_task", ids="nope") == {}
    stats = await client.call("stats")
    assert stats["broker"]["transport"] == "memory"
    assert (stats["pool"]["max-concurrency"], stats["prefetch_count"]) == (1, 1)
    assert await client.call("conf") == await client.call("conf", with_defaults=True)
    [queue] = await client.call("active_queues")
    assert (queue["name"], queue["queue_arguments"]) == ("q", None)
    clock = (await client.call("clock"))["clock"]
    assert (await client.call("clock"))["clock"] > clock
    assert await client.call("terminate", signal="SIGKILL", task_id="x") == {
        "ok": "terminate: tasks unknown"
    }
    assert await client.call("active", safe=True, unexpected={"a": 1}) == []
    assert await client.call("scheduled") == []


async def test_a_failing_command_replies_its_error(worker: Worker, client: Client) -> None:
    reply = await client.call("registered", taskinfoitems=5)

    assert reply == {"error": "TypeError(\"'int' object is not iterable\")"}
    assert await client.call("ping") == {"ok": "pong"}  # still serving


async def test_unreadable_requests_are_ignored(worker: Worker, client: Client) -> None:
    await client.send(WireMessage(b"{not json", "application/json", "utf-8"))
    await client.send(WireMessage(b"!!python", "application/x-yaml", "utf-8"))
    await client.send(WireMessage(b'{"method": 1}', "application/json", "utf-8"))

    assert await client.call("ping") == {"ok": "pong"}


async def test_hello_trades_revoked_ids(worker: Worker, client: Client) -> None:
    await client.call("revoke", task_id="mine")

    reply = await client.call("hello", from_node="w2@test", revoked=["theirs"])

    assert reply["revoked"] == ["mine", "theirs"]
    assert worker.is_revoked("theirs")
    assert await client.call("hello", from_node=NODE) is None


async def test_a_revoked_countdown_task_never_runs(worker: Worker, app: App) -> None:
    doomed = await app.send_task("t.record", countdown=0.3)
    kept = await app.send_task("t.record", countdown=0.3)
    # Concurrency 1: the doomed task waits for its ETA in the only slot, kept behind it.

    await app.revoke(doomed.id)

    await _eventually(lambda: app.runs == [kept.id])  # type: ignore[attr-defined]
    assert worker.is_revoked(doomed.id)
    assert not worker.is_revoked(kept.id)


async def test_revoke_replies_which_ids(worker: Worker, client: Client) -> None:
    reply = await client.call("revoke", task_id=["a", "b", "a"])

    assert reply["ok"] in ("tasks {'a', 'b'} flagged as revoked",
                           "tasks {'b', 'a'} flagged as revoked")  # fmt: skip
    assert list(worker.revocations) == ["a", "b"]
    assert await client.call("revoked") == ["a", "b"]


async def test_terminate_cancels_a_running_coroutine(
    worker: Worker, client: Client, app: App
) -> None:
    stuck = await app.send_task("t.forever")
    await _eventually(lambda: stuck.id in worker.running)
    [active] = await client.call("active")
    assert (active["id"], active["acknowledged"], active["args"]) == (stuck.id, True, [])
    assert (await client.call("query_task", ids=[stuck.id]))[stuck.id][0] == "active"

    reply = await client.call("revoke", task_id=stuck.id, terminate=True, signal="SIGKILL")

    assert reply == {"ok": f"terminate: {stuck.id}"}
    after = await app.send_task("t.record")
    await _eventually(lambda: app.runs == [after.id])  # type: ignore[attr-defined]
    assert worker.running == {}
    assert (await client.call("stats"))["total"] == {"t.forever": 1, "t.record": 1}


async def test_terminate_interrupts_a_thread_at_its_next_bytecode(
    worker: Worker, client: Client, app: App
) -> None:
    spinning = await app.send_task("t.spin")
    await _eventually(lambda: spinning.id in worker.running)
    [active] = await client.call("active")
    assert active["acknowledged"] is False  # acks_late

    assert await client.call("terminate", signal="SIGTERM", task_id=spinning.id) == {
        "ok": f"terminate: {spinning.id}"
    }
    await _eventually(lambda: bool(app.ended))  # type: ignore[attr-defined]
    assert worker.running == {}


async def test_shutdown_stops_the_worker_without_a_reply(app: App, client: Client) -> None:
    worker = Worker(app, queues=["q"], concurrency=1, hostname=NODE)
    running = asyncio.create_task(worker.run())
    await worker.ready.wait()

    assert await client.call("shutdown", msg="bye") is None

    await asyncio.wait_for(running, 5)
    await app.aclose()


async def test_broadcasting_needs_a_broker_with_fanout(app: App) -> None:
    app._producer = types.SimpleNamespace()  # type: ignore[assignment]  # no broadcast()

    with pytest.raises(RuntimeError, match="fanout"):
        await app.revoke("x")


async def test_a_worker_without_fanout_runs_without_remote_control(app: App) -> None:
    class NoFanout(MemoryTransport):
        broadcasts = None  # type: ignore[assignment]

    transport = NoFanout(app.broker_url)
    worker = Worker(app, queues=["q"], concurrency=1, hostname=NODE, transport=transport)
    running = asyncio.create_task(worker.run())
    await worker.ready.wait()
    done = await app.send_task("t.record")
    await _eventually(lambda: app.runs == [done.id])  # type: ignore[attr-defined]

    assert await Client(app.broker_url).call("ping") is None
    worker.stop()
    await running
    await app.aclose()
