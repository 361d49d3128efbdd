"""The chaos suite: real workers killed, real brokers stopped, hostile bytes through them.

Sizes: CI's by default, ``pytest tests/chaos --soak`` for the full ones (README: Reliability).
The worker, broker and client fixtures are the interop suite's.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest
import redis
from celery import Celery

from tests.interop.conftest import Broker, WorkerProcess, broker, celery_client, start_worker

__all__ = ["broker", "celery_client", "start_worker"]

#: The app every chaos worker runs.
APP = "tests.chaos.app:app"


@dataclass(frozen=True)
class ChaosSize:
    """How hard a chaos test pushes: tasks sent and worker kills."""

    tasks: int
    kills: int


#: CI's size: a few minutes for the whole suite on two cores.
CI_SIZE = ChaosSize(tasks=2_000, kills=5)
#: ``--soak``: the issue's full size.
SOAK_SIZE = ChaosSize(tasks=10_000, kills=20)


@dataclass
class ChaosRun:
    """One chaos test's tasks on one queue: sent by a stock Celery client, run by celeriac
    workers the test starts and kills, tallied in Redis by the tasks themselves
    (``tests/chaos/app.py``: ``<queue>:started``, a set, and ``<queue>:runs``, id to runs)."""

    broker: Broker
    client: Celery
    tally: redis.Redis
    queue: str
    size: ChaosSize
    start_worker: Callable[..., WorkerProcess]
    #: Options every worker of this run gets, after the fixture's own.
    worker_args: tuple[str, ...] = ()
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.queue)

    def send(self, task: str, count: int | None = None) -> list[str]:
        """Send ``count`` (the size's) ``task`` messages; their ids."""
        with self.client.producer_or_acquire() as producer:
            return [
                self.client.send_task(task, (self.queue,), queue=self.queue, producer=producer).id
                for _ in range(self.size.tasks if count is None else count)
            ]

    def start(self, concurrency: int, *extra: str) -> WorkerProcess:
        """A ``celeriac worker`` on the queue, ready."""
        return self.start_worker(
            self.queue, concurrency=concurrency, app=APP, extra=(*self.worker_args, *extra)
        )

    def runs(self) -> dict[str, int]:
        """Runs per task id so far."""
        runs = cast(dict[str, str], self.tally.hgetall(f"{self.queue}:runs"))  # decode_responses
        return {k: int(v) for k, v in runs.items()}

    def finished(self) -> int:
        """How many distinct tasks have run to the end."""
        return int(self.tally.hlen(f"{self.queue}:runs"))

    def kill_repeatedly(self, concurrency: int, lifetime: tuple[float, float]) -> list[int]:
        """Start a worker, SIGKILL it ``size.kills`` times, each after a random ``lifetime``
        (seconds, once ready) and start another; the last is left running. Returns how many
        tasks had not finished at each kill."""
        worker = self.start(concurrency)
        unfinished = []
        for _ in range(self.size.kills):
            time.sleep(self.rng.uniform(*lifetime))
            unfinished.append(self.size.tasks - self.finished())
            worker.signal(signal.SIGKILL)
            worker.wait()
            worker = self.start(concurrency)
        return unfinished

    def wait_for_all(self, count: int, timeout: float = 180) -> None:
        """Until ``count`` distinct tasks have finished (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.finished() < count and time.monotonic() < deadline:
            time.sleep(0.2)

    def wait_until_settled(self, timeout: float = 180) -> None:
        """Until nothing waits in the broker, nothing is claimed, and no task starts or ends
        for 2 s: the last worker has done all it will."""
        deadline = time.monotonic() + timeout
        while not self._quiet_for(2.0):
            assert time.monotonic() < deadline, "the workers never finished the queue"

    def _quiet_for(self, seconds: float) -> bool:
        before = self._snapshot()
        time.sleep(seconds)
        return before == self._snapshot() and before[:2] == (0, 0)

    def _snapshot(self) -> tuple[int, int, int, int]:
        claimed = 0
        if self.broker.kind == "redis":
            prefix = self.broker.client_options["global_keyprefix"]
            claimed = int(self.tally.hlen(f"{prefix}unacked"))
        return (self.broker.ready(self.queue), claimed,
                int(self.tally.scard(f"{self.queue}:started")), self.finished())  # fmt: skip


def _size(request: pytest.FixtureRequest) -> ChaosSize:
    return SOAK_SIZE if request.config.getoption("--soak") else CI_SIZE


@pytest.fixture
def chaos(
    request: pytest.FixtureRequest, broker: Broker, celery_client: Celery,
    start_worker: Callable[..., WorkerProcess], unique_name: str,
) -> Iterator[ChaosRun]:  # fmt: skip
    """The test's :class:`ChaosRun` on its own queue, at CI's size or ``--soak``'s."""
    tally = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    yield ChaosRun(broker, celery_client, tally, unique_name, _size(request), start_worker)
    tally.close()
