"""What a worker does for the canvas around each task, as Celery 5.7's tracer and backend do.

* Success (``celery/app/trace.py``): the callbacks (``link``) are applied with the result,
  several of them as one group, then the next step of the chain with the rest of the chain;
  what that publishes becomes the record's ``children``.
* Any end of a chord header task (``RedisBackend.on_chord_part_return``) adds its result to
  the chord (:mod:`runtime.canvas.chords`); the last one publishes the body with the ordered
  results, or, if a task failed, records ``ChordError`` for the body and runs the body's errbacks.
* Failure (``Backend.mark_as_failure``): the rest of the chain gets the same FAILURE, then the
  errbacks run. New-style errbacks (tasks taking more than one argument, registered here) are
  called in the worker with the request, the exception and the traceback; the others are
  published, as one group, with the failed task's id.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import socket
import traceback as tb
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from protocol import (
    PROPAGATE_STATES,
    ChordPart,
    ExceptionInfo,
    MalformedMessage,
    ResultMeta,
    ResultRef,
    Signature,
    State,
    TaskMessage,
)
from runtime.exceptions import ChordError
from runtime.request import Request
from runtime.results.backend import RedisResultBackend

from .chords import RedisChords
from .messages import Context
from .planner import Action, Planner, Publish, SetChordSize
from .signatures import CHORD, GROUP, CanvasError, group, signatures

if TYPE_CHECKING:
    from runtime.task import Task

__all__ = ["CanvasApp", "Workflow", "carry_out", "context_for"]

#: Celery's ``result_chord_join_timeout``: how long the body's worker waits for the results
#: of a header whose members are groups.
JOIN_TIMEOUT = 3.0


class CanvasApp(Protocol):
    """What the canvas needs of an app (:class:`runtime.App` is one): its registry, its
    routing defaults and its producer. A protocol, so that the app imports the canvas and not
    the reverse."""

    @property
    def tasks(self) -> Mapping[str, Task[Any, Any]]:
        """The registered tasks, by name."""

    @property
    def default_queue(self) -> str:
        """Where a signature with no queue is sent."""

    @property
    def oid(self) -> str:
        """The app's reply address, which the messages it sends carry."""

    async def publish(
        self, message: TaskMessage, *, queue: str | None = None, serializer: str | None = None
    ) -> None:
        """Encode ``message`` and publish it to ``queue``."""


def context_for(app: CanvasApp, parent: TaskMessage | None) -> Context:
    """Where ``app`` plans: its routing and registry, with ``parent`` as the running task."""

    def task_options(name: str) -> Mapping[str, Any] | None:
        task = app.tasks.get(name)
        if task is None:
            return None
        options = task.options
        return {
            "queue": options.queue,
            "priority": options.priority,
            "serializer": options.serializer,
            "time_limit": options.time_limit,
            "soft_time_limit": options.soft_time_limit,
            "ignore_result": options.ignore_result,
        }

    def check_arguments(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        task = app.tasks.get(name)
        if task is not None:
            task.bind_arguments(args, dict(kwargs))

    return Context(
        default_queue=app.default_queue,
        reply_to=app.oid,
        origin=f"gen{os.getpid()}@{socket.gethostname()}",
        now=datetime.now(UTC),
        parent=parent,
        task_options=task_options,
        check_arguments=check_arguments,
    )


async def carry_out(app: CanvasApp, actions: Sequence[Action], chords: RedisChords | None) -> None:
    """Do what a plan says, in order: publish, set chord sizes, save group results."""
    for action in actions:
        if isinstance(action, Publish):
            await app.publish(action.message, queue=action.queue, serializer=action.serializer)
        elif chords is None:
            raise CanvasError("chords need a Redis result backend")
        elif isinstance(action, SetChordSize):
            await chords.set_size(action.group_id, action.size)
        else:
            await chords.save_group(action.group)


class _DependencyFailed(Exception):
    """A chord header task ended FAILURE or REVOKED."""

    def __init__(self, part: ChordPart) -> None:
        self.part = part
        info = part.exception
        try:
            raised = repr(info.to_exception()) if info is not None else repr(part.result)
        except MalformedMessage:
            raised = str(info)
        super().__init__(f"Dependency {part.task_id} raised {raised}")


class Workflow:
    """The canvas side of one worker: ``app``'s registry and producer, results in
    ``backend`` (chords need it), errors logged to ``log``."""

    def __init__(
        self, app: CanvasApp, backend: RedisResultBackend | None, *, hostname: str, log: Any
    ) -> None:
        self.app = app
        self.backend = backend
        self.hostname = hostname
        self.log = log
        self.chords = RedisChords(backend) if backend is not None else None

    def _planner(self, running: TaskMessage) -> Planner:
        return Planner(context_for(self.app, running))

    async def _carry_out(self, planner: Planner) -> None:
        await carry_out(self.app, planner.actions, self.chords)

    async def succeeded(self, message: TaskMessage, value: Any) -> tuple[ResultRef, ...]:
        """Apply ``message``'s callbacks and its chain's next step with ``value``; return
        the results to record as its children. Raises what publishing raised."""
        if not message.callbacks and not message.chain:
            return ()
        planner = self._planner(message)
        parent_id, root_id = message.id, message.root_id or message.id
        callbacks = message.callbacks
        # Several callbacks go as one group, except groups, which go on their own.
        if len(callbacks) == 1:
            applied: list[Signature] = list(callbacks)
        else:
            applied = [c for c in callbacks if c.subtask_type == GROUP]
            plain = [c for c in callbacks if c.subtask_type != GROUP]
            applied += [group(*plain)] if plain else []
        for callback in applied:
            planner.apply(callback, (value,), parent_id=parent_id, root_id=root_id)
        if message.chain:
            *rest, step = message.chain
            chain = [s.to_dict() for s in rest]
            planner.apply(step, (value,), chain=chain, parent_id=parent_id, root_id=root_id)
        await self._carry_out(planner)
        return planner.trail

    async def ended(self, message: TaskMessage, status: State, result: Any) -> None:
        """``message``'s task ended SUCCESS (``result`` is its value) or REVOKED (an
        :class:`ExceptionInfo`): its part of a chord, if it is in one."""
        if message.chord is not None:
            await self._guarded(self._own_chord_part(message, status, result), message)

    async def failed(
        self,
        message: TaskMessage,
        info: ExceptionInfo,
        exc: BaseException,
        traceback: str | None,
        *,
        stored: bool,
    ) -> None:
        """``message``'s task failed with ``exc`` (``info``; its FAILURE is recorded if
        ``stored``): its chord part, the rest of its chain, its errbacks."""
        if message.chord is not None:
            await self._guarded(self._own_chord_part(message, State.FAILURE, info), message)
        if message.chain:
            await self._guarded(
                self._fail_chain(message, message.chain, info, traceback, store=stored), message
            )
        if message.errbacks:
            await self._guarded(
                self._call_errbacks(message, message, info, exc, traceback), message
            )

    async def _guarded(self, step: Any, message: TaskMessage) -> None:
        """Run ``step``; log what goes wrong: the task's own record is stored already."""
        try:
            await step
        except Exception as exc:
            self.log.exception("canvas_failed", task_id=message.id, error=repr(exc))

    # Chords.

    async def _own_chord_part(self, message: TaskMessage, status: State, result: Any) -> None:
        assert message.chord is not None
        part = ChordPart(message.id, status, result)
        await self._chord_part(
            message, part, group_id=message.group_id, group_index=message.group_index,
            body=message.chord,
        )  # fmt: skip

    async def _chord_part(
        self,
        running: TaskMessage,
        part: ChordPart,
        *,
        group_id: str | None,
        group_index: int | None,
        body: Signature | Mapping[str, Any],
    ) -> None:
        """Add ``part`` to its chord (Celery's ``on_chord_part_return``); if it completes the
        header, publish the body with the results, or fail it."""
        if not part.task_id or not group_id or self.chords is None:
            return
        chords = self.chords
        token = uuid.uuid4().hex
        recorded = await chords.record(group_id, group_index, part, token)
        if not recorded.complete:
            return
        callback = signatures(body, "chord")[0]
        try:
            results = await self._header_results(group_id)
        except Exception as exc:
            if isinstance(exc, _DependencyFailed):
                error, cause = ChordError(str(exc)), exc.part.exception
            else:
                error, cause = ChordError(f"Join error: {exc!r}"), None
            self.log.error("chord_failed", group_id=group_id, error=str(error))
            try:
                await self._chord_error(running, callback, error, cause)
            finally:
                await chords.forget_size(group_id)
            return
        if not await chords.extend_claim(group_id, token):
            self.log.warning("chord_claim_lost", group_id=group_id)
            return
        try:
            planner = self._planner(running)
            planner.apply(callback, (results,))
            await self._carry_out(planner)
        except Exception as exc:
            self.log.exception("chord_callback_failed", group_id=group_id, error=repr(exc))
            await self._chord_error(running, callback, ChordError(f"Callback error: {exc!r}"))
        finally:
            if not await chords.finish(group_id, token):
                self.log.warning("chord_claim_lost_before_cleanup", group_id=group_id)

    async def _header_results(self, group_id: str) -> list[Any]:
        """The header's results in order; raises :class:`_DependencyFailed` for a failed one."""
        assert self.chords is not None
        saved = await self.chords.saved_group(group_id)
        if saved is not None:
            async with asyncio.timeout(JOIN_TIMEOUT):
                return [await self._joined(member) for member in saved.children or ()]
        values = []
        for part in await self.chords.parts(group_id):
            if part.status in PROPAGATE_STATES:
                raise _DependencyFailed(part)
            exception = part.exception
            values.append(exception.to_dict() if exception is not None else part.result)
        return values

    async def _joined(self, ref: ResultRef) -> Any:
        """A saved header member's value: a group's is the list of its members' values."""
        if ref.children is not None:
            return [await self._joined(member) for member in ref.children]
        assert self.backend is not None
        meta = await self.backend.wait_for(ref.id)
        if meta.status in PROPAGATE_STATES and meta.exception is not None:
            raise meta.exception.to_exception()
        return meta.result

    async def _chord_error(
        self,
        running: TaskMessage,
        callback: Signature,
        error: ChordError,
        cause: ExceptionInfo | None = None,
    ) -> None:
        """The body cannot run: record ``error`` for it, run its errbacks, fail its chain
        (``Backend.chord_error_from_stack``)."""
        info = ExceptionInfo.from_exception(error)
        if callback.subtask_type == GROUP:
            await self._group_chord_error(running, callback, info if cause is None else cause)
        else:
            callback_id = callback.task_id or str(uuid.uuid4())
            request = TaskMessage(
                id=callback_id,
                task=callback.task,
                args=callback.args,
                kwargs=callback.kwargs,
                errbacks=signatures(callback.options.get("link_error"), "link_error"),
            )
            # Celery stores it with the running task's children: the errbacks just sent.
            sent = await self._call_errbacks(running, request, info, error, None)
            failure = "".join(tb.format_exception(error))
            await self._store_failure(callback_id, info, failure, children=sent)
        await self._fail_chain(running, callback.options.get("chain"), info, None, store=True)

    async def _group_chord_error(
        self, running: TaskMessage, body: Signature, info: ExceptionInfo
    ) -> None:
        """A group body: each of its tasks fails with the header's error and runs its own and
        the group's errbacks; the group's id gets the FAILURE too. (Celery also revokes the
        tasks over remote control; celeriac does not.)"""
        frozen, result = self._planner(running).freeze(body)
        group_errbacks = signatures(body.options.get("link_error"), "link_error")
        members = signatures(frozen.kwargs.get("tasks"), "tasks")
        sent: tuple[ResultRef, ...] = ()  # the running task's children, as Celery records them
        for member, ref in zip(members, result.children or (), strict=False):
            errbacks: list[Signature] = []
            for errback in (*_result_errbacks(member), *group_errbacks):
                if errback not in errbacks:
                    errbacks.append(errback)
            request = TaskMessage(id=ref.id, task=member.task, errbacks=tuple(errbacks))
            sent += await self._call_errbacks(running, request, info, info.to_exception(), None)
            await self._store_failure(ref.id, info, None, children=sent)
        await self._store_failure(result.id, info, None, children=sent)

    # Failures.

    async def _fail_chain(
        self,
        running: TaskMessage,
        chain: Any,
        info: ExceptionInfo,
        traceback: str | None,
        *,
        store: bool,
    ) -> None:
        """The FAILURE of a task for every step after it that has an id, so that whoever
        waits on the chain's result hears of it; chord members among them return their part."""
        pending = deque(signatures(chain, "chain"))
        while pending:
            step = pending.popleft()
            options = step.options
            step_id, group_id = step.task_id, options.get("group_id")
            in_chord = options.get("chord") is not None
            already_failed = False
            if in_chord and step_id and self.backend is not None:
                meta = await self.backend.get(step_id)
                already_failed = meta is not None and meta.status in PROPAGATE_STATES
            if store and step_id:
                parent_id = options.get("parent_id")
                await self._store_failure(step_id, info, traceback, group_id, parent_id)
            if in_chord and not already_failed and step_id:
                await self._chord_part(
                    running, ChordPart(step_id, State.FAILURE, info), group_id=group_id,
                    group_index=options.get("group_index"), body=options["chord"],
                )  # fmt: skip
            if step.subtask_type == CHORD and step.kwargs.get("body") is not None:
                pending.extend(signatures(step.kwargs["body"], "chord.body"))

    async def _store_failure(
        self,
        task_id: str,
        info: ExceptionInfo,
        traceback: str | None,
        group_id: Any = None,
        parent_id: Any = None,
        *,
        children: tuple[ResultRef, ...] = (),
    ) -> None:
        if self.backend is None:
            return
        meta = ResultMeta(
            task_id=task_id,
            status=State.FAILURE,
            result=info,
            traceback=traceback,
            children=children,
            date_done=datetime.now(UTC),
            group_id=group_id if isinstance(group_id, str) else None,
            parent_id=parent_id if isinstance(parent_id, str) else None,
        )
        await self.backend.store(meta)

    async def _call_errbacks(
        self,
        running: TaskMessage,
        request: TaskMessage,
        info: ExceptionInfo,
        exc: BaseException,
        traceback: str | None,
    ) -> tuple[ResultRef, ...]:
        """``request``'s errbacks for ``exc`` (``Backend._call_task_errbacks``); what was sent."""
        published = []
        for errback in request.errbacks:
            task = self.app.tasks.get(errback.task)
            if task is None or task.options.bind or not _takes_request(task, errback):
                published.append(errback)
                continue
            try:
                await self._call_here(task, errback, request, exc, traceback)
            except Exception as error:
                self.log.exception("errback_failed", errback=errback.task, error=repr(error))
        if not published:
            return ()
        planner = self._planner(running)
        root_id = request.root_id or request.id
        planner.apply(group(*published), (request.id,), parent_id=request.id, root_id=root_id)
        await self._carry_out(planner)
        return planner.trail

    async def _call_here(
        self,
        task: Task[Any, Any],
        errback: Signature,
        request: TaskMessage,
        exc: BaseException,
        traceback: str | None,
    ) -> None:
        """A new-style errback, in the worker: ``errback(request, exc, traceback)``."""
        args: tuple[Any, ...] = errback.args
        if not errback.immutable:
            args = (Request(request, hostname=self.hostname), exc, traceback, *args)
        if task.is_coroutine:
            await task.fn(*args, **errback.kwargs)
        else:
            await asyncio.to_thread(task.fn, *args, **errback.kwargs)


def _takes_request(task: Task[Any, Any], errback: Signature) -> bool:
    """Whether ``errback`` is new-style: its function takes more than one positional argument
    once the errback's own arguments are bound (Celery's ``_errback_arity_greater``)."""
    if not errback.immutable and (errback.args or errback.kwargs):
        try:
            return _arity_greater(functools.partial(task.fn, *errback.args, **errback.kwargs))
        except (TypeError, ValueError):
            pass
    try:
        return _arity_greater(task.fn)
    except (TypeError, ValueError):
        return False


def _arity_greater(fn: Any, n: int = 1) -> bool:
    spec = inspect.getfullargspec(fn)
    return bool(spec.varargs) or len(spec.args) > n


def _result_errbacks(sig: Signature) -> list[Signature]:
    """The errbacks linked to the result of ``sig``: a chord's and its body's, a group's and
    its tasks' (``celery.backends.base._result_errbacks``)."""
    errbacks: list[Signature] = []
    while sig.subtask_type == CHORD and sig.kwargs.get("body") is not None:
        errbacks.extend(signatures(sig.options.get("link_error"), "link_error"))
        sig = signatures(sig.kwargs["body"], "chord.body")[0]
    errbacks.extend(signatures(sig.options.get("link_error"), "link_error"))
    if sig.subtask_type == GROUP:
        for member in signatures(sig.kwargs.get("tasks"), "tasks"):
            errbacks.extend(_result_errbacks(member))
    return errbacks
