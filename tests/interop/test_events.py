"""Celery events from a celeriac worker, read by the stock monitors: a real Flower (its HTTP
API) and ``celery events --dump``, on RabbitMQ and Redis.

What an operator types and sees:

    celeriac worker -A app -E                      # task events on, as Celery's -E
    celery -A proj flower                          # lists the worker online, its tasks' states
    celery -A proj events --dump                   # prints every event as it comes
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery

from tests.controller.test_probes import free_port
from tests.interop.conftest import ROOT, Broker, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.interop]

StartWorker = Callable[..., WorkerProcess]


def monitor_env(broker: Broker) -> dict[str, str]:
    """The environment ``tests.interop.monitor_app`` reads: the test's broker and options."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MONITOR_BROKER_URL": broker.client_url,
        "MONITOR_TRANSPORT_OPTIONS": json.dumps(broker.client_options),
        "FLOWER_UNAUTHENTICATED_API": "true",
    }


def until(condition: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    """Poll ``condition`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)
    return value


class Flower:
    """A real Flower on loopback, read through its HTTP API."""

    def __init__(self, broker: Broker) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.interop.monitor_app", "flower",
             "--address=127.0.0.1", f"--port={self.port}"],
            cwd=ROOT, env=monitor_env(broker), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        until(lambda: self.get("/healthcheck") == "OK", "Flower to answer", timeout=30)

    def get(self, path: str) -> Any:
        """The decoded answer to ``GET path`` (``None`` while Flower does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                body = r.read().decode()
        except (OSError, urllib.error.HTTPError):
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def event_dump(broker: Broker) -> Iterator[list[str]]:
    """``celery events --dump`` running; the lines it printed so far."""
    dump = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.interop.monitor_app", "events", "--dump"],
        cwd=ROOT, env={**monitor_env(broker), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(dump.stdout or ()), daemon=True)
    reader.start()
    try:
        until(lambda: any("starting capture" in line for line in lines), "the dump to start")
        yield lines
    finally:
        dump.terminate()
        dump.wait(timeout=10)
        reader.join(timeout=5)
        if dump.stdout is not None:
            dump.stdout.close()


@pytest.fixture
def flower(broker: Broker) -> Iterator[Flower]:
    started = Flower(broker)
    yield started
    started.close()


def test_flower_shows_the_worker_online_and_its_tasks(
    flower: Flower, start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    node = f"{unique_name}@flower"
    worker = start_worker(unique_name, hostname=node, extra=("-E",))

    until(lambda: (flower.get("/api/workers?status=true") or {}).get(node), "the worker online")
    added = celery_client.send_task("interop.add", args=(2, 3), queue=unique_name)
    declined = celery_client.send_task("interop.decline", args=("no funds",), queue=unique_name)
    assert added.get(timeout=15) == 5
    with pytest.raises(Exception, match="no funds"):
        declined.get(timeout=15)

    def tasks_done() -> dict[str, Any] | None:
        tasks = flower.get("/api/tasks") or {}
        if {added.id, declined.id} <= tasks.keys() and tasks[declined.id]["state"] == "FAILURE":
            return tasks
        return None

    tasks = until(tasks_done, "both tasks in Flower")
    succeeded = tasks[added.id]
    assert (succeeded["state"], succeeded["name"], succeeded["worker"]) == (
        "SUCCESS", "interop.add", node,
    )  # fmt: skip
    assert succeeded["args"] == "(2, 3)"
    assert succeeded["result"] == "5"
    assert succeeded["received"] <= succeeded["started"] <= succeeded["succeeded"]
    assert abs(succeeded["succeeded"] - time.time()) < 60  # utcoffset read right
    failed = tasks[declined.id]
    assert failed["worker"] == node
    assert "PaymentDeclined" in failed["exception"]
    assert "Traceback" in failed["traceback"]

    # The worker's page: Flower asks remote control for stats and the rest.
    info = until(
        lambda: (flower.get(f"/api/workers?refresh=true&workername={node}") or {}).get(node),
        "the worker's details",
    )
    assert info["stats"]["pid"] == worker.proc.pid
    assert [queue["name"] for queue in info["active_queues"]] == [unique_name]
    assert "interop.add" in info["registered"]

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    until(
        lambda: (flower.get("/api/workers?status=true") or {}).get(node) is False,
        "the worker offline after worker-offline",
    )


def test_without_minus_e_no_task_events_until_enable_events(
    flower: Flower, start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    node = f"{unique_name}@toggled"
    start_worker(unique_name, hostname=node)
    until(lambda: (flower.get("/api/workers?status=true") or {}).get(node), "the worker online")
    quiet = celery_client.send_task("interop.add", args=(1, 1), queue=unique_name)
    assert quiet.get(timeout=15) == 2

    replies = celery_client.control.enable_events(destination=[node], reply=True, timeout=5)
    assert replies == [{node: {"ok": "task events enabled"}}]
    sent = celery_client.send_task("interop.add", args=(4, 4), queue=unique_name)
    assert sent.get(timeout=15) == 8
    tasks = until(
        lambda: (
            (t := flower.get("/api/tasks") or {}).get(sent.id, {}).get("state") == "SUCCESS" and t
        ),
        "the task in Flower",
    )
    assert tasks[sent.id]["worker"] == node
    # Events arrive in order: the task sent before enable_events left none behind.
    assert quiet.id not in tasks


def test_celery_events_dump_prints_them(
    broker: Broker, start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    with event_dump(broker) as lines:
        node = f"{unique_name}@dumped"
        worker = start_worker(unique_name, hostname=node, extra=("-E",))
        sent = celery_client.send_task("interop.add", args=(20, 22), queue=unique_name)
        assert sent.get(timeout=15) == 42

        def printed(kind: str) -> str | None:
            return next(
                (line for line in list(lines) if line.startswith(node) and kind in line), None
            )

        received = until(lambda: printed("task received"), "task received")
        assert f"interop.add({sent.id}) args=(20, 22)" in received
        assert "result=42" in until(lambda: printed("task succeeded"), "task succeeded")
        assert until(lambda: printed("task started"), "task started")
        # celery's dumper names worker-online "started", worker-offline "shutdown".
        online = until(lambda: printed("] started: "), "worker online")
        assert "freq=2.0" in online
        assert "sw_ident=celeriac" in online
        assert until(lambda: printed("] heartbeat: "), "a heartbeat", timeout=10)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
        assert until(lambda: printed("] shutdown: "), "worker offline")


def test_a_celeriac_producer_sends_task_sent_when_asked(broker: Broker, unique_name: str) -> None:
    """``task_send_sent_event``, as Celery's setting: the producer announces what it sent."""
    from runtime import App  # noqa: PLC0415 - the producer side, only here

    with event_dump(broker) as lines:

        async def send(announce: bool) -> str:
            app = App("producer", broker=broker.url, task_send_sent_event=announce)
            try:
                return (await app.send_task("interop.add", (1, 2), queue=unique_name)).id
            finally:
                await app.aclose()

        # "starting capture" comes before the dump's subscription is in place on Redis, and
        # an event published before it is lost (pub/sub keeps nothing): announce again until
        # one is seen; each round's silent send comes after its announced one, so the last
        # silent one went out while the dump was listening.
        line = None
        for _ in range(10):
            sent = asyncio.run(send(True))
            silent = asyncio.run(send(False))

            def announced(sent: str = sent) -> str | None:
                return next((ln for ln in list(lines) if f"interop.add({sent})" in ln), None)

            try:
                line = until(announced, "task sent", timeout=2)
                break
            except AssertionError:
                continue
        assert line is not None, "no task-sent event in 10 rounds"
        assert line.startswith("gen")
        assert "task sent" in line
        assert f"queue={unique_name}" in line
        time.sleep(1)  # time for the silent send's event, were there one
        assert not any(silent in ln for ln in lines)
