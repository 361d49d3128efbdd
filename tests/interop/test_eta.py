"""ETA and countdown, as a Celery user sees them: a task due later runs within a second of its
due time, never keeps one of the worker's slots meanwhile, never sits unacknowledged beyond the
bound the worker is given, and survives a restart of the worker, exactly once.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import cast

import pytest
import redis
from celery import Celery

from .conftest import Broker, WorkerProcess, every_broker

StartWorker = Callable[..., WorkerProcess]


@every_broker
def test_a_countdown_task_starts_within_a_second_after_its_countdown(
    start_worker: StartWorker, celery_client: Celery, unique_name: str
) -> None:
    start_worker(unique_name)
    due = time.time() + 3  # deferred to the broker: beyond what the worker holds itself
    result = celery_client.send_task("interop.started_at", queue=unique_name, countdown=3)

    started = result.get(timeout=15)

    assert due <= started <= due + 1


@pytest.mark.parametrize("countdown", [1.5, 4], ids=["held", "deferred"])
def test_tasks_waiting_for_their_eta_leave_the_slots_free(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, countdown: float
) -> None:
    """One slot, five tasks waiting for their ETA (held by the worker, or back in the broker),
    then a plain task: it runs at once."""
    start_worker(unique_name, concurrency=1)
    later = []
    for _ in range(5):
        due = time.time() + countdown
        later.append((due, celery_client.send_task(
            "interop.started_at", queue=unique_name, countdown=countdown)))  # fmt: skip
    time.sleep(0.5)  # all five have reached the worker

    sent = time.time()
    now = celery_client.send_task("interop.started_at", queue=unique_name)

    assert now.get(timeout=countdown) - sent < 0.5
    for due, result in later:
        assert due <= result.get(timeout=15) <= due + 1


def _unacked(broker: Broker, queue: str) -> int:
    """What the broker itself counts as delivered and not acknowledged for ``queue``."""
    if broker.kind == "redis":
        client = redis.Redis.from_url(broker.client_url)
        with client:
            return int(client.hlen(f"{broker.client_options['global_keyprefix']}unacked"))
    rabbitmqctl = shutil.which("rabbitmqctl") or shutil.which("/usr/sbin/rabbitmqctl")
    if rabbitmqctl is None:
        pytest.fail("rabbitmqctl is needed to read RabbitMQ's unacknowledged count")
    listed = subprocess.run(
        [rabbitmqctl, "list_queues", "-q", "--no-table-headers", "name",
         "messages_unacknowledged"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    counts = dict(line.split("\t") for line in listed.splitlines() if "\t" in line)
    return int(counts.get(queue, 0))


class _Sampler:
    """Samples the broker's unacknowledged count every ``every`` seconds, in a thread."""

    def __init__(self, broker: Broker, queue: str, every: float) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(broker, queue, every))
        self._thread.start()

    def _run(self, broker: Broker, queue: str, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(_unacked(broker, queue))

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return self.samples


def _probe_start_delays(client: Celery, queue: str, seconds: float) -> list[float]:
    """Send a plain task every 0.3 s for ``seconds``; how long each took to start."""
    sent_and_results = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent = time.time()
        sent_and_results.append((sent, client.send_task("interop.started_at", queue=queue)))
        time.sleep(0.3)
    return [result.get(timeout=10) - sent for sent, result in sent_and_results]


def test_a_thousand_countdowns_keep_the_slots_free_stay_bounded_and_survive_a_restart(
    start_worker: StartWorker,
    celery_client: Celery,
    unique_name: str,
    broker: Broker,
    redis_url: str,
) -> None:
    held_at_most, concurrency = 100, 2
    options = {"concurrency": concurrency, "env": {"CELERIAC_MAX_HELD_ETA": str(held_at_most)}}
    worker = start_worker(unique_name, **options)
    counts = f"{unique_name}:runs"
    ids = [
        celery_client.send_task(
            "interop.count", (counts,), queue=unique_name, countdown=2 + 28 * n / 1000
        ).id
        for n in range(1000)
    ]
    sampler = _Sampler(broker, unique_name, every=1.0)
    # Intake first: a plain task sent now would wait behind the thousand in the queue.
    deadline = time.monotonic() + 20
    while broker.ready(unique_name) and time.monotonic() < deadline:
        time.sleep(0.1)

    before = _probe_start_delays(celery_client, unique_name, seconds=8)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    worker = start_worker(unique_name, **options)
    time.sleep(1)  # what came due while no worker ran is caught up first
    after = _probe_start_delays(celery_client, unique_name, seconds=8)
    samples = sampler.stop()

    delays = sorted(before + after)
    # All but the slowest one in twenty within 100 ms; a lone ~110 ms outlier was seen on Redis.
    assert delays[int(len(delays) * 0.95) - 1] < 0.1, delays[-5:]
    assert delays[-1] < 0.25, delays[-5:]
    assert samples
    assert max(samples) <= concurrency + held_at_most, samples
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 40
    with client:
        while len(client.hgetall(counts)) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)  # a run twice would show up by now
        runs = cast(dict[bytes, bytes], client.hgetall(counts))  # a client without decoding
    unusual = [line for line in worker.lines if '"level": "info"' not in line]
    assert sorted(key.decode() for key in runs) == sorted(ids), unusual[-20:]
    assert {int(value) for value in runs.values()} == {1}
