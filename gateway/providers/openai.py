"""OpenAI (https://api.openai.com/v1): ``Authorization: Bearer`` auth; client paths "/v1/..." map onto the
base URL's "/v1". Registered as the ``openai`` kind."""

from __future__ import annotations

from typing import ClassVar

from gateway.providers.http import HttpProvider
from gateway.providers.registry import register_provider_kind


class OpenAIProvider(HttpProvider):
    kind: str = "openai"
    default_base_url: ClassVar[str | None] = "https://api.openai.com/v1"


register_provider_kind("openai", OpenAIProvider)
