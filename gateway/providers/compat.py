"""Any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, ...): the OpenAI wire format at a
configured base URL (required, e.g. ``http://localhost:8000/v1``), key optional (``Authorization: Bearer``
when set). Registered as the ``openai_compatible`` kind."""

from __future__ import annotations

from typing import ClassVar

from gateway.providers.http import HttpProvider
from gateway.providers.registry import register_provider_kind


class OpenAICompatibleProvider(HttpProvider):
    kind: str = "openai_compatible"
    default_base_url: ClassVar[str | None] = None


register_provider_kind("openai_compatible", OpenAICompatibleProvider)
