"""The reconciler: runs queued for too long become ``skipped``, and nobody waits on them forever.

At start-up and every ``interval`` seconds it reads the run registry
(:mod:`runtime.results.runs`) for runs still queued longer than their queue's stale timeout
(default 45 minutes, the IntegraMon seed's; per queue overridable). Each such run is:

* marked ``skipped`` in the registry, only if it is still queued (one atomic step, so with any
  number of controllers each run is skipped once), with the reason, when it was detected, by
  which controller, and the state it was last seen in;
* given a terminal result, REVOKED with ``TaskRevokedError('skipped: ...')``, so a Celery client
  waiting on it gets an answer instead of PENDING forever;
* revoked, as ``app.control.revoke`` does, so a Celery worker that receives it later drops it
  too (a celeriac worker drops it on the registry's word, however late it arrives).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from protocol import ExceptionInfo, ResultMeta, State
from runtime import App
from runtime.errors import BrokerConnectionError
from runtime.results.runs import RunRegistry

from .loops import every
from .metrics import ControllerMetrics

__all__ = ["DEFAULT_INTERVAL", "DEFAULT_STALE_AFTER", "Reconciler"]

#: Seconds a run may stay queued before it is skipped (45 minutes).
DEFAULT_STALE_AFTER = 45 * 60.0
#: Seconds between two passes.
DEFAULT_INTERVAL = 60.0


class Reconciler:
    """Skips ``runs`` queued longer than ``stale_after`` seconds (``per_queue`` overrides it by
    queue name), answering their clients through ``app``'s result backend and revoking them."""

    def __init__(
        self,
        runs: RunRegistry,
        app: App,
        *,
        controller_id: str,
        stale_after: float = DEFAULT_STALE_AFTER,
        per_queue: Mapping[str, float] | None = None,
        interval: float = DEFAULT_INTERVAL,
        metrics: ControllerMetrics | None = None,
        logger: Any = None,
    ) -> None:
        self.runs = runs
        self.app = app
        self.controller_id = controller_id
        self.stale_after = stale_after
        self.per_queue = dict(per_queue or {})
        self.interval = interval
        self.log = logger or structlog.get_logger("celeriac.reconciler")
        self.metrics = metrics or ControllerMetrics()

    def timeout_for(self, queue: str | None) -> float:
        """The stale timeout of ``queue``."""
        return self.per_queue.get(queue or "", self.stale_after)

    async def run(self) -> None:
        """A pass now, then one every ``interval`` seconds, until cancelled."""
        await every(
            self.interval,
            self.reconcile,
            log=self.log,
            failed="reconcile_failed",
            metrics=self.metrics,
        )

    async def reconcile(self) -> list[str]:
        """One pass; the task ids this controller skipped."""
        now = time.time()
        shortest = min([self.stale_after, *self.per_queue.values()])
        skipped = []
        for task_id in await self.runs.queued_before(now - shortest):
            run = await self.runs.get(task_id)
            if run is None or run.state != "queued":
                continue
            timeout = self.timeout_for(run.get("queue"))
            queued_at = float(run.get("queued_at") or now)
            if now - queued_at < timeout:
                continue
            reason = f"skipped: queued longer than {timeout:g} s without starting"
            detected = datetime.fromtimestamp(now, UTC).isoformat()
            if not await self.runs.move(
                task_id, "queued", "skipped", reason=reason, detected_at=detected,
                reconciled_by=self.controller_id,
            ):  # fmt: skip
                continue  # started meanwhile, or another controller skipped it
            skipped.append(task_id)
            self.metrics.runs_skipped.inc()
            self.log.warning(
                "run_skipped", task_id=task_id, task=run.get("task"), queue=run.get("queue"),
                queued_for=round(now - queued_at, 1), reason=reason,
            )  # fmt: skip
            await self._answer(task_id, reason)
        await self.runs.trim()
        return skipped

    async def _answer(self, task_id: str, reason: str) -> None:
        """A terminal result for the run's client, and a revocation for every worker."""
        backend = self.app.backend
        if backend is not None:
            revoked = ExceptionInfo("TaskRevokedError", (reason,), "celery.exceptions")
            meta = ResultMeta(task_id=task_id, status=State.REVOKED, result=revoked,
                              date_done=datetime.now(UTC))  # fmt: skip
            await backend.store(meta)
        try:
            await self.app.revoke(task_id)
        except (BrokerConnectionError, RuntimeError) as exc:  # no fanout (SQS), broker down
            self.log.warning("run_not_revoked", task_id=task_id, error=str(exc))
