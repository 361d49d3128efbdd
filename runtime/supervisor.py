"""``celeriac worker --processes N``: a supervisor keeping N worker processes running.

Each child is a whole worker (its own event loop, broker connection and node name
``name@host.i``, i from 1 to N), started as ``python -m runtime.supervisor NODE`` in a process
group of its own. Between the supervisor and each child runs a *link*, one end of a Unix
socketpair passed as an inherited descriptor (``CELERIAC_SUPERVISOR_FD``):

* supervisor -> child: once, the child's resolved :class:`~runtime.serve.WorkerOptions` (its
  node name and ``--http-port`` set), pickled behind a 4-byte length. The supervisor parses the
  command line and the environment once; the children never re-read them, so every child runs
  exactly the same options.
* child -> supervisor: a byte every :data:`HEARTBEAT_INTERVAL` seconds from a task on the
  child's event loop, ``R`` once the worker is ready, ``.`` before.
* end of file, either way: the other side is gone, however it died (the kernel closes a
  SIGKILLed process's descriptors).

What the supervisor guarantees:

* A child that exits is started again after a backoff of 1 s, doubling up to 30 s, back to
  1 s once a child has run for a minute. A child whose first start fails before its worker is
  ready (broker unreachable, an app that does not import) ends the supervisor instead, with
  that child's status, as the single-process worker fails fast.
* A child silent for ``child_timeout`` seconds (its loop blocked by code that never yields) is
  SIGKILLed and replaced. Before its first byte a child gets ``max(child_timeout, 60)`` s.
* The first SIGTERM or SIGINT is forwarded to every child as SIGTERM (warm: they stop
  consuming and give running tasks ``--grace`` seconds); nothing is restarted from then on.
  A second signal forwards SIGTERM again, which a child takes as cold. Children still there
  ``grace`` + :data:`KILL_MARGIN` seconds after the first signal are SIGKILLed.
* Exit status, as Celery's worker: 0 (``EX_OK``) after a requested stop, 1 (``EX_FAILURE``)
  or the failing child's own status when a first start fails (2 for a usage error).
* The supervisor dying, SIGKILL included, ends every child: on end of file the child stops
  (warm), and a thread of its own, which a blocked loop does not stop, ends the process
  ``grace`` + :data:`ORPHAN_MARGIN` seconds later if it is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import structlog

from runtime.worker import Worker

from . import serve

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "DEFAULT_CHILD_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "KILL_MARGIN",
    "ORPHAN_MARGIN",
    "ChildSpec",
    "Supervisor",
    "answer_supervisor",
    "child_options",
]

#: Seconds between two heartbeats of a child.
HEARTBEAT_INTERVAL = 1.0
#: Seconds of silence after which a child's loop is taken as blocked (``--child-timeout``).
DEFAULT_CHILD_TIMEOUT = 60.0
#: Seconds a child gets for its first heartbeat (at least): imports can be slow.
START_ALLOWANCE = 60.0
#: First restart delay, and its ceiling as it doubles.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
#: A child that ran this many seconds restarts after ``BACKOFF_FIRST`` again.
BACKOFF_RESET = 60.0
#: Seconds beyond ``--grace`` before children still running after a stop are SIGKILLed.
KILL_MARGIN = 10.0
#: Seconds beyond ``--grace`` an orphaned child (its supervisor gone) may take to stop.
ORPHAN_MARGIN = 5.0
#: The environment variable naming a child's end of the link.
CHILD_FD_ENV = "CELERIAC_SUPERVISOR_FD"
#: Celery's exit statuses (``celery.platforms``).
EX_OK = 0
EX_FAILURE = 1

_READY = b"R"
_BEAT = b"."


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What a child is started with: its worker options, and how it logs."""

    options: serve.WorkerOptions
    loglevel: str
    log_format: str


def child_options(options: serve.WorkerOptions, index: int) -> serve.WorkerOptions:
    """The options of child ``index`` (1-based): node name ``<hostname>.<index>`` and, when
    ``--http-port P`` is given, port ``P + index - 1``."""
    port = None if options.http_port is None else options.http_port + index - 1
    return replace(options, hostname=f"{options.hostname}.{index}", http_port=port)


@dataclass(eq=False)
class _Child:
    """One running child process and what its link said."""

    index: int
    node: str
    proc: asyncio.subprocess.Process
    link: socket.socket
    started: float
    last_heard: float
    heard: bool = False
    ready: bool = False
    killed: bool = False

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)


class Supervisor:
    """Keeps ``processes`` workers running with ``options`` (see the module doc)."""

    def __init__(
        self,
        options: serve.WorkerOptions,
        *,
        processes: int,
        child_timeout: float = DEFAULT_CHILD_TIMEOUT,
        loglevel: str = "info",
        log_format: str = "json",
        logger: Any = None,
    ) -> None:
        self.options = options
        self.processes = processes
        self.child_timeout = child_timeout
        self._loglevel = loglevel
        self._log_format = log_format
        self.log = (logger or structlog.get_logger("celeriac.supervisor")).bind(
            supervisor=options.hostname
        )
        #: The children running now, by index.
        self.children: dict[int, _Child] = {}
        self.status = EX_OK
        self._signals = 0
        self._stopping: asyncio.Event | None = None

    def run(self) -> int:
        """Supervise until stopped; return the exit status."""
        with asyncio.Runner() as runner:
            return runner.run(self.supervise())

    async def supervise(self) -> int:
        """Start the children, keep them running until a signal or a failed first start, wait
        for them to end; return the exit status."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        self.log.info(
            "supervisor_started",
            processes=self.processes,
            pid=os.getpid(),
            child_timeout=self.child_timeout,
        )
        try:
            async with asyncio.TaskGroup() as slots:
                for index in range(1, self.processes + 1):
                    slots.create_task(self._keep(index), name=f"celeriac-child-{index}")
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        self.log.info("supervisor_stopped", status=self.status)
        return self.status

    def stop(self) -> None:
        """Warm stop: SIGTERM to every child, no restarts, SIGKILL after the grace period."""
        assert self._stopping is not None, "not supervising"
        if self._stopping.is_set():
            return
        self._stopping.set()
        for child in self.children.values():
            child.signal(signal.SIGTERM)
        asyncio.get_running_loop().call_later(
            self.options.grace + KILL_MARGIN, self._kill_remaining
        )
        self.log.info("supervisor_stopping", children=len(self.children))

    def _on_signal(self, signum: int) -> None:
        # Act first, log after: a standard error gone (a closed pipe) must not stop a stop.
        self._signals += 1
        if self._signals == 1:
            self.stop()
        else:  # a child's second SIGTERM is its cold shutdown
            for child in self.children.values():
                child.signal(signal.SIGTERM)
        self.log.info("signal_received", signal=signal.Signals(signum).name, count=self._signals)

    def _kill_remaining(self) -> None:
        for child in self.children.values():
            child.killed = True
            child.signal(signal.SIGKILL)
        for child in self.children.values():
            self.log.warning("child_killed", node=child.node, pid=child.proc.pid, reason="grace")

    async def _keep(self, index: int) -> None:
        """Keep child ``index`` running until the supervisor stops."""
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        options = child_options(self.options, index)
        delay = BACKOFF_FIRST
        ever_ready = False
        while not self._stopping.is_set():
            child = await self._start(index, options)
            status = await self._watch(child)
            ever_ready = ever_ready or child.ready
            ran = loop.time() - child.started
            (self.log.info if self._stopping.is_set() else self.log.warning)(
                "child_exited",
                node=child.node,
                pid=child.proc.pid,
                status=status,
                ran=round(ran, 3),
            )
            if self._stopping.is_set():
                return
            if not ever_ready and not child.killed:
                self.log.error("child_failed_to_start", node=child.node, status=status)
                self.status = status if status > 0 else EX_FAILURE
                self.stop()
                return
            if ran >= BACKOFF_RESET:
                delay = BACKOFF_FIRST
            self.log.info("child_restarting", node=child.node, delay=delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            delay = min(delay * 2, BACKOFF_MAX)

    async def _start(self, index: int, options: serve.WorkerOptions) -> _Child:
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtime.supervisor", options.hostname,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env={**os.environ, CHILD_FD_ENV: str(theirs.fileno())},
                # Not the terminal's process group: a Ctrl-C reaches the supervisor alone,
                # which forwards it, so a child does not count it twice.
                process_group=0,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        now = asyncio.get_running_loop().time()
        child = _Child(index, options.hostname, proc, ours, started=now, last_heard=now)
        self.children[index] = child
        self.log.info("child_started", node=child.node, pid=proc.pid)
        spec = pickle.dumps(ChildSpec(options, self._loglevel, self._log_format))
        with contextlib.suppress(OSError):  # a child that died at once is seen as it exits
            await asyncio.get_running_loop().sock_sendall(ours, len(spec).to_bytes(4, "big") + spec)
        return child

    async def _watch(self, child: _Child) -> int:
        """Wait for ``child`` to exit, killing it if it falls silent; its exit status."""
        loop = asyncio.get_running_loop()
        listening = asyncio.create_task(self._listen(child), name="celeriac-child-link")
        exited = asyncio.create_task(child.proc.wait(), name="celeriac-child-wait")
        try:
            while not exited.done():
                allowed = (
                    self.child_timeout if child.heard else max(self.child_timeout, START_ALLOWANCE)
                )
                left = child.last_heard + allowed - loop.time()
                if left <= 0 and not child.killed:
                    child.killed = True
                    child.signal(signal.SIGKILL)
                    self.log.error(
                        "child_unresponsive",
                        node=child.node,
                        pid=child.proc.pid,
                        silent=round(loop.time() - child.last_heard, 3),
                    )
                # Looked at again every beat at least: the allowance shrinks at the first.
                await asyncio.wait({exited}, timeout=min(max(left, 0.1), HEARTBEAT_INTERVAL))
        finally:
            listening.cancel()
            exited.cancel()  # when cancelled: the child sees the link close and stops
            await asyncio.wait({listening, exited})
            child.link.close()
            self.children.pop(child.index, None)
        return exited.result()

    async def _listen(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(child.link, 256)
            except OSError:
                return
            if not data:
                return
            child.heard = True
            child.last_heard = loop.time()
            if _READY in data and not child.ready:
                child.ready = True
                self.log.info("child_ready", node=child.node, pid=child.proc.pid)


async def answer_supervisor(link: socket.socket, worker: Worker) -> None:
    """The child's side of the link, on its event loop: a heartbeat every
    :data:`HEARTBEAT_INTERVAL` seconds (``R`` once ``worker`` is ready), and a warm stop of
    ``worker`` when the supervisor is gone (end of file)."""
    link.setblocking(False)
    beating = asyncio.create_task(_beat(link, worker), name="celeriac-supervisor-beat")
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                if not await loop.sock_recv(link, 256):
                    break
            except OSError:
                break
    finally:
        beating.cancel()
        await asyncio.wait({beating})
    worker.stop()
    structlog.get_logger("celeriac.worker").warning("supervisor_gone", action="stopping")


async def _beat(link: socket.socket, worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    while True:
        ready = worker.ready.is_set()
        try:
            await loop.sock_sendall(link, _READY if ready else _BEAT)
        except OSError:
            return
        if ready:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            continue
        # Ready is told at once, before the worker consumes: a first task that holds the
        # loop must not leave the supervisor believing the child never started.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HEARTBEAT_INTERVAL):
                await worker.ready.wait()


def _watch_for_orphaning(link: socket.socket, grace: float, node: str) -> None:
    """End this process ``grace`` + :data:`ORPHAN_MARGIN` seconds after the supervisor's end
    of ``link`` closes, from a thread: a loop blocked by a task cannot stop it."""

    def watch() -> None:
        poller = select.poll()
        poller.register(link.fileno(), select.POLLHUP)
        events = 0
        while not events:
            events = sum(event for _, event in poller.poll())
        if not events & select.POLLHUP:
            return
        time.sleep(grace + ORPHAN_MARGIN)
        try:
            structlog.get_logger("celeriac.worker").error(
                "orphan_exiting", worker=node, reason="supervisor gone, worker not stopped"
            )
        finally:  # whatever became of standard error
            os._exit(EX_FAILURE)

    threading.Thread(target=watch, name="celeriac-orphan-watch", daemon=True).start()


def _receive_spec(link: socket.socket) -> ChildSpec:
    """The child's spec, read from the link before the loop starts."""

    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = link.recv(size - len(data))
            if not chunk:
                raise EOFError("the supervisor closed the link before sending the options")
            data += chunk
        return data

    spec = pickle.loads(exactly(int.from_bytes(exactly(4), "big")))  # our own parent's bytes
    if not isinstance(spec, ChildSpec):
        raise TypeError(f"not a ChildSpec: {type(spec).__name__}")
    return spec


def _child_main() -> int:
    """A child: read the spec from the link, run the worker, stop when the supervisor goes."""
    fd = os.environ.pop(CHILD_FD_ENV, None)
    if fd is None:
        print(f"celeriac: {CHILD_FD_ENV} is not set: run `celeriac worker`", file=sys.stderr)
        return 2
    link = socket.socket(fileno=int(fd))
    try:
        spec = _receive_spec(link)
    except (EOFError, OSError, TypeError, pickle.UnpicklingError) as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return EX_FAILURE
    serve.configure_logging(spec.loglevel, spec.log_format)
    _watch_for_orphaning(link, spec.options.grace, spec.options.hostname)

    async def companion(worker: Worker) -> None:
        await answer_supervisor(link, worker)

    try:
        return serve.serve(spec.options, companion=companion)
    except (serve.UsageError, ValueError, OSError) as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover - each child's entry point
    # Through the module proper, not this ``__main__`` copy: the spec unpickles as
    # ``runtime.supervisor.ChildSpec``.
    from runtime.supervisor import _child_main as child_main

    sys.exit(child_main())
