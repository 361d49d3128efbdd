"""What the worker keeps for each task that waits, and the logger it keeps it with.

At 10,000 coroutine tasks waiting at once (the io scenario), each object the worker keeps
per run is 10,000 objects. The budget below is the worker's own share, measured with
tracemalloc over 2,000 waiting tasks on the memory transport, each message made as a
broker's delivery would be: bytes allocated and still held while they wait, divided by the
tasks. It was 6,884 bytes (2026-12-05, ea82c33) with five coroutine frames of the worker's
between the handler and the task, a bound logger per message, and the message kept for the
whole run; 4,723 with one frame and :class:`~runtime.worker.tasklog.TaskLog` (db5fc8a);
3,702 with the message let go after its early ack (3,604 in an interpreter of its own, as the
test measures since); 3,292 with the run its own iterator rather than a generator's frame;
3,234 with one name for every handler task. Since 2026-12-05 (session 20) each message is
what a Celery client sends, read back from kombu's envelope bytes, so its strings are the
reader's own: 3,806 bytes, then 3,290 with the strings messages repeat kept once
(``protocol.shared_text``; a root task's ``root_id`` is its ``id``), then 3,095-3,160 with
``current_request`` set in the handler's own context, so that the run's copy of it makes no
mapping of context variables of its own; 2,871-2,935 (session 21) with ``Request`` keeping
the delivery's exchange, routing key and redelivered flag as fields, its ``delivery_info``
dict made when asked for, and its outbox the one empty tuple until a retry is planned; then
2,807-2,871 with the handler's done callback given one context for all, not a copy each;
2,663-2,727 with settled deliveries from one place shared and no task log kept while the
task runs. The budget leaves about 170 bytes: a frame kept per run (~300) coming back fails
it, and so do the strings kept per message again.

The measurement is ``python -m benchmarks.held`` (it also shows where the bytes go, by line),
run in an interpreter of its own. Inside the whole suite, in pytest's
process, it measured about 900 bytes more (4,624 in CI at 3,702 alone): state left by earlier
tests, which a budget should not have to absorb.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import structlog
from structlog.testing import capture_logs

from runtime.worker.tasklog import TaskLog

#: Bytes the worker may keep for each task waiting (see the module docstring).
BUDGET = 2_900
TASKS = 2_000
ROOT = Path(__file__).resolve().parents[2]


def test_a_waiting_task_costs_the_worker_little_memory() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.held", "--tasks", str(TASKS), "--lines", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    *lines, total = done.stdout.splitlines()[-4:]  # after the worker's own log lines
    assert total.endswith("bytes held per waiting task, in all"), done.stdout
    per_task = float(total.split()[0])
    assert 1_000 < per_task < BUDGET, f"{per_task:.0f} bytes a waiting task"
    # Where they go: the three largest lines, each a part of the whole.
    sizes = [float(line.split()[0]) for line in lines]
    assert all(line.split()[1].rpartition(":")[2].isdigit() for line in lines), lines
    assert sizes == sorted(sizes, reverse=True), lines
    assert 0 < sum(sizes) < per_task, lines


def test_the_task_log_adds_the_message_fields_to_every_event() -> None:
    log = TaskLog(_Recording(), task_id="id-1", task="t.add", queue="q")
    fields = {"task_id": "id-1", "task": "t.add", "queue": "q"}

    with capture_logs() as logs:
        log.info("task_started", hard_limit=300.0)
        log.warning("task_dropped", queue="other")  # an event's own field wins
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("delivery_failed")
        log.bind(retries=2).error("task_failed")

    assert logs == [
        {**fields, "hard_limit": 300.0, "event": "task_started", "log_level": "info"},
        {**fields, "queue": "other", "event": "task_dropped", "log_level": "warning"},
        {**fields, "event": "delivery_failed", "log_level": "error", "exc_info": True},
        {**fields, "retries": 2, "event": "task_failed", "log_level": "error"},
    ]


class _Recording:
    """The worker's logger as the test sees it: structlog's, captured."""

    def __getattr__(self, name: str) -> object:

        return getattr(structlog.get_logger(), name)
