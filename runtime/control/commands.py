"""The remote-control commands a celeriac worker answers, with Celery's names and replies.

Each command takes the :class:`~runtime.control.RemoteControl` and the request's arguments
(unknown arguments are ignored, as Celery's commands take ``**kwargs``), and returns the value
sent back as ``{nodename: value}`` (``celery/worker/control.py``).

Inspect: ``ping``, ``stats``, ``active``, ``reserved``, ``scheduled``, ``registered``,
``revoked``, ``active_queues``, ``conf``, ``query_task``, ``clock``, ``report``, ``hello``
(mingle), and Celery's ``dump_*`` aliases. Control: ``revoke``, ``terminate``, ``shutdown``,
and, from :mod:`runtime.control.adjusting`, ``rate_limit``, ``time_limit``, ``add_consumer``,
``cancel_consumer``, ``pool_grow``, ``pool_shrink``, ``autoscale``, ``enable_events``,
``disable_events``, ``heartbeat``. The
other commands a stock ``celery`` CLI sends (``pool_restart``, ``revoke_by_stamped_headers``,
``election``, ``memsample``, ``memdump``, ``objgraph``) reply Celery's error shape with the
reason (:data:`UNSUPPORTED`); a name no Celery knows replies ``{"error": "KeyError('name')"}``.

Where celeriac differs: ``reserved`` is always empty (a worker never holds a message it cannot
start: one per free slot); ``stats`` describes one process (``pool.processes`` is the worker's
own pid) and leaves out ``broker.transport_options``, which can hold credentials; ``conf``
lists the settings celeriac has, not Celery's whole table; ``terminate`` cancels a coroutine
task whatever the signal (see :meth:`runtime.worker.Worker.terminate_task`); ``stats`` has
``autoscaler`` once ``autoscale`` was called (see :mod:`runtime.control.adjusting`).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from protocol import ExceptionInfo, MalformedMessage, ResultMeta, State
from runtime.errors import BackendError
from runtime.request import Request
from runtime.transports.base import QueueSpec
from runtime.transports.urls import masked_url

from .adjusting import ADJUSTING, nok, ok
from .mailbox import NO_REPLY, Command, RemoteControl

__all__ = ["COMMANDS", "UNSUPPORTED"]

#: Every command by name.
COMMANDS: dict[str, Command] = {}

#: Celery's ``registered`` default: the task attributes shown when set.
_TASK_INFO_ITEMS = ("exchange", "routing_key", "rate_limit")
#: States a ``revoke`` may overwrite with REVOKED at once (Celery 5.7's ``_revoke``).
_REVOCABLE = frozenset({State.PENDING, State.RECEIVED, State.RETRY, State.REJECTED})
_PORTS = {"amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6379}
_TRANSPORTS = {"amqps": "amqp", "pyamqp": "amqp", "rediss": "redis", "unix": "redis"}


def command(function: Command) -> Command:
    """Register ``function`` under its name."""
    COMMANDS[function.__name__] = function
    return function


# -- inspect -----------------------------------------------------------------------------------


@command
async def ping(control: RemoteControl, **_: Any) -> Any:
    """Answer ``pong``."""
    return ok("pong")


@command
async def clock(control: RemoteControl, **_: Any) -> Any:
    """The Lamport clock's value."""
    return {"clock": control.clock.value}


@command
async def stats(control: RemoteControl, **_: Any) -> Any:
    """Process and pool figures, in the shape Flower reads."""
    worker = control.worker
    return {
        "total": dict(worker.total),
        "pid": os.getpid(),
        "clock": str(control.clock.value),
        "uptime": round(time.time() - worker.started_at),
        "pool": {
            "implementation": "runtime.worker.execution:Executor",
            "max-concurrency": worker.concurrency,
            "processes": [os.getpid()],
            "max-tasks-per-child": "N/A",
            "put-guarded-by-semaphore": False,
            "timeouts": [0, 0],
        },
        "broker": _broker_info(worker.app.broker_url),
        "prefetch_count": worker.concurrency,
        "rusage": _rusage(),
        **_autoscaler(worker),
    }


@command
async def active(control: RemoteControl, safe: bool = False, **_: Any) -> Any:
    """The tasks running now."""
    return [
        _info(running.request, started=running.started, acknowledged=running.acknowledged,
              safe=safe)
        for running in list(control.worker.running.values())
    ]  # fmt: skip


@command
async def reserved(control: RemoteControl, **_: Any) -> Any:
    """Tasks received and not started: none, since a message is taken only into a free slot."""
    return []


@command
async def scheduled(control: RemoteControl, **_: Any) -> Any:
    """Tasks held for their ETA."""
    return [
        {
            "eta": request.eta.isoformat() if request.eta else None,
            "priority": request.message.priority or 0,
            "request": _info(request),
        }
        for request in control.worker.scheduled_requests()
    ]


@command
async def query_task(control: RemoteControl, ids: Any = (), **_: Any) -> Any:
    """``{id: [state, info]}`` for the ids this worker is running or holding."""
    worker, wanted = control.worker, set(_ids(ids))
    found: dict[str, Any] = {}
    for request in worker.scheduled_requests():
        if request.id in wanted:
            found[request.id] = ["scheduled", _info(request)]
    for running in list(worker.running.values()):
        if running.request.id in wanted:
            info = _info(running.request, started=running.started,
                         acknowledged=running.acknowledged)  # fmt: skip
            found[running.request.id] = ["active", info]
    return found


@command
async def registered(
    control: RemoteControl, taskinfoitems: Any = None, builtins: bool = False, **_: Any
) -> Any:
    """The registered task names, each with the attributes asked for that are set."""
    tasks = control.worker.app.tasks
    items = [
        item
        for item in (taskinfoitems or _TASK_INFO_ITEMS)
        if isinstance(item, str) and not item.startswith("_")
    ]
    listed = []
    for name in sorted(tasks):
        if name.startswith("celery.") and not builtins:
            continue
        options = tasks[name].options
        fields = [
            f"{item}={getattr(options, item)}"
            for item in items
            if getattr(options, item, None) is not None
        ]
        listed.append(f"{name} [{' '.join(fields)}]" if fields else name)
    return listed


@command
async def revoked(control: RemoteControl, **_: Any) -> Any:
    """The revoked task ids, oldest first."""
    return list(control.worker.revocations)


@command
async def active_queues(control: RemoteControl, **_: Any) -> Any:
    """The queues consumed, as kombu's ``Queue.as_dict(recurse=True)``."""
    app = control.worker.app
    return [_queue_info(app.queue_spec(name)) for name in control.worker.queues]


@command
async def conf(control: RemoteControl, with_defaults: bool = False, **_: Any) -> Any:
    """The settings celeriac has, under Celery's names (URLs without passwords)."""
    worker = control.worker
    app = worker.app
    return {
        "broker_url": masked_url(app.broker_url),
        "result_backend": masked_url(app.result_backend_url),
        "task_serializer": app.task_serializer,
        "result_serializer": app.result_serializer,
        "accept_content": sorted(app.accept.content_types),
        "result_expires": app.result_expires,
        "result_extended": app.result_extended,
        "task_default_queue": app.default_queue,
        "task_default_queue_type": app.task_default_queue_type,
        "task_queue_max_priority": app.task_queue_max_priority,
        "worker_concurrency": worker.concurrency,
        "worker_prefetch_multiplier": 1,
    }


@command
async def hello(control: RemoteControl, from_node: str = "", revoked: Any = None, **_: Any) -> Any:
    """Mingle: take the revoked ids a starting worker sends; give it ours and our clock."""
    if from_node == control.hostname:
        return None
    revocations = control.worker.revocations
    revocations.merge(_ids(revoked))
    return {"revoked": list(revocations), "clock": control.clock.forward()}


# -- control -----------------------------------------------------------------------------------


@command
async def revoke(
    control: RemoteControl, task_id: Any = None, terminate: bool = False,
    signal: str | None = None, **_: Any,
) -> Any:  # fmt: skip
    """Revoke ids (one or a list): never start them, and with ``terminate`` end them if
    running. REVOKED is stored at once for those still PENDING, RECEIVED, RETRY or REJECTED."""
    worker = control.worker
    ids = list(dict.fromkeys(_ids(task_id)))
    await worker.revocations.revoke(ids)
    for revoked_id in ids:
        if revoked_id not in worker.running:
            await _mark_revoked(control, revoked_id)
    if terminate:
        held = {request.id for request in worker.scheduled_requests()}
        ended = [
            revoked_id
            for revoked_id in ids
            if worker.terminate_task(revoked_id, signal or "SIGTERM") or revoked_id in held
        ]
        return ok(f"terminate: {', '.join(ended)}" if ended else "terminate: tasks unknown")
    control.log.info("tasks_revoked", task_ids=ids)
    return ok(f"tasks {set(ids)} flagged as revoked")


@command
async def terminate(
    control: RemoteControl, signal: str | None = None, task_id: Any = None, **_: Any
) -> Any:
    """``revoke`` with ``terminate=True``."""
    return await revoke(control, task_id=task_id, terminate=True, signal=signal)


@command
async def shutdown(control: RemoteControl, msg: str = "Got shutdown from remote", **_: Any) -> Any:
    """Stop the worker as the first SIGTERM does (running tasks may finish); no reply."""
    control.log.warning("remote_shutdown", msg=msg)
    control.worker.stop()
    return NO_REPLY


@command
async def report(control: RemoteControl, **_: Any) -> Any:
    """Celery's bug report: software, platform and settings (URLs without passwords)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        celeriac = version("celeriac")
    except PackageNotFoundError:
        celeriac = "unknown"
    app = control.worker.app
    return ok(
        f"software -> celeriac:{celeriac} py:{platform.python_version()}\n"
        f"platform -> system:{platform.system()} arch:{platform.machine()} "
        f"imp:{platform.python_implementation()}\n"
        f"settings -> broker:{masked_url(app.broker_url)} "
        f"results:{masked_url(app.result_backend_url)}\n"
    )


#: Celery's commands celeriac does not carry out, each with its reason (the error reply).
UNSUPPORTED = {
    "pool_restart": "celeriac has no pool to restart (tasks run in the worker's own process): "
    "restart the worker to reload code",
    "revoke_by_stamped_headers": "celeriac does not revoke by stamped headers: revoke by task id",
    "election": "celeriac takes no part in elections (it has no gossip)",
    "memsample": "celeriac does not sample memory: see the rusage of inspect stats",
    "memdump": "celeriac does not sample memory: see the rusage of inspect stats",
    "objgraph": "celeriac does not graph objects",
}


def _unsupported(name: str, reason: str) -> Command:
    async def unsupported(control: RemoteControl, **_: Any) -> Any:
        control.log.warning("control_command_unsupported", method=name)
        return nok(f"{name} is not supported: {reason}")

    unsupported.__name__ = name
    return unsupported


for _name, _reason in UNSUPPORTED.items():
    COMMANDS[_name] = _unsupported(_name, _reason)
COMMANDS.update(ADJUSTING)

# Celery's old names.
COMMANDS.update(
    dump_conf=conf, dump_schedule=scheduled, dump_reserved=reserved, dump_active=active,
    dump_revoked=revoked, dump_tasks=registered,
)  # fmt: skip


# -- helpers -----------------------------------------------------------------------------------


def _autoscaler(worker: Any) -> dict[str, Any]:
    """``stats``' ``autoscaler`` entry, once ``autoscale`` was called."""
    if worker.autoscale_limits is None:
        return {}
    high, low = worker.autoscale_limits
    return {
        "autoscaler": {
            "max": high, "min": low, "current": worker.concurrency, "qty": len(worker.running),
        }
    }  # fmt: skip


def _ids(value: Any) -> list[str]:
    """Celery's ``maybe_list`` of task ids: one id, a list of them, or none."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(item) for item in value]
    return [str(value)]


async def _mark_revoked(control: RemoteControl, task_id: str) -> None:
    backend = control.worker.backend
    if backend is None:
        return
    try:
        current = await backend.get(task_id)
        if current is not None and current.status not in _REVOCABLE:
            return  # done, or started by another worker: its state is not ours to change
        revoked = ExceptionInfo("TaskRevokedError", ("revoked",), "celery.exceptions")
        await backend.store(
            ResultMeta(
                task_id=task_id, status=State.REVOKED, result=revoked, children=None,
                date_done=datetime.now(UTC),
            )
        )  # fmt: skip
    except (BackendError, MalformedMessage) as exc:
        control.log.warning("revoked_not_stored", task_id=task_id, error=str(exc))


def _info(
    request: Request, *, started: float | None = None, acknowledged: bool = False,
    safe: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Celery's ``Request.info()``."""
    message = request.message
    return {
        "id": message.id,
        "name": message.name,
        "args": (message.argsrepr or "") if safe else list(message.args),
        "kwargs": (message.kwargsrepr or "") if safe else dict(message.kwargs),
        "type": message.task,
        "hostname": request.hostname,
        "time_start": started,
        "acknowledged": acknowledged,
        "delivery_info": dict(request.delivery_info),
        "worker_pid": os.getpid(),
    }


def _queue_info(spec: QueueSpec) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    if spec.max_priority is not None:
        arguments["x-max-priority"] = spec.max_priority
    if spec.quorum:
        arguments["x-queue-type"] = "quorum"
    return {
        "name": spec.name,
        "exchange": {
            "name": spec.exchange, "type": "direct", "arguments": None, "durable": True,
            "passive": False, "auto_delete": False, "delivery_mode": None, "no_declare": False,
        },
        "routing_key": spec.routing_key,
        "queue_arguments": arguments or None,
        "binding_arguments": None,
        "consumer_arguments": None,
        "durable": True,
        "exclusive": False,
        "auto_delete": False,
        "no_ack": False,
        "alias": None,
        "bindings": [],
        "no_declare": None,
        "expires": None,
        "message_ttl": None,
        "max_length": None,
        "max_length_bytes": None,
        "max_priority": spec.max_priority,
    }  # fmt: skip


def _broker_info(url: str) -> dict[str, Any]:
    """kombu's ``Connection.info()`` for ``url``, without password and transport options."""
    split = urlsplit(url)
    scheme = split.scheme
    transport = _TRANSPORTS.get(scheme, scheme)
    path = split.path[1:] if split.path.startswith("/") else split.path
    # Redis names its database where RabbitMQ names its virtual host.
    virtual_host = (path.strip("/") or "0") if transport == "redis" else (unquote(path) or "/")
    return {
        "hostname": split.hostname,
        "userid": unquote(split.username) if split.username else None,
        "virtual_host": virtual_host,
        "port": split.port or _PORTS.get(scheme),
        "insist": False,
        "ssl": scheme in ("amqps", "rediss"),
        "transport": transport,
        "login_method": None,
        "uri_prefix": None,
        "failover_strategy": "round-robin",
        "alternates": [],
    }


def _rusage() -> dict[str, Any] | str:
    """The process's resource usage as Celery reports it ("N/A" where there is none)."""
    try:
        import resource  # noqa: PLC0415 - Unix only
    except ImportError:
        return "N/A"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    names = ("utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt", "nswap",
             "inblock", "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw")  # fmt: skip
    return {name: getattr(usage, f"ru_{name}") for name in names}
