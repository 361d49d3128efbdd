"""Canvas signatures as values: building them, and the changes Celery's canvas makes to them.

Signatures are :class:`protocol.Signature` values. Inside them (a chain's ``tasks``, a chord's
``header`` and ``body``, the ``link``, ``link_error``, ``chain`` and ``chord`` options) other
signatures stay in their wire form, dicts, as Celery serialises them. Where ``celery.canvas``
changes a signature in place (``link``, ``link_error``, unrolling a chord's body), the
functions here return the changed copy. :mod:`runtime.canvas` applies signatures.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from protocol import Signature

__all__ = [
    "CHAIN",
    "CHAIN_RUN_OPTIONS",
    "CHORD",
    "GROUP",
    "CanvasError",
    "add_body_callbacks",
    "add_link",
    "add_link_error",
    "append_option",
    "as_signature",
    "body_of",
    "chain",
    "chain_step",
    "chord",
    "descend",
    "group",
    "head_spliced",
    "header_of",
    "is_empty_group",
    "is_group",
    "merge",
    "prepend",
    "signatures",
    "strip_chord_header_links",
    "tasks_of",
    "to_wire",
    "unroll_chords",
    "with_body",
    "with_options",
    "with_tasks",
]

CHAIN, GROUP, CHORD = "chain", "group", "chord"

# Options Celery never lets a later merge change (``Signature._IMMUTABLE_OPTIONS``).
KEPT_OPTIONS = frozenset(("group_id", "stamped_headers"))
#: Options a chain's run() consumes instead of passing them to its first task.
CHAIN_RUN_OPTIONS = frozenset(
    ("chord", "group_id", "group_index", "link", "link_error", "parent_id", "root_id", "task_id")
)


class CanvasError(ValueError):
    """A signature that cannot be applied (an option of the wrong type, a link on a group)."""


def as_signature(value: Any, field: str = "signature") -> Signature:
    """``value`` as a signature: a wire dict is checked (``MalformedMessage`` if it is not one)."""
    return value if isinstance(value, Signature) else Signature.from_wire(value, field)


def to_wire(sig: Signature) -> dict[str, Any]:
    """The dict Celery serialises ``sig`` as."""
    return sig.to_dict()


def signatures(value: Any, field: str = "signature") -> tuple[Signature, ...]:
    """One signature or a list of them (as ``link=`` takes either), as a tuple; ``None`` is
    none. Raises :class:`protocol.MalformedMessage` for something that is not a signature."""
    if value is None:
        return ()
    if isinstance(value, Signature | Mapping):
        return (as_signature(value, field),)
    if isinstance(value, list | tuple):
        return tuple(as_signature(item, f"{field}[{i}]") for i, item in enumerate(value))
    raise CanvasError(f"{field}: expected a signature or a list of them, got {value!r}")


def chain(*tasks: Signature, **options: Any) -> Signature:
    """Tasks run one after the other, each getting the result before it (``celery.chain``)."""
    return Signature("celery.chain", (), {"tasks": [to_wire(t) for t in tasks]}, options, CHAIN)


def group(*tasks: Signature, **options: Any) -> Signature:
    """Tasks run in parallel; their results are read as one list (``celery.group``)."""
    return Signature("celery.group", (), {"tasks": [to_wire(t) for t in tasks]}, options, GROUP)


def chord(header: Iterable[Signature], body: Signature, **options: Any) -> Signature:
    """A group whose results, in order, are passed as a list to ``body`` (``celery.chord``)."""
    kwargs = {"kwargs": {}, "header": [to_wire(t) for t in header], "body": to_wire(body)}
    return Signature("celery.chord", (), kwargs, options, CHORD)


def tasks_of(sig: Signature) -> list[Signature]:
    """The tasks of a chain or group."""
    tasks = sig.kwargs.get("tasks") or ()
    return [as_signature(t, f"{sig.task}.tasks[{i}]") for i, t in enumerate(tasks)]


def with_tasks(sig: Signature, members: Iterable[Signature]) -> Signature:
    """A chain or group with these tasks instead."""
    return replace(sig, kwargs={**sig.kwargs, "tasks": [to_wire(m) for m in members]})


def header_of(sig: Signature) -> list[Signature]:
    """A chord's header as a list of signatures, as ``celery.canvas._maybe_group`` reads it:
    a group or chain gives its tasks, one signature itself."""
    header = sig.kwargs.get("header")
    if header is None:
        return []
    if isinstance(header, Signature | Mapping):
        inner = as_signature(header, "chord.header")
        return tasks_of(inner) if inner.subtask_type in (GROUP, CHAIN) else [inner]
    return [as_signature(t, f"chord.header[{i}]") for i, t in enumerate(header)]


def body_of(sig: Signature) -> Signature | None:
    """A chord's body."""
    body = sig.kwargs.get("body")
    return None if body is None else as_signature(body, "chord.body")


def with_body(sig: Signature, body: Signature) -> Signature:
    """A chord with this body instead."""
    return replace(sig, kwargs={**sig.kwargs, "body": to_wire(body)})


def with_options(sig: Signature, **options: Any) -> Signature:
    """``sig`` with ``options`` set."""
    return replace(sig, options={**sig.options, **options})


def merge(
    sig: Signature,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Signature:
    """``Signature._merge``: partial args go first, kwargs and options are merged, except
    that an immutable signature keeps its own arguments and some options are never changed."""
    merged = dict(sig.options)
    if options:
        kept = KEPT_OPTIONS | set(sig.options.get("stamped_headers") or ())
        merged.update((k, v) for k, v in options.items() if k not in kept or k not in merged)
    if sig.immutable:
        return replace(sig, options=merged)
    return replace(
        sig, args=(*args, *sig.args), kwargs={**sig.kwargs, **(kwargs or {})}, options=merged
    )


def prepend(sig: Signature, args: Sequence[Any]) -> Signature:
    """``sig`` with ``args`` before its own, immutable or not (a chain's freeze does that)."""
    return replace(sig, args=(*args, *sig.args))


def head_spliced(steps: deque[Signature]) -> deque[Signature]:
    """A chain's steps with the first real task first: nested chains at the head spliced in,
    empty groups there dropped (one kept if nothing else is left), so that the partial
    arguments reach a task."""
    stripped = None
    while steps:
        head = steps[0]
        if head.subtask_type == CHAIN:
            steps.popleft()
            steps.extendleft(reversed(tasks_of(head)))
            continue
        if is_group(head):
            head = steps[0] = _unroll_single(head)
            if len(steps) > 1 and is_empty_group(head):
                stripped = steps.popleft()
                continue
        break
    if stripped is not None and not steps:
        steps.append(stripped)
    return steps


def chain_step(
    task: Signature, steps: deque[Signature], *, clone: bool, skip_empty: bool
) -> Signature | None:
    """A chain step as it is frozen, or ``None`` if it is skipped (an empty group) or
    unrolled into ``steps`` (a chord whose body is a chain led by a task)."""
    if is_group(task):
        task = _unroll_single(task)
        if is_empty_group(task) and skip_empty:
            return None
    if clone and task.subtask_type == CHORD and _led_by_task(body_of(task)):
        steps.extend(_unroll_body(task))
        return None
    return task


def is_group(sig: Signature) -> bool:
    """Whether ``sig`` is a group."""
    return sig.subtask_type == GROUP


def is_empty_group(sig: Signature) -> bool:
    """Whether ``sig`` is a group without tasks."""
    return is_group(sig) and not sig.kwargs.get("tasks")


def _unroll_single(sig: Signature) -> Signature:
    """A group of one task is that task (``maybe_unroll_group``)."""
    if is_group(sig):
        members = tasks_of(sig)
        if len(members) == 1:
            return members[0]
    return sig


def _led_by_task(body: Signature | None) -> bool:
    if body is None or body.subtask_type != CHAIN:
        return False
    members = tasks_of(body)
    return bool(members) and not is_group(members[0])


def append_option(sig: Signature, key: str, value: Signature) -> Signature:
    """Add ``value`` to the list option ``key`` unless it is there (``append_to_list_option``)."""
    items = [to_wire(s) for s in signatures(sig.options.get(key), key)]
    wire = to_wire(value)
    if wire not in items:
        items.append(wire)
    return with_options(sig, **{key: items})


def add_link(sig: Signature, callback: Signature) -> Signature:
    """``sig.link(callback)`` for each kind of signature."""
    if sig.subtask_type == GROUP:
        # Celery links a group's callback to its first task only, made immutable.
        first, *rest = tasks_of(sig)
        return with_tasks(sig, [add_link(first, callback.set(immutable=True)), *rest])
    if sig.subtask_type == CHORD:
        body = body_of(sig)
        return sig if body is None else with_body(sig, add_link(body, callback))
    return append_option(sig, "link", callback)


def add_link_error(sig: Signature, errback: Signature) -> Signature:
    """``sig.link_error(errback)``: a group's tasks each get it, a chord's body gets it."""
    if sig.subtask_type == GROUP:
        return with_tasks(sig, [add_link_error(m, errback) for m in tasks_of(sig)])
    if sig.subtask_type == CHORD:
        body = body_of(sig)
        return sig if body is None else with_body(sig, add_link_error(body, errback))
    return append_option(sig, "link_error", errback)


def _add_link_error_to_body_tasks(
    sig: Signature, errback: Signature, *, runs_as_group: bool = True
) -> Signature:
    """An errback for a chord's group body: on its tasks, or on the group's own
    ``link_error`` if it has one (which, when the group runs, replaces its tasks' own)."""
    if sig.subtask_type == GROUP:
        if runs_as_group and sig.options.get("link_error") is not None:
            return append_option(sig, "link_error", errback)
        members = tasks_of(sig)
        return with_tasks(
            sig, [_add_link_error_to_body_tasks(m, errback, runs_as_group=False) for m in members]
        )
    if sig.subtask_type == CHORD:
        body = body_of(sig)
        return sig if body is None else with_body(sig, _add_link_error_to_body_tasks(body, errback))
    return add_link_error(sig, errback)


def _clear_chord_option(sig: Signature) -> Signature:
    """Remove the chord callback from the terminal tasks of ``sig``."""
    sig = replace(sig, options={k: v for k, v in sig.options.items() if k != "chord"})
    if sig.subtask_type == GROUP:
        return with_tasks(sig, [_clear_chord_option(m) for m in tasks_of(sig)])
    if sig.subtask_type == CHAIN:
        members = tasks_of(sig)
        if members:
            return with_tasks(sig, [*members[:-1], _clear_chord_option(members[-1])])
    if sig.subtask_type == CHORD:
        body = body_of(sig)
        if body is not None:
            return with_body(sig, _clear_chord_option(body))
    return sig


def strip_chord_header_links(sig: Signature) -> Signature:
    """Drop the copies of a pending chord's body from its header tasks: the chord carries the
    body itself and puts it back on the header when it runs (message size, nested chords)."""
    if sig.subtask_type == CHORD:
        header = [strip_chord_header_links(_clear_chord_option(m)) for m in header_of(sig)]
        raw = sig.kwargs.get("header")
        if isinstance(raw, Signature | Mapping) and as_signature(raw).subtask_type == GROUP:
            stripped: Any = to_wire(_clear_chord_option(with_tasks(as_signature(raw), header)))
        else:
            stripped = [to_wire(m) for m in header]
        sig = replace(sig, kwargs={**sig.kwargs, "header": stripped})
        body = body_of(sig)
        return sig if body is None else with_body(sig, strip_chord_header_links(body))
    if sig.subtask_type in (GROUP, CHAIN):
        return with_tasks(sig, [strip_chord_header_links(m) for m in tasks_of(sig)])
    return sig


def _unchain_tasks(sig: Signature) -> list[Signature]:
    """A chain's tasks, its callbacks on the last one and its errbacks on each."""
    tasks = tasks_of(sig)
    for callback in signatures(sig.options.get("link"), "link"):
        tasks[-1] = append_option(tasks[-1], "link", callback)
    for errback in signatures(sig.options.get("link_error"), "link_error"):
        tasks = [append_option(t, "link_error", errback) for t in tasks]
    return tasks


def _unroll_body(sig: Signature) -> list[Signature]:
    """``chord(header, chain(a, b, c))`` as ``chord(header, a), b, c``: every header task
    carries the body, so the body should not carry the rest of the chain."""
    body = body_of(sig)
    assert body is not None
    first, *rest = _unchain_tasks(body)
    passed_on = {k: v for k, v in body.options.items() if k not in CHAIN_RUN_OPTIONS}
    return [with_body(sig, merge(first, options=passed_on)), *rest]


def unroll_chords(sig: Signature) -> Signature:
    """A chain with the task-led chain bodies of its chords split into chain steps."""
    pending = deque(tasks_of(sig))
    tasks: list[Signature] = []
    while pending:
        task = pending.popleft()
        if task.subtask_type == CHAIN:
            task = unroll_chords(task)
        if task.subtask_type == CHORD and _led_by_task(body_of(task)):
            pending.extendleft(reversed(_unroll_body(task)))
        else:
            tasks.append(task)
    return with_tasks(sig, tasks)


def descend(sig: Signature) -> int:
    """How many results a signature adds to a chord's header (``_chord._descend``)."""
    if sig.subtask_type == GROUP:
        return sum(descend(m) for m in tasks_of(sig))
    if sig.subtask_type == CHAIN:
        # The last step that yields anything counts.
        return next((n for m in reversed(tasks_of(sig)) if (n := descend(m)) > 0), 0)
    if sig.subtask_type == CHORD:
        body = body_of(sig)
        return 0 if body is None else descend(body)
    return 1


def add_body_callbacks(body: Signature, options: dict[str, Any]) -> Signature:
    """A chord's ``link`` and ``link_error``, taken out of ``options``, added to its body:
    ``link`` as ``body.link`` does, ``link_error`` on each task of a group body."""
    for callback in signatures(options.pop("link", None), "link"):
        if is_empty_group(body):
            body = append_option(body, "link", callback)
        else:
            body = add_link(body, callback)
    for errback in signatures(options.pop("link_error", None), "link_error"):
        if is_group(body):
            body = _add_link_error_to_body_tasks(body, errback)
        else:
            body = append_option(body, "link_error", errback)
    return body
