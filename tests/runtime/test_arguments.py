"""Argument checks: Python's own TypeError without running anything, and a retry's arguments
as Celery 5.7 works them out."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from runtime import App
from runtime.arguments import ArgumentCheck, retry_arguments


def plain(a, b, c=3):
    return a


async def coroutine(a, /, b, *rest, k, m=2, **extra):
    return a


def with_closure(a, b):
    def inner() -> Any:
        return a + b

    return inner


def keyword_only(*, k):
    return k


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),
    ((1,), {}),
    ((1, 2), {}),
    ((1, 2, 3), {}),
    ((1, 2, 3, 4), {}),
    ((1,), {"b": 2}),
    ((1, 2), {"a": 1}),
    ((1, 2), {"k": 1}),
    ((1, 2), {"k": 1, "zz": 3}),
    ((), {"a": 1, "b": 2}),
    ((1, 2), {"c": 3, "d": 4}),
    ((), {"k": 1}),
]


def _native_error(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        result = fn(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    if inspect.iscoroutine(result):
        result.close()
    return ""


def _check_error(check: ArgumentCheck, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        check(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize("fn", [plain, coroutine, with_closure, keyword_only])
@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_the_error_is_the_one_calling_the_function_gives(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    assert _check_error(ArgumentCheck(fn), args, kwargs) == _native_error(fn, args, kwargs)


def test_nothing_runs_when_the_arguments_fit() -> None:
    ran: list[int] = []

    def side_effect(x: int) -> None:
        ran.append(x)

    ArgumentCheck(side_effect)(1)

    assert ran == []


def test_a_wrapper_is_checked_against_the_wrapped_signature() -> None:
    def inner(x: int) -> int:
        return x

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("must not run")

    check = ArgumentCheck(wrapper)
    check(1)
    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        check()


def test_callable_objects_and_partials_are_checked_by_their_signature() -> None:
    class Callable_:
        def __call__(self, x: int) -> int:
            raise AssertionError("must not run")

    ArgumentCheck(Callable_())(1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        ArgumentCheck(Callable_())(1, 2)
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        ArgumentCheck(functools.partial(plain, 1))()


def test_a_function_that_declares_its_signature_is_checked_by_it() -> None:
    def loose(*args: Any) -> None:
        raise AssertionError("must not run")

    loose.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    )

    with pytest.raises(TypeError, match="too many positional arguments"):
        ArgumentCheck(loose)(1, 2)


def test_a_callable_without_a_signature_is_not_checked() -> None:
    check = ArgumentCheck(min)  # a builtin inspect knows no signature for

    assert check.signature is None
    check(1, 2, nope=3)  # nothing to bind against: the call itself will tell


def test_a_bound_task_is_checked_with_itself_first() -> None:
    app = App()

    @app.task(bind=True)
    def bound(self: Any, path: str, *, mode: str = "r") -> str:
        return path

    bound.bind_arguments(("a",), {"mode": "w"})
    with pytest.raises(TypeError) as caught:
        bound.bind_arguments(("a", "b"), {})
    assert str(caught.value).endswith("bound() takes 2 positional arguments but 3 were given")
    assert bound.parameters is not None
    assert list(bound.parameters.parameters) == ["path", "mode"]


def test_apply_async_checks_the_arguments_before_sending() -> None:
    app = App(broker="memory://never-used")

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match=r"add\(\) missing 1 required positional argument: 'y'"):
        add.apply_async((1,)).send(None)  # raises before its first await: nothing is sent


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def f(x, y=1, *rest, z=2, **extra):
    return x


@pytest.mark.parametrize(
    ("inherited", "args", "kwargs", "expected"),
    [
        # nothing new: the run's own arguments
        (((1,), {"z": 3}), None, None, ((1,), {"z": 3})),
        # both new: they replace the run's
        (((1,), {"z": 3}), (5,), {"y": 6}, ((5,), {"y": 6})),
        # new positional arguments drop the inherited keywords they now fill (#6494)
        (((), {"x": 1, "y": 2, "z": 3}), (7,), None, ((7,), {"y": 2, "z": 3})),
        (((), {"x": 1, "y": 2}), (7, 8), None, ((7, 8), {})),
        # a new keyword replaces the inherited positional argument of its name
        (((1, 2), {}), None, {"y": 9}, ((1, 9), {})),
        (((1, 2, 3), {}), None, {"x": 5, "z": 4}, ((5, 2, 3), {"z": 4})),
        # a keyword that names no positional parameter stays a keyword
        (((1, 2), {}), None, {"q": 1}, ((1, 2), {"q": 1})),
    ],
)
def test_retry_arguments_as_celery_works_them_out(
    inherited: tuple[tuple[Any, ...], dict[str, Any]],
    args: tuple[Any, ...] | None,
    kwargs: dict[str, Any] | None,
    expected: tuple[tuple[Any, ...], dict[str, Any]],
) -> None:
    assert retry_arguments(_signature(f), inherited, args, kwargs) == expected


def test_retry_arguments_when_the_inherited_ones_do_not_bind() -> None:
    def two(a, b):
        return a

    # more than two positionals: bind_partial fails
    inherited: tuple[tuple[Any, ...], dict[str, Any]] = ((1, 2, 3), {})

    assert retry_arguments(_signature(two), inherited, None, {"b": 5}) == ((1, 2, 3), {"b": 5})
    assert retry_arguments(None, ((1,), {"b": 2}), (3,), None) == ((3,), {"b": 2})
