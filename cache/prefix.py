"""The prompt-prefix planner: where provider prompt-cache markers go, and when they pay.

Anthropic bills a cache write at 1.25x the input price (5-minute TTL) or 2x (1 hour) and a read at
0.1x; a marker on a prefix nobody reads again only costs the write premium. So a breakpoint goes in
only where a read is expected:

    prompt  = tools → system → messages (Anthropic's cache order), one ``Block`` per tool, system
              block and message content block
    boundaries: end of tools, end of system, end of the prompt (the conversation so far, which the
              next turn starts with), and the end of the previous turn's prompt when this turn added
              more blocks than Anthropic's 20-block lookback (so the previous turn's entry is still read)
    tools / system: the prefix was seen before for this tenant (``ReuseTracker``); the reuse interval
              I observed gives the chance the next read comes within a TTL, q = 1 - exp(-TTL / I),
              and the reads expected before the cached entry lapses (each read refreshes it), q / (1 - q)
    end of prompt: the tenant's observed rate of prompts of this many messages continued within each
              TTL (leaning on its rate over all prompts where a length was seldom seen: most
              conversations end after a typical number of turns, and that last turn's write is only
              premium); such an entry is read at most once (the next turn writes a longer one)
    a marker at a TTL goes in when  reads × (input - read price)  >  (write price - input)
              at the model's own prices; the TTL whose write and reads save the most per request wins
              (so with Anthropic's prices a conversation's end never takes the 1-hour TTL: one read
              saves 0.9x, the 1-hour write costs 1x more)
    a prefix shorter than the model's minimum (1,024 / 2,048 / 4,096 tokens) is never marked; at most
    4 breakpoints, the client's own kept and counted; 1-hour markers before 5-minute ones (an
    Anthropic rule)

OpenAI caches prefixes by itself, on the machine a request is routed to by its first 256 tokens and its
``prompt_cache_key``; a (prefix, key) group above about 15 requests a minute overflows onto machines
with cold caches. The planner sets ``prompt_cache_key`` (when the client did not) to a hash of the
tenant and the stable prefix (tools and system); when that prefix is busier than ``OPENAI_GROUP_RPM``
a minute, a bucket of the conversation (its first turn) is appended, so each group stays on one machine
and a conversation's turns stay together. The local engine keeps its own prefix KV cache: its requests are never edited.

The prompt's blocks and the markers are ``cache/prompt_blocks.py``'s, the record of reuse is
``cache/reuse.py``'s ``ReuseTracker``. Everything here is pure over plain data except ``PrefixPlanner``,
the ``PlanStep`` shell.
Token counts are estimated from characters (``chars_per_token``); an over-estimate only places a
marker the provider ignores (below its minimum nothing is written, so nothing is billed).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from cache.prompt_blocks import (
    LOOKBACK_BLOCKS,
    TTL,
    TTL_S,
    Prompt,
    anthropic_prompt,
    canonical_prompt,
    json_key,
    mark_anthropic_body,
    mark_canonical,
    openai_stable_prefix,
    prefix_digests,
    section_end,
    tokens_upto,
    tool_key,
)
from cache.reuse import ReuseTracker, expected_reads
from gateway.errors import GatewayError
from gateway.logs import get_logger
from gateway.settings import DEFAULT_PREFIX_MIN_TOKENS
from gateway.types import ModelPrices, ModelRoute, SavingMechanism, WireAPI

if TYPE_CHECKING:
    from gateway.pipeline import Call

log = get_logger("cache.prefix")

MAX_BREAKPOINTS = 4
OPENAI_GROUP_RPM = 12  # below OpenAI's ~15 requests a minute per (prefix, prompt_cache_key) machine
OPENAI_MAX_BUCKETS = 64
DEFAULT_MIN_TOKENS = 1024
ANTHROPIC_MIN_TOKENS: Mapping[str, int] = DEFAULT_PREFIX_MIN_TOKENS
# Anthropic's multipliers of the input price, used when the model has no known price.
_RELATIVE = ModelPrices(input=1.0, output=None, cache_read=0.1, cache_write_5m=1.25, cache_write_1h=2.0)

Boundary = Literal["tools", "system", "early", "history"]


def min_tokens_for(model: str, table: Mapping[str, int], default: int = DEFAULT_MIN_TOKENS) -> int:
    """The shortest prefix ``model`` caches: the longest model-id prefix of ``table`` that matches."""
    best, found = -1, default
    for prefix, tokens in table.items():
        if model.startswith(prefix) and len(prefix) > best:
            best, found = len(prefix), tokens
    return found


# ---- the decision ---------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Economics:
    """Per-token money of caching, from a model's prices: what a read saves and what a write adds."""

    read_saving: float
    write_premium: Mapping[TTL, float]

    @staticmethod
    def of(prices: ModelPrices | None) -> Economics:
        p = prices
        if p is None or None in (p.input, p.cache_read, p.cache_write_5m, p.cache_write_1h):
            p = _RELATIVE
        assert p.input is not None and p.cache_read is not None
        assert p.cache_write_5m is not None and p.cache_write_1h is not None
        return Economics(
            read_saving=p.input - p.cache_read,
            write_premium={"5m": p.cache_write_5m - p.input, "1h": p.cache_write_1h - p.input},
        )

    def net(self, reads: float, ttl: TTL) -> float:
        """Expected saving per request and token of marking a prefix at ``ttl``: one write, then
        ``reads`` reads before the entry lapses (and the next request writes it again)."""
        return (reads * self.read_saving - self.write_premium[ttl]) / (reads + 1.0)

    def best_ttl(self, reads: Mapping[TTL, float], floor: TTL | None = None) -> TTL | None:
        """The TTL with the largest positive expected saving (``net``), given the reads expected under
        each; ``floor`` "1h" allows only the 1-hour TTL. None: no TTL pays."""
        best: TTL | None = None
        best_net = 0.0
        for ttl in ("5m", "1h") if floor != "1h" else ("1h",):
            net = self.net(reads[ttl], ttl)
            if net > best_net:
                best, best_net = ttl, net
        return best


@dataclass(slots=True, frozen=True)
class Candidate:
    """A boundary the planner may mark: the block that ends it, its prefix length, and the reads
    expected under each TTL."""

    boundary: Boundary
    block: int
    tokens: int
    reads: Mapping[TTL, float]


@dataclass(slots=True, frozen=True)
class PrefixPlan:
    """The planner's decision for one request. ``marks``: (block index, TTL) to add, in prompt order."""

    marks: tuple[tuple[int, TTL], ...] = ()
    boundaries: tuple[tuple[Boundary, TTL], ...] = ()
    client: int = 0
    note: str = ""
    cache_key: str | None = None

    def summary(self) -> str:
        """The request-log form: ``bp=2 system:1h history:5m``, ``bp=1 system:5m client=1``,
        ``bp=0 (no reuse expected)``, ``key=tg-...``."""
        if self.cache_key is not None:
            return f"key={self.cache_key}"
        parts = [f"bp={len(self.marks)}", *(f"{b}:{t}" for b, t in self.boundaries)]
        if self.client:
            parts.append(f"client={self.client}")
        if self.note:
            parts.append(f"({self.note})")
        return " ".join(parts)[:200]


def choose(
    candidates: Sequence[Candidate],
    client_marks: Sequence[tuple[int, TTL]],
    min_tokens: int,
    economics: Economics,
) -> PrefixPlan:
    """Which candidates to mark, and at which TTL (pure). Keeps the client's marks; never more than
    ``MAX_BREAKPOINTS`` in all; never a prefix below ``min_tokens``; 1-hour marks precede 5-minute ones
    (a candidate that cannot keep that order at a TTL that pays is dropped)."""
    client = {i: ttl for i, ttl in client_marks}
    room = MAX_BREAKPOINTS - len(client)
    if room <= 0:
        return PrefixPlan(client=len(client), note="client used every breakpoint")
    eligible = [c for c in candidates if c.tokens >= min_tokens and c.block not in client]
    if not eligible:
        return PrefixPlan(client=len(client), note=f"below {min_tokens} tokens" if candidates else "empty")
    chosen: dict[int, tuple[Candidate, TTL]] = {}
    for c in eligible:
        ttl = economics.best_ttl(c.reads)
        if ttl is not None:
            chosen[c.block] = (c, ttl)
    if not chosen:
        return PrefixPlan(client=len(client), note="no reuse expected")
    # The breakpoint budget: the boundaries whose marks save the most (per request, over their tokens) win.
    if len(chosen) > room:
        rank = sorted(
            chosen.values(), key=lambda ct: -economics.net(ct[0].reads[ct[1]], ct[1]) * ct[0].tokens
        )
        chosen = {c.block: (c, t) for c, t in rank[:room]}
    # TTL order: a mark after a client's 5-minute mark is 5-minute; an earlier mark of ours rises to 1h
    # when a later one is 1h, or goes.
    ordered = sorted(
        [*((i, t, True) for i, t in client.items()), *((i, t, False) for i, (_, t) in chosen.items())]
    )
    cap: TTL = "1h"
    for i, ttl, is_client in ordered:
        if is_client:
            cap = "5m" if ttl == "5m" else cap
        elif cap == "5m" and ttl == "1h":
            c = chosen[i][0]
            if economics.best_ttl({"5m": c.reads["5m"], "1h": 0.0}) == "5m":
                chosen[i] = (c, "5m")
            else:
                del chosen[i]
    floor: TTL | None = None
    for i in sorted(chosen, reverse=True):
        c, ttl = chosen[i]
        if floor == "1h" and ttl == "5m":
            if economics.best_ttl(c.reads, floor="1h") == "1h":
                chosen[i] = (c, "1h")
            else:
                del chosen[i]
                continue
        if chosen[i][1] == "1h":
            floor = "1h"
    marks = tuple((i, chosen[i][1]) for i in sorted(chosen))
    boundaries = tuple((chosen[i][0].boundary, chosen[i][1]) for i in sorted(chosen))
    return PrefixPlan(marks, boundaries, client=len(client), note="" if marks else "no reuse expected")


def _with_early_history(
    plan: PrefixPlan, earlier: int, last: int, tokens: int, min_tokens: int
) -> PrefixPlan:
    """Anthropic looks for a cached prefix at most ``LOOKBACK_BLOCKS`` blocks before a breakpoint: when
    this turn added more blocks than that, the end of the previous prompt (written by the previous turn's
    history mark) gets a mark of its own at the history mark's TTL, so it is still read. It costs nothing
    more: that stretch is written once either way, and read when cached."""
    marks = dict(plan.marks)
    if (
        last not in marks
        or earlier in marks
        or last - earlier < LOOKBACK_BLOCKS
        or tokens < min_tokens
        or len(marks) + plan.client >= MAX_BREAKPOINTS
    ):
        return plan
    ttl = marks[last]
    marks[earlier] = ttl
    boundaries = [b for b in plan.boundaries if b[0] != "history"]
    return replace(
        plan,
        marks=tuple(sorted(marks.items())),
        boundaries=(*boundaries, ("early", ttl), ("history", ttl)),
    )


def openai_buckets(per_minute: float) -> int:
    """How many prompt_cache_key groups a prefix sent ``per_minute`` times a minute is spread over, so
    that each stays under ``OPENAI_GROUP_RPM`` (OpenAI moves a group above about 15 a minute onto more
    machines, with cold caches). A power of two, so that when it doubles half the conversations keep
    their group (``hash % 2n`` is ``hash % n`` or that plus n)."""
    buckets = 1
    while buckets * OPENAI_GROUP_RPM < per_minute and buckets < OPENAI_MAX_BUCKETS:
        buckets *= 2
    return buckets


def _first_turn(body: Mapping[str, Any]) -> bytes:
    """The first message after the instructions: what identifies a conversation across its turns."""
    for m in body.get("messages") or ():
        if isinstance(m, Mapping) and m.get("role") not in ("system", "developer"):
            return json_key(m.get("content"))
    return b""


# ---- the PlanStep ---------------------------------------------------------------------------------------


class PrefixPlanner:
    """The ``PlanStep``: plans each request against a ``ReuseTracker`` on ``clock`` (seconds).

    Mutates the tracker (every request it sees is recorded) and the call: its payload (a native
    Anthropic or OpenAI body, through ``call.rewrite``) or its canonical request (a translated one),
    its record's ``plan``, and its saving mechanism (``prefix_cache``, only where the planner placed
    every breakpoint the request carries, so that the counterfactual, the same tokens uncached, is the
    request as the client sent it)."""

    def __init__(
        self,
        *,
        min_tokens: Mapping[str, int] = ANTHROPIC_MIN_TOKENS,
        default_min_tokens: int = DEFAULT_MIN_TOKENS,
        chars_per_token: float = 4.0,
        openai_cache_key: bool = True,
        tracker: ReuseTracker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_tokens = dict(min_tokens)
        self.default_min_tokens = default_min_tokens
        self.chars_per_token = chars_per_token
        self.openai_cache_key = openai_cache_key
        self.tracker = tracker if tracker is not None else ReuseTracker()
        self.clock = clock

    def plan(self, call: Call, target: ModelRoute) -> None:
        spec = call.spec
        if spec is None or spec.wire is None or spec.count_tokens:
            return
        native = target.provider_kind in spec.speaks
        tenant = call.key.id if call.key is not None else "-"
        try:
            if target.provider_kind == "anthropic":
                self._anthropic(call, target, tenant, native)
            elif target.provider_kind == "openai" and self.openai_cache_key:
                self._openai(call, tenant, native, record=call.record.plan is None)
        except GatewayError:
            raise  # the request itself is malformed: the pipeline answers it in the client's format
        except Exception as exc:  # a body the planner does not understand goes as the client sent it
            log.warning(
                "prefix planner: request left as sent (%s)",
                type(exc).__name__,
                extra={"request_id": call.record.request_id},
            )
            call.record.plan = "error"

    # -- Anthropic

    def _anthropic(self, call: Call, target: ModelRoute, tenant: str, native: bool) -> None:
        if native:
            prompt = anthropic_prompt(call.payload, self.chars_per_token)
        else:
            prompt = canonical_prompt(call.canonical, self.chars_per_token)
        # a fallback target plans the same request again: its prefixes are not a second sighting
        plan = self.decide(prompt, tenant, target, record=call.record.plan is None)
        if plan.marks:
            if native:
                mark_anthropic_body(call, prompt, plan.marks)
            else:
                call.canonical = mark_canonical(call.canonical, prompt, plan.marks)
            if not plan.client and call.mechanism is None:
                call.mechanism = SavingMechanism.PREFIX_CACHE
        call.record.plan = plan.summary()

    def decide(self, prompt: Prompt, tenant: str, target: ModelRoute, *, record: bool = True) -> PrefixPlan:
        """Plans ``prompt`` for ``target``; ``record``: and records its prefixes in the tracker."""
        now = self.clock()
        tracker = self.tracker
        digests = prefix_digests(prompt)
        upto = tokens_upto(prompt)
        candidates: list[Candidate] = []
        for boundary in ("tools", "system"):
            end = section_end(prompt, boundary)
            if end >= 0 and prompt.blocks[end].markable:
                seen = tracker.sighting(tenant, digests[end], now)
                reads = {ttl: expected_reads(seen, ttl) for ttl in TTL_S}
                candidates.append(Candidate(boundary, end, upto[end], reads))
        last = len(prompt.blocks) - 1
        if last >= 0 and prompt.blocks[last].section == "messages" and prompt.blocks[last].markable:
            depth = len(prompt.message_ends)
            rates = {ttl: tracker.continuation_rate(tenant, ttl, depth) for ttl in TTL_S}
            candidates.append(Candidate("history", last, upto[last], rates))
        # tools are worth a mark of their own only when they recur more than tools + system do
        if (
            len(candidates) >= 2
            and (candidates[0].boundary, candidates[1].boundary) == ("tools", "system")
            and candidates[0].reads["1h"] <= candidates[1].reads["1h"]
        ):
            candidates.pop(0)
        client = [(i, b.mark) for i, b in enumerate(prompt.blocks) if b.mark is not None]
        min_tokens = min_tokens_for(target.upstream_model, self.min_tokens, self.default_min_tokens)
        plan = choose(candidates, client, min_tokens, Economics.of(target.prices))
        earlier = self._continued(prompt, digests, tenant)
        if (
            earlier is not None
            and prompt.blocks[earlier[0]].mark is None
            and prompt.blocks[earlier[0]].markable
        ):
            plan = _with_early_history(plan, earlier[0], last, upto[earlier[0]], min_tokens)
        if record:
            continued = None if earlier is None else (earlier[2], now - earlier[1])
            self._record(prompt, digests, tenant, now, continued)
        return plan

    def _continued(self, prompt: Prompt, digests: list[bytes], tenant: str) -> tuple[int, float, int] | None:
        """The end of the latest earlier prompt this one extends, when that prompt was seen, and its
        number of messages."""
        for m in range(len(prompt.message_ends) - 2, -1, -1):
            end = prompt.message_ends[m]
            if end >= 0:
                before = self.tracker.last_seen(tenant, b"p" + digests[end])
                if before is not None:
                    return end, before, m + 1
        return None

    def _record(
        self,
        prompt: Prompt,
        digests: list[bytes],
        tenant: str,
        now: float,
        continued: tuple[int, float] | None,
    ) -> None:
        tracker = self.tracker
        tracker.observe_prompt(tenant, now, continued, len(prompt.message_ends))
        for boundary in ("tools", "system"):
            end = section_end(prompt, boundary)
            if end >= 0:
                tracker.observe(tenant, digests[end], now)
        if digests:
            tracker.observe(tenant, b"p" + digests[-1], now)

    # -- OpenAI

    def _openai(self, call: Call, tenant: str, native: bool, record: bool) -> None:
        if native:
            existing = call.payload.get("prompt_cache_key")
        else:
            req = call.canonical
            existing = (req.metadata.get(WireAPI.OPENAI_CHAT.value) or {}).get("prompt_cache_key")
        if existing is not None:
            if call.record.plan != f"key={existing}":  # not ours from an earlier target's plan
                call.record.plan = "key=client"
            return
        if native:
            stable = openai_stable_prefix(call.payload)
        else:
            stable = json_key([[tool_key(t).decode() for t in req.tools], [p.text for p in req.system]])
        if stable == b"[[],[]]":
            return  # no tools and no system prompt: OpenAI's own prefix routing is all there is
        digest = hashlib.blake2b(tenant.encode() + b"\x00" + stable, digest_size=12)
        key = f"tg-{digest.hexdigest()}"
        now = self.clock()
        tracked = b"o" + digest.digest()
        buckets = openai_buckets(self.tracker.per_minute(tenant, tracked, now) + 1.0)
        if buckets > 1:  # a busy prefix: conversations spread over groups that each stay on one machine
            first = _first_turn(call.payload) if native else repr(call.canonical.messages[:1]).encode()
            key += f"-{int.from_bytes(hashlib.blake2b(first, digest_size=4).digest()) % buckets}"
        if record:
            self.tracker.observe(tenant, tracked, now)
        if native:
            call.rewrite("prompt_cache_key", key)
        else:
            req = call.canonical
            meta = dict(req.metadata)
            meta[WireAPI.OPENAI_CHAT.value] = {
                **(meta.get(WireAPI.OPENAI_CHAT.value) or {}),
                "prompt_cache_key": key,
            }
            call.canonical = replace(req, metadata=meta)
        call.record.plan = PrefixPlan(cache_key=key).summary()
