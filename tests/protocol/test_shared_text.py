"""``protocol.shared_text``: one copy of each short string that messages repeat, within bounds."""

from __future__ import annotations

import pytest

from protocol import _fields, shared_text


@pytest.fixture
def empty_table(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    table: dict[str, str] = {}
    monkeypatch.setattr(_fields, "_SHARED", table)
    return table


def _fresh(text: str) -> str:
    """An equal string that is not ``text`` itself (literals would be one object already)."""
    return "".join(list(text))


def test_a_short_string_seen_before_is_the_first_copy(empty_table: dict[str, str]) -> None:
    first = _fresh("proj.add")

    assert shared_text(first) is first
    again = _fresh("proj.add")
    assert again is not first
    assert shared_text(again) is first


def test_a_long_string_is_its_own(empty_table: dict[str, str]) -> None:
    long = _fresh("x" * (_fields._SHARED_LONGEST + 1))

    shared_text(long)
    again = _fresh(long)
    assert shared_text(again) is again
    assert empty_table == {}


def test_the_table_stops_growing_at_its_bound(
    empty_table: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fields, "_SHARED_MAX", 2)
    kept = [shared_text(_fresh(f"name-{i}")) for i in range(3)]

    assert list(empty_table) == ["name-0", "name-1"]
    assert shared_text(_fresh("name-1")) is kept[1]
    third = _fresh("name-2")
    assert shared_text(third) is third  # not remembered: the table was full


def test_a_str_subclass_is_left_as_it_is(empty_table: dict[str, str]) -> None:
    class Tagged(str):
        pass

    tagged = Tagged("proj.add")

    assert shared_text(tagged) is tagged
    assert empty_table == {}
