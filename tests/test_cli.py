"""The ``celeriac`` console script, run as a user would run it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from runtime import cli, serve
from runtime.transports.redis.transport import RedisTransport
from runtime.transports.urls import transport_for_url
from runtime.worker import DEFAULT_MAX_HELD_ETA
from tests.protocol.oracle import capture, make_app


def _celeriac(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("celeriac", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "runtime.cli"]
    return subprocess.run([*command, *args], input=stdin, capture_output=True, check=False)


def test_decode_a_message_celery_published() -> None:
    app = make_app()
    captured = capture(app, "proj.add", args=(2, 3), kwargs={"z": 1}, countdown=10, queue="cli")

    done = _celeriac("decode", stdin=captured.redis_bytes)

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["delivery"]["routing_key"] == "cli"
    assert out["task"]["task"] == "proj.add"
    assert out["task"]["args"] == [2, 3]
    assert out["task"]["kwargs"] == {"z": 1}
    assert out["task"]["eta"] == "2026-11-22T15:01:40.579418+00:00"


def test_decode_an_sqs_body() -> None:
    captured = capture(make_app(), "proj.cb", args=("x",), queue="cli-sqs")
    body = base64.b64encode(captured.redis_bytes)

    done = _celeriac("decode", stdin=body)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["task"]["args"] == ["x"]


@pytest.mark.parametrize("data", [b"not a message", b'{"properties": {}}'])
def test_decode_says_why_a_message_is_malformed(data: bytes) -> None:
    done = _celeriac("decode", stdin=data)

    assert done.returncode == 1
    assert done.stderr.startswith(b"celeriac: malformed message:")
    assert done.stdout == b""


def test_version() -> None:
    done = _celeriac("--version")

    assert done.returncode == 0
    assert done.stdout.startswith(b"celeriac 0.")


def test_a_worker_loads_metrics_and_process_pools_only_when_it_uses_them() -> None:
    """prometheus-client (with its HTTP server) and pebble (with multiprocessing) are ~2.6 MiB
    of every worker process: loaded with ``--metrics-port`` or the first call run in a
    process, not before."""
    probe = (
        "import sys, runtime.cli, runtime.serve, runtime.worker, runtime.transports.amqp;"
        "print(sorted(m for m in ('prometheus_client', 'pebble', 'multiprocessing')"
        " if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True)

    assert done.stdout.decode().strip() == "[]"


def test_worker_with_an_unreachable_broker_says_so_in_one_line() -> None:
    done = _celeriac(
        "worker", "-A", "tests.interop.app:app", "--broker", "amqp://guest:guest@127.0.0.1:1//",
        "--log-format", "json",
    )  # fmt: skip

    assert done.returncode == 1
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("celeriac: ")
    assert "127.0.0.1:1" in last


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_such_module:app", "cannot import 'no_such_module'"),
        ("tests.interop.app:missing", "is not a celeriac App"),
        ("", "worker needs -A"),
    ],
)
def test_worker_with_a_wrong_app_path_says_so(app: str, message: str) -> None:
    done = _celeriac("worker", "-A", app, "--log-format", "json")

    assert done.returncode == 2
    assert message in done.stderr.decode()


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf", "nan"])
def test_worker_refuses_a_visibility_timeout_that_is_not_a_positive_number(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "worker", "-A", "examples.tasks:app",
         "--visibility-timeout", value],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"celeriac: visibility timeout must be a positive number of seconds, not {value!r}"
    )


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["--visibility-timeout", "7.5"], {}, 7.5),
        ([], {"CELERIAC_VISIBILITY_TIMEOUT": "9"}, 9.0),
        (["--visibility-timeout", "7"], {"CELERIAC_VISIBILITY_TIMEOUT": "9"}, 7.0),
        ([], {}, None),
    ],
)
def test_the_visibility_timeout_reaches_the_redis_transport(
    argv: list[str], environ: dict[str, str], expected: float | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Flag over environment over the URL's own query; the transport the worker builds reads it."""
    monkeypatch.delenv("CELERIAC_VISIBILITY_TIMEOUT", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    seen: list[serve.WorkerOptions] = []

    def recorded(options: serve.WorkerOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(serve, "serve", recorded)
    monkeypatch.setattr(serve, "configure_logging", lambda *args: None)  # process-wide

    assert cli.main(["worker", "-A", "examples.tasks:app", *argv]) == 0

    (options,) = seen
    assert options.visibility_timeout == expected
    app = serve.load_app("examples.tasks:app")
    app.broker_transport_options.clear()
    serve.configure(app, replace(options, broker="redis://127.0.0.1:6379/0"))
    transport = transport_for_url(app.broker_url, app.broker_transport_options)
    assert isinstance(transport, RedisTransport)
    assert transport.options.visibility_timeout == (expected or 3600.0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rate", "fast"], "celeriac: rate must be a positive N/s, N/m, N/h or N"),
        (["--duration", "0s"], "celeriac: duration must be a positive N, Nms, Ns, Nm or Nh"),
        (["--result-timeout", "soon"], "celeriac: duration must be"),
        (["--args", "[1, 2"], "celeriac: --args must be a JSON list, not '[1, 2'"),
        (["--args", '{"x": 1}'], "celeriac: --args must be a JSON list"),
        (["--kwargs", "[1]"], "celeriac: --kwargs must be a JSON object, not '[1]'"),
        (["--broker", "ftp://host"], "celeriac: no transport for 'ftp' URLs"),
        (["--result-backend", "rpc://"], "celeriac: result backend must be redis://"),
    ],
)
def test_load_refuses_bad_input_in_one_line(flags: list[str], message: str) -> None:
    base = {"--broker": "memory://", "--task": "t", "--rate": "10/s", "--duration": "1s"}
    overrides = dict(zip(flags[::2], flags[1::2], strict=True))
    args = [item for pair in {**base, **overrides}.items() for item in pair]

    done = _celeriac("load", *args)

    assert done.returncode == 2
    assert done.stderr.decode().startswith(message)
    assert len(done.stderr.decode().strip().splitlines()) == 1
    assert done.stdout == b""


def test_load_with_an_unreachable_broker_says_so_in_one_line() -> None:
    done = _celeriac(
        "load", "--broker", "amqp://guest:guest@127.0.0.1:1//", "--task", "t", "--rate", "5/s",
        "--duration", "1s",
    )  # fmt: skip

    assert done.returncode == 1
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("celeriac: broker: cannot connect")
    assert "127.0.0.1:1" in last
    assert done.stdout == b""


def test_load_with_an_unreachable_result_backend_fails_before_sending() -> None:
    done = _celeriac(
        "load", "--broker", "memory://", "--task", "t", "--rate", "5/s", "--duration", "1s",
        "--result-backend", "redis://127.0.0.1:1/0",
    )  # fmt: skip

    assert done.returncode == 1
    assert done.stderr.decode().startswith("celeriac: result backend: cannot connect")


def test_bench_hands_its_arguments_to_the_suite() -> None:
    done = _celeriac("bench", "--brokers", "amqp,nope", "--scenarios", "noop")

    assert done.returncode == 2
    assert done.stderr.decode().strip() == "python -m benchmarks: unknown broker or scenario: nope"


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["--max-held-eta", "50"], {}, 50),
        ([], {"CELERIAC_MAX_HELD_ETA": "0"}, 0),
        (["--max-held-eta", "7"], {"CELERIAC_MAX_HELD_ETA": "9"}, 7),
        ([], {}, DEFAULT_MAX_HELD_ETA),
    ],
)
def test_the_held_eta_bound_reaches_the_worker(
    argv: list[str], environ: dict[str, str], expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CELERIAC_MAX_HELD_ETA", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    seen: list[serve.WorkerOptions] = []

    def recorded(options: serve.WorkerOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(serve, "serve", recorded)
    monkeypatch.setattr(serve, "configure_logging", lambda *args: None)  # process-wide

    assert cli.main(["worker", "-A", "examples.tasks:app", *argv]) == 0

    assert [options.max_held_eta for options in seen] == [expected]


@pytest.mark.parametrize("value", ["-1", "many", "2.5"])
def test_worker_refuses_a_held_eta_bound_that_is_not_a_whole_number(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "worker", "-A", "examples.tasks:app",
         "--max-held-eta", value],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"celeriac: --max-held-eta must be a whole number, 0 or more, not {value!r}"
    )
