"""Running a worker as a process: load the app, configure logging, pick the loop, handle signals.

This is the only module that reads the environment or configures structlog; the library
itself takes everything as arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from runtime.worker import DEFAULT_MAX_HELD_ETA, Worker
from runtime.worker.heartbeat import DEFAULT_HEARTBEAT_INTERVAL
from runtime.worker.leases import DEFAULT_CONSUMER_TIMEOUT

from .app import App
from .errors import BrokerConnectionError
from .groups import ResolvedGroup
from .transports.urls import mask_secrets

__all__ = [
    "UsageError",
    "WorkerOptions",
    "configure_logging",
    "configure_monitor",
    "first_env",
    "freeze_when_ready",
    "import_target",
    "load_app",
    "loop_factory",
    "mask_event_secrets",
    "node_name",
    "serve",
    "tuned_collector",
]


class UsageError(Exception):
    """The command line or environment asks for something that cannot work."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Everything ``celeriac worker`` needs, resolved from flags and the environment."""

    app_path: str
    queues: tuple[str, ...]
    concurrency: int
    hostname: str
    broker: str | None
    result_backend: str | None
    grace: float
    loop: str
    queue_limits: str | None
    queue_limits_file: Path | None
    queue_type: str | None = None
    visibility_timeout: float | None = None
    max_held_eta: int = DEFAULT_MAX_HELD_ETA
    run_registry: str | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    #: ``-E``: send task events (``None``: as the app's ``worker_send_task_events``).
    task_events: bool | None = None
    #: ``--without-heartbeat`` turns off worker-online/heartbeat/offline events.
    worker_heartbeats: bool = True
    #: RabbitMQ's ``consumer_timeout`` long ``acks_late`` runs are kept clear of (``None``:
    #: the broker has none), see :mod:`runtime.worker.leases`.
    consumer_timeout: float | None = DEFAULT_CONSUMER_TIMEOUT
    #: Serve ``/metrics``, ``/healthz`` and ``/readyz`` on this port (``None``: not served).
    http_port: int | None = None
    #: The worker group and profile it runs as (``--group``, ``--profile``), if any.
    group: ResolvedGroup | None = None


def first_env(environ: Mapping[str, str], *names: str) -> str | None:
    """The value of the first of ``names`` set (non-empty) in ``environ``."""
    for name in names:
        if environ.get(name):
            return environ[name]
    return None


def node_name(template: str) -> str:
    """Expand Celery's ``%h`` (host), ``%n`` (short host) and ``%d`` (domain) in ``-n``."""
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    return template.replace("%h", host).replace("%n", short).replace("%d", domain)


def import_target(path: str) -> Any:
    """Import ``module:attribute`` (or ``module``, whose ``app`` is taken), from the current
    directory too, as Celery's ``-A`` does: the object, or ``None`` if the module has no such
    attribute; ``UsageError`` if the module cannot be imported."""
    module_name, _, attribute = path.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} from -A {path}: {exc}") from None
    return getattr(module, attribute or "app", None)


def load_app(path: str) -> App:
    """Import ``module:attribute`` (or ``module``, whose ``app`` is taken) as the App."""
    app = import_target(path)
    if not isinstance(app, App):
        module_name, _, attribute = path.partition(":")
        raise UsageError(f"-A {path}: {module_name}.{attribute or 'app'} is not a celeriac App")
    return app


def mask_event_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: the password of any ``scheme://user:password@`` in a string
    value of the event masked (defence in depth: URLs are masked where they are logged too)."""
    for key, value in event.items():
        event[key] = _masked(value)
    return event


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value) if "@" in value else value
    if isinstance(value, list | tuple):
        return type(value)(_masked(v) for v in value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    return value


class _StdlibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Standard-library records (the transports', third parties') rendered as structlog's."""


def configure_logging(level: str, fmt: str) -> None:
    """structlog to standard error: JSON lines (containers) or console (a terminal), with
    any password in a URL masked."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # a traceback as text, to be masked too
    ]
    handler = _StdlibHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                mask_event_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(previous)
    root.addHandler(handler)
    # Third-party libraries say too much below warning; celeriac's own events are structlog's.
    root.setLevel(max(logging.getLevelNamesMapping()[level.upper()], logging.WARNING))
    structlog.configure(
        processors=[*shared, mask_event_secrets, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # One write per line (print() makes two): the processes of `--processes N` share
        # standard error, and two lines written at once must not run into one.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional at run time
    except ImportError:
        if name == "uvloop":
            raise UsageError("--loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def configure_monitor(app: App, environ: Mapping[str, str]) -> None:
    """Apply ``CELERIAC_MONITOR_QUEUE`` and ``CELERIAC_MONITOR_EXCHANGE`` over the app's
    ``task_monitor_queue`` and ``task_monitor_exchange`` (:mod:`runtime.monitor`)."""
    app.task_monitor_queue = first_env(environ, "CELERIAC_MONITOR_QUEUE") or app.task_monitor_queue
    app.task_monitor_exchange = (
        first_env(environ, "CELERIAC_MONITOR_EXCHANGE") or app.task_monitor_exchange
    )


def configure(app: App, options: WorkerOptions) -> None:
    """Apply what the command line and environment say over the app's own settings."""
    if options.broker:
        app.broker_url = options.broker
    if options.result_backend:
        app.result_backend_url = options.result_backend
    if options.queue_type:
        app.task_default_queue_type = options.queue_type
    if options.run_registry:
        app.run_registry_url = options.run_registry
    app.run_registry_prefix = first_env(os.environ, "CELERIAC_RUN_REGISTRY_PREFIX") or (
        app.run_registry_prefix
    )
    if options.visibility_timeout is not None:
        app.broker_transport_options["visibility_timeout"] = options.visibility_timeout
    configure_monitor(app, os.environ)
    policy = app.queue_policy
    if options.queue_limits_file is not None:
        policy = policy.with_toml(options.queue_limits_file.read_text())
    app.queue_policy = policy.with_env(options.queue_limits)


@contextlib.asynccontextmanager
async def _probes(worker: Worker, port: int | None) -> AsyncIterator[None]:
    """Serve the worker's metrics and probes on ``port`` (if any) while the body runs."""
    if port is None:
        yield
        return
    # Loaded only when served: prometheus-client and the HTTP server it brings are ~1.6 MiB
    # of every worker process's memory.
    from runtime.probes import ProbeServer  # noqa: PLC0415
    from runtime.worker.metrics import WorkerMetrics  # noqa: PLC0415

    metrics = WorkerMetrics(worker)
    worker.observe(metrics)
    lag = asyncio.create_task(metrics.watch_loop_lag(), name="celeriac-loop-lag")
    try:
        async with ProbeServer(metrics.registry, ready=metrics.ready, port=port):
            structlog.get_logger("celeriac.worker").info("probes_serving", port=port)
            yield
    finally:
        lag.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lag


#: A coroutine run beside the worker, given it, cancelled when the worker has stopped (a
#: supervised child's link to its supervisor: :func:`runtime.supervisor.answer_supervisor`).
Companion = Callable[[Worker], Coroutine[Any, Any, None]]


def serve(options: WorkerOptions, *, companion: Companion | None = None) -> int:
    """Run a worker until SIGTERM/SIGINT; return the process exit status.

    The first signal stops consuming and lets running tasks finish within the grace period;
    a second ends at once.
    """
    app = load_app(options.app_path)
    configure(app, options)
    with tuned_collector(), asyncio.Runner(loop_factory=loop_factory(options.loop)) as runner:
        return runner.run(_run(app, options, companion))


#: Container allocations between two collections of the youngest generation (CPython: 700).
YOUNG_COLLECTION_EVERY = 10_000


@contextlib.contextmanager
def tuned_collector() -> Iterator[None]:
    """CPython's collector set for a worker process, as it was again on the way out.

    A full collection traverses every tracked object, and with the default thresholds one
    follows every 70,000 allocations or so once the old generation has grown a quarter: with
    10,000 tasks waiting (some 600,000 objects) full collections took 1.5 of the 3.4 CPU
    seconds of a 20,000-task run (``gc.callbacks``; 0.06 of 2.4 with these settings).
    Collecting the young generation every :data:`YOUNG_COLLECTION_EVERY` allocations makes
    every older collection ten times rarer; what start-up allocated is frozen once the worker
    is ready (:func:`freeze_when_ready`), out of every later traversal.
    """
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


async def freeze_when_ready(worker: Worker) -> None:
    """Once ``worker`` consumes, move every object allocated so far (modules, the app, the
    broker clients) out of the collector's sight: it never frees them, and each full
    collection no longer traverses them."""
    await worker.ready.wait()
    gc.collect()
    gc.freeze()


async def _run(app: App, options: WorkerOptions, companion: Companion | None = None) -> int:
    """Run the worker until it stops; return the process exit status."""
    # Every event of this process names the worker (and its group): tasks and threads started
    # from here on copy the context.
    structlog.contextvars.bind_contextvars(worker=options.hostname)
    if options.group is not None:
        structlog.contextvars.bind_contextvars(
            group=options.group.group, profile=options.group.profile
        )
    log = structlog.get_logger("celeriac.worker")
    worker = Worker(
        app,
        queues=options.queues,
        concurrency=options.concurrency,
        hostname=options.hostname,
        grace=options.grace,
        max_held_eta=options.max_held_eta,
        heartbeat_interval=options.heartbeat_interval,
        task_events=options.task_events,
        worker_heartbeats=options.worker_heartbeats,
        consumer_timeout=options.consumer_timeout,
    )
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        log.info("signal_received", signal=signal.Signals(signum).name, count=signals_seen)
        if signals_seen == 1:
            worker.stop()
        else:
            worker.terminate()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    beside = None if companion is None else asyncio.create_task(companion(worker))
    freezing = asyncio.create_task(freeze_when_ready(worker))
    try:
        async with _probes(worker, options.http_port):
            await worker.run()
    except BrokerConnectionError as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return 1
    finally:
        freezing.cancel()
        if beside is not None:
            beside.cancel()
            await asyncio.wait({beside})
        await app.aclose()
    if signals_seen > 1 or worker.unfinished:
        # Leave now: tasks that ignore cancellation, and threads blocked in C code, would
        # otherwise hold the exit (the loop's shutdown awaits every task; the interpreter
        # joins pool threads). Their messages are back with the broker: the connection is
        # closed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
