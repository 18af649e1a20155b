"""Usage → cost, counterfactual and saving. Pure functions over plain data, no I/O.

Wire usage is normalised to ``gateway.types.Usage``, whose token kinds never overlap (see that module):
OpenAI counts cached (and cache-written) tokens inside ``prompt_tokens`` / ``input_tokens``, so they are
subtracted from the plain input; Anthropic reports ``input_tokens`` without cache reads and writes, so
nothing is subtracted and cache writes are never added to the input. The ``cache_write_5m`` slot holds a
provider's short-TTL writes (Anthropic 5 minutes, OpenAI 30 minutes, and OpenAI writes without a TTL
split); ``cache_write_1h`` the long-TTL ones (Anthropic 1 hour, OpenAI 12 hours).

Money is computed in ``Decimal`` from the decimal value of each per-million-token price and converted to
float once per component, so each component and the total are the float nearest the exact amount.
An unknown price is never treated as zero: a kind with tokens and no price makes its component and the
total None. A kind with zero tokens costs 0 whatever its price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from gateway.types import Cost, ModelPrices, SavingMechanism, Usage

_MILLION: Final = Decimal(1_000_000)


def _int(value: Any) -> int:
    """A token count from wire JSON: None, missing or malformed count as 0; never negative."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(int(value), 0)


def _details(usage: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = usage.get(key)
    return value if isinstance(value, Mapping) else {}


def _openai_input_side(total_input: int, details: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """Split an OpenAI prompt count, which includes its cached and cache-written tokens, into
    (plain input, cache read, short-TTL write, long-TTL write)."""
    cached = min(_int(details.get("cached_tokens")), total_input)
    written = min(_int(details.get("cache_write_tokens")), total_input - cached)
    by_ttl = details.get("cache_write_tokens_details")
    by_ttl = by_ttl if isinstance(by_ttl, Mapping) else {}
    write_long = min(_int(by_ttl.get("ttl_12h_tokens")), written)
    return total_input - cached - written, cached, written - write_long, write_long


def usage_from_openai_chat(usage: Mapping[str, Any] | None) -> Usage:
    """Chat Completions ``usage``: ``prompt_tokens`` includes ``prompt_tokens_details.cached_tokens`` (cache
    reads) and ``prompt_tokens_details.cache_write_tokens`` (cache writes, on models that bill them);
    ``completion_tokens`` includes ``completion_tokens_details.reasoning_tokens``."""
    if not usage:
        return Usage()
    plain, cached, write_short, write_long = _openai_input_side(
        _int(usage.get("prompt_tokens")), _details(usage, "prompt_tokens_details")
    )
    return Usage(
        input_tokens=plain,
        output_tokens=_int(usage.get("completion_tokens")),
        cache_read_tokens=cached,
        cache_write_5m_tokens=write_short,
        cache_write_1h_tokens=write_long,
        reasoning_tokens=_int(_details(usage, "completion_tokens_details").get("reasoning_tokens")),
    )


def usage_from_openai_responses(usage: Mapping[str, Any] | None) -> Usage:
    """Responses API ``usage``: ``input_tokens`` includes ``input_tokens_details.cached_tokens`` and
    ``input_tokens_details.cache_write_tokens`` (split by ``cache_write_tokens_details``: 30-minute writes
    go to the 5m slot, 12-hour writes to the 1h slot); ``output_tokens`` includes
    ``output_tokens_details.reasoning_tokens``."""
    if not usage:
        return Usage()
    plain, cached, write_short, write_long = _openai_input_side(
        _int(usage.get("input_tokens")), _details(usage, "input_tokens_details")
    )
    return Usage(
        input_tokens=plain,
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=cached,
        cache_write_5m_tokens=write_short,
        cache_write_1h_tokens=write_long,
        reasoning_tokens=_int(_details(usage, "output_tokens_details").get("reasoning_tokens")),
    )


def usage_from_openai_embeddings(usage: Mapping[str, Any] | None) -> Usage:
    """Embeddings ``usage``: ``prompt_tokens`` (equal to ``total_tokens``), all plain input."""
    if not usage:
        return Usage()
    prompt = usage.get("prompt_tokens")
    return Usage(input_tokens=_int(prompt if prompt is not None else usage.get("total_tokens")))


def usage_from_anthropic(usage: Mapping[str, Any] | None) -> Usage:
    """Messages ``usage``. ``input_tokens`` already excludes cache reads and writes. Cache writes split by
    TTL from ``cache_creation.ephemeral_{5m,1h}_input_tokens`` when present; any part of
    ``cache_creation_input_tokens`` the split does not cover (all of it, without a split) is 5-minute.
    ``output_tokens`` includes ``output_tokens_details.thinking_tokens`` (the reasoning)."""
    if not usage:
        return Usage()
    written = _int(usage.get("cache_creation_input_tokens"))
    split = _details(usage, "cache_creation")
    write_5m = _int(split.get("ephemeral_5m_input_tokens"))
    write_1h = _int(split.get("ephemeral_1h_input_tokens"))
    write_5m += max(written - write_5m - write_1h, 0)
    return Usage(
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
        cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        reasoning_tokens=_int(_details(usage, "output_tokens_details").get("thinking_tokens")),
    )


class AnthropicStreamUsage:
    """Merges the usage of an Anthropic Messages stream.

    ``message_start`` carries the input side (and an early ``output_tokens``); each ``message_delta``
    carries cumulative counts, and may repeat or omit the input and cache fields. A field present (and
    not null) in a ``message_delta`` replaces the earlier value; an absent one keeps it.
    """

    __slots__ = ("_fields",)

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {}

    def on_message_start(self, usage: Mapping[str, Any]) -> None:
        """Record ``message.usage`` of the ``message_start`` event. Replaces everything recorded so far."""
        self._fields = {k: v for k, v in usage.items() if v is not None}

    def on_message_delta(self, usage: Mapping[str, Any]) -> None:
        """Record ``usage`` of a ``message_delta`` event. Mutates this accumulator only."""
        self._fields.update({k: v for k, v in usage.items() if v is not None})

    @property
    def usage(self) -> Usage:
        """The usage so far. Does not modify the accumulator."""
        return usage_from_anthropic(self._fields)


def _dec(value: float) -> Decimal:
    # repr gives the shortest decimal that round-trips: 0.075 → Decimal("0.075"), not its binary expansion.
    return Decimal(repr(float(value)))


def _component(parts: list[tuple[int, float | None]]) -> Decimal | None:
    """The exact USD of some (tokens, price per million) pairs; None when a used kind has no price."""
    total = Decimal(0)
    for tokens, price in parts:
        if tokens == 0:
            continue
        if price is None:
            return None
        total += Decimal(tokens) * _dec(price) / _MILLION
    return total


def _exact_cost(usage: Usage, prices: ModelPrices | None) -> tuple[Decimal | None, ...]:
    p = prices or ModelPrices(input=None, output=None)
    input_ = _component([(usage.input_tokens, p.input)])
    output = _component([(usage.output_tokens, p.output)])
    cache_read = _component([(usage.cache_read_tokens, p.cache_read)])
    cache_write = _component(
        [(usage.cache_write_5m_tokens, p.cache_write_5m), (usage.cache_write_1h_tokens, p.cache_write_1h)]
    )
    parts = (input_, output, cache_read, cache_write)
    known = [part for part in parts if part is not None]
    total = sum(known, Decimal(0)) if len(known) == len(parts) else None
    return (*parts, total)


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def compute_cost(usage: Usage, prices: ModelPrices | None) -> Cost:
    """The USD cost of ``usage`` at ``prices`` (per million tokens), by component. ``reasoning_tokens`` are
    part of ``output_tokens`` and not billed again. ``cache_write`` is the 5-minute plus 1-hour writes."""
    input_, output, cache_read, cache_write, total = _exact_cost(usage, prices)
    return Cost(
        input=_float(input_),
        output=_float(output),
        cache_read=_float(cache_read),
        cache_write=_float(cache_write),
        total=_float(total),
    )


def without_prompt_cache(usage: Usage) -> Usage:
    """``usage`` as it would have been billed with no provider prompt caching: every cache read and
    write billed as plain input."""
    return Usage(
        input_tokens=usage.total_input_tokens,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )


@dataclass(slots=True, frozen=True)
class Accounting:
    """A request's cost, what it would have cost as the client sent it, and the difference."""

    cost: Cost
    counterfactual_usd: float | None
    saving_usd: float | None
    mechanism: SavingMechanism | None


class _Served:
    """Marker default: ``requested`` prices are the served prices."""


_SERVED: Final = _Served()


def account(
    usage: Usage,
    served: ModelPrices | None,
    *,
    requested: ModelPrices | _Served | None = _SERVED,
    counterfactual_usage: Usage | None = None,
    mechanism: SavingMechanism | None = None,
) -> Accounting:
    """Account one request.

    ``cost``: ``usage`` at the ``served`` model's prices. ``counterfactual_usd``: what the request as the
    client sent it would have cost: ``counterfactual_usage`` (default ``usage``) at the ``requested``
    model's prices (omitted: the served prices; an explicit None: unknown, so the counterfactual and
    saving are None). ``saving_usd`` = counterfactual - cost when both are known (it may be negative);
    ``mechanism`` is reported only when the saving is positive, except ``PREFIX_CACHE``, which is
    reported whenever the saving is not zero: a prompt-cache write costs more than plain input, and
    that premium is the mechanism's own negative saving (its reads pay it back on later requests).
    """
    _, _, _, _, cost_total = exact = _exact_cost(usage, served)
    cost = Cost(*(_float(v) for v in exact))
    requested_prices = served if isinstance(requested, _Served) else requested
    if requested_prices is served and counterfactual_usage is None:
        cf_total = cost_total  # the request as sent is the request served: no second computation
    else:
        cf_usage = counterfactual_usage if counterfactual_usage is not None else usage
        cf_total = _exact_cost(cf_usage, requested_prices)[4]
    saving = None if cf_total is None or cost_total is None else cf_total - cost_total
    return Accounting(
        cost=cost,
        counterfactual_usd=_float(cf_total),
        saving_usd=_float(saving),
        mechanism=mechanism if saving is not None and _reported(mechanism, saving) else None,
    )


def _reported(mechanism: SavingMechanism | None, saving: Decimal) -> bool:
    return saving > 0 or (mechanism is SavingMechanism.PREFIX_CACHE and saving != 0)
