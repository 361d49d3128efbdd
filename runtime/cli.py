"""The ``celeriac`` command line.

``celeriac worker`` runs a worker (flags spelled as Celery's, see ``celeriac worker --help``).
``celeriac decode`` reads one message from standard input (kombu's Redis JSON envelope, or an
SQS ``MessageBody``) and prints the task it carries as JSON, or the reason it is malformed:
the tool for looking at a message a worker refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from protocol import (
    AcceptPolicy,
    MalformedMessage,
    Signature,
    TaskMessage,
    decode_envelope,
    decode_sqs_body,
    decode_task,
)

from . import serve

__all__ = ["main"]


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


def _seconds(text: str | None) -> float | None:
    """A positive number of seconds from a flag or variable; ``ValueError`` otherwise."""
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"visibility timeout must be a positive number of seconds, not {text!r}")
    return seconds


def _cmd_worker(args: argparse.Namespace) -> int:
    environ = os.environ
    queues = args.queues or serve.first_env(environ, "WORKER_QUEUES", "CELERIAC_QUEUES") or "celery"
    concurrency = args.concurrency or int(
        serve.first_env(environ, "CELERIAC_CONCURRENCY", "WORKER_CONCURRENCY")
        or os.cpu_count()
        or 1
    )
    if args.prefetch_multiplier != 1:
        print(
            "celeriac: --prefetch-multiplier is always 1 here (one message per free slot); "
            f"ignoring {args.prefetch_multiplier}",
            file=sys.stderr,
        )
    serve.configure_logging(
        args.loglevel, args.log_format or ("console" if sys.stderr.isatty() else "json")
    )
    try:
        visibility_timeout = _seconds(
            args.visibility_timeout or serve.first_env(environ, "CELERIAC_VISIBILITY_TIMEOUT")
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
    )
    if not options.app_path:
        print("celeriac: worker needs -A module:app (or CELERIAC_APP)", file=sys.stderr)
        return 2
    try:
        return serve.serve(options)
    except (serve.UsageError, ValueError, OSError) as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
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
    worker.add_argument("-Q", "--queues", help="queues to consume, comma-separated (WORKER_QUEUES)")
    worker.add_argument("-c", "--concurrency", type=int, help="task slots (default: CPU count)")
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
    worker.add_argument("--queue-limits-file", help="TOML file of [queues.<name>] soft/hard limits")
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
    worker.set_defaults(run=_cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``celeriac`` command line; return its exit status."""
    args = _parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
