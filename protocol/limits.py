"""Bounds on every input the protocol layer decodes.

Each default is chosen so that every message a real Celery deployment sends fits with room to
spare, while a hostile or broken producer cannot make a worker allocate without bound or recurse
until the interpreter gives up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import LimitExceeded

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_HEADERS",
    "Limits",
    "check_depth",
    "json_nests_within",
]

# 16 MiB: RabbitMQ 4.x refuses larger messages by default (`max_message_size`), SQS stops at
# 1 MiB, and Celery's own guidance is to pass references, not payloads. The same bound applies
# to a transport envelope, to the task body inside it and to the body after decompression, so a
# small compressed message cannot expand into gigabytes.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

# 100 levels: a deeply nested canvas (a chord inside a chain inside a group, each signature
# adding ~4 levels of dicts and lists) stays under 40; the interpreter's recursion limit is
# 1000, so code that walks a decoded value recursively (encoders, repr) stays safe.
DEFAULT_MAX_DEPTH = 100

# 128 headers: Celery 5.7 sends 19 task headers; the rest are user headers from
# `apply_async(headers=...)`, which are merged into the top level. AMQP brokers accept far more,
# but a message with hundreds of headers is a bug or an attack, not a task.
DEFAULT_MAX_HEADERS = 128


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds a decoder enforces; pass your own to loosen or tighten them."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_headers: int = DEFAULT_MAX_HEADERS

    def check_size(self, data: bytes | str, *, field: str) -> None:
        """Raise :class:`LimitExceeded` if ``data`` is longer than ``max_body_bytes``."""
        if len(data) > self.max_body_bytes:
            raise LimitExceeded("size", len(data), self.max_body_bytes, field=field)

    def check_headers(
        self, headers: Mapping[str, Any], *, field: str = "headers", shallow: bool = False
    ) -> None:
        """Raise :class:`LimitExceeded` if there are too many headers or they nest too deeply
        (``shallow``: they are known not to, see :func:`json_nests_within`)."""
        if len(headers) > self.max_headers:
            raise LimitExceeded("header count", len(headers), self.max_headers, field=field)
        if not shallow:
            check_depth(headers, self.max_depth, field=field)


DEFAULT_LIMITS = Limits()
#: Exact types that hold nothing to descend into: most of what a message holds.
_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})


def json_nests_within(text: bytes | str, max_depth: int) -> bool:
    """Whether the JSON document ``text`` cannot nest deeper than ``max_depth``, known without
    parsing it: every level opens with ``[`` or ``{``, so their count bounds the depth (those
    inside strings only count too many). JSON cannot escape them, and in UTF-16 or UTF-32
    bytes each still holds its ASCII byte. Counting is C speed; :func:`check_depth` walks the
    parsed value in Python, so this lets most documents skip the walk.
    """
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{") <= max_depth
    return text.count("[") + text.count("{") <= max_depth


def check_depth(value: Any, max_depth: int, *, field: str) -> None:
    """Raise :class:`LimitExceeded` if lists/dicts in ``value`` nest deeper than ``max_depth``.

    Iterative, one nesting level at a time, so a hostile value cannot exhaust the
    interpreter's stack while being measured, and each container is visited once, so yaml
    aliases that share one list a billion times over cost no more than the list itself.
    """
    level, depth = [value], 1
    seen: set[int] = set()
    while level:
        below = []
        for item in level:
            kind = type(item)  # the concrete types first: the Mapping ABC check is slow
            if kind is dict:
                children: Any = item.values()
            elif isinstance(item, list | tuple):
                children = item
            elif isinstance(item, Mapping):
                children = item.values()
            else:
                continue
            if id(item) in seen:
                continue
            if depth > max_depth:
                raise LimitExceeded("nesting depth", depth, max_depth, field=field)
            seen.add(id(item))
            # Scalars are never queued; their exact type is one set lookup.
            below += [child for child in children if type(child) not in _SCALARS]
        level, depth = below, depth + 1
