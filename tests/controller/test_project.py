"""What ``-A`` gives the controller: a celeriac app's schedules, or a Celery app's unchanged."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from datetime import timedelta

import pytest
from celery import Celery
from celery.schedules import crontab

from controller.project import ConfigError, Project, load_project
from runtime import App


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Callable[[object], Project]:
    """``load_project`` on ``-A`` naming the given app (in a module made for the test)."""

    def load_from(app: object) -> Project:
        module = types.ModuleType("controller_test_target")
        module.app = app  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "controller_test_target", module)
        return load_project("controller_test_target:app")

    return load_from


def test_a_celeriac_app_and_add_periodic_task(load: Callable[[object], Project]) -> None:
    app = App("p", broker="memory://", result_backend="redis://127.0.0.1:6379/3",
              timezone="Europe/Berlin")  # fmt: skip

    @app.task(name="p.digest")
    def digest(text: str) -> str:
        return text

    name = app.add_periodic_task(30.0, digest.s("x"), name="digest", queue="standard")
    app.add_periodic_task("0 3 * * *", digest.s("nightly"), name="nightly")
    project = load(app)

    assert name == "digest"
    by_name = {s.name: s for s in project.schedules}
    assert by_name["digest"].every == 30.0
    assert by_name["digest"].args == ("x",)
    assert by_name["digest"].options == {"queue": "standard"}
    assert by_name["nightly"].cron == "0 3 * * *"
    assert by_name["nightly"].timezone == "Europe/Berlin"
    assert project.app is app
    assert project.redis_url == "redis://127.0.0.1:6379/3"


def test_a_celery_app_routes_as_celery_does(load: Callable[[object], Project]) -> None:
    celery = Celery("proj", broker="redis://127.0.0.1:6379/5", set_as_current=False)
    celery.conf.timezone = "America/New_York"
    celery.conf.task_routes = {"proj.report": {"queue": "reports"}}
    celery.conf.task_default_queue = "default-q"
    celery.conf.beat_schedule = {
        "report": {"task": "proj.report", "schedule": timedelta(minutes=5)},
        "cleanup": {"task": "proj.cleanup", "schedule": crontab(hour=4, minute=0),
                    "options": {"queue": "maintenance"}},
    }  # fmt: skip

    @celery.task(name="proj.report")
    def report() -> None: ...

    @celery.task(name="proj.cleanup")
    def cleanup() -> None: ...

    project = load(celery)

    by_name = {s.name: s for s in project.schedules}
    assert by_name["report"].every == 300.0
    assert by_name["cleanup"].cron == "0 4 * * *"
    assert by_name["cleanup"].timezone == "America/New_York"
    assert project.route is not None
    assert project.route("proj.report") == "reports"
    assert project.route("proj.other") == "default-q"
    assert project.app.broker_url == "redis://127.0.0.1:6379/5"
    assert project.redis_url == "redis://127.0.0.1:6379/5"


def test_a_celery_schedule_naming_a_task_nobody_registers_is_refused(
    load: Callable[[object], Project],
) -> None:
    celery = Celery("proj", broker="memory://", set_as_current=False)
    celery.conf.beat_schedule = {"typo": {"task": "proj.reprot", "schedule": 60}}
    with pytest.raises(ConfigError, match=r"schedule 'typo': unknown task 'proj\.reprot'"):
        load(celery)
