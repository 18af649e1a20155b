"""The entry table: LRU eviction, listeners, replacement by key; answers round-trip through JSON."""

from __future__ import annotations

from cache.entries import CacheEntry, EntryTable, response_from_json, response_to_json
from gateway.types import ChatResponse, Choice, StopReason, TextPart, ToolCallPart, Usage

ANSWER = ChatResponse(
    id="r1",
    model="m",
    choices=(
        Choice((TextPart("hi"), ToolCallPart("c1", "f", '{"a":1}')), StopReason.TOOL_USE, refusal=None),
    ),
    usage=Usage(10, 5, 2, 1, 0, 3),
    created=7,
)


def entry(i: int, key: str | None = None) -> CacheEntry:
    return CacheEntry(str(i), "ns", "m", key or f"k{i}", "s", ANSWER, 0.0, 100.0)


def test_answers_round_trip() -> None:
    assert response_from_json(response_to_json(ANSWER)) == ANSWER


def test_least_recently_used_is_evicted_and_listeners_hear_it() -> None:
    added, removed = [], []
    table = EntryTable(2, on_add=[lambda e: added.append(e.id)], on_remove=[lambda e: removed.append(e.id)])
    table.add(entry(1))
    table.add(entry(2))
    table.touch(table.get("1"))  # type: ignore[arg-type]
    assert table.add(entry(3))[0].id == "2"
    assert [e.id for e in table] == ["1", "3"] and added == ["1", "2", "3"] and removed == ["2"]
    assert table.get("1").hits == 1  # type: ignore[union-attr]


def test_a_new_answer_replaces_the_old_one_under_the_same_key() -> None:
    table = EntryTable(10)
    table.add(entry(1, key="same"))
    table.add(entry(2, key="same"))
    assert len(table) == 1 and table.by_key("same").id == "2"  # type: ignore[union-attr]


def test_expire() -> None:
    table = EntryTable(10)
    table.add(entry(1))
    assert table.expire(99.0) == [] and [e.id for e in table.expire(100.0)] == ["1"]
