"""Anthropic (https://api.anthropic.com): the key goes in ``x-api-key``; the client's ``anthropic-version``
is kept, ``2023-06-01`` is sent when it sent none. Registered as the ``anthropic`` kind."""

from __future__ import annotations

from typing import ClassVar

from gateway.providers.http import HttpProvider
from gateway.providers.registry import register_provider_kind

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(HttpProvider):
    kind: str = "anthropic"
    default_base_url: ClassVar[str | None] = "https://api.anthropic.com"
    default_headers: ClassVar[tuple[tuple[str, str], ...]] = (("anthropic-version", ANTHROPIC_VERSION),)

    def auth_header(self, key: str) -> tuple[str, str]:
        return ("x-api-key", key)


register_provider_kind("anthropic", AnthropicProvider)
