"""A real ``celeriac worker`` process and a real Celery client, for the interop tests."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

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
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue

    def wait_for(self, event: str, timeout: float = 15, **fields: Any) -> dict[str, Any]:
        """The next log record ``event`` (with ``fields``), or fail with the log so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                record = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return record
        raise AssertionError(
            f"no {event!r} {fields} within {timeout}s; log:\n{''.join(self.lines)}"
        )

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker."""
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20) -> int:
        """Wait for the process to exit; its exit status."""
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Make sure the process is gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def start_worker(amqp_url: str, redis_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``celeriac worker -A tests.interop.app:app`` on the test brokers."""
    started: list[WorkerProcess] = []

    def start(
        *queues: str, concurrency: int = 2, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        args = [
            "-A", "tests.interop.app:app",
            "-Q", ",".join(queues),
            "-c", str(concurrency),
            "--broker", amqp_url,
            "--result-backend", redis_url,
            "--log-format", "json",
            "--grace", "10",
        ]  # fmt: skip
        worker = WorkerProcess(args, {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        started.append(worker)
        worker.wait_for("worker_ready")
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture
def celery_client(amqp_url: str, redis_url: str) -> Iterator[Celery]:
    """A stock Celery 5.7 client on the same broker and result backend."""
    app = Celery("client", broker=amqp_url, backend=redis_url, set_as_current=False)
    app.conf.update(accept_content=["json", "msgpack"], result_accept_content=["json", "msgpack"])
    yield app
    app.backend.client.close()
