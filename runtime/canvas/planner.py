"""Applying canvas signatures as Celery 5.7 does: which messages a signature becomes.

A :class:`Planner` applies a signature (a task, or a chain, group or chord of them) with
partial arguments and options, following ``apply_async`` of ``celery.canvas``'s ``Signature``,
``_chain``, ``group`` and ``_chord`` step by step, and records what has to happen, in order:
messages to publish, chord sizes to set, group results to save. It does no I/O (ids and time
come from its :class:`~runtime.canvas.messages.Context`); :mod:`runtime.canvas.workflow`
carries a plan out.
Where Celery freezes a signature in place (assigning ids), the planner returns the frozen copy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from protocol import ResultRef, Signature, TaskMessage

from .messages import Context, message_for, queue_of, serializer_of, without_none
from .signatures import (
    CHAIN,
    CHAIN_RUN_OPTIONS,
    CHORD,
    GROUP,
    CanvasError,
    add_body_callbacks,
    add_link_error,
    as_signature,
    body_of,
    chain_step,
    chord,
    descend,
    group,
    head_spliced,
    header_of,
    is_group,
    merge,
    prepend,
    signatures,
    strip_chord_header_links,
    tasks_of,
    to_wire,
    unroll_chords,
    with_body,
    with_options,
    with_tasks,
)

__all__ = ["Action", "Context", "Planner", "Publish", "SaveGroup", "SetChordSize"]


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


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a signature is frozen (``freeze``'s arguments): the id it takes if it has none,
    its group and position there, the chord body it completes, its workflow's root."""

    task_id: str | None = None
    group_id: str | None = None
    chord: Signature | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group_index: int | None = None


class _Result:
    """A frozen result as Celery links them: a task's or a group's id, its parent, members."""

    __slots__ = ("id", "members", "parent")

    def __init__(self, result_id: str, members: list[_Result] | None = None) -> None:
        self.id = result_id
        self.members = members
        self.parent: _Result | None = None

    def ref(self) -> ResultRef:
        lineage: list[_Result] = []
        node: _Result | None = self
        while node is not None:  # a long chain's parents: built without recursion
            lineage.append(node)
            node = node.parent
        ref = None
        for node in reversed(lineage):
            members = None if node.members is None else tuple(m.ref() for m in node.members)
            ref = ResultRef(node.id, parent=ref, children=members)
        assert ref is not None
        return ref


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
        :class:`protocol.MalformedMessage` for what cannot be applied, ``TypeError`` for
        arguments that do not fit a local task."""
        result = self._apply(as_signature(sig), args, kwargs, options)
        return None if result is None else result.ref()

    def freeze(self, sig: Signature | Mapping[str, Any]) -> tuple[Signature, ResultRef]:
        """``sig`` with its ids assigned (Celery's ``freeze``), and its result: a group's has
        its members' results as ``children``, in the order of the frozen group's tasks."""
        frozen, result = self._freeze(as_signature(sig))
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
        extra = without_none(options)
        if args or kwargs or extra:
            sig = merge(sig, args, kwargs, extra)
        opts = dict(sig.options)
        add_to_parent = opts.pop("add_to_parent", True)
        own = self.context.task_options(sig.task)
        if own is not None:
            self.context.check_arguments(sig.task, sig.args, sig.kwargs)
            opts = {**without_none(own), **without_none(opts)}
            opts.setdefault("ignore_result", own.get("ignore_result", False))
        message = message_for(sig, opts, self.context)
        queue = queue_of(opts) or self.context.default_queue
        self.actions.append(Publish(message, queue, serializer_of(opts)))
        result = _Result(message.id)
        if add_to_parent:
            self._trail.append(result)
        return result

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
        place = _Place(task_id, group_id, chord, root_id, parent_id, group_index)
        if sig.subtask_type == CHAIN:
            return self._freeze_chain(sig, place)
        if sig.subtask_type == GROUP:
            return self._freeze_group(sig, place)
        if sig.subtask_type == CHORD:
            return self._freeze_chord(sig, place)
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
            opts["chord"] = to_wire(chord)
        if group_index is not None:
            opts["group_index"] = group_index
        return replace(sig, options=opts), _Result(opts["task_id"])

    def _freeze_chain(self, sig: Signature, place: _Place) -> tuple[Signature, _Result]:
        steps, results = self._prepare_steps(
            sig.args, sig.kwargs, tasks_of(sig), root_id=place.root_id, link_error=(),
            last_task_id=place.task_id, group_id=place.group_id, chord_body=place.chord,
            group_index=place.group_index, clone=False,
        )  # fmt: skip
        if not results:
            raise CanvasError("an empty chain has no result to freeze")
        frozen = with_tasks(sig, reversed(steps))
        return with_options(frozen, task_id=results[0].id), results[0]

    def _freeze_group(self, sig: Signature, place: _Place) -> tuple[Signature, _Result]:
        opts = dict(sig.options)
        gid = opts.get("task_id") or self.context.new_id()
        opts["task_id"] = gid
        group_id, chord = place.group_id, place.chord
        if group_id:
            opts["group_id"] = group_id
        if chord is not None:
            opts["chord"] = to_wire(chord)
        if place.group_index is not None:
            opts["group_index"] = place.group_index
        root_id = opts.setdefault("root_id", place.root_id)
        parent_id = opts.setdefault("parent_id", place.parent_id)
        # Nested groups are flattened; Celery puts their tasks back with extendleft, which
        # reverses them, and numbers the flattened tasks in that order.
        stack = deque(tasks_of(sig))
        members: list[Signature] = []
        results: list[_Result] = []
        while stack:
            task = stack.popleft()
            if task.subtask_type == GROUP:
                stack.extendleft(tasks_of(task))
                continue
            if task.subtask_type == CHAIN and not task.kwargs.get("tasks"):
                continue
            task, result = self._freeze(
                task, group_id=group_id, chord=chord, root_id=root_id, parent_id=parent_id,
                group_index=len(members),
            )  # fmt: skip
            members.append(task)
            results.append(result)
        return with_tasks(replace(sig, options=opts), members), _Result(gid, results)

    def _freeze_chord(self, sig: Signature, place: _Place) -> tuple[Signature, _Result]:
        body = body_of(sig)
        body_result = None
        if body is not None:
            body, body_result = self._freeze(
                body, place.task_id, root_id=place.root_id, chord=place.chord,
                group_id=place.group_id, group_index=place.group_index,
            )  # fmt: skip
        # A chord read from the wire has its header as a list (``_maybe_group``): freezing
        # makes it a new group, with a new id.
        header, header_result = self._freeze_group(
            group(*header_of(sig)),
            _Place(chord=body, root_id=place.root_id, parent_id=place.parent_id),
        )
        frozen = replace(sig, kwargs={**sig.kwargs, "header": to_wire(header)})
        frozen = with_options(frozen, task_id=header_result.id)
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
        return with_body(frozen, body), body_result

    # A chain: _chain.run and prepare_steps.

    def _apply_chain(
        self,
        sig: Signature,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> _Result | None:
        rest = {**sig.options, **options}
        run = {key: rest.pop(key, None) for key in CHAIN_RUN_OPTIONS}
        args = (*args, *sig.args) if args and not sig.immutable else sig.args
        chord_body = run["chord"]
        steps, results = self._prepare_steps(
            args, kwargs or {}, tasks_of(sig), root_id=run["root_id"],
            link_error=signatures(run["link_error"], "link_error"),
            last_task_id=run["task_id"], group_id=run["group_id"],
            chord_body=None if chord_body is None else as_signature(chord_body, "chord"),
            group_index=run["group_index"], clone=True,
        )  # fmt: skip
        if not results:
            return None
        links = signatures(run["link"], "link")
        if links:  # the chain's callbacks go on its last task (extend_list_option)
            linked = [*signatures(steps[0].options.get("link"), "link"), *links]
            steps[0] = with_options(steps[0], link=[to_wire(c) for c in linked])
        first = steps.pop()
        remaining = [to_wire(s) for s in steps]
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
        steps = head_spliced(deque(tasks))
        prepared: list[Signature] = []
        results: list[_Result] = []
        prev_task: Signature | None = None
        prev_result: _Result | None = None
        frozen = 0
        while steps:
            task = steps.pop()
            is_first, is_last = not steps, not frozen
            skip_empty = bool(steps) or prev_task is not None
            step = chain_step(task, steps, clone=clone, skip_empty=skip_empty)
            if step is None:
                continue
            task = step
            if is_first:
                task = merge(task, args, kwargs) if clone else prepend(task, args)
            if task.subtask_type == CHAIN:
                steps.extend(tasks_of(task))
                continue
            if is_group(task) and prev_task is not None and prev_result is not None:
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
                task = add_link_error(task, errback)
            prepared.append(task)
            results.append(result)
            prev_task, prev_result = task, result
            if task.subtask_type == CHORD:  # what follows hangs off the header's result
                while prev_result.parent is not None:
                    prev_result = prev_result.parent
        if clone:
            prepared = [strip_chord_header_links(t) for t in prepared]
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
        return chord(tasks_of(header), body, **options), prev_result

    # A group: group.apply_async, _prepared and _apply_tasks.

    def _apply_group(
        self,
        sig: Signature,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> _Result:
        call = without_none(options)
        add_to_parent = call.pop("add_to_parent", True)
        if "link" in call or "link_error" in call:
            raise CanvasError("a group takes no link or link_error: link its tasks, or a chord")
        if not sig.kwargs.get("tasks"):
            return self._freeze_group(sig, _Place())[1]
        opts = merge(replace(sig, immutable=True), options=call).options
        opts = dict(opts)
        gid = opts.pop("task_id", None) or self.context.new_id()
        opts["group_id"] = gid
        chord_body = opts.pop("chord", None)
        opts.pop("group_index", None)
        prepared = list(self._prepared(tasks_of(sig), gid, opts.get("root_id")))
        size = 0
        results: list[_Result] = []
        for index, (task, result) in enumerate(prepared):
            body = chord_body if chord_body is not None else task.options.get("chord")
            size += descend(task)
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
                yield from self._prepared(tasks_of(task), gid, root_id)
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
        body = as_signature(body, "body") if body else body_of(sig)
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
            body = merge(body, options=body_options)
        header = group(*header_of(sig), task_id=sig.options.get("task_id") or self.context.new_id())
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
            body = add_body_callbacks(body, options)
            body = with_options(body, **{k: v for k, v in options.items() if k != "parent_id"})
        if body.subtask_type == CHAIN:
            body = unroll_chords(body)
        body, body_result = self._freeze(
            body, task_id or self.context.new_id(), group_id=group_id, root_id=root_id
        )
        body = strip_chord_header_links(body)
        for key in ("chain", "chord", "task_id"):
            options.pop(key, None)
        header = with_options(header, task_id=group_id)
        header, frozen = self._freeze_group(
            header, _Place(group_id=group_id, chord=body, root_id=root_id)
        )
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
