"""Metrics and probes over HTTP: ``/metrics`` (Prometheus exposition), ``/healthz`` and
``/readyz``, served by the process's own event loop.

The server runs on the event loop it watches, so an answer from ``/healthz`` proves the loop
answers: a loop blocked by a task that never yields leaves the probe unanswered, which is what a
Kubernetes liveness probe needs to see. ``/readyz`` answers 200 while ``ready()`` holds (the
broker connected, Redis reachable: each process says what it needs) and 503 otherwise.
``/metrics`` renders ``registry`` with prometheus-client's own exposition.

Why not prometheus-client's ``start_http_server``: it serves from a thread, which keeps
answering while the loop is blocked. Why not a web framework: three fixed GET routes need a
request line and a response, not routing, middleware or a second event loop integration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["ProbeServer"]

#: The most a request line and its headers may take; anything longer is refused.
_MAX_REQUEST = 16 * 1024
#: Seconds a client has to send its request.
_READ_TIMEOUT = 5.0


class ProbeServer:
    """Serves ``registry`` and the probes on ``host:port`` (port 0: any free port, see
    :attr:`port` once started)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ready: Callable[[], bool],
        host: str = "0.0.0.0",
        port: int = 0,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen; ``OSError`` if the port is taken."""
        self._server = await asyncio.start_server(
            self._answer, self.host, self._port, limit=_MAX_REQUEST
        )

    async def aclose(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ProbeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = _request_line(head)
            head_only = method == "HEAD"
            status, content_type, body = self._respond(method, path)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, content_type, body = "400 Bad Request", "text/plain", b"bad request\n"
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(header.encode() + (b"" if head_only else body))
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    def _respond(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        route = path.split("?", 1)[0]
        if route == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if route == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if route == "/readyz":
            if self.ready():
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"not ready\n"
        return "404 Not Found", "text/plain", b"/metrics, /healthz or /readyz\n"


def _request_line(head: bytes) -> tuple[str, str]:
    method, path, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    return method, path
