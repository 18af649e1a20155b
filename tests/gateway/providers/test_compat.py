"""OpenAI-compatible servers (gateway/providers/compat.py): base URL required, key optional."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from gateway.providers.base import UpstreamRequest
from gateway.providers.compat import OpenAICompatibleProvider
from gateway.providers.registry import ProviderContext
from gateway.settings import ProviderSettings
from tests.gateway.providers.fakes import FakeUpstream


async def test_key_is_optional_and_sent_as_bearer_when_set(upstream: FakeUpstream, base_url: str) -> None:
    request = UpstreamRequest("POST", "/v1/chat/completions", {"authorization": "Bearer client"}, b"{}")
    keyless = ProviderSettings(kind="openai_compatible", base_url=base_url + "/v1")
    keyed = ProviderSettings(kind="openai_compatible", base_url=base_url + "/v1", api_key=SecretStr("vllm-k"))
    for settings in (keyless, keyed):
        provider = OpenAICompatibleProvider("vllm", settings, ProviderContext())
        try:
            assert (await provider.send(request)).status_code == 200
        finally:
            await provider.aclose()
    assert [s.header("authorization") for s in upstream.seen] == [None, "Bearer vllm-k"]
    assert [s.path for s in upstream.seen] == ["/v1/chat/completions"] * 2


def test_base_url_is_required() -> None:
    settings = ProviderSettings.model_construct(
        kind="openai_compatible", base_url=None, api_key=None, api_key_env=None, timeout_s=600.0,
        connect_timeout_s=10.0, max_retries=2, headers={},
    )  # fmt: skip
    with pytest.raises(ValueError, match="needs a base_url"):
        OpenAICompatibleProvider("vllm", settings, ProviderContext())


def test_ollama_style_base_url() -> None:
    settings = ProviderSettings(kind="openai_compatible", base_url="http://localhost:11434/v1")
    provider = OpenAICompatibleProvider("ollama", settings, ProviderContext())
    assert provider.url("/v1/chat/completions") == "http://localhost:11434/v1/chat/completions"
    assert provider.url("/v1/models") == "http://localhost:11434/v1/models"


def test_base_url_needs_a_scheme() -> None:
    settings = ProviderSettings(kind="openai_compatible", base_url="localhost:8000/v1")
    with pytest.raises(ValueError, match="must start with http"):
        OpenAICompatibleProvider("vllm", settings, ProviderContext())
