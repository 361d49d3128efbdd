"""Every remote-control command an operator types with the stock ``celery`` CLI, against a
``celeriac worker`` process, on RabbitMQ and Redis.

Each call is ``celery -A tests.interop.celery_worker_app -b <url> inspect|control <command>
... -d <node> --json`` in a subprocess, its JSON output parsed: the reply must be Celery's, and
the effect real (more tasks run at once after ``pool_grow``, a task sent to an added queue runs
and one sent to a cancelled queue stays there, a task over the hard limit set at run time
fails, ``shutdown`` ends the worker). Calls that need no order run side by side: each CLI
start costs about a second.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import TimeLimitExceeded

from tests.conftest import _NAMES

from .conftest import ROOT, Broker, WorkerProcess, eventually

pytestmark = [pytest.mark.integration, pytest.mark.interop]

StartWorker = Callable[..., WorkerProcess]
CELERY = os.path.join(os.path.dirname(sys.executable), "celery")


class Cli:
    """The stock ``celery`` CLI aimed at one node; ``call`` returns that node's reply."""

    def __init__(self, broker: Broker, node: str, redis_url: str) -> None:
        self.broker = broker
        self.node = node
        prefix = broker.client_options.get("global_keyprefix", "")
        self.env = {
            **os.environ, "PYTHONPATH": str(ROOT), "INTEROP_REDIS_URL": redis_url,
            "INTEROP_BROKER_URL": broker.client_url, "INTEROP_KEYPREFIX": prefix,
        }  # fmt: skip

    def _start(self, kind: str, command: str, *args: str, timeout: float) -> subprocess.Popen[str]:
        argv = [CELERY, "-A", "tests.interop.celery_worker_app", "-b", self.broker.client_url,
                kind, command, *args, "-d", self.node, "--json", "-t", str(timeout)]  # fmt: skip
        return subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def _reply(self, proc: subprocess.Popen[str], what: str) -> Any:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"{what}: exit {proc.returncode}\n{out}\n{err}"
        parsed = json.loads(out.strip().splitlines()[-1])
        replies = parsed if isinstance(parsed, list) else [parsed]  # control: a list of dicts
        merged = {node: reply for one in replies for node, reply in one.items()}
        assert list(merged) == [self.node], f"{what}: {merged}"
        return merged[self.node]

    def call(self, kind: str, command: str, *args: str, timeout: float = 10) -> Any:
        """The node's reply to one command."""
        return self.many((kind, command, *args), timeout=timeout)[0]

    def many(self, *calls: tuple[str, ...], timeout: float = 10) -> list[Any]:
        """The node's replies to ``calls`` (``(kind, command, *args)``), sent side by side."""
        procs = [self._start(*call, timeout=timeout) for call in calls]
        return [self._reply(proc, " ".join(call)) for proc, call in zip(procs, calls, strict=True)]


@pytest.fixture
def node(unique_name: str) -> str:
    return f"{unique_name}@{socket.gethostname()}"


@pytest.fixture
def cli(broker: Broker, node: str, redis_url: str) -> Cli:
    return Cli(broker, node, redis_url)


@pytest.fixture
def second_queue(unique_name: str) -> str:
    """Another queue of the test's own (deleted from RabbitMQ at the end of the session)."""
    name = f"{unique_name}-b"
    _NAMES.append(name)
    return name


def test_inspect_commands_reply_as_celerys(
    *, start_worker: StartWorker, celery_client: Celery, cli: Cli, node: str, unique_name: str,
    broker: Broker,
) -> None:  # fmt: skip
    worker = start_worker(unique_name, hostname=node, concurrency=1)
    running = celery_client.send_task("interop.slow", args=(20,), queue=unique_name)
    worker.wait_for("task_started", task_id=running.id)

    (ping, active, reserved, scheduled, stats, registered, queues, revoked, conf, query,
     clock, memsample) = cli.many(
        ("inspect", "ping"), ("inspect", "active"), ("inspect", "reserved"),
        ("inspect", "scheduled"), ("inspect", "stats"), ("inspect", "registered"),
        ("inspect", "active_queues"), ("inspect", "revoked"), ("inspect", "conf"),
        ("inspect", "query_task", running.id), ("inspect", "clock"), ("inspect", "memsample"),
    )  # fmt: skip

    assert ping == {"ok": "pong"}
    [task] = active
    assert (task["id"], task["name"], task["args"]) == (running.id, "interop.slow", [20])
    assert (reserved, scheduled) == ([], [])
    assert stats["pool"]["max-concurrency"] == 1
    assert stats["broker"]["transport"] == broker.kind
    assert "interop.slow" in registered
    assert [queue["name"] for queue in queues] == [unique_name]
    assert isinstance(revoked, list)
    assert conf["worker_concurrency"] == 1
    assert query[running.id][0] == "active"
    assert clock["clock"] > 0
    assert memsample == {"error": "memsample is not supported: celeriac does not sample "
                                  "memory: see the rusage of inspect stats"}  # fmt: skip
    celery_client.control.revoke(running.id, terminate=True)


def test_pool_grow_shrink_and_autoscale_change_how_many_run_at_once(
    start_worker: StartWorker, celery_client: Celery, cli: Cli, node: str, unique_name: str,
) -> None:  # fmt: skip
    worker = start_worker(unique_name, hostname=node, concurrency=1)

    assert cli.call("control", "pool_grow", "2") == {"ok": "pool will grow"}

    assert cli.call("inspect", "stats")["pool"]["max-concurrency"] == 3
    slow = [celery_client.send_task("interop.slow", args=(3,), queue=unique_name) for _ in range(4)]
    for result in slow[:3]:  # three at once: the fourth waits for a slot
        worker.wait_for("task_started", task_id=result.id, timeout=5)
    time.sleep(0.5)
    assert not [r for r in worker.records if r.get("task_id") == slow[3].id
                and r.get("event") == "task_started"]  # fmt: skip
    active, shrunk, stats = cli.many(
        ("inspect", "active"), ("control", "pool_shrink", "2"), ("inspect", "stats")
    )
    assert sorted(task["id"] for task in active) == sorted(result.id for result in slow[:3])
    assert shrunk == {"ok": "pool will shrink"}
    assert [result.get(timeout=15) for result in slow] == ["slept"] * 4  # the busy ones finish
    assert cli.call("inspect", "stats")["pool"]["max-concurrency"] == 1

    assert cli.call("control", "autoscale", "4", "2") == {"ok": "autoscale now max=4 min=2"}

    stats, grow = cli.many(("inspect", "stats"), ("control", "pool_grow"))
    assert stats["pool"]["max-concurrency"] == 4
    assert stats["autoscaler"] == {"max": 4, "min": 2, "current": 4, "qty": 0}
    assert grow == {
        "error": "pool_grow is not supported with autoscale. Adjust autoscale range instead."
    }


def test_add_and_cancel_consumer_change_the_queues_consumed(
    *, start_worker: StartWorker, celery_client: Celery, cli: Cli, node: str, unique_name: str,
    second_queue: str, broker: Broker,
) -> None:  # fmt: skip
    start_worker(unique_name, hostname=node)

    assert cli.call("control", "add_consumer", second_queue) == {
        "ok": f"add consumer {second_queue}"
    }

    queues = cli.call("inspect", "active_queues")
    assert [queue["name"] for queue in queues] == [unique_name, second_queue]
    added = celery_client.send_task("interop.add", args=(2, 3), queue=second_queue)
    assert added.get(timeout=10) == 5

    assert cli.call("control", "cancel_consumer", second_queue) == {
        "ok": f"no longer consuming from {second_queue}"
    }

    stays = celery_client.send_task("interop.add", args=(1, 1), queue=second_queue)
    time.sleep(1)
    assert broker.ready(second_queue) == 1
    assert stays.state == "PENDING"
    queues = cli.call("inspect", "active_queues")
    assert [queue["name"] for queue in queues] == [unique_name]
    assert celery_client.send_task("interop.add", (1, 2), queue=unique_name).get(timeout=10) == 3


def test_changing_queues_while_tasks_flow_loses_and_repeats_nothing(
    *, start_worker: StartWorker, celery_client: Celery, node: str, unique_name: str,
    second_queue: str, counts: Callable[[], dict[str, int]],
) -> None:  # fmt: skip
    start_worker(unique_name, second_queue, hostname=node, concurrency=2)
    key = f"{unique_name}:runs"
    sent = [
        celery_client.send_task("interop.count", (key,), queue=(unique_name, second_queue)[n % 2])
        for n in range(300)
    ]
    control = celery_client.control
    for _ in range(10):  # each change ends one consuming iteration and starts another
        assert control.cancel_consumer(second_queue, destination=[node], reply=True, timeout=5)
        assert control.add_consumer(second_queue, destination=[node], reply=True, timeout=5)

    eventually(lambda: len(counts()) == len(sent), timeout=30)
    time.sleep(0.5)
    assert counts() == {result.id: 1 for result in sent}


def test_rate_and_time_limits_set_at_run_time_act(
    start_worker: StartWorker, celery_client: Celery, cli: Cli, node: str, unique_name: str,
) -> None:  # fmt: skip
    start_worker(unique_name, hostname=node, concurrency=2)

    time_limit, rate_limit, unknown, invalid = cli.many(
        ("control", "time_limit", "interop.ignores_limits", "0.5", "1"),
        ("control", "rate_limit", "interop.started_at", "2/s"),
        ("control", "rate_limit", "interop.nope", "2/s"),
        ("control", "rate_limit", "interop.started_at", "2/x"),
    )

    assert time_limit == {"ok": "time limits set successfully"}
    assert rate_limit == {"ok": "new rate limit set successfully"}
    assert unknown == {"error": "unknown task"}
    bad = "ValueError(\"rate limit '2/x': the unit must be s, m or h\")"
    assert invalid == {"error": f"Invalid rate limit string: {bad}"}
    over = celery_client.send_task("interop.ignores_limits", queue=unique_name)
    with pytest.raises(TimeLimitExceeded):
        over.get(timeout=10)
    starts = [celery_client.send_task("interop.started_at", queue=unique_name) for _ in range(3)]
    times = sorted(result.get(timeout=10) for result in starts)
    assert times[-1] - times[0] >= 0.9  # 2/s: 0.5 s apart, the first at once
    assert cli.call("control", "rate_limit", "interop.started_at", "") == {
        "ok": "rate limit disabled successfully"
    }
    starts = [celery_client.send_task("interop.started_at", queue=unique_name) for _ in range(3)]
    times = sorted(result.get(timeout=10) for result in starts)
    assert times[-1] - times[0] < 0.5


def test_events_heartbeat_unsupported_commands_and_shutdown(
    start_worker: StartWorker, cli: Cli, node: str, unique_name: str,
) -> None:  # fmt: skip
    worker = start_worker(unique_name, hostname=node)

    enabled, heartbeat, restart, stamped, revoke = cli.many(
        ("control", "enable_events"), ("control", "heartbeat"), ("control", "pool_restart"),
        ("control", "revoke_by_stamped_headers", "mystamp=1"), ("control", "revoke", "some-id"),
    )  # fmt: skip
    again = cli.call("control", "enable_events")
    disabled = cli.call("control", "disable_events")

    assert enabled == {"ok": "task events enabled"}
    assert again == {"ok": "task events already enabled"}
    assert disabled == {"ok": "task events disabled"}
    assert heartbeat is None  # Celery's heartbeat replies None
    assert restart["error"].startswith("pool_restart is not supported: celeriac has no pool")
    assert stamped["error"].startswith("revoke_by_stamped_headers is not supported")
    assert revoke == {"ok": "tasks {'some-id'} flagged as revoked"}

    shutdown = cli._start("control", "shutdown", timeout=2)
    _, err = shutdown.communicate(timeout=30)
    assert shutdown.returncode == 69, err  # EX_UNAVAILABLE: shutdown replies nothing, as Celery
    assert "No nodes replied" in err
    worker.wait_for("remote_shutdown")
    assert worker.wait() == 0
