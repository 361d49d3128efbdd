"""The ``celeriac`` command line.

``celeriac worker`` runs a worker (flags spelled as Celery's, see ``celeriac worker --help``).
``celeriac decode`` reads one message from standard input (kombu's Redis JSON envelope, or an
SQS ``MessageBody``) and prints the task it carries as JSON, or the reason it is malformed:
the tool for looking at a message a worker refused.
``celeriac load`` publishes tasks at a steady rate to any deployment and reports the rate and
latency achieved (see :mod:`runtime.load`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import (
    AcceptPolicy,
    MalformedMessage,
    Signature,
    TaskMessage,
    decode_envelope,
    decode_sqs_body,
    decode_task,
)
from runtime.transports.urls import DEFAULT_BROKER
from runtime.worker import DEFAULT_MAX_HELD_ETA
from runtime.worker.heartbeat import DEFAULT_HEARTBEAT_INTERVAL
from runtime.worker.leases import DEFAULT_CONSUMER_TIMEOUT

from . import serve
from .errors import BackendError, BrokerConnectionError
from .groups import GroupsError, ResolvedGroup, load_groups

if TYPE_CHECKING:
    from . import load

__all__ = ["Extension", "main"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Signature):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "items"):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def task_as_dict(task: TaskMessage) -> dict[str, Any]:
    """Every field of ``task`` as plain JSON-ready values."""
    return {name: _jsonable(getattr(task, name)) for name in TaskMessage.__dataclass_fields__}


def _decode(data: bytes, accept: AcceptPolicy) -> dict[str, Any]:
    try:
        envelope = decode_envelope(data)
    except MalformedMessage:
        envelope = decode_sqs_body(data)
    return {
        "delivery": {
            "exchange": envelope.exchange,
            "routing_key": envelope.routing_key,
            "delivery_tag": envelope.delivery_tag,
            "priority": envelope.priority,
            "redelivered": envelope.redelivered,
        },
        "task": task_as_dict(decode_task(envelope.message, accept=accept)),
    }


def _cmd_decode(args: argparse.Namespace) -> int:
    accept = AcceptPolicy.of(args.accept.split(","))
    try:
        decoded = _decode(sys.stdin.buffer.read(), accept)
    except MalformedMessage as exc:
        print(f"celeriac: malformed message: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(decoded, indent=2, ensure_ascii=False, default=repr))
    return 0


def _seconds(text: str | None, what: str = "visibility timeout") -> float | None:
    """A positive number of seconds from a flag or variable; ``ValueError`` otherwise."""
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{what} must be a positive number of seconds, not {text!r}")
    return seconds


def _consumer_timeout(text: str | None) -> float | None:
    """RabbitMQ's ``consumer_timeout`` the worker keeps long runs clear of: its default when
    not given, ``None`` for ``none`` or ``0`` (the broker has none)."""
    if text is None:
        return DEFAULT_CONSUMER_TIMEOUT
    if text.strip().lower() in ("none", "0"):
        return None
    return _seconds(text, "--consumer-timeout")


def _count(text: str | None, default: int) -> int:
    """A whole number of 0 or more from a flag or variable; ``default`` if not given."""
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"--max-held-eta must be a whole number, 0 or more, not {text!r}")
    return value


def _port(text: str | None) -> int | None:
    """A TCP port from a flag or variable (``None`` if not given); ``ValueError`` otherwise."""
    if text is None:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"--http-port must be a port number (1-65535), not {text!r}")
    return int(text)


def _processes(text: str | None, group: ResolvedGroup | None) -> int:
    """Worker processes from ``--processes``/``CELERIAC_PROCESSES`` (else the group's profile,
    else 1); ``ValueError`` unless a whole number of 1 or more."""
    if text is None:
        return group.processes if group else 1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--processes must be a whole number, 1 or more, not {text!r}")
    return int(text)


def _worker_group(args: argparse.Namespace, environ: Any) -> ResolvedGroup | None:
    """The group ``--group``/``CELERIAC_GROUP`` names, under ``--profile``/``CELERIAC_PROFILE``,
    from ``--groups-file``/``CELERIAC_GROUPS_FILE``; ``None`` if no group is named."""
    group = args.group or serve.first_env(environ, "CELERIAC_GROUP")
    profile = args.profile or serve.first_env(environ, "CELERIAC_PROFILE")
    path = args.groups_file or serve.first_env(environ, "CELERIAC_GROUPS_FILE")
    if group is None:
        if profile is not None:
            raise GroupsError(f"--profile {profile} needs --group (or CELERIAC_GROUP)")
        return None
    if path is None:
        raise GroupsError(f"--group {group} needs --groups-file (or CELERIAC_GROUPS_FILE)")
    return load_groups(path).resolve(group, profile)


def _cmd_worker(args: argparse.Namespace) -> int:
    environ = os.environ
    try:
        group = _worker_group(args, environ)
    except GroupsError as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return 2
    queues = (
        args.queues
        or serve.first_env(environ, "WORKER_QUEUES", "CELERIAC_QUEUES")
        or (",".join(group.queues) if group else "celery")
    )
    concurrency = args.concurrency or int(
        serve.first_env(environ, "CELERIAC_CONCURRENCY", "WORKER_CONCURRENCY")
        or (group.concurrency if group else None)
        or os.cpu_count()
        or 1
    )
    if args.prefetch_multiplier != 1:
        print(
            "celeriac: --prefetch-multiplier is always 1 here (one message per free slot); "
            f"ignoring {args.prefetch_multiplier}",
            file=sys.stderr,
        )
    log_format = args.log_format or ("console" if sys.stderr.isatty() else "json")
    serve.configure_logging(args.loglevel, log_format)
    try:
        visibility_timeout = _seconds(
            args.visibility_timeout or serve.first_env(environ, "CELERIAC_VISIBILITY_TIMEOUT")
        )
        max_held_eta = _count(
            args.max_held_eta or serve.first_env(environ, "CELERIAC_MAX_HELD_ETA"),
            DEFAULT_MAX_HELD_ETA,
        )
        http_port = _port(args.http_port or serve.first_env(environ, "CELERIAC_HTTP_PORT"))
        processes = _processes(
            args.processes or serve.first_env(environ, "CELERIAC_PROCESSES"), group
        )
        child_timeout = _seconds(
            args.child_timeout or serve.first_env(environ, "CELERIAC_CHILD_TIMEOUT"),
            "--child-timeout",
        )
        consumer_timeout = _consumer_timeout(
            args.consumer_timeout or serve.first_env(environ, "CELERIAC_CONSUMER_TIMEOUT")
        )
        if http_port is not None and http_port + processes - 1 > 65535:
            raise ValueError(
                f"--http-port {http_port} leaves no port for each of {processes} processes"
            )
    except ValueError as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return 2
    limits_file = args.queue_limits_file or serve.first_env(environ, "CELERIAC_QUEUE_LIMITS_FILE")
    options = serve.WorkerOptions(
        app_path=args.app or serve.first_env(environ, "CELERIAC_APP") or "",
        queues=tuple(q.strip() for q in queues.split(",") if q.strip()),
        concurrency=concurrency,
        hostname=serve.node_name(args.hostname),
        broker=args.broker
        or serve.first_env(environ, "CELERIAC_BROKER_URL", "CELERY_BROKER_URL", "BROKER_URL"),
        result_backend=args.result_backend
        or serve.first_env(environ, "CELERIAC_RESULT_BACKEND", "CELERY_RESULT_BACKEND"),
        grace=args.grace,
        loop=args.loop,
        queue_limits=serve.first_env(environ, "CELERIAC_QUEUE_LIMITS"),
        queue_limits_file=Path(limits_file) if limits_file else None,
        queue_type=args.queue_type or serve.first_env(environ, "CELERIAC_QUEUE_TYPE"),
        visibility_timeout=visibility_timeout,
        max_held_eta=max_held_eta,
        run_registry=args.run_registry or serve.first_env(environ, "CELERIAC_RUN_REGISTRY"),
        heartbeat_interval=args.heartbeat_interval,
        task_events=True if args.task_events else None,
        worker_heartbeats=not args.without_heartbeat,
        consumer_timeout=consumer_timeout,
        http_port=http_port,
        group=group,
    )
    if not options.app_path:
        print("celeriac: worker needs -A module:app (or CELERIAC_APP)", file=sys.stderr)
        return 2
    try:
        if processes > 1:
            from .supervisor import DEFAULT_CHILD_TIMEOUT, Supervisor  # noqa: PLC0415

            return Supervisor(
                options, processes=processes, child_timeout=child_timeout or DEFAULT_CHILD_TIMEOUT,
                loglevel=args.loglevel, log_format=log_format,
            ).run()  # fmt: skip
        return serve.serve(options)
    except (serve.UsageError, ValueError, OSError) as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return 2


def _json_arg(text: str | None, kind: type[list[Any]] | type[dict[str, Any]], flag: str) -> Any:
    """``text`` parsed as a JSON value of ``kind`` (empty if ``None``); ``ValueError`` otherwise."""
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, kind):
        what = "list" if kind is list else "object"
        raise ValueError(f"{flag} must be a JSON {what}, not {text!r}")
    return value


def _load_plan(args: argparse.Namespace) -> load.LoadPlan:
    """The plan the flags and the environment describe; ``ValueError`` for bad input."""
    from . import load  # noqa: PLC0415 - the worker command never needs the load generator

    environ = os.environ
    return load.LoadPlan(
        broker=args.broker
        or serve.first_env(environ, "CELERIAC_BROKER_URL", "CELERY_BROKER_URL", "BROKER_URL")
        or DEFAULT_BROKER,
        task=args.task,
        rate=load.parse_rate(args.rate),
        duration=load.parse_duration(args.duration),
        args=_json_arg(args.args, list, "--args"),
        kwargs=_json_arg(args.kwargs, dict, "--kwargs"),
        queue=args.queue,
        result_backend=args.result_backend
        or serve.first_env(environ, "CELERIAC_RESULT_BACKEND", "CELERY_RESULT_BACKEND"),
        result_timeout=load.parse_duration(args.result_timeout),
    )


def _cmd_load(args: argparse.Namespace) -> int:
    try:
        plan = _load_plan(args)
    except ValueError as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return 2
    from . import load  # noqa: PLC0415 - the worker command never needs the load generator

    try:
        report = asyncio.run(load.run_load(plan))
    except (BrokerConnectionError, BackendError) as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a broker URL no transport handles
        print(f"celeriac: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("celeriac: interrupted; no report", file=sys.stderr)
        return 130
    print(load.render(report))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        except OSError as exc:
            print(f"celeriac: cannot write the report to {args.json}: {exc}", file=sys.stderr)
            return 1
    return 0


def _add_load_command(commands: Any) -> None:
    run = commands.add_parser(
        "load",
        help="publish tasks at a steady rate (open loop) and report rate and latency",
        description="Publish Celery task messages at a steady rate (open loop: each message "
        "at its scheduled time, however slow earlier ones were) and report the publish rate "
        "achieved and, with a result backend, latency percentiles from each message's "
        "intended send time to its date_done.",
    )
    run.add_argument(
        "--broker", metavar="URL", help="broker URL (CELERIAC_BROKER_URL, CELERY_BROKER_URL)"
    )
    run.add_argument("--task", required=True, metavar="NAME", help="the task's registered name")
    run.add_argument("--rate", required=True, help="messages per time: 500/s, 30000/m, 10/h")
    run.add_argument("--duration", required=True, help="how long to publish: 60s, 2m, 500ms")
    run.add_argument("--args", metavar="JSON", help="positional arguments, a JSON list")
    run.add_argument("--kwargs", metavar="JSON", help="keyword arguments, a JSON object")
    run.add_argument("--queue", default="celery", help="queue to publish to (default: celery)")
    run.add_argument(
        "--result-backend",
        metavar="URL",
        help="Redis result backend URL, to measure latency (CELERIAC_RESULT_BACKEND)",
    )
    run.add_argument(
        "--result-timeout", default="30s", help="how long to wait for results (default: 30s)"
    )
    run.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    run.set_defaults(run=_cmd_load)


#: Adds sub-commands to ``celeriac``: given the table :meth:`ArgumentParser.add_subparsers`
#: returns, each command sets its handler as ``run`` (see :func:`main`).
Extension = Callable[[Any], None]


def _parser(extend: Extension | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celeriac", description="A pure-asyncio worker that speaks Celery's wire protocol."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('celeriac')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    decode = commands.add_parser(
        "decode",
        help="decode one Celery message (Redis envelope or SQS body) from standard input",
    )
    decode.add_argument(
        "--accept",
        default="json,msgpack",
        help="content types to deserialize, comma-separated (default: json,msgpack)",
    )
    decode.set_defaults(run=_cmd_decode)
    worker = commands.add_parser("worker", help="consume queues and run their tasks")
    worker.add_argument("-A", "--app", help="the App to run, as module:attribute")
    worker.add_argument(
        "-Q",
        "--queues",
        help="queues to consume, comma-separated (WORKER_QUEUES; wins over --group's queues)",
    )
    worker.add_argument(
        "-c",
        "--concurrency",
        type=int,
        help="task slots (CELERIAC_CONCURRENCY; wins over --profile's; default: CPU count)",
    )
    worker.add_argument(
        "--groups-file",
        metavar="PATH",
        help="TOML file of worker groups and their profiles (CELERIAC_GROUPS_FILE; "
        "see examples/groups.toml)",
    )
    worker.add_argument(
        "--group",
        metavar="NAME",
        help="run as this group of the groups file: its queues and its profile's concurrency, "
        "unless -Q/WORKER_QUEUES or -c/CELERIAC_CONCURRENCY say otherwise (CELERIAC_GROUP)",
    )
    worker.add_argument(
        "--profile",
        metavar="NAME",
        help="the group's tuning profile: safe, balanced or fast, or any the file defines "
        "(CELERIAC_PROFILE; default: balanced)",
    )
    worker.add_argument("-n", "--hostname", default="celeriac@%h", help="node name (%%h: host)")
    worker.add_argument("-b", "--broker", help="broker URL (CELERIAC_BROKER_URL)")
    worker.add_argument("--result-backend", help="result backend URL (CELERIAC_RESULT_BACKEND)")
    worker.add_argument("--prefetch-multiplier", type=int, default=1, help="always 1 here")
    worker.add_argument("-l", "--loglevel", default="info", help="debug, info, warning, error")
    worker.add_argument(
        "--log-format", choices=["json", "console"], help="default: console on a terminal"
    )
    worker.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    worker.add_argument(
        "--grace", type=float, default=30.0, help="seconds running tasks get on SIGTERM"
    )
    worker.add_argument(
        "--queue-limits-file", help="TOML file of [queues.<name>] soft/hard limits and pool"
    )
    worker.add_argument(
        "--queue-type",
        choices=["classic", "quorum"],
        help="how queues are declared (Celery's task_default_queue_type; CELERIAC_QUEUE_TYPE)",
    )
    worker.add_argument(
        "--visibility-timeout",
        help="seconds before an unacknowledged Redis/SQS message is given to another worker "
        "(transport option visibility_timeout; CELERIAC_VISIBILITY_TIMEOUT)",
    )
    worker.add_argument(
        "--consumer-timeout",
        help="RabbitMQ's consumer_timeout in seconds (default 1800, the broker's; none: it has "
        "none): acks_late tasks running longer hand their message to a lease in the result "
        "backend's Redis before it (CELERIAC_CONSUMER_TIMEOUT)",
    )
    worker.add_argument(
        "--max-held-eta",
        help="tasks due within 2 s the worker holds at most, unacknowledged; later ones wait "
        f"in the broker (default {DEFAULT_MAX_HELD_ETA}; CELERIAC_MAX_HELD_ETA)",
    )
    worker.add_argument(
        "--run-registry",
        metavar="URL",
        help="record each run in this Redis for the controller to reconcile "
        "(CELERIAC_RUN_REGISTRY; default: not recorded)",
    )
    worker.add_argument(
        "--heartbeat-interval",
        type=float,
        default=DEFAULT_HEARTBEAT_INTERVAL,
        help="seconds between heartbeats in the run registry "
        f"(default {DEFAULT_HEARTBEAT_INTERVAL:g})",
    )
    worker.add_argument(
        "-E",
        "--task-events",
        action="store_true",
        help="send Celery's task events, for Flower and celery events "
        "(the app's worker_send_task_events)",
    )
    worker.add_argument(
        "--without-heartbeat",
        action="store_true",
        help="send no worker-online/heartbeat/offline events",
    )
    worker.add_argument(
        "--http-port",
        metavar="PORT",
        help="serve /metrics (Prometheus), /healthz and /readyz on PORT (CELERIAC_HTTP_PORT; "
        "default: not served)",
    )
    worker.add_argument(
        "--processes",
        metavar="N",
        help="worker processes, each with its own loop, connection and node name name@host.i, "
        "under a supervisor (CELERIAC_PROCESSES; default: the --profile's, else 1)",
    )
    worker.add_argument(
        "--child-timeout",
        metavar="SECONDS",
        help="with --processes: a process whose event loop is silent this long is killed and "
        "replaced (CELERIAC_CHILD_TIMEOUT; default 60)",
    )
    worker.set_defaults(run=_cmd_worker)
    _add_load_command(commands)
    # Listed for --help; main() hands everything after `bench` to python -m benchmarks.
    commands.add_parser(
        "bench", help="the benchmark suite (python -m benchmarks; see celeriac bench --help)"
    )
    if extend is not None:
        extend(commands)
    return parser


def _bench(argv: Sequence[str]) -> int:
    """``celeriac bench ARGS`` is ``python -m benchmarks ARGS`` (it needs celeriac[bench])."""
    try:
        from benchmarks.__main__ import main as bench  # noqa: PLC0415 - an optional extra
    except ModuleNotFoundError as exc:
        print(f"celeriac: bench needs the bench extra ({exc.name} is missing): "
              "pip install 'celeriac[bench]'", file=sys.stderr)  # fmt: skip
        return 2
    return asyncio.run(bench(argv))


def main(argv: Sequence[str] | None = None, *, extend: Extension | None = None) -> int:
    """Run the ``celeriac`` command line; return its exit status. ``extend`` adds commands
    (the controller's: the ``celeriac`` console script is :func:`controller.cli.main`)."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["bench"]:
        return _bench(given[1:])
    args = _parser(extend).parse_args(given)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
