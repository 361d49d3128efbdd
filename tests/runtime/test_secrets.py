"""No password in any log line, repr, reply or error; every task's log lines name the task, its
queue and the worker.

Redis 6+ accepts any password for its ``default`` user while that user is ``nopass`` (the
default), so a URL carrying a unique secret, ``redis://default:<secret>@127.0.0.1:6379/0``,
works against the local server, and the secret can be searched for in everything the worker
says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import pytest
import structlog
from celery import Celery

from runtime import App
from runtime.errors import BackendError, BrokerConnectionError, mask_secrets
from runtime.load import redact
from runtime.serve import mask_event_secrets
from runtime.transports.urls import masked_url, transport_for_url
from tests.interop.conftest import ROOT, WorkerProcess

#: The app the worker subprocess runs (``-A tests.runtime.test_secrets:app``).
app = App("secrets")


@app.task(name="secrets.chatty")
async def chatty(url: str) -> str:
    """Logs through structlog and the standard library, with a URL holding a password."""
    structlog.get_logger("secrets.task").info("task_says", url=url)
    logging.getLogger("secrets.task").warning("stdlib says %s", url)
    return "said"


@app.task(name="secrets.chatty_thread")
def chatty_thread(url: str) -> str:
    """The same from the thread pool."""
    structlog.get_logger("secrets.task").info("thread_says", url=url)
    return "said"


def _secret() -> str:
    return f"s3cr3t-{uuid.uuid4().hex}"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_password(url: str, secret: str) -> str:
    split = urlsplit(url)
    return split._replace(netloc=f"default:{secret}@{split.hostname}:{split.port or 6379}").geturl()


# -- masking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("amqp://guest:pw@host:5672//", "amqp://guest:********@host:5672//"),
        ("redis://:p@ss@host/0", "redis://:********@host/0"),  # an unescaped "@" in it
        ("rediss://default:pw@host:6380/1?ssl_cert_reqs=none", "rediss://default:********@host:6380/1?ssl_cert_reqs=none"),
        ("sqs://KEY:SECRET@localhost:9324", "sqs://KEY:********@localhost:9324"),
        ("Error connecting to 'redis://u:pw@h:1/0' (refused), retry amqp://a:b@c//",
         "Error connecting to 'redis://u:********@h:1/0' (refused), retry amqp://a:********@c//"),
        ("redis://host/0", "redis://host/0"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("memory://", "memory://"),
        ("no url: a@b:c", "no url: a@b:c"),
    ],
)  # fmt: skip
def test_one_masking_everywhere(text: str, shown: str) -> None:
    assert mask_secrets(text) == shown
    if " " not in text:
        assert masked_url(text) == shown
        assert redact(text) == shown  # the load generator's reports


def test_the_log_processor_masks_every_string_value() -> None:
    event = {
        "event": "connect_failed amqp://guest:pw1@h//",
        "error": "ConnectionError('redis://:pw2@h/0')",
        "urls": ["redis://:pw3@h/0", 5],
        "nested": {"url": ("amqp://u:pw4@h//",)},
        "count": 3,
    }
    out = json.dumps(mask_event_secrets(None, "info", event))
    assert not any(f"pw{i}" in out for i in range(1, 5))
    assert out.count("********") == 4


def test_errors_never_carry_a_password() -> None:
    secret = _secret()
    for error in (
        BrokerConnectionError(f"broker: cannot connect to amqp://guest:{secret}@h//"),
        BackendError(f"result backend: cannot store to redis://default:{secret}@h/0", 1),
    ):
        assert secret not in str(error)
        assert secret not in repr(error)
        assert "********" in str(error)


def test_reprs_never_carry_a_password() -> None:
    secret = _secret()
    redis = f"redis://default:{secret}@127.0.0.1:{_closed_port()}/0"
    amqp = f"amqp://guest:{secret}@127.0.0.1:{_closed_port()}//"
    one = App("x", broker=amqp, result_backend=redis, run_registry=redis)
    shown = [repr(one), str(one), repr(one.backend), repr(one.run_registry)]
    for url in (amqp, redis):
        transport = transport_for_url(url)
        shown += [repr(transport), str(transport)]
    assert not [text for text in shown if secret in text]


async def test_connection_errors_never_carry_a_password() -> None:
    secret = _secret()
    port = _closed_port()
    for url in (f"redis://default:{secret}@127.0.0.1:{port}/0",
                f"amqp://guest:{secret}@127.0.0.1:{port}//"):  # fmt: skip
        transport = transport_for_url(url)
        with pytest.raises(BrokerConnectionError) as caught:
            await asyncio.wait_for(transport.connect(), 30)
        await transport.aclose()
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)
        cause = caught.value.__cause__
        assert cause is None or secret not in str(cause)
    backend = App("x", result_backend=f"redis://default:{secret}@127.0.0.1:{port}/0").backend
    assert backend is not None
    with pytest.raises(BackendError) as failed:
        await backend.get("some-id")
    assert secret not in str(failed.value)
    await backend.aclose()


# -- a worker's whole output ---------------------------------------------------------------------


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_an_unreachable_broker_is_reported_without_its_password(scheme: str) -> None:
    secret = _secret()
    port = _closed_port()
    url = (
        f"redis://default:{secret}@127.0.0.1:{port}/0"
        if scheme == "redis"
        else f"amqp://guest:{secret}@127.0.0.1:{port}//"
    )
    done = _run_cli("worker", "-A", "tests.runtime.test_secrets:app", "-Q", "q", "-b", url,
                    "--result-backend", url.replace("amqp://guest", "redis://default", 1),
                    "--log-format", "json")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "celeriac:" in done.stderr
    assert secret not in done.stdout + done.stderr


@pytest.mark.integration
def test_a_working_worker_says_no_password_and_names_each_task(
    redis_url: str, unique_name: str
) -> None:
    """Broker, result backend and run registry all carry the secret; a task logs a URL with it
    too. Nothing the worker prints, and no reply it gives, holds it; each task's lines (its own
    included, from the event loop and from a thread) carry task_id, task, queue and worker."""
    secret = _secret()
    url = _with_password(redis_url, secret)
    hostname = f"{unique_name}@secrets"
    worker = WorkerProcess(
        ["-A", "tests.runtime.test_secrets:app", "-Q", unique_name, "-c", "2", "-b", url,
         "--result-backend", url, "--run-registry", url, "-n", hostname, "--log-format", "json"],
        {**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    client = Celery("client", broker=url, backend=url, set_as_current=False)
    try:
        ready = worker.wait_for("worker_ready")
        assert ready["broker"] == masked_url(url)

        loop_task = client.send_task("secrets.chatty", args=(url,), queue=unique_name)
        thread_task = client.send_task("secrets.chatty_thread", args=(url,), queue=unique_name)
        assert loop_task.get(timeout=15) == thread_task.get(timeout=15) == "said"
        inspect = client.control.inspect(destination=[hostname], timeout=5)
        replies = [inspect.conf(), inspect.stats(), inspect.active_queues(), inspect.registered()]
        assert all(reply and hostname in reply for reply in replies)
        assert secret not in json.dumps(replies, default=str)

        for event, result, task in [
            ("task_says", loop_task, "secrets.chatty"),
            ("thread_says", thread_task, "secrets.chatty_thread"),
            ("task_started", loop_task, "secrets.chatty"),
            ("task_succeeded", thread_task, "secrets.chatty_thread"),
        ]:
            record = worker.wait_for(event, task_id=result.id)
            assert (record["task"], record["queue"], record["worker"]) == (
                task,
                unique_name,
                hostname,
            ), record
        stdlib = worker.wait_for("stdlib says " + masked_url(url))
        assert (stdlib["task_id"], stdlib["worker"]) == (loop_task.id, hostname)
    finally:
        client.close()
        worker.signal(signal.SIGTERM)
        status = worker.wait()
        worker.close()
    assert status == 0
    output = "".join(worker.lines)
    assert worker.records
    assert len(worker.records) == len(worker.lines)  # every line is JSON
    assert secret not in output
    assert "********" in output
    assert all(r.get("worker") == hostname for r in worker.records), output
