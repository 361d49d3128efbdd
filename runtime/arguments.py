"""A task function's parameters: checking a call against them, and a retry's arguments.

Celery checks a call's arguments when it is sent (``typing=True``); a Celery worker that is
given arguments that do not fit stores the ``TypeError`` calling the function raises. celeriac
does both: :class:`ArgumentCheck` raises that same error, word for word, without running
anything.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["ArgumentCheck", "retry_arguments"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_ARGS_FLAGS = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS


def _empty() -> None:
    return None


def _stand_in(fn: Callable[..., Any]) -> Callable[..., None] | None:
    """A function with ``fn``'s parameters, name and defaults and an empty body, or ``None``.

    Calling it binds arguments exactly as calling ``fn`` would (CPython's own binding, so the
    same ``TypeError`` text), for the price of a function call: about 35 times cheaper than
    ``inspect.Signature.bind``. Only for plain functions whose code is what they accept: not
    for wrappers (``__wrapped__``) or functions that declare another ``__signature__``.
    """
    if not isinstance(fn, types.FunctionType) or hasattr(fn, "__wrapped__"):
        return None
    if "__signature__" in vars(fn):
        return None
    code = fn.__code__
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    body = _empty.__code__
    stand_in_code = body.replace(
        co_argcount=code.co_argcount,
        co_posonlyargcount=code.co_posonlyargcount,
        co_kwonlyargcount=code.co_kwonlyargcount,
        co_nlocals=count,
        co_varnames=code.co_varnames[:count],
        co_flags=(body.co_flags & ~_ARGS_FLAGS) | (code.co_flags & _ARGS_FLAGS),
        co_name=code.co_name,
        co_qualname=fn.__qualname__,
    )
    stand_in = types.FunctionType(stand_in_code, {}, fn.__name__, fn.__defaults__)
    stand_in.__kwdefaults__ = fn.__kwdefaults__
    stand_in.__qualname__ = fn.__qualname__
    return stand_in


class ArgumentCheck:
    """Checks arguments against a function's parameters without calling the function.

    ``check(*args, **kwargs)`` returns ``None`` if the call would bind, and otherwise raises the
    ``TypeError`` calling the function would raise. Everything is worked out once, here: a
    stand-in function for plain functions, else the :class:`inspect.Signature`, which
    :attr:`signature` also keeps for whoever needs the parameters.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have none: nothing to check against
            self.signature = None
        self._stand_in = _stand_in(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        if self._stand_in is not None:
            self._stand_in(*args, **kwargs)
        elif self.signature is not None:
            self.signature.bind(*args, **kwargs)


def retry_arguments(
    signature: inspect.Signature | None,
    inherited: tuple[Sequence[Any], Mapping[str, Any]],
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments a retry runs with: the ones given, the rest ``inherited`` from the run.

    As Celery 5.7 (#6494): new positional arguments drop the inherited keyword arguments they
    now fill; a new keyword argument replaces the inherited positional argument of that name.
    ``signature`` is the function's, without ``self`` for a bound task; with none, or when the
    inherited arguments do not bind, the given ones simply replace the inherited ones.
    """
    old_args, old_kwargs = inherited
    if signature is not None and args is not None and kwargs is None and old_kwargs:
        positional = [p for p in signature.parameters.values() if p.kind in _POSITIONAL]
        filled = {
            p.name
            for p in positional[: len(args)]
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        }
        kwargs = {k: v for k, v in old_kwargs.items() if k not in filled}
    elif signature is not None and kwargs is not None and args is None and old_args:
        try:
            bound = signature.bind_partial(*old_args)
        except TypeError:
            pass
        else:
            rest = dict(kwargs)
            for name in list(rest):
                kind = signature.parameters[name].kind if name in bound.arguments else None
                if kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
                    bound.arguments[name] = rest.pop(name)
            args, kwargs = bound.args, {**bound.kwargs, **rest}
    return (
        tuple(old_args if args is None else args),
        dict(old_kwargs if kwargs is None else kwargs),
    )
