"""Upstream providers behind one protocol (``base.Provider``): OpenAI, Anthropic, any OpenAI-compatible
server, and (registered from ``gateway.providers.local``) the local engine. See ``registry`` for how kinds
are plugged in and how the app builds its ``Providers``."""

from gateway.providers.base import Provider, UpstreamRequest, UpstreamResponse
from gateway.providers.registry import (
    ProviderContext,
    ProviderKinds,
    Providers,
    UnknownProviderKind,
    register_provider_kind,
)

__all__ = [
    "Provider",
    "ProviderContext",
    "ProviderKinds",
    "Providers",
    "UnknownProviderKind",
    "UpstreamRequest",
    "UpstreamResponse",
    "register_provider_kind",
]
