"""Broker outages for the chaos suite: a Redis of the test's own it can stop and start, and the
shared RabbitMQ's AMQP service stopped and started in place.

The Redis is a ``redis-server`` on a free loopback port with an append-only file fsynced on
every write, so a stop and start keeps every list, hash and key: an outage, not a data loss.
RabbitMQ is stopped with ``rabbitmqctl stop_app`` (the node stays, its listeners close and
every client connection drops) and started again with ``start_app``; durable queues and
persistent messages survive it, as they survive a broker restart.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.controller.test_probes import free_port

RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


class LocalRedis:
    """A ``redis-server`` of one test's own, in ``directory``, that it can :meth:`stop` and
    :meth:`start` again with its data."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (again) and wait until it answers."""
        self._proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
             "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=1) as client:
                    client.ping()
                return
            except redis.exceptions.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (``SHUTDOWN``: the append-only file is complete) and wait for the exit."""
        if self._proc is None:
            return
        try:
            with redis.Redis(port=self.port) as client:
                client.shutdown(nosave=False)
        except redis.exceptions.ConnectionError:
            pass  # it closes the connection as it goes
        self._proc.wait(timeout=30)
        self._proc = None

    def kill(self) -> None:
        """End it at once, whatever its state (test teardown)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


@contextmanager
def local_redis(directory: Path) -> Iterator[LocalRedis]:
    """A started :class:`LocalRedis`, ended after the ``with`` block."""
    server = LocalRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def rabbitmq(action: str) -> None:
    """``rabbitmqctl stop_app`` or ``start_app`` (and wait until the app is up again)."""
    subprocess.run([RABBITMQCTL, action], check=True, capture_output=True, timeout=120)
    if action == "start_app":
        subprocess.run([RABBITMQCTL, "await_startup"], check=True, capture_output=True, timeout=120)


@contextmanager
def rabbitmq_restored() -> Iterator[None]:
    """Whatever the ``with`` block does to RabbitMQ, it runs again after it."""
    try:
        yield
    finally:
        rabbitmq("start_app")  # a no-op when it runs


def rabbitmqctl_eval(expression: str) -> str:
    """``rabbitmqctl eval`` of an Erlang expression on the running node; its reply."""
    done = subprocess.run(
        [RABBITMQCTL, "eval", expression], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip()


@contextmanager
def rabbitmq_consumer_timeout(seconds: float) -> Iterator[None]:
    """RabbitMQ's ``consumer_timeout`` set to ``seconds`` for channels opened meanwhile (3.10
    has no per-queue setting: it is the node's), and checked every second instead of every
    minute (``channel_tick_interval``); the earlier values put back after."""
    # Put back as values, never unset: a channel reads them at every tick, and one that
    # finds no tick interval crashes, closing its connection.
    defaults = {"consumer_timeout": 1_800_000, "channel_tick_interval": 60_000}
    settings = {"consumer_timeout": int(seconds * 1000), "channel_tick_interval": 1000}
    before: dict[str, str | int] = {}
    for name, default in defaults.items():
        value = rabbitmqctl_eval(f"application:get_env(rabbit, {name}).")
        found = value.removeprefix("{ok,").removesuffix("}") if value != "undefined" else default
        # This block's own setting found there was left by a run stopped inside it (or one
        # beside it): put back the default, or every later run keeps the short timeout.
        before[name] = default if str(found) == str(settings[name]) else found
    for name, setting in settings.items():
        rabbitmqctl_eval(f"application:set_env(rabbit, {name}, {setting}).")
    try:
        yield
    finally:
        for name, earlier in before.items():
            rabbitmqctl_eval(f"application:set_env(rabbit, {name}, {earlier}).")
