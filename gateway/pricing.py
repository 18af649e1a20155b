"""Model prices from the ``genai-prices`` package's bundled data.

Only the snapshot shipped inside the package is read: nothing here starts ``genai_prices.UpdatePrices``
(the package's only network path, which runs only when started explicitly), so prices never change
while the gateway runs and no request leaves the machine.

Mapping from genai-prices (USD per million tokens) to ``ModelPrices``:

    input_mtok          -> input
    output_mtok         -> output
    cache_read_mtok     -> cache_read
    cache_write_mtok    -> cache_write_5m
    cache_write_1h_mtok -> cache_write_1h

Cache tokens are a part of the input. As in genai-prices' own calculation, a cache kind without a price
of its own is billed at the plain input price (OpenAI bills its cache writes that way: a write costs
what the input costs, unless the model lists a cache-write price). Anthropic is the exception for
cache writes, which always cost more than input there: a missing write price is derived from the input
price with Anthropic's published multipliers, 5-minute write = 1.25 × input, 1-hour write = 2 × input.
For other providers a missing 1-hour (long-TTL) write price is the cache-write price, else the input
price. A model whose input price is unknown stays unknown (None) in every kind derived from it.

Tiered prices (e.g. a higher rate above 200k prompt tokens) resolve to the base tier unless
``prompt_tokens`` is given, in which case the tier that genai-prices would apply to a prompt of that
size (all tokens at the rate of the highest tier whose start the prompt exceeds) is used.
Prices that change on a date are resolved at the time of the call.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from gateway.types import ModelPrices

# Which genai-prices provider prices each of our provider kinds. openai_compatible and local have
# none: such a model is priced only through "provider/model" (see lookup_prices) or an override.
_PROVIDER_FOR_KIND: dict[str, str] = {"openai": "openai", "anthropic": "anthropic"}

ANTHROPIC_CACHE_WRITE_5M_FACTOR = Decimal("1.25")
ANTHROPIC_CACHE_WRITE_1H_FACTOR = Decimal("2")


def lookup_prices(provider_kind: str, model: str, *, prompt_tokens: int | None = None) -> ModelPrices | None:
    """The prices of ``model`` served by a provider of ``provider_kind``, or None when unknown: the listed
    prices (``lookup_listed_prices``) with the unlisted cache kinds filled in (``complete_prices``).

    ``model`` may be ``"<genai-prices provider id>/<model>"`` (e.g. ``"groq/llama-3.3-70b-versatile"``)
    to price it as that provider's model whatever the kind; this is how an ``openai_compatible`` model
    gets a price (through ``ModelSettings.price_id``). Dated ids (``claude-sonnet-4-5-20250929``) match
    their family as genai-prices matches them. Pure: reads the bundled price data only.
    """
    listed = lookup_listed_prices(provider_kind, model, prompt_tokens=prompt_tokens)
    if listed is None:
        return None
    prices, price_list = listed
    return complete_prices(prices, anthropic=price_list == "anthropic")


def lookup_listed_prices(
    provider_kind: str, model: str, *, prompt_tokens: int | None = None
) -> tuple[ModelPrices, str] | None:
    """The prices genai-prices lists for ``model`` (None for each kind it does not list) and the id of the
    price list they came from (``"openai"``, ``"anthropic"``, ``"groq"``...); None when the model is not
    listed or has no token price. See ``lookup_prices`` for how ``model`` is read."""
    provider_id = _PROVIDER_FOR_KIND.get(provider_kind)
    model_ref = model
    snapshot = data_snapshot.get_snapshot()
    if "/" in model:
        prefix, rest = model.split("/", 1)
        if data_snapshot.find_provider_by_id(snapshot.providers, prefix) is not None:
            provider_id, model_ref = prefix, rest
    if provider_id is None or not model_ref:
        return None
    provider = data_snapshot.find_provider_by_id(snapshot.providers, provider_id)
    if provider is None:
        return None
    info = provider.find_model(model_ref, all_providers=snapshot.providers)
    if info is None:
        return None
    prices = _to_model_prices(info.get_prices(datetime.now(tz=UTC)), prompt_tokens)
    return None if prices is None else (prices, provider.id)


def complete_prices(prices: ModelPrices, *, anthropic: bool) -> ModelPrices:
    """Fill the cache prices ``prices`` leaves unset, by the rules in the module docstring (``anthropic``:
    derive cache writes with Anthropic's multipliers). Set fields are kept as they are."""
    input_ = None if prices.input is None else _dec(prices.input)
    write_5m = None if prices.cache_write_5m is None else _dec(prices.cache_write_5m)
    write_1h = None if prices.cache_write_1h is None else _dec(prices.cache_write_1h)
    if anthropic and input_ is not None:
        write_5m = write_5m if write_5m is not None else input_ * ANTHROPIC_CACHE_WRITE_5M_FACTOR
        write_1h = write_1h if write_1h is not None else input_ * ANTHROPIC_CACHE_WRITE_1H_FACTOR
    write_5m = write_5m if write_5m is not None else input_
    write_1h = write_1h if write_1h is not None else write_5m
    return ModelPrices(
        input=prices.input,
        output=prices.output,
        cache_read=prices.cache_read if prices.cache_read is not None else prices.input,
        cache_write_5m=_float(write_5m),
        cache_write_1h=_float(write_1h),
    )


def _to_model_prices(price: ModelPrice, prompt_tokens: int | None) -> ModelPrices | None:
    def pick(key: str) -> float | None:
        value = getattr(price, key, None)
        if isinstance(value, TieredPrices):
            return float(_tier(value, prompt_tokens))
        return float(value) if isinstance(value, Decimal) else None

    input_, output = pick("input_mtok"), pick("output_mtok")
    if input_ is None and output is None:
        return None  # priced per request, character or second: not a token price we can use
    return ModelPrices(
        input=input_,
        output=output,
        cache_read=pick("cache_read_mtok"),
        cache_write_5m=pick("cache_write_mtok"),
        cache_write_1h=pick("cache_write_1h_mtok"),
    )


def _tier(prices: TieredPrices, prompt_tokens: int | None) -> Decimal:
    if prompt_tokens is None:
        return prices.base
    for tier in reversed(prices.tiers):
        if prompt_tokens > tier.start:
            return tier.price
    return prices.base


def _dec(value: float) -> Decimal:
    return Decimal(repr(float(value)))


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)
