"""Decode Celery task messages (protocol v2 and v1) and encode protocol v2.

Version detection follows Celery's consumer (``Consumer.create_task_handler``): a ``task``
header means protocol v2, whose body is ``[args, kwargs, embed]``; a v2 header over a dict body
with ``args`` is the "hybrid" form, read from the body; no ``task`` header and a dict body with
a ``task`` key is protocol v1. Anything else is not a task message.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from . import _fields, serialization
from .errors import MalformedMessage
from .limits import DEFAULT_LIMITS, Limits, check_depth, json_nests_within
from .serialization import DEFAULT_ACCEPT, AcceptPolicy
from .signature import Signature
from .task import TaskMessage
from .wire import WireMessage

__all__ = ["KNOWN_HEADERS", "decode_task", "encode_task"]

# Every header Celery 5.7's ``as_task_v2`` writes, in its order; the rest are custom headers.
KNOWN_HEADERS = (
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
)  # fmt: skip
# Headers that transports or kombu add and that are not task metadata.
_TRANSPORT_HEADERS = frozenset(("compression", "redelivered"))
_NOT_CUSTOM = frozenset(KNOWN_HEADERS) | _TRANSPORT_HEADERS | {"meth", "utc", "taskset"}

# argsrepr/kwargsrepr: Celery cuts them at 1024 characters and three levels of nesting.
_REPR_MAX = 1024
_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = _repr.maxother = _repr.maxlong = _REPR_MAX
_repr.maxtuple = _repr.maxlist = _repr.maxdict = _repr.maxset = _REPR_MAX


def _saferepr(value: Any) -> str:
    return _repr.repr(value)[:_REPR_MAX]


def decode_task(
    message: WireMessage,
    *,
    accept: AcceptPolicy = DEFAULT_ACCEPT,
    limits: Limits = DEFAULT_LIMITS,
) -> TaskMessage:
    """Decode and check one task message; raise :class:`MalformedMessage` if it is not one."""
    if message.headers_checked_with is limits:  # checked and copied by the envelope decoder
        headers = message.headers
    else:
        headers = _fields.mapping(message.headers, "headers")
        limits.check_headers(headers)
    properties = _fields.readable_mapping(message.properties, "properties")
    body = message.body
    compression = headers.get("compression")
    if compression is not None:
        body = serialization.decompress(
            body, _fields.text(compression, "headers.compression"), limits=limits
        )
    payload = serialization.loads(
        body, message.content_type, message.content_encoding, accept=accept, limits=limits
    )
    if message.content_type != serialization.JSON or not json_nests_within(body, limits.max_depth):
        check_depth(payload, limits.max_depth, field="body")

    if "task" in headers:
        if isinstance(payload, Mapping) and "args" in payload:
            fields = {**payload, **headers}  # hybrid: body fields, overridden by headers
            return _from_fields(fields, fields, headers, properties, protocol=2, v1_body=payload)
        if not isinstance(payload, list | tuple) or len(payload) != 3:
            raise MalformedMessage("protocol v2 body must be [args, kwargs, embed]", field="body")
        args, kwargs, embed = payload
        links = _fields.readable_mapping(embed, "body.embed", null_is_empty=True)
        return _from_fields(headers, links, headers, properties, protocol=2, body=(args, kwargs))
    if isinstance(payload, Mapping) and "task" in payload:
        return _from_fields(payload, payload, headers, properties, protocol=1, v1_body=payload)
    raise MalformedMessage("not a Celery task message: no task header and no v1 body")


def _signatures(value: Any, field: str) -> tuple[Signature, ...]:
    if value is None:
        return ()
    return tuple(
        Signature.from_wire(item, f"{field}[{i}]")
        for i, item in enumerate(_fields.sequence(value, field))
    )


def _timelimit(value: Any) -> tuple[float | None, float | None]:
    if value is None:
        return (None, None)
    pair = _fields.sequence(value, "headers.timelimit")
    if len(pair) != 2:
        raise MalformedMessage("must be [hard, soft]", field="headers.timelimit")
    return (
        _fields.optional_seconds(pair[0], "headers.timelimit[0]"),
        _fields.optional_seconds(pair[1], "headers.timelimit[1]"),
    )


def _from_fields(
    fields: Mapping[str, Any],
    links: Mapping[str, Any],
    headers: Mapping[str, Any],
    properties: Mapping[str, Any],
    *,
    protocol: int,
    body: tuple[Any, Any] | None = None,
    v1_body: Mapping[str, Any] | None = None,
) -> TaskMessage:
    """The message from its sources, each read as it is (no merged copy): ``fields``, the
    task's metadata (protocol v2's headers, else the body); ``links``, where ``callbacks``,
    ``errbacks``, ``chain`` and ``chord`` are (v2's embed); ``body``, v2's args and kwargs
    (else they are in ``fields``)."""
    where = "headers" if v1_body is None else "body"

    get = fields.get
    args, kwargs = (get("args"), get("kwargs")) if body is None else body

    hard, soft = _timelimit(get("timelimit"))
    group = get("group")
    if group is None and v1_body is not None:
        group = v1_body.get("taskset")  # protocol v1's old name for the group id
    chord = links.get("chord")
    # Held while the task runs, so each string is kept once: a root task's root_id and
    # correlation_id are its id, and short strings repeat from message to message.
    task_id = _fields.name(get("id"), f"{where}.id")
    return TaskMessage(
        id=task_id,
        task=_fields.shared_text(_fields.name(get("task"), f"{where}.task")),
        args=_fields.sequence(args, "args", null_is_empty=True),
        kwargs=_fields.mapping(kwargs, "kwargs", null_is_empty=True),
        retries=_fields.integer(
            _fields.or_default(get("retries"), 0), f"{where}.retries", minimum=0
        ),
        eta=_fields.timestamp(get("eta"), f"{where}.eta"),
        expires=_fields.timestamp(get("expires"), f"{where}.expires"),
        time_limit=hard,
        soft_time_limit=soft,
        root_id=_fields.same_or(_fields.optional_text(get("root_id"), f"{where}.root_id"), task_id),
        parent_id=_fields.optional_text(get("parent_id"), f"{where}.parent_id"),
        group_id=_fields.optional_text(group, f"{where}.group"),
        group_index=_fields.optional_integer(get("group_index"), f"{where}.group_index"),
        shadow=_fields.optional_shared(get("shadow"), f"{where}.shadow"),
        callbacks=_signatures(links.get("callbacks"), "callbacks"),
        errbacks=_signatures(links.get("errbacks"), "errbacks"),
        chain=_signatures(links.get("chain"), "chain"),
        chord=None if chord is None else Signature.from_wire(chord, "chord"),
        reply_to=_fields.optional_text(properties.get("reply_to"), "properties.reply_to"),
        correlation_id=_fields.same_or(
            _fields.optional_text(properties.get("correlation_id"), "properties.correlation_id"),
            task_id,
        ),
        priority=_fields.optional_integer(
            properties.get("priority"), "properties.priority", minimum=0
        ),
        ignore_result=_fields.optional_flag(get("ignore_result"), f"{where}.ignore_result"),
        origin=_fields.optional_shared(get("origin"), f"{where}.origin"),
        argsrepr=_fields.optional_shared(get("argsrepr"), f"{where}.argsrepr"),
        kwargsrepr=_fields.optional_shared(get("kwargsrepr"), f"{where}.kwargsrepr"),
        replaced_task_nesting=_fields.integer(
            _fields.or_default(get("replaced_task_nesting"), 0),
            f"{where}.replaced_task_nesting",
            minimum=0,
        ),
        stamped_headers=_fields.optional_strings(
            get("stamped_headers"), f"{where}.stamped_headers"
        ),
        stamps=_fields.mapping(get("stamps"), f"{where}.stamps", null_is_empty=True),
        lang=_fields.shared_text(
            _fields.text(_fields.or_default(get("lang"), "py"), f"{where}.lang")
        ),
        headers=_custom(headers),
        protocol=protocol,
    )


def _custom(headers: Mapping[str, Any]) -> Mapping[str, Any]:
    """The headers Celery does not define (a shared empty mapping when there are none, as in
    most messages)."""
    if _NOT_CUSTOM.issuperset(headers):  # at C speed, making nothing: most messages have none
        return _fields.EMPTY
    return MappingProxyType({k: v for k, v in headers.items() if k not in _NOT_CUSTOM})


def encode_task(
    task: TaskMessage,
    *,
    serializer: str = "json",
    compression: str | None = None,
    now: datetime | None = None,
) -> WireMessage:
    """Encode ``task`` as Celery 5.7's ``as_task_v2`` and kombu's producer would.

    ``now`` (aware) is needed only to set the AMQP ``expiration`` property from ``expires``,
    as Celery does since 5.5; the protocol layer reads no clock of its own. Raises
    :class:`~protocol.EncodeError` if an argument cannot be serialised.
    """
    embed = {
        "callbacks": [s.to_dict() for s in task.callbacks] or None,
        "errbacks": [s.to_dict() for s in task.errbacks] or None,
        "chain": [s.to_dict() for s in task.chain] or None,
        "chord": task.chord.to_dict() if task.chord is not None else None,
    }
    body, content_type, content_encoding = serialization.dumps(
        (task.args, task.kwargs, embed), serializer
    )
    headers: dict[str, Any] = {
        "lang": task.lang,
        "task": task.task,
        "id": task.id,
        "shadow": task.shadow,
        "eta": task.eta.isoformat() if task.eta else None,
        "expires": task.expires.isoformat() if task.expires else None,
        "group": task.group_id,
        "group_index": task.group_index,
        "retries": task.retries,
        "timelimit": [task.time_limit, task.soft_time_limit],
        "root_id": task.root_id or task.id,
        "parent_id": task.parent_id,
        "argsrepr": task.argsrepr if task.argsrepr is not None else _saferepr(task.args),
        "kwargsrepr": task.kwargsrepr
        if task.kwargsrepr is not None
        else _saferepr(dict(task.kwargs)),
        "origin": task.origin,
        "ignore_result": task.ignore_result,
        "replaced_task_nesting": task.replaced_task_nesting,
        "stamped_headers": list(task.stamped_headers) if task.stamped_headers else None,
        "stamps": dict(task.stamps),
        **task.headers,
    }
    if compression is not None:
        body, headers["compression"] = serialization.compress(body, compression)
    properties: dict[str, Any] = {
        "correlation_id": task.correlation_id or task.id,
        "reply_to": task.reply_to or "",
        "delivery_mode": 2,
        "priority": task.priority or 0,
    }
    if task.expires is not None and now is not None:
        remaining = max((task.expires - now).total_seconds(), 0.0)
        properties["expiration"] = str(int(remaining * 1000))
    return WireMessage(
        body=body,
        content_type=content_type,
        content_encoding=content_encoding,
        headers=headers,
        properties=properties,
    )
