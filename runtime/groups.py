"""Worker groups and tuning profiles: which queues each group of workers consumes, and how
many task slots (and processes) it runs under each profile.

A groups file is TOML::

    # defaults every group starts from (optional)
    [profiles.safe]
    concurrency = 4
    [profiles.balanced]
    concurrency = 8
    [profiles.fast]
    concurrency = 16
    processes = 2

    [groups.short]
    queues = ["standard", "timed_5min"]

    [groups.short.profiles.fast]   # a group's own numbers win, field by field
    concurrency = 32

A profile has ``concurrency`` (task slots per process, required once the defaults and the
group's own table are merged) and ``processes`` (worker processes, default 1). A group may
use every profile named in the top-level ``[profiles]`` table or its own; ``balanced`` is the
profile when none is asked for. ``celeriac worker --groups-file F --group NAME --profile P``
reads it (:func:`load_groups`, :meth:`Groups.resolve`); every mistake is a
:class:`GroupsError` naming the file, the group and the profile.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_PROFILE",
    "Group",
    "Groups",
    "GroupsError",
    "Profile",
    "ResolvedGroup",
    "load_groups",
    "parse_groups",
]

#: The profile a group runs under when none is named.
DEFAULT_PROFILE = "balanced"

_PROFILE_KEYS = frozenset({"concurrency", "processes"})
_GROUP_KEYS = frozenset({"queues", "profiles"})


class GroupsError(ValueError):
    """A groups file that cannot be read or does not describe what is asked for; the message
    names the file, and the group and profile when they are the matter."""


@dataclass(frozen=True, slots=True)
class Profile:
    """How a group runs under one profile: ``concurrency`` task slots in each of
    ``processes`` worker processes."""

    concurrency: int
    processes: int = 1


@dataclass(frozen=True, slots=True)
class Group:
    """A group of workers started alike: its ``name``, the ``queues`` it consumes, and its
    ``profiles`` by name (the file's defaults merged with the group's own)."""

    name: str
    queues: tuple[str, ...]
    profiles: Mapping[str, Profile]


@dataclass(frozen=True, slots=True)
class ResolvedGroup:
    """One group under one profile: what a worker of the group is started with."""

    group: str
    profile: str
    queues: tuple[str, ...]
    concurrency: int
    processes: int


@dataclass(frozen=True, slots=True)
class Groups:
    """Every group of a groups file, by name; ``source`` names the file in error messages."""

    source: str
    groups: Mapping[str, Group]

    def resolve(self, group: str, profile: str | None = None) -> ResolvedGroup:
        """``group`` under ``profile`` (``balanced`` if ``None``); :class:`GroupsError` naming
        what is known if either is unknown."""
        found = self.groups.get(group)
        if found is None:
            known = ", ".join(sorted(self.groups)) or "none"
            raise GroupsError(f"{self.source}: no group {group!r} (groups: {known})")
        name = profile or DEFAULT_PROFILE
        chosen = found.profiles.get(name)
        if chosen is None:
            known = ", ".join(sorted(found.profiles)) or "none"
            raise GroupsError(
                f"{self.source}: group {group!r} has no profile {name!r} (profiles: {known})"
            )
        return ResolvedGroup(group, name, found.queues, chosen.concurrency, chosen.processes)


def load_groups(path: str | Path) -> Groups:
    """Read the groups file at ``path``; :class:`GroupsError` if it cannot be read or is
    wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise GroupsError(f"{path}: cannot read the groups file: {exc.strerror or exc}") from None
    return parse_groups(text, source=str(path))


def parse_groups(text: str, *, source: str = "<groups>") -> Groups:
    """The groups TOML ``text`` describes (see the module doc); :class:`GroupsError` naming
    ``source`` and the offending group or profile otherwise."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GroupsError(f"{source}: not valid TOML: {exc}") from None
    _no_unknown_keys(document, {"profiles", "groups"}, source)
    defaults = _table(document.get("profiles", {}), f"{source}: [profiles]")
    for name, fields in defaults.items():
        _fields(fields, f"{source}: [profiles.{name}]")
    tables = _table(document.get("groups"), f"{source}: [groups]")
    if not tables:
        raise GroupsError(f"{source}: no [groups.<name>] table")
    groups = {name: _group(name, body, defaults, source) for name, body in tables.items()}
    return Groups(source, MappingProxyType(groups))


def _group(name: str, body: Any, defaults: Mapping[str, Any], source: str) -> Group:
    where = f"{source}: group {name!r}"
    table = _table(body, where)
    _no_unknown_keys(table, _GROUP_KEYS, where)
    queues = table.get("queues")
    if (
        not isinstance(queues, list)
        or not queues
        or not all(isinstance(q, str) and q.strip() and "," not in q for q in queues)
    ):
        raise GroupsError(f"{where}: queues must be a non-empty list of queue names")
    if len(set(queues)) != len(queues):
        raise GroupsError(f"{where}: a queue is listed twice")
    own = _table(table.get("profiles", {}), f"{where}: profiles")
    profiles = {}
    for profile in sorted({*defaults, *own}):
        merged = {**defaults.get(profile, {}), **_fields(own.get(profile, {}), where)}
        if "concurrency" not in merged:
            raise GroupsError(f"{where}, profile {profile!r}: no concurrency")
        profiles[profile] = Profile(
            _number(merged["concurrency"], f"{where}, profile {profile!r}: concurrency"),
            _number(merged.get("processes", 1), f"{where}, profile {profile!r}: processes"),
        )
    if not profiles:
        raise GroupsError(f"{where}: no profiles (add [profiles.{DEFAULT_PROFILE}] or its own)")
    return Group(name, tuple(q.strip() for q in queues), MappingProxyType(profiles))


def _fields(value: Any, where: str) -> dict[str, Any]:
    table = _table(value, where)
    _no_unknown_keys(table, _PROFILE_KEYS, where)
    return table


def _table(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GroupsError(f"{where} must be a table, not {type(value).__name__}")
    return value


def _no_unknown_keys(
    table: Mapping[str, Any], known: frozenset[str] | set[str], where: str
) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise GroupsError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )


def _number(value: Any, where: str) -> int:
    """A whole number of 1 or more (TOML integers only: no booleans, floats or strings)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GroupsError(f"{where} must be a whole number of 1 or more, not {value!r}")
    return value
