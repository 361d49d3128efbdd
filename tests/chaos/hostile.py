"""Hostile messages for the chaos suite, seeded and reproducible.

:func:`hostile_messages` yields bad task messages of every kind a broker can carry: garbage and
truncated bodies, refused and unknown content types (pickle with a real payload among them),
bodies that are not UTF-8, wrong body shapes, headers of the wrong type, too many or too deeply
nested, bodies nested past any parser's stack, compression bombs, bodies over the size limit,
and tasks no worker knows. On Redis kombu's JSON envelope itself is attacked too
(:func:`bad_envelopes`): entries that are not JSON, not an object, with no properties, a body
that is not base64. Each one is something the worker must dead-letter with its reason.
"""

from __future__ import annotations

import json
import pickle
import random
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from protocol import WireMessage

#: Bodies over the 16 MiB limit: few, for they cost the broker as much as the worker.
HUGE_EVERY = 40_000
#: Compression bombs (100 MiB of zeros in 100 KiB): as few.
BOMB_EVERY = 20_000
_BOMB = zlib.compress(bytes(100 * 1024 * 1024), 9)


@dataclass(frozen=True)
class Hostile:
    """One bad message: what it is (``kind``) and its wire form."""

    kind: str
    message: WireMessage
    #: For Redis, a raw list entry standing in for kombu's envelope (``None``: encode it).
    envelope: bytes | None = field(default=None, repr=False)


def task_message(task: str, args: list[Any], *, task_id: str | None = None) -> WireMessage:
    """A valid protocol-2 task message, as Celery 5.7 sends it."""
    task_id = task_id or str(uuid.uuid4())
    headers = {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": repr(tuple(args)), "kwargsrepr": "{}", "origin": "chaos@hostile",
        "ignore_result": False,
    }  # fmt: skip
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([args, {}, embed]).encode()
    return WireMessage(
        body, "application/json", "utf-8", headers,
        {"correlation_id": task_id, "delivery_mode": 2, "priority": 0},
    )  # fmt: skip


def _random_bytes(rng: random.Random, low: int = 1, high: int = 200) -> bytes:
    return rng.randbytes(rng.randint(low, high))


def _with_headers(message: WireMessage, **changes: Any) -> WireMessage:
    headers = {**message.headers, **changes}
    return replace(message, headers={k: v for k, v in headers.items() if v is not _DROP})


_DROP = object()


def _mutations() -> list[tuple[str, Callable[[WireMessage, random.Random], WireMessage]]]:
    body_shapes: list[Any] = [
        {"a": 1}, [1, 2], [[], {}, {}, 1], ["args", {}, {}], [[], [], {}], [[], {}, "embed"],
        [[], {}, {"callbacks": "x"}], 42, "text", None,
    ]  # fmt: skip
    return [
        ("garbage body", lambda m, r: replace(m, body=_random_bytes(r))),
        ("truncated body", lambda m, r: replace(m, body=m.body[: r.randrange(len(m.body))])),
        (
            "pickle",
            lambda m, r: replace(
                m,
                body=pickle.dumps([[], {}, {}]),
                content_type="application/x-python-serialize",
                content_encoding="binary",
            ),
        ),
        ("yaml", lambda m, r: replace(m, content_type="application/x-yaml")),
        (
            "unknown content type",
            lambda m, r: replace(m, content_type=f"application/x-{r.randrange(10**6)}"),
        ),
        ("bad encoding", lambda m, r: replace(m, body=b"\xff\xfe" + _random_bytes(r))),
        (
            "msgpack garbage",
            lambda m, r: replace(
                m,
                body=b"\xc1" + _random_bytes(r),
                content_type="application/x-msgpack",
                content_encoding="binary",
            ),
        ),
        (
            "wrong body shape",
            lambda m, r: replace(m, body=json.dumps(r.choice(body_shapes)).encode()),
        ),
        ("no task header", lambda m, r: _with_headers(m, task=_DROP)),
        ("task not text", lambda m, r: _with_headers(m, task=r.choice([7, [1], {"a": 1}, None]))),
        ("no id", lambda m, r: _with_headers(m, id=_DROP)),
        ("id not text", lambda m, r: _with_headers(m, id=r.choice([7, [1], {"a": 1}, 2.5]))),
        ("bad retries", lambda m, r: _with_headers(m, retries=r.choice(["x", [1], -1, 2.5]))),
        ("bad eta", lambda m, r: _with_headers(m, eta=r.choice(["yesterday", 12, [1]]))),
        ("bad expires", lambda m, r: _with_headers(m, expires=r.choice(["soon", [1], {}]))),
        (
            "bad time limits",
            lambda m, r: _with_headers(m, timelimit=r.choice(["5", [1, 2, 3], ["a", None], 7])),
        ),
        ("too many headers", lambda m, r: _with_headers(m, **{f"x-{i}": i for i in range(200)})),
        ("headers nested too deep", lambda m, r: _with_headers(m, deep=_nested(150))),
        ("body nested too deep", lambda m, r: replace(m, body=b"[" * 150 + b"]" * 150)),
        (
            "body nested past the parser's stack",
            lambda m, r: replace(m, body=b"[" * 100_000 + b"]" * 100_000),
        ),
        (
            "bad compression",
            lambda m, r: _with_headers(
                replace(m, body=_random_bytes(r)), compression=r.choice(["zlib", "bzip2", "xz"])
            ),
        ),
        ("unknown compression", lambda m, r: _with_headers(m, compression="application/x-rar")),
        ("unknown task", lambda m, r: _with_headers(m, task=f"chaos.nope{r.randrange(1000)}")),
    ]


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": value}
    return value


def hostile_messages(task: str, args: list[Any], rng: random.Random) -> Iterator[Hostile]:
    """An endless stream of bad messages built from a valid one, each mutated one way."""
    mutations = _mutations()
    n = 0
    while True:
        n += 1
        base = task_message(task, args, task_id=f"hostile-{n}")
        if n % HUGE_EVERY == 0:
            yield Hostile("over the size limit", replace(base, body=b"x" * (16 * 2**20 + 1)))
        elif n % BOMB_EVERY == 0:
            yield Hostile("compression bomb", _with_headers(
                replace(base, body=_BOMB), compression="zlib"))  # fmt: skip
        else:
            kind, mutate = rng.choice(mutations)
            yield Hostile(kind, mutate(base, rng))


def bad_envelopes(rng: random.Random) -> Iterator[Hostile]:
    """Raw Redis list entries that are not kombu envelopes of a task."""
    placeholder = task_message("chaos.early", [])
    ok: dict[str, Any] = {
        "body": "", "content-type": "application/json", "content-encoding": "utf-8",
        "headers": {}, "properties": {"delivery_tag": "x", "body_encoding": "base64"},
    }  # fmt: skip
    kinds: list[tuple[str, Callable[[], bytes]]] = [
        ("envelope not json", lambda: b"{" + _random_bytes(rng)),
        (
            "envelope not an object",
            lambda: json.dumps(
                rng.choice([7, -1, 3.5, None, True, [1, 2], "", "x" * 300])
            ).encode(),
        ),
        ("envelope without properties", lambda: json.dumps({**ok, "properties": 5}).encode()),
        ("envelope body not base64", lambda: json.dumps({**ok, "body": "@@not base64@@"}).encode()),
        (
            "envelope body encoding unknown",
            lambda: json.dumps(
                {**ok, "properties": {**ok["properties"], "body_encoding": "rot13"}}
            ).encode(),
        ),
        ("envelope headers not an object", lambda: json.dumps({**ok, "headers": [1]}).encode()),
    ]
    while True:
        kind, make = rng.choice(kinds)
        yield Hostile(kind, placeholder, envelope=make())
