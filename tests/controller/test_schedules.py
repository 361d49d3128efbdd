"""Schedules: Celery beat entries loaded unchanged, TOML, and which ticks are due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery.schedules import crontab, schedule, solar
from celery.utils.time import ffwd

from controller.schedules import (
    Schedule,
    ScheduleError,
    fire_id,
    from_beat_entry,
    from_beat_schedule,
    from_toml,
    plan,
    task_id_for,
)

T0 = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)


def every(seconds: float, **options: object) -> Schedule:
    return Schedule(name="tick", task="proj.tick", every=seconds, **options)  # type: ignore[arg-type]


def test_a_celery_beat_schedule_loads_unchanged() -> None:
    entries = {
        "every-30s": {"task": "proj.a", "schedule": 30.0, "args": (1, 2)},
        "every-5m": {"task": "proj.b", "schedule": timedelta(minutes=5), "kwargs": {"x": 1}},
        "schedule-obj": {"task": "proj.c", "schedule": schedule(run_every=timedelta(seconds=9))},
        "weekday-mornings": {
            "task": "proj.d",
            "schedule": crontab(minute="*/15", hour="7-9", day_of_week="mon-fri"),
            "options": {"queue": "cron", "expires": 60, "priority": 3},
        },
    }
    loaded = {s.name: s for s in from_beat_schedule(entries, timezone="Europe/Berlin")}

    assert loaded["every-30s"].every == 30.0
    assert loaded["every-30s"].args == (1, 2)
    assert loaded["every-5m"].every == 300.0
    assert loaded["every-5m"].kwargs == {"x": 1}
    assert loaded["schedule-obj"].every == 9.0
    cron = loaded["weekday-mornings"]
    assert cron.cron == "*/15 7-9 * * mon-fri"
    assert cron.timezone == "Europe/Berlin"
    assert cron.options == {"queue": "cron", "expires": 60, "priority": 3}


def test_a_crontab_fires_when_celery_says_it_is_due() -> None:
    """celeriac's next tick for a Celery crontab is the one Celery's own crontab computes."""
    entry = crontab(minute="*/15", hour="7-9", day_of_week="mon-fri")
    loaded = from_beat_entry("c", {"task": "t", "schedule": entry})
    start = datetime(2026, 12, 4, 9, 50, tzinfo=UTC)  # a Friday, after the last window
    last, delta, _ = entry.remaining_delta(start, ffwd=ffwd)
    celery_next = last + delta
    ours = loaded.next_due(start)

    assert ours == datetime(2026, 12, 7, 7, 0, tzinfo=UTC)  # Monday 07:00
    assert ours == celery_next


def test_cron_in_a_time_zone_across_daylight_saving() -> None:
    daily = Schedule(name="d", task="t", cron="30 2 * * *", timezone="Europe/Berlin")
    # 2026-03-29: clocks go from 02:00 to 03:00 in Berlin; 02:30 does not exist that night.
    due = daily.next_due(datetime(2026, 3, 28, 23, 0, tzinfo=UTC))
    assert due == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST
    assert daily.next_due(due) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST


def test_late_ticks_all_fire() -> None:
    """A failover leaves a few ticks overdue: within the grace, every one of them fires."""
    fires = plan(every(1), T0, T0 + timedelta(seconds=5.5), grace=30)
    assert fires.fire == tuple(T0 + timedelta(seconds=s) for s in range(1, 6))
    assert fires.skipped == 0


def test_nothing_is_due_before_the_next_tick() -> None:
    assert plan(every(10), T0, T0 + timedelta(seconds=9.99), grace=30).fire == ()


def test_after_downtime_catch_up_once_fires_the_latest_missed_tick_once() -> None:
    now = T0 + timedelta(minutes=10, seconds=5)
    fires = plan(every(60), T0, now, grace=30)
    # Ticks at 1..10 min: 1..9 are missed (older than 30 s); 10 min is 5 s late.
    assert fires.fire == (T0 + timedelta(minutes=9), T0 + timedelta(minutes=10))
    assert fires.skipped == 8
    assert fires.skipped_to == T0 + timedelta(minutes=9)


def test_after_downtime_catch_up_skip_fires_only_late_ticks() -> None:
    now = T0 + timedelta(minutes=10, seconds=5)
    fires = plan(every(60, catch_up="skip"), T0, now, grace=30)
    assert fires.fire == (T0 + timedelta(minutes=10),)
    assert fires.skipped == 9
    assert fires.skipped_to == T0 + timedelta(minutes=9)


def test_cron_catch_up() -> None:
    hourly = Schedule(name="h", task="t", cron="0 * * * *")
    now = T0 + timedelta(hours=5, minutes=1)
    fires = plan(hourly, T0, now, grace=300)
    assert fires.fire == (T0 + timedelta(hours=4), T0 + timedelta(hours=5))
    assert fires.skipped == 3
    skip = Schedule(name="h", task="t", cron="0 * * * *", catch_up="skip")
    assert plan(skip, T0, now, grace=30).fire == ()
    assert plan(skip, T0, now, grace=30).skipped == 5


def test_fire_ids_are_the_same_for_every_controller() -> None:
    a, b = every(1), every(1)
    due = T0 + timedelta(seconds=3)
    assert fire_id(a, due) == fire_id(b, due) == "tick@2026-12-03T06:00:03+00:00"
    assert task_id_for(fire_id(a, due)) == task_id_for(fire_id(b, due))
    assert task_id_for(fire_id(a, due)) != task_id_for(fire_id(a, due + timedelta(seconds=1)))


def test_toml_schedules() -> None:
    text = """
[schedules.cleanup]
task = "housekeeping.cleanup"
cron = "*/5 * * * *"
args = [1]
kwargs = {dry_run = false}
queue = "housekeeping"
expires = 60
timezone = "Europe/Berlin"
catch_up = "skip"

[schedules.poll]
task = "tenants.poll"
every = "30s"
"""
    cleanup, poll = from_toml(text)
    assert cleanup == Schedule(
        name="cleanup", task="housekeeping.cleanup", args=(1,), kwargs={"dry_run": False},
        options={"queue": "housekeeping", "expires": 60}, cron="*/5 * * * *",
        timezone="Europe/Berlin", catch_up="skip",
    )  # fmt: skip
    assert poll.every == 30.0


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"task": "t", "schedule": "61 * * * *"}, "'bad': '61 * * * *' is not a cron"),
        ({"task": "t", "schedule": "soon"}, "'bad': 'soon' is not an interval"),
        ({"task": "t", "schedule": -5}, "'bad': the interval must be a positive"),
        ({"task": "t", "schedule": 5, "options": {"eta": 1}}, "unknown option(s) eta"),
        ({"task": "t", "schedule": 5, "catch_up": "all"}, "catch_up must be one of"),
        ({"schedule": 5}, "'bad': no task name"),
        ({"task": "t"}, "'bad': no 'schedule'"),
        ({"task": "t", "schedule": solar.__new__(solar)}, "'bad': solar schedules"),
        ({"task": "t", "schedule": 5, "args": 3}, "args must be a list"),
    ],
)
def test_bad_entries_name_themselves(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleError, match=None) as raised:
        from_beat_entry("bad", entry)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[schedules", "not TOML"),
        ("[schedules.x]\ntask = 't'", "'x': give either every or cron"),
        ("[schedules.x]\ntask = 't'\nevery = 1\ncron = '* * * * *'", "give either"),
        ("[schedules.x]\ntask = 't'\ncron = '* * *'", "'x': '* * *' is not a cron"),
        ("[schedules.x]\ntask = 't'\nevery = 1\ntimezone = 'Mars/Olympus'", "unknown time zone"),
        ("schedules = 3", "must be a table"),
    ],
)
def test_bad_toml_names_the_entry(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as raised:
        from_toml(text)
    assert message in str(raised.value)
