"""``celeriac controller`` and ``celeriac beat`` on bad input: a clear error naming what is
wrong, exit status 2 for configuration and 1 for a Redis it cannot reach, and nothing fired."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import structlog

from controller.cli import main

APP = "tests.controller.sched_app:app"


@pytest.fixture(autouse=True)
def _logging_as_before() -> Iterator[None]:
    """The command configures structlog for the process, to print to this test's captured
    standard error: put it back, so later tests' loggers do not write to a closed file."""
    yield
    structlog.reset_defaults()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(list(args))
    return status, capsys.readouterr().err


@pytest.fixture
def state(redis_url: str, unique_name: str) -> list[str]:
    """Where the controller keeps its state in a test: ``--redis URL --prefix P``."""
    return ["--redis", redis_url, "--prefix", f"{unique_name}:"]


def schedule_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "schedules.toml"
    path.write_text(body)
    return str(path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[schedules.nightly]\ntask = "s.ok"\ncron = "0 25 * * *"\n',
         "schedule 'nightly': '0 25 * * *' is not a cron expression"),
        ('[schedules.typo]\ntask = "s.okk"\nevery = 5\n',
         "schedule 'typo': unknown task 's.okk'"),
        ('[schedules.ok]\ntask = "s.ok"\nevery = 5\n', "schedule 'ok' is defined twice"),
        ('[schedules.x]\ntask = "s.ok"\nevery = "soon"\n', "schedule 'x': 'soon' is not an"),
    ],
)  # fmt: skip
def test_bad_schedules_exit_2_naming_the_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state: list[str], body: str, message: str
) -> None:
    status, err = run(capsys, "controller", "-A", APP, *state,
                      "--schedule-file", schedule_file(tmp_path, body))  # fmt: skip
    assert status == 2
    assert message in err
    redis_url, prefix = state[1], state[3]
    assert redis.Redis.from_url(redis_url).keys(f"{prefix}*") == []  # nothing fired


def test_an_unknown_task_may_be_allowed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    body = '[schedules.elsewhere]\ntask = "other.service"\nevery = 5\n'
    status, err = run(capsys, "beat", "-A", APP, "--schedule-file", schedule_file(tmp_path, body),
                      "--no-task-check", "--redis", "redis://127.0.0.1:1/0")  # fmt: skip
    assert status == 1  # past the checks, to the unreachable Redis
    assert "cannot reach the controller's Redis at redis://127.0.0.1:1/0" in err


def test_an_unreachable_redis_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(capsys, "beat", "-A", APP, "--redis", "redis://:secret@127.0.0.1:1/0")
    assert status == 1
    assert "cannot reach the controller's Redis at redis://:********@127.0.0.1:1/0" in err
    assert "secret" not in err


def test_no_redis_to_keep_state_in_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(capsys, "beat", "-A", APP)
    assert status == 2
    assert "the controller keeps its state in Redis: give --redis URL" in err


def test_an_app_that_is_neither_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(capsys, "beat", "-A", "tests.controller.sched_app:ok", "--redis", "redis://x")
    assert status == 2
    assert "not a celeriac App or a Celery app" in err


def test_no_schedules_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, err = run(capsys, "beat", "--schedule-file", schedule_file(tmp_path, ""),
                      "--redis", "redis://x")  # fmt: skip
    assert status == 2
    assert "no schedules" in err
