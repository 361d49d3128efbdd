"""Where the controller keeps its state in Redis: every key name in one place.

All keys start with ``prefix`` (default ``celeriac:``), so several deployments can share one
Redis by giving each its own prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PREFIX", "Keys"]

DEFAULT_PREFIX = "celeriac:"


@dataclass(frozen=True, slots=True)
class Keys:
    """The controller's Redis key names under ``prefix``."""

    prefix: str = DEFAULT_PREFIX

    @property
    def lease(self) -> str:
        """The scheduler's leader lease: ``<controller id>|<fencing token>``, with a TTL."""
        return f"{self.prefix}controller:lease"

    @property
    def fence(self) -> str:
        """The counter each new lease takes its fencing token from."""
        return f"{self.prefix}controller:fence"

    def schedule(self, name: str) -> str:
        """A schedule's state: its last tick, the fire under way, who fired it and when."""
        return f"{self.prefix}schedule:{name}"

    @property
    def fires(self) -> str:
        """The newest fires, newest first (a capped list of JSON records)."""
        return f"{self.prefix}fires"
