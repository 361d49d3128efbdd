"""Applying canvas signatures as Celery 5.7 does: which messages a signature becomes.

A :class:`Planner` applies a signature (a task, or a chain, group or chord of them) with
partial arguments and options, following ``apply_async`` of ``celery.canvas``'s ``Signature``,
``_chain``, ``group`` and ``_chord`` step by step, and records what has to happen, in order:
messages to publish, chord sizes to set, group results to save. It does no I/O (ids come from
``Context.new_id``, time from ``Context.now``); :mod:`runtime.workflow` carries a plan out.

Signatures are :class:`protocol.Signature` values. Inside them (a chain's ``tasks``, a chord's
``header`` and ``body``, the ``link``, ``link_error``, ``chain`` and ``chord`` options) other
signatures stay in their wire form, dicts, as Celery serialises them. Where Celery freezes a
signature in place (assigning ids), the planner returns the frozen copy instead.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from protocol import ResultRef, Signature, TaskMessage

__all__ = [
    "Action",
    "CanvasError",
    "Context",
    "Planner",
    "Publish",
    "SaveGroup",
    "SetChordSize",
    "chain",
    "chord",
    "group",
    "signatures",
]

CHAIN, GROUP, CHORD = "chain", "group", "chord"

# Options Celery never lets a later merge change (``Signature._IMMUTABLE_OPTIONS``).
_KEPT_OPTIONS = frozenset(("group_id", "stamped_headers"))
# Options a chain's run() consumes instead of passing them to its first task.
_CHAIN_RUN_OPTIONS = frozenset(
    ("chord", "group_id", "group_index", "link", "link_error", "parent_id", "root_id", "task_id")
)


class CanvasError(ValueError):
    """A signature that cannot be applied (an option of the wrong type, a link on a group)."""


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``message`` to ``queue`` (the routing key), encoded with ``serializer``
    (``None``: the app's task serializer)."""

    message: TaskMessage
    queue: str
    serializer: str | None = None


@dataclass(frozen=True, slots=True)
class SetChordSize:
    """Start a chord's bookkeeping: its header has ``size`` results to wait for."""

    group_id: str
    size: int


@dataclass(frozen=True, slots=True)
class SaveGroup:
    """Save a chord header's group result, because some members are groups themselves."""

    group: ResultRef


Action = Publish | SetChordSize | SaveGroup


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """Where a plan is made.

    ``parent`` is the task running while the plan is made, if any: messages without their own
    ``parent_id``/``root_id`` become its children, as Celery's ``send_task`` does inside a task.
    ``task_options(name)`` gives a locally registered task's own execution options (``queue``,
    ``priority``, ``serializer``, ``time_limit``, ``soft_time_limit``, ``ignore_result``);
    ``None`` for a task this process does not know.
    """

    default_queue: str = "celery"
    reply_to: str = ""
    origin: str = field(default_factory=lambda: f"gen{os.getpid()}@{socket.gethostname()}")
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    parent: TaskMessage | None = None
    task_options: Callable[[str], Mapping[str, Any] | None] = lambda name: None
    new_id: Callable[[], str] = _new_id


class _Result:
    """A frozen result as Celery links them: a task's or a group's id, its parent, members."""

    __slots__ = ("id", "members", "parent")

    def __init__(self, result_id: str, members: list[_Result] | None = None) -> None:
        self.id = result_id
        self.members = members
        self.parent: _Result | None = None

    def ref(self) -> ResultRef:
        return ResultRef(
            self.id,
            parent=self.parent.ref() if self.parent is not None else None,
            children=None if self.members is None else tuple(m.ref() for m in self.members),
        )


# -- building signatures ----------------------------------------------------------------


def _sig(value: Any, field: str = "signature") -> Signature:
    return value if isinstance(value, Signature) else Signature.from_wire(value, field)


def _wire(sig: Signature) -> dict[str, Any]:
    return sig.to_dict()


def signatures(value: Any, field: str = "signature") -> tuple[Signature, ...]:
    """One signature or a list of them (as ``link=`` takes either), as a tuple; ``None`` is
    none. Raises :class:`protocol.MalformedMessage` for something that is not a signature."""
    if value is None:
        return ()
    if isinstance(value, Signature | Mapping):
        return (_sig(value, field),)
    if isinstance(value, list | tuple):
        return tuple(_sig(item, f"{field}[{i}]") for i, item in enumerate(value))
    raise CanvasError(f"{field}: expected a signature or a list of them, got {value!r}")


def chain(*tasks: Signature, **options: Any) -> Signature:
    """Tasks run one after the other, each getting the result before it (``celery.chain``)."""
    return Signature("celery.chain", (), {"tasks": [_wire(t) for t in tasks]}, options, CHAIN)


def group(*tasks: Signature, **options: Any) -> Signature:
    """Tasks run in parallel; their results are read as one list (``celery.group``)."""
    return Signature("celery.group", (), {"tasks": [_wire(t) for t in tasks]}, options, GROUP)


def chord(header: Iterable[Signature], body: Signature, **options: Any) -> Signature:
    """A group whose results, in order, are passed as a list to ``body`` (``celery.chord``)."""
    kwargs = {"kwargs": {}, "header": [_wire(t) for t in header], "body": _wire(body)}
    return Signature("celery.chord", (), kwargs, options, CHORD)


def _members(sig: Signature) -> list[Signature]:
    tasks = sig.kwargs.get("tasks") or ()
    return [_sig(t, f"{sig.task}.tasks[{i}]") for i, t in enumerate(tasks)]


def _with_members(sig: Signature, members: Iterable[Signature]) -> Signature:
    return replace(sig, kwargs={**sig.kwargs, "tasks": [_wire(m) for m in members]})


def _header(sig: Signature) -> list[Signature]:
    """A chord's header as a list of signatures, as ``celery.canvas._maybe_group`` reads it:
    a group or chain gives its tasks, one signature itself."""
    header = sig.kwargs.get("header")
    if header is None:
        return []
    if isinstance(header, Signature | Mapping):
        inner = _sig(header, "chord.header")
        return _members(inner) if inner.subtask_type in (GROUP, CHAIN) else [inner]
    return [_sig(t, f"chord.header[{i}]") for i, t in enumerate(header)]


def _body(sig: Signature) -> Signature | None:
    body = sig.kwargs.get("body")
    return None if body is None else _sig(body, "chord.body")


def _with_body(sig: Signature, body: Signature) -> Signature:
    return replace(sig, kwargs={**sig.kwargs, "body": _wire(body)})


def _with_options(sig: Signature, **options: Any) -> Signature:
    return replace(sig, options={**sig.options, **options})


def _merge(
    sig: Signature,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Signature:
    """``Signature._merge``: partial args go first, kwargs and options are merged, except
    that an immutable signature keeps its own arguments and some options are never changed."""
    merged = dict(sig.options)
    if options:
        kept = _KEPT_OPTIONS | set(sig.options.get("stamped_headers") or ())
        merged.update((k, v) for k, v in options.items() if k not in kept or k not in merged)
    if sig.immutable:
        return replace(sig, options=merged)
    return replace(
        sig, args=(*args, *sig.args), kwargs={**sig.kwargs, **(kwargs or {})}, options=merged
    )


def _prepend(sig: Signature, args: Sequence[Any]) -> Signature:
    return replace(sig, args=(*args, *sig.args))


def _head_spliced(steps: deque[Signature]) -> deque[Signature]:
    """A chain's steps with the first real task first: nested chains at the head spliced in,
    empty groups there dropped (one kept if nothing else is left), so that the partial
    arguments reach a task."""
    stripped = None
    while steps:
        head = steps[0]
        if head.subtask_type == CHAIN:
            steps.popleft()
            steps.extendleft(reversed(_members(head)))
            continue
        if _is_group(head):
            head = steps[0] = _unroll_single(head)
            if len(steps) > 1 and _is_empty_group(head):
                stripped = steps.popleft()
                continue
        break
    if stripped is not None and not steps:
        steps.append(stripped)
    return steps


def _step(
    task: Signature, steps: deque[Signature], *, clone: bool, skip_empty: bool
) -> Signature | None:
    """A chain step as it is frozen, or ``None`` if it is skipped (an empty group) or
    unrolled into ``steps`` (a chord whose body is a chain led by a task)."""
    if _is_group(task):
        task = _unroll_single(task)
        if _is_empty_group(task) and skip_empty:
            return None
    if clone and task.subtask_type == CHORD and _led_by_task(_body(task)):
        steps.extend(_unroll_body(task))
        return None
    return task


def _is_group(sig: Signature) -> bool:
    return sig.subtask_type == GROUP


def _is_empty_group(sig: Signature) -> bool:
    return _is_group(sig) and not sig.kwargs.get("tasks")


def _unroll_single(sig: Signature) -> Signature:
    """A group of one task is that task (``maybe_unroll_group``)."""
    if _is_group(sig):
        members = _members(sig)
        if len(members) == 1:
            return members[0]
    return sig


def _led_by_task(body: Signature | None) -> bool:
    if body is None or body.subtask_type != CHAIN:
        return False
    members = _members(body)
    return bool(members) and not _is_group(members[0])


def _append_option(sig: Signature, key: str, value: Signature) -> Signature:
    """Add ``value`` to the list option ``key`` unless it is there (``append_to_list_option``)."""
    items = [_wire(s) for s in signatures(sig.options.get(key), key)]
    wire = _wire(value)
    if wire not in items:
        items.append(wire)
    return _with_options(sig, **{key: items})


def _link(sig: Signature, callback: Signature) -> Signature:
    """``sig.link(callback)`` for each kind of signature."""
    if sig.subtask_type == GROUP:
        # Celery links a group's callback to its first task only, made immutable.
        first, *rest = _members(sig)
        return _with_members(sig, [_link(first, callback.set(immutable=True)), *rest])
    if sig.subtask_type == CHORD:
        body = _body(sig)
        return sig if body is None else _with_body(sig, _link(body, callback))
    return _append_option(sig, "link", callback)


def _link_error(sig: Signature, errback: Signature) -> Signature:
    """``sig.link_error(errback)``: a group's tasks each get it, a chord's body gets it."""
    if sig.subtask_type == GROUP:
        return _with_members(sig, [_link_error(m, errback) for m in _members(sig)])
    if sig.subtask_type == CHORD:
        body = _body(sig)
        return sig if body is None else _with_body(sig, _link_error(body, errback))
    return _append_option(sig, "link_error", errback)


def _link_error_to_body_tasks(
    sig: Signature, errback: Signature, *, runs_as_group: bool = True
) -> Signature:
    """An errback for a chord's group body: on its tasks, or on the group's own
    ``link_error`` if it has one (which, when the group runs, replaces its tasks' own)."""
    if sig.subtask_type == GROUP:
        if runs_as_group and sig.options.get("link_error") is not None:
            return _append_option(sig, "link_error", errback)
        members = _members(sig)
        return _with_members(
            sig, [_link_error_to_body_tasks(m, errback, runs_as_group=False) for m in members]
        )
    if sig.subtask_type == CHORD:
        body = _body(sig)
        return sig if body is None else _with_body(sig, _link_error_to_body_tasks(body, errback))
    return _link_error(sig, errback)


def _clear_chord_option(sig: Signature) -> Signature:
    """Remove the chord callback from the terminal tasks of ``sig``."""
    sig = replace(sig, options={k: v for k, v in sig.options.items() if k != "chord"})
    if sig.subtask_type == GROUP:
        return _with_members(sig, [_clear_chord_option(m) for m in _members(sig)])
    if sig.subtask_type == CHAIN:
        members = _members(sig)
        if members:
            return _with_members(sig, [*members[:-1], _clear_chord_option(members[-1])])
    if sig.subtask_type == CHORD:
        body = _body(sig)
        if body is not None:
            return _with_body(sig, _clear_chord_option(body))
    return sig


def _strip_chord_header_links(sig: Signature) -> Signature:
    """Drop the copies of a pending chord's body from its header tasks: the chord carries the
    body itself and puts it back on the header when it runs (message size, nested chords)."""
    if sig.subtask_type == CHORD:
        header = [_strip_chord_header_links(_clear_chord_option(m)) for m in _header(sig)]
        raw = sig.kwargs.get("header")
        if isinstance(raw, Signature | Mapping) and _sig(raw).subtask_type == GROUP:
            stripped: Any = _wire(_clear_chord_option(_with_members(_sig(raw), header)))
        else:
            stripped = [_wire(m) for m in header]
        sig = replace(sig, kwargs={**sig.kwargs, "header": stripped})
        body = _body(sig)
        return sig if body is None else _with_body(sig, _strip_chord_header_links(body))
    if sig.subtask_type in (GROUP, CHAIN):
        return _with_members(sig, [_strip_chord_header_links(m) for m in _members(sig)])
    return sig


def _unchain_tasks(sig: Signature) -> list[Signature]:
    """A chain's tasks, its callbacks on the last one and its errbacks on each."""
    tasks = _members(sig)
    for callback in signatures(sig.options.get("link"), "link"):
        tasks[-1] = _append_option(tasks[-1], "link", callback)
    for errback in signatures(sig.options.get("link_error"), "link_error"):
        tasks = [_append_option(t, "link_error", errback) for t in tasks]
    return tasks


def _unroll_body(sig: Signature) -> list[Signature]:
    """``chord(header, chain(a, b, c))`` as ``chord(header, a), b, c``: every header task
    carries the body, so the body should not carry the rest of the chain."""
    body = _body(sig)
    assert body is not None
    first, *rest = _unchain_tasks(body)
    passed_on = {k: v for k, v in body.options.items() if k not in _CHAIN_RUN_OPTIONS}
    return [_with_body(sig, _merge(first, options=passed_on)), *rest]


def _unroll_chords(sig: Signature) -> Signature:
    """A chain with the task-led chain bodies of its chords split into chain steps."""
    pending = deque(_members(sig))
    tasks: list[Signature] = []
    while pending:
        task = pending.popleft()
        if task.subtask_type == CHAIN:
            task = _unroll_chords(task)
        if task.subtask_type == CHORD and _led_by_task(_body(task)):
            pending.extendleft(reversed(_unroll_body(task)))
        else:
            tasks.append(task)
    return _with_members(sig, tasks)


def _descend(sig: Signature) -> int:
    """How many results a signature adds to a chord's header (``_chord._descend``)."""
    if sig.subtask_type == GROUP:
        return sum(_descend(m) for m in _members(sig))
    if sig.subtask_type == CHAIN:
        # The last step that yields anything counts.
        return next((n for m in reversed(_members(sig)) if (n := _descend(m)) > 0), 0)
    if sig.subtask_type == CHORD:
        body = _body(sig)
        return 0 if body is None else _descend(body)
    return 1


# -- option values --------------------------------------------------------------------


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


def _queue(options: Mapping[str, Any]) -> str | None:
    queue = options.get("queue")
    if isinstance(queue, Mapping):  # a kombu Queue as some serialisers write it
        queue = queue.get("name")
    return _text(queue, "queue") or _text(options.get("routing_key"), "routing_key")


def _without_none(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


# -- the planner ------------------------------------------------------------------------


class Planner:
    """Applies signatures as Celery's canvas does; collects the :attr:`actions` to carry out
    and the :attr:`trail`, the results Celery records as the running task's children."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.actions: list[Action] = []
        self._trail: list[_Result] = []

    @property
    def trail(self) -> tuple[ResultRef, ...]:
        """What the running task's record lists as ``children``."""
        return tuple(r.ref() for r in self._trail)

    def apply(
        self,
        sig: Signature | Mapping[str, Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> ResultRef | None:
        """Apply ``sig`` (``sig.apply_async(args, kwargs, **options)``); its result, or
        ``None`` for an empty chain. Raises :class:`CanvasError` or
        :class:`protocol.MalformedMessage` for what cannot be applied."""
        result = self._apply(_sig(sig), args, kwargs, options)
        return None if result is None else result.ref()

    def freeze(self, sig: Signature | Mapping[str, Any]) -> tuple[Signature, ResultRef]:
        """``sig`` with its ids assigned (Celery's ``freeze``), and its result: a group's has
        its members' results as ``children``, in the order of the frozen group's tasks."""
        frozen, result = self._freeze(_sig(sig))
        return frozen, result.ref()

    def _apply(
        self,
        sig: Signature,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> _Result | None:
        if sig.subtask_type == CHAIN:
            return self._apply_chain(sig, args, kwargs, options)
        if sig.subtask_type == GROUP:
            return self._apply_group(sig, args, kwargs, options)
        if sig.subtask_type == CHORD:
            return self._apply_chord(sig, args, kwargs, options)
        return self._apply_task(sig, args, kwargs, options)

    # A task: Signature.apply_async -> Task.apply_async / send_task -> as_task_v2.

    def _apply_task(
        self,
        sig: Signature,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> _Result:
        extra = _without_none(options)
        if args or kwargs or extra:
            sig = _merge(sig, args, kwargs, extra)
        opts = dict(sig.options)
        add_to_parent = opts.pop("add_to_parent", True)
        own = self.context.task_options(sig.task)
        if own is not None:
            opts = {**_without_none(own), **_without_none(opts)}
            opts.setdefault("ignore_result", own.get("ignore_result", False))
        message = self._message(sig, opts)
        queue = _queue(opts) or self.context.default_queue
        self.actions.append(Publish(message, queue, _text(opts.get("serializer"), "serializer")))
        result = _Result(message.id)
        if add_to_parent:
            self._trail.append(result)
        return result

    def _message(self, sig: Signature, opts: Mapping[str, Any]) -> TaskMessage:
        context = self.context
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
            chord=None if chord_body is None else _sig(chord_body, "chord"),
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

    # Freezing: assign ids (and group, chord, root) without sending anything.

    def _freeze(
        self,
        sig: Signature,
        task_id: str | None = None,
        *,
        group_id: str | None = None,
        chord: Signature | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> tuple[Signature, _Result]:
        kind = sig.subtask_type
        if kind == CHAIN:
            return self._freeze_chain(
                sig, task_id, group_id=group_id, chord=chord, root_id=root_id,
                group_index=group_index,
            )  # fmt: skip
        if kind == GROUP:
            return self._freeze_group(
                sig, group_id=group_id, chord=chord, root_id=root_id, parent_id=parent_id,
                group_index=group_index,
            )  # fmt: skip
        if kind == CHORD:
            return self._freeze_chord(
                sig, task_id, group_id=group_id, chord=chord, root_id=root_id,
                parent_id=parent_id, group_index=group_index,
            )  # fmt: skip
        opts = dict(sig.options)
        if not opts.get("task_id"):
            opts["task_id"] = task_id or self.context.new_id()
        if root_id:
            opts["root_id"] = root_id
        if parent_id:
            opts["parent_id"] = parent_id
        opts.setdefault("reply_to", self.context.reply_to)
        if group_id and "group_id" not in opts:
            opts["group_id"] = group_id
        if chord is not None:
            opts["chord"] = _wire(chord)
        if group_index is not None:
            opts["group_index"] = group_index
        return replace(sig, options=opts), _Result(opts["task_id"])

    def _freeze_chain(
        self,
        sig: Signature,
        task_id: str | None,
        *,
        group_id: str | None,
        chord: Signature | None,
        root_id: str | None,
        group_index: int | None,
    ) -> tuple[Signature, _Result]:
        steps, results = self._prepare_steps(
            sig.args, sig.kwargs, _members(sig), root_id=root_id, link_error=(),
            last_task_id=task_id, group_id=group_id, chord_body=chord, group_index=group_index,
            clone=False,
        )  # fmt: skip
        if not results:
            raise CanvasError("an empty chain has no result to freeze")
        frozen = _with_members(sig, reversed(steps))
        return _with_options(frozen, task_id=results[0].id), results[0]

    def _freeze_group(
        self,
        sig: Signature,
        *,
        group_id: str | None = None,
        chord: Signature | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> tuple[Signature, _Result]:
        opts = dict(sig.options)
        gid = opts.get("task_id") or self.context.new_id()
        opts["task_id"] = gid
        if group_id:
            opts["group_id"] = group_id
        if chord is not None:
            opts["chord"] = _wire(chord)
        if group_index is not None:
            opts["group_index"] = group_index
        root_id = opts.setdefault("root_id", root_id)
        parent_id = opts.setdefault("parent_id", parent_id)
        # Nested groups are flattened; Celery puts their tasks back with extendleft, which
        # reverses them, and numbers the flattened tasks in that order.
        stack = deque(_members(sig))
        members: list[Signature] = []
        results: list[_Result] = []
        while stack:
            task = stack.popleft()
            if task.subtask_type == GROUP:
                stack.extendleft(_members(task))
                continue
            if task.subtask_type == CHAIN and not task.kwargs.get("tasks"):
                continue
            task, result = self._freeze(
                task, group_id=group_id, chord=chord, root_id=root_id, parent_id=parent_id,
                group_index=len(members),
            )  # fmt: skip
            members.append(task)
            results.append(result)
        return _with_members(replace(sig, options=opts), members), _Result(gid, results)

    def _freeze_chord(
        self,
        sig: Signature,
        task_id: str | None,
        *,
        group_id: str | None,
        chord: Signature | None,
        root_id: str | None,
        parent_id: str | None,
        group_index: int | None,
    ) -> tuple[Signature, _Result]:
        body = _body(sig)
        body_result = None
        if body is not None:
            body, body_result = self._freeze(
                body, task_id, root_id=root_id, chord=chord, group_id=group_id,
                group_index=group_index,
            )  # fmt: skip
        raw = sig.kwargs.get("header")
        header = (
            _sig(raw)
            if isinstance(raw, Signature | Mapping) and _sig(raw).subtask_type == GROUP
            else group(*_header(sig))
        )
        header, header_result = self._freeze_group(
            header, chord=body, root_id=root_id, parent_id=parent_id
        )
        frozen = replace(sig, kwargs={**sig.kwargs, "header": _wire(header)})
        frozen = _with_options(frozen, task_id=header_result.id)
        if body is None or body_result is None:
            return frozen, header_result
        node = body_result
        seen: set[str] = set()
        while node.parent is not None:  # the body may be a chain: link its first result
            if node.id in seen:
                raise CanvasError("recursive result parents")
            seen.add(node.id)
            node = node.parent
        node.parent = header_result
        return _with_body(frozen, body), body_result

    # A chain: _chain.run and prepare_steps.

    def _apply_chain(
        self,
        sig: Signature,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> _Result | None:
        rest = {**sig.options, **options}
        run = {key: rest.pop(key, None) for key in _CHAIN_RUN_OPTIONS}
        args = (*args, *sig.args) if args and not sig.immutable else sig.args
        chord_body = run["chord"]
        steps, results = self._prepare_steps(
            args, kwargs or {}, _members(sig), root_id=run["root_id"],
            link_error=signatures(run["link_error"], "link_error"),
            last_task_id=run["task_id"], group_id=run["group_id"],
            chord_body=None if chord_body is None else _sig(chord_body, "chord"),
            group_index=run["group_index"], clone=True,
        )  # fmt: skip
        if not results:
            return None
        for callback in signatures(run["link"], "link"):
            steps[0] = _with_options(
                steps[0], link=[*signatures(steps[0].options.get("link")), callback]
            )
        first = steps.pop()
        remaining = [_wire(s) for s in steps]
        if rest.get("chain") is not None:
            remaining = [*rest["chain"], *remaining]
        rest["chain"] = remaining
        applied = self._apply(first, (), None, rest)
        return applied if not steps else results[0]

    def _prepare_steps(
        self,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        tasks: Sequence[Signature],
        *,
        root_id: str | None,
        link_error: Sequence[Signature],
        last_task_id: str | None,
        group_id: str | None,
        chord_body: Signature | None,
        group_index: int | None,
        clone: bool,
    ) -> tuple[list[Signature], list[_Result]]:
        """The chain's steps frozen, last first (the ``chain`` field's order), and their
        results, last first: nested chains spliced, ``group | task`` made a chord. The last
        step takes ``last_task_id``, ``group_id``, ``chord_body`` and ``group_index``."""
        steps = _head_spliced(deque(tasks))
        prepared: list[Signature] = []
        results: list[_Result] = []
        prev_task: Signature | None = None
        prev_result: _Result | None = None
        frozen = 0
        while steps:
            task = steps.pop()
            is_first, is_last = not steps, not frozen
            skip_empty = bool(steps) or prev_task is not None
            step = _step(task, steps, clone=clone, skip_empty=skip_empty)
            if step is None:
                continue
            task = step
            if is_first:
                task = _merge(task, args, kwargs) if clone else _prepend(task, args)
            if task.subtask_type == CHAIN:
                steps.extend(_members(task))
                continue
            if _is_group(task) and prev_task is not None and prev_result is not None:
                task, prev_result = self._chord_of(task, prepared, results, prev_result, root_id)
                prev_task = prepared[-1] if prepared else None
            if is_last:
                task, result = self._freeze(
                    task, last_task_id, root_id=root_id, group_id=group_id, chord=chord_body,
                    group_index=group_index,
                )  # fmt: skip
            else:
                task, result = self._freeze(task, root_id=root_id)
            frozen += 1
            if prev_task is not None and prev_result is not None and prev_result.parent is None:
                prev_result.parent = result
            for errback in link_error:
                task = _link_error(task, errback)
            prepared.append(task)
            results.append(result)
            prev_task, prev_result = task, result
            if task.subtask_type == CHORD:  # what follows hangs off the header's result
                while prev_result.parent is not None:
                    prev_result = prev_result.parent
        if clone:
            prepared = [_strip_chord_header_links(t) for t in prepared]
        return prepared, results

    @staticmethod
    def _chord_of(
        header: Signature,
        prepared: list[Signature],
        results: list[_Result],
        prev_result: _Result,
        root_id: str | None,
    ) -> tuple[Signature, _Result]:
        """``group | task`` in a chain: a chord of the group with the step after it (the last
        one prepared) as its body; the result the next step is linked to."""
        body = prepared.pop()
        body_result = results.pop()
        options: dict[str, Any] = {"root_id": root_id}
        if prev_result.members is None:
            options["task_id"] = prev_result.id
        # The rest of the chain now hangs off the chord, not off the body's result.
        node = results[-1] if results else None
        while node is not None and node.parent is not body_result:
            node = node.parent
        if node is not None:
            node.parent = None
            prev_result = node
        return chord(_members(header), body, **options), prev_result

    # A group: group.apply_async, _prepared and _apply_tasks.

    def _apply_group(
        self,
        sig: Signature,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> _Result:
        call = _without_none(options)
        add_to_parent = call.pop("add_to_parent", True)
        if "link" in call or "link_error" in call:
            raise CanvasError("a group takes no link or link_error: link its tasks, or a chord")
        if not sig.kwargs.get("tasks"):
            return self._freeze_group(sig)[1]
        opts = _merge(replace(sig, immutable=True), options=call).options
        opts = dict(opts)
        gid = opts.pop("task_id", None) or self.context.new_id()
        opts["group_id"] = gid
        chord_body = opts.pop("chord", None)
        opts.pop("group_index", None)
        prepared = list(self._prepared(_members(sig), gid, opts.get("root_id")))
        size = 0
        results: list[_Result] = []
        for index, (task, result) in enumerate(prepared):
            body = chord_body if chord_body is not None else task.options.get("chord")
            size += _descend(task)
            if body is not None and index == len(prepared) - 1:
                self.actions.append(SetChordSize(gid, size))
            self._apply(task, args, kwargs, {**opts, "add_to_parent": False, "chord": body})
            results.append(result)
        grouped = _Result(gid, results)
        if len(results) == 1 and results[0].members is not None:
            grouped = results[0]
        if add_to_parent:
            self._trail.append(grouped)
        return grouped

    def _prepared(
        self, tasks: Sequence[Signature], gid: str, root_id: str | None
    ) -> Iterator[tuple[Signature, _Result]]:
        for index, task in enumerate(tasks):
            if task.subtask_type == GROUP:
                yield from self._prepared(_members(task), gid, root_id)
            elif task.subtask_type == CHAIN and not task.kwargs.get("tasks"):
                continue
            else:
                yield self._freeze(task, group_id=gid, root_id=root_id, group_index=index)

    # A chord: _chord.apply_async and run.

    def _apply_chord(
        self,
        sig: Signature,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> _Result | None:
        options = dict(options)
        task_id = options.pop("task_id", None)
        args = (*args, *sig.args) if args and not sig.immutable else sig.args
        call_kwargs = dict(kwargs or {})
        body = call_kwargs.pop("body", None)
        body = _sig(body, "body") if body else _body(sig)
        if body is None:
            raise CanvasError("a chord needs a body")
        header_kwargs = {**(sig.kwargs.get("kwargs") or {}), **call_kwargs}
        header_delay = {
            k: options.pop(k) for k in ("countdown", "eta") if options.get(k) is not None
        }
        callbacks: dict[str, Any] = {
            k: options.pop(k) for k in ("link", "link_error") if k in options
        }
        body_options = {k: v for k, v in options.items() if k != "parent_id"}
        if body_options:
            body = _merge(body, options=body_options)
        header = group(*_header(sig), task_id=sig.options.get("task_id") or self.context.new_id())
        merged: dict[str, Any] = {**sig.options, **options, **callbacks}
        for key in ("countdown", "eta"):
            merged.pop(key, None)
        task_id = task_id or merged.pop("task_id", None)
        merged.pop("task_id", None)
        return self._run_chord(
            sig, header, body, args, task_id=task_id, kwargs=header_kwargs,
            header_delay=header_delay, options=merged,
        )  # fmt: skip

    def _run_chord(
        self,
        sig: Signature,
        header: Signature,
        body: Signature,
        partial_args: Sequence[Any],
        *,
        task_id: str | None,
        kwargs: Mapping[str, Any],
        header_delay: dict[str, Any],
        options: dict[str, Any],
    ) -> _Result | None:
        for unused in ("interval", "max_retries", "eager"):  # chord_unlock's, not used on Redis
            options.pop(unused, None)
        group_id = header.options.get("task_id") or self.context.new_id()
        root_id = body.options.get("root_id")
        options = {**sig.options, **options}
        for key in ("countdown", "eta"):
            if key not in header_delay and options.get(key) is not None:
                header_delay[key] = options[key]
            options.pop(key, None)
        if options:
            options.pop("task_id", None)
            body = self._add_body_callbacks(body, options)
            body = _with_options(body, **{k: v for k, v in options.items() if k != "parent_id"})
        if body.subtask_type == CHAIN:
            body = _unroll_chords(body)
        body, body_result = self._freeze(
            body, task_id or self.context.new_id(), group_id=group_id, root_id=root_id
        )
        body = _strip_chord_header_links(body)
        for key in ("chain", "chord", "task_id"):
            options.pop(key, None)
        header = _with_options(header, task_id=group_id)
        header, frozen = self._freeze_group(header, group_id=group_id, chord=body, root_id=root_id)
        header_result: _Result
        if header.kwargs.get("tasks"):
            if any(m.members is not None for m in frozen.members or ()):
                self.actions.append(SaveGroup(frozen.ref()))
            header_result = self._apply_group(
                header, partial_args, kwargs, {**options, **header_delay, "task_id": group_id}
            )
        else:
            self._apply(body, ([],), None, {})
            header_result = frozen
        body_result.parent = header_result
        return body_result

    def _add_body_callbacks(self, body: Signature, options: dict[str, Any]) -> Signature:
        """Move the chord's ``link`` and ``link_error`` from ``options`` to its body."""
        for callback in signatures(options.pop("link", None), "link"):
            if _is_empty_group(body):
                body = _append_option(body, "link", callback)
            else:
                body = _link(body, callback)
        for errback in signatures(options.pop("link_error", None), "link_error"):
            if _is_group(body):
                body = _link_error_to_body_tasks(body, errback)
            else:
                body = _append_option(body, "link_error", errback)
        return body
