"""Fixtures and helpers for the simulator's own tests: one simulator served on a free port per module
(reset before each test), and SDK clients with strict response validation, so every shape the simulator
emits must parse in the ``openai`` and ``anthropic`` SDKs' own types."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.servers import serve
from tests.upstream import SimConfig, Simulator

KEY = "sk-sim-test-0001"

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}

ANTHROPIC_TOOL: Any = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

LONG_TEXT = " ".join(f"word{i}" for i in range(1100))  # 1,100 tokens


OPENAI_HEADERS = {"authorization": f"Bearer {KEY}"}

ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Simulator, str]]:
    sim = Simulator(SimConfig())
    with serve(sim.app) as url:
        yield sim, url


@pytest.fixture(scope="module")
def oai(served: tuple[Simulator, str]) -> Iterator[openai.OpenAI]:
    with oa(served[1]) as client:
        yield client


@pytest.fixture(scope="module")
def ant(served: tuple[Simulator, str]) -> Iterator[anthropic.Anthropic]:
    with an(served[1]) as client:
        yield client


@pytest.fixture(scope="module")
def http(served: tuple[Simulator, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[1], timeout=10) as client:
        yield client


@pytest.fixture
def sim(served: tuple[Simulator, str]) -> Simulator:
    served[0].reset()
    served[0].config = SimConfig()
    return served[0]


@pytest.fixture
def url(served: tuple[Simulator, str], sim: Simulator) -> str:
    return served[1]


def oa(url: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/v1", api_key=KEY, max_retries=0, _strict_response_validation=True, **kw
    )


def aoa(url: str, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=KEY, max_retries=0, _strict_response_validation=True, **kw
    )


def an(url: str, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=url, api_key=KEY, max_retries=0, _strict_response_validation=True, **kw
    )


def aan(url: str, **kw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=url, api_key=KEY, max_retries=0, _strict_response_validation=True, **kw
    )


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def raw_sse(
    url: str, path: str, body: dict[str, Any], headers: dict[str, str]
) -> list[tuple[str | None, str]]:
    """POST and split the SSE reply into (event, data) pairs (comments dropped)."""
    with httpx.stream("POST", url + path, json=body, headers=headers, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    out: list[tuple[str | None, str]] = []
    for frame in text.split("\n\n"):
        lines = [ln for ln in frame.split("\n") if ln and not ln.startswith(":")]
        if lines:
            event = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
            data = "\n".join(ln[6:] for ln in lines if ln.startswith("data: "))
            out.append((event, data))
    return out


def text_of(message: Any) -> str:
    block = message.content[0]
    assert block.type == "text"
    return str(block.text)
