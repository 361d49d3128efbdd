"""A task class's hooks, called after a run as Celery's worker calls them.

Order (``celery.app.trace``): the outcome is stored first; then ``on_success(retval, task_id,
args, kwargs)``, ``on_failure(exc, task_id, args, kwargs, einfo)`` or ``on_retry(exc, task_id,
args, kwargs, einfo)``; then ``after_return(status, retval, task_id, args, kwargs, None)``.
Only hooks a subclass overrides are called. A hook that raises is logged (``task_hook_failed``)
and changes nothing: the result is stored and the message settled already or regardless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from protocol import State
from runtime.exceptions import ExcInfo, Retry
from runtime.request import Request
from runtime.task import Task

from .outcome import Outcome

__all__ = ["call_hooks"]

#: Runs a hook as the task would run: ``call(hook, request, *args)``.
HookCall = Callable[..., Awaitable[Any]]


def _overrides(task: Task[Any, Any], name: str) -> bool:
    return getattr(type(task), name) is not getattr(Task, name)


async def call_hooks(
    task: Task[Any, Any], request: Request, outcome: Outcome, call: HookCall, log: Any
) -> None:
    """Call ``task``'s hooks for ``outcome`` (SUCCESS, FAILURE or RETRY) in Celery's order."""
    exc = outcome.exception
    if outcome.state is State.SUCCESS:
        first = "on_success"
    elif isinstance(exc, Retry) and outcome.state is State.RETRY:
        first = "on_retry"
    else:
        first = "on_failure"
    hooked = [name for name in (first, "after_return") if _overrides(task, name)]
    if not hooked:  # the common case: a plain task, nothing to build
        return
    args, kwargs = list(request.args), dict(request.kwargs)
    if first == "on_success":
        retval = outcome.value
        first_args: tuple[Any, ...] = (retval, request.id, args, kwargs)
    else:
        assert exc is not None
        retval = exc
        reason = exc.exc if isinstance(exc, Retry) else exc
        first_args = (reason, request.id, args, kwargs, ExcInfo(exc, outcome.traceback))
    last_args = (outcome.state.value, retval, request.id, args, kwargs, None)
    for name in hooked:
        try:
            await call(getattr(task, name), request, *(first_args if name == first else last_args))
        except Exception as error:
            log.exception("task_hook_failed", task_id=request.id, hook=name, error=repr(error))
