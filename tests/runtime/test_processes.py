"""Plain functions run in processes (a queue's ``pool = "process"``): killable in C code."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from protocol import State, TaskMessage
from runtime import App, SoftTimeLimitExceeded
from runtime.exceptions import Retry
from runtime.policy import TimeLimits
from runtime.request import Request
from runtime.worker.execution import Executor
from runtime.worker.processes import WorkerLostError

app = App("tests-processes")


@app.task(name="p.sleeps_in_c")
def sleeps_in_c(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "interrupted"
    return "woke"


@app.task(name="p.ignores_soft")
def ignores_soft(seconds: float) -> str:
    while True:
        try:
            time.sleep(seconds)
        except SoftTimeLimitExceeded:
            continue


@app.task(name="p.pid", bind=True)
def pid(self: Any, suffix: str) -> tuple[int, str]:
    return os.getpid(), f"{self.request.id}{suffix}"


@app.task(name="p.fails")
def fails(message: str) -> None:
    raise ValueError(message, 42)


@app.task(name="p.dies")
def dies() -> None:
    os._exit(3)


def _request(name: str, *args: Any, task_id: str = "id-1") -> Request:
    return Request(TaskMessage(id=task_id, task=name, args=args), hostname="w@test")


@pytest.fixture
async def executor() -> AsyncIterator[Executor]:
    runner = Executor(threads=2)
    yield runner
    runner.shutdown()


async def test_a_call_blocked_in_c_is_killed_at_its_hard_limit(executor: Executor) -> None:
    first = await executor.run(pid, _request("p.pid", "!"), TimeLimits(), isolated=True)
    started = time.monotonic()

    outcome = await executor.run(
        ignores_soft, _request("p.ignores_soft", 30), TimeLimits(soft=0.5, hard=1), isolated=True
    )

    assert time.monotonic() - started < 5
    assert outcome.timed_out
    assert outcome.exception is not None
    assert outcome.exception.args == (1,)
    # Both processes still serve: the killed one was replaced.
    after = await asyncio.gather(
        *(
            executor.run(pid, _request("p.pid", "", task_id=f"id-{i}"), TimeLimits(), isolated=True)
            for i in range(4)
        )
    )
    assert [outcome.value[1] for outcome in after] == ["id-0", "id-1", "id-2", "id-3"]
    assert first.value[0] != os.getpid()


async def test_the_soft_limit_interrupts_a_sleep_in_the_process(executor: Executor) -> None:
    outcome = await executor.run(
        sleeps_in_c, _request("p.sleeps_in_c", 30), TimeLimits(soft=0.3, hard=5), isolated=True
    )

    assert outcome.value == "interrupted"


async def test_a_bound_task_sees_its_request(executor: Executor) -> None:
    outcome = await executor.run(pid, _request("p.pid", "?"), TimeLimits(), isolated=True)

    assert outcome.state is State.SUCCESS
    assert outcome.value[1] == "id-1?"


async def test_an_exception_comes_back_with_its_traceback(executor: Executor) -> None:
    outcome = await executor.run(fails, _request("p.fails", "no"), TimeLimits(), isolated=True)

    assert isinstance(outcome.exception, ValueError)
    assert outcome.exception.args == ("no", 42)
    assert outcome.traceback is not None
    assert "in fails" in outcome.traceback


async def test_a_process_that_dies_fails_the_run_with_worker_lost(executor: Executor) -> None:
    outcome = await executor.run(dies, _request("p.dies"), TimeLimits(), isolated=True)

    assert isinstance(outcome.exception, WorkerLostError)
    assert type(outcome.exception).__module__ == "billiard.exceptions"
    follow_up = await executor.run(pid, _request("p.pid", ""), TimeLimits(), isolated=True)
    assert follow_up.state is State.SUCCESS


async def test_a_task_not_at_module_level_fails_clearly(executor: Executor) -> None:
    @app.task(name="p.local")
    def local() -> str:
        return "unreachable"

    outcome = await executor.run(local, _request("p.local"), TimeLimits(), isolated=True)

    assert isinstance(outcome.exception, TypeError)
    assert "not a task at module level" in str(outcome.exception)


async def test_the_hard_limit_counts_from_the_start_in_a_process() -> None:
    """Calls waiting for a busy process do not spend their limit waiting."""
    executor = Executor(threads=1)
    try:
        outcomes = await asyncio.gather(
            *(
                executor.run(
                    sleeps_in_c,
                    _request("p.sleeps_in_c", 0.6, task_id=f"id-{i}"),
                    TimeLimits(hard=1),
                    isolated=True,
                )
                for i in range(3)
            )
        )
    finally:
        executor.shutdown()

    assert [outcome.value for outcome in outcomes] == ["woke"] * 3


@app.task(name="p.retries", bind=True, max_retries=3)
def retries(self: Any) -> None:
    raise self.retry(countdown=5)


async def test_a_retry_asked_in_the_process_comes_back_to_the_worker(executor: Executor) -> None:
    request = _request("p.retries")

    outcome = await executor.run(retries, request, TimeLimits(), isolated=True)

    assert isinstance(outcome.exception, Retry)
    assert len(request.outbox) == 1
    assert request.outbox[0].message.retries == 1
