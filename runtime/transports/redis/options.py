"""The Redis transport's options: Celery's ``broker_transport_options`` keys it reads, checked.

Given as ``App(broker_transport_options=...)``, in the broker URL's query string (which wins),
or, for ``visibility_timeout``, as ``celeriac worker --visibility-timeout`` /
``CELERIAC_VISIBILITY_TIMEOUT``. Names and defaults are kombu's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.kombu_redis import DEFAULT_FANOUT_PREFIX, DEFAULT_PRIORITY_STEPS, SEP, RedisLayout

__all__ = ["OPTION_NAMES", "RedisOptions"]

#: The transport options this transport reads; the rest of a URL's query goes to redis-py.
OPTION_NAMES = frozenset({
    "visibility_timeout", "global_keyprefix", "priority_steps", "sep", "unacked_key",
    "unacked_index_key", "unacked_mutex_key", "unacked_mutex_expire", "fanout_prefix",
})  # fmt: skip


def _positive(name: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"transport option {name} must be a positive number, not {value!r}")
    return seconds


def _fanout_prefix(value: Any) -> str:
    """kombu's ``fanout_prefix``: true for its per-database default, false for none, or the
    prefix itself."""
    if value is True or value is None or str(value).lower() == "true":
        return DEFAULT_FANOUT_PREFIX
    if value is False or str(value).lower() in ("false", ""):
        return ""
    return str(value)


def _steps(value: Any) -> tuple[int, ...]:
    parts = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(int(part) for part in parts)
    except (TypeError, ValueError):
        raise ValueError(
            f"transport option priority_steps must be integers, not {value!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """The transport options this transport reads, checked."""

    visibility_timeout: float = 3600.0
    unacked_mutex_expire: float = 300.0
    layout: RedisLayout = field(default_factory=RedisLayout)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> RedisOptions:
        """Read them from Celery-style ``broker_transport_options``; ``ValueError`` if bad."""
        text = {name: str(options[name]) for name in ("global_keyprefix", "sep") if name in options}
        keys = {
            name: str(options[name])
            for name in ("unacked_key", "unacked_index_key", "unacked_mutex_key")
            if name in options
        }
        layout = RedisLayout(
            global_keyprefix=text.get("global_keyprefix", ""),
            sep=text.get("sep", SEP),
            priority_steps=_steps(options.get("priority_steps", DEFAULT_PRIORITY_STEPS)),
            fanout_prefix=_fanout_prefix(options.get("fanout_prefix")),
            **keys,
        )
        return cls(
            visibility_timeout=_positive(
                "visibility_timeout", options.get("visibility_timeout", 3600.0)
            ),
            unacked_mutex_expire=_positive(
                "unacked_mutex_expire", options.get("unacked_mutex_expire", 300.0)
            ),
            layout=layout,
        )

    @property
    def renew_every(self) -> float:
        """Seconds between claim renewals."""
        return min(self.visibility_timeout / 4, 10.0)

    @property
    def sweep_every(self) -> float:
        """Seconds between sweeps for stale deliveries."""
        return min(self.visibility_timeout / 2, 60.0)
