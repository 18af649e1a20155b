"""The router step's construction from settings (the routing itself: tests/routing, tests/gateway/api)."""

from __future__ import annotations

import pytest

from gateway.config import Catalogue
from gateway.router import Router
from gateway.settings import ModelSettings, ProviderSettings, RoutingSettings, Settings


def settings(**routing: object) -> Settings:
    return Settings(
        providers={"openai": ProviderSettings(kind="openai")},
        models={"small": ModelSettings(provider="openai", model="gpt-4o-mini", tier=1)},
        routing=RoutingSettings(**routing),  # type: ignore[arg-type]
    )


def test_a_catalogue_without_the_default_auto_models_has_no_auto_set() -> None:
    s = settings()
    assert Router(s, Catalogue(s)).config.auto_models == ()


def test_configured_names_must_be_catalogue_models() -> None:
    for bad in (
        {"auto": {"models": ["small", "missing"]}},
        {"fallbacks": {"small": ["missing"]}},
        {"policies": [{"policy": "downgrade", "to": "missing"}]},
        {"local_last_resort": True},
    ):
        s = settings(**bad)
        with pytest.raises(ValueError, match="not a catalogue model"):
            Router(s, Catalogue(s))
