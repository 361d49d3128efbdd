"""Worker groups and tuning profiles: the groups file, ``celeriac worker --group --profile``,
and compose.yaml running DATAMIMIC's three groups over every queue of its table."""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from celery import Celery

from controller.cli import main as controller_main
from runtime import cli, serve, supervisor
from runtime.groups import (
    DEFAULT_PROFILE,
    GroupsError,
    Profile,
    ResolvedGroup,
    load_groups,
    parse_groups,
)
from tests.interop.conftest import ROOT, WorkerProcess

COMPOSE = ROOT / "compose.yaml"
GROUPS_FILE = ROOT / "examples" / "groups.toml"

#: Every queue of DATAMIMIC's supported-task table (the seed's "Supported tasks").
DATAMIMIC_QUEUES = (
    # synthetic data generation
    "standard", "infinite", "timed_5min", "timed_30min", "timed_1hour", "timed_4hour",
    "timed_8hour", "timed_24hour", "cron",
    # model and template generation from a source
    "database_generate_model", "database_generate_weighting", "json_generate_model",
    "json_generate_template", "xml_generate_model", "xml_generate_template",
    "csv_generate_model",
    # Data Workbench scan family
    "db_metadata_scan", "data_source_browse", "data_source_scan", "scan_result_generate_model",
    # connections, migration and Git
    "healthcheck", "gwa_migration", "ama_migration", "project_git_push", "project_git_update",
    # system, maintenance and backup
    "runtime_capabilities_fetch", "housekeeping", "clean_up_project_storage", "system_backup",
    "system_restore",
)  # fmt: skip

SMALL = """
[profiles.safe]
concurrency = 2
[profiles.balanced]
concurrency = 4
[profiles.fast]
concurrency = 8
processes = 2

[groups.a]
queues = ["q1", "q2"]
[groups.a.profiles.fast]
concurrency = 16

[groups.b]
queues = ["q3"]
[groups.b.profiles.turbo]
concurrency = 64
processes = 4
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (
        "WORKER_QUEUES", "CELERIAC_QUEUES", "CELERIAC_CONCURRENCY", "WORKER_CONCURRENCY",
        "CELERIAC_GROUP", "CELERIAC_PROFILE", "CELERIAC_GROUPS_FILE", "CELERIAC_APP",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_StdlibHandler":
            root.removeHandler(handler)


# -- the file ------------------------------------------------------------------------------------


def test_profiles_merge_the_defaults_with_the_groups_own() -> None:
    groups = parse_groups(SMALL, source="small.toml")

    assert groups.groups["a"].queues == ("q1", "q2")
    assert dict(groups.groups["a"].profiles) == {
        "safe": Profile(2, 1), "balanced": Profile(4, 1), "fast": Profile(16, 2),
    }  # fmt: skip
    assert groups.resolve("a", "fast") == ResolvedGroup("a", "fast", ("q1", "q2"), 16, 2)
    assert groups.resolve("b", "turbo") == ResolvedGroup("b", "turbo", ("q3",), 64, 4)
    assert groups.resolve("b") == ResolvedGroup("b", DEFAULT_PROFILE, ("q3",), 4, 1)
    with pytest.raises(TypeError):
        groups.groups["a"].profiles["x"] = Profile(1)  # type: ignore[index]


def test_the_shipped_file_has_every_profile_for_every_group() -> None:
    groups = load_groups(GROUPS_FILE)

    assert set(groups.groups) == {"short", "long", "ops"}
    for name in groups.groups:
        safe, balanced, fast = (groups.resolve(name, p) for p in ("safe", "balanced", "fast"))
        assert safe.concurrency <= balanced.concurrency <= fast.concurrency
        assert groups.resolve(name) == balanced


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[groups.a\n", "x.toml: not valid TOML"),
        ("[profiles.balanced]\nconcurrency = 1\n", "x.toml: no [groups.<name>] table"),
        ("[groups.a]\nconcurrency = 1\n", "x.toml: group 'a': unknown key 'concurrency'"),
        ("[groups.a]\n[groups.a.profiles.balanced]\nconcurrency = 1\n",
         "x.toml: group 'a': queues must be a non-empty list"),
        ("[groups.a]\nqueues = []\n", "x.toml: group 'a': queues must be a non-empty list"),
        ("[groups.a]\nqueues = ['a,b']\n", "queues must be a non-empty list of queue names"),
        ("[groups.a]\nqueues = ['q', 'q']\n", "x.toml: group 'a': a queue is listed twice"),
        ("[groups.a]\nqueues = ['q']\n", "x.toml: group 'a': no profiles"),
        ("[groups.a]\nqueues = ['q']\n[groups.a.profiles.fast]\nprocesses = 2\n",
         "x.toml: group 'a', profile 'fast': no concurrency"),
        ("[groups.a]\nqueues = ['q']\n[groups.a.profiles.fast]\nconcurrency = 0\n",
         "group 'a', profile 'fast': concurrency must be a whole number of 1 or more, not 0"),
        ("[groups.a]\nqueues = ['q']\n[groups.a.profiles.fast]\nconcurrency = '8'\n",
         "concurrency must be a whole number of 1 or more, not '8'"),
        ("[groups.a]\nqueues = ['q']\n[groups.a.profiles.fast]\nconcurrency = 2.5\n",
         "concurrency must be a whole number of 1 or more, not 2.5"),
        ("[groups.a]\nqueues = ['q']\n[groups.a.profiles.fast]\nconcurrency = true\n",
         "concurrency must be a whole number of 1 or more, not True"),
        ("[profiles.fast]\nconcurrency = 1\nprocesses = -1\n[groups.a]\nqueues = ['q']\n",
         "group 'a', profile 'fast': processes must be a whole number of 1 or more, not -1"),
        ("[profiles.fast]\nthreads = 1\n[groups.a]\nqueues = ['q']\n",
         "x.toml: [profiles.fast]: unknown key 'threads'"),
        ("[workers.a]\nqueues = ['q']\n", "x.toml: unknown key 'workers'"),
        ("groups = 1\n", "x.toml: [groups] must be a table, not int"),
    ],
)  # fmt: skip
def test_mistakes_name_the_file_group_and_profile(text: str, message: str) -> None:
    with pytest.raises(GroupsError) as caught:
        parse_groups(text, source="x.toml")
    assert message in str(caught.value)


def test_unknown_group_or_profile_lists_the_known_ones() -> None:
    groups = parse_groups(SMALL, source="small.toml")
    with pytest.raises(GroupsError, match=r"small.toml: no group 'c' \(groups: a, b\)"):
        groups.resolve("c")
    with pytest.raises(
        GroupsError,
        match=r"small.toml: group 'a' has no profile 'turbo' \(profiles: balanced, fast, safe\)",
    ):
        groups.resolve("a", "turbo")
    with pytest.raises(GroupsError, match=r"missing.toml: cannot read the groups file"):
        load_groups("missing.toml")


# -- celeriac worker --group --profile -----------------------------------------------------------


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[serve.WorkerOptions]:
    """The options ``celeriac worker`` would serve with (nothing is served)."""
    seen: list[serve.WorkerOptions] = []

    def fake_serve(options: serve.WorkerOptions) -> int:
        seen.append(options)
        return 0

    def fake_supervise(self: supervisor.Supervisor) -> int:
        seen.append(self.options)
        SUPERVISED.append(self.processes)
        return 0

    SUPERVISED.clear()
    monkeypatch.setattr(serve, "serve", fake_serve)
    monkeypatch.setattr(supervisor.Supervisor, "run", fake_supervise)
    return seen


#: The process counts ``celeriac worker`` would have supervised (see ``started``).
SUPERVISED: list[int] = []


def _worker(tmp_path: Path, *args: str) -> list[str]:
    path = tmp_path / "groups.toml"
    path.write_text(SMALL)
    return ["worker", "-A", "examples.tasks:app", "--groups-file", str(path), *args]


def test_the_group_sets_queues_and_concurrency(
    tmp_path: Path, started: list[serve.WorkerOptions]
) -> None:
    assert cli.main(_worker(tmp_path, "--group", "a", "--profile", "fast")) == 0
    (options,) = started
    assert (options.queues, options.concurrency) == (("q1", "q2"), 16)
    assert options.group == ResolvedGroup("a", "fast", ("q1", "q2"), 16, 2)
    assert SUPERVISED == [2]  # the profile's processes, under the supervisor


def test_flags_win_over_the_environment_which_wins_over_the_group(
    tmp_path: Path, started: list[serve.WorkerOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_GROUP", "a")
    monkeypatch.setenv("CELERIAC_PROFILE", "safe")
    assert cli.main(_worker(tmp_path)) == 0  # the group and profile from the environment
    monkeypatch.setenv("WORKER_QUEUES", "env1,env2")
    monkeypatch.setenv("CELERIAC_CONCURRENCY", "3")
    assert cli.main(_worker(tmp_path)) == 0  # the environment's queues and concurrency
    assert cli.main(_worker(tmp_path, "-Q", "flag", "-c", "5", "--profile", "fast")) == 0

    assert [(o.queues, o.concurrency, o.group and o.group.profile) for o in started] == [
        (("q1", "q2"), 2, "safe"),
        (("env1", "env2"), 3, "safe"),
        (("flag",), 5, "fast"),  # --profile wins over CELERIAC_PROFILE too
    ]


def test_the_groups_file_from_the_environment(
    tmp_path: Path, started: list[serve.WorkerOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_GROUPS_FILE", str(GROUPS_FILE))
    assert cli.main(["worker", "-A", "examples.tasks:app", "--group", "long"]) == 0
    (options,) = started
    assert options.queues == load_groups(GROUPS_FILE).groups["long"].queues
    assert options.concurrency == load_groups(GROUPS_FILE).resolve("long").concurrency


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group", "c"], "groups.toml: no group 'c' (groups: a, b)"),
        (["--group", "b", "--profile", "fast2"], "groups.toml: group 'b' has no profile 'fast2'"),
        (["--profile", "fast"], "--profile fast needs --group (or CELERIAC_GROUP)"),
    ],
)
def test_bad_group_or_profile_exits_2(
    tmp_path: Path, started: list[serve.WorkerOptions], capsys: pytest.CaptureFixture[str],
    args: list[str], message: str,
) -> None:  # fmt: skip
    assert cli.main(_worker(tmp_path, *args)) == 2
    assert message in capsys.readouterr().err
    assert started == []


def test_a_group_needs_a_groups_file(
    started: list[serve.WorkerOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["worker", "-A", "examples.tasks:app", "--group", "short"]) == 2
    assert "--group short needs --groups-file (or CELERIAC_GROUPS_FILE)" in capsys.readouterr().err


def test_help_says_what_wins(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["worker", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "wins over --group's queues" in text
    assert "wins over --profile's" in text
    assert "CELERIAC_GROUPS_FILE" in text
    assert "CELERIAC_PROFILE" in text


# -- compose.yaml --------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def _grouped(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run as a group (``--group NAME``), by group."""
    found = {}
    for service in services.values():
        words = service.get("command") or []
        words = shlex.split(words) if isinstance(words, str) else words
        if "--group" in words:
            found[str(words[words.index("--group") + 1])] = service
    return found


def test_compose_is_valid_and_keeps_its_services() -> None:
    services = _compose()["services"]

    assert {"rabbitmq", "redis", "controller", "flower"} <= set(services)
    groups = _grouped(services)
    assert sorted(groups) == ["long", "ops", "short"]
    for service in groups.values():
        assert service["build"] == "."
        assert service["command"][:3] == ["worker", "-A", "examples.tasks:app"]
        assert service["environment"]["CELERIAC_GROUPS_FILE"] == "examples/groups.toml"
        assert service["environment"]["CELERIAC_PROFILE"] in ("safe", "balanced", "fast")
        assert (ROOT / service["environment"]["CELERIAC_GROUPS_FILE"]).is_file()
    flower = services["flower"]
    assert "--broker=amqp://guest:guest@rabbitmq:5672//" in flower["command"]
    for service in services.values():  # published on loopback only
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", []))
    assert "COPY examples ./examples" in (ROOT / "Dockerfile").read_text()


def test_the_groups_file_and_compose_agree() -> None:
    groups = load_groups(GROUPS_FILE)
    services = _compose()["services"]

    in_compose = {name: s["environment"]["WORKER_QUEUES"] for name, s in _grouped(services).items()}
    assert set(in_compose) == set(groups.groups)
    for name, queues in in_compose.items():
        assert queues.split(",") == list(groups.groups[name].queues), name


def test_every_datamimic_queue_has_a_consumer(capsys: pytest.CaptureFixture[str]) -> None:
    status = controller_main(
        ["topology", "check", "--queues", ",".join(DATAMIMIC_QUEUES), "--compose", str(COMPOSE)]
    )
    out = capsys.readouterr().out

    assert status == 0, out
    assert "error:" not in out
    assert f"ok: all {len(DATAMIMIC_QUEUES)} queues in use have a consumer" in out
    assert "warning:" not in out  # and no group consumes a queue outside the table
    consumed = [q for g in load_groups(GROUPS_FILE).groups.values() for q in g.queues]
    assert sorted(consumed) == sorted(DATAMIMIC_QUEUES)  # each exactly once


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_worker_runs_as_its_group_and_profile(
    tmp_path: Path, redis_url: str, unique_name: str
) -> None:
    """``celeriac worker --group g --profile fast`` on Redis consumes the group's queues with
    the profile's concurrency, and runs a task a stock Celery client sends to one of them."""
    path = tmp_path / "groups.toml"
    queues = [f"{unique_name}-a", f"{unique_name}-b"]
    path.write_text(
        f"[profiles.balanced]\nconcurrency = 1\n[profiles.fast]\nconcurrency = 3\n"
        f"[groups.g]\nqueues = {queues!r}\n".replace("'", '"')
    )
    hostname = f"{unique_name}@groups"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CELERIAC_PROFILE": "safe"}
    worker = WorkerProcess(
        ["-A", "tests.interop.app:app", "--groups-file", str(path), "--group", "g",
         "--profile", "fast", "-b", redis_url, "--result-backend", redis_url,
         "-n", hostname, "--log-format", "json"],
        env,
    )  # fmt: skip
    client = Celery("client", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        ready = worker.wait_for("worker_ready")
        assert (ready["queues"], ready["concurrency"]) == (queues, 3)
        assert (ready["worker"], ready["group"], ready["profile"]) == (hostname, "g", "fast")

        result = client.send_task("interop.add", args=(2, 3), queue=queues[1])
        assert result.get(timeout=15) == 5
        started = worker.wait_for("task_started", task_id=result.id)
        assert (started["queue"], started["worker"], started["group"]) == (queues[1], hostname, "g")

        stats = client.control.inspect(destination=[hostname], timeout=5).stats()
        assert stats is not None
        assert stats[hostname]["pool"]["max-concurrency"] == 3
        active = client.control.inspect(destination=[hostname], timeout=5).active_queues()
        assert active is not None
        assert sorted(q["name"] for q in active[hostname]) == queues
    finally:
        worker.signal(15)
        worker.wait()
        worker.close()
        client.close()
