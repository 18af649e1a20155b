"""Every request-log row is bounded to its columns and cleaned before it is queued (hole b)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.storage import RequestLogRow, repo
from gateway.storage.logrow import COLUMNS, INT32_MAX, MONEY_MAX, TEXT_COLUMNS, clean_row, clean_text
from gateway.types import RequestRecord, Usage

CONTROL = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]}


def hostile_record() -> RequestRecord:
    return RequestRecord(
        request_id="req_\x00" + "r" * 100,
        surface="openai.chat",
        method="POST\r\n",
        path="/v1/x/\x00/" + "p" * 5000,
        key_id="k" * 40,
        requested_model="m" * 300,
        served_model="gpt\x00-4o\ud800",
        provider="openai\x1b[31m",
        status_code=401,
        usage=Usage(input_tokens=2**40, output_tokens=-5),
        cost_usd=float("nan"),
        counterfactual_usd=1e30,
        saving_usd=float("-inf"),
        latency_ms=float("inf"),
        route_reason="r\u2028" * 150,
        error="line one\nline\ttwo\x00\x07" + "e" * 5000,
        created_at=1_700_000_000.0,
    )


def assert_fits(row: dict[str, Any]) -> None:
    assert tuple(row) == COLUMNS
    for name, limit in TEXT_COLUMNS.items():
        value = row[name]
        if value is None:
            continue
        assert isinstance(value, str) and len(value) <= limit, name
        keep = {"\n", "\t"} if name == "error" else set()
        assert not (set(value) & (CONTROL - keep)), name
        value.encode("utf-8")  # no lone surrogates
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens"):
        assert 0 <= row[name] <= INT32_MAX
    for name in ("cost_usd", "counterfactual_usd", "saving_usd", "latency_ms", "ttft_ms"):
        assert row[name] is None or (math.isfinite(row[name]) and abs(row[name]) <= max(MONEY_MAX, 1e300))


def test_request_row_bounds_and_cleans_every_field() -> None:
    row = repo.request_row(hostile_record())
    assert_fits(row)
    assert row["requested_model"] == "m" * 199 + "…"
    assert row["served_model"] == "gpt-4o\ufffd"
    assert row["method"] == "POST" and row["provider"] == "openai[31m"
    assert row["path"].startswith("/v1/x//") and len(row["path"]) == TEXT_COLUMNS["path"]
    assert row["error"].startswith("line one\nline\ttwo") and "\x07" not in row["error"]
    assert row["input_tokens"] == INT32_MAX and row["output_tokens"] == 0
    assert row["cost_usd"] is None and row["counterfactual_usd"] == MONEY_MAX and row["saving_usd"] is None
    assert row["latency_ms"] is None and row["status_code"] == 401


def test_clean_values_are_untouched() -> None:
    assert clean_text("gpt-4o-mini", 200) == "gpt-4o-mini"
    assert clean_text("modèle — ünïcode ✓", 200) == "modèle — ünïcode ✓"
    record = RequestRecord(
        request_id="req_1", surface="openai.chat", method="POST", path="/v1/chat/completions"
    )
    row = repo.request_row(record)
    assert (row["request_id"], row["path"], row["cache"], row["error"]) == (
        "req_1",
        "/v1/chat/completions",
        "miss",
        None,
    )


def test_clean_row_is_total_on_rows_from_elsewhere() -> None:
    # a spill file written by an older version, or edited by hand
    row = clean_row({"request_id": 5, "status_code": "abc", "stream": "yes", "created_at": "nope", "junk": 1})
    assert_fits(row)
    assert row["request_id"] == "5" and row["status_code"] == 0 and row["stream"] is True
    assert row["surface"] == "" and row["created_at"] > 1_700_000_000 and "junk" not in row


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(COLUMNS),
        st.one_of(
            st.none(),
            st.text(max_size=400),
            st.integers(),
            st.floats(allow_nan=True, allow_infinity=True),
            st.booleans(),
        ),
    )
)
def test_any_mapping_becomes_a_row_that_fits(values: dict[str, Any]) -> None:
    assert_fits(clean_row(values))


async def test_the_database_accepts_the_cleaned_row(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """PostgreSQL enforces VARCHAR lengths, UTF-8 and the integer range; SQLite stores anything: on both,
    the row of a hostile record is written and reads back as cleaned."""
    row = repo.request_row(hostile_record())
    async with sessionmaker.begin() as session:
        await repo.write_request_batch(session, [row])
    async with sessionmaker() as session:
        stored = (await session.execute(select(RequestLogRow))).scalar_one()
    assert stored.requested_model == row["requested_model"] and stored.path == row["path"]
    assert stored.served_model == "gpt-4o\ufffd" and stored.input_tokens == INT32_MAX
    assert stored.cost_usd is None and stored.counterfactual_usd == MONEY_MAX
    assert stored.created_at.timestamp() == 1_700_000_000.0


def raw_values(record: RequestRecord) -> dict[str, Any]:
    u = record.usage
    return {
        **{name: getattr(record, name) for name in COLUMNS if hasattr(record, name)},
        **{name: getattr(u, name) for name in COLUMNS if hasattr(u, name)},
    }


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=300),
    st.one_of(st.none(), st.text(max_size=300)),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.one_of(st.none(), st.floats()),
)
def test_request_row_cleans_exactly_as_clean_row(
    text: str, optional: str | None, n: int, x: float | None
) -> None:
    """``request_row`` inlines the cleaning for speed; it must agree with ``clean_row`` field for field."""
    record = RequestRecord(
        request_id=text,
        surface=text,
        method=text,
        path=text * 10,
        key_id=optional,
        requested_model=optional,
        served_model=text,
        provider=optional,
        status_code=n,
        usage=Usage(input_tokens=n, output_tokens=-n, reasoning_tokens=n),
        latency_ms=x,
        cost_usd=x,
        saving_usd=x,
        saving_mechanism=optional,
        cache=text,
        route_reason=optional,
        error=optional,
        created_at=1_700_000_000.0,
    )
    row = repo.request_row(record)
    assert row == clean_row(raw_values(record))
    assert_fits(row)
