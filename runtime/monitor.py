"""Monitor-queue mirroring: every task message celeriac publishes, also in a monitor queue.

The Cadasta worker toolbox has every producer, workers included, publish each task message
both to its work queue and to a task-monitor queue (``platform.fifo``), which its platform
consumes to record every task scheduled: the monitor queue is bound to a topic exchange with
``#``. With ``App(task_monitor_queue=...)`` (or ``CELERIAC_MONITOR_QUEUE``) celeriac does the
same. :func:`publish_task` is the one place a task message is handed to a transport: the
producer (``send_task``, canvas steps, the controller's scheduler: all through
:meth:`runtime.App.publish`) and the worker's retries
(:class:`runtime.worker.retries.RetryPublisher`) go through it, and it publishes the message,
then its copy.

* **The copy** is the same message (same id, headers, properties and body), published to the
  durable topic exchange ``task_monitor_exchange`` with the task's routing key, the monitor
  queue bound to it with ``#`` (:class:`runtime.transports.base.Mirroring`). On RabbitMQ the
  broker routes it; on Redis it is routed as kombu routes a topic exchange (the
  ``_kombu.binding.<exchange>`` set); on SQS, whose exchanges live only in a producer's
  memory, it is sent to the monitor queue itself.
* **What is not copied:** a message deferred to the broker for its ETA (``Transport.defer``)
  is the same delivery coming back later, already copied when it was first published; a
  dead-lettered message is not a task being scheduled; remote control and events are not
  tasks.
* **A copy that cannot be published** is logged (``task_not_mirrored``) and dropped, never
  raised: the task itself is published first and stays published. Raising would make callers
  treat a sent task as unsent (the scheduler would fire it again, a retry would become a
  FAILURE while its message runs), so the monitor misses that one task instead.
* The exchange defaults to ``celeriac.monitor``, not Cadasta's ``task_exchange``: the copy
  carries the task's routing key, so on an exchange where work queues are also bound by
  routing key (as Cadasta's Celery producers bind them) the copy would reach the work queue
  too and the task would run twice. Give an exchange only monitor queues are bound to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from protocol import WireMessage
from runtime.transports.base import Mirroring, QueueSpec, Transport

__all__ = ["DEFAULT_MONITOR_EXCHANGE", "TaskMonitor", "publish_task"]

#: The topic exchange copies go through unless ``task_monitor_exchange`` says otherwise.
DEFAULT_MONITOR_EXCHANGE = "celeriac.monitor"


@dataclass(frozen=True, slots=True)
class TaskMonitor:
    """Where copies of task messages go: ``queue``, bound with ``#`` to topic ``exchange``."""

    queue: QueueSpec
    exchange: str = DEFAULT_MONITOR_EXCHANGE

    async def copy(
        self, transport: Transport, message: WireMessage, *, routing_key: str, log: Any = None
    ) -> bool:
        """Publish the copy of ``message`` (published with ``routing_key``); ``False``, and a
        warning logged, if it could not be: never raises but for cancellation."""
        log = log or structlog.get_logger("celeriac.monitor")
        task_id = message.headers.get("id")
        if not isinstance(transport, Mirroring):
            log.warning("task_not_mirrored", task_id=task_id, monitor_queue=self.queue.name,
                        error=f"{type(transport).__name__} cannot mirror")  # fmt: skip
            return False
        try:
            await transport.mirror(
                message, exchange=self.exchange, routing_key=routing_key, queue=self.queue
            )
        except Exception as exc:  # whatever it is, the task itself is published
            log.warning("task_not_mirrored", task_id=task_id, monitor_queue=self.queue.name,
                        error=str(exc) or repr(exc))  # fmt: skip
            return False
        return True


async def publish_task(
    transport: Transport,
    message: WireMessage,
    *,
    routing_key: str,
    exchange: str = "",
    monitor: TaskMonitor | None = None,
    log: Any = None,
) -> None:
    """Publish task ``message`` through ``transport`` and, with a ``monitor``, its copy to
    the monitor queue (see the module docstring). Raises only if the task itself cannot be
    published; a message addressed to the monitor queue itself is not copied again."""
    await transport.publish(message, routing_key=routing_key, exchange=exchange)
    if monitor is None or (not exchange and routing_key == monitor.queue.name):
        return
    await monitor.copy(transport, message, routing_key=routing_key, log=log)
