"""Plain-function tasks in worker processes, for queues whose tasks must be killable.

A thread blocked in C code (``time.sleep``, a socket read, a C extension's loop) cannot be
interrupted: an exception raised into it waits until it returns to Python. A process can be
killed. A queue set to ``pool = "process"`` runs the plain (``def``) functions of its tasks in
a :class:`pebble.ProcessPool`, as Celery's prefork pool does for every task:

* the hard limit, counted from when the call starts in its process, kills that process
  (pebble stops it and starts another) and the run fails with ``TimeLimitExceeded(hard)``;
* the soft limit is a ``SIGALRM`` timer in the process, whose handler raises
  ``SoftTimeLimitExceeded`` in the task, out of ``time.sleep`` or a socket read too;
* a process that dies during a call (the OOM killer, a crash in C) fails the run with
  ``WorkerLostError``, as billiard reports it.

Processes start from a fork server (a clean interpreter started once), never by forking the
worker: a fork would copy its broker connections, its threads' locks and the event loop's
signal wiring. So a task run there is found again by its module and qualified name, and must
be defined at module level; its arguments, result and exception cross in pickle (internal to
the worker: nothing from the broker is unpickled). ``self.request`` works as in a thread, and
``self.retry()`` too: what the run asks to send travels back with its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import importlib
import os
import pickle
import signal
import traceback
import types
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, NamedTuple

import runtime.exceptions
from runtime.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from runtime.request import Republish, Request, current_request
from runtime.task import Task

if TYPE_CHECKING:
    from pebble import ProcessPool

__all__ = ["ProcessCall", "ProcessRunner", "WorkerLostError", "failure_of"]


_PR_SET_PDEATHSIG = 1  # prctl(2), Linux


class WorkerLostError(Exception):
    """The process running a task ended before the task did (billiard's name and module)."""

    __module__ = "billiard.exceptions"


def _rebuild_exception(name: str, args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    cls = getattr(runtime.exceptions, name, None) or globals()[name]
    exc: BaseException = cls(*args)
    exc.__dict__.update(state)
    return exc


def _reduce_by_name(exc: BaseException) -> tuple[Any, ...]:
    reduced = exc.__reduce__()
    args = reduced[1] if len(reduced) > 1 else ()
    state = reduced[2] if len(reduced) > 2 and isinstance(reduced[2], dict) else {}
    return _rebuild_exception, (type(exc).__name__, args, state)


def _mapping_proxy(mapping: dict[str, Any]) -> types.MappingProxyType[str, Any]:
    return types.MappingProxyType(mapping)


# Exceptions named after Celery's and billiard's modules cannot be pickled by reference (the
# module they name may not be installed, and holds another class if it is): they cross by
# name. Requests hold read-only mappings, which pickle cannot take as they are.
for _cls in (*vars(runtime.exceptions).values(), WorkerLostError):
    borrowed_name = isinstance(_cls, type) and _cls.__module__ in (
        "billiard.exceptions",
        "celery.exceptions",
    )
    if borrowed_name and issubclass(_cls, BaseException):
        copyreg.pickle(_cls, _reduce_by_name)
copyreg.pickle(types.MappingProxyType, lambda proxy: (_mapping_proxy, (dict(proxy),)))


class ProcessCall(NamedTuple):
    """How a call ended in its process: a value, or an exception with its traceback; and the
    messages it asked to send (``self.retry()``)."""

    value: Any
    exception: BaseException | None
    traceback: str | None
    outbox: tuple[Republish, ...]


class ProcessRunner:
    """A lazily started pool of ``size`` processes running plain task functions."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool: ProcessPool | None = None

    def start(
        self, task: Task[Any, Any], request: Request, soft: float | None, hard: float | None
    ) -> tuple[asyncio.Future[Any], Callable[[], object]]:
        """Start ``task`` for ``request``: the future of its :class:`ProcessCall`, and how to
        stop it (its process is killed). ``hard`` counts from when the call starts."""
        if self._pool is None:
            # Loaded with the first call run in a process: pebble and multiprocessing are
            # ~1 MiB of every worker process's memory, and most workers never need them.
            import multiprocessing  # noqa: PLC0415

            from pebble import ProcessPool  # noqa: PLC0415

            self._pool = ProcessPool(
                max_workers=self.size,
                initializer=_start_process,
                context=multiprocessing.get_context("forkserver"),
            )
        module, qualname = task.fn.__module__, task.fn.__qualname__
        future: Future[Any] = self._pool.schedule(
            _run_in_process, args=(module, qualname, request, soft), timeout=hard
        )
        return asyncio.wrap_future(future), future.cancel

    def shutdown(self) -> None:
        """Stop the processes without waiting for calls still running."""
        if self._pool is not None:
            self._pool.stop()  # type: ignore[no-untyped-call]
            self._pool = None


def failure_of(error: BaseException, hard: float | None) -> BaseException:
    """What a failure of the pool itself (not of the task) means for the run."""
    if isinstance(error, TimeoutError):
        return TimeLimitExceeded(hard)
    from pebble import ProcessExpired  # noqa: PLC0415 - loaded already: a pool failed

    if isinstance(error, ProcessExpired):
        return WorkerLostError(f"Worker exited prematurely: exitcode {error.exitcode}.")
    return error


def _start_process() -> None:
    # Ctrl-C reaches the whole process group: the worker decides what it means for its tasks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The fork server, this process's parent, ends with the worker however the worker ends:
    # a call still running then must not outlive them.
    import ctypes  # noqa: PLC0415 - in the pool's processes only, not in every worker

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _run_in_process(
    module: str, qualname: str, request: Request, soft: float | None
) -> ProcessCall:
    task = _find_task(module, qualname)
    current_request.set(request)
    args = (task, *request.args) if task.options.bind else request.args
    if soft is not None:
        signal.signal(signal.SIGALRM, _soft_limit)
        signal.setitimer(signal.ITIMER_REAL, soft)
    try:
        return ProcessCall(task.fn(*args, **request.kwargs), None, None, request.outbox)
    except BaseException as exc:  # every failure is the task's: it goes back to the worker
        text = "".join(traceback.format_exception(exc))
        return ProcessCall(None, _picklable(exc, text), text, request.outbox)
    finally:
        if soft is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _soft_limit(signum: int, frame: types.FrameType | None) -> None:
    raise SoftTimeLimitExceeded()


def _find_task(module: str, qualname: str) -> Task[Any, Any]:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, Task):
        raise TypeError(
            f"{module}.{qualname} is not a task at module level: a task run in a process "
            f"is imported there by name (pid {os.getpid()})"
        )
    return found


def _picklable(exc: BaseException, text: str) -> BaseException:
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc} (not picklable)\n{text}")
    return exc
