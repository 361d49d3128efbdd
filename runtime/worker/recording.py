"""What a run leaves behind: its result record, the canvas around it, its run in the registry.

:class:`Recorder` stores outcomes in the result backend as Celery's worker does (SUCCESS with
the children a run sent, FAILURE with the exception, RETRY, REVOKED; nothing when results are
ignored), has the workflow (:mod:`runtime.canvas.workflow`) publish what follows, and records
the run's progress in the run registry (:mod:`runtime.results.runs`) when the app keeps one.
Bookkeeping that fails is logged and never fails the task.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from protocol import (
    READY_STATES,
    EncodeError,
    ExceptionInfo,
    ExtendedInfo,
    ResultMeta,
    ResultRef,
    State,
    TaskMessage,
)
from runtime.app import App
from runtime.canvas.workflow import Workflow
from runtime.errors import BackendError
from runtime.results.backend import RedisResultBackend
from runtime.results.runs import RunRegistry
from runtime.task import Task
from runtime.transports.base import Delivery

from .outcome import Outcome

__all__ = ["Recorder", "ignores_result"]

#: The registry's name for how a run ended, by the state its result records.
_ENDED = {State.SUCCESS: "succeeded", State.FAILURE: "failed", State.RETRY: "retried",
          State.REVOKED: "revoked"}  # fmt: skip


class Recorder:
    """Records the runs of ``app``'s tasks on this worker (``hostname``)."""

    def __init__(
        self,
        app: App,
        backend: RedisResultBackend | None,
        workflow: Workflow,
        *,
        runs: RunRegistry | None,
        hostname: str,
        log: Any,
    ) -> None:
        self.app = app
        self.backend = backend
        self.workflow = workflow
        self.runs = runs
        self.hostname = hostname
        self.log = log

    # -- the run registry ------------------------------------------------------------------------

    async def received(self, message: TaskMessage, queue: str) -> bool:
        """Record the run received; ``False`` if the controller skipped it (drop it)."""
        if self.runs is None:
            return True
        try:
            previous = await self.runs.received(message, queue, self.hostname)
            if previous != "skipped":
                return True
            await self.runs.note(
                message.id, dropped_at=datetime.now(UTC).timestamp(), dropped_by=self.hostname
            )
        except BackendError as exc:
            self.log.warning("run_not_recorded", task_id=message.id, error=str(exc))
            return True
        return False

    async def started(
        self, message: TaskMessage, *, acks_late: bool, ref: str | None, hard_limit: float | None
    ) -> None:
        """Record the run started, to end within ``hard_limit``; ``ref`` names its delivery
        for the transport, if the controller can give it back should this worker die."""
        if self.runs is not None:
            try:
                await self.runs.started(
                    message, self.hostname, acks_late=acks_late, ref=ref, hard_limit=hard_limit
                )
            except BackendError as exc:
                self.log.warning("run_not_recorded", task_id=message.id, error=str(exc))

    async def ended(self, message: TaskMessage, status: State) -> None:
        """Record how the run ended."""
        if self.runs is not None and status in _ENDED:
            try:
                await self.runs.ended(message, _ENDED[status], self.hostname)
            except BackendError as exc:
                self.log.warning("run_not_recorded", task_id=message.id, error=str(exc))

    # -- results -----------------------------------------------------------------------------

    async def record(
        self,
        task: Task[Any, Any],
        message: TaskMessage,
        delivery: Delivery,
        outcome: Outcome,
        children: tuple[ResultRef, ...] = (),
    ) -> Outcome:
        """Store the outcome; around it, what the canvas needs (:mod:`runtime.canvas.workflow`).
        Returns it as stored: FAILURE if its callbacks or its value could not be sent."""
        if outcome.state is State.SUCCESS:
            try:  # callbacks and the chain's next step go first: they are the children
                children += await self.workflow.succeeded(message, outcome.value)
            except Exception as exc:  # as in Celery, what cannot be sent fails the task
                outcome = Outcome.failed(exc)
        ignored = ignores_result(task, message)
        if outcome.state is State.SUCCESS:
            try:
                if not ignored:
                    value = outcome.value
                    await self.store(message, delivery, State.SUCCESS, value, children=children)
            except EncodeError as exc:  # the value cannot be serialised: say so, as Celery does
                outcome = Outcome(State.FAILURE, exception=exc)
            else:
                await self.workflow.ended(message, State.SUCCESS, outcome.value)
                return outcome
        stored = not ignored or task.options.store_errors_even_if_ignored
        if outcome.state is State.RETRY:
            reason = getattr(outcome.exception, "exc", None)
            info = None
            if reason is not None:
                info = ExceptionInfo.from_exception(reason, serializer=self.app.result_serializer)
            if stored:
                await self.store(
                    message, delivery, State.RETRY, info, outcome.traceback, children=children
                )
            return outcome
        assert outcome.exception is not None
        error, traceback = outcome.exception, outcome.traceback
        info = ExceptionInfo.from_exception(error, serializer=self.app.result_serializer)
        if stored:
            await self.store(message, delivery, State.FAILURE, info, traceback)
        await self.workflow.failed(message, info, error, traceback, stored=stored)
        return outcome

    async def store(
        self,
        message: TaskMessage,
        delivery: Delivery,
        status: State,
        result: Any,
        traceback: str | None = None,
        *,
        children: tuple[ResultRef, ...] = (),
    ) -> None:
        if self.backend is None:
            return
        extended = None
        if self.app.result_extended:
            extended = ExtendedInfo(
                name=message.task,
                args=list(message.args),
                kwargs=dict(message.kwargs),
                worker=self.hostname,
                retries=message.retries,
                queue=delivery.routing_key,
            )
        meta = ResultMeta(
            task_id=message.id,
            status=status,
            result=result,
            traceback=traceback,
            children=children,
            date_done=datetime.now(UTC) if status in READY_STATES else None,
            group_id=message.group_id,
            parent_id=message.parent_id,
            extended=extended,
        )
        try:
            await self.backend.store(meta)
        except BackendError as exc:
            self.log.error(
                "result_not_stored", task_id=message.id, status=status.value, error=str(exc)
            )


def ignores_result(task: Task[Any, Any], message: TaskMessage) -> bool:
    """Whether the run's result is not stored: the message's ``ignore_result``, else the
    task's."""
    return task.options.ignore_result if message.ignore_result is None else message.ignore_result
