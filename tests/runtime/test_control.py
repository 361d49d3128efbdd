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
from runtime.control.commands import UNSUPPORTED
from runtime.transports.memory import MemoryTransport
from runtime.worker import Worker
from runtime.worker.slots import Slots

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


class RecordingApp(App):
    """An app whose tasks record what they did: ``runs`` (task ids), ``ended`` (threads)."""

    def __init__(self, main: str, *, broker: str, default_queue: str) -> None:
        super().__init__(main, broker=broker, default_queue=default_queue)
        self.runs: list[str] = []
        self.ended: list[str] = []


@pytest.fixture
def app() -> RecordingApp:
    app = RecordingApp("control", broker=f"memory://{uuid.uuid4().hex}", default_queue="q")

    @app.task(name="t.record", bind=True)
    async def record(self: Any) -> None:
        app.runs.append(self.request.id)

    @app.task(name="t.forever", rate_limit="5/s")
    async def forever() -> None:
        await asyncio.Event().wait()

    @app.task(name="t.spin", acks_late=True)
    def spin() -> None:
        try:
            while True:
                time.sleep(0.005)
        finally:
            app.ended.append(threading.current_thread().name)

    return app


@pytest.fixture
async def worker(app: RecordingApp) -> AsyncIterator[Worker]:
    async with app.worker(queues=["q"], concurrency=1, hostname=NODE, grace=1) as running:
        yield running
    await app.aclose()


@pytest.fixture
def client(app: RecordingApp) -> Client:
    return Client(app.broker_url)


async def _eventually(condition: Any, timeout: float = 3) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not true within {timeout}s"
        await asyncio.sleep(0.01)


async def test_commands_reply_as_celerys(worker: Worker, client: Client, app: RecordingApp) -> None:
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


async def test_a_revoked_countdown_task_never_runs(worker: Worker, app: RecordingApp) -> None:
    doomed = await app.send_task("t.record", countdown=0.3)
    kept = await app.send_task("t.record", countdown=0.3)
    # Concurrency 1: the doomed task waits for its ETA in the only slot, kept behind it.

    await app.revoke(doomed.id)

    await _eventually(lambda: app.runs == [kept.id])
    assert worker.is_revoked(doomed.id)
    assert not worker.is_revoked(kept.id)


async def test_revoke_replies_which_ids(worker: Worker, client: Client) -> None:
    reply = await client.call("revoke", task_id=["a", "b", "a"])

    assert reply["ok"] in ("tasks {'a', 'b'} flagged as revoked",
                           "tasks {'b', 'a'} flagged as revoked")  # fmt: skip
    assert list(worker.revocations) == ["a", "b"]
    assert await client.call("revoked") == ["a", "b"]


async def test_terminate_cancels_a_running_coroutine(
    worker: Worker, client: Client, app: RecordingApp
) -> None:
    stuck = await app.send_task("t.forever")
    await _eventually(lambda: stuck.id in worker.running)
    [active] = await client.call("active")
    assert (active["id"], active["acknowledged"], active["args"]) == (stuck.id, True, [])
    assert (await client.call("query_task", ids=[stuck.id]))[stuck.id][0] == "active"

    reply = await client.call("revoke", task_id=stuck.id, terminate=True, signal="SIGKILL")

    assert reply == {"ok": f"terminate: {stuck.id}"}
    after = await app.send_task("t.record")
    await _eventually(lambda: app.runs == [after.id])
    assert worker.running == {}
    assert (await client.call("stats"))["total"] == {"t.forever": 1, "t.record": 1}


async def test_terminate_interrupts_a_thread_at_its_next_bytecode(
    worker: Worker, client: Client, app: RecordingApp
) -> None:
    spinning = await app.send_task("t.spin")
    await _eventually(lambda: spinning.id in worker.running)
    [active] = await client.call("active")
    assert active["acknowledged"] is False  # acks_late

    assert await client.call("terminate", signal="SIGTERM", task_id=spinning.id) == {
        "ok": f"terminate: {spinning.id}"
    }
    await _eventually(lambda: bool(app.ended))
    assert worker.running == {}


async def test_shutdown_stops_the_worker_without_a_reply(app: RecordingApp, client: Client) -> None:
    worker = Worker(app, queues=["q"], concurrency=1, hostname=NODE)
    running = asyncio.create_task(worker.run())
    await worker.ready.wait()

    assert await client.call("shutdown", msg="bye") is None

    await asyncio.wait_for(running, 5)
    await app.aclose()


async def test_broadcasting_needs_a_broker_with_fanout(app: RecordingApp) -> None:
    app._producer = types.SimpleNamespace()  # no broadcast()

    with pytest.raises(RuntimeError, match="fanout"):
        await app.revoke("x")


async def test_a_worker_without_fanout_runs_without_remote_control(app: RecordingApp) -> None:
    class NoFanout(MemoryTransport):
        broadcasts = None  # type: ignore[assignment]

    transport = NoFanout(app.broker_url)
    worker = Worker(app, queues=["q"], concurrency=1, hostname=NODE, transport=transport)
    running = asyncio.create_task(worker.run())
    await worker.ready.wait()
    done = await app.send_task("t.record")
    await _eventually(lambda: app.runs == [done.id])

    assert await Client(app.broker_url).call("ping") is None
    worker.stop()
    await running
    await app.aclose()


# -- commands that change the worker at run time ------------------------------------------------


def _gated(app: RecordingApp) -> tuple[list[int], dict[int, asyncio.Event]]:
    """Register ``t.gated(n)``: it notes ``n`` as started, then waits for ``gates[n]``."""
    started: list[int] = []
    gates: dict[int, asyncio.Event] = {}

    @app.task(name="t.gated")
    async def gated(n: int) -> None:
        started.append(n)
        await gates.setdefault(n, asyncio.Event()).wait()

    return started, gates


async def _open(gates: dict[int, asyncio.Event], n: int) -> None:
    gates.setdefault(n, asyncio.Event()).set()
    await asyncio.sleep(0.05)  # the task ends, its slot is given back, the transport hears it


async def test_pool_grow_runs_more_tasks_at_once(
    worker: Worker, client: Client, app: RecordingApp
) -> None:
    started, gates = _gated(app)

    assert await client.call("pool_grow", n=2) == {"ok": "pool will grow"}

    stats = await client.call("stats")
    assert (stats["pool"]["max-concurrency"], stats["prefetch_count"]) == (3, 3)
    assert "autoscaler" not in stats
    assert (await client.call("conf"))["worker_concurrency"] == 3
    for n in range(4):
        await app.send_task("t.gated", args=(n,))
    await _eventually(lambda: len(started) == 3)
    await asyncio.sleep(0.1)
    assert sorted(started) == [0, 1, 2]
    await _open(gates, 0)
    await _eventually(lambda: len(started) == 4)
    for n in range(1, 4):
        await _open(gates, n)


async def test_shrinking_below_the_busy_slots_lets_them_finish_and_starts_nothing_new(
    worker: Worker, client: Client, app: RecordingApp
) -> None:
    started, gates = _gated(app)
    assert await client.call("pool_grow", n=2) == {"ok": "pool will grow"}
    for n in range(4):
        await app.send_task("t.gated", args=(n,))
    await _eventually(lambda: len(started) == 3)

    assert await client.call("pool_shrink", n=2) == {"ok": "pool will shrink"}

    assert (worker.slots.total, worker.slots.busy, worker.slots.free) == (1, 3, 0)
    assert (await client.call("stats"))["pool"]["max-concurrency"] == 1
    for n in (0, 1):  # 2 then 1 still running: not fewer than the one slot
        await _open(gates, n)
        assert len(started) == 3
    await _open(gates, 2)
    await _eventually(lambda: started == [0, 1, 2, 3])
    assert (worker.slots.busy, worker.slots.free) == (1, 0)
    await _open(gates, 3)
    assert worker.slots.free == 1


async def test_autoscale_runs_max_slots_and_reports_both(
    worker: Worker, client: Client, app: RecordingApp
) -> None:
    assert await client.call("autoscale", max=4, min=2) == {"ok": "autoscale now max=4 min=2"}
    stats = await client.call("stats")
    assert stats["pool"]["max-concurrency"] == 4
    assert stats["autoscaler"] == {"max": 4, "min": 2, "current": 4, "qty": 0}
    assert await client.call("autoscale", max=3) == {"ok": "autoscale now max=3 min=2"}
    assert await client.call("autoscale", min=3) == {"ok": "autoscale now max=3 min=3"}
    assert worker.concurrency == 3
    # As Celery: with autoscale set, grow and shrink are refused.
    assert await client.call("pool_grow") == {
        "error": "pool_grow is not supported with autoscale. Adjust autoscale range instead."
    }
    assert await client.call("pool_shrink") == {
        "error": "pool_shrink is not supported with autoscale. Adjust autoscale range instead."
    }


async def test_bad_arguments_get_an_error_reply(worker: Worker, client: Client) -> None:
    errors: dict[tuple[str, str, Any], str] = {
        ("pool_grow", "n", "x"): "n must be a whole number of 1 or more, not 'x'",
        ("pool_grow", "n", 0): "n must be a whole number of 1 or more, not 0",
        ("pool_shrink", "n", 1): "Can't shrink pool by 1: it has 1, 1 is the least",
        ("autoscale", "max", -1): "max must be a whole number of 1 or more, not -1",
        ("add_consumer", "queue", None): "add_consumer needs a queue name, not None",
        ("cancel_consumer", "queue", ""): "cancel_consumer needs a queue name, not ''",
    }
    for (method, name, value), error in errors.items():
        assert await client.call(method, **{name: value}) == {"error": error}, method
    assert await client.call("autoscale", max=2, min=3) == {
        "error": "autoscale min=3 is above max=2"
    }
    assert await client.call("rate_limit", task_name="t.record", rate_limit="10/x") == {
        "error": "Invalid rate limit string: "
        "ValueError(\"rate limit '10/x': the unit must be s, m or h\")"
    }
    assert await client.call("rate_limit", task_name="nope", rate_limit="1/s") == {
        "error": "unknown task"
    }
    assert await client.call("time_limit", task_name="nope", hard=1) == {"error": "unknown task"}
    for bad in ("soon", "inf", [1]):
        assert await client.call("time_limit", task_name="t.record", hard=bad) == {
            "error": f"a time limit is a number of seconds, not {bad!r}"
        }
    assert await client.call("add_consumer", queue="q2", exchange="other") == {
        "error": "celeriac consumes 'q2' only through the direct exchange 'q2' with routing key "
        "'q2', not exchange='other'"
    }
    assert worker.queues == ["q"]
    assert worker.concurrency == 1
    assert worker.autoscale_limits is None


async def test_commands_celeriac_cannot_carry_out_reply_why(worker: Worker, client: Client) -> None:
    for name, reason in UNSUPPORTED.items():
        assert await client.call(name) == {"error": f"{name} is not supported: {reason}"}
    # Celery's old names answer as the commands they stand for.
    assert await client.call("dump_tasks") == await client.call("registered")
    assert await client.call("dump_active") == []
    assert "celeriac" in (await client.call("report"))["ok"]


async def test_rate_and_time_limits_change_at_run_time(
    worker: Worker, client: Client, app: RecordingApp
) -> None:
    record = app.tasks["t.record"]

    reply = await client.call("rate_limit", task_name="t.record", rate_limit="2/s")

    assert reply == {"ok": "new rate limit set successfully"}
    assert record.options.rate_limit == "2/s"
    assert "t.record [rate_limit=2/s]" in await client.call("registered")
    sent = [await app.send_task("t.record") for _ in range(3)]
    await _eventually(lambda: len(app.runs) == 3)
    assert app.runs == [result.id for result in sent]
    assert await client.call("rate_limit", task_name="t.record", rate_limit="") == {
        "ok": "rate limit disabled successfully"
    }
    assert record.options.rate_limit == ""
    assert worker.rate_limits.delay("t.record", record.options.rate_limit) == 0.0

    reply = await client.call("time_limit", task_name="t.record", soft=1, hard="2.5")

    assert reply == {"ok": "time limits set successfully"}
    assert (record.options.soft_time_limit, record.options.time_limit) == (1.0, 2.5)
    assert await client.call("time_limit", task_name="t.record") == {
        "ok": "time limits set successfully"
    }
    assert (record.options.soft_time_limit, record.options.time_limit) == (None, None)


async def test_a_task_runs_under_the_hard_limit_set_at_run_time(
    worker: Worker, client: Client, app: RecordingApp
) -> None:
    assert await client.call("time_limit", task_name="t.forever", hard=0.2) == {
        "ok": "time limits set successfully"
    }
    assert await client.call("rate_limit", task_name="t.forever", rate_limit=0) == {
        "ok": "rate limit disabled successfully"
    }
    stuck = await app.send_task("t.forever")

    await _eventually(lambda: stuck.id in worker.running)
    await _eventually(lambda: stuck.id not in worker.running, timeout=3)
    assert worker.slots.free == 1


async def test_add_and_cancel_consumer_change_what_is_consumed(
    worker: Worker, client: Client, app: RecordingApp
) -> None:
    assert isinstance(worker.transport, MemoryTransport)
    broker = worker.transport.broker
    # As Celery: ok whether or not it was consumed.
    assert await client.call("cancel_consumer", queue="elsewhere") == {
        "ok": "no longer consuming from elsewhere"
    }
    assert worker.queues == ["q"]

    assert await client.call("add_consumer", queue="q2") == {"ok": "add consumer q2"}

    assert [queue["name"] for queue in await client.call("active_queues")] == ["q", "q2"]
    there = await app.send_task("t.record", queue="q2")
    await _eventually(lambda: app.runs == [there.id])
    assert await client.call("add_consumer", queue="q2", exchange_type="direct") == {
        "ok": "add consumer q2"
    }
    assert worker.queues == ["q", "q2"]

    assert await client.call("cancel_consumer", queue="q") == {"ok": "no longer consuming from q"}
    assert await client.call("cancel_consumer", queue="q2") == {"ok": "no longer consuming from q2"}

    assert await client.call("active_queues") == []
    left = await app.send_task("t.record", queue="q")
    await asyncio.sleep(0.2)
    assert len(broker.queue("q").messages) == 1
    assert await client.call("add_consumer", queue="q") == {"ok": "add consumer q"}
    await _eventually(lambda: app.runs == [there.id, left.id])
    assert worker.consuming


async def test_changing_queues_while_busy_loses_and_repeats_nothing(
    worker: Worker, client: Client, app: RecordingApp
) -> None:
    worker.resize(3)
    sent = [await app.send_task("t.record", queue=("q", "q2")[n % 2]) for n in range(200)]
    for _ in range(20):
        await client.call("add_consumer", queue="q2")
        await asyncio.sleep(0.005)
        await client.call("cancel_consumer", queue="q2")

    await client.call("add_consumer", queue="q2")
    await _eventually(lambda: len(app.runs) >= 200)
    await asyncio.sleep(0.05)
    assert sorted(app.runs) == sorted(result.id for result in sent)


async def test_task_events_switch_on_and_off(worker: Worker, client: Client) -> None:
    assert worker.task_events is False
    assert await client.call("enable_events") == {"ok": "task events enabled"}
    assert worker.task_events is True
    assert await client.call("enable_events") == {"ok": "task events already enabled"}
    assert await client.call("disable_events") == {"ok": "task events disabled"}
    assert await client.call("disable_events") == {"ok": "task events already disabled"}
    assert worker.task_events is False
    assert await client.call("heartbeat") is None  # Celery's reply: None


async def test_slots_resized_below_busy_hand_nothing_over_until_within() -> None:
    slots = Slots(3)
    heard: list[int] = []
    slots.on_change(lambda: heard.append(slots.free))
    for _ in range(3):
        slots.take()
    waiter = asyncio.create_task(slots.acquire())  # a rate-limited task taking its slot back
    await asyncio.sleep(0)

    slots.resize(1)

    assert (slots.total, slots.busy, slots.free, heard[-1]) == (1, 3, 0, 0)
    slots.give_back()
    slots.give_back()
    assert (slots.busy, slots.free, waiter.done()) == (1, 0, False)
    slots.give_back()  # now within: this one changes hands
    await asyncio.sleep(0)
    assert (waiter.done(), slots.busy, slots.free) == (True, 1, 0)
    waiter2 = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)

    slots.resize(2)  # a new slot goes to the one waiting first

    await asyncio.sleep(0)
    assert (waiter2.done(), slots.busy, slots.free) == (True, 2, 0)
    slots.resize(4)
    assert (slots.free, heard[-1]) == (2, 2)
    await asyncio.wait_for(slots.wait_free(), 1)
    with pytest.raises(ValueError, match="at least 1"):
        slots.resize(0)
