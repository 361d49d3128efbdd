"""Find a real Redis / RabbitMQ for the tests, without any client library.

Resolution order, per broker (see :func:`configured_or_local_url` and
:func:`container_url`; tests/conftest.py glues them into fixtures):

1. an explicit URL in the environment (``CELERIAC_TEST_REDIS_URL`` then
   ``REDIS_URL``; ``CELERIAC_TEST_AMQP_URL`` then ``AMQP_URL``), used as is;
2. the local default on 127.0.0.1, if it answers a protocol-level probe
   (``.ci/brokers`` starts those);
3. a throwaway container, if testcontainers is installed and a Docker engine
   answers.

The probes use plain sockets, closed on every path, because the test suite
turns warnings (``ResourceWarning`` for unclosed sockets included) into errors.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Seconds a single probe may take before the service counts as absent.
PROBE_TIMEOUT = 1.0


def redis_answers(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Return True if a Redis server at ``host:port`` replies ``+PONG`` to ``PING``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def amqp_answers(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Return True if an AMQP 0-9-1 broker at ``host:port`` starts a handshake.

    After the protocol header a broker sends Connection.Start in a method
    frame, whose first byte (the frame type) is 1. A broker that does not
    speak 0-9-1 answers with its own protocol header (``b"AMQP..."``) instead.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(1) == b"\x01"
    except OSError:
        return False


@dataclass(frozen=True)
class Broker:
    """How to find, probe and (as a last resort) containerise one broker."""

    name: str
    env_vars: tuple[str, ...]
    default_url: str
    port: int
    image: str
    probe: Callable[[str, int, float], bool]


REDIS = Broker(
    name="redis",
    env_vars=("CELERIAC_TEST_REDIS_URL", "REDIS_URL"),
    default_url="redis://127.0.0.1:6379/0",
    port=6379,
    image="redis:7",
    probe=redis_answers,
)

RABBITMQ = Broker(
    name="rabbitmq",
    env_vars=("CELERIAC_TEST_AMQP_URL", "AMQP_URL"),
    default_url="amqp://guest:guest@127.0.0.1:5672//",
    port=5672,
    image="rabbitmq:3.13",
    probe=amqp_answers,
)


def configured_or_local_url(broker: Broker) -> str | None:
    """Return the broker URL from the environment, else the local default if it
    answers its probe, else None. An environment URL is trusted, not probed."""
    for var in broker.env_vars:
        if url := os.environ.get(var):
            return url
    parts = urlsplit(broker.default_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or broker.port
    return broker.default_url if broker.probe(host, port, PROBE_TIMEOUT) else None


def docker_available(timeout: float = PROBE_TIMEOUT) -> bool:
    """Return True if testcontainers is installed and a Docker engine answers.

    The engine is pinged by hand (``GET /_ping`` on ``DOCKER_HOST``, default
    ``unix:///var/run/docker.sock``): the docker SDK leaks a socket when the
    engine is absent, which the warnings-as-errors suite would report. Only
    ``unix://`` and plain ``tcp://`` hosts are recognised; for others (TLS,
    ssh) set the broker URL variables instead.
    """
    if importlib.util.find_spec("testcontainers") is None:
        return False
    target = urlsplit(os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
    address: str | tuple[str, int]
    if target.scheme == "unix":
        family, address = socket.AF_UNIX, target.path
    elif target.scheme in ("tcp", "http") and target.hostname:
        family, address = socket.AF_INET, (target.hostname, target.port or 2375)
    else:
        return False
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return sock.recv(64).split(b"\r\n", 1)[0].endswith(b" 200 OK")
    except OSError:
        return False


@contextmanager
def container_url(broker: Broker, timeout: float = 120.0) -> Iterator[str]:
    """Run ``broker.image`` in a container for the duration of the block and
    yield its URL once the broker answers its probe.

    Uses testcontainers' generic ``DockerContainer`` rather than its Redis or
    RabbitMQ modules: those moved between testcontainers releases and the
    RabbitMQ one needs ``pika``, which this project does not otherwise use.
    """
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415

    container = DockerContainer(broker.image).with_exposed_ports(broker.port)
    # Third-party deprecation notices must not fail the suite (warnings are
    # errors there); the broker itself is verified by our own probe below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        container.start()
    try:
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(broker.port))
        deadline = time.monotonic() + timeout
        while not broker.probe(host, port, PROBE_TIMEOUT):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{broker.name} container did not answer on {host}:{port}")
            time.sleep(0.5)
        default = urlsplit(broker.default_url)
        userinfo = default.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
        yield default._replace(netloc=netloc).geturl()
    finally:
        container.stop()
