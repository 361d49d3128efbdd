"""Exceptions as Celery's result backend stores them with a data serializer (json, msgpack).

An exception becomes ``{"exc_type": qualname, "exc_message": [args...], "exc_module": module}``
(``BaseBackend.prepare_exception``); an argument that does not serialise is replaced by its
``repr``. Reading it back resolves the class from an already-imported module, refuses anything
that is not an exception class (a stored record must not be able to name ``os.system``), and
otherwise makes a stand-in class with the same name and module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from . import _fields, serialization
from .errors import EncodeError, MalformedMessage

__all__ = ["ExceptionInfo"]

_standins: dict[tuple[str, str], type[Exception]] = {}
# Records name their classes, so whoever writes them could grow the cache without bound.
_MAX_STANDINS = 1024


def _standin(module: str, qualname: str) -> type[Exception]:
    """One stand-in class per (module, name), so ``except``/``isinstance`` work across reads."""
    key = (module, qualname)
    if key in _standins:
        return _standins[key]
    try:
        cls = type(qualname.rpartition(".")[2], (Exception,), {"__module__": module})
        cls.__qualname__ = qualname
    except (ValueError, TypeError, UnicodeError) as exc:  # NUL or surrogates in the name
        raise MalformedMessage(f"unusable exception name: {exc}", field="result.exc_type") from None
    if len(_standins) < _MAX_STANDINS:
        _standins[key] = cls
    return cls


def _lookup(module: str, qualname: str) -> Any:
    """The object ``module.qualname`` names among imported modules, or ``None``."""
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        if found is None:
            return None
        try:
            found = getattr(found, part, None)
        except Exception:  # a module __getattr__ may raise anything (even warnings as errors)
            return None
    return found


def _encodable(value: Any, serializer: str) -> bool:
    try:
        serialization.dumps(value, serializer)
    except EncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    """A serialised exception: its type's qualified name, module and arguments."""

    exc_type: str
    exc_message: tuple[Any, ...]
    exc_module: str | None

    @classmethod
    def from_exception(cls, exc: BaseException, *, serializer: str = "json") -> ExceptionInfo:
        """Describe ``exc``; arguments ``serializer`` cannot encode are replaced by their repr."""
        kind = type(exc)
        args = tuple(arg if _encodable(arg, serializer) else repr(arg) for arg in exc.args)
        return cls(exc_type=kind.__qualname__, exc_message=args, exc_module=kind.__module__)

    def to_dict(self) -> dict[str, Any]:
        """The wire form, in Celery's key order."""
        return {
            "exc_type": self.exc_type,
            "exc_message": list(self.exc_message),
            "exc_module": self.exc_module,
        }

    @classmethod
    def from_wire(cls, value: Any, field: str = "result") -> ExceptionInfo:
        """Validate a stored exception dict."""
        raw = _fields.mapping(value, field)
        message = raw.get("exc_message", "")
        return cls(
            exc_type=_fields.name(raw.get("exc_type"), f"{field}.exc_type"),
            exc_message=tuple(message) if isinstance(message, list | tuple) else (message,),
            exc_module=_fields.optional_text(raw.get("exc_module"), f"{field}.exc_module"),
        )

    def to_exception(self) -> BaseException:
        """Rebuild the exception, as Celery's ``exception_to_python`` does.

        The class is looked up only among modules already imported; nothing is imported on a
        stored record's say-so. Raises :class:`MalformedMessage` if the name resolves to
        something that is not an ``Exception`` subclass: a record must not be able to make a
        reader raise ``CancelledError``, ``SystemExit`` or call ``os.system``.
        """
        module = self.exc_module or "celery.exceptions"
        found = _lookup(self.exc_module, self.exc_type) if self.exc_module else None
        if found is None:
            found = _standin(module, self.exc_type)
        elif not (isinstance(found, type) and issubclass(found, Exception)):
            raise MalformedMessage(
                f"{module}.{self.exc_type} is not an exception class", field="result.exc_type"
            )
        try:
            return found(*self.exc_message)
        except Exception:  # a constructor that wants other arguments, as Celery falls back
            return Exception(f"{found}({list(self.exc_message)!r})")

    def __str__(self) -> str:
        return f"{self.exc_type}({', '.join(map(repr, self.exc_message))})"
