"""What Celery's ``send_task`` makes of a signature's options: the task message and its queue.

``as_task_v2`` in ``celery/app/amqp.py`` names the fields; option values come from other
processes' messages, so each is checked and a wrong one raises :class:`CanvasError`.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from protocol import Signature, TaskMessage

from .signatures import CanvasError, as_signature, signatures

__all__ = ["Context", "message_for", "queue_of", "serializer_of", "without_none"]


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """Where signatures are applied.

    ``parent`` is the task running meanwhile, if any: messages without their own
    ``parent_id``/``root_id`` become its children, as Celery's ``send_task`` does inside a
    task. ``task_options(name)`` gives a locally registered task's own execution options
    (``queue``, ``priority``, ``serializer``, ``time_limit``, ``soft_time_limit``,
    ``ignore_result``); ``None`` for a task this process does not know.
    ``check_arguments(name, args, kwargs)`` raises ``TypeError`` if they do not fit a local
    task (Celery's ``Task.apply_async`` checks them before sending, ``typing=True``).
    """

    default_queue: str = "celery"
    reply_to: str = ""
    origin: str = field(default_factory=lambda: f"gen{os.getpid()}@{socket.gethostname()}")
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    parent: TaskMessage | None = None
    task_options: Callable[[str], Mapping[str, Any] | None] = lambda name: None
    check_arguments: Callable[[str, tuple[Any, ...], Mapping[str, Any]], None] = (
        lambda name, args, kwargs: None
    )
    new_id: Callable[[], str] = _new_id


def message_for(sig: Signature, opts: Mapping[str, Any], context: Context) -> TaskMessage:
    """The message for task signature ``sig`` (its arguments final) with options ``opts``."""
    task_id = _text(opts.get("task_id"), "task_id") or context.new_id()
    root_id = _text(opts.get("root_id"), "root_id")
    parent_id = _text(opts.get("parent_id"), "parent_id")
    if context.parent is not None:
        root_id = root_id or context.parent.root_id or context.parent.id
        parent_id = parent_id or context.parent.id
    countdown = _number(opts.get("countdown"), "countdown")
    eta = (
        context.now + timedelta(seconds=countdown)
        if countdown
        else _when(opts.get("eta"), "eta", context.now)
    )
    stamped = opts.get("stamped_headers")
    stamped_headers = None if not stamped else tuple(str(h) for h in stamped)
    headers = opts.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise CanvasError(f"option headers: expected a mapping, got {headers!r}")
    chord_body = opts.get("chord")
    ignore_result = opts.get("ignore_result")
    return TaskMessage(
        id=task_id,
        task=sig.task,
        args=tuple(sig.args),
        kwargs=dict(sig.kwargs),
        retries=_integer(opts.get("retries"), "retries") or 0,
        eta=eta,
        expires=_when(opts.get("expires"), "expires", context.now),
        time_limit=_number(opts.get("time_limit"), "time_limit"),
        soft_time_limit=_number(opts.get("soft_time_limit"), "soft_time_limit"),
        root_id=root_id,
        parent_id=parent_id,
        group_id=_text(opts.get("group_id"), "group_id"),
        group_index=_integer(opts.get("group_index"), "group_index"),
        shadow=_text(opts.get("shadow"), "shadow"),
        callbacks=signatures(opts.get("link"), "link"),
        errbacks=signatures(opts.get("link_error"), "link_error"),
        chain=signatures(opts.get("chain"), "chain"),
        chord=None if chord_body is None else as_signature(chord_body, "chord"),
        reply_to=_text(opts.get("reply_to"), "reply_to") or context.reply_to,
        correlation_id=task_id,
        priority=_integer(opts.get("priority"), "priority"),
        ignore_result=None if ignore_result is None else bool(ignore_result),
        origin=context.origin,
        replaced_task_nesting=_integer(opts.get("replaced_task_nesting"), "nesting") or 0,
        stamped_headers=stamped_headers,
        stamps={h: opts[h] for h in stamped_headers or () if h in opts},
        headers=dict(headers),
    )


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CanvasError(f"option {name}: expected a number, got {value!r}")
    return float(value)


def _integer(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CanvasError(f"option {name}: expected an integer, got {value!r}")
    return value


def _text(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CanvasError(f"option {name}: expected a string, got {value!r}")
    return value


def _when(value: Any, name: str, now: datetime) -> datetime | None:
    """An absolute time: a datetime, an ISO 8601 string, or seconds from ``now``."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise CanvasError(f"option {name}: not an ISO 8601 time: {value!r}") from None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    seconds = _number(value, name)
    assert seconds is not None
    return now + timedelta(seconds=seconds)


def serializer_of(options: Mapping[str, Any]) -> str | None:
    """The ``serializer`` option, if given."""
    return _text(options.get("serializer"), "serializer")


def queue_of(options: Mapping[str, Any]) -> str | None:
    """The queue the options route to (``queue``, else ``routing_key``), if any."""
    queue = options.get("queue")
    if isinstance(queue, Mapping):  # a kombu Queue as some serialisers write it
        queue = queue.get("name")
    return _text(queue, "queue") or _text(options.get("routing_key"), "routing_key")


def without_none(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}
