"""Chord bookkeeping in the Redis result backend, key for key as Celery 5.7 keeps it.

Applying a chord sets ``<group>.s`` to the header's size (clearing the claim ``<group>.c``).
Each header task, whatever its end state, adds ``[1, id, state, result]`` to ``<group>.j``
scored by its group index; the one whose result completes the set claims ``.c`` in the same
step (``lua/chord_part.lua``), reads the results in order, publishes the body, then drops the
keys and leaves ``.c`` = ``done`` for late duplicates to see. Celery and celeriac workers can
share one chord. What happens around these steps (joining, the body, errors) is in
:mod:`runtime.canvas.workflow`.

Only Celery's default layout is kept: results in a sorted set (``result_chord_ordered``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from protocol import (
    ChordPart,
    ResultRef,
    decode_chord_part,
    decode_group,
    encode_chord_part,
    encode_group,
)
from runtime.errors import translate_redis_errors
from runtime.results.backend import RedisResultBackend

__all__ = ["CLAIM_SECONDS", "PartRecorded", "RedisChords"]

#: How long the claim on a body lasts while its worker reads the results (Celery 5.7:
#: twice ``result_chord_join_timeout``, at least 5 s).
CLAIM_SECONDS = 6
#: The claim's lifetime while the body is published (Celery's estimate for its default
#: publish retry policy and broker connection timeout).
PUBLISH_CLAIM_SECONDS = 21
#: How long ``.c`` says ``done`` after the body was published.
DONE_SECONDS = 300

_LUA = files("runtime.canvas") / "lua"


@dataclass(frozen=True, slots=True)
class PartRecorded:
    """What recording one result found: ``recorded`` results so far (``-1`` once the chord is
    done), ``expected`` in all (``None`` while the size is unknown), and whether this worker
    now holds the claim on the body."""

    recorded: int
    expected: int | None
    claimed: bool

    @property
    def complete(self) -> bool:
        """Every result is in and the body is this worker's to publish."""
        return self.claimed and self.expected is not None and self.recorded == self.expected


class RedisChords:
    """The chord keys of ``backend``; they expire after ``backend.result_expires``
    (Celery's ``result_chord_expires`` default)."""

    def __init__(self, backend: RedisResultBackend) -> None:
        self._backend = backend
        client = backend.client
        self._part = client.register_script((_LUA / "chord_part.lua").read_text())
        self._extend = client.register_script((_LUA / "chord_extend_claim.lua").read_text())
        self._finish = client.register_script((_LUA / "chord_finish.lua").read_text())
        expires = backend.result_expires
        self.expires = int(expires) if expires else 0

    def _key(self, group_id: str, part: str = "") -> str:
        keys = self._backend.keys
        return keys.chord(group_id, part) if part else keys.group(group_id)

    async def set_size(self, group_id: str, size: int) -> None:
        """Start the chord's bookkeeping: ``size`` results to wait for; a claim left by an
        earlier run of the same (frozen) chord is dropped."""
        client = self._backend.client
        with translate_redis_errors(f"set the size of chord {group_id}"):
            await client.delete(self._key(group_id, "c"))
            await client.set(self._key(group_id, "s"), size, ex=self.expires or None)

    async def save_group(self, group: ResultRef) -> None:
        """Save a header's group result whose members include groups, so the results keep
        their shape (``RedisBackend.apply_chord``)."""
        data = encode_group(group, serializer=self._backend.serializer)
        with translate_redis_errors(f"save group {group.id}"):
            await self._backend.client.set(self._key(group.id), data, ex=self.expires or None)

    async def record(
        self, group_id: str, group_index: int | None, part: ChordPart, token: str
    ) -> PartRecorded:
        """Add one header task's result; claim the body with ``token`` if it completes the
        header."""
        backend = self._backend
        expires = self.expires
        saved_expires = max(expires, int(backend.result_expires or 0)) if expires else 0
        keys = [self._key(group_id, p) for p in ("j", "t", "s", "d")]
        keys += [self._key(group_id), self._key(group_id, "c")]
        index = "+inf" if group_index is None else str(group_index)
        entry = encode_chord_part(part, serializer=backend.serializer)
        args: list[Any] = [part.task_id, entry, index, expires, saved_expires, CLAIM_SECONDS, token]
        with translate_redis_errors(f"record a result of chord {group_id}"):
            recorded, added, size, claimed = await self._part(keys=keys, args=args)
        expected = None if size is None else int(size) + int(added or 0)
        return PartRecorded(int(recorded), expected, bool(claimed))

    async def parts(self, group_id: str) -> list[ChordPart]:
        """The header's results, in group index order."""
        backend = self._backend
        with translate_redis_errors(f"read the results of chord {group_id}"):
            entries = await backend.client.zrange(self._key(group_id, "j"), 0, -1)
        return [
            decode_chord_part(_bytes(e), serializer=backend.serializer, accept=backend.accept)
            for e in entries
        ]

    async def saved_group(self, group_id: str) -> ResultRef | None:
        """The header's saved group result, if the chord was applied with one."""
        backend = self._backend
        with translate_redis_errors(f"read group {group_id}"):
            data = await backend.client.get(self._key(group_id))
        if data is None:
            return None
        return decode_group(_bytes(data), serializer=backend.serializer, accept=backend.accept)

    async def extend_claim(self, group_id: str, token: str) -> bool:
        """Hold the claim for as long as publishing may take; ``False`` if it was lost."""
        keys = [self._key(group_id, "c"), self._key(group_id, "s")]
        with translate_redis_errors(f"extend the claim on chord {group_id}"):
            return bool(await self._extend(keys=keys, args=[token, PUBLISH_CLAIM_SECONDS]))

    async def finish(self, group_id: str, token: str) -> bool:
        """Drop the bookkeeping and mark the chord done; ``False`` if the claim was lost."""
        keys = [self._key(group_id, p) for p in ("c", "j", "t", "s", "d")]
        with translate_redis_errors(f"finish chord {group_id}"):
            return bool(await self._finish(keys=keys, args=[token, DONE_SECONDS]))

    async def forget_size(self, group_id: str) -> None:
        """After a failed chord: a late copy of a header task must not fail it again."""
        with translate_redis_errors(f"drop the size of chord {group_id}"):
            await self._backend.client.delete(self._key(group_id, "s"))


def _bytes(data: Any) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)
