"""``celeriac worker --processes N``: real processes, real signals, a real Redis.

Each test starts ``celeriac worker -A tests.runtime.supervised_app:app --processes 2`` on a
queue and key prefix of its own, and reads the JSON lines the supervisor and its children write
to the one standard error they share.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from celery import Celery

from runtime.supervisor import ORPHAN_MARGIN
from tests.interop.conftest import ROOT, WorkerProcess, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOST = socket.gethostname()
APP = "tests.runtime.supervised_app:app"

Start = Callable[..., WorkerProcess]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _started(worker: WorkerProcess, node: str) -> list[int]:
    """The pids the supervisor started as ``node``, in order."""
    return [
        r["pid"]
        for r in list(worker.records)
        if r.get("event") == "child_started" and r.get("node") == node
    ]


def _ready_pid(
    worker: WorkerProcess, node: str, timeout: float = 20, *, replacing: int | None = None
) -> int:
    """The pid of ``node``'s latest child (not ``replacing``), once the supervisor has heard
    it is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _started(worker, node)
        if (
            pids
            and pids[-1] != replacing
            and any(
                r.get("event") == "child_ready" and r.get("pid") == pids[-1]
                for r in list(worker.records)
            )
        ):
            return pids[-1]
        time.sleep(0.05)
    raise AssertionError(f"{node} not ready within {timeout}s; log:\n{''.join(worker.lines)}")


@pytest.fixture
def nodes(unique_name: str) -> tuple[str, str]:
    """The node names of the two children: ``<queue>@<host>.1`` and ``.2``."""
    return f"{unique_name}@{HOST}.1", f"{unique_name}@{HOST}.2"


@pytest.fixture
def start(redis_url: str, unique_name: str) -> Iterator[Start]:
    """Start the supervisor with two children on the test's queue; returns once both are
    ready. Everything it started is killed after the test."""
    started: list[WorkerProcess] = []

    def run(*extra: str, processes: int = 2, grace: float = 10) -> WorkerProcess:
        broker = f"{redis_url}?global_keyprefix={unique_name}:"
        args = [
            "-A", APP, "-Q", unique_name, "-c", "1", "--broker", broker,
            "--result-backend", redis_url, "--log-format", "json", "--grace", str(grace),
            "-n", f"{unique_name}@%h", "--processes", str(processes), *extra,
        ]  # fmt: skip
        worker = WorkerProcess(args, {**os.environ, "PYTHONPATH": str(ROOT)})
        started.append(worker)
        for index in range(1, processes + 1):
            _ready_pid(worker, f"{unique_name}@{HOST}.{index}")
        return worker

    yield run
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(timeout=10)
        for record in list(worker.records):
            if record.get("event") == "child_started" and _alive(record["pid"]):
                os.kill(record["pid"], signal.SIGKILL)
        # The children share the supervisor's standard error: its reader ends once they are
        # all gone, and only then may the pipe be closed under it.
        worker._reader.join(timeout=10)
        worker.close()


@pytest.fixture
def client(redis_url: str, unique_name: str) -> Iterator[Celery]:
    """A Celery client on the test's queue and key prefix, results in Redis."""
    app = Celery("client", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": f"{unique_name}:"}
    yield app
    app.backend.result_consumer.stop()
    app.backend.client.close()


def _served_by(client: Celery, queue: str, count: int = 8) -> set[tuple[str, int]]:
    """``(node, pid)`` of the children that ran ``count`` tasks of 0.3 s sent at once."""
    results = [
        client.send_task("supervised.whoami", args=(0.3,), queue=queue) for _ in range(count)
    ]
    done: list[dict[str, Any]] = [result.get(timeout=20) for result in results]
    return {(d["hostname"], d["pid"]) for d in done}


def _free_port_pair() -> int:
    """A port P such that P and P + 1 were both free just now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < 65535:
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no two consecutive free ports")


def test_two_children_run_tasks_under_their_own_pids_node_names_and_ports(
    start: Start, client: Celery, unique_name: str, nodes: tuple[str, str]
) -> None:
    port = _free_port_pair()
    worker = start("--http-port", str(port))
    pids = {node: _started(worker, node)[0] for node in nodes}

    assert _served_by(client, unique_name) == {(node, pids[node]) for node in nodes}
    assert worker.proc.pid not in pids.values()
    children = {p.pid for p in psutil.Process(worker.proc.pid).children()}
    assert children == set(pids.values())
    for offset in (0, 1):  # child i serves its probes on P + i - 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port + offset}/healthz", timeout=5) as r:
            assert r.status == 200


def test_a_killed_child_is_restarted_under_its_node_name(
    start: Start, client: Celery, unique_name: str, nodes: tuple[str, str]
) -> None:
    worker = start()
    first, other = nodes
    old = _started(worker, first)[0]

    os.kill(old, signal.SIGKILL)

    restarting = worker.wait_for("child_restarting", node=first)
    assert restarting["delay"] == 1.0
    new = _ready_pid(worker, first, replacing=old)
    assert new != old
    assert not _alive(old)
    assert _served_by(client, unique_name) == {(first, new), (other, _started(worker, other)[0])}
    assert worker.proc.poll() is None


def test_every_child_ends_when_the_supervisor_is_killed_even_a_blocked_one(
    start: Start, client: Celery, unique_name: str, nodes: tuple[str, str]
) -> None:
    grace = 1.0
    worker = start(grace=grace)
    pids = {node: _started(worker, node)[0] for node in nodes}
    client.send_task("supervised.block", args=(60,), queue=unique_name)
    blocked = worker.wait_for("task_started")["worker"]
    (idle,) = set(nodes) - {blocked}

    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(timeout=5)
    killed = time.monotonic()

    # The idle child reads the end of its link and stops (warm).
    eventually(lambda: not _alive(pids[idle]), timeout=10)
    worker.wait_for("supervisor_gone", worker=idle)
    # The blocked one cannot: its own thread ends it after the grace period and the margin.
    eventually(lambda: not _alive(pids[blocked]), timeout=grace + ORPHAN_MARGIN + 10)
    assert time.monotonic() - killed >= grace + ORPHAN_MARGIN - 0.5
    worker.wait_for("orphan_exiting", worker=blocked)


def test_sigterm_lets_the_running_task_finish_then_exits_0(
    start: Start, client: Celery, unique_name: str, nodes: tuple[str, str]
) -> None:
    worker = start(grace=20)
    pids = {node: _started(worker, node)[0] for node in nodes}
    result = client.send_task("supervised.whoami", args=(2,), queue=unique_name)
    task = worker.wait_for("task_started", task_id=result.id)

    worker.signal(signal.SIGTERM)

    for node in nodes:  # both were told, and stopped taking messages
        worker.wait_for("worker_stopping", worker=node)
    assert result.get(timeout=15)["hostname"] == task["worker"]
    assert worker.wait(timeout=15) == 0
    assert not any(_alive(pid) for pid in pids.values())
    assert not any(r.get("event") == "child_restarting" for r in worker.records)


def test_a_second_sigterm_ends_running_tasks_at_once(
    start: Start, client: Celery, unique_name: str, nodes: tuple[str, str]
) -> None:
    worker = start(grace=30)
    result = client.send_task("supervised.whoami", args=(60,), queue=unique_name)
    task = worker.wait_for("task_started", task_id=result.id)
    worker.signal(signal.SIGTERM)
    worker.wait_for("worker_stopping", worker=task["worker"], running=1)
    assert worker.proc.poll() is None  # warm: waiting for the task

    signaled = time.monotonic()
    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout=10) == 0
    assert time.monotonic() - signaled < 10  # well inside the 30 s grace: cold
    worker.wait_for("signal_received", worker=task["worker"], count=2)
    assert result.state != "SUCCESS"


def test_a_child_whose_loop_blocks_is_killed_and_replaced(
    start: Start, client: Celery, unique_name: str, nodes: tuple[str, str]
) -> None:
    worker = start("--child-timeout", "3")
    client.send_task("supervised.block", args=(60,), queue=unique_name)
    blocked = worker.wait_for("task_started")["worker"]
    old = _started(worker, blocked)[0]

    unresponsive = worker.wait_for("child_unresponsive", node=blocked, timeout=10)

    assert unresponsive["pid"] == old
    assert 3 <= unresponsive["silent"] < 5
    new = _ready_pid(worker, blocked, replacing=old)
    assert new != old
    assert not _alive(old)
    served = _served_by(client, unique_name)
    assert {node for node, _ in served} == set(nodes)
    assert (blocked, new) in served


def test_a_first_start_that_fails_ends_the_supervisor_with_its_status(unique_name: str) -> None:
    """An unreachable broker: exit 1 at once, as one process would, not restarts forever.
    The number of processes comes from the environment here."""
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "worker", "-A", APP, "-Q", unique_name,
         "--broker", "redis://127.0.0.1:1/0", "--log-format", "json"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "CELERIAC_PROCESSES": "2"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip

    assert done.returncode == 1, done.stderr
    assert '"processes": 2' in done.stderr
    assert "child_failed_to_start" in done.stderr
    assert "celeriac: " in done.stderr
    assert "127.0.0.1:1" in done.stderr
    assert "child_restarting" not in done.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--processes", "0", "--processes must be a whole number, 1 or more"),
        ("--processes", "two", "--processes must be a whole number, 1 or more"),
        ("--child-timeout", "0", "--child-timeout must be a positive number of seconds"),
    ],
)
def test_bad_supervisor_flags_exit_2(flag: str, value: str, message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "worker", "-A", APP, flag, value],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip

    assert done.returncode == 2
    assert message in done.stderr
