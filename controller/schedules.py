"""Periodic schedules as Celery beat defines them, and which of their ticks are due.

A :class:`Schedule` fires ``task`` with ``args``, ``kwargs`` and ``options`` (``queue``,
``expires``, ``priority``, ...) every ``every`` seconds or on a cron expression (parsed by
croniter, in the schedule's time zone). Entries come from a Celery project's ``beat_schedule``
unchanged (:func:`from_beat_entry`: ``crontab(...)``, ``schedule(...)``, a ``timedelta`` or a
number of seconds, plus a cron string, celeriac's own) or from a TOML file
(:func:`from_toml`).

Due ticks (:func:`plan`): a schedule's ticks follow its last fired one, so every controller
computes the same due times from the state they share. A tick at most ``grace`` seconds
overdue is *late* and always fires (a failover takes a few seconds; none of its ticks is
lost). An older one was *missed* (the controllers were down): ``catch_up="once"`` fires the
latest missed tick once, as Celery beat does after downtime; ``"skip"`` fires none of them.
"""

from __future__ import annotations

import math
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

__all__ = [
    "CATCH_UP_POLICIES",
    "FirePlan",
    "Schedule",
    "ScheduleError",
    "fire_id",
    "from_beat_entry",
    "from_beat_schedule",
    "from_toml",
    "plan",
    "task_id_for",
]

CATCH_UP_POLICIES = ("once", "skip")
#: Options a schedule may give its messages, as Celery's ``apply_async`` names them.
MESSAGE_OPTIONS = frozenset(
    ("queue", "expires", "priority", "headers", "time_limit", "soft_time_limit", "serializer",
     "ignore_result")
)  # fmt: skip
_NAMESPACE = uuid.UUID("9a1c0c52-5d8e-4b9b-9a8e-6f1e2f6c0c1a")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ScheduleError(ValueError):
    """A schedule that cannot work; the message names the entry."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """One periodic entry: fire ``task`` every ``every`` seconds, or on ``cron``."""

    name: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    every: float | None = None
    cron: str | None = None
    timezone: str = "UTC"
    catch_up: Literal["once", "skip"] = "once"

    def __post_init__(self) -> None:
        if not self.name:
            raise ScheduleError("a schedule needs a name")
        if not self.task or not isinstance(self.task, str):
            raise ScheduleError(f"schedule {self.name!r}: no task name")
        if (self.every is None) == (self.cron is None):
            raise ScheduleError(f"schedule {self.name!r}: give either an interval or a cron")
        if self.every is not None and not (0 < self.every < math.inf):
            raise ScheduleError(
                f"schedule {self.name!r}: the interval must be a positive number of seconds, "
                f"not {self.every!r}"
            )
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ScheduleError(f"schedule {self.name!r}: {self.cron!r} is not a cron expression")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ScheduleError(
                f"schedule {self.name!r}: unknown time zone {self.timezone!r}"
            ) from None
        if self.catch_up not in CATCH_UP_POLICIES:
            raise ScheduleError(
                f"schedule {self.name!r}: catch_up must be one of {', '.join(CATCH_UP_POLICIES)}, "
                f"not {self.catch_up!r}"
            )
        unknown = sorted(set(self.options) - MESSAGE_OPTIONS)
        if unknown:
            raise ScheduleError(
                f"schedule {self.name!r}: unknown option(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(MESSAGE_OPTIONS))})"
            )

    @property
    def describe(self) -> str:
        """``every 30s`` or ``cron */5 * * * * (UTC)``, for tables and logs."""
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"cron {self.cron} ({self.timezone})"

    def next_due(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (an aware time), in UTC."""
        if self.every is not None:
            return after + timedelta(seconds=self.every)
        assert self.cron is not None
        local = after.astimezone(ZoneInfo(self.timezone))
        due: datetime = croniter(self.cron, local).get_next(datetime)
        return due.astimezone(UTC)

    def last_due(self, at_or_before: datetime, after: datetime) -> datetime | None:
        """The latest tick in ``(after, at_or_before]`` following ``after``, or ``None``."""
        if self.every is not None:
            steps = math.floor((at_or_before - after).total_seconds() / self.every)
            return after + timedelta(seconds=self.every * steps) if steps >= 1 else None
        assert self.cron is not None
        local = at_or_before.astimezone(ZoneInfo(self.timezone))
        it = croniter(self.cron, local + timedelta(microseconds=1))
        due: datetime = it.get_prev(datetime).astimezone(UTC)
        return due if due > after else None


@dataclass(frozen=True, slots=True)
class FirePlan:
    """What to do for one schedule now: fire ``fire`` (due times, oldest first), having skipped
    ``skipped`` missed ticks up to ``skipped_to``."""

    fire: tuple[datetime, ...] = ()
    skipped: int = 0
    skipped_to: datetime | None = None


def plan(schedule: Schedule, last: datetime, now: datetime, *, grace: float) -> FirePlan:
    """The ticks of ``schedule`` after ``last`` that are due at ``now`` (see the module doc)."""
    horizon = now - timedelta(seconds=grace)
    missed_until = schedule.last_due(horizon, last) if schedule.next_due(last) < horizon else None
    fire: list[datetime] = []
    skipped = 0
    skipped_to = None
    start = last
    if missed_until is not None:
        count = _count_between(schedule, last, missed_until)
        if schedule.catch_up == "once":
            fire.append(missed_until)
            skipped = count - 1
        else:
            skipped = count
        skipped_to = missed_until if skipped else None
        start = missed_until
    due = schedule.next_due(start)
    while due <= now:
        fire.append(due)
        due = schedule.next_due(due)
    return FirePlan(tuple(fire), skipped, skipped_to)


def _count_between(schedule: Schedule, after: datetime, until: datetime) -> int:
    """How many ticks fall in ``(after, until]`` (``until`` a tick), for the skip count."""
    if schedule.every is not None:
        return round((until - after).total_seconds() / schedule.every)
    count, due = 0, schedule.next_due(after)
    while due <= until and count < 1_000_000:
        count, due = count + 1, schedule.next_due(due)
    return count


def fire_id(schedule: Schedule, due: datetime) -> str:
    """The one name of ``schedule``'s tick due at ``due``: every controller computes the same."""
    return f"{schedule.name}@{due.astimezone(UTC).isoformat()}"


def task_id_for(fire: str) -> str:
    """The task id a fire's message carries: derived from the fire, so a re-publish after a
    crash carries the same id."""
    return str(uuid.uuid5(_NAMESPACE, fire))


def parse_interval(value: Any, name: str) -> float:
    """Seconds from a number, a ``timedelta``, a Celery ``schedule`` or ``"30s"``/``"5m"``."""
    if isinstance(value, bool):
        raise ScheduleError(f"schedule {name!r}: {value!r} is not an interval")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    run_every = getattr(value, "run_every", None)
    if isinstance(run_every, timedelta):  # celery.schedules.schedule
        return run_every.total_seconds()
    if isinstance(value, str):
        text = value.strip()
        for unit in sorted(_UNITS, key=len, reverse=True):
            if text.endswith(unit):
                try:
                    return float(text[: -len(unit)]) * _UNITS[unit]
                except ValueError:
                    break
        try:
            return float(text)
        except ValueError:
            pass
    raise ScheduleError(f"schedule {name!r}: {value!r} is not an interval")


def _celery_crontab(value: Any) -> str | None:
    """A Celery ``crontab``'s expression, or ``None`` if ``value`` is not one."""
    fields = ("_orig_minute", "_orig_hour", "_orig_day_of_month", "_orig_month_of_year",
              "_orig_day_of_week")  # fmt: skip
    if not all(hasattr(value, name) for name in fields):
        return None
    return " ".join(str(getattr(value, name)) for name in fields)


def from_beat_entry(
    name: str, entry: Mapping[str, Any], *, timezone: str = "UTC", catch_up: str = "once"
) -> Schedule:
    """One entry of a Celery ``beat_schedule``, unchanged: ``task``, ``schedule``, ``args``,
    ``kwargs``, ``options``; ``catch_up`` (celeriac's) may be set on the entry too. Cron
    schedules run in ``timezone`` (the Celery app's ``timezone`` setting)."""
    if not isinstance(entry, Mapping):
        raise ScheduleError(f"schedule {name!r}: an entry is a mapping, not {type(entry).__name__}")
    if "schedule" not in entry:
        raise ScheduleError(f"schedule {name!r}: no 'schedule'")
    value = entry["schedule"]
    every: float | None = None
    cron = _celery_crontab(value)
    if cron is not None:
        pass
    elif isinstance(value, str) and len(value.split()) >= 5:
        cron = value
    elif type(value).__name__ == "solar":
        raise ScheduleError(f"schedule {name!r}: solar schedules are not supported")
    else:
        every = parse_interval(value, name)
    kwargs = entry.get("kwargs") or {}
    args = entry.get("args") or ()
    if not isinstance(args, list | tuple) or not isinstance(kwargs, Mapping):
        raise ScheduleError(f"schedule {name!r}: args must be a list and kwargs a mapping")
    return Schedule(
        name=name,
        task=entry.get("task", ""),
        args=tuple(args),
        kwargs=dict(kwargs),
        options=dict(entry.get("options") or {}),
        every=every,
        cron=cron,
        timezone=timezone,
        catch_up=entry.get("catch_up", catch_up),
    )


def from_beat_schedule(
    entries: Mapping[str, Mapping[str, Any]], *, timezone: str = "UTC"
) -> list[Schedule]:
    """Every entry of a ``beat_schedule`` mapping (see :func:`from_beat_entry`)."""
    return [from_beat_entry(name, entry, timezone=timezone) for name, entry in entries.items()]


def from_toml(text: str) -> list[Schedule]:
    """The ``[schedules.<name>]`` tables of a TOML file::

    [schedules.cleanup]
    task = "housekeeping.cleanup"
    cron = "*/5 * * * *"        # or: every = "30s" (or a number of seconds)
    args = [1]
    kwargs = {dry_run = false}
    queue = "housekeeping"      # and expires, priority, time_limit, ...
    timezone = "Europe/Berlin"  # for cron; default UTC
    catch_up = "skip"           # default "once"
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleError(f"the schedule file is not TOML: {exc}") from None
    tables = document.get("schedules", {})
    if not isinstance(tables, dict):
        raise ScheduleError("'schedules' must be a table of [schedules.<name>] tables")
    found = []
    known = {"task", "cron", "every", "args", "kwargs", "timezone", "catch_up"}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ScheduleError(f"schedule {name!r}: must be a table")
        if ("cron" in table) == ("every" in table):
            raise ScheduleError(f"schedule {name!r}: give either every or cron")
        args, kwargs = table.get("args", []), table.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ScheduleError(f"schedule {name!r}: args must be a list and kwargs a table")
        found.append(
            Schedule(
                name=name,
                task=table.get("task", ""),
                args=tuple(args),
                kwargs=kwargs,
                options={k: v for k, v in table.items() if k not in known},
                every=parse_interval(table["every"], name) if "every" in table else None,
                cron=table.get("cron"),
                timezone=table.get("timezone", "UTC"),
                catch_up=table.get("catch_up", "once"),
            )
        )
    return found
