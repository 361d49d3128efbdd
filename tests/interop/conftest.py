"""A real ``celeriac worker`` process and a real Celery client, for the interop tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
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
        *queues: str,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        broker: str | None = None,
    ) -> WorkerProcess:
        args = [
            "-A", "tests.interop.app:app",
            "-Q", ",".join(queues),
            "-c", str(concurrency),
            "--broker", broker or amqp_url,
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
