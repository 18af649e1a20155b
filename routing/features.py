"""What the router reads of a request: sizes, needs and the text its classifier scores.

``features_of`` is a pure function of the canonical request. Token counts are estimated from the text
(about three characters a token: an over-estimate for English prose, so a request near a model's context
window is sent up a size rather than truncated by the provider).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from gateway.types import ChatRequest, ImagePart, Message, TextPart, ToolCallPart, ToolResultPart

CHARS_PER_TOKEN = 3
_MESSAGE_OVERHEAD = 4
_IMAGE_TOKENS = 1600  # a large image tile's worth (OpenAI high detail, Anthropic ~1.6k per megapixel)


@dataclass(slots=True, frozen=True)
class RequestFeatures:
    """A request as the router sees it."""

    input_tokens: int
    """Estimated input tokens (system, messages, tool definitions)."""
    max_tokens: int | None
    """The client's output cap (None: it set none)."""
    turns: int
    """Messages in the conversation."""
    tools: bool
    """It defines tools or carries tool calls / results."""
    images: bool
    json_output: bool
    """It asks for a JSON response format."""
    text: str
    """The text the complexity classifier scores: the last user turn."""
    conversation: str
    """A fingerprint of the conversation (system prompt and first user turn): the same for every turn
    of one conversation."""


def _text_of(message: Message) -> str:
    out: list[str] = []
    for part in message.content:
        if isinstance(part, TextPart):
            out.append(part.text)
        elif isinstance(part, ToolResultPart):
            out.extend(p.text for p in part.content if isinstance(p, TextPart))
    return "\n".join(out)


def last_user_text(request: ChatRequest) -> str:
    """The text of the last user turn ("" when there is none)."""
    for message in reversed(request.messages):
        if message.role == "user":
            return _text_of(message)
    return ""


def features_of(request: ChatRequest) -> RequestFeatures:
    """The router's view of ``request``. Pure; reads the request only."""
    chars = sum(len(p.text) for p in request.system)
    images = False
    tools = bool(request.tools)
    for message in request.messages:
        for part in message.content:
            if isinstance(part, TextPart):
                chars += len(part.text)
            elif isinstance(part, ImagePart):
                images = True
                chars += _IMAGE_TOKENS * CHARS_PER_TOKEN
            elif isinstance(part, ToolCallPart):
                tools = True
                chars += len(part.name) + len(part.arguments)
            else:
                tools = True
                for inner in part.content:
                    if isinstance(inner, ImagePart):
                        images = True
                        chars += _IMAGE_TOKENS * CHARS_PER_TOKEN
                    else:
                        chars += len(inner.text)
    for tool in request.tools:
        chars += len(tool.name) + len(tool.description or "") + len(orjson.dumps(dict(tool.parameters)))
    tokens = chars // CHARS_PER_TOKEN + _MESSAGE_OVERHEAD * (len(request.messages) + 1)
    first_user = next((_text_of(m) for m in request.messages if m.role == "user"), "")
    system = "\n".join(p.text for p in request.system)
    digest = hashlib.blake2b(f"{system}\x00{first_user}".encode(), digest_size=16).hexdigest()
    fmt = request.response_format
    return RequestFeatures(
        input_tokens=tokens,
        max_tokens=request.max_tokens,
        turns=len(request.messages),
        tools=tools,
        images=images,
        json_output=fmt is not None and fmt.type != "text",
        text=last_user_text(request),
        conversation=digest,
    )
