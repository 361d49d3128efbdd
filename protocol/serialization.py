"""Serializers by content type, the accept policy, and body compression.

The registry mirrors kombu's (``kombu/serialization.py``): a serializer name (``json``) maps to a
content type (``application/json``) and a content encoding (``utf-8``, or ``binary`` for byte
formats). Decoding goes by the message's content type and is refused unless the
:class:`AcceptPolicy` lists it: pickle and yaml can run code or build arbitrary objects, so they
are accepted only when an operator asks for them by name.
"""

from __future__ import annotations

import bz2
import lzma
import pickle
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from . import _fields, jsontags
from .errors import ContentDisallowed, EncodeError, LimitExceeded, MalformedMessage
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DEFAULT_ACCEPT",
    "JSON",
    "MSGPACK",
    "PICKLE",
    "SERIALIZERS",
    "YAML",
    "AcceptPolicy",
    "Serializer",
    "compress",
    "decompress",
    "dumps",
    "loads",
    "serializer_for",
]

JSON = "application/json"
MSGPACK = "application/x-msgpack"
YAML = "application/x-yaml"
PICKLE = "application/x-python-serialize"

# The content encodings kombu gives formats that work on bytes rather than text.
_BINARY_ENCODINGS = frozenset(("binary", "ascii-8bit"))


def _json_dumps(value: Any) -> bytes:
    return jsontags.dumps(value).encode("utf-8")


def _msgpack_default(value: Any) -> Any:
    try:
        return dict(value)  # read-only mappings such as TaskMessage.kwargs
    except (TypeError, ValueError):
        raise TypeError(f"{type(value).__name__} is not msgpack serializable") from None


def _msgpack_dumps(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, default=_msgpack_default)  # type: ignore[no-any-return]


def _msgpack_loads(data: bytes) -> Any:
    # kombu unpacks with raw=False; strict_map_key (the default) refuses non-string keys.
    return msgpack.unpackb(data, raw=False)


def _yaml_module() -> Any:
    try:
        import yaml  # noqa: PLC0415 - optional, only when an operator accepts yaml
    except ImportError:
        raise MalformedMessage("yaml is accepted but PyYAML is not installed") from None
    return yaml


def _yaml_dumps(value: Any) -> bytes:
    return _yaml_module().safe_dump(value).encode("utf-8")  # type: ignore[no-any-return]


def _yaml_loads(data: bytes) -> Any:
    return _yaml_module().safe_load(data)


def _pickle_dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=4)  # kombu's PICKLE_PROTOCOL default


@dataclass(frozen=True, slots=True)
class Serializer:
    """One body format: its kombu name, content type and encoding, and its two functions."""

    name: str
    content_type: str
    content_encoding: str
    encode: Callable[[Any], bytes]
    decode: Callable[[Any], Any]

    @property
    def is_binary(self) -> bool:
        """Whether the format works on bytes rather than text."""
        return self.content_encoding in _BINARY_ENCODINGS


SERIALIZERS: dict[str, Serializer] = {
    s.name: s
    for s in (
        Serializer("json", JSON, "utf-8", _json_dumps, jsontags.loads),
        Serializer("msgpack", MSGPACK, "binary", _msgpack_dumps, _msgpack_loads),
        Serializer("yaml", YAML, "utf-8", _yaml_dumps, _yaml_loads),
        Serializer("pickle", PICKLE, "binary", _pickle_dumps, pickle.loads),
    )
}
_BY_CONTENT_TYPE = {s.content_type: s for s in SERIALIZERS.values()}


def serializer_for(name_or_content_type: str) -> Serializer:
    """Look a serializer up by kombu name (``msgpack``) or content type."""
    found = SERIALIZERS.get(name_or_content_type) or _BY_CONTENT_TYPE.get(name_or_content_type)
    if found is None:
        raise ValueError(f"unknown serializer {name_or_content_type!r}")
    return found


@dataclass(frozen=True, slots=True)
class AcceptPolicy:
    """The content types a worker will deserialize (Celery's ``accept_content``)."""

    content_types: frozenset[str]

    @classmethod
    def of(cls, names: Iterable[str]) -> AcceptPolicy:
        """Build a policy from serializer names or content types, as Celery's setting allows."""
        return cls(frozenset(serializer_for(name).content_type for name in names))

    def check(self, content_type: str) -> None:
        """Raise :class:`ContentDisallowed` unless ``content_type`` is accepted."""
        if content_type not in self.content_types:
            raise ContentDisallowed(content_type)


# json and msgpack: both are data-only formats, so accepting msgpack by default (Celery accepts
# only json) costs no safety and lets msgpack producers work without configuration.
DEFAULT_ACCEPT = AcceptPolicy.of(("json", "msgpack"))


def dumps(value: Any, serializer: str = "json") -> tuple[bytes, str, str]:
    """Serialise ``value``; return ``(body, content_type, content_encoding)``."""
    chosen = serializer_for(serializer)
    try:
        body = chosen.encode(value)
    except EncodeError:
        raise
    except Exception as exc:  # each format raises its own types for unencodable values
        raise EncodeError(f"cannot encode as {chosen.name}: {exc}") from exc
    return body, chosen.content_type, chosen.content_encoding


def loads(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    *,
    accept: AcceptPolicy = DEFAULT_ACCEPT,
    limits: Limits = DEFAULT_LIMITS,
) -> Any:
    """Deserialise a message body according to its content type and encoding.

    Like kombu for its registered serializers, the bytes go to the parser as they are:
    ``content_encoding`` is not applied (JSON is UTF-8 by definition, the byte formats have
    none), so a sender's odd encoding label cannot change what is read.

    Raises :class:`ContentDisallowed` for a content type outside ``accept``, and
    :class:`MalformedMessage` for anything else that goes wrong; never anything else.
    """
    if not content_type:
        raise MalformedMessage("message has no content type", field="content_type")
    accept.check(content_type)
    chosen = _BY_CONTENT_TYPE.get(content_type)
    if chosen is None:
        raise MalformedMessage(
            f"no serializer for {_fields.short(content_type)}", field="content_type"
        )
    limits.check_size(body, field="body")
    try:
        return chosen.decode(body)
    except MalformedMessage as exc:  # the parsers' own errors name no field: it is the body
        raise MalformedMessage(exc.reason, field="body") from exc
    except Exception as exc:  # the one boundary where any parser failure becomes ours
        raise MalformedMessage(f"invalid {chosen.name} body: {exc}", field="body") from exc


# Compression content types kombu uses in the ``compression`` header. ``application/x-gzip`` is
# a zlib stream (``zlib.compress``), not a gzip file.
_COMPRESSORS: dict[str, tuple[Callable[[bytes], bytes], Callable[[], Any]]] = {
    "application/x-gzip": (zlib.compress, zlib.decompressobj),
    "application/x-bz2": (bz2.compress, bz2.BZ2Decompressor),
    "application/x-lzma": (lzma.compress, lzma.LZMADecompressor),
}
_COMPRESSION_ALIASES = {
    "gzip": "application/x-gzip",
    "zlib": "application/x-gzip",
    "bzip2": "application/x-bz2",
    "bzip": "application/x-bz2",
    "lzma": "application/x-lzma",
    "xz": "application/x-lzma",
}


def compress(body: bytes, method: str) -> tuple[bytes, str]:
    """Compress ``body`` with a kombu method name or type; return ``(data, content_type)``."""
    content_type = _COMPRESSION_ALIASES.get(method, method)
    if content_type not in _COMPRESSORS:
        raise ValueError(f"unsupported compression {method!r}")
    return _COMPRESSORS[content_type][0](body), content_type


def decompress(data: bytes, content_type: str, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Undo :func:`compress`, refusing to expand past ``limits.max_body_bytes``."""
    entry = _COMPRESSORS.get(_COMPRESSION_ALIASES.get(content_type, content_type))
    if entry is None:
        raise MalformedMessage(
            f"unsupported compression {_fields.short(content_type)}", field="compression"
        )
    decompressor = entry[1]()
    maximum = limits.max_body_bytes
    try:
        # One byte over the limit is enough to know the limit is exceeded.
        out: bytes = decompressor.decompress(data, maximum + 1)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise MalformedMessage(f"cannot decompress body: {exc}", field="body") from exc
    if len(out) > maximum:
        raise LimitExceeded("decompressed size", len(out), maximum, field="body")
    if not decompressor.eof:
        raise MalformedMessage("compressed body is truncated", field="body")
    return out
