"""A local SQS for the tests: moto's server mode in a subprocess, on a free port.

moto keeps every queue in the memory of that one process, accepts any credentials and
answers the SQS API (query and JSON protocols) at ``http://127.0.0.1:PORT``; kombu's boto3
client and celeriac's aiobotocore client both talk to it as to AWS.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote

__all__ = [
    "ACCESS_KEY",
    "REGION",
    "SECRET_KEY",
    "delete_sqs_queues",
    "moto_available",
    "moto_server",
    "sqs_url_for",
]

#: Dummy credentials: moto accepts any, botocore only needs some.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def moto_available() -> bool:
    """Whether moto's server mode (``moto[server]``) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("moto", "flask"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def moto_server(timeout: float = 30.0) -> Iterator[str]:
    """Run ``python -m moto.server`` for the block; yield its endpoint once it answers."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while not _answers(endpoint):
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto server did not answer on {endpoint}")
            time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def sqs_url_for(endpoint: str) -> str:
    """A celeriac ``sqs://`` URL for ``endpoint`` with the dummy credentials and region."""
    return (
        f"sqs://{ACCESS_KEY}:{SECRET_KEY}@?endpoint_url={quote(endpoint, safe='')}&region={REGION}"
    )


async def delete_sqs_queues(url: str, queues: list[str]) -> None:
    """Delete the SQS queues of celeriac queues ``queues`` (missing ones are fine)."""
    from runtime.transports.sqs import SqsTransport, sqs_queue_name  # noqa: PLC0415 - needs the sqs extra

    transport = SqsTransport(url)
    try:
        client = await transport._client_for(None)
        for queue in queues:
            with contextlib.suppress(client.exceptions.QueueDoesNotExist):
                found = await client.get_queue_url(QueueName=sqs_queue_name(queue))
                await client.delete_queue(QueueUrl=found["QueueUrl"])
    finally:
        await transport.aclose()
