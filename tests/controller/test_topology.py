"""``celeriac topology check``: every queue no worker group consumes, named, exit 1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from controller.cli import main
from controller.topology import WorkerGroup, coverage, groups_in_compose, groups_in_values

HERE = Path(__file__).parent / "topology"
#: The queues DATAMIMIC's tasks use (its supported-task table, in part).
IN_USE = (
    "standard,timed_5min,timed_30min,timed_1hour,timed_4hour,timed_8hour,timed_24hour,infinite,"
    "cron,database_generate_model,database_generate_weighting,json_generate_model,"
    "xml_generate_model,csv_generate_model,healthcheck,data_source_browse,housekeeping"
)
COMPOSE = ["--compose", str(HERE / "compose.yaml")]


@pytest.fixture(autouse=True)
def _no_worker_queues_variable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("WORKER_QUEUES", raising=False)
    yield
    structlog.reset_defaults()


def test_the_seed_layout_without_database_generate_weighting_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(
        ["topology", "check", "--queues", IN_USE, "--compose", str(HERE / "compose.yaml")]
    )
    out = capsys.readouterr().out

    assert status == 1
    assert "error: no worker group consumes queue database_generate_weighting" in out
    assert out.count("error:") == 1
    assert "warning: group worker-ops consumes legacy_import, which no task uses" in out
    assert "group worker-long: cron, infinite, timed_1hour" in out  # list-form environment


def test_adding_the_queue_to_a_group_passes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_QUEUES", "database_generate_weighting")
    status = main(
        ["topology", "check", "--queues", IN_USE, "--compose", str(HERE / "compose.yaml")]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "ok: all 17 queues in use have a consumer" in out


def test_helm_values_and_an_apps_routes(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["topology", "check", "-A", "tests.controller.sched_app:app",
                   "--queues", "standard", "--values", str(HERE / "values.yaml")])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1
    assert "group workers[short].env: standard, timed_5min" in out
    assert "group workers[ops].extraEnv: database_generate_model," in out
    assert "error: no worker group consumes queue celery" in out  # the app's s.ok task


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--queues", "a"], "no worker groups"),
        (["--compose", str(HERE / "compose.yaml")], "no queues to check"),
        (["--queues", "a", "--compose", str(HERE / "missing.yaml")], "cannot read"),
        (["--queues", "a", "--values", str(HERE / "compose.yaml"), "-A", "nope.nothing:app"],
         "cannot import 'nope.nothing'"),
    ],
)  # fmt: skip
def test_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["topology", "check", *args]) == 2
    assert message in capsys.readouterr().err


def test_coverage() -> None:
    groups = [WorkerGroup("a", frozenset({"q1", "q2"})), WorkerGroup("b", frozenset({"q3"}))]
    result = coverage({"q1", "q3", "q4"}, groups)
    assert result.unconsumed == ("q4",)
    assert dict(result.idle) == {"a": ("q2",)}
    assert not result.ok
    assert coverage({"q1"}, groups).ok


def test_compose_command_forms() -> None:
    document = {"services": {
        "list": {"command": ["celery", "worker", "--queues=a,b"]},
        "short": {"command": "celeriac worker -Qc,d"},
        "env-map": {"environment": {"WORKER_QUEUES": "e"}},
        "none": {"image": "redis"},
    }}  # fmt: skip
    found = {g.name: g.queues for g in groups_in_compose(document)}
    assert found == {"list": {"a", "b"}, "short": {"c", "d"}, "env-map": {"e"}}
    assert groups_in_values({"WORKER_QUEUES": "x"}) == [WorkerGroup("values", frozenset({"x"}))]
