"""Hard limits for coroutines that hold the event loop.

A coroutine that never reaches an ``await`` (a CPU loop, ``time.sleep``, a blocking socket
read inside ``async def``) keeps the loop from running anything else, the timer of its own
hard limit included. The watchdog is a thread that does not need the loop: it keeps the hard
deadline of every coroutine run and, once one is past it by ``margin`` seconds, sends
:data:`HARD_LIMIT_SIGNAL` to the loop's thread (the main thread).

The signal's handler runs in the main thread, between two bytecodes of whatever runs there,
or in place of a blocking system call, which the signal interrupts (``time.sleep`` and socket
reads return to Python at once). It raises ``TimeLimitExceeded`` only if the overdue run's
coroutine is stepping at that moment (:class:`Watched`), so the exception lands inside it and
fails it like the loop's own timer would have; a signal that arrives after the coroutine has
yielded finds other code running and does nothing.

A task that catches the exception and holds the loop on is signalled again every
``interval``; one still holding it ``give_up_after`` seconds past its hard limit has taken
the worker with it. The watchdog then ends the process with status 70 (``EX_SOFTWARE``),
logging ``loop_stuck``: the broker redelivers the unacknowledged messages, and whatever
restarts the worker (the ``--processes`` supervisor, a container's restart policy) brings it
back.

Signals reach Python handlers in the main thread only, so the watchdog guards a loop that runs
there (``celeriac worker``, and ``asyncio.run`` in an application's main thread); a loop
running in another thread is left to the timers it can fire.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Protocol

import structlog

from runtime.exceptions import TimeLimitExceeded

__all__ = ["EX_SOFTWARE", "HARD_LIMIT_SIGNAL", "LoopWatchdog", "Watched"]

HARD_LIMIT_SIGNAL = signal.SIGRTMIN + 1
"""The signal the watchdog interrupts the main thread with (a real-time one: no library
claims it, and it cannot be confused with a signal an operator sends)."""

EX_SOFTWARE = 70
"""The exit status after a task held the loop past any hope of recovery."""

_log = structlog.get_logger("celeriac.watchdog")


class Watched(Protocol):
    """A coroutine run the watchdog holds to its hard limit
    (:class:`~runtime.worker.inline.InlineRun`)."""

    #: Whether the coroutine's own code is running now: only then may the signal raise.
    stepping: bool

    def done(self) -> bool:
        """Whether the run is over (read from the watchdog's thread)."""

    def get_name(self) -> str:
        """The run's name, for the log."""


class LoopWatchdog:
    """Enforces hard limits on the coroutines of one event loop from a thread of its own."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        margin: float = 0.5,
        interval: float = 0.5,
        give_up_after: float = 10.0,
    ) -> None:
        self._loop = loop
        self.margin = margin
        self.interval = interval
        self.give_up_after = give_up_after
        self._deadlines: dict[Watched, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._target: tuple[Watched, float] | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_handler: Any = None

    @classmethod
    def for_running_loop(cls) -> LoopWatchdog | None:
        """A started watchdog for the running loop, or None where signals cannot reach it
        (the loop does not run in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        watchdog = cls(asyncio.get_running_loop())
        watchdog.start()
        return watchdog

    def start(self) -> None:
        """Install the signal handler (from the main thread) and start the thread."""
        self._previous_handler = signal.signal(HARD_LIMIT_SIGNAL, self._on_signal)
        # Its log lines name the worker as the loop's do: the thread runs in a copy of the
        # caller's context, structlog's bound variables included.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._watch,),
            name="celeriac-watchdog",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and put the previous signal handler back."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._previous_handler is not None:
            signal.signal(HARD_LIMIT_SIGNAL, self._previous_handler)
            self._previous_handler = None

    def watch(self, run: Watched, hard: float) -> None:
        """Hold ``run`` to ``hard`` seconds from now."""
        with self._lock:
            self._deadlines[run] = (time.monotonic() + hard, hard)

    def forget(self, run: Watched) -> None:
        """``run`` has ended, or the loop has dealt with it."""
        with self._lock:
            self._deadlines.pop(run, None)

    def _watch(self) -> None:
        main_thread = threading.main_thread().ident
        assert main_thread is not None
        while not self._stopped.wait(self.interval):
            now = time.monotonic()
            with self._lock:
                overdue = [
                    (task, deadline, hard)
                    for task, (deadline, hard) in self._deadlines.items()
                    if now > deadline + self.margin and not task.done()
                ]
            for task, deadline, hard in overdue:
                if now > deadline + self.give_up_after:
                    _log.critical(
                        "loop_stuck",
                        task=task.get_name(),
                        hard_limit=hard,
                        over_by=round(now - deadline, 1),
                        status=EX_SOFTWARE,
                    )
                    os._exit(EX_SOFTWARE)
                self._target = (task, hard)
                signal.pthread_kill(main_thread, HARD_LIMIT_SIGNAL)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        target = self._target
        if target is None:
            return
        task, hard = target
        # Only inside the overdue coroutine's own step: anywhere else (the loop's machinery,
        # the worker's code, another task) the exception would break what it lands in.
        if not task.stepping:
            return
        self._target = None
        _log.warning("hard_limit_interrupt", task=task.get_name(), hard_limit=hard)
        raise TimeLimitExceeded(hard)
