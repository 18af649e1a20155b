"""OpenAI Responses (tests/upstream/responses_api.py): JSON and the SSE event sequence, validated
event by event against the SDK's types."""

from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
from openai.types.responses import ResponseStreamEvent

from tests.upstream.conftest import (
    OPENAI_HEADERS,
    WEATHER_TOOL,
    aoa,
    raw_sse,
)


def test_responses_non_stream_and_list_input(url: str, oai: openai.OpenAI) -> None:
    client = oai
    r = client.responses.create(model="gpt-4o", input="Explain tides", instructions="Be brief")
    assert r.status == "completed" and r.output_text.startswith("Simulated answer to: Explain tides")
    assert (
        r.usage and r.usage.input_tokens == 4 and r.usage.output_tokens == 16 and r.usage.total_tokens == 20
    )
    items: Any = [{"role": "user", "content": [{"type": "input_text", "text": "first"}]},
             {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second question"}]  # fmt: skip
    r2 = client.responses.create(model="gpt-4o", input=items, max_output_tokens=6)
    assert (
        r2.status == "incomplete"
        and r2.incomplete_details
        and r2.incomplete_details.reason == "max_output_tokens"
    )
    assert "second" in r2.output_text and r2.usage and r2.usage.output_tokens == 6
    tool: Any = {
        "type": "function",
        "name": "get_weather",
        "parameters": WEATHER_TOOL["function"]["parameters"],
    }
    r3 = client.responses.create(model="gpt-4o", input="weather?", tools=[tool])
    assert r3.output[0].type == "function_call" and json.loads(r3.output[0].arguments)["city"]


RESPONSE_EVENTS = [
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    *["response.output_text.delta"] * 16,
    "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
]  # fmt: skip


async def test_responses_stream_event_sequence(url: str, oai: openai.OpenAI) -> None:
    sync_events = list(oai.responses.create(model="gpt-4o", input="stream this", stream=True))
    assert [e.type for e in sync_events] == RESPONSE_EVENTS
    assert [e.sequence_number for e in sync_events] == list(range(len(RESPONSE_EVENTS)))
    stream = await aoa(url).responses.create(model="gpt-4o", input="stream this", stream=True)
    events = [e async for e in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].type == "response.completed" and events[-1].response.output_text == deltas
    assert events[-1].response.usage is not None and events[-1].response.usage.output_tokens == 16
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
    tool = {
        "type": "function",
        "name": "f",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    for body in ({"input": "x"}, {"input": "x", "tools": [tool]}):
        raw = raw_sse(url, "/v1/responses", {"model": "gpt-4o", "stream": True, **body}, OPENAI_HEADERS)
        for name, data in raw:
            assert adapter.validate_python(json.loads(data)).type == name
