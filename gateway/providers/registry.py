"""Provider kinds as plugins, and the ``Providers`` container the app builds from its settings.

A kind is a name ("openai", "anthropic", "openai_compatible", "local", or a plugin's own) bound to a
factory ``(name, ProviderSettings, ProviderContext) -> Provider``. The built-ins register the same way a
plugin does, by calling ``register_provider_kind`` when their module is imported::

    # my_plugin.py
    from gateway.providers.registry import register_provider_kind
    register_provider_kind("bedrock", BedrockProvider)

A kind's module is imported the first time the kind is looked up: the built-ins from ``BUILTIN_KIND_MODULES``
(``local`` included, whose module lives outside this package's core), anything else from the
``thriftgate.providers`` entry-point group (entry point name = kind, value = the module to import).

A kind nothing registers fails when used, not at start-up (``Settings`` already rejects kinds it does
not know, so this is a kind whose module is absent, e.g. ``local`` before the local engine is installed):
``Providers.from_settings`` logs a warning and puts an ``UnavailableProvider`` in its place, whose ``send``
raises ``UpstreamError`` naming the provider and its kind. ``from_settings(..., strict=True)`` raises
``UnknownProviderKind`` at start-up instead.

The kind → factory table is the one piece of process-wide state here, on purpose: like an import, a
registration happens once and every app in the process sees the same plugins. Tests that need their own
table pass ``kinds=ProviderKinds()`` to ``from_settings``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.errors import UpstreamError
from gateway.providers.backoff import Backoff
from gateway.providers.base import Provider, UpstreamRequest, UpstreamResponse
from gateway.settings import UpstreamHeaderSettings

if TYPE_CHECKING:
    from gateway.settings import ProviderSettings, Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "thriftgate.providers"
BUILTIN_KIND_MODULES: Mapping[str, str] = {
    "openai": "gateway.providers.openai",
    "anthropic": "gateway.providers.anthropic",
    "openai_compatible": "gateway.providers.compat",
    "local": "gateway.providers.local",
}


class UnknownProviderKind(ValueError):
    """A configured provider names a kind that nothing registers (a configuration error)."""


class UnavailableProvider:
    """Stands in for a provider whose kind nothing registers: every ``send`` raises ``UpstreamError``."""

    def __init__(self, name: str, kind: str, reason: str) -> None:
        self.name = name
        self.kind = kind
        self.reason = reason

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        raise UpstreamError(f"provider {self.name!r} (kind {self.kind!r}) is unavailable: {self.reason}")

    async def aclose(self) -> None:
        pass


@dataclass(slots=True)
class ProviderContext:
    """What a provider factory needs beyond its own settings. One context is shared by every provider of
    an app; ``on_retry`` may be set after the providers are built (it is read on each retry)."""

    backoff: Backoff = field(default_factory=Backoff)
    env: Mapping[str, str] = field(default_factory=dict)
    """Where ``api_key_env`` names are looked up (the process environment in the app)."""
    on_retry: Callable[[str, int | BaseException], None] | None = None
    """Metrics hook: called with (provider name, the retried status or exception) before each retry."""
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    """How providers wait between tries (tests pass a recorder to make backoff exact and instant)."""
    rand: Callable[[], float] = random.random
    """Jitter source, a float in [0, 1)."""
    now: Callable[[], float] = time.time
    """Unix time, for an HTTP-date Retry-After."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Shared objects for kinds that need more than HTTP (e.g. the local engine), by name."""
    upstream_headers: UpstreamHeaderSettings = field(default_factory=UpstreamHeaderSettings)
    """Which client headers HTTP providers forward and which upstream headers they pass back."""

    @classmethod
    def from_settings(cls, settings: Settings, env: Mapping[str, str] | None = None) -> ProviderContext:
        """A context with the settings' retry backoff (``retry_backoff_base_s`` / ``retry_backoff_max_s``),
        their ``upstream_headers`` and, in ``extras``, ``local_model_dir`` for the local engine."""
        backoff = Backoff(base_s=settings.retry_backoff_base_s, max_s=settings.retry_backoff_max_s)
        extras: dict[str, Any] = {"local_model_dir": settings.local_model_dir}
        environ = dict(env) if env is not None else {}
        return cls(backoff=backoff, env=environ, extras=extras, upstream_headers=settings.upstream_headers)


ProviderFactory = Callable[[str, "ProviderSettings", ProviderContext], Provider]


class ProviderKinds:
    """kind → factory, filled by registrations and, on a miss, by importing the kind's module."""

    def __init__(self, modules: Mapping[str, str] = BUILTIN_KIND_MODULES) -> None:
        self._factories: dict[str, ProviderFactory] = {}
        self._modules = modules

    def register(self, kind: str, factory: ProviderFactory) -> None:
        """Binds ``kind`` to ``factory``, replacing an earlier binding (a plugin may override a built-in)."""
        self._factories[kind] = factory

    def factory(self, kind: str) -> ProviderFactory:
        """The factory for ``kind``, importing its module first if needed; raises ``UnknownProviderKind``."""
        found = self._factories.get(kind)
        if found is None:
            self._load(kind)
            found = self._factories.get(kind)
        if found is None:
            module = self._modules.get(kind)
            if module is not None:
                raise UnknownProviderKind(f"kind {kind!r} is provided by {module}, which is not installed")
            known = ", ".join(sorted(self._factories)) or "none"
            raise UnknownProviderKind(f"no provider kind {kind!r} is registered (registered: {known})")
        return found

    def _load(self, kind: str) -> None:
        module = self._modules.get(kind)
        if module is not None:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:  # the module exists but one of its own imports is missing
                    raise
        else:
            for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=kind):
                loaded = entry_point.load()  # importing the module registers the kind ...
                if kind not in _KINDS._factories and entry_point.attr and callable(loaded):
                    _KINDS.register(kind, loaded)  # ... or the entry point names the factory itself
        # Modules register with the process-wide table; a private table takes what they registered.
        if self is not _KINDS and kind not in self._factories and kind in _KINDS._factories:
            self._factories[kind] = _KINDS._factories[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self._factories


_KINDS = ProviderKinds()


def register_provider_kind(kind: str, factory: ProviderFactory) -> None:
    """Makes ``kind`` usable in ``Settings.providers``; ``factory(name, settings, context)`` builds one
    provider. Called by each provider module when it is imported (the built-ins included)."""
    _KINDS.register(kind, factory)


class Providers:
    """The configured providers by name. Owns them: ``aclose`` closes every one."""

    def __init__(self, providers: Mapping[str, Provider], context: ProviderContext) -> None:
        self._providers = dict(providers)
        self.context = context

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        env: Mapping[str, str] | None = None,
        *,
        context: ProviderContext | None = None,
        kinds: ProviderKinds | None = None,
        strict: bool = False,
    ) -> Providers:
        """Builds every provider in ``settings.providers``. ``env`` is where ``api_key_env`` is resolved
        (pass ``os.environ`` in the app); ``context`` defaults to one from the settings' backoff and ``env``.
        A kind nothing registers becomes an ``UnavailableProvider`` (``strict``: raises ``UnknownProviderKind``).
        Raises ``ValueError`` for a provider that cannot be built; nothing is connected yet then, so nothing
        needs closing."""
        context = context or ProviderContext.from_settings(settings, env)
        kinds = kinds or _KINDS
        built: dict[str, Provider] = {}
        for name, provider_settings in settings.providers.items():
            kind = str(provider_settings.kind)
            try:
                factory = kinds.factory(kind)
            except UnknownProviderKind as exc:
                if strict:
                    raise UnknownProviderKind(f"provider {name!r}: {exc}") from None
                log.warning("provider %r is unavailable: %s", name, exc)
                built[name] = UnavailableProvider(name, kind, str(exc))
                continue
            built[name] = factory(name, provider_settings, context)
        return cls(built, context)

    def __getitem__(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            raise KeyError(
                f"no provider named {name!r} is configured (configured: {', '.join(self._providers) or 'none'})"
            ) from None

    def get(self, name: str) -> Provider | None:
        return self._providers.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    async def aclose(self) -> None:
        """Closes every provider (their pooled connections), even if one of them fails to close."""
        errors: list[BaseException] = []
        for provider in self._providers.values():
            try:
                await provider.aclose()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
