"""The remote-control commands that change a running worker: rate and time limits, the queues
it consumes, its slots, its events (``celery/worker/control.py``'s replies, word for word).

``rate_limit`` and ``time_limit`` change the task's options in this worker's process from the
next task on (a task running keeps its limits; one waiting for a rate-limit token keeps its
wait). ``add_consumer`` and ``cancel_consumer`` change the queue set
(:mod:`runtime.worker.consuming`: nothing fetched is lost). ``pool_grow``, ``pool_shrink`` and
``autoscale`` resize the slots and the thread pool; shrinking below the tasks running lets
them finish and takes nothing new until fewer run than there are slots. celeriac has no
autoscaler: ``autoscale`` runs ``max`` slots (an idle slot costs nothing, no process waits
behind it) and reports ``max`` and ``min`` in ``stats["autoscaler"]``; after it, as in Celery,
``pool_grow`` and ``pool_shrink`` are refused. ``add_consumer`` refuses an exchange, type or
routing key other than the queue's own (celeriac declares only those). Where Celery replies the
same whatever happened (``add consumer q`` when ``q`` is consumed already, ``no longer consuming
from q`` when it was not), so does celeriac; the log tells them apart. A bad argument replies
``{"error": reason}``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from runtime.errors import BrokerConnectionError
from runtime.ratelimit import parse_rate

from .mailbox import Command, RemoteControl

__all__ = ["ADJUSTING", "nok", "ok"]

#: The commands of this module, by name.
ADJUSTING: dict[str, Command] = {}


def _adjusting(function: Command) -> Command:
    ADJUSTING[function.__name__] = function
    return function


def ok(value: Any) -> dict[str, Any]:
    """Celery's success reply."""
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    """Celery's error reply."""
    return {"error": value}


@_adjusting
async def rate_limit(
    control: RemoteControl, task_name: Any = None, rate_limit: Any = None, **_: Any
) -> Any:
    """Change a task type's rate limit on this worker from now on (``""`` or 0: none)."""
    try:
        parse_rate(rate_limit)
    except (TypeError, ValueError) as exc:
        return nok(f"Invalid rate limit string: {exc!r}")
    worker = control.worker
    task = worker.app.tasks.get(task_name) if isinstance(task_name, str) else None
    if task is None:
        control.log.error("rate_limit_unknown_task", task=task_name)
        return nok("unknown task")
    task.options = dataclasses.replace(task.options, rate_limit=rate_limit)
    worker.rate_limits.reset(task.name)
    control.log.info("rate_limit_changed", task=task.name, rate_limit=rate_limit)
    if not rate_limit:
        return ok("rate limit disabled successfully")
    return ok("new rate limit set successfully")


@_adjusting
async def time_limit(
    control: RemoteControl, task_name: Any = None, hard: Any = None, soft: Any = None, **_: Any
) -> Any:
    """Set a task type's soft and hard limits on this worker from now on, as Celery does: a
    limit not given is none. Its queue's cap still applies (``CELERIAC_QUEUE_LIMITS``)."""
    try:
        soft_seconds, hard_seconds = _seconds(soft), _seconds(hard)
    except ValueError as exc:
        return nok(str(exc))
    task = control.worker.app.tasks.get(task_name) if isinstance(task_name, str) else None
    if task is None:
        control.log.error("time_limit_unknown_task", task=task_name)
        return nok("unknown task")
    task.options = dataclasses.replace(
        task.options, soft_time_limit=soft_seconds, time_limit=hard_seconds
    )
    control.log.info("time_limits_changed", task=task.name, soft=soft, hard=hard)
    return ok("time limits set successfully")


@_adjusting
async def add_consumer(
    control: RemoteControl, queue: Any = None, exchange: Any = None, exchange_type: Any = None,
    routing_key: Any = None, **_: Any,
) -> Any:  # fmt: skip
    """Declare ``queue`` (as the worker's own queues) and consume it too."""
    if not isinstance(queue, str) or not queue:
        return nok(f"add_consumer needs a queue name, not {queue!r}")
    try:
        added = await control.worker.consumers.add(queue, exchange, exchange_type, routing_key)
    except (ValueError, BrokerConnectionError) as exc:
        return nok(str(exc))
    control.log.info("consumer_added" if added else "consumer_present", queue=queue)
    return ok(f"add consumer {queue}")


@_adjusting
async def cancel_consumer(control: RemoteControl, queue: Any = None, **_: Any) -> Any:
    """Stop consuming ``queue``: what the worker fetched and had not started goes back."""
    if not isinstance(queue, str) or not queue:
        return nok(f"cancel_consumer needs a queue name, not {queue!r}")
    cancelled = control.worker.consumers.cancel(queue)
    control.log.info("consumer_cancelled" if cancelled else "consumer_absent", queue=queue)
    return ok(f"no longer consuming from {queue}")


@_adjusting
async def pool_grow(control: RemoteControl, n: Any = 1, **_: Any) -> Any:
    """Run ``n`` more tasks at once."""
    worker = control.worker
    if worker.autoscale_limits is not None:
        return nok("pool_grow is not supported with autoscale. Adjust autoscale range instead.")
    try:
        worker.resize(worker.concurrency + _count(n, "n", least=1))
    except ValueError as exc:
        return nok(str(exc))
    return ok("pool will grow")


@_adjusting
async def pool_shrink(control: RemoteControl, n: Any = 1, **_: Any) -> Any:
    """Run ``n`` fewer tasks at once (1 at least); tasks running beyond that finish first."""
    worker = control.worker
    if worker.autoscale_limits is not None:
        return nok("pool_shrink is not supported with autoscale. Adjust autoscale range instead.")
    try:
        count = _count(n, "n", least=1)
    except ValueError as exc:
        return nok(str(exc))
    if worker.concurrency - count < 1:
        return nok(f"Can't shrink pool by {count}: it has {worker.concurrency}, 1 is the least")
    worker.resize(worker.concurrency - count)
    return ok("pool will shrink")


@_adjusting
async def autoscale(control: RemoteControl, max: Any = None, min: Any = None, **_: Any) -> Any:
    """Record ``max`` and ``min`` and run ``max`` slots (there is no autoscaler: see the
    module docstring); either left out keeps its value."""
    worker = control.worker
    old_max, old_min = worker.autoscale_limits or (worker.concurrency, 0)
    try:
        high = old_max if max is None else _count(max, "max", least=1)
        low = old_min if min is None else _count(min, "min", least=0)
    except ValueError as exc:
        return nok(str(exc))
    if low > high:
        return nok(f"autoscale min={low} is above max={high}")
    worker.autoscale_limits = (high, low)
    worker.resize(high)
    return ok(f"autoscale now max={high} min={low}")


@_adjusting
async def enable_events(control: RemoteControl, **_: Any) -> Any:
    """Send Celery's ``task-*`` events from now on."""
    worker = control.worker
    if worker.task_events:
        return ok("task events already enabled")
    worker.task_events = True
    control.log.info("task_events_enabled")
    return ok("task events enabled")


@_adjusting
async def disable_events(control: RemoteControl, **_: Any) -> Any:
    """Stop sending Celery's ``task-*`` events."""
    worker = control.worker
    if not worker.task_events:
        return ok("task events already disabled")
    worker.task_events = False
    control.log.info("task_events_disabled")
    return ok("task events disabled")


@_adjusting
async def heartbeat(control: RemoteControl, **_: Any) -> Any:
    """Send a ``worker-heartbeat`` event now; Celery replies nothing but ``None``."""
    control.worker.send_heartbeat()
    return None


# -- helpers -----------------------------------------------------------------------------------


def _count(value: Any, name: str, *, least: int) -> int:
    """``value`` as a whole number of at least ``least``; ``ValueError`` saying why not."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be a whole number of {least} or more, not {value!r}")
    return value


def _seconds(value: Any) -> float | None:
    """A time limit in seconds (``None``: none); ``ValueError`` if it is not one."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a time limit is a number of seconds, not {value!r}") from None
    if not math.isfinite(seconds):
        raise ValueError(f"a time limit is a number of seconds, not {value!r}")
    return seconds
