"""A real ``celeriac worker`` process and a real Celery client, for the interop tests.

Every test runs on RabbitMQ and Redis (``broker`` is parametrised over both) unless it sets
``broker`` itself: ``@pytest.mark.parametrize("broker", ["amqp"], indirect=True)``. Plain-task
tests also run on SQS (``@every_broker``): the Celery client publishes through kombu's own SQS
transport to a local moto server. ``Broker.ready`` and ``Broker.dead_letters`` read through kombu,
whose SQS consumer needs pycurl, so tests that use them stay on RabbitMQ and Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import pytest
import redis
from celery import Celery
from kombu import Connection

from tests.sqs_server import ACCESS_KEY, REGION, SECRET_KEY, delete_sqs_queues

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """``celeriac worker`` in a subprocess, with its JSON log lines collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "worker", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._arrived:
                self.lines.append(line)
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    continue
                self._arrived.notify_all()

    def wait_for(self, event: str, timeout: float = 15, **fields: Any) -> dict[str, Any]:
        """A log record ``event`` with ``fields``, logged so far or within ``timeout``."""

        def found() -> dict[str, Any] | None:
            for record in self.records:
                wanted = all(record.get(k) == v for k, v in fields.items())
                if record.get("event") == event and wanted:
                    return record
            return None

        with self._arrived:
            record = self._arrived.wait_for(found, timeout=timeout)
        if record is None:
            log = "".join(self.lines)
            raise AssertionError(f"no {event!r} {fields} within {timeout}s; log:\n{log}")
        return record

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker."""
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20) -> int:
        """Wait for the process to exit; its exit status."""
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Make sure the process is gone (and, with ``--processes``, its children: they end
        when the supervisor does, and the pipe they share closes with the last of them)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._reader.join(timeout=30)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def eventually(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait until ``condition()`` holds; fail (naming it) if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {condition}")
        time.sleep(0.05)


@contextmanager
def celery_worker_process(
    app: str, queue: str, env: dict[str, str], *, pool: str = "solo", concurrency: int = 1,
    mingle: bool = False,
) -> Iterator[subprocess.Popen[str]]:  # fmt: skip
    """A stock ``celery worker -A app`` on ``queue`` (``env`` added to the environment), for a
    ``with`` block; returns once it says it is ready, and stops it (SIGTERM) at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue,
         "-c", str(concurrency), "-P", pool, "-l", "info", "-n", f"{queue}@%h",
         "--without-gossip", "--without-heartbeat", *([] if mingle else ["--without-mingle"])],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if " ready." in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60), "celery worker did not become ready"
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


#: The Redis broker's visibility timeout in these tests: short, so that a killed worker's
#: messages come back within a test, and shorter than the long tasks, so that they prove the
#: worker renews its claim on what it runs.
REDIS_VISIBILITY_TIMEOUT = 4


@dataclass
class Broker:
    """The broker a test runs on: the worker's URL, the Celery client's, and inspection."""

    kind: str
    url: str
    client_url: str
    client_options: dict[str, Any] = field(default_factory=dict)

    def connection(self) -> Connection:
        """A kombu connection as the Celery client makes it."""
        return Connection(self.client_url, transport_options=self.client_options)

    def ready(self, queue: str) -> int:
        """Messages waiting in ``queue``."""
        with self.connection() as conn:
            channel = conn.default_channel
            if self.kind == "redis":
                return int(channel._size(queue))  # LLEN over kombu's priority lists
            return int(channel.queue_declare(queue, passive=True).message_count)

    def dead_letters(self, queue: str) -> list[Any]:
        """Everything in ``<queue>.dead``, taken out (kombu messages: ``.body``, ``.headers``)."""
        found = []
        with self.connection() as conn:
            channel = conn.default_channel
            while (message := channel.basic_get(queue=f"{queue}.dead", no_ack=True)) is not None:
                found.append(message)
        return found


#: Run a test on every broker, SQS included.
every_broker = pytest.mark.parametrize("broker", ["amqp", "redis", "sqs"], indirect=True)


@pytest.fixture(params=["amqp", "redis"])
def broker(request: pytest.FixtureRequest, unique_name: str) -> Iterator[Broker]:
    """The broker under test. On Redis every key is under a prefix of the test's own (set
    through the worker URL's query string and the client's transport options alike). On SQS
    the worker gets celeriac's URL (endpoint and credentials in it) and the client kombu's
    (``sqs://KEY:SECRET@host:port``); the test's queues are deleted after it."""
    if request.param == "amqp":
        url = request.getfixturevalue("amqp_url")
        yield Broker("amqp", url, url)
        return
    if request.param == "sqs":
        url = request.getfixturevalue("sqs_url")
        endpoint = urlsplit(dict(parse_qsl(urlsplit(url).query))["endpoint_url"])
        kombu_url = f"sqs://{ACCESS_KEY}:{SECRET_KEY}@{endpoint.hostname}:{endpoint.port}"
        yield Broker("sqs", url, kombu_url, {"is_secure": False, "region": REGION})
        asyncio.run(delete_sqs_queues(url, [unique_name, f"{unique_name}.dead"]))
        return
    base = request.getfixturevalue("redis_url")
    prefix = f"{unique_name}:"
    yield Broker(
        "redis",
        f"{base}?global_keyprefix={prefix}&visibility_timeout={REDIS_VISIBILITY_TIMEOUT}",
        base,
        {"global_keyprefix": prefix},
    )


@pytest.fixture
def start_worker(broker: Broker, redis_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``celeriac worker -A tests.interop.app:app`` (or ``app=...``) on the test's broker
    (node name ``hostname``, else celeriac's default)."""
    started: list[WorkerProcess] = []

    def start(
        *queues: str,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        broker_url: str | None = None,
        app: str = "tests.interop.app:app",
        hostname: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> WorkerProcess:
        args = [
            "-A", app,
            "-Q", ",".join(queues),
            "-c", str(concurrency),
            "--broker", broker_url or broker.url,
            "--result-backend", redis_url,
            "--log-format", "json",
            "--grace", "10",
        ]  # fmt: skip
        if hostname is not None:
            args += ["-n", hostname]
        args += extra
        base = {**os.environ, "PYTHONPATH": str(ROOT), "INTEROP_REDIS_URL": redis_url}
        worker = WorkerProcess(args, {**base, **(env or {})})
        started.append(worker)
        worker.wait_for("worker_ready")
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture
def celery_client(broker: Broker, redis_url: str) -> Iterator[Celery]:
    """A stock Celery 5.7 client on the same broker and result backend."""
    app = Celery("client", broker=broker.client_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        accept_content=["json", "msgpack"],
        result_accept_content=["json", "msgpack"],
        broker_transport_options=broker.client_options,
    )
    yield app
    # The result consumer's pub/sub connection is its own: left open, its socket is collected
    # during some later test, whose ResourceWarning then fails that test.
    app.backend.result_consumer.stop()
    app.backend.client.close()


class Marks:
    """What tasks recorded on Redis lists (``tests.interop.retry_app.mark``), for one test.

    Keys are ``marks:<unique_name>:<label>``: not ``t-*``, which every test session deletes
    when it ends, other sessions' tests included. The test's keys are deleted after it.
    """

    def __init__(self, client: redis.Redis, name: str) -> None:
        self._client = client
        self._name = name

    def key(self, label: str) -> str:
        """The list a task given this key appends to."""
        return f"marks:{self._name}:{label}"

    def read(self, key: str, count: int = 0, timeout: float = 10) -> list[dict[str, Any]]:
        """The entries on ``key``, oldest first, once there are ``count`` (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self._client.llen(key) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return [json.loads(entry) for entry in self._client.lrange(key, 0, -1)]

    def delete(self) -> None:
        """Delete the test's keys."""
        keys = list(self._client.scan_iter(match=f"marks:{self._name}:*"))
        if keys:
            self._client.delete(*keys)


@pytest.fixture
def marks(redis_url: str, unique_name: str) -> Iterator[Marks]:
    """The test's :class:`Marks`."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield Marks(client, unique_name)
    finally:
        Marks(client, unique_name).delete()
        client.close()


@pytest.fixture
def counts(redis_url: str, unique_name: str) -> Iterator[Callable[[], dict[str, int]]]:
    """Runs per task id, as ``interop.count`` records them in hash ``<unique_name>:runs``."""
    client = redis.Redis.from_url(redis_url)

    def read() -> dict[str, int]:
        runs = cast(dict[bytes, bytes], client.hgetall(f"{unique_name}:runs"))  # no decoding
        return {key.decode(): int(value) for key, value in runs.items()}

    yield read
    client.close()


@pytest.fixture
def start_celery_worker(redis_url: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a stock ``celery worker -A tests.interop.celery_worker_app`` (prefork, prefetch
    multiplier 1, without gossip and heartbeats; with mingle if asked) on ``queue``, named
    ``<queue>@%h``; returns once it says it is ready. Stopped with SIGTERM after the test."""
    with ExitStack() as stack:

        def start(
            queue: str, *, broker_url: str, keyprefix: str = "", concurrency: int = 2,
            mingle: bool = False, max_priority: int | None = None,
        ) -> subprocess.Popen[str]:  # fmt: skip
            priority = "" if max_priority is None else str(max_priority)
            env = {"INTEROP_BROKER_URL": broker_url, "INTEROP_REDIS_URL": redis_url,
                   "INTEROP_KEYPREFIX": keyprefix, "INTEROP_MAX_PRIORITY": priority}  # fmt: skip
            return stack.enter_context(celery_worker_process(
                "tests.interop.celery_worker_app", queue, env, pool="prefork",
                concurrency=concurrency, mingle=mingle))  # fmt: skip

        yield start
