"""SIGKILL at random moments under load: ``acks_late`` loses nothing, early ack only what ran.

A stock Celery client sends the tasks; ``celeriac worker`` is killed with SIGKILL at random
moments and started again, on RabbitMQ and on Redis. Each task notes its start and counts its
run in Redis (``tests/chaos/app.py``), so the test sees every execution, duplicates included.
"""

from __future__ import annotations

import pytest

from tests.chaos.conftest import ChaosRun

#: Slots per worker: at most this many tasks are running when a kill lands.
CONCURRENCY = 4
#: How long a worker lives between kills, once it says it is ready (seconds).
LIFETIME = (0.2, 1.2)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.interop,
    pytest.mark.timeout(900),
    pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True),
]


def test_sigkill_loses_no_acks_late_task(chaos: ChaosRun) -> None:
    """Every ``acks_late`` task completes however often its worker is killed; some run twice
    (at-least-once), none is lost."""
    ids = chaos.send("chaos.late")
    unfinished = chaos.kill_repeatedly(CONCURRENCY, LIFETIME)
    chaos.wait_for_all(len(ids))

    runs = chaos.runs()
    duplicates = sum(n - 1 for n in runs.values())
    print(
        f"\nchaos sigkill acks_late {chaos.broker.kind}: tasks={len(ids)} "
        f"kills={chaos.size.kills} completed={len(runs)} duplicates={duplicates} "
        f"lost={len(set(ids) - set(runs))}"
    )
    assert all(left > 0 for left in unfinished), f"a kill found no work left: {unfinished}"
    assert set(runs) == set(ids)  # none lost, no stranger
    assert duplicates <= chaos.size.kills * CONCURRENCY  # only what was running ran again


def test_sigkill_loses_only_running_early_ack_tasks(chaos: ChaosRun) -> None:
    """Early ack (Celery's default) acknowledges a task as it takes a slot: a kill loses at
    most the tasks then in the worker's slots, ``CONCURRENCY`` per kill; the rest all run."""
    ids = chaos.send("chaos.early")
    unfinished = chaos.kill_repeatedly(CONCURRENCY, LIFETIME)
    chaos.wait_until_settled()

    runs = chaos.runs()
    lost = set(ids) - set(runs)
    print(
        f"\nchaos sigkill early-ack {chaos.broker.kind}: tasks={len(ids)} "
        f"kills={chaos.size.kills} completed={len(runs)} "
        f"duplicates={sum(n - 1 for n in runs.values())} lost={len(lost)} "
        f"(bound {chaos.size.kills * CONCURRENCY})"
    )
    assert all(left > 0 for left in unfinished), f"a kill found no work left: {unfinished}"
    assert set(runs) <= set(ids)
    assert len(lost) <= chaos.size.kills * CONCURRENCY
