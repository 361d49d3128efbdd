"""The ``celeriac`` command line.

``celeriac decode`` reads one message from standard input (kombu's Redis JSON envelope, or an
SQS ``MessageBody``) and prints the task it carries as JSON, or the reason it is malformed:
the tool for looking at a message a worker refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import version
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``celeriac`` command line; return its exit status."""
    args = _parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
