"""A worker's metrics and probes on ``--http-port``, scraped and parsed with prometheus-client's
own parser while a stock Celery client sends it work, and ``/readyz`` going unready while the
broker is away and ready again after, on RabbitMQ and Redis.

What an operator types and sees:

    celeriac worker -A app --http-port 9100
    curl 127.0.0.1:9100/metrics     # celeriac_tasks_total{task="app.add",state="succeeded"} 3.0
    curl 127.0.0.1:9100/readyz      # 200 ready / 503 not ready while the broker is down
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from celery import Celery

from tests.controller.test_probes import free_port, get, samples
from tests.interop.conftest import Broker, WorkerProcess
from tests.proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.interop]

StartWorker = Callable[..., WorkerProcess]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def proxy(broker: Broker) -> Iterator[TcpProxy]:
    cut = TcpProxy(broker.url)
    yield cut
    cut.close()


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200
    return samples(body)


def eventually(port: int, check: Callable[[Samples], bool], what: str) -> Samples:
    deadline = time.monotonic() + 15
    while not check(found := scrape(port)):
        assert time.monotonic() < deadline, f"no {what} in the metrics: {found}"
        time.sleep(0.2)
    return found


def test_metrics_count_what_the_worker_did(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, proxy: TcpProxy
) -> None:
    port = free_port()
    start_worker(unique_name, broker_url=proxy.url, extra=("--http-port", str(port)))
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")

    added = [celery_client.send_task("interop.add", (i, i), queue=unique_name) for i in range(3)]
    assert [result.get(timeout=15) for result in added] == [0, 2, 4]
    declined = celery_client.send_task("interop.decline", ("no",), queue=unique_name)
    with pytest.raises(Exception, match="no"):
        declined.get(timeout=15)
    celery_client.send_task("no.such.task", queue=unique_name)
    q = (("queue", unique_name), ("reason", "unknown_task"))
    metrics = eventually(port, lambda m: m.get(("celeriac_dead_lettered_total", q)) == 1,
                         "dead letter")  # fmt: skip

    def count(task: str, state: str) -> float:
        return metrics.get(("celeriac_tasks_total", (("state", state), ("task", task))), 0)

    assert [count("interop.add", s) for s in ("received", "started", "succeeded")] == [3, 3, 3]
    assert count("interop.decline", "failed") == 1
    assert count("<unregistered>", "failed") == 1  # a hostile name adds no series of its own
    assert metrics[("celeriac_task_runtime_seconds_count", (("task", "interop.add"),))] == 3
    every = (("le", "+Inf"), ("task", "interop.add"))
    assert metrics[("celeriac_task_runtime_seconds_bucket", every)] == 3
    assert metrics[("celeriac_worker_slots", (("state", "busy"),))] == 0
    assert metrics[("celeriac_worker_slots", (("state", "free"),))] == 2
    assert metrics[("celeriac_broker_connected", ())] == 1
    assert metrics[("celeriac_broker_reconnects_total", ())] == 0
    assert metrics[("celeriac_event_loop_lag_seconds", ())] < 1

    held = celery_client.send_task("interop.add", (1, 1), queue=unique_name, countdown=1.5)
    eventually(port, lambda m: m.get(("celeriac_eta_held", ())) == 1, "held ETA task")
    assert held.get(timeout=15) == 2
    slow = celery_client.send_task("interop.slow", (3,), queue=unique_name)
    eventually(port, lambda m: m.get(("celeriac_worker_slots", (("state", "busy"),))) == 1,
               "busy slot")  # fmt: skip
    assert slow.get(timeout=15) == "slept"

    # The broker goes away: not ready; it comes back: ready again, one reconnect counted.
    proxy.refuse()
    deadline = time.monotonic() + 30
    while get(port, "/readyz")[0] != 503:
        assert time.monotonic() < deadline, "still ready with the broker down"
        time.sleep(0.2)
    assert get(port, "/healthz") == (200, "ok\n")  # the process itself is fine
    assert scrape(port)[("celeriac_broker_connected", ())] == 0
    proxy.allow()
    deadline = time.monotonic() + 60
    while get(port, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "not ready again after the broker came back"
        time.sleep(0.2)
    assert scrape(port)[("celeriac_broker_reconnects_total", ())] >= 1
    after = celery_client.send_task("interop.add", (5, 5), queue=unique_name)
    assert after.get(timeout=20) == 10
