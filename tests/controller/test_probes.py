"""Metrics and probes: runtime's ProbeServer on its own, then ``celeriac controller
--http-port``, scraped and parsed with prometheus-client's own parser: the queue alert as a
metric, and ``/readyz`` unready while the controller's Redis is cut off, ready again after."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from runtime.probes import ProbeServer
from tests.interop.conftest import ROOT
from tests.proxy import TcpProxy


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    """Status and body of an HTTP request to the probe server."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_probe_server() -> None:
    registry = CollectorRegistry()
    Gauge("celeriac_test_gauge", "A gauge", ["queue"], registry=registry).labels("q").set(7)
    ready = [True]
    async with ProbeServer(registry, ready=lambda: ready[0], host="127.0.0.1") as server:
        port = server.port
        status, body = await asyncio.to_thread(get, port, "/metrics")
        assert status == 200
        assert samples(body)[("celeriac_test_gauge", (("queue", "q"),))] == 7
        assert await asyncio.to_thread(get, port, "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(get, port, "/readyz") == (200, "ready\n")
        ready[0] = False
        assert await asyncio.to_thread(get, port, "/readyz") == (503, "not ready\n")
        assert (await asyncio.to_thread(get, port, "/nothing"))[0] == 404
        assert (await asyncio.to_thread(get, port, "/healthz", "POST"))[0] == 405
        assert await asyncio.to_thread(get, port, "/healthz", "HEAD") == (200, "")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"nonsense\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def proxy(redis_url: str) -> Iterator[TcpProxy]:
    cut = TcpProxy(redis_url)
    yield cut
    cut.close()


@pytest.mark.integration
def test_the_controllers_metrics_and_readiness(
    redis_url: str, unique_name: str, proxy: TcpProxy
) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HA_BROKER": redis_url,
           "HA_QUEUE": unique_name, "HA_COUNTS": f"{unique_name}:counts"}  # fmt: skip
    controller = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "controller", "-A", "tests.controller.ha_app:app",
         "--redis", proxy.url, "--prefix", f"{unique_name}:", "--id", "probed",
         "--http-port", str(port), "--lease-ttl", "1", "--watch-interval", "0.2",
         "--watch-grace", "1", "--log-format", "json"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        alert = ("celeriac_queue_unconsumed", (("queue", unique_name),))

        def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            try:
                status, body = get(port, "/metrics")
            except OSError:
                return {}
            return samples(body) if status == 200 else {}

        deadline = time.monotonic() + 30
        while scraped().get(alert) != 1:  # the every-second ticks pile up, nobody consumes
            assert time.monotonic() < deadline, "no queue alert in the metrics"
            time.sleep(0.2)
        metrics = scraped()
        assert metrics[("celeriac_controller_leader", ())] == 1
        assert metrics[("celeriac_schedule_fires_total", (("schedule", "every-second"),))] >= 1
        assert metrics[("celeriac_queue_depth", (("queue", unique_name),))] >= 1
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/readyz") == (200, "ready\n")

        proxy.refuse()
        proxy.drop()
        deadline = time.monotonic() + 20
        while get(port, "/readyz")[0] != 503:
            assert time.monotonic() < deadline, "still ready with Redis cut off"
            time.sleep(0.2)
        assert get(port, "/healthz") == (200, "ok\n")  # the loop still answers
        proxy.allow()
        deadline = time.monotonic() + 30
        while get(port, "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "not ready again with Redis back"
            time.sleep(0.2)
    finally:
        controller.terminate()
        assert controller.wait(timeout=20) == 0
