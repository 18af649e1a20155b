"""Test helpers for the wire layer: the official SDKs reading bytes we rendered (through an
``httpx2.MockTransport``, the SDKs' own HTTP library), and the provider simulator's API handlers called as
plain functions with real prompt caches behind them."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx2
import openai
import orjson

from gateway.sse import SSESplitter
from tests.upstream import SimConfig
from tests.upstream.anthropic_api import messages as sim_messages
from tests.upstream.openai_api import chat_completions as sim_chat_completions
from tests.upstream.prompt_cache import AnthropicPromptCache, CacheBlock, CacheUsage, OpenAIPrefixCache
from tests.upstream.reply import Ctx, Reply
from tests.upstream.sse import StreamPlan

JSON = "application/json"
SSE = "text/event-stream"


Handler = Callable[[httpx2.Request], httpx2.Response]


def _http(answer: bytes | Handler, stream: bool) -> httpx2.Client:
    if callable(answer):
        return httpx2.Client(transport=httpx2.MockTransport(answer))
    content_type = SSE if stream else JSON

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=answer, headers={"content-type": content_type})

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def openai_client(answer: bytes | Handler, *, stream: bool = False) -> openai.OpenAI:
    """An OpenAI client whose every request is answered with ``answer`` (SSE when ``stream``), or by the
    handler ``answer``."""
    return openai.OpenAI(
        base_url="http://wire.test/v1",
        api_key="x",
        max_retries=0,
        _strict_response_validation=True,
        http_client=_http(answer, stream),
    )


def anthropic_client(answer: bytes | Handler, *, stream: bool = False) -> anthropic.Anthropic:
    """An Anthropic client whose every request is answered with ``answer`` (SSE when ``stream``), or by
    the handler ``answer``."""
    return anthropic.Anthropic(
        base_url="http://wire.test",
        api_key="x",
        max_retries=0,
        _strict_response_validation=True,
        http_client=_http(answer, stream),
    )


class Upstream:
    """The simulator's OpenAI and Anthropic handlers as plain functions, with their prompt caches (one
    scope: one key and model per test)."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._openai_cache = OpenAIPrefixCache()
        self._anthropic_cache = AnthropicPromptCache(time.monotonic)
        self._seq = itertools.count(1)

    def _ctx(self) -> Ctx:
        config = self.config

        def openai_cached(tokens: Any) -> int:
            return self._openai_cache.cached_tokens("k", tokens, config.openai_min_cache_tokens)

        def anthropic_cache(blocks: list[CacheBlock]) -> CacheUsage:
            return self._anthropic_cache.apply("k", blocks, config.anthropic_min_cache_tokens)

        return Ctx(config, next(self._seq), int(time.time()), openai_cached, anthropic_cache)

    def openai(self, body: dict[str, Any]) -> Reply | StreamPlan:
        return sim_chat_completions(orjson.loads(orjson.dumps(body)), self._ctx())

    def anthropic(self, body: dict[str, Any]) -> Reply | StreamPlan:
        return sim_messages(orjson.loads(orjson.dumps(body)), self._ctx())


def reply_json(result: Reply | StreamPlan) -> dict[str, Any]:
    assert isinstance(result, Reply), "expected a JSON answer"
    assert result.status == 200, result.body
    obj: dict[str, Any] = orjson.loads(result.body)
    return obj


def stream_events(result: Reply | StreamPlan) -> Iterator[bytes]:
    """A stream plan's bytes, cut into complete events by the gateway's own splitter (pings included)."""
    assert isinstance(result, StreamPlan), "expected a stream"
    splitter = SSESplitter()
    for event in result.events:
        yield from splitter.feed(event.frame + result.ping_frames)
    assert splitter.flush() == b""
