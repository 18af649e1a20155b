"""The gateway's settings: Pydantic models at the edge, built once by ``load_settings`` and passed down.

Layers, lowest to highest precedence:

    defaults  <  YAML file  <  environment (THRIFTGATE_*)

* The YAML file is the explicit ``config_path``, else ``$THRIFTGATE_CONFIG``, else ``./thriftgate.yaml`` if
  it exists. An explicit or ``$THRIFTGATE_CONFIG`` path that does not exist is an error.
* Environment variables use the prefix ``THRIFTGATE_`` and ``__`` between nesting levels:
  ``THRIFTGATE_PORT=9000``, ``THRIFTGATE_PROVIDERS__OPENAI__BASE_URL=http://...``,
  ``THRIFTGATE_MODELS__GPT-4O__PRICES__INPUT=2.5``. Names are case-insensitive; a key matches an existing
  provider or model key case-insensitively, else it is lower-cased. A value starting with ``{`` or ``[``
  is parsed as JSON.
* ``providers`` and ``models`` merge over the defaults key by key and field by field, so a file that adds
  one model keeps the default catalogue. ``replace_default_models: true`` (or
  ``replace_default_providers: true``) at the top of the file drops the defaults instead, and a key set
  to ``null`` (``gpt-4o: null``) removes that one default.

``Settings(...)`` itself reads nothing from the environment: only ``load_settings`` does, so tests that
build ``Settings`` by hand are deterministic.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "THRIFTGATE_"
ENV_NESTED_DELIMITER = "__"
CONFIG_ENV = "THRIFTGATE_CONFIG"
DEFAULT_CONFIG_FILE = "thriftgate.yaml"

BUILTIN_PROVIDER_KINDS = ("openai", "anthropic", "openai_compatible", "local")
# A kind is a built-in or a plugin's (registered through gateway.providers.registry); a kind nothing
# registers is reported when the providers are built, not here, so plugins can be configured.
ProviderKind = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}

LOCAL_MODEL_ALIAS = "thriftgate-local"
LOCAL_MODEL_ID = "smollm2-135m-instruct"

# The default catalogue: alias == upstream id. Every one of these is priced by genai-prices
# (tests/gateway/test_config.py checks it), except the local model, which is free.
DEFAULT_OPENAI_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "o3",
    "o3-mini",
    "o4-mini",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-5.1",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
DEFAULT_ANTHROPIC_MODELS: tuple[str, ...] = (
    "claude-opus-4-1",
    "claude-opus-4-1-20250805",
    "claude-opus-4-5",
    "claude-sonnet-4-5",
    "claude-sonnet-4-5-20250929",
    "claude-sonnet-4-0",
    "claude-sonnet-4-20250514",
    "claude-haiku-4-5",
    "claude-haiku-4-5-20251001",
    "claude-3-5-haiku-latest",
    "claude-3-5-haiku-20241022",
)


class SettingsError(ValueError):
    """The settings could not be loaded: the message names the field and where its value came from."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderSettings(_Strict):
    """One upstream. ``base_url`` defaults to the kind's public endpoint (required for openai_compatible)."""

    kind: ProviderKind
    base_url: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    """Options that belong to one provider kind (e.g. the local engine's ``model_dir``, ``variant``,
    ``num_slots``, ``max_seq_len``, ``speculative``, ``threads``); ignored by kinds that take none."""

    @model_validator(mode="after")
    def _default_base_url(self) -> ProviderSettings:
        if self.base_url is None:
            if self.kind == "openai_compatible":
                raise ValueError("base_url is required for an openai_compatible provider")
            self.base_url = DEFAULT_BASE_URLS.get(self.kind)
        return self

    def resolved_api_key(self, env: Mapping[str, str]) -> str | None:
        """The key to send upstream: ``api_key`` if set, else ``env[api_key_env]``; None when neither is set
        or the value is empty. Reads ``env`` only."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return env.get(self.api_key_env) or None
        return None


class ModelPriceOverride(_Strict):
    """USD per million tokens; any subset. A field set here wins over genai-prices for that field."""

    input: float | None = Field(default=None, ge=0)
    output: float | None = Field(default=None, ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_write_5m: float | None = Field(default=None, ge=0)
    cache_write_1h: float | None = Field(default=None, ge=0)


class DeploymentSettings(_Strict):
    """One more place that serves a model: another provider entry (another key or base URL), the same
    upstream model id unless ``model`` says otherwise, with its own request and token rate limits."""

    provider: str
    model: str | None = None
    rpm: int | None = Field(default=None, ge=1)
    """Requests a minute this deployment accepts (None: no limit known)."""
    tpm: int | None = Field(default=None, ge=1)
    """Tokens a minute (input estimate plus output cap) this deployment accepts."""


class ModelSettings(_Strict):
    """One catalogue entry: an alias clients may send, and where it goes. The capability fields are
    what the router checks before it sends a request here (unknown: None, never refused for it)."""

    provider: str
    model: str
    prices: ModelPriceOverride | None = None
    price_id: str | None = None
    tier: int | None = Field(default=None, ge=0)
    """Size class for routing: 0 the local model, 1 small, 2 medium, 3 large, 4 frontier. None: never
    chosen by the router on its own (only when named, or as a configured fallback)."""
    context_window: int | None = Field(default=None, ge=1)
    """Input plus output tokens the model accepts."""
    max_output: int | None = Field(default=None, ge=1)
    """The largest output cap the model accepts."""
    tools: bool = True
    images: bool = True
    json_output: bool = True
    """Whether it accepts a ``response_format`` (JSON object or schema)."""
    rpm: int | None = Field(default=None, ge=1)
    """Rate limits of the first deployment (``provider`` / ``model`` above)."""
    tpm: int | None = Field(default=None, ge=1)
    deployments: list[DeploymentSettings] = Field(default_factory=list)
    """More deployments of the same model, load-balanced with the first (see ``routing``)."""


# Client request headers an upstream receives, and upstream response headers a client receives, by default.
DEFAULT_FORWARD_REQUEST_HEADERS: tuple[str, ...] = (
    "content-type",
    "accept",
    "user-agent",
    "idempotency-key",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
)
DEFAULT_PASS_RESPONSE_HEADERS: tuple[str, ...] = (
    "content-type",
    "content-disposition",
    "cache-control",
    "x-request-id",
    "request-id",
    "openai-processing-ms",
    "openai-version",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
)
_HEADER_NAME = re.compile(r"^[!#$%&'+.^_`|~0-9a-z-]+\*?$")


class UpstreamHeaderSettings(_Strict):
    """Which headers cross the gateway between clients and upstreams: lower-case names, a trailing ``*``
    matches a prefix (``x-ratelimit-*``). Everything else is dropped, in both directions, by every HTTP
    provider: the operator's headers (``openai-organization``, ``openai-project``,
    ``anthropic-organization-id``, ``set-cookie``, the organisation-wide ``x-ratelimit-*`` and
    ``anthropic-ratelimit-*``) never reach a tenant, and a client cannot choose the organisation or project
    that is billed (set those in a provider's ``headers``). Credentials, hop-by-hop and framing headers are
    never forwarded, whatever these lists say."""

    forward_request: list[str] = Field(default_factory=lambda: list(DEFAULT_FORWARD_REQUEST_HEADERS))
    """Client request headers sent upstream."""
    pass_response: list[str] = Field(default_factory=lambda: list(DEFAULT_PASS_RESPONSE_HEADERS))
    """Upstream response headers passed back to the client."""

    @field_validator("forward_request", "pass_response")
    @classmethod
    def _header_names(cls, names: list[str]) -> list[str]:
        out = [n.strip().lower() for n in names]
        bad = [n for n in out if not _HEADER_NAME.match(n)]
        if bad:
            raise ValueError(f"not header names (or name prefixes ending in '*'): {bad}")
        return out


class MetricsSettings(_Strict):
    """Who may read ``/metrics``. By default: with a master key (or ``token``) configured, requests that
    present it as ``Authorization: Bearer``; with neither, clients on the loopback interface only."""

    public: bool = False
    """Serve ``/metrics`` to anyone who can reach the gateway."""
    token: SecretStr | None = None
    """A bearer token for scrapers, accepted besides the master key (so a scraper need not hold it)."""


def default_providers() -> dict[str, ProviderSettings]:
    return {
        "openai": ProviderSettings(kind="openai", api_key_env="OPENAI_API_KEY"),
        "anthropic": ProviderSettings(kind="anthropic", api_key_env="ANTHROPIC_API_KEY"),
        "local": ProviderSettings(kind="local"),
    }


# What the default catalogue's models accept, from the providers' model pages (2026):
# alias -> (tier, context window, max output, tools, images, json output).
_CAPS: dict[str, tuple[int | None, int, int, bool, bool, bool]] = {
    "gpt-4o": (3, 128_000, 16_384, True, True, True),
    "gpt-4o-mini": (1, 128_000, 16_384, True, True, True),
    "gpt-4.1": (3, 1_047_576, 32_768, True, True, True),
    "gpt-4.1-mini": (2, 1_047_576, 32_768, True, True, True),
    "gpt-4.1-nano": (1, 1_047_576, 32_768, True, True, True),
    "o3": (4, 200_000, 100_000, True, True, True),
    "o3-mini": (2, 200_000, 100_000, True, False, True),
    "o4-mini": (2, 200_000, 100_000, True, True, True),
    "gpt-5": (4, 400_000, 128_000, True, True, True),
    "gpt-5-mini": (2, 400_000, 128_000, True, True, True),
    "gpt-5-nano": (1, 400_000, 128_000, True, True, True),
    "gpt-5.1": (4, 400_000, 128_000, True, True, True),
    "text-embedding-3-small": (None, 8_191, 1, False, False, False),
    "text-embedding-3-large": (None, 8_191, 1, False, False, False),
    "claude-opus-4-1": (4, 200_000, 32_000, True, True, True),
    "claude-opus-4-1-20250805": (4, 200_000, 32_000, True, True, True),
    "claude-opus-4-5": (4, 200_000, 64_000, True, True, True),
    "claude-sonnet-4-5": (3, 200_000, 64_000, True, True, True),
    "claude-sonnet-4-5-20250929": (3, 200_000, 64_000, True, True, True),
    "claude-sonnet-4-0": (3, 200_000, 64_000, True, True, True),
    "claude-sonnet-4-20250514": (3, 200_000, 64_000, True, True, True),
    "claude-haiku-4-5": (2, 200_000, 64_000, True, True, True),
    "claude-haiku-4-5-20251001": (2, 200_000, 64_000, True, True, True),
    "claude-3-5-haiku-latest": (1, 200_000, 8_192, True, True, True),
    "claude-3-5-haiku-20241022": (1, 200_000, 8_192, True, True, True),
}
LOCAL_CONTEXT_WINDOW = 4096
"""The local engine's sequence length (``max_seq_len``; SmolLM2-135M itself was trained to 8192)."""


def _with_caps(alias: str, entry: ModelSettings) -> ModelSettings:
    caps = _CAPS.get(alias)
    if caps is None:
        return entry
    tier, ctx, out, tools, images, json_output = caps
    return entry.model_copy(
        update={
            "tier": tier,
            "context_window": ctx,
            "max_output": out,
            "tools": tools,
            "images": images,
            "json_output": json_output,
        }
    )


def default_models() -> dict[str, ModelSettings]:
    models = {m: _with_caps(m, ModelSettings(provider="openai", model=m)) for m in DEFAULT_OPENAI_MODELS}
    models |= {
        m: _with_caps(m, ModelSettings(provider="anthropic", model=m)) for m in DEFAULT_ANTHROPIC_MODELS
    }
    models[LOCAL_MODEL_ALIAS] = ModelSettings(
        provider="local",
        model=LOCAL_MODEL_ID,
        prices=ModelPriceOverride(input=0, output=0, cache_read=0, cache_write_5m=0, cache_write_1h=0),
        tier=0,
        context_window=LOCAL_CONTEXT_WINDOW,
        max_output=LOCAL_CONTEXT_WINDOW,
        tools=False,
        images=False,
        json_output=False,
    )
    return models


class PolicySettings(_Strict):
    """One routing policy and the requests it applies to: those of the listed keys (names or ids) and/or
    for the listed models (as the client named them); a list left out matches everything. The first rule
    that matches a request applies; a request no rule matches is routed as ``default_policy`` says.

    * ``auto``: the router picks among ``routing.auto.models`` whatever model was named.
    * ``downgrade``: opt-in downgrade of the named model: a request the classifier finds simple goes to
      ``to`` (a cheaper model), the rest stay on the named model.
    * ``budget``: once the key has spent ``at`` of its budget, requests go to ``to`` (or the cheapest
      capable model of a lower tier in the auto set).
    * ``pinned``: exactly the named model: no routing and no fallback to another model.
    * ``requested``: the named model, with its configured fallbacks (the default)."""

    keys: list[str] | None = None
    models: list[str] | None = None
    policy: Literal["auto", "downgrade", "budget", "pinned", "requested"]
    to: str | None = None
    at: float = Field(default=0.8, gt=0, le=1)


class AutoSettings(_Strict):
    """The model name ``alias`` (``auto``): the router picks among ``models``, the strongest tier for
    requests its classifier finds hard, the cheapest capable one for the rest."""

    alias: str = "auto"
    models: list[str] = Field(default_factory=lambda: ["gpt-4o-mini", "gpt-4o"])
    strong_share: float = Field(default=0.5, ge=0, le=1)
    """The share of requests the classifier sends to the strongest tier (its threshold is the score
    quantile that gives this share on the data it was trained on)."""
    classifier: str | None = None
    """A classifier file (``.npz``) built by ``python -m routing.train``; None: the one shipped."""


class StickySettings(_Strict):
    """A conversation (same key, system prompt and first user turn) stays on the tier it has reached, so
    the provider's prompt cache for its prefix is not thrown away."""

    enabled: bool = True
    max_conversations: int = Field(default=10_000, ge=1)
    ttl_s: float = Field(default=3600.0, gt=0)


class BreakerSettings(_Strict):
    """One circuit breaker per deployment: ``failures`` consecutive failures open it; after
    ``cooldown_s`` it lets ``probes`` requests through (half-open); a success closes it."""

    failures: int = Field(default=5, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)
    probes: int = Field(default=1, ge=1)


class RoutingSettings(_Strict):
    """Model routing and resilience (``routing/``, wired in by ``gateway/router.py``)."""

    auto: AutoSettings = Field(default_factory=AutoSettings)
    default_policy: Literal["requested", "auto", "pinned"] = "requested"
    policies: list[PolicySettings] = Field(default_factory=list)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    """Model alias -> the aliases tried in order when every deployment of it fails."""
    local_last_resort: bool = False
    """Append ``local_model`` to every chain (when it can hold the request)."""
    local_model: str = LOCAL_MODEL_ALIAS
    long_conversation_turns: int = Field(default=16, ge=1)
    """A conversation with at least this many messages is routed like a hard request."""
    sticky: StickySettings = Field(default_factory=StickySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    latency_ewma_alpha: float = Field(default=0.2, gt=0, le=1)
    """Weight of the newest time-to-first-byte in each deployment's latency average."""


class PassthroughRoute(_Strict):
    """One endpoint the passthrough forwards (exact method and path). ``model``: ``required`` (the body's
    ``model`` must be a catalogue model the key may use; it picks the provider and is rewritten to the
    upstream id), or ``none`` (not checked; ``provider`` says where it goes). ``metering``: ``openai_chat``
    (usage read like chat completions', streams included), ``free`` (costs nothing) or ``unpriced``
    (cost unknown: refused to keys with a budget unless ``budget.allow_unpriced``)."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(pattern=r"^/v1(/[A-Za-z0-9_-]+)+$")
    model: Literal["required", "none"] = "required"
    provider: str | None = None
    metering: Literal["openai_chat", "free", "unpriced"] = "unpriced"


def default_passthrough_routes() -> list[PassthroughRoute]:
    return [
        PassthroughRoute(method="POST", path="/v1/completions", model="required", metering="openai_chat"),
        PassthroughRoute(
            method="POST", path="/v1/moderations", model="none", provider="openai", metering="free"
        ),
    ]


class PassthroughSettings(_Strict):
    """What the passthrough forwards beyond the gateway's own endpoints. Anything not listed is refused
    (404): stored objects (files, batches, responses, stored completions ...) live under the operator's
    provider key and would be shared by every tenant."""

    routes: list[PassthroughRoute] = Field(default_factory=default_passthrough_routes)


class LogWriterSettings(_Strict):
    """How the request log is written (``gateway.logwriter``), beyond ``log_batch_size`` and
    ``log_flush_interval_s``."""

    max_pending: int = Field(default=100_000, ge=1)
    """Rows kept in memory while the database is slow or down; the oldest beyond this are spilled to
    ``<data_dir>/spill``."""
    replay_spill: bool = True
    """Replay spilled rows automatically once the database keeps up again."""
    unhealthy_after_failures: int = Field(default=3, ge=1)
    """``/readyz`` reports the writer unhealthy after this many consecutive failed writes..."""
    behind_after_s: float = Field(default=30.0, gt=0)
    """... or while rows have waited longer than this (seconds), or were spilled this recently."""
    retry_max_s: float = Field(default=30.0, gt=0)
    """While the database fails, writes are retried with a backoff doubling from 0.5 s up to this."""


class BudgetSettings(_Strict):
    """How budgets hold money for requests in flight (``gateway.budgets``)."""

    default_output_tokens: int = Field(default=1024, ge=0)
    """The output a request without its own cap is assumed to use, for its hold."""
    allow_unpriced: bool = False
    """Whether a key with a budget may use a model (or passthrough endpoint) of unknown price."""


class DashboardSettings(_Strict):
    """The admin dashboard (``/admin``), its reports and the retention of raw request-log rows."""

    session_ttl_s: int = Field(default=12 * 3600, ge=60)
    """How long a dashboard login (session cookie) lasts."""
    retention_days: float | None = Field(default=None, gt=0)
    """Raw request-log rows older than this are deleted (the hourly rollups are kept); None keeps them all."""
    prune_interval_s: float = Field(default=3600.0, gt=0)
    """How often the pruner runs when ``retention_days`` is set."""
    live_interval_s: float = Field(default=5.0, gt=0)
    """How often the routing and local-engine panels' live series (breakers, engine queue and tokens per
    second) is sampled; the last ``live_samples`` samples are kept in memory."""
    live_samples: int = Field(default=720, ge=1, le=100_000)


class BatchSettings(_Strict):
    """Batch jobs (``/v1/files``, ``/v1/batches``, ``/v1/messages/batches``) and the worker that runs them
    (``gateway.batch``)."""

    enabled: bool = True
    """Serve the batch endpoints and run the worker in this process."""
    data_dir: str = "./data/files"
    """Where uploaded and result files are stored (their bytes never live in the database)."""
    max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_items: int = Field(default=50_000, ge=1)
    """The most requests one job may hold (OpenAI's limit)."""
    completion_window_s: float = Field(default=86_400.0, gt=0)
    """How long a job may run before it expires (providers: 24 hours)."""
    provider_batch: bool = True
    """Send items for OpenAI and Anthropic models to the provider's own batch API (discounted)."""
    discount: float = Field(default=0.5, ge=0, le=1)
    """The price of a request sent through a provider's batch API, as a fraction of the live price."""
    upload_max_items: int = Field(default=2000, ge=1)
    """The most items one upstream batch carries."""
    poll_interval_s: float = Field(default=5.0, gt=0)
    """How often upstream batches are polled."""
    tick_s: float = Field(default=0.5, gt=0)
    """How often the worker looks for work when it found none."""
    claim_size: int = Field(default=500, ge=1)
    """Items claimed per database round trip."""
    lease_s: float = Field(default=60.0, gt=0)
    """A claim not renewed for this long is taken to belong to a dead worker."""
    fanout_concurrency: int = Field(default=8, ge=1)
    """Items in flight at once for targets without a batch API (the local engine, other providers)."""
    fanout_rps: float | None = Field(default=None, gt=0)
    """The most fan-out requests started per second (None: only the concurrency bounds them)."""
    max_attempts: int = Field(default=3, ge=1)
    """Tries of an item refused before reaching a model (rate limits: 429)."""
    embeddings_window_ms: float = Field(default=0.0, ge=0)
    """Live ``/v1/embeddings`` requests for one model arriving within this window are sent upstream as
    one request and split back (``gateway.coalescer``). 0: off (a lone request would wait the window)."""
    embeddings_max_inputs: int = Field(default=2048, ge=1)
    """The most inputs one coalesced embeddings request carries (OpenAI's limit)."""


# Anthropic's minimum cacheable prompt by model id prefix (the longest match wins; others: 1,024 tokens).
DEFAULT_PREFIX_MIN_TOKENS: dict[str, int] = {
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
}


class PrefixSettings(_Strict):
    """The prompt-prefix planner (``cache/prefix.py``): provider prompt-cache markers where they pay."""

    enabled: bool = True
    min_tokens: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_PREFIX_MIN_TOKENS))
    """Shortest prefix each model caches, by model id prefix; merges over the defaults."""
    default_min_tokens: int = Field(default=1024, ge=1)
    chars_per_token: float = Field(default=4.0, gt=0)
    """How prompt lengths are estimated (an over-estimate only places a marker the provider ignores)."""
    openai_cache_key: bool = True
    """Set ``prompt_cache_key`` on OpenAI requests that carry none, from the tenant and stable prefix."""
    tracker_entries: int = Field(default=50_000, ge=1)
    """Prefixes remembered (tenant, prefix hash), least recently seen forgotten first."""

    @field_validator("min_tokens", mode="before")
    @classmethod
    def _merge_min_tokens(cls, value: Any) -> Any:
        return {**DEFAULT_PREFIX_MIN_TOKENS, **value} if isinstance(value, dict) else value


class CacheRule(_Strict):
    """Overrides for one model (as the client names it) or one virtual key; unset fields inherit. Where a
    model's and a key's rule both set a field, the stricter value wins (off beats on, the shorter TTL)."""

    enabled: bool | None = None
    ttl_s: float | None = Field(default=None, gt=0)
    cache_sampled: bool | None = None
    semantic: bool | None = None


class SemanticCacheSettings(_Strict):
    """The semantic cache (``cache.semantic``): answers a rephrased question from a stored answer when the
    last user turn means the same and everything else matches exactly."""

    enabled: bool = False
    """Off by default: it loads the MiniLM embedder (about 90 MB, a second at start)."""
    max_wrong_hit_rate: float = Field(default=0.08, gt=0, lt=1)
    """The operator's error budget: the largest share of semantic hits that may be wrong answers. The
    guard's acceptance threshold is the loosest one whose wrong-hit rate, measured on held-out labelled
    pairs with a 95% upper bound, stays within it (``cache.guard``). Those pairs include QQP's noisy
    labels, so the measured rate overstates real wrong answers. The default, 0.08, is the issue's
    precision target (0.92) as a budget: it serves 0.1% of our held-out trap pairs and 61.9% of our
    paraphrases (QQP precision 0.934 at recall 0.222; 0.978-0.989 with the label errors we read counted
    right); 0.10 serves 0.4% and 70.9% (0.897 / 0.351); 0.05 serves 0% and 49.8% (0.963 / 0.100)
    (``bench/results/semantic_cache.md``)."""
    online_budget: bool = True
    """Hold the budget online: candidates the guard scores below its threshold (misses anyway) and a share
    ``explore_rate`` of those above it are sent upstream, their fresh answers compared with the stored
    ones, and the threshold moved on that evidence (``cache.budget``). Off: the offline threshold stays."""
    explore_rate: float = Field(default=0.02, ge=0, le=1)
    """The share of would-be semantic hits sent upstream as probes (each costs one paid call)."""
    per_entry: bool = True
    """Per-entry thresholds (``cache.threshold``, vCache's idea): each stored entry's own probes move its
    threshold from the global one, lower where they were right, higher where one was wrong; the budget
    still holds over all probes. In memory: a restart starts every entry at the global threshold again.
    Needs ``online_budget``."""
    per_entry_spread: float = Field(default=0.4, gt=0, le=1)
    """How far an entry's threshold may move from the global one on its own evidence (the prior's
    standard deviation, in guard-score units). 0.4: the most hits within the budget on the train stream of
    ``bench/semantic_cache.py`` (of 0.05-0.4)."""
    min_cosine: float = Field(default=0.80, ge=0, le=1)
    """Candidates below this cosine are never considered (the guard decides above it)."""
    max_question_tokens: int = Field(default=64, ge=1, le=254)
    """Only a last user turn of at most this many MiniLM WordPiece tokens is looked up and stored by the
    semantic cache; longer ones get the exact cache only. 64: the guard's calibration pairs (QQP
    questions) are 99.9% within it, so past it the error budget is not measured; a long prompt's
    embedding also costs ~20x a short question's on the request's path. At most 254 (MiniLM's window:
    past it the vector reads nothing). See ``cache.semantic``."""
    batch_window_ms: float = Field(default=0.0, ge=0)
    """Lookups that arrive while a batch is being embedded always go together in the next batch; a window
    above 0 also holds each batch that long for company (more batching, more latency)."""
    max_batch: int = Field(default=32, ge=1)


class EmbedderSettings(_Strict):
    """The sentence embedder (all-MiniLM-L6-v2) of the semantic cache (the router's complexity score reads
    its own static embedding, ``routing.static_embedding``). Loaded when the gateway starts if the semantic
    cache is on (``preload``), else on the first request that needs a vector; each request's last user turn
    is embedded at most once, in a worker thread, micro-batched with concurrent requests
    (``cache.semantic``'s ``max_batch`` and ``batch_window_ms``)."""

    runtime: Literal["onnx", "torch"] = "onnx"
    """``onnx``: onnxruntime, the model exported by our code from the packaged files into ``model_dir``
    on first use (seconds, once; ``thriftgate cache build-embedder`` does it ahead). Same vectors as
    ``torch`` (sentence-transformers; cosine >= 0.99999 over the QQP dev texts) at about a third of the
    CPU time (``bench/results/semantic_cache.md``)."""
    variant: Literal["fp32", "int8", "int8-mixed", "int8-blocks"] = "fp32"
    """``int8`` (onnx only): dynamic int8 weights, faster but not the same vectors (see the benchmark:
    it moves the cosines the guard was calibrated on). ``int8-mixed``: int8 with the ten most sensitive
    MatMuls kept in float32 (``cache.onnx_embedder.FLOAT32_NODES``): ~1.4x fp32's speed, and the cache
    decides within a few pairs of fp32 (``bench/results/embedder_variants.md``). ``int8-blocks``: every
    linear weight 8-bit in blocks of 32, activations quantised per block of 32 (``MatMulNBits``): the
    closest to fp32 of the three (2 of 2,240 trap/paraphrase pairs decided differently) at ~0.8x its CPU.
    The router does not use
    this embedder (it has its own static one). Changing the variant changes every vector: the variant is
    part of every semantic scope, so entries stored under another variant are never compared with the new
    vectors (they miss and age out; exact hits are unaffected)."""
    threads: int = Field(default=2, ge=1)
    """Intra-op threads per forward pass. Two, measured on 2 cores: one lookup at 100k entries 4.6 ms p50
    against 7.2 ms on one thread (``bench/results/semantic_cache_latency.md``) and up to 1.5x the throughput of
    micro-batches. The price is CPU: onnxruntime's second thread spins between calls, so at a steady 50
    short questions a second each costs ~30 ms of CPU against ~7.8 ms on one thread (1.2 cores busy against
    0.3; measured 2026-12-01, AMD EPYC). The balanced headline's p50 is the same either way (1,121 against
    1,123 ms, one run each). One thread where the cores have other work."""
    model_dir: str = ""
    """Empty (or null): ``<data_dir>/embedder``."""
    preload: bool = True
    """With the semantic cache on, load the embedder while the gateway starts, so that no request waits
    for it. An onnx model already exported (``thriftgate cache build-embedder``) loads before the gateway
    serves (~0.3 s); one that must be exported first (a fresh ``model_dir``: seconds to a minute of CPU)
    is exported in a child process while the gateway serves, and until it is ready semantic lookups are
    skipped (those requests go upstream as misses; exact hits are unaffected). ``false``: the first
    request that needs a vector loads it, and waits (with every concurrent lookup) for the export."""

    @field_validator("model_dir", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any) -> Any:
        return "" if value is None else value


class CacheSettings(_Strict):
    """The exact and semantic answer caches (``gateway.caching``)."""

    enabled: bool = False
    """Off by default: a cache changes what clients get back (a stored answer instead of a fresh one)."""
    ttl_s: float = Field(default=3600.0, gt=0)
    max_ttl_s: float = Field(default=7 * 86400.0, gt=0)
    """The longest TTL a client may ask for with ``x-thriftgate-cache-ttl``."""
    max_entries: int = Field(default=100_000, ge=1)
    """Entries held in memory (least recently used evicted first); the database table keeps the newest
    this many (trimmed, and expired rows deleted, every 30 s)."""
    cache_sampled: bool = False
    """Cache requests that sample (temperature above 0, or unset: the providers' default is 1)."""
    key_groups: dict[str, list[str]] = Field(default_factory=dict)
    """Named groups of virtual key ids that share one cache namespace (by default each key has its own)."""
    models: dict[str, CacheRule] = Field(default_factory=dict)
    keys: dict[str, CacheRule] = Field(default_factory=dict)
    sync_interval_s: float = Field(default=1.0, gt=0)
    """How often entries written by other replicas are loaded (and purges applied, hit counts saved)."""
    semantic: SemanticCacheSettings = Field(default_factory=SemanticCacheSettings)


class ContentLogSettings(_Strict):
    """Opt-in content logging (``gateway.content``): each chat request's body and the answer's text, kept
    beside its log row for ``thriftgate replay`` and the dashboard. Off by default: it stores your users'
    prompts and answers in the database (see the module docstring of ``gateway.content``)."""

    enabled: bool = False
    max_chars: int = Field(default=32_000, ge=1, le=1_000_000)
    """The request body and the answer are each cut at this many characters (the row is then marked
    truncated, and replay skips it)."""


class Settings(BaseSettings):
    """Everything the gateway is configured with. Build it with ``load_settings`` (see the module docstring)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: str = "./data"
    """Where the gateway keeps its files: the SQLite database (unless ``database_url`` is set), the
    request log's ``spill/`` and ``quarantine/`` folders and the local engine's ``models/``."""
    database_url: str = ""
    """Empty (or null): SQLite at ``<data_dir>/thriftgate.db``."""
    master_key: SecretStr | None = None
    require_virtual_key: bool | None = None
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    retry_backoff_base_s: float = Field(default=0.25, ge=0)
    retry_backoff_max_s: float = Field(default=8.0, ge=0)
    key_refresh_s: float = Field(default=5.0, gt=0)
    key_change_poll_s: float = Field(default=0.2, gt=0)
    """SQLite: how often the key table is checked for changes made by other processes (revocations)."""
    log_batch_size: int = Field(default=2000, ge=1)
    log_flush_interval_s: float = Field(default=0.5, gt=0)
    log_level: str = "INFO"
    log_json: bool = True
    local_model_dir: str = ""
    """Empty (or null): ``<data_dir>/models``."""
    log_writer: LogWriterSettings = Field(default_factory=LogWriterSettings)
    passthrough: PassthroughSettings = Field(default_factory=PassthroughSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    translation_default_max_tokens: int = Field(default=4096, ge=1)
    """The output cap sent to an Anthropic model serving an OpenAI-format request that set none
    (Anthropic requires one)."""
    allow_background_responses: bool = False
    """Whether ``background: true`` Responses requests are forwarded (their usage is known only when
    they are retrieved later, so the gateway cannot meter them)."""
    providers: dict[str, ProviderSettings] = Field(default_factory=default_providers)
    models: dict[str, ModelSettings] = Field(default_factory=default_models)
    upstream_headers: UpstreamHeaderSettings = Field(default_factory=UpstreamHeaderSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    prefix: PrefixSettings = Field(default_factory=PrefixSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    content_log: ContentLogSettings = Field(default_factory=ContentLogSettings)
    config_path: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment is layered by load_settings (over the YAML file), never read implicitly.
        return (init_settings,)

    @field_validator("database_url", "local_model_dir", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any) -> Any:
        return "" if value is None else value

    @model_validator(mode="after")
    def _paths_follow_data_dir(self) -> Settings:
        if not self.database_url:
            self.database_url = sqlite_url(os.path.join(self.data_dir, "thriftgate.db"))
        if not self.local_model_dir:
            self.local_model_dir = os.path.join(self.data_dir, "models")
        return self

    @property
    def embedder_dir(self) -> Path:
        """Where the exported embedding model lives: ``embedder.model_dir`` or ``<data_dir>/embedder``."""
        return Path(self.embedder.model_dir or os.path.join(self.data_dir, "embedder"))

    @property
    def spill_dir(self) -> Path:
        """Request-log rows waiting for the database: ``<data_dir>/spill/<database_tag>``. Each database
        has its own folder: rows spilled for one database are never replayed into another (two gateways
        sharing a data directory, a database URL changed between runs)."""
        return Path(self.data_dir) / "spill" / database_tag(self.database_url)

    @property
    def quarantine_dir(self) -> Path:
        """Request-log rows the database refused: ``<data_dir>/quarantine``."""
        return Path(self.data_dir) / "quarantine"

    @model_validator(mode="after")
    def _models_use_configured_providers(self) -> Settings:
        for alias, model in self.models.items():
            if model.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none"
                raise ValueError(
                    f"model {alias!r} uses provider {model.provider!r}, which is not configured "
                    f"(configured providers: {known})"
                )
        return self

    @model_validator(mode="after")
    def _deployments_use_configured_providers(self) -> Settings:
        for alias, model in self.models.items():
            for dep in model.deployments:
                if dep.provider not in self.providers:
                    raise ValueError(
                        f"model {alias!r}: deployment provider {dep.provider!r} is not configured"
                    )
        return self

    @property
    def virtual_key_required(self) -> bool:
        """Whether clients must present a virtual key: ``require_virtual_key``, else whether a master key is set."""
        if self.require_virtual_key is not None:
            return self.require_virtual_key
        return self.master_key is not None


def database_tag(url: str) -> str:
    """A short, stable name for the database behind ``url``, for file names: the backend and a hash of
    where it lives (a SQLite file by its absolute path, so ``./data/x.db`` and the same file named
    absolutely agree; a server by host, port, database and user, never the password or the driver).
    Pure but for resolving a relative SQLite path against the working directory."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database or ":memory:"
        where = db if db == ":memory:" or db.startswith("file:") else str(Path(db).expanduser().resolve())
    else:
        where = f"{parsed.username or ''}@{parsed.host or ''}:{parsed.port or ''}/{parsed.database or ''}"
    digest = hashlib.sha256(f"{backend}|{where}".encode()).hexdigest()[:12]
    return f"{backend}-{digest}"


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of the SQLite database file at ``path`` (relative paths stay relative)."""
    return f"sqlite+aiosqlite:///{Path(path).as_posix() if isinstance(path, Path) else path}"


def load_settings(config_path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from defaults, the YAML file and the environment (``env``, default ``os.environ``;
    a mapping passed here fully replaces ``os.environ``). Reads the file; mutates nothing.

    Raises ``SettingsError`` naming the field and the file or variable it came from.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    path = _find_config_file(config_path, environ)
    file_data = _read_yaml(path) if path is not None else {}
    replace_models = _pop_flag(file_data, "replace_default_models", path)
    replace_providers = _pop_flag(file_data, "replace_default_providers", path)

    data: dict[str, Any] = {
        "providers": {} if replace_providers else _dump(default_providers()),
        "models": {} if replace_models else _dump(default_models()),
    }
    _deep_merge(data, file_data)
    env_data = _env_layer(environ, data)
    _deep_merge(data, env_data)
    if path is not None:
        data["config_path"] = str(path)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, path, file_data, env_data)) from None


def _find_config_file(config_path: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    if config_path is not None:
        path = Path(config_path)
    elif environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    else:
        default = Path(DEFAULT_CONFIG_FILE)
        return default.resolve() if default.is_file() else None
    if not path.is_file():
        raise SettingsError(f"config file {str(path)!r} does not exist")
    return path.resolve()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(
            f"{path}: the top level must be a mapping of settings, got {type(loaded).__name__}"
        )
    return loaded


def _pop_flag(data: dict[str, Any], name: str, path: Path | None) -> bool:
    value = data.pop(name, False)
    if not isinstance(value, bool):
        raise SettingsError(f"invalid settings:\n  {name}: must be true or false, got {value!r} (in {path})")
    return value


def _dump(entries: Mapping[str, BaseModel]) -> dict[str, Any]:
    return {
        key: _unsecret(value.model_dump(exclude_defaults=True, exclude_none=True))
        for key, value in entries.items()
    }


def _unsecret(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _unsecret(v) for k, v in value.items()}
    return value


def _deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> None:
    """Merge ``overlay`` into ``base`` in place: mappings merge by key, a None under providers/models
    deletes the key, anything else replaces."""
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value
    for section in ("providers", "models"):
        entries = base.get(section)
        if section in overlay and isinstance(entries, dict):
            for key in [k for k, v in entries.items() if v is None]:
                del entries[key]


def _env_layer(environ: Mapping[str, str], current: Mapping[str, Any]) -> dict[str, Any]:
    """The THRIFTGATE_* variables as a nested mapping of raw values (validated later with the rest)."""
    fields = set(Settings.model_fields) - {"config_path"}
    layer: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        parts = name[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER)
        if parts[0].lower() not in fields or not all(parts):
            continue
        node: dict[str, Any] = layer
        existing: Any = current
        for depth, part in enumerate(parts):
            key = _match_key(part, existing)
            existing = existing.get(key) if isinstance(existing, Mapping) else None
            if depth == len(parts) - 1:
                node[key] = _parse_env_value(raw)
            else:
                node = node.setdefault(key, {})
    return layer


def _match_key(part: str, existing: Any) -> str:
    if isinstance(existing, Mapping):
        for key in existing:
            if isinstance(key, str) and key.lower() == part.lower():
                return key
    return part.lower()


def _parse_env_value(raw: str) -> Any:
    if raw.lstrip().startswith(("{", "[")):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _describe(
    exc: ValidationError, path: Path | None, file_data: Mapping[str, Any], env_data: Mapping[str, Any]
) -> str:
    lines = ["invalid settings:"]
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        field = ".".join(loc) or "(settings)"
        lines.append(f"  {field}: {error['msg']} ({_origin(loc, path, file_data, env_data)})")
    return "\n".join(lines)


def _origin(
    loc: list[str], path: Path | None, file_data: Mapping[str, Any], env_data: Mapping[str, Any]
) -> str:
    if loc and _has_path(env_data, loc[:3]):
        return (
            "from environment variable " + ENV_PREFIX + ENV_NESTED_DELIMITER.join(p.upper() for p in loc[:3])
        )
    if path is not None and (not loc or _has_path(file_data, loc[:2])):
        return f"in {path}"
    if path is not None:
        return f"settings from {path} and the environment"
    return "defaults and the environment"


def _has_path(data: Mapping[str, Any], loc: list[str]) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
