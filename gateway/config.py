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
        "# SQLAlchemy URL: SQLite (embedded, default) or PostgreSQL (postgresql+asyncpg://user@host/db).",
        f"database_url: {_scalar(d.database_url)}",
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
        "# Logging: level, and one JSON object per line (true) or plain text (false).",
        f"log_level: {_scalar(d.log_level)}",
        f"log_json: {'true' if d.log_json else 'false'}",
        "# Where the local engine keeps its converted models.",
        f"local_model_dir: {_scalar(d.local_model_dir)}",
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
        "# Budgets: a request holds an estimate of its cost (its input, and its max_tokens or this many",
        "# output tokens) from admission to finish, so concurrent requests cannot overspend a key's budget.",
        "# A key with a budget may not use a model (or passthrough route) of unknown price unless allowed.",
        "budget:",
        f"  default_output_tokens: {d.budget.default_output_tokens}",
        f"  allow_unpriced: {'true' if d.budget.allow_unpriced else 'false'}",
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
    for r in d.passthrough.routes:
        entry = f"    - {{method: {r.method}, path: {r.path}, model: {r.model}, metering: {r.metering}"
        lines.append(entry + (f", provider: {r.provider}}}" if r.provider else "}"))
    lines += [
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
                "    # quality bar; fp32 | int8 | int4 | int4-fa | int4-exact), num_slots (8 concurrent sequences),",
                "    # max_seq_len (2048 positions per sequence; the KV cache is preallocated for num_slots x",
                "    # max_seq_len, 46 KB a position), prefix_cache_mb (256), memory_budget_mb (unset: with it, the",
                "    # KV cache and the prefix cache count in that one total), speculative (auto | ngram | draft | off),",
                "    # threads (2), default_temperature (0.2) and default_top_p (0.9) for requests that set none.",
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
        "models:",
    ]
    for alias, m in default_models().items():
        lines.append(f"  {_scalar(alias)}: {{provider: {m.provider}, model: {_scalar(m.model)}}}")
        if m.prices is not None:
            lines[-1] = lines[-1][:-1] + f", prices: {_prices(m.prices)}}}"
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
