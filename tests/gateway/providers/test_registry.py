"""Provider kinds as plugins and the Providers container (gateway/providers/registry.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from gateway.errors import UpstreamError
from gateway.providers import (
    Provider,
    ProviderContext,
    ProviderKinds,
    Providers,
    UnknownProviderKind,
    UpstreamRequest,
    UpstreamResponse,
)
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.compat import OpenAICompatibleProvider
from gateway.providers.openai import OpenAIProvider
from gateway.providers.registry import UnavailableProvider
from gateway.settings import ProviderSettings, Settings
from tests.gateway.providers.fakes import SleepRecorder
from tests.servers import free_port


class EchoProvider:
    """A provider kind registered the way a plugin registers one."""

    kind = "echo"

    def __init__(self, name: str, settings: ProviderSettings, context: ProviderContext) -> None:
        self.name = name
        self.closed = False

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        return UpstreamResponse(200, [("content-type", "application/octet-stream")], request.body, None)

    async def aclose(self) -> None:
        self.closed = True


def settings(**providers: ProviderSettings) -> Settings:
    return Settings(providers=providers, models={}, retry_backoff_base_s=0.5, retry_backoff_max_s=3.0)


async def test_builtin_kinds_from_settings() -> None:
    built = Providers.from_settings(
        settings(
            openai=ProviderSettings(kind="openai", api_key_env="OPENAI_API_KEY"),
            claude=ProviderSettings(kind="anthropic", api_key=SecretStr("k")),
            vllm=ProviderSettings(kind="openai_compatible", base_url="http://127.0.0.1:8000/v1"),
        ),
        {"OPENAI_API_KEY": "sk-1"},
    )
    try:
        assert list(built) == ["openai", "claude", "vllm"]
        assert isinstance(built["openai"], OpenAIProvider)
        assert isinstance(built["claude"], AnthropicProvider)
        assert isinstance(built["vllm"], OpenAICompatibleProvider)
        assert [built[n].kind for n in built] == ["openai", "anthropic", "openai_compatible"]
        assert built["claude"].name == "claude"
        assert all(isinstance(built[n], Provider) for n in built)
        assert (built.context.backoff.base_s, built.context.backoff.max_s) == (0.5, 3.0)
        assert built.context.env == {"OPENAI_API_KEY": "sk-1"}
        assert built.context.extras == {"local_model_dir": "./data/models"}
        assert "vllm" in built and "nope" not in built and len(built) == 3
        assert built.get("nope") is None
        with pytest.raises(KeyError, match="no provider named 'nope'"):
            built["nope"]
    finally:
        await built.aclose()


async def test_plugin_kind_registers_like_a_builtin() -> None:
    kinds = ProviderKinds(modules={})
    kinds.register("local", EchoProvider)  # a kind Settings knows, served by a plugin's factory
    built = Providers.from_settings(settings(mine=ProviderSettings(kind="local")), kinds=kinds)
    provider = built["mine"]
    assert isinstance(provider, EchoProvider)
    response = await provider.send(UpstreamRequest("POST", "/v1/x", {}, b"abc"))
    assert response.body == b"abc"
    await built.aclose()
    assert provider.closed


async def test_unregistered_kind_fails_when_used() -> None:
    kinds = ProviderKinds(modules={"nosuch": "gateway.providers.no_such_module"})
    built = Providers.from_settings(settings(local=ProviderSettings(kind="nosuch")), kinds=kinds)
    provider = built["local"]
    assert isinstance(provider, UnavailableProvider)
    with pytest.raises(UpstreamError, match=r"provider 'local' \(kind 'nosuch'\) is unavailable"):
        await provider.send(UpstreamRequest("POST", "/v1/chat/completions", {}, b"{}"))
    await built.aclose()


def test_unregistered_kind_fails_at_start_up_when_strict() -> None:
    kinds = ProviderKinds(modules={})
    with pytest.raises(UnknownProviderKind, match="provider 'local': no provider kind 'nosuch'"):
        Providers.from_settings(settings(local=ProviderSettings(kind="nosuch")), kinds=kinds, strict=True)


def test_a_private_table_sees_the_builtins() -> None:
    kinds = ProviderKinds()
    assert kinds.factory("anthropic") is AnthropicProvider
    assert "anthropic" in kinds


async def test_context_hooks_can_be_set_after_building() -> None:
    port = free_port()  # nothing listens: every try is refused
    built = Providers.from_settings(
        settings(openai=ProviderSettings(kind="openai", base_url=f"http://127.0.0.1:{port}/v1"))
    )
    seen: list[tuple[str, int | BaseException]] = []
    sleeps = SleepRecorder()
    built.context.on_retry = lambda name, cause: seen.append((name, cause))
    built.context.sleep = sleeps
    try:
        with pytest.raises(UpstreamError):
            await built["openai"].send(UpstreamRequest("GET", "/v1/models", {}, None))
    finally:
        await built.aclose()
    assert [name for name, _ in seen] == ["openai", "openai"]  # max_retries defaults to 2
    assert all(isinstance(cause, httpx.ConnectError) for _, cause in seen)
    assert len(sleeps.waits) == 2 and all(0 <= w < 1.0 for w in sleeps.waits)


def test_plugins_are_found_through_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an installed distribution with two plugins: one registers on import, one names its factory
    (tmp_path / "tg_test_plugin.py").write_text(
        "from gateway.providers.registry import register_provider_kind\n"
        "from tests.gateway.providers.test_registry import EchoProvider\n"
        "register_provider_kind('tg-test-registers', EchoProvider)\n"
        "def factory(name, settings, context):\n"
        "    return EchoProvider(name, settings, context)\n"
    )
    dist = tmp_path / "tg_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tg-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[thriftgate.providers]\ntg-test-registers = tg_test_plugin\ntg-test-named = tg_test_plugin:factory\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    kinds = ProviderKinds(modules={})
    assert kinds.factory("tg-test-registers") is EchoProvider
    named = kinds.factory("tg-test-named")
    assert named.__name__ == "factory"
    with pytest.raises(UnknownProviderKind, match="no provider kind 'tg-test-absent'"):
        kinds.factory("tg-test-absent")
