"""Hard limits that hold for a coroutine that never yields, seen from a Celery client.

Such a task holds the event loop: no timer fires, no other task runs, until the watchdog
thread interrupts it (``runtime/worker/watchdog.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from billiard.exceptions import TimeLimitExceeded
from celery import Celery

from tests.interop.conftest import WorkerProcess

pytestmark = pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)


@pytest.mark.parametrize("how", ["cpu", "sleep"])
def test_a_coroutine_holding_the_loop_fails_at_its_hard_limit(
    start_worker: Any, celery_client: Celery, unique_name: str, how: str
) -> None:
    worker: WorkerProcess = start_worker(unique_name)
    started = time.monotonic()
    held = celery_client.send_task(
        "interop.holds_the_loop", args=(how,), queue=unique_name, time_limit=1
    )
    neighbour = celery_client.send_task("interop.add", args=(2, 3), queue=unique_name)

    with pytest.raises(TimeLimitExceeded) as caught:
        held.get(timeout=30)
    assert caught.value.args == (1.0,)
    assert time.monotonic() - started < 10  # not the task's own 60 s
    assert neighbour.get(timeout=15) == 5  # the other slot waited for the loop, then ran
    worker.wait_for("hard_limit_interrupt", hard_limit=1.0)
    assert worker.proc.poll() is None


def test_a_task_that_will_not_let_go_ends_its_process_which_is_replaced(
    start_worker: Any, celery_client: Celery, unique_name: str
) -> None:
    """It swallows the watchdog's exception and holds the loop on: 10 s past its hard limit
    the process ends with status 70, and the supervisor starts another in its place."""
    worker: WorkerProcess = start_worker(unique_name, extra=("--processes", "2"))
    celery_client.send_task("interop.will_not_let_go", queue=unique_name, time_limit=1)

    stuck = worker.wait_for("loop_stuck", timeout=30)
    exited = worker.wait_for("child_exited", timeout=10, status=70)
    assert exited["node"] == stuck["worker"]
    worker.wait_for("child_restarting", node=stuck["worker"])
    results = [
        celery_client.send_task("interop.add", args=(i, i), queue=unique_name) for i in range(4)
    ]
    assert [result.get(timeout=30) for result in results] == [0, 2, 4, 6]
    assert worker.proc.poll() is None


def test_a_plain_function_blocked_in_c_on_a_process_queue_fails_at_its_hard_limit(
    start_worker: Any, celery_client: Celery, unique_name: str, tmp_path: Path
) -> None:
    """``pool = "process"``: the hard limit kills the process the call is blocked in."""
    table = tmp_path / "queues.toml"
    table.write_text(f'[queues."{unique_name}"]\npool = "process"\nhard = 2\n')
    worker: WorkerProcess = start_worker(unique_name, extra=("--queue-limits-file", str(table)))
    started = time.monotonic()
    blocked = celery_client.send_task("interop.sleeps_in_c", args=(60, True), queue=unique_name)
    soft = celery_client.send_task(
        "interop.sleeps_in_c", args=(60,), queue=unique_name, soft_time_limit=0.5
    )

    with pytest.raises(TimeLimitExceeded) as caught:
        blocked.get(timeout=30)
    assert caught.value.args == (2.0,)
    assert time.monotonic() - started < 10
    cleaned_up = soft.get(timeout=15)
    assert cleaned_up.startswith("cleaned up in ")
    assert int(cleaned_up.removeprefix("cleaned up in ")) != worker.proc.pid
    after = celery_client.send_task("interop.sleeps_in_c", args=(0.01,), queue=unique_name)
    assert after.get(timeout=15) == "slept"
