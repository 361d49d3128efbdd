"""Checks for decoded wire values: each returns the value typed, or raises MalformedMessage.

The decoders trust nothing that came off the wire; these helpers keep that distrust short to
write. ``field`` is the dotted path used in the error (``"headers.retries"``).
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from .errors import MalformedMessage

EMPTY: Mapping[str, Any] = MappingProxyType({})


def empty_mapping() -> Mapping[str, Any]:
    """The shared read-only empty mapping (a dataclass ``default_factory``)."""
    return EMPTY


def or_default(value: Any, default: Any) -> Any:
    """``value``, or ``default`` when it is null or missing (Celery writes both)."""
    return default if value is None else value


_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = 60
_short_repr.maxlong = 40


def short(value: Any) -> str:
    """A bounded repr of a wire value for an error reason (inputs can be megabytes long)."""
    return _short_repr.repr(value)


def utf8(value: str, field: str) -> bytes:
    """``value`` encoded as UTF-8; lone surrogates from JSON escapes are malformed."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedMessage(f"not valid Unicode: {exc.reason}", field=field) from None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def text(value: Any, field: str) -> str:
    """A string."""
    if not isinstance(value, str):
        raise MalformedMessage(f"expected a string, got {_kind(value)}", field=field)
    return value


def name(value: Any, field: str) -> str:
    """A non-empty string (task names, task ids)."""
    if not text(value, field):
        raise MalformedMessage("must not be empty", field=field)
    return value  # type: ignore[no-any-return]


def optional_text(value: Any, field: str) -> str | None:
    """A string or null."""
    return None if value is None else text(value, field)


#: Short strings as decoded before, so that the messages a worker holds share one copy of
#: each: a task's name, ``lang``, ``origin`` and ``kwargsrepr`` repeat from message to
#: message, and 10,000 waiting runs held 10,000 copies of each. Bounded, so that arbitrary
#: values cannot grow it (``sys.intern`` would not do: Python 3.12 keeps interned strings
#: for the life of the process).
_SHARED: dict[str, str] = {}
_SHARED_MAX = 4096
_SHARED_LONGEST = 64


def shared_text(value: str) -> str:
    """The copy of ``value`` decoded before, if it is short and was seen; else ``value``,
    remembered while the table has room."""
    return value if type(value) is not str else _share(value)


def optional_shared(value: Any, field: str) -> str | None:
    """A string or null, the copy decoded before where there is one (:func:`shared_text`)."""
    if type(value) is str:  # checked once: the common case goes straight to the table
        return _share(value)
    return None if value is None else text(value, field)  # a str subclass, or the error


def _share(value: str) -> str:
    if len(value) > _SHARED_LONGEST:
        return value
    found = _SHARED.get(value)
    if found is not None:
        return found
    if len(_SHARED) < _SHARED_MAX:
        _SHARED[value] = value
    return value


def same_or(value: str | None, given: str) -> str | None:
    """``given`` itself where ``value`` equals it (a root task's ``root_id`` is its ``id``),
    so that a held message keeps one copy of the string; else ``value``."""
    return given if value == given else value


def integer(value: Any, field: str, *, minimum: int | None = None) -> int:
    """An integer (booleans are not integers on the wire)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedMessage(f"expected an integer, got {_kind(value)}", field=field)
    if minimum is not None and value < minimum:
        raise MalformedMessage(f"must be at least {minimum}, got {short(value)}", field=field)
    return value


def optional_integer(value: Any, field: str, *, minimum: int | None = None) -> int | None:
    """An integer or null."""
    return None if value is None else integer(value, field, minimum=minimum)


def optional_seconds(value: Any, field: str) -> float | None:
    """A finite, non-negative number of seconds, or null; ints stay ints, so that a message
    re-published from a decoded one (a retry) carries the same bytes."""
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MalformedMessage(f"expected a number of seconds, got {_kind(value)}", field=field)
    try:
        usable = math.isfinite(value) and value >= 0
    except OverflowError:  # an int too large for a float
        usable = False
    if not usable:
        raise MalformedMessage(
            f"must be a finite, non-negative number, got {short(value)}", field=field
        )
    return value


def optional_flag(value: Any, field: str) -> bool | None:
    """A boolean or null."""
    if value is not None and not isinstance(value, bool):
        raise MalformedMessage(f"expected a boolean, got {_kind(value)}", field=field)
    return value


def sequence(value: Any, field: str, *, null_is_empty: bool = False) -> tuple[Any, ...]:
    """A list (or tuple), returned as a tuple; null too, as ``()``, if ``null_is_empty``."""
    if value is None and null_is_empty:
        return ()
    if not isinstance(value, list | tuple):
        raise MalformedMessage(f"expected a list, got {_kind(value)}", field=field)
    return tuple(value)


def readable_mapping(value: Any, field: str, *, null_is_empty: bool = False) -> Mapping[str, Any]:
    """A mapping with string keys, as it is: for reading a few keys from and keeping none of
    it (:func:`mapping` keeps a copy); null too, as an empty one, if ``null_is_empty``."""
    if value is None and null_is_empty:
        return EMPTY
    # dict first: what every decoder returns, and far cheaper to test than the Mapping ABC.
    if not isinstance(value, dict) and not isinstance(value, Mapping):
        raise MalformedMessage(f"expected a mapping, got {_kind(value)}", field=field)
    for key in value:
        if not isinstance(key, str):
            raise MalformedMessage(f"keys must be strings, got {_kind(key)}", field=field)
    return value


def mapping(value: Any, field: str, *, null_is_empty: bool = False) -> Mapping[str, Any]:
    """A mapping with string keys, as a read-only copy (an empty one shared: a message's
    ``{}`` kwargs are held for as long as it runs); null too, if ``null_is_empty``."""
    checked = readable_mapping(value, field, null_is_empty=null_is_empty)
    return MappingProxyType(dict(checked)) if checked else EMPTY


def json_object(value: Any, field: str) -> dict[str, Any]:
    """A JSON object this package has just decoded, as it is: its keys are strings already and
    nothing else holds it, so it needs neither :func:`mapping`'s checks nor its copy."""
    if type(value) is not dict:
        raise MalformedMessage(f"expected a mapping, got {_kind(value)}", field=field)
    return value


def optional_strings(value: Any, field: str) -> tuple[str, ...] | None:
    """A list of strings, or null."""
    if value is None:
        return None
    return tuple(text(item, field) for item in sequence(value, field))


def timestamp(value: Any, field: str) -> datetime | None:
    """An ISO 8601 string (or null) as an aware datetime; naive values are taken as UTC.

    That is what Celery's worker does: protocol v2 has no time zone flag, and a naive ``eta``
    means UTC (``maybe_make_aware(..., naive_as_utc=True)``).
    """
    if value is None or value == "":  # Celery reads an empty string as "no time"
        return None
    if isinstance(value, datetime):  # msgpack/yaml bodies of protocol v1 may carry datetimes
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(text(value, field))
        except ValueError as exc:
            raise MalformedMessage(f"not an ISO 8601 time: {short(value)}", field=field) from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
