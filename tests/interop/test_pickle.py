"""Pickle from a stock Celery client: refused unless the app's ``accept_content`` names it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from tests.interop.conftest import Broker, WorkerProcess


class OpensAFile:
    """Unpickling this creates ``path``: proof that a payload was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (str(self.path), "w")


def test_a_pickled_task_is_dead_lettered_unloaded(
    start_worker: Any, celery_client: Celery, unique_name: str, broker: Broker, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    worker: WorkerProcess = start_worker(unique_name)
    celery_client.conf.accept_content = ["json", "msgpack", "pickle"]

    sent_id = celery_client.send_task(
        "interop.add", args=(OpensAFile(marker), 1), queue=unique_name, serializer="pickle"
    ).id
    after = celery_client.send_task("interop.add", args=(2, 3), queue=unique_name)

    assert after.get(timeout=15) == 5  # the worker took the pickle first, and went on
    record = worker.wait_for("message_malformed", timeout=15)
    assert "refused content type" in record["reason"]
    (dead,) = broker.dead_letters(unique_name)
    assert dead.headers["id"] == sent_id
    assert dead.headers["x-celeriac-reason"].startswith(
        "malformed: content_type: refused content type 'application/x-python-serialize'"
    )
    assert dead.content_type == "application/x-python-serialize"
    assert not marker.exists()


def test_an_app_that_accepts_pickle_runs_the_task(
    start_worker: Any, celery_client: Celery, unique_name: str
) -> None:
    start_worker(unique_name, app="tests.interop.pickle_app:app")

    sent = celery_client.send_task(
        "interop.type_name", args=({1, 2},), queue=unique_name, serializer="pickle"
    )

    assert sent.get(timeout=15) == "set"
