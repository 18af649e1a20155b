"""Streamed replies (tests/upstream/sse.py): cuts, error events, ping comments and client disconnects."""

from __future__ import annotations

from typing import Any, cast

import anthropic
import httpx
import httpx2
import openai
import pytest

from tests.upstream import Fault, Simulator
from tests.upstream.conftest import (
    ANTHROPIC_HEADERS,
    user,
)
from tests.waiting import wait_until


def test_stream_cut_error_event_and_pings(
    sim: Simulator, url: str, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.inject(Fault(cut_after_events=3))
    got: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in oai.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True):
            got.append(chunk)
    assert len(got) == 3
    sim.inject(Fault(cut_after_events=2))
    # the anthropic SDK lets the transport error through unwrapped while iterating a stream
    with (
        pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)),
        ant.messages.stream(model="c", max_tokens=9, messages=user("x")) as s,
    ):
        s.get_final_message()

    sim.inject(Fault(error_event_after=4))
    with pytest.raises(openai.APIError, match="server had an error"):
        list(oai.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True))
    sim.inject(Fault(error_event_after=2, status=429))
    with pytest.raises(anthropic.APIStatusError) as err:
        list(ant.messages.create(model="c", max_tokens=9, messages=user("x"), stream=True))
    assert cast(Any, err.value.body)["error"]["type"] == "rate_limit_error"
    sim.inject(Fault(error_event_after=5))
    events = list(oai.responses.create(model="gpt-4o", input="x", stream=True))
    assert events[-1].type == "error" and events[-1].sequence_number == 5

    sim.inject(Fault(ping_comments=True, times=2))
    with httpx.stream("POST", f"{url}/v1/messages", headers=ANTHROPIC_HEADERS, timeout=10,
                      json={"model": "c", "max_tokens": 9, "messages": user("x"), "stream": True}) as r:  # fmt: skip
        body = r.read().decode()
    assert body.count(": ping\n") > 5 and body.count("event: ping") > 5 and "message_stop" in body
    chunks = list(oai.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("Simulated")
    assert sim.disconnects == 0  # deliberate cuts are not client disconnects


def test_abandoned_stream_counts_as_disconnect(sim: Simulator, url: str, oai: openai.OpenAI) -> None:
    sim.config.per_token_s = 0.05
    stream = oai.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    wait_until(lambda: sim.disconnects, what="the simulator to see the disconnect")
    assert sim.disconnects == 1
