"""A task's coroutine driven inside the asyncio task that handles its message.

Every delivery is handled in an asyncio task of its own. Running the task's coroutine in a
second one would double the tasks per message: a Task, its first step and its wake-up, and a
future to wait on it with a timeout, for every run. :class:`InlineRun` drives the coroutine
from the handler's task instead, step by step, each step in the run's own
:class:`~contextvars.Context` (the task's context variables stay its own, as in a task of its
own), and stands between the two the way ``await`` does, except for the cancellations the
worker provokes:

* **soft limit** (:meth:`InlineRun.expire_soft`): the cancellation is thrown into the coroutine
  as ``SoftTimeLimitExceeded`` and the handler's task is un-cancelled, since it is not being
  cancelled;
* **hard limit** (:meth:`InlineRun.expire_hard`): the cancellation is thrown in, and the
  coroutine gets ``grace`` seconds to end; the run ends with ``TimeLimitExceeded`` either way;
* **any other cancellation of the handler** (``revoke(terminate=True)``, the worker stopping) is
  thrown in, and leaves the run as ``CancelledError`` whatever the coroutine does with it.

A coroutine that awaits on after the hard limit's grace or the worker's cancellation is not
waited for: what remains of it goes on in an asyncio task of its own
(:meth:`InlineRun._go_on_alone`), as a coroutine run in its own task was left running before,
and the handler goes on.

A cancellation the coroutine takes back is its own business: ``asyncio.timeout`` inside the
task cancels the task it runs in (the handler's) and un-cancels it on its way out, and the run
goes on. A ``CancelledError`` the coroutine raises while nobody cancels the handler (its own
``raise``, or a future it awaits cancelled by someone else) fails the run with
``TaskCancelled``, as a cancelled task of its own did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Generator
from contextvars import Context
from types import TracebackType
from typing import TYPE_CHECKING, Any

from protocol import State
from runtime.exceptions import SoftTimeLimitExceeded, TaskCancelled, TimeLimitExceeded
from runtime.policy import TimeLimits

from .outcome import Outcome

if TYPE_CHECKING:
    from .watchdog import LoopWatchdog

__all__ = ["InlineRun"]

_SOFT = "soft"
_HARD = "hard"
_GIVE_UP = "give up"


class InlineRun(Generator[Any, Any, Outcome]):
    """One coroutine run in the asyncio task that awaits it (see the module docstring), under
    its time limits: ``await`` it for the run's :class:`~runtime.worker.outcome.Outcome`.

    The run of task ``name`` as ``task_id`` (named ``name[task_id]``), begun at ``started``
    (``time.monotonic()``). Its limits' timers start when it is first awaited, and the hard
    limit is also left to ``watchdog`` when given (a coroutine that never yields holds the
    loop, so no timer fires). ``detached`` keeps the tasks that go on with the coroutines
    given up on (each leaves the set as it ends). ``runner`` is the asyncio task that will
    await the run, when the caller knows it: else the run looks it up as it starts, which on
    CPython 3.11 costs a ``getpid()`` system call.
    """

    __slots__ = (
        "_abandon_timer",
        "_cancels",
        "_context",
        "_coro",
        "_detached",
        "_give_up",
        "_grace",
        "_hard_timer",
        "_id",
        "_limits",
        "_name",
        "_reason",
        "_runner",
        "_soft_timer",
        "_started",
        "_stopping",
        "_task",
        "_watchdog",
        "ended",
        "stepping",
        "timed_out",
    )

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        context: Context,
        name: str,
        task_id: str,
        *,
        limits: TimeLimits,
        started: float,
        grace: float,
        detached: set[asyncio.Task[Any]],
        watchdog: LoopWatchdog | None = None,
        runner: asyncio.Task[Any] | None = None,
    ) -> None:
        self._coro = coro
        self._context = context
        self._name = name
        self._id = task_id
        self._limits = limits
        self._started = started
        self._grace = grace
        self._detached = detached
        self._watchdog = watchdog
        self._runner = runner
        self._task: asyncio.Task[Any] | None = None  # the task awaiting the run, once started
        self._soft_timer: asyncio.TimerHandle | None = None
        self._hard_timer: asyncio.TimerHandle | None = None
        self._reason: str | None = None
        self._abandon_timer: asyncio.TimerHandle | None = None
        #: The worker's cancellation of the handler, once thrown in, and the handler's
        #: pending cancellations then (fewer later: the coroutine took it back).
        self._stopping: asyncio.CancelledError | None = None
        self._cancels = 0
        #: The hard limit's grace is over: the coroutine is not waited for any longer.
        self._give_up = False
        #: Whether the coroutine's own code is running now (the watchdog's signal may land).
        self.stepping = False
        #: Whether the run is over (for the watchdog, which watches it from its thread).
        self.ended = False
        #: Whether the hard limit ended the run.
        self.timed_out = False

    def done(self) -> bool:
        """Whether the run is over."""
        return self.ended

    def get_name(self) -> str:
        """The run's name, ``task[id]``, as the watchdog logs it (made when asked for: few
        runs are ever named)."""
        return f"{self._name}[{self._id}]"

    def expire_soft(self) -> None:
        """The soft limit: ``SoftTimeLimitExceeded`` is raised where the coroutine awaits."""
        self._interrupt(_SOFT)

    def expire_hard(self) -> None:
        """The hard limit: the coroutine is cancelled and the run ends with
        ``TimeLimitExceeded`` once it has, or ``grace`` seconds later."""
        self._interrupt(_HARD)

    def _interrupt(self, reason: str) -> None:
        if not self.ended and self._task is not None:
            self._reason = reason
            self._task.cancel()

    def _start(self) -> asyncio.Task[Any]:
        """The run begins in the task awaiting it: its limits start counting."""
        task = self._runner or asyncio.current_task()
        if task is None:
            raise RuntimeError("an InlineRun runs inside an asyncio task")
        self._task, self._runner = task, None  # kept once, as the task awaiting the run
        loop = task.get_loop()
        soft, hard = self._limits.soft, self._limits.hard
        if soft is not None:
            self._soft_timer = loop.call_later(soft, self.expire_soft)
        if hard is not None:
            self._hard_timer = loop.call_later(hard, self.expire_hard)
            if self._watchdog is not None:
                self._watchdog.watch(self, hard)
        return task

    def _stop(self) -> None:
        """The run is over: its timers and its watchdog with it."""
        self.ended = True
        for timer in (self._soft_timer, self._hard_timer, self._abandon_timer):
            if timer is not None:
                timer.cancel()
        if self._watchdog is not None:
            self._watchdog.forget(self)

    def _outcome(self, raised: BaseException) -> Outcome:
        runtime = time.monotonic() - self._started
        if self.timed_out:
            return Outcome(State.FAILURE, exception=raised, runtime=runtime)
        return Outcome.failed(raised, runtime=runtime)

    # The run is its own iterator, as asyncio's futures are: a generator to drive the
    # coroutine would be one more frame kept by every run waiting at once (~300 bytes).
    def __await__(self) -> Generator[Any, Any, Outcome]:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        """Resume the coroutine with ``value`` (what the future it awaited gave): what it
        awaits next; ``StopIteration`` with the run's outcome once it is over."""
        return self._advance(self._task or self._start(), value, None)

    def throw(  # type: ignore[override]  # the three forms await may use
        self, typ: Any, val: BaseException | None = None, tb: TracebackType | None = None
    ) -> Any:
        """The handler's task threw ``typ`` in at the coroutine's ``await``: passed on to the
        coroutine as ``await`` does, except the cancellations the worker provokes."""
        thrown = typ if isinstance(typ, BaseException) else (val if val is not None else typ())
        task = self._task or self._start()
        if isinstance(thrown, asyncio.CancelledError):
            thrown = self._cancelled(task, thrown)
        return self._advance(task, None, thrown)

    def close(self) -> None:
        """The awaiting coroutine is closed unfinished: so is the task's coroutine."""
        if not self.ended:
            self._stop()
            self._coro.close()

    def _advance(self, task: asyncio.Task[Any], send: Any, error: BaseException | None) -> Any:
        """Run the coroutine to its next ``await`` and give what it awaits, or end the run:
        ``StopIteration`` with its outcome, or the cancellation that stops the worker. ``task``
        is the handler's, which awaits the run."""
        try:
            try:
                yielded = self._step(send, error)
            except StopIteration as stop:
                if (ending := self._ending(task)) is not None:
                    raise ending from None
                runtime = time.monotonic() - self._started
                outcome = Outcome(State.SUCCESS, value=stop.value, runtime=runtime)
            except BaseException as raised:
                if (ending := self._ending(task)) is not None:
                    raise ending from None
                if isinstance(raised, asyncio.CancelledError):
                    raise TaskCancelled("the task was cancelled before it finished") from None
                raise
            else:
                if self._stopping is not None and task.cancelling() < self._cancels:
                    self._stopping = None  # the coroutine took the cancellation back
                if self._stopping is None and not self._give_up:
                    return yielded
                self._go_on_alone(task, yielded)
                raise self._ending(task) or AssertionError("nothing ends the run")
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            self._stop()
            raise  # the worker is being stopped; the last two end the loop, as from a task
        except BaseException as raised:
            outcome = self._outcome(raised)
        self._stop()
        raise StopIteration(outcome)

    def _step(self, send: Any, error: BaseException | None) -> Any:
        """Run the coroutine to its next ``await`` of a future (what it yields)."""
        try:
            self.stepping = True
            if error is None:
                return self._context.run(self._coro.send, send)
            return self._context.run(self._coro.throw, error)
        finally:
            self.stepping = False

    def _cancelled(
        self, task: asyncio.Task[Any], cancelled: asyncio.CancelledError
    ) -> BaseException:
        """The handler ``task`` was cancelled at the coroutine's ``await``: by whom, and what
        the coroutine gets thrown in."""
        reason, self._reason = self._reason, None
        if reason is not None:
            task.uncancel()  # the run's own interruption, not the handler's
        if task.cancelling():
            self._stopping, self._cancels = cancelled, task.cancelling()
        elif reason == _SOFT:
            return SoftTimeLimitExceeded()
        elif reason == _HARD:
            self.timed_out = True
            loop = task.get_loop()
            self._abandon_timer = loop.call_later(self._grace, self._interrupt, _GIVE_UP)
        elif reason == _GIVE_UP:
            self._give_up = True
        return cancelled

    def _go_on_alone(self, task: asyncio.Task[Any], yielded: Any) -> None:
        """Go on with the coroutine, which has just yielded ``yielded``, in a task of its own
        (beside the handler ``task``)."""
        rest = task.get_loop().create_task(
            _remaining(_Rest(self._coro, yielded)), name=self.get_name(), context=self._context
        )
        self._detached.add(rest)
        rest.add_done_callback(_forget_detached(self._detached))

    def _ending(self, task: asyncio.Task[Any]) -> BaseException | None:
        """What ends the run whatever the coroutine did last: the worker's cancellation of the
        handler ``task`` if it still stands, else ``TimeLimitExceeded`` once the hard limit
        was reached; or nothing."""
        if self._stopping is not None and task.cancelling() >= self._cancels:
            return self._stopping
        if self.timed_out:
            return TimeLimitExceeded(self._limits.hard)
        return None


def _forget_detached(detached: set[asyncio.Task[Any]]) -> Any:
    def forget(rest: asyncio.Task[Any]) -> None:
        detached.discard(rest)
        if not rest.cancelled():
            rest.exception()  # observed: nobody waits for it

    return forget


async def _remaining(rest: _Rest) -> Any:
    return await rest


class _Rest:
    """The rest of a coroutine that has already yielded ``yielded``: awaiting this yields it
    up first, then drives the coroutine on as ``await`` would."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        yielded = self._yielded
        while True:
            send: Any = None
            error: BaseException | None = None
            try:
                send = yield yielded
            except BaseException as thrown:
                error = thrown
            try:
                yielded = self._coro.send(send) if error is None else self._coro.throw(error)
            except StopIteration as stop:
                return stop.value
