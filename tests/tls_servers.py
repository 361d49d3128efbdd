"""TLS endpoints for the tests: certificates made on the spot, RabbitMQ's TLS listener started
on the running node, and a Redis server of the test's own that speaks only TLS."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.chaos.servers import rabbitmqctl_eval
from tests.controller.test_probes import free_port


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate it signed (for ``localhost`` and ``127.0.0.1``), and a CA
    that signed nothing (the wrong one to trust)."""

    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_certificates(directory: Path) -> Certificates:
    """Write the certificates to ``directory`` (readable by every user: RabbitMQ runs as
    its own)."""
    ca_key, ca_cert = _ca("celeriac test CA")
    _, other_cert = _ca("celeriac wrong CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        other_ca=directory / "other-ca.pem",
    )
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.other_ca.write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, paths.server_key)
    directory.chmod(0o755)
    for path in (paths.ca, paths.other_ca, paths.server_cert, paths.server_key):
        path.chmod(0o644)
    return paths


@contextmanager
def certificates() -> Iterator[Certificates]:
    """:func:`make_certificates` in a directory of its own, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="celeriac-tls-"))
    try:
        yield make_certificates(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextmanager
def rabbitmq_tls_listener(certs: Certificates) -> Iterator[int]:
    """A TLS listener on the running RabbitMQ node, on a free loopback port (its number)."""
    port = free_port()
    listener = f'{{"127.0.0.1", {port}}}'
    options = (
        f'[{{cacertfile, "{certs.ca}"}}, {{certfile, "{certs.server_cert}"}}, '
        f'{{keyfile, "{certs.server_key}"}}, {{verify, verify_none}}, '
        "{fail_if_no_peer_cert, false}]"
    )
    reply = rabbitmqctl_eval(f"rabbit_networking:start_ssl_listener({listener}, {options}, 1).")
    if reply != "ok":
        raise RuntimeError(f"RabbitMQ did not start a TLS listener: {reply}")
    try:
        _wait_for_port(port)
        yield port
    finally:
        rabbitmqctl_eval(f"rabbit_networking:stop_tcp_listener({listener}).")


@contextmanager
def redis_tls_server(certs: Certificates) -> Iterator[int]:
    """``redis-server`` answering only TLS, on a free loopback port (its number)."""
    port = free_port()
    command = [
        shutil.which("redis-server") or "redis-server",
        "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
