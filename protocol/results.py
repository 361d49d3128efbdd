"""Result-backend records exactly as Celery's Redis backend stores them.

A task's record lives under ``celery-task-meta-<id>`` (``SETEX`` then ``PUBLISH`` of the same
bytes on a channel of the same name); a saved group under ``celery-taskset-meta-<id>``. The key
order of :func:`encode_result` is Celery's (``BaseBackend._get_result_meta`` then ``task_id``),
so the bytes are the ones a Celery worker would write for the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from . import _fields, serialization
from .errors import MalformedMessage
from .excinfo import ExceptionInfo
from .limits import DEFAULT_LIMITS, Limits, check_depth
from .serialization import DEFAULT_ACCEPT, AcceptPolicy
from .states import EXCEPTION_STATES, State

__all__ = [
    "COMPRESSED_MAGIC",
    "ChordPart",
    "ExtendedInfo",
    "ResultKeys",
    "ResultMeta",
    "ResultRef",
    "decode_chord_part",
    "decode_group",
    "decode_result",
    "encode_chord_part",
    "encode_group",
    "encode_result",
]

# Celery 5.7 prefixes compressed result values with this, then the compression type and NUL.
COMPRESSED_MAGIC = b"\x00celery-compressed\x00"


@dataclass(frozen=True, slots=True)
class ResultKeys:
    """Key names of the Redis result backend, with an optional ``global_keyprefix``.

    Celery appends ``_`` to the prefix unless it already ends in one of ``:_-.``.
    """

    global_keyprefix: str = ""

    @property
    def _prefix(self) -> str:
        prefix = self.global_keyprefix
        if prefix and prefix[-1] not in ":_-.":
            prefix += "_"
        return prefix

    def task(self, task_id: str) -> str:
        """The key (and PUBLISH channel) of one task's result."""
        return f"{self._prefix}celery-task-meta-{task_id}"

    def group(self, group_id: str) -> str:
        """The key of a saved group result."""
        return f"{self._prefix}celery-taskset-meta-{group_id}"

    @property
    def revoked(self) -> str:
        """celeriac's sorted set of revoked task ids, each scored by when it expires (Unix
        time); Celery keeps its revoked ids in worker memory only."""
        return f"{self._prefix}celeriac-revoked"

    def chord(self, group_id: str, part: str) -> str:
        """A chord bookkeeping key: ``part`` is ``j``, ``t``, ``s``, ``d`` or ``c``."""
        return f"{self.group(group_id)}.{part}"


@dataclass(frozen=True, slots=True)
class ResultRef:
    """A reference to a result, Celery's ``as_tuple()`` form: id, parent, and group members.

    ``children`` is ``None`` for a plain task result and a tuple for a group result.
    """

    id: str
    parent: ResultRef | None = None
    children: tuple[ResultRef, ...] | None = None

    def to_wire(self) -> list[Any]:
        """``[[id, parent], members]`` as Celery serialises ``AsyncResult``/``GroupResult``."""
        parent = self.parent.to_wire() if self.parent else None
        members = None if self.children is None else [c.to_wire() for c in self.children]
        return [[self.id, parent], members]

    @classmethod
    def from_wire(cls, value: Any, field: str) -> ResultRef:
        """Validate a result tuple (``celery.result.result_from_tuple``'s input)."""
        pair = _fields.sequence(value, field)
        if len(pair) != 2:
            raise MalformedMessage("a result reference is [[id, parent], members]", field=field)
        head, members = pair
        if isinstance(head, list | tuple):
            if len(head) != 2:
                raise MalformedMessage("expected [id, parent]", field=field)
            ref_id, parent = head
        else:
            ref_id, parent = head, None
        return cls(
            id=_fields.name(ref_id, f"{field}.id"),
            parent=None if not parent else cls.from_wire(parent, f"{field}.parent"),
            children=None
            if members is None
            else tuple(
                cls.from_wire(m, f"{field}[{i}]")
                for i, m in enumerate(_fields.sequence(members, field))
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtendedInfo:
    """The request fields ``result_extended=True`` adds to a record."""

    name: str | None = None
    args: Any = None
    kwargs: Any = None
    worker: str | None = None
    retries: int | None = None
    queue: str | None = None
    stamped_headers: tuple[str, ...] | None = None
    stamps: Mapping[str, Any] = field(default_factory=_fields.empty_mapping)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultMeta:
    """One task's record in the result backend.

    For RETRY, FAILURE and REVOKED ``result`` is an :class:`ExceptionInfo`; otherwise it is the
    task's return value (or, for STARTED, ``{"pid": ..., "hostname": ...}``).
    """

    task_id: str
    status: State
    result: Any = None
    traceback: str | None = None
    children: tuple[ResultRef, ...] | None = ()
    date_done: datetime | None = None
    group_id: str | None = None
    parent_id: str | None = None
    extended: ExtendedInfo | None = None

    @property
    def exception(self) -> ExceptionInfo | None:
        """The stored exception for RETRY, FAILURE and REVOKED, else ``None``."""
        return self.result if isinstance(self.result, ExceptionInfo) else None


def encode_result(
    meta: ResultMeta, *, serializer: str = "json", compression: str | None = None
) -> bytes:
    """Serialise ``meta`` as Celery's backend would (``_get_result_meta`` + ``task_id``)."""
    result = meta.result.to_dict() if isinstance(meta.result, ExceptionInfo) else meta.result
    document: dict[str, Any] = {
        "status": meta.status.value,
        "result": result,
        "traceback": meta.traceback,
        "children": None if meta.children is None else [c.to_wire() for c in meta.children],
        "date_done": meta.date_done.isoformat() if meta.date_done else None,
    }
    if meta.group_id:
        document["group_id"] = meta.group_id
    if meta.parent_id:
        document["parent_id"] = meta.parent_id
    if meta.extended is not None:
        ext = meta.extended
        document.update(
            name=ext.name,
            args=ext.args,
            kwargs=ext.kwargs,
            worker=ext.worker,
            retries=ext.retries,
            queue=ext.queue,
        )
        if ext.stamps:
            document["stamped_headers"] = list(ext.stamped_headers or ())
            document.update(
                {k: v for k, v in ext.stamps.items() if k in (ext.stamped_headers or ())}
            )
    document["task_id"] = meta.task_id
    return _serialize(document, serializer, compression)


def _serialize(document: Any, serializer: str, compression: str | None) -> bytes:
    body, _, _ = serialization.dumps(document, serializer)
    if compression is None:
        return body
    data, content_type = serialization.compress(body, compression)
    return COMPRESSED_MAGIC + content_type.encode("ascii") + b"\x00" + data


def _deserialize(data: bytes, serializer: str, accept: AcceptPolicy, limits: Limits) -> Any:
    if data.startswith(COMPRESSED_MAGIC):
        content_type, sep, rest = data[len(COMPRESSED_MAGIC) :].partition(b"\x00")
        if not sep:
            raise MalformedMessage("compressed result has no content type", field="result")
        data = serialization.decompress(
            rest, content_type.decode("ascii", "replace"), limits=limits
        )
    chosen = serialization.serializer_for(serializer)
    value = serialization.loads(
        data,
        chosen.content_type,
        chosen.content_encoding,
        accept=accept,
        limits=limits,
    )
    check_depth(value, limits.max_depth, field="result")
    return value


def _state(value: Any, field: str) -> State:
    try:
        return State(_fields.text(value, field))
    except ValueError:
        raise MalformedMessage(f"unknown state {_fields.short(value)}", field=field) from None


def _outcome(status: State, result: Any, field: str) -> Any:
    """The stored result; an :class:`ExceptionInfo` for an exception state."""
    if status in EXCEPTION_STATES and result:  # Celery too reads a falsy one as no exception
        return ExceptionInfo.from_wire(result, field)
    return result


_EXTENDED_KEYS = frozenset(("name", "args", "kwargs", "worker", "retries", "queue"))


def decode_result(
    data: bytes,
    *,
    serializer: str = "json",
    accept: AcceptPolicy = DEFAULT_ACCEPT,
    limits: Limits = DEFAULT_LIMITS,
) -> ResultMeta:
    """Parse a stored task record; raise :class:`MalformedMessage` if it is not one.

    ``accept`` is Celery's ``result_accept_content``: pickle is refused unless listed.
    """
    raw = _fields.mapping(_deserialize(data, serializer, accept, limits), "result")
    status = _state(raw.get("status"), "status")
    result = _outcome(status, raw.get("result"), "result")
    children = raw.get("children")
    extended = None
    if raw.keys() >= _EXTENDED_KEYS:
        stamped_headers = _fields.optional_strings(raw.get("stamped_headers"), "stamped_headers")
        extended = ExtendedInfo(
            name=_fields.optional_text(raw["name"], "name"),
            args=raw["args"],
            kwargs=raw["kwargs"],
            worker=_fields.optional_text(raw["worker"], "worker"),
            retries=_fields.optional_integer(raw["retries"], "retries"),
            queue=_fields.optional_text(raw["queue"], "queue"),
            stamped_headers=stamped_headers,
            stamps=MappingProxyType({k: raw[k] for k in stamped_headers or () if k in raw}),
        )
    return ResultMeta(
        task_id=_fields.name(raw.get("task_id"), "task_id"),
        status=status,
        result=result,
        traceback=_fields.optional_text(raw.get("traceback"), "traceback"),
        children=None
        if children is None
        else tuple(
            ResultRef.from_wire(c, f"children[{i}]")
            for i, c in enumerate(_fields.sequence(children, "children"))
        ),
        date_done=_fields.timestamp(raw.get("date_done"), "date_done"),
        group_id=_fields.optional_text(raw.get("group_id"), "group_id"),
        parent_id=_fields.optional_text(raw.get("parent_id"), "parent_id"),
        extended=extended,
    )


def encode_group(group: ResultRef, *, serializer: str = "json") -> bytes:
    """A saved group record, ``{"result": group.as_tuple()}`` as ``GroupResult.save()`` writes."""
    if group.children is None:
        raise ValueError("a group record needs a ResultRef with children")
    return _serialize({"result": group.to_wire()}, serializer, None)


def decode_group(
    data: bytes,
    *,
    serializer: str = "json",
    accept: AcceptPolicy = DEFAULT_ACCEPT,
    limits: Limits = DEFAULT_LIMITS,
) -> ResultRef:
    """Parse a saved group record into its :class:`ResultRef` (children = members)."""
    raw = _fields.mapping(_deserialize(data, serializer, accept, limits), "group")
    ref = ResultRef.from_wire(raw.get("result"), "group.result")
    if ref.children is None:
        raise MalformedMessage("a group record lists its members", field="group.result")
    return ref


@dataclass(frozen=True, slots=True)
class ChordPart:
    """One header task's entry in a chord's ``.j`` sorted set, ``[1, task_id, state, result]``
    as Celery's Redis backend writes it (``on_chord_part_return``).

    For RETRY, FAILURE and REVOKED ``result`` is an :class:`ExceptionInfo`.
    """

    task_id: str
    status: State
    result: Any = None

    @property
    def exception(self) -> ExceptionInfo | None:
        """The stored exception for an exception state, else ``None``."""
        return self.result if isinstance(self.result, ExceptionInfo) else None


def encode_chord_part(part: ChordPart, *, serializer: str = "json") -> bytes:
    """The bytes Celery stores for ``part`` (the result as ``encode_result`` would store it)."""
    result = part.result.to_dict() if isinstance(part.result, ExceptionInfo) else part.result
    return _serialize([1, part.task_id, part.status.value, result], serializer, None)


def decode_chord_part(
    data: bytes,
    *,
    serializer: str = "json",
    accept: AcceptPolicy = DEFAULT_ACCEPT,
    limits: Limits = DEFAULT_LIMITS,
) -> ChordPart:
    """Parse one ``.j`` entry; raise :class:`MalformedMessage` if it is not one."""
    raw = _fields.sequence(_deserialize(data, serializer, accept, limits), "chord part")
    if len(raw) != 4:
        raise MalformedMessage("a chord part is [1, task_id, state, result]", field="chord part")
    _, task_id, status_name, result = raw
    status = _state(status_name, "chord part.state")
    result = _outcome(status, result, "chord part.result")
    return ChordPart(_fields.name(task_id, "chord part.task_id"), status, result)
