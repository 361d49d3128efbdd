"""The task message value: everything a worker needs from one Celery task message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import _fields
from .signature import Signature

__all__ = ["TaskMessage"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskMessage:
    """One Celery task message, decoded and checked.

    Field names follow Celery's ``Request``/``Context``. Times are timezone-aware (naive times
    on the wire are UTC, as Celery's worker reads them). ``chain`` is in wire order: the *last*
    signature is the next task to run. ``headers`` holds only the custom headers a client added
    with ``apply_async(headers=...)``; every header Celery defines has its own field.
    ``protocol`` says which wire version it was decoded from (1 or 2).
    """

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=_fields.empty_mapping)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    shadow: str | None = None
    callbacks: tuple[Signature, ...] = ()
    errbacks: tuple[Signature, ...] = ()
    chain: tuple[Signature, ...] = ()
    chord: Signature | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    priority: int | None = None
    ignore_result: bool | None = None
    origin: str | None = None
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    replaced_task_nesting: int = 0
    stamped_headers: tuple[str, ...] | None = None
    stamps: Mapping[str, Any] = field(default_factory=_fields.empty_mapping)
    lang: str = "py"
    headers: Mapping[str, Any] = field(default_factory=_fields.empty_mapping)
    protocol: int = 2

    @property
    def name(self) -> str:
        """The name shown in logs and events: ``shadow`` when set, else the task name."""
        return self.shadow or self.task

    @property
    def timelimit(self) -> tuple[float | None, float | None]:
        """``(hard, soft)``: the order of Celery's ``timelimit`` header."""
        return (self.time_limit, self.soft_time_limit)
