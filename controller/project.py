"""What ``-A module:app`` gives the controller: the schedules, where to publish, how to route.

``-A`` names a celeriac :class:`runtime.App` or a Celery app, so moving off ``celery beat`` is
one command. From a Celery app the controller reads ``conf.beat_schedule`` (entries unchanged),
``conf.timezone``, ``conf.broker_url`` and, for tasks whose entry names no queue, Celery's own
router (``task_routes``, ``task_default_queue``); it publishes with a celeriac producer on the
same broker. A celeriac app gives its ``beat_schedule`` and publishes itself. A TOML file
(``--schedule-file``) adds schedules to either.

Every schedule is checked before anything fires: a bad interval, cron expression or option, a
duplicate name, or a task the app's registry does not know is a :class:`ConfigError` naming the
entry (``--no-task-check`` skips the last, for a producer that registers no tasks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from runtime import App
from runtime.serve import UsageError, import_target

from .schedules import Schedule, ScheduleError, from_beat_schedule, from_toml
from .topology import queues_of_app

__all__ = ["ConfigError", "Project", "load_project"]


class ConfigError(ValueError):
    """The controller's configuration cannot work (exit status 2); the message says where."""


@dataclass(slots=True)
class Project:
    """The controller's view of an app: ``schedules``, the ``app`` that publishes their
    messages, ``route(task)`` for a queue when an entry names none, and ``redis_url``, the
    Redis the app already uses (its result backend, else its broker), if any."""

    schedules: list[Schedule]
    app: App
    route: Callable[[str], str | None] | None = None
    redis_url: str | None = None
    task_names: frozenset[str] = field(default_factory=frozenset)
    #: The queues the app sends to (its routes and schedules): the queue watch's.
    queues: frozenset[str] = field(default_factory=frozenset)


def _redis(url: str | None) -> str | None:
    if url and urlsplit(url).scheme in ("redis", "rediss", "unix"):
        return url
    return None


def _celery_project(celery: Any, broker: str | None) -> Project:
    """A Celery app: its beat schedule, broker, time zone and router."""
    conf = celery.conf
    timezone = str(conf.timezone or "UTC")
    schedules = from_beat_schedule(dict(conf.beat_schedule or {}), timezone=timezone)
    broker_url = broker or conf.broker_url
    backend = conf.result_backend if isinstance(conf.result_backend, str) else None
    app = App(
        str(celery.main or "celeriac"),
        broker=broker_url,
        default_queue=str(conf.task_default_queue or "celery"),
        task_serializer=str(conf.task_serializer or "json"),
        broker_transport_options=dict(conf.broker_transport_options or {}),
        broker_use_ssl=conf.broker_use_ssl,
        result_backend=_redis(backend),
        redis_backend_use_ssl=conf.redis_backend_use_ssl,
    )
    router = celery.amqp.router

    def route(task: str) -> str | None:
        queue = router.route({}, task).get("queue")
        return getattr(queue, "name", queue) if queue is not None else None

    celery.loader.import_default_modules()  # as a Celery worker does: the registry, complete
    names = frozenset(name for name in celery.tasks if not name.startswith("celery."))
    return Project(schedules, app, route, _redis(backend) or _redis(broker_url), names)


def _celeriac_project(app: App, broker: str | None) -> Project:
    if broker:
        app.broker_url = broker
    schedules = from_beat_schedule(app.beat_schedule, timezone=app.timezone)
    redis_url = _redis(app.result_backend_url) or _redis(app.broker_url)
    return Project(schedules, app, None, redis_url, frozenset(app.tasks))


def load_project(
    path: str | None,
    *,
    broker: str | None = None,
    schedule_file: Path | None = None,
    check_tasks: bool = True,
) -> Project:
    """The project ``-A path`` names (or, with no path, a bare app on ``broker`` for the
    schedule file's entries); :class:`ConfigError` for anything that cannot work."""
    try:
        target = import_target(path) if path else App(broker=broker)
        if isinstance(target, App):
            project = _celeriac_project(target, broker)
        elif hasattr(target, "conf") and hasattr(target, "amqp"):
            project = _celery_project(target, broker)
        else:
            raise ConfigError(f"-A {path}: not a celeriac App or a Celery app")
        if schedule_file is not None:
            project.schedules += from_toml(schedule_file.read_text())
        if path:
            project.queues = frozenset(queues_of_app(target))
    except (ScheduleError, UsageError) as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the schedule file: {exc}") from None
    _check(project, check_tasks=check_tasks and path is not None)
    return project


def _check(project: Project, *, check_tasks: bool) -> None:
    seen: dict[str, Schedule] = {}
    for schedule in project.schedules:
        if schedule.name in seen:
            raise ConfigError(f"schedule {schedule.name!r} is defined twice")
        seen[schedule.name] = schedule
        if check_tasks and schedule.task not in project.task_names:
            known = ", ".join(sorted(project.task_names)[:20]) or "none"
            raise ConfigError(
                f"schedule {schedule.name!r}: unknown task {schedule.task!r} (the app registers "
                f"{known}; --no-task-check if it is registered elsewhere)"
            )
