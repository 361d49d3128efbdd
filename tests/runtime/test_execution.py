"""Running tasks under time limits, without a broker: what a task author sees."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import signal
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from protocol import State, TaskMessage
from runtime import App, SoftTimeLimitExceeded, TimeLimitExceeded, current_request
from runtime.exceptions import TaskCancelled
from runtime.policy import TimeLimits
from runtime.request import Request
from runtime.worker import watchdog as watchdog_module
from runtime.worker.execution import Executor

app = App("tests")


@app.task(name="t.add")
async def add(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


@app.task(name="t.fail")
async def fail(message: str) -> None:
    raise ValueError(message, 42)


@app.task(name="t.whoami", bind=True)
async def whoami(self: Any) -> str:
    request = current_request.get()
    assert request is not None
    return f"{self.request.id}:{request.task}"


@app.task(name="t.sync_whoami", bind=True)
def sync_whoami(self: Any, suffix: str) -> str:
    return (
        f"{self.request.id}:{threading.current_thread().name.startswith('celeriac-task')}{suffix}"
    )


@app.task(name="t.cleans_up")
async def cleans_up() -> str:
    try:
        await asyncio.sleep(10)
    except SoftTimeLimitExceeded:
        async with asyncio.timeout(0.05):  # the task is not left "cancelling"
            await asyncio.sleep(0.01)
        return "cleaned up"
    return "never"


@app.task(name="t.sleeps")
async def sleeps(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke"


@app.task(name="t.ignores_soft")
async def ignores_soft() -> str:
    try:
        await asyncio.sleep(10)
    except SoftTimeLimitExceeded:
        await asyncio.sleep(10)
    return "never"


@app.task(name="t.stubborn")
async def stubborn() -> str:
    """Swallows the first cancellation (the hard limit's), ends on the next."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(10)
    return "never"


@app.task(name="t.spins")
def spins(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            pass
    except SoftTimeLimitExceeded:
        return "interrupted"
    return "finished"


@app.task(name="t.spins_forever")
def spins_forever() -> None:
    while True:
        pass


def _request(name: str, *args: Any, task_id: str = "id-1") -> Request:
    return Request(TaskMessage(id=task_id, task=name, args=args), hostname="w@test")


@pytest.fixture
async def executor() -> AsyncIterator[Executor]:
    runner = Executor(threads=2, hard_grace=0.2)
    yield runner
    runner.shutdown()


NO_LIMITS = TimeLimits()


async def test_success(executor: Executor) -> None:
    outcome = await executor.run(add, _request("t.add", 2, 3), NO_LIMITS)

    assert (outcome.state, outcome.value, outcome.exception) == (State.SUCCESS, 5, None)


async def test_failure_carries_exception_and_traceback(executor: Executor) -> None:
    outcome = await executor.run(fail, _request("t.fail", "declined"), NO_LIMITS)

    assert outcome.state is State.FAILURE
    assert isinstance(outcome.exception, ValueError)
    assert outcome.exception.args == ("declined", 42)
    assert outcome.traceback is not None
    assert "raise ValueError(message, 42)" in outcome.traceback


async def test_bound_tasks_see_their_request(executor: Executor) -> None:
    coroutine = await executor.run(whoami, _request("t.whoami", task_id="abc"), NO_LIMITS)
    thread = await executor.run(
        sync_whoami, _request("t.sync_whoami", "!", task_id="def"), NO_LIMITS
    )

    assert coroutine.value == "abc:t.whoami"
    assert thread.value == "def:True!"
    assert current_request.get() is None  # nothing leaks into the worker's own context


async def test_soft_limit_is_catchable_in_a_coroutine(executor: Executor) -> None:
    outcome = await executor.run(cleans_up, _request("t.cleans_up"), TimeLimits(soft=0.05))

    assert (outcome.state, outcome.value) == (State.SUCCESS, "cleaned up")


async def test_uncaught_soft_limit_fails_the_task(executor: Executor) -> None:
    outcome = await executor.run(sleeps, _request("t.sleeps", 10), TimeLimits(soft=0.05))

    assert outcome.state is State.FAILURE
    assert isinstance(outcome.exception, SoftTimeLimitExceeded)
    assert type(outcome.exception).__module__ == "billiard.exceptions"


async def test_hard_limit_ends_a_coroutine(executor: Executor) -> None:
    started = time.monotonic()

    outcome = await executor.run(
        ignores_soft, _request("t.ignores_soft"), TimeLimits(soft=0.05, hard=0.2)
    )

    assert outcome.state is State.FAILURE
    assert isinstance(outcome.exception, TimeLimitExceeded)
    assert outcome.exception.args == (0.2,)
    assert outcome.traceback is None
    assert outcome.timed_out
    assert time.monotonic() - started < 2


async def test_hard_limit_gives_up_on_a_task_that_swallows_cancellation(
    executor: Executor,
) -> None:
    outcome = await executor.run(stubborn, _request("t.stubborn"), TimeLimits(hard=0.1))

    assert outcome.timed_out


async def test_fast_task_is_not_touched_by_limits(executor: Executor) -> None:
    outcome = await executor.run(sleeps, _request("t.sleeps", 0.01), TimeLimits(soft=1, hard=2))

    assert outcome.value == "woke"


async def test_soft_limit_interrupts_a_python_loop_in_a_thread(executor: Executor) -> None:
    outcome = await executor.run(spins, _request("t.spins", 10), TimeLimits(soft=0.1))

    assert outcome.value == "interrupted"


async def test_hard_limit_in_a_thread(executor: Executor) -> None:
    outcome = await executor.run(spins_forever, _request("t.spins_forever"), TimeLimits(hard=0.1))

    assert outcome.timed_out
    # The thread was interrupted too, so the pool is free for the next task.
    follow_up = await executor.run(spins, _request("t.spins", 0.01), NO_LIMITS)
    assert follow_up.value == "finished"


async def test_thread_pool_is_bounded() -> None:
    executor = Executor(threads=1)
    running = 0
    most = 0
    lock = threading.Lock()

    @app.task(name="t.counted")
    def counted() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    try:
        await asyncio.gather(
            *(executor.run(counted, _request("t.counted"), NO_LIMITS) for _ in range(3))
        )
    finally:
        executor.shutdown()

    assert most == 1


async def test_cancelling_the_run_cancels_the_task(executor: Executor) -> None:
    stopped = asyncio.Event()

    @app.task(name="t.waits")
    async def waits() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            stopped.set()

    run = asyncio.create_task(executor.run(waits, _request("t.waits"), NO_LIMITS))
    await asyncio.sleep(0.05)
    run.cancel()

    with pytest.raises(asyncio.CancelledError):
        await run
    await asyncio.wait_for(stopped.wait(), 1)


async def test_calling_a_coroutine_function_wrongly_is_a_task_failure(executor: Executor) -> None:
    @app.task(name="t.untyped", typing=False)
    async def untyped(x: int) -> int:
        return x

    outcome = await executor.run(untyped, _request("t.untyped", 1, 2, 3), NO_LIMITS)

    assert outcome.state is State.FAILURE
    assert isinstance(outcome.exception, TypeError)


async def test_a_task_that_cancels_itself_is_recorded_as_an_exception(executor: Executor) -> None:
    @app.task(name="t.cancels")
    async def cancels() -> None:
        raise asyncio.CancelledError

    outcome = await executor.run(cancels, _request("t.cancels"), NO_LIMITS)

    assert isinstance(outcome.exception, TaskCancelled)


async def test_a_call_still_queued_at_its_hard_limit_never_runs() -> None:
    """A pool thread held by a task that will not stop: the next call times out unstarted,
    and is dropped, not run later with its failure already recorded."""
    executor = Executor(threads=1, hard_grace=0.05)
    ran, gate = threading.Event(), threading.Event()

    @app.task(name="t.holds_its_thread")
    def holds_its_thread() -> None:
        while not gate.is_set():
            try:
                while not gate.is_set():
                    pass
            except TimeLimitExceeded:
                continue  # it refuses to stop, like a call stuck in C code

    @app.task(name="t.marks")
    def marks() -> None:
        ran.set()

    try:
        first = await executor.run(holds_its_thread, _request("t.h"), TimeLimits(hard=0.1))
        second = await executor.run(marks, _request("t.marks"), TimeLimits(hard=0.1))
        gate.set()
        await asyncio.sleep(0.3)  # the pool thread is free again: a queued call would run now
    finally:
        gate.set()
        executor.shutdown()

    assert first.timed_out
    assert second.timed_out
    assert not ran.is_set()


@app.task(name="t.spins_on_the_loop")
async def spins_on_the_loop() -> None:
    while True:  # never awaits: the loop cannot fire the hard limit's timer
        pass


@app.task(name="t.sleeps_on_the_loop")
async def sleeps_on_the_loop(seconds: float) -> str:
    time.sleep(seconds)  # blocked in C, holding the loop
    return "woke"


@pytest.mark.parametrize(
    ("task", "args"), [(spins_on_the_loop, ()), (sleeps_on_the_loop, (30,))], ids=["cpu", "sleep"]
)
async def test_a_coroutine_holding_the_loop_is_ended_at_its_hard_limit(
    executor: Executor, task: Any, args: tuple[Any, ...]
) -> None:
    """No timer fires while the loop is held: the watchdog thread interrupts the task."""
    started = time.monotonic()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    try:
        outcome = await executor.run(task, _request(task.name, *args), TimeLimits(hard=0.5))
        ticks_after_the_limit = ticks
        await asyncio.sleep(0.1)
    finally:
        ticking.cancel()

    elapsed = time.monotonic() - started
    assert outcome.timed_out
    assert outcome.exception is not None
    assert outcome.exception.args == (0.5,)
    assert 0.5 < elapsed < 0.5 + executor_watchdog_margin() + 1.5
    assert ticks > ticks_after_the_limit  # the loop runs again


async def test_the_watchdog_signal_raises_only_inside_the_overdue_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task past its hard limit that does not hold the loop (it swallows the cancellation and
    awaits on) is signalled like a stuck one; the signals land between steps or in other tasks,
    and must leave them alone."""
    sent = 0
    pthread_kill = signal.pthread_kill

    def counting_kill(thread: int, signum: int) -> None:
        nonlocal sent
        sent += 1
        pthread_kill(thread, signum)

    monkeypatch.setattr("runtime.worker.watchdog.signal.pthread_kill", counting_kill)

    released = False

    @app.task(name="t.awaits_on")
    async def awaits_on() -> None:
        while not released:
            try:
                await asyncio.sleep(0.001)
            except (asyncio.CancelledError, TimeLimitExceeded):
                continue  # a signal landing in its own step is caught too: it stays watched

    async def busy_neighbour() -> int:
        steps = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            sum(range(2000))  # keeps the main thread in Python code where signals land
            steps += 1
            await asyncio.sleep(0)
        return steps

    # The run stays watched past the margin for 3 s: the watchdog's rounds, with this main
    # thread busy, start up to a second late, and at least two must signal.
    executor = Executor(threads=1, hard_grace=3.0)
    try:
        neighbour = asyncio.create_task(busy_neighbour())
        outcome = await executor.run(awaits_on, _request("t.awaits_on"), TimeLimits(hard=0.1))
        steps = await neighbour
    finally:
        released = True
        executor.shutdown()

    assert outcome.timed_out
    assert sent >= 2
    assert steps > 0


def executor_watchdog_margin() -> float:
    """How long past the hard limit the watchdog waits, plus one of its rounds."""
    probe = watchdog_module.LoopWatchdog(asyncio.get_running_loop())
    return probe.margin + probe.interval


# A coroutine runs in the task that awaits the run (no task of its own): what the task author
# sees must not change for it.


async def test_a_coroutine_runs_in_the_callers_task_with_a_context_of_its_own(
    executor: Executor,
) -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="worker's")

    @app.task(name="t.sets_a_variable")
    async def sets_a_variable() -> bool:
        marker.set("task's")
        await asyncio.sleep(0)
        return asyncio.current_task() is caller and marker.get() == "task's"

    caller = asyncio.current_task()
    outcome = await executor.run(sets_a_variable, _request("t.sets_a_variable"), NO_LIMITS)

    assert outcome.value is True
    assert marker.get() == "worker's"


async def test_a_run_closed_unfinished_closes_the_task_and_its_limits(executor: Executor) -> None:
    """The coroutine awaiting a run is closed before the run ends (as when it is collected
    unfinished): the task's own ``finally`` runs and its limits' timers are cancelled."""
    cleaned: list[str] = []

    @app.task(name="t.closed_unfinished")
    async def closed_unfinished() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("finally")

    async def awaits_the_run() -> Any:
        return await executor.start(
            closed_unfinished, _request("t.closed_unfinished"), TimeLimits(soft=0.05, hard=0.1)
        )

    handler = awaits_the_run()
    handler.send(None)  # the run starts (its timers too) and waits on its sleep
    handler.close()
    await asyncio.sleep(0.2)  # past both limits: a timer left behind would fire in here

    assert cleaned == ["finally"]
    assert inspect.getcoroutinestate(handler) == inspect.CORO_CLOSED


async def test_a_timeout_inside_the_task_is_the_tasks_own_business(executor: Executor) -> None:
    """``asyncio.timeout`` cancels the task it runs in, here the caller's, and takes the
    cancellation back: the run goes on and nothing is left cancelling."""

    @app.task(name="t.times_out_inside")
    async def times_out_inside() -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        except TimeoutError:
            await asyncio.sleep(0.01)
            return "went on"
        return "never"

    outcome = await executor.run(
        times_out_inside, _request("t.times_out_inside"), TimeLimits(soft=5, hard=10)
    )

    assert (outcome.state, outcome.value) == (State.SUCCESS, "went on")
    caller = asyncio.current_task()
    assert caller is not None
    assert caller.cancelling() == 0


async def test_a_future_cancelled_by_someone_else_fails_the_task(executor: Executor) -> None:
    @app.task(name="t.awaits_a_doomed_future")
    async def awaits_a_doomed_future() -> None:
        doomed = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, doomed.cancel)
        await doomed

    outcome = await executor.run(
        awaits_a_doomed_future, _request("t.awaits_a_doomed_future"), NO_LIMITS
    )

    assert isinstance(outcome.exception, TaskCancelled)


async def test_a_cancelled_run_does_not_wait_for_a_coroutine_that_ignores_it(
    executor: Executor,
) -> None:
    """The worker's cancellation leaves the run at once; the coroutine, which caught it and
    awaits on, goes on by itself and still ends."""
    released, finished = asyncio.Event(), asyncio.Event()

    @app.task(name="t.ignores_cancellation")
    async def ignores_cancellation() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await released.wait()
            finished.set()

    run = asyncio.create_task(
        executor.run(ignores_cancellation, _request("t.ignores_cancellation"), NO_LIMITS)
    )
    await asyncio.sleep(0.02)
    run.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 1)
    assert not finished.is_set()
    released.set()
    await asyncio.wait_for(finished.wait(), 1)


async def test_a_coroutine_past_its_hard_limit_and_grace_goes_on_by_itself(
    executor: Executor,
) -> None:
    """The hard limit's outcome comes after ``hard_grace``; the coroutine that caught both
    cancellations is left to end on its own, in the run's context."""
    finished: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @app.task(name="t.outlives_its_limit", bind=True)
    async def outlives_its_limit(self: Any) -> None:
        for _ in range(2):  # the hard limit's cancellation, then the grace's end
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)
        await asyncio.sleep(0.05)
        finished.set_result(self.request.id)

    started = time.monotonic()
    outcome = await executor.run(
        outlives_its_limit, _request("t.outlives_its_limit", task_id="late"), TimeLimits(hard=0.1)
    )

    assert outcome.timed_out
    assert 0.1 + 0.2 <= time.monotonic() - started < 1.5  # hard limit plus the fixture's grace
    assert not finished.done()
    assert await asyncio.wait_for(finished, 1) == "late"
