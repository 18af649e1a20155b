"""Translation between the two chat wire APIs and the canonical types of ``gateway.types``.

    wire body (dict) ──parse_request──► ChatRequest ──render_request──► wire body (dict) for an upstream
    upstream body ───parse_response──► ChatResponse ──render_response─► client body (bytes)
    upstream SSE event ──StreamParser──► StreamEvent ... ──StreamRenderer──► client SSE bytes
    ChatResponse ──events_of──► StreamEvent ...;  StreamEvent ... ──StreamAccumulator──► ChatResponse

One module per API (``openai_chat``: Chat Completions; ``anthropic_messages``: Messages), each with the
same six names; the functions here dispatch on ``gateway.types.WireAPI``. Everything is pure: no I/O.

Errors (both are ``gateway.errors.InvalidRequest``, a 400 in the client's own format)::

    InvalidRequest            malformed input; ``param`` names the field in the parsed API's path style
    └── Untranslatable        well formed, but it cannot be carried: into the canonical form (an audio
                              part, a thinking block, an unknown content block) or into the target API
                              (``top_k`` into OpenAI, ``n`` > 1 into Anthropic, a native field of the
                              other API); ``param`` names the field

``render_request`` names a field in the style of the API the request came from (the other one: rendering
into the API a request came from never fails). Message indexes there count canonical messages: an OpenAI
request's leading system messages are ``ChatRequest.system``, and a run of ``tool`` messages is one
canonical user message together with the user message that follows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidRequest
from gateway.types import ChatRequest, ChatResponse, WireAPI


class Untranslatable(InvalidRequest):
    """Content or a field that the canonical form, or the target API, cannot carry (a 400 naming it)."""


# The API modules import ``Untranslatable`` from here: they are imported after it is defined.
from gateway.wire import anthropic_messages, openai_chat  # noqa: E402
from gateway.wire.events import StreamAccumulator, events_of  # noqa: E402

StreamParser = openai_chat.StreamParser | anthropic_messages.StreamParser
StreamRenderer = openai_chat.StreamRenderer | anthropic_messages.StreamRenderer


def parse_request(api: WireAPI, body: Mapping[str, Any]) -> ChatRequest:
    """A client's body in ``api``'s format as a canonical request."""
    if api is WireAPI.OPENAI_CHAT:
        return openai_chat.parse_request(body)
    return anthropic_messages.parse_request(body)


def render_request(
    api: WireAPI, req: ChatRequest, *, model: str, default_max_tokens: int = 4096
) -> dict[str, Any]:
    """The body to send to an ``api`` upstream for upstream model id ``model``."""
    if api is WireAPI.OPENAI_CHAT:
        return openai_chat.render_request(req, model=model)
    return anthropic_messages.render_request(req, model=model, default_max_tokens=default_max_tokens)


def parse_response(api: WireAPI, body: Mapping[str, Any]) -> ChatResponse:
    """An ``api`` upstream's non-stream answer as a canonical response."""
    if api is WireAPI.OPENAI_CHAT:
        return openai_chat.parse_response(body)
    return anthropic_messages.parse_response(body)


def render_response(api: WireAPI, resp: ChatResponse, req: ChatRequest) -> bytes:
    """The JSON body an ``api`` client gets for ``resp``."""
    if api is WireAPI.OPENAI_CHAT:
        return openai_chat.render_response(resp, req)
    return anthropic_messages.render_response(resp, req)


def stream_parser(api: WireAPI) -> StreamParser:
    """A parser for one stream from an ``api`` upstream."""
    if api is WireAPI.OPENAI_CHAT:
        return openai_chat.StreamParser()
    return anthropic_messages.StreamParser()


def stream_renderer(api: WireAPI, req: ChatRequest, *, request_id: str = "") -> StreamRenderer:
    """A renderer of one stream for an ``api`` client that sent ``req`` (``request_id`` goes into its
    in-stream error events)."""
    if api is WireAPI.OPENAI_CHAT:
        return openai_chat.StreamRenderer(req, request_id=request_id)
    return anthropic_messages.StreamRenderer(req, request_id=request_id)


__all__ = [
    "StreamAccumulator",
    "StreamParser",
    "StreamRenderer",
    "Untranslatable",
    "anthropic_messages",
    "events_of",
    "openai_chat",
    "parse_request",
    "parse_response",
    "render_request",
    "render_response",
    "stream_parser",
    "stream_renderer",
]
