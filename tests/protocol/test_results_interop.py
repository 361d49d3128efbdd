"""Result records: celeriac writes Celery's Redis backend bytes; each side reads the other's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.app.task import Context
from celery.backends.redis import RedisBackend
from celery.exceptions import TaskRevokedError
from celery.result import GroupResult, result_from_tuple

from protocol import (
    ExceptionInfo,
    ExtendedInfo,
    ResultKeys,
    ResultMeta,
    ResultRef,
    State,
    decode_group,
    decode_result,
    encode_group,
    encode_result,
)

from .oracle import NOW, make_app


class MyErr(Exception):
    """An exception class the client has imported, as Celery's client needs."""


class Opaque:
    """An exception argument JSON cannot encode."""

    def __repr__(self) -> str:
        return "<opaque>"


TID = "e9797448-0000-4000-8000-000000000001"


def _backend(**conf: Any) -> RedisBackend:
    app = make_app(**conf)
    return RedisBackend(app=app, url="redis://127.0.0.1:6379/0")


def _celery_bytes(
    backend: RedisBackend, result: Any, state: str, traceback: str | None, request: Any
) -> bytes:
    """What Celery's backend writes for this outcome (``_store_result`` without the I/O)."""
    meta = backend._get_result_meta(
        result=backend.encode_result(result, state),
        state=state,
        traceback=traceback,
        request=request,
    )
    meta["task_id"] = TID
    return _as_bytes(backend.encode(meta))


def _as_bytes(data: str | bytes) -> bytes:
    """kombu's JSON serializer returns text, its msgpack serializer bytes; Redis stores bytes."""
    return data.encode("utf-8") if isinstance(data, str) else data


def _request(backend: RedisBackend, **fields: Any) -> Context:
    return Context(
        id=TID,
        task="proj.add",
        args=[2, 3],
        kwargs={"z": 1},
        hostname="w1@vm",
        retries=0,
        delivery_info={"routing_key": "standard"},
        **fields,
    )


EXTENDED = ExtendedInfo(
    name="proj.add", args=[2, 3], kwargs={"z": 1}, worker="w1@vm", retries=0, queue="standard"
)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_success_with_everything(serializer: str) -> None:
    backend = _backend(result_extended=True, result_serializer=serializer)
    child = backend.app.AsyncResult("child-1")
    request = _request(backend, group="g-1", parent_id="p-1")
    request.children.append(child)
    expected = _celery_bytes(backend, {"total": 5}, "SUCCESS", None, request)

    ours = encode_result(
        ResultMeta(
            task_id=TID,
            status=State.SUCCESS,
            result={"total": 5},
            children=(ResultRef("child-1"),),
            date_done=NOW,
            group_id="g-1",
            parent_id="p-1",
            extended=EXTENDED,
        ),
        serializer=serializer,
    )

    assert ours == expected
    meta = decode_result(expected, serializer=serializer)
    assert meta.extended == EXTENDED
    assert meta.children == (ResultRef("child-1"),)
    assert meta.date_done == NOW


def test_plain_success_is_byte_identical_and_read_by_celery() -> None:
    backend = _backend()
    expected = _celery_bytes(backend, 5, "SUCCESS", None, None)

    ours = encode_result(
        ResultMeta(task_id=TID, status=State.SUCCESS, result=5, date_done=NOW, children=None)
    )

    assert ours == expected
    meta = backend.decode_result(ours)
    assert (meta["status"], meta["result"], meta["task_id"]) == ("SUCCESS", 5, TID)


@pytest.mark.parametrize(
    ("exc", "module"),
    [
        (MyErr("bad", 42), __name__),
        (ValueError("boom"), "builtins"),
        (TaskRevokedError("expired"), "celery.exceptions"),
        (TimeLimitExceeded(2), "billiard.exceptions"),
        (SoftTimeLimitExceeded(), "billiard.exceptions"),
    ],
)
def test_failure_both_ways(exc: BaseException, module: str) -> None:
    backend = _backend()
    traceback = "Traceback (most recent call last):\n  ...\nboom\n"
    expected = _celery_bytes(backend, exc, "FAILURE", traceback, None)
    info = ExceptionInfo.from_exception(exc)

    ours = encode_result(
        ResultMeta(
            task_id=TID,
            status=State.FAILURE,
            result=info,
            traceback=traceback,
            date_done=NOW,
            children=None,
        )
    )

    assert info.exc_module == module
    assert ours == expected
    rebuilt = backend.decode_result(ours)["result"]
    assert type(rebuilt) is type(exc)
    assert rebuilt.args == exc.args
    ours_rebuilt = decode_result(expected).exception.to_exception()  # type: ignore[union-attr]
    assert type(ours_rebuilt) is type(exc)
    assert ours_rebuilt.args == exc.args


def test_unencodable_exception_argument_becomes_repr() -> None:
    backend = _backend()
    exc = MyErr(Opaque(), "ok")
    expected = _celery_bytes(backend, exc, "FAILURE", None, None)

    info = ExceptionInfo.from_exception(exc)

    assert info.exc_message == ("<opaque>", "ok")
    ours = encode_result(
        ResultMeta(task_id=TID, status=State.FAILURE, result=info, date_done=NOW, children=None)
    )
    assert ours == expected


def test_unknown_exception_class_gets_a_standin() -> None:
    """A client that has not imported the task's module still gets a named exception."""
    data = encode_result(
        ResultMeta(
            task_id=TID,
            status=State.FAILURE,
            result=ExceptionInfo("NotImported", ("x",), "somewhere.unimported"),
            date_done=NOW,
        )
    )

    first = decode_result(data).exception.to_exception()  # type: ignore[union-attr]
    second = decode_result(data).exception.to_exception()  # type: ignore[union-attr]

    assert type(first).__name__ == "NotImported"
    assert type(first).__module__ == "somewhere.unimported"
    assert type(first) is type(second)
    assert first.args == ("x",)
    assert type(_backend().decode_result(data)["result"]).__name__ == "NotImported"


@pytest.mark.parametrize("state", ["RETRY", "REVOKED"])
def test_other_exception_states(state: str) -> None:
    backend = _backend()
    exc = TaskRevokedError("revoked")
    date_done = NOW if state == "REVOKED" else None
    expected = _celery_bytes(backend, exc, state, None, None)

    ours = encode_result(
        ResultMeta(
            task_id=TID,
            status=State(state),
            result=ExceptionInfo.from_exception(exc),
            date_done=date_done,
            children=None,
        )
    )

    assert ours == expected


def test_started_record() -> None:
    backend = _backend()
    expected = _celery_bytes(backend, {"pid": 12534, "hostname": "w1@vm"}, "STARTED", None, None)

    ours = encode_result(
        ResultMeta(
            task_id=TID,
            status=State.STARTED,
            result={"pid": 12534, "hostname": "w1@vm"},
            children=None,
        )
    )

    assert ours == expected
    assert decode_result(ours).date_done is None


def test_stamps_in_extended_results() -> None:
    backend = _backend(result_extended=True)
    request = _request(backend, stamped_headers=["mystamp"], stamps={"mystamp": "v"})
    expected = _celery_bytes(backend, 1, "SUCCESS", None, request)
    extended = ExtendedInfo(
        name="proj.add",
        args=[2, 3],
        kwargs={"z": 1},
        worker="w1@vm",
        retries=0,
        queue="standard",
        stamped_headers=("mystamp",),
        stamps={"mystamp": "v"},
    )

    ours = encode_result(
        ResultMeta(task_id=TID, status=State.SUCCESS, result=1, date_done=NOW, extended=extended)
    )

    assert ours == expected
    assert decode_result(ours).extended == extended


def test_group_record_both_ways() -> None:
    backend = _backend()
    app = backend.app
    group = GroupResult("g-1", [app.AsyncResult("a"), app.AsyncResult("b")])
    expected = _as_bytes(backend.encode({"result": group.as_tuple()}))
    ref = ResultRef("g-1", children=(ResultRef("a"), ResultRef("b")))

    assert encode_group(ref) == expected
    assert decode_group(expected) == ref
    restored = result_from_tuple(backend.decode(encode_group(ref))["result"], app)
    assert restored.id == "g-1"
    assert [r.id for r in restored.results] == ["a", "b"]
    with pytest.raises(ValueError, match="children"):
        encode_group(ResultRef("g-1"))


def test_nested_result_references() -> None:
    app = make_app()
    parent = app.AsyncResult("p")
    inner = GroupResult("g-in", [app.AsyncResult("x", parent=parent)])
    outer = GroupResult("g-out", [inner, app.AsyncResult("y")])
    wire = _as_bytes(_backend().encode({"result": outer.as_tuple()}))

    decoded = decode_group(wire)

    assert decoded == ResultRef(
        "g-out",
        children=(
            ResultRef("g-in", children=(ResultRef("x", parent=ResultRef("p")),)),
            ResultRef("y"),
        ),
    )


@pytest.mark.parametrize("prefix", ["", "pfx", "pfx:", "pfx_", "pfx-", "pfx."])
def test_keys_with_global_keyprefix(prefix: str) -> None:
    options = {"global_keyprefix": prefix} if prefix else {}
    backend = _backend(result_backend_transport_options=options)
    keys = ResultKeys(prefix)

    assert keys.task("t").encode() == backend.get_key_for_task("t")
    assert keys.group("g").encode() == backend.get_key_for_group("g")
    assert keys.chord("g", "j").encode() == backend.get_key_for_group("g", ".j")


@pytest.mark.parametrize("method", ["gzip", "bzip2", "lzma"])
def test_compressed_results_both_ways(method: str) -> None:
    backend = _backend(result_compression=method)
    expected = _celery_bytes(backend, [1, 2], "SUCCESS", None, None)
    meta = ResultMeta(task_id=TID, status=State.SUCCESS, result=[1, 2], date_done=NOW)

    assert decode_result(expected).result == [1, 2]
    assert backend.decode_result(encode_result(meta, compression=method))["result"] == [1, 2]


def test_date_done_is_utc_iso() -> None:
    data = encode_result(
        ResultMeta(task_id=TID, status=State.SUCCESS, date_done=datetime(2026, 1, 1, tzinfo=UTC))
    )
    assert b'"date_done": "2026-01-01T00:00:00+00:00"' in data
