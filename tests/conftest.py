from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Variables that would let a test reach a real provider or change the gateway's configuration.
_CLEARED_PREFIXES = ("THRIFTGATE_",)
_CLEARED = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")


@pytest.fixture(autouse=True)
def _clear_provider_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name in _CLEARED or name.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    yield
