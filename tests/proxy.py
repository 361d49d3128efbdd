"""A TCP proxy in front of a broker, whose connections a test can cut at will."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; :meth:`drop` cuts every live connection.
    ``delay``: seconds each chunk waits before it is passed on, either way (a slow link)."""

    def __init__(self, target_url: str, *, delay: float = 0.0) -> None:
        self._delay = delay
        split = urlsplit(target_url)
        self._target = (split.hostname or "127.0.0.1", split.port or 5672)
        self._split = split
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._refusing = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """``target_url`` with this proxy as its host and port."""
        netloc = self._split.netloc.rsplit("@", 1)
        credentials = f"{netloc[0]}@" if len(netloc) == 2 else ""
        return urlunsplit(self._split._replace(netloc=f"{credentials}127.0.0.1:{self.port}"))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if self._delay:
                    time.sleep(self._delay)
                sink.sendall(data)
        with self._lock:
            self._sockets -= {source, sink}
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def drop(self) -> None:
        """Reset every connection open through the proxy (new ones are still accepted)."""
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def refuse(self) -> None:
        """Drop every connection and refuse new ones until :meth:`allow`: the broker is down."""
        self._refusing = True
        self.drop()

    def allow(self) -> None:
        """Accept connections again: the broker is back."""
        self._refusing = False

    def close(self) -> None:
        """Stop accepting and drop everything."""
        with self._lock:
            self._closed = True
        self._listener.close()
        self.drop()
