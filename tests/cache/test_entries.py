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


def test_expire_takes_what_is_due_across_replacements_evictions_and_removals() -> None:
    """``expire`` pops a heap instead of scanning the table; an entry replaced, evicted or removed before
    its time never comes back, and one replaced by a longer-lived entry under the same id stays."""
    table = EntryTable(5)
    for i in range(8):  # 0..2 evicted by 5..7
        table.add(CacheEntry(str(i), "ns", "m", f"k{i}", "s", ANSWER, 0.0, float(10 + i)))
    table.remove("4")
    table.add(CacheEntry("3", "ns", "m", "k3", "s", ANSWER, 0.0, 1000.0))  # same id, lives longer
    assert table.expire(9.0) == []
    assert [e.id for e in table.expire(16.0)] == ["5", "6"]  # 3's old time has passed: it stays
    assert sorted(e.id for e in table) == ["3", "7"]
    assert [e.id for e in table.expire(17.0)] == ["7"] and [e.id for e in table.expire(1000.0)] == ["3"]
    assert len(table) == 0


def test_the_expiry_heap_stays_bounded_under_churn() -> None:
    table = EntryTable(10)
    for i in range(10_000):  # the same ten keys over and over: each add replaces one
        table.add(CacheEntry(str(i), "ns", "m", f"k{i % 10}", "s", ANSWER, 0.0, 1e9))
    assert len(table) == 10 and len(table._expiry) <= 2 * len(table) + 1024
    assert len(table.expire(2e9)) == 10
