"""TLS end to end: a stock Celery client and a celeriac worker over ``amqps://`` and
``rediss://`` (broker and result backend), with certificates the test makes, against
RabbitMQ's TLS listener and a Redis server that speaks only TLS; a wrong CA fails clearly."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery

from runtime import App
from tests.interop.conftest import ROOT, Broker
from tests.tls_servers import (
    Certificates,
    certificates,
    rabbitmq_tls_listener,
    redis_tls_server,
)


@dataclass(frozen=True)
class Endpoints:
    """The test's certificates and its TLS ports."""

    certs: Certificates
    amqps_port: int
    rediss_port: int

    def amqps(self, cafile: object = None) -> str:
        """celeriac's URL for RabbitMQ over TLS (aio-pika reads ``cafile``)."""
        return f"amqps://guest:guest@localhost:{self.amqps_port}//?cafile={cafile or self.certs.ca}"

    def rediss(self, cafile: object = None) -> str:
        """celeriac's (and redis-py's) URL for Redis over TLS."""
        ca = cafile or self.certs.ca
        return f"rediss://localhost:{self.rediss_port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"


@pytest.fixture(scope="module")
def tls() -> Iterator[Endpoints]:
    with (
        certificates() as certs,
        rabbitmq_tls_listener(certs) as amqps_port,
        redis_tls_server(certs) as rediss_port,
    ):
        yield Endpoints(certs, amqps_port, rediss_port)


def _celery_client(tls: Endpoints, broker: str) -> Celery:
    """A Celery client configured with Celery's own TLS settings."""
    client = Celery(
        "tls-client",
        broker=broker,
        backend=f"rediss://localhost:{tls.rediss_port}/0",
        set_as_current=False,
    )
    redis_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(tls.certs.ca)}
    amqp_ssl = {"ca_certs": str(tls.certs.ca), "cert_reqs": ssl.CERT_REQUIRED}
    client.conf.update(
        broker_use_ssl=amqp_ssl if broker.startswith("amqps") else redis_ssl,
        redis_backend_use_ssl=redis_ssl,
    )
    return client


def _close(client: Celery) -> None:
    client.backend.result_consumer.stop()
    client.backend.client.close()


@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_a_celery_client_and_a_celeriac_worker_over_tls(
    start_worker: Any, tls: Endpoints, unique_name: str, broker: Broker
) -> None:
    """RabbitMQ or Redis as the broker, results in Redis, every connection over TLS."""
    if broker.kind == "amqp":
        worker_url, client_url = tls.amqps(), f"amqps://guest:guest@localhost:{tls.amqps_port}//"
    else:
        worker_url, client_url = tls.rediss(), f"rediss://localhost:{tls.rediss_port}/0"
    start_worker(unique_name, broker_url=worker_url, extra=("--result-backend", tls.rediss()))
    client = _celery_client(tls, client_url)
    try:
        result = client.send_task("interop.add", args=(2, 3), queue=unique_name)
        assert result.get(timeout=20) == 5
    finally:
        _close(client)


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_celeriacs_app_takes_celerys_tls_settings(
    start_worker: Any, tls: Endpoints, unique_name: str
) -> None:
    """``broker_use_ssl`` and ``redis_backend_use_ssl`` as a Celery app sets them, on
    celeriac's own producer and result handle."""
    start_worker(unique_name, broker_url=tls.amqps(), extra=("--result-backend", tls.rediss()))
    app = App(
        broker=f"amqp://guest:guest@localhost:{tls.amqps_port}//",
        broker_use_ssl={"ca_certs": str(tls.certs.ca), "cert_reqs": ssl.CERT_REQUIRED},
        result_backend=f"redis://localhost:{tls.rediss_port}/0",
        redis_backend_use_ssl={
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "ssl_ca_certs": str(tls.certs.ca),
        },
    )

    async def round_trip() -> Any:
        try:
            handle = await app.send_task("interop.add", (20, 22), queue=unique_name)
            return await handle.get(timeout=20)
        finally:
            await app.aclose()

    assert asyncio.run(round_trip()) == 42


@pytest.mark.parametrize("kind", ["amqps", "rediss"])
def test_a_wrong_ca_fails_the_start_with_a_clear_error(
    tls: Endpoints, unique_name: str, kind: str
) -> None:
    wrong = tls.certs.other_ca
    broker = tls.amqps(cafile=wrong) if kind == "amqps" else tls.rediss(cafile=wrong)
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "worker", "-A", "tests.interop.app:app",
         "-Q", unique_name, "--broker", broker, "--log-format", "json"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("celeriac: broker: cannot connect to localhost:")
    assert "CERTIFICATE_VERIFY_FAILED" in last
