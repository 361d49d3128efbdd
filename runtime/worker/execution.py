"""Running one task function under its time limits.

Coroutine functions run on the event loop, in the asyncio task that handles their message
(:mod:`runtime.worker.inline`: no task of their own); plain functions run in a bounded thread
pool, or, on a queue whose pool is ``process``, in a process of a pool
(:mod:`runtime.worker.processes`), where a hard limit can kill them. All see the
:class:`~runtime.request.Request` in ``current_request``.

Soft limit: ``SoftTimeLimitExceeded`` is raised inside the task, where it can be caught.

* In a coroutine it is raised at the ``await`` the coroutine is suspended on: the handler's
  task is cancelled and the cancellation is turned into ``SoftTimeLimitExceeded`` on its way
  in, so ``asyncio.timeout`` and ``current_task()`` inside the task still work.
* In a thread it is raised asynchronously (``PyThreadState_SetAsyncExc``) at the next Python
  bytecode the thread runs.

Hard limit: the task is cancelled (coroutine) or sent ``TimeLimitExceeded`` (thread), the
worker waits ``hard_grace`` seconds at most, and records ``TimeLimitExceeded(hard)`` either way;
a coroutine still awaiting then goes on in a task of its own, unwaited for.

Where the soft limit lands in a coroutine, it is raised at the outermost ``await`` of the
task's own coroutine chain. Two consequences on Python 3.11: inside ``asyncio.wait_for`` the
inner awaitable is not cancelled (3.11's ``wait_for`` only reacts to ``CancelledError``), so
it may go on running after the task handles the soft limit; and a child ``asyncio.Task`` the
task awaits directly is cancelled outright, so a task that catches the soft limit cannot
resume awaiting it.

A coroutine that never yields to the loop blocks the loop, so no timer fires until it does:
its hard limit is held by :class:`~runtime.worker.watchdog.LoopWatchdog`, a thread that
interrupts it with a signal. A thread blocked inside C code (a socket read, ``time.sleep``)
sees the exception only when it returns to Python. After the hard limit such a thread keeps its
pool thread until it returns; the slot is freed and the result recorded regardless.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass, field
from typing import Any

from protocol import State
from runtime.exceptions import SoftTimeLimitExceeded, TaskCancelled, TimeLimitExceeded
from runtime.policy import TimeLimits
from runtime.request import Request, current_request
from runtime.task import Task
from runtime.worker.inline import InlineRun
from runtime.worker.outcome import Outcome
from runtime.worker.processes import ProcessRunner, failure_of
from runtime.worker.watchdog import LoopWatchdog

__all__ = ["Executor", "Outcome"]


@dataclass(slots=True)
class _Started:
    """A task function started: its future, how to stop it, what to release once it ends."""

    runner: asyncio.Future[Any]
    stop: Callable[[], object]
    releases: list[Callable[[], object]] = field(default_factory=list)


class _ThreadCall:
    """One function call in a pool thread, which the loop can interrupt until it returns."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._thread: int | None = None

    def __call__(self) -> Any:
        with self._lock:
            self._thread = threading.get_ident()
        try:
            return self._fn()
        finally:
            # An exception raised asynchronously just as the function returned may land
            # here; keep trying until the call is marked over, so none can arrive later.
            while True:
                try:
                    with self._lock:
                        self._thread = None
                    break
                except (SoftTimeLimitExceeded, TimeLimitExceeded):
                    continue

    def interrupt(self, exc_type: type[BaseException]) -> None:
        """Raise ``exc_type`` in the thread if the call is still running."""
        import ctypes  # noqa: PLC0415 - 0.4 MiB of RSS that only a time limit in a thread needs

        with self._lock:
            if self._thread is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._thread), ctypes.py_object(exc_type)
                )


class Executor:
    """Runs task functions: coroutines on the loop, plain functions in ``threads`` threads."""

    def __init__(self, threads: int, *, hard_grace: float = 1.0) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="celeriac-task")
        self.hard_grace = hard_grace
        self._processes = ProcessRunner(threads)
        self._watchdog: LoopWatchdog | None = None
        self._watchdog_started = False
        #: Coroutines that went on after the worker stopped waiting for them (see
        #: :mod:`runtime.worker.inline`).
        self._detached: set[asyncio.Task[Any]] = set()

    def resize(self, threads: int) -> None:
        """Run plain functions in ``threads`` threads from now on (``pool_grow``/``shrink``).

        Calls started on the pool before keep their threads until they return; new ones go
        to a new pool of ``threads`` (threads start as calls need them), so no more than
        ``threads`` new calls run at once, beside those.
        """
        if threads == self.threads:
            return
        self.threads = threads
        retired, self._pool = (
            self._pool,
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="celeriac-task"),
        )
        retired.shutdown(wait=False)  # what it runs or has queued still runs; then it ends

    async def run(
        self, task: Task[Any, Any], request: Request, limits: TimeLimits, *, isolated: bool = False
    ) -> Outcome:
        """Run ``task`` for ``request`` under ``limits`` (``isolated``: a plain function in a
        process of its own, see :mod:`runtime.worker.processes`).

        Whatever the task does, this returns an :class:`Outcome`; it raises only
        ``CancelledError``, when the worker itself is cancelling the run.
        """
        return await self.start(task, request, limits, isolated=isolated)

    def start(
        self,
        task: Task[Any, Any],
        request: Request,
        limits: TimeLimits,
        *,
        isolated: bool = False,
        runner: asyncio.Task[Any] | None = None,
    ) -> Awaitable[Outcome]:
        """:meth:`run`, as an awaitable to await at once in the task that handles the run
        (``runner``, if the caller knows it).

        A coroutine task's run is an :class:`~runtime.worker.inline.InlineRun` awaited
        directly, with no coroutine of the executor's between it and the worker: while
        thousands of tasks wait at once, each frame kept per run counts.
        """
        args: tuple[Any, ...] = (task, *request.args) if task.options.bind else request.args
        context = copy_context()
        if context.get(current_request) is not request:  # the worker's handler has set it
            context.run(current_request.set, request)
        started = time.monotonic()
        if task.is_coroutine:
            try:
                # Calling a coroutine function can raise (arguments that do not bind with
                # typing=False): that is the task failing, not the worker.
                coroutine = task.fn(*args, **request.kwargs)
            except Exception as error:
                return _given(Outcome.failed(error))
            return InlineRun(
                coroutine, context, task.name, request.id, limits=limits, started=started,
                grace=self.hard_grace, detached=self._detached,
                watchdog=self._loop_watchdog() if limits.hard is not None else None,
                runner=runner,
            )  # fmt: skip
        if isolated:
            return self._run_in_process(task, request, limits, started)
        kwargs = request.kwargs
        return self._run_in_thread(lambda: context.run(task.fn, *args, **kwargs), limits, started)

    async def _run_in_thread(
        self, fn: Callable[[], Any], limits: TimeLimits, started: float
    ) -> Outcome:
        run = self._start_thread(fn, limits)
        runner = run.runner
        # Whatever happens to the run, its future's outcome is read (no "never retrieved").
        runner.add_done_callback(_observe)
        try:
            if not await _ended_within(runner, limits.hard):
                run.stop()
                await asyncio.wait({runner}, timeout=self.hard_grace)
                return Outcome(
                    State.FAILURE,
                    exception=TimeLimitExceeded(limits.hard),
                    runtime=time.monotonic() - started,
                )
        except asyncio.CancelledError:
            run.stop()  # the worker is being stopped at once: take the task down with it
            raise
        finally:
            for release in run.releases:
                release()
        if runner.cancelled():  # not by the worker: its cancel would have been raised above
            cancelled = TaskCancelled("the task was cancelled before it finished")
            return Outcome.failed(cancelled, runtime=time.monotonic() - started)
        raised = runner.exception()
        if raised is not None:
            return Outcome.failed(raised, runtime=time.monotonic() - started)
        return Outcome(State.SUCCESS, value=runner.result(), runtime=time.monotonic() - started)

    async def _run_in_process(
        self, task: Task[Any, Any], request: Request, limits: TimeLimits, started: float
    ) -> Outcome:
        future, stop = self._processes.start(task, request, limits.soft, limits.hard)
        try:
            call = await future
        except asyncio.CancelledError:
            stop()  # the worker is being stopped at once: the process goes with it
            raise
        except Exception as error:
            failure = failure_of(error, limits.hard)
            elapsed = time.monotonic() - started
            if isinstance(failure, TimeLimitExceeded):
                return Outcome(State.FAILURE, exception=failure, runtime=elapsed)
            return Outcome.failed(failure, runtime=elapsed)
        request.plan(*call.outbox)
        elapsed = time.monotonic() - started
        if call.exception is not None:
            return Outcome(
                State.FAILURE, exception=call.exception, traceback=call.traceback, runtime=elapsed
            )
        return Outcome(State.SUCCESS, value=call.value, runtime=elapsed)

    def _start_thread(self, fn: Callable[[], Any], limits: TimeLimits) -> _Started:
        loop = asyncio.get_running_loop()
        call = _ThreadCall(fn)
        runner = loop.run_in_executor(self._pool, call)

        def stop() -> None:
            call.interrupt(TimeLimitExceeded)
            runner.cancel()  # a call still queued for a pool thread never starts

        run = _Started(runner, stop)
        if limits.soft is not None:
            soft = loop.call_later(limits.soft, call.interrupt, SoftTimeLimitExceeded)
            run.releases.append(soft.cancel)
        return run

    async def call(self, fn: Callable[..., Any], request: Request, *args: Any) -> Any:
        """Call ``fn(*args)`` as a task runs, without its limits: a coroutine function on the
        loop, a plain one in a pool thread, with ``request`` as ``current_request``. For a
        task's hooks."""
        context = copy_context()
        context.run(current_request.set, request)
        loop = asyncio.get_running_loop()
        if inspect.iscoroutinefunction(fn):
            return await loop.create_task(fn(*args), context=context)
        return await loop.run_in_executor(self._pool, context.run, fn, *args)

    def _loop_watchdog(self) -> LoopWatchdog | None:
        if not self._watchdog_started:
            self._watchdog_started = True
            self._watchdog = LoopWatchdog.for_running_loop()
        return self._watchdog

    def shutdown(self) -> None:
        """Release the thread pool without waiting for threads still running, stop the task
        processes, and stop the loop's watchdog."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._processes.shutdown()
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None


async def _ended_within(runner: asyncio.Future[Any], seconds: float | None) -> bool:
    """Wait for ``runner`` to end, for at most ``seconds`` (``None``: however long); whether
    it ended. Cancelling the caller leaves ``runner`` alone.

    What ``asyncio.wait({runner}, timeout=seconds)`` does, without its set, its inner
    coroutine and its per-call closure: every task run waits this way, and at 10,000 runs
    waiting at once each byte counts.
    """
    if runner.done():
        return True
    woken = runner.get_loop().create_future()
    wake = functools.partial(_wake, woken)
    runner.add_done_callback(wake)
    timer = None if seconds is None else runner.get_loop().call_later(seconds, _wake, woken)
    try:
        await woken
    finally:
        runner.remove_done_callback(wake)
        if timer is not None:
            timer.cancel()
    return runner.done()


async def _given(outcome: Outcome) -> Outcome:
    return outcome


def _wake(waiter: asyncio.Future[None], _: object = None) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _observe(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
