"""Recovery: the runs of a worker whose heart stopped go back to their queue, or are lost.

Workers with a run registry beat their heart into it (:mod:`runtime.worker.heartbeat`). A
worker silent for 1.5 of its own heartbeat intervals is taken as dead, and each run the
registry has as started on it is seen to, as Celery's ``acks_late`` and
``reject_on_worker_lost`` define:

* an ``acks_late`` run's message was never acknowledged: it goes back to its queue now, marked
  redelivered (on Redis the controller restores it from kombu's ``unacked`` record, without
  waiting for the visibility timeout; RabbitMQ requeued it when the connection died), and the
  run is ``queued`` again, so another worker runs it;
* any other run's message was acknowledged when it started, so nothing can run it again: it is
  recorded ``lost``, with a FAILURE result of ``WorkerLostError`` for its client.

Each move happens only while the run is still ``started`` (one atomic step), so with several
controllers each run is recovered once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import structlog

from protocol import ExceptionInfo, ResultMeta, State
from runtime import App
from runtime.results.runs import Run, RunRegistry
from runtime.transports.base import Recovering

from .loops import every
from .metrics import ControllerMetrics

__all__ = ["DEAD_AFTER_BEATS", "Recovery"]

#: A worker is dead when its heart has not beaten for this many of its intervals.
DEAD_AFTER_BEATS = 1.5


class Recovery:
    """Checks the heartbeats in ``runs`` every ``check_every`` seconds and recovers the runs of
    dead workers, through ``app``'s broker connection and result backend."""

    def __init__(
        self,
        runs: RunRegistry,
        app: App,
        *,
        controller_id: str,
        check_every: float = 0.5,
        metrics: ControllerMetrics | None = None,
        logger: Any = None,
    ) -> None:
        self.runs = runs
        self.app = app
        self.controller_id = controller_id
        self.check_every = check_every
        self.log = logger or structlog.get_logger("celeriac.recovery")
        self.metrics = metrics or ControllerMetrics()

    async def run(self) -> None:
        """Check now, then every ``check_every`` seconds, until cancelled."""
        await every(
            self.check_every,
            self.check,
            log=self.log,
            failed="recovery_failed",
            metrics=self.metrics,
        )

    async def check(self) -> list[str]:
        """One pass; the task ids this controller recovered."""
        now = time.time()
        recovered = []
        for worker in await self.runs.workers():
            beat_at = float(worker.get("beat_at") or 0)
            interval = float(worker.get("interval") or 0)
            if not beat_at or now - beat_at <= DEAD_AFTER_BEATS * interval:
                continue
            name = worker.task_id
            self.log.warning("worker_lost", worker=name, silent_for=round(now - beat_at, 1))
            for run in await self.runs.started_on(name):
                if await self._recover(run, name):
                    recovered.append(run.task_id)
            await self.runs.forget_worker(name)
        return recovered

    async def _recover(self, run: Run, worker: str) -> bool:
        reason = f"worker {worker} stopped heart-beating"
        detected = datetime.now(UTC).isoformat()
        metadata = {"reason": reason, "detected_at": detected, "reconciled_by": self.controller_id}
        if run.get("acks_late") == "1":
            ref = run.get("ref")
            transport = await self.app.connect()
            restored = False
            if ref and isinstance(transport, Recovering):
                restored = await transport.restore_now(ref)
            moved = await self.runs.move(
                run.task_id, "started", "queued", queued_at=repr(time.time()), **metadata
            )
            if moved:
                self.metrics.runs_recovered.labels("requeued").inc()
                self.log.warning(
                    "run_returned", task_id=run.task_id, task=run.get("task"),
                    queue=run.get("queue"), worker=worker, restored=restored,
                )  # fmt: skip
            return moved
        if not await self.runs.move(run.task_id, "started", "lost", **metadata):
            return False
        self.metrics.runs_recovered.labels("lost").inc()
        self.log.warning("run_lost", task_id=run.task_id, task=run.get("task"), worker=worker)
        backend = self.app.backend
        if backend is not None:
            lost = ExceptionInfo(
                "WorkerLostError", (f"Worker exited prematurely: {reason}.",), "billiard.exceptions"
            )
            meta = ResultMeta(
                task_id=run.task_id, status=State.FAILURE, result=lost, date_done=datetime.now(UTC)
            )
            await backend.store(meta)
        return True
