"""Per-queue time limits: which (soft, hard) cap each queue puts on the tasks it runs.

The defaults mirror the deployments celeriac replaces (one queue per duration class, see the
README): ``standard`` runs for at most 15 minutes, ``timed_5min`` … ``timed_24hour`` as
named, and ``infinite`` and ``cron`` without limit. A queue not in the table is unlimited.

The soft limit comes ``grace`` seconds before the hard one, so a task that catches
``SoftTimeLimitExceeded`` has time to clean up: a tenth of the hard limit, at most a minute.

Operators override the table with an environment variable or a TOML file::

    CELERIAC_QUEUE_LIMITS="standard=900,timed_5min=250/300,reports=none"

    [queues.standard]        # celeriac.toml
    hard = 900
    [queues.reports]
    soft = 3000
    hard = 3600

A value is ``hard`` (soft derived as above), ``soft/hard``, or ``none`` for no limit.

The TOML file also says where a queue runs its plain (``def``) functions: ``pool = "thread"``
(the default) or ``pool = "process"``, where a hard limit kills a call blocked in C code
(:mod:`runtime.worker.processes`)::

    [queues.reports]
    pool = "process"         # keeps its limits; add soft/hard to change them
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

__all__ = ["DEFAULT_POLICY", "QueuePolicy", "TimeLimits"]

_MAX_GRACE = 60.0


@dataclass(frozen=True, slots=True)
class TimeLimits:
    """A soft and a hard limit in seconds; ``None`` means no limit."""

    soft: float | None = None
    hard: float | None = None

    def __post_init__(self) -> None:
        for name in ("soft", "hard"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} limit must be a positive number, got {value!r}")
        if self.soft is not None and self.hard is not None and self.soft > self.hard:
            raise ValueError(f"soft limit {self.soft} is after hard limit {self.hard}")

    @classmethod
    def lenient(cls, soft: float | None, hard: float | None) -> TimeLimits:
        """Limits as Celery reads them: a value <= 0 is no limit, and a soft limit at or after
        the hard one would never fire, so it is dropped. Never raises."""
        if soft is None and hard is None:  # most tasks: one shared value, nothing to check
            return UNLIMITED
        soft = soft if soft is not None and soft > 0 else None
        hard = hard if hard is not None and hard > 0 else None
        if soft is not None and hard is not None and soft >= hard:
            soft = None
        return cls(soft=soft, hard=hard)

    @classmethod
    def capped_at(cls, hard: float) -> TimeLimits:
        """A hard cap with the soft limit ``min(hard / 10, 60)`` seconds before it."""
        return cls(soft=hard - min(hard / 10, _MAX_GRACE), hard=hard)

    def within(self, cap: TimeLimits) -> TimeLimits:
        """The stricter of these limits and ``cap``, each limit taken separately.

        A task's hard limit of 60 s on a queue whose soft cap is 840 s runs with no soft limit:
        the soft cap comes after the task is already gone.
        """
        return TimeLimits.lenient(_smaller(self.soft, cap.soft), _smaller(self.hard, cap.hard))


UNLIMITED = TimeLimits()


def _smaller(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _minutes(n: float) -> TimeLimits:
    return TimeLimits.capped_at(n * 60)


_DEFAULTS: dict[str, TimeLimits] = {
    "standard": _minutes(15),
    "timed_5min": _minutes(5),
    "timed_30min": _minutes(30),
    "timed_1hour": _minutes(60),
    "timed_4hour": _minutes(4 * 60),
    "timed_8hour": _minutes(8 * 60),
    "timed_24hour": _minutes(24 * 60),
    "infinite": UNLIMITED,
    "cron": UNLIMITED,
}


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """The table from queue name to :class:`TimeLimits`, and the queues whose plain-function
    tasks run in processes (``pool = "process"``)."""

    limits: Mapping[str, TimeLimits] = field(default_factory=lambda: dict(_DEFAULTS))
    process_queues: frozenset[str] = frozenset()

    def for_queue(self, queue: str) -> TimeLimits:
        """The cap of ``queue``; unlimited for a queue the table does not name."""
        return self.limits.get(queue, UNLIMITED)

    def effective(self, queue: str, requested: TimeLimits) -> TimeLimits:
        """The limits a task runs under: what the message or task asks, within the queue's cap."""
        return requested.within(self.for_queue(queue))

    def isolates(self, queue: str) -> bool:
        """Whether ``queue`` runs plain functions in processes, where a hard limit can kill them."""
        return queue in self.process_queues

    def updated(self, overrides: Mapping[str, TimeLimits]) -> QueuePolicy:
        """A copy with ``overrides`` replacing or adding entries."""
        return replace(self, limits={**self.limits, **overrides})

    def with_env(self, value: str | None) -> QueuePolicy:
        """Apply ``CELERIAC_QUEUE_LIMITS``: ``queue=hard``, ``queue=soft/hard``, ``queue=none``."""
        if not value or not value.strip():
            return self
        return self.updated(dict(_parse_env_entries(value.split(","))))

    def with_toml(self, text: str) -> QueuePolicy:
        """Apply the ``[queues.<name>]`` tables of a TOML config file (``soft``, ``hard``,
        ``pool = "thread"`` or ``"process"``)."""
        try:
            queues = tomllib.loads(text).get("queues", {})
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"queue limits file is not valid TOML: {exc}") from None
        overrides = {}
        processes = set(self.process_queues)
        for name, entry in queues.items():
            if not isinstance(entry, dict) or not set(entry) <= {"soft", "hard", "pool"}:
                raise ValueError(
                    f"[queues.{name}] takes only 'soft' and 'hard' (seconds) and 'pool'"
                )
            # A table naming only its pool keeps the queue's limits; an empty one clears them.
            if "soft" in entry or "hard" in entry or "pool" not in entry:
                overrides[name] = _limits(entry.get("soft"), entry.get("hard"), name)
            pool = entry.get("pool", "process" if name in processes else "thread")
            if pool not in ("thread", "process"):
                raise ValueError(f"[queues.{name}] pool is 'thread' or 'process', not {pool!r}")
            (processes.add if pool == "process" else processes.discard)(name)
        return replace(self.updated(overrides), process_queues=frozenset(processes))


def _limits(soft: object, hard: object, queue: str) -> TimeLimits:
    for value in (soft, hard):
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise ValueError(f"queue {queue!r}: limits are numbers of seconds, got {value!r}")
    if soft is None and hard is not None:
        return TimeLimits.capped_at(float(hard))  # type: ignore[arg-type]
    try:
        return TimeLimits(soft=soft, hard=hard)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"queue {queue!r}: {exc}") from None


def _parse_env_entries(entries: Iterable[str]) -> Iterable[tuple[str, TimeLimits]]:
    for entry in entries:
        name, sep, spec = entry.strip().partition("=")
        if not sep or not name:
            raise ValueError(f"queue limit {entry!r} is not 'queue=seconds'")
        spec = spec.strip()
        if spec.lower() == "none":
            yield name, UNLIMITED
            continue
        soft_text, slash, hard_text = spec.rpartition("/")
        try:
            hard = float(hard_text)
            soft = float(soft_text) if slash else None
        except ValueError:
            raise ValueError(f"queue limit {entry!r}: {spec!r} is not seconds") from None
        yield name, _limits(soft, hard, name)


DEFAULT_POLICY = QueuePolicy()
