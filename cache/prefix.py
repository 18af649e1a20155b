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
    end of prompt: the tenant's observed rate of conversations continued within each TTL; such an
              entry is read at most once (the next turn writes a longer one)
    a marker at a TTL goes in when  reads × (input - read price)  >  (write price - input)
              at the model's own prices; the TTL with the larger expected net saving wins
              (so with Anthropic's prices a conversation's end never takes the 1-hour TTL: one read
              saves 0.9x, the 1-hour write costs 1x more)
    a prefix shorter than the model's minimum (1,024 / 2,048 / 4,096 tokens) is never marked; at most
    4 breakpoints, the client's own kept and counted; 1-hour markers before 5-minute ones (an
    Anthropic rule)

OpenAI caches prefixes by itself; the planner sets ``prompt_cache_key`` (when the client did not) to a
hash of the tenant and the stable prefix (tools and system), so requests sharing that prefix are routed
to the same cache. The local engine keeps its own prefix KV cache: its requests are never edited.

Everything here is pure over plain data except ``ReuseTracker`` (bounded, in memory, one per
process: a replica learns from the traffic it sees) and ``PrefixPlanner``, the ``PlanStep`` shell.
Token counts are estimated from characters (``chars_per_token``); an over-estimate only places a
marker the provider ignores (below its minimum nothing is written, so nothing is billed).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import orjson

from gateway.errors import GatewayError
from gateway.logs import get_logger
from gateway.settings import DEFAULT_PREFIX_MIN_TOKENS
from gateway.types import (
    CacheMark,
    ChatRequest,
    Message,
    ModelPrices,
    ModelRoute,
    SavingMechanism,
    Tool,
    WireAPI,
)

if TYPE_CHECKING:
    from gateway.pipeline import Call

log = get_logger("cache.prefix")

TTL = Literal["5m", "1h"]
TTL_S: Mapping[TTL, float] = {"5m": 300.0, "1h": 3600.0}
MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20  # Anthropic checks this many blocks before a breakpoint for a cached prefix
DEFAULT_MIN_TOKENS = 1024
ANTHROPIC_MIN_TOKENS: Mapping[str, int] = DEFAULT_PREFIX_MIN_TOKENS
# Anthropic's multipliers of the input price, used when the model has no known price.
_RELATIVE = ModelPrices(input=1.0, output=None, cache_read=0.1, cache_write_5m=1.25, cache_write_1h=2.0)

Boundary = Literal["tools", "system", "early", "history"]


# ---- the prompt as the planner sees it ----------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Block:
    """One cacheable block: a tool, a system block or a message content block, in cache order.
    ``where`` locates it in its request (``(i,)`` for a tool or system block, ``(message, part)``);
    ``key`` is its content without any cache marker; ``mark`` the client's own marker's TTL."""

    section: Literal["tools", "system", "messages"]
    where: tuple[int, ...]
    key: bytes
    tokens: int
    mark: TTL | None = None


@dataclass(slots=True, frozen=True)
class Prompt:
    """A request's blocks and, for each message, the index of its last block (-1: no blocks)."""

    blocks: tuple[Block, ...]
    message_ends: tuple[int, ...]


def min_tokens_for(model: str, table: Mapping[str, int], default: int = DEFAULT_MIN_TOKENS) -> int:
    """The shortest prefix ``model`` caches: the longest model-id prefix of ``table`` that matches."""
    best, found = -1, default
    for prefix, tokens in table.items():
        if model.startswith(prefix) and len(prefix) > best:
            best, found = len(prefix), tokens
    return found


def _estimate(text: str, chars_per_token: float) -> int:
    return math.ceil(len(text) / chars_per_token)


def _mark_ttl(control: Any) -> TTL | None:
    if isinstance(control, Mapping) and control.get("type") == "ephemeral":
        return "1h" if control.get("ttl") == "1h" else "5m"
    return None


def _json_key(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def anthropic_prompt(body: Mapping[str, Any], chars_per_token: float = 4.0) -> Prompt:
    """The blocks of an Anthropic Messages body (a string is one text block, as Anthropic caches it).
    Does not modify ``body``."""
    blocks: list[Block] = []

    def add(section: Any, where: tuple[int, ...], block: Any, tag: bytes) -> None:
        mark = None
        if isinstance(block, str):
            text: Any = block
            key = _json_key({"text": block, "type": "text"})
        else:
            control = block.get("cache_control") if isinstance(block, dict) else None
            if control is not None:
                mark = _mark_ttl(control)
                block = {k: v for k, v in block.items() if k != "cache_control"}
            text = block.get("text") if isinstance(block, dict) else None
            key = _json_key(block)
        tokens = _estimate(text if isinstance(text, str) else key.decode(), chars_per_token)
        blocks.append(Block(section, where, tag + key, tokens, mark))

    for i, tool in enumerate(body.get("tools") or ()):
        add("tools", (i,), tool, b"tools:")
    system = body.get("system")
    for i, part in enumerate([system] if isinstance(system, str) else system or ()):
        add("system", (i,), part, b"system:")
    ends: list[int] = []
    for m, msg in enumerate(body.get("messages") or ()):
        content = msg.get("content") if isinstance(msg, Mapping) else None
        tag = str(msg.get("role") if isinstance(msg, Mapping) else "").encode() + b"|messages:"
        for j, part in enumerate([content] if isinstance(content, str) else content or ()):
            add("messages", (m, j), part, tag)
        ends.append(len(blocks) - 1)
    return Prompt(tuple(blocks), tuple(ends))


def _ttl_of(mark: CacheMark | None) -> TTL | None:
    return None if mark is None else (mark.ttl or "5m")


def _tool_key(tool: Tool) -> bytes:
    return _json_key([tool.name, tool.description, tool.parameters, tool.strict])


def canonical_prompt(req: ChatRequest, chars_per_token: float = 4.0) -> Prompt:
    """The blocks of a canonical request. Does not modify ``req``."""
    blocks: list[Block] = []
    for i, tool in enumerate(req.tools):
        key = _tool_key(tool)
        blocks.append(
            Block(
                "tools", (i,), b"tools:" + key, _estimate(key.decode(), chars_per_token), _ttl_of(tool.cache)
            )
        )
    for i, part in enumerate(req.system):
        est = _estimate(part.text, chars_per_token)
        blocks.append(Block("system", (i,), b"system:" + part.text.encode(), est, _ttl_of(part.cache)))
    ends: list[int] = []
    for m, msg in enumerate(req.messages):
        for j, p in enumerate(msg.content):
            plain = replace(p, cache=None)
            text = getattr(plain, "text", None)
            key = repr(plain).encode()
            est = _estimate(text if isinstance(text, str) else key.decode(), chars_per_token)
            blocks.append(Block("messages", (m, j), msg.role.encode() + b"|" + key, est, _ttl_of(p.cache)))
        ends.append(len(blocks) - 1)
    return Prompt(tuple(blocks), tuple(ends))


# ---- what the planner has seen ----------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Sighting:
    """A prefix seen before: how many times, and the mean interval between sightings (this one's gap
    included), in seconds."""

    count: int
    interval_s: float


@dataclass(slots=True)
class _Seen:
    last: float
    count: int
    interval_s: float | None


@dataclass(slots=True)
class _Tenant:
    prompts: float = 0.0
    continued: dict[str, float] = field(default_factory=lambda: {"5m": 0.0, "1h": 0.0})


class ReuseTracker:
    """Which prefixes each tenant sent, when, and how often; how often its conversations continue.

    Bounded: at most ``max_entries`` prefixes and ``max_tenants`` tenants, least recently seen evicted.
    Tenant rates decay (``decay`` per request) so they follow changing traffic. Not thread-safe: the
    gateway calls it from its event loop only."""

    def __init__(self, max_entries: int = 50_000, max_tenants: int = 10_000, decay: float = 0.998) -> None:
        self.max_entries = max_entries
        self.max_tenants = max_tenants
        self.decay = decay
        self._seen: OrderedDict[tuple[str, bytes], _Seen] = OrderedDict()
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def sighting(self, tenant: str, digest: bytes, now: float) -> Sighting | None:
        """What is known of ``digest`` if it were seen again ``now``. Does not modify the tracker."""
        seen = self._seen.get((tenant, digest))
        if seen is None:
            return None
        gap = max(now - seen.last, 0.0)
        interval = gap if seen.interval_s is None else 0.5 * seen.interval_s + 0.5 * gap
        return Sighting(seen.count, max(interval, 1e-3))

    def last_seen(self, tenant: str, digest: bytes) -> float | None:
        """When ``digest`` was last seen (None: never, or forgotten). Does not modify the tracker."""
        seen = self._seen.get((tenant, digest))
        return None if seen is None else seen.last

    def observe(self, tenant: str, digest: bytes, now: float) -> None:
        """Records a sighting of ``digest`` (evicting the least recently seen entry when full)."""
        key = (tenant, digest)
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(now, 1, None)
            if len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
            return
        gap = max(now - seen.last, 0.0)
        seen.interval_s = gap if seen.interval_s is None else 0.5 * seen.interval_s + 0.5 * gap
        seen.last = now
        seen.count += 1
        self._seen.move_to_end(key)

    def continuation_rate(self, tenant: str, ttl: TTL) -> float:
        """The share of this tenant's prompts continued by a next turn within ``ttl`` (0 before any
        is). Does not modify the tracker."""
        stats = self._tenants.get(tenant)
        if stats is None:
            return 0.0
        return stats.continued[ttl] / (stats.prompts + 1.0)

    def observe_prompt(self, tenant: str, continued_after_s: float | None) -> None:
        """Counts one prompt of ``tenant``, and whether it continued an earlier prompt after that many
        seconds (None: it continued none)."""
        stats = self._tenants.get(tenant)
        if stats is None:
            stats = self._tenants[tenant] = _Tenant()
            if len(self._tenants) > self.max_tenants:
                self._tenants.popitem(last=False)
        self._tenants.move_to_end(tenant)
        stats.prompts = stats.prompts * self.decay + 1.0
        for ttl, seconds in TTL_S.items():
            hit = continued_after_s is not None and continued_after_s <= seconds
            stats.continued[ttl] = stats.continued[ttl] * self.decay + (1.0 if hit else 0.0)


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


def expected_reads(sighting: Sighting | None, ttl: TTL) -> float:
    """Reads expected before an entry written now lapses, for a prefix recurring at its observed
    interval: each comes within the TTL with q = 1 - exp(-TTL / interval) and refreshes the entry."""
    if sighting is None:
        return 0.0
    q = 1.0 - math.exp(-TTL_S[ttl] / sighting.interval_s)
    return min(q / (1.0 - q), 1000.0) if q < 1.0 else 1000.0


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
        """The request-log form: ``bp=2 system:1h history:5m client=0``, ``bp=0 (no reuse seen)``,
        ``key=tg-...``."""
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
    # The breakpoint budget: the boundary whose marking saves the most wins (system before tools at a tie).
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


# ---- digests and candidates ---------------------------------------------------------------------------


def prefix_digests(prompt: Prompt) -> list[bytes]:
    """The digest of the prompt up to and including each block (Anthropic's cache identity)."""
    h = hashlib.blake2b(digest_size=16)
    out: list[bytes] = []
    for b in prompt.blocks:
        h.update(b.key)
        h.update(b"\x00")
        out.append(h.copy().digest())
    return out


def _section_end(prompt: Prompt, section: str) -> int:
    last = -1
    for i, b in enumerate(prompt.blocks):
        if b.section == section:
            last = i
    return last


def _tokens_upto(prompt: Prompt) -> list[int]:
    total, out = 0, []
    for b in prompt.blocks:
        total += b.tokens
        out.append(total)
    return out


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
                self._openai(call, tenant, native)
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
                _mark_anthropic_body(call, prompt, plan.marks)
            else:
                call.canonical = _mark_canonical(call.canonical, prompt, plan.marks)
            if not plan.client and call.mechanism is None:
                call.mechanism = SavingMechanism.PREFIX_CACHE
        call.record.plan = plan.summary()

    def decide(self, prompt: Prompt, tenant: str, target: ModelRoute, *, record: bool = True) -> PrefixPlan:
        """Plans ``prompt`` for ``target``; ``record``: and records its prefixes in the tracker."""
        now = self.clock()
        tracker = self.tracker
        digests = prefix_digests(prompt)
        upto = _tokens_upto(prompt)
        candidates: list[Candidate] = []
        for boundary in ("tools", "system"):
            end = _section_end(prompt, boundary)
            if end >= 0:
                seen = tracker.sighting(tenant, digests[end], now)
                reads = {ttl: expected_reads(seen, ttl) for ttl in TTL_S}
                candidates.append(Candidate(boundary, end, upto[end], reads))
        last = len(prompt.blocks) - 1
        if last >= 0 and prompt.blocks[last].section == "messages":
            rates = {ttl: tracker.continuation_rate(tenant, ttl) for ttl in TTL_S}
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
        if earlier is not None and prompt.blocks[earlier[0]].mark is None:
            plan = _with_early_history(plan, earlier[0], last, upto[earlier[0]], min_tokens)
        if record:
            self._record(prompt, digests, tenant, now, None if earlier is None else now - earlier[1])
        return plan

    def _continued(self, prompt: Prompt, digests: list[bytes], tenant: str) -> tuple[int, float] | None:
        """The end of the latest earlier prompt this one extends, and when that prompt was seen."""
        for end in reversed(prompt.message_ends[:-1]):
            if end >= 0:
                before = self.tracker.last_seen(tenant, b"p" + digests[end])
                if before is not None:
                    return end, before
        return None

    def _record(
        self, prompt: Prompt, digests: list[bytes], tenant: str, now: float, continued_after_s: float | None
    ) -> None:
        tracker = self.tracker
        tracker.observe_prompt(tenant, continued_after_s)
        for boundary in ("tools", "system"):
            end = _section_end(prompt, boundary)
            if end >= 0:
                tracker.observe(tenant, digests[end], now)
        if digests:
            tracker.observe(tenant, b"p" + digests[-1], now)

    # -- OpenAI

    def _openai(self, call: Call, tenant: str, native: bool) -> None:
        if native:
            if call.payload.get("prompt_cache_key") is not None:
                call.record.plan = "key=client"
                return
            stable = _openai_stable_prefix(call.payload)
        else:
            req = call.canonical
            if (req.metadata.get(WireAPI.OPENAI_CHAT.value) or {}).get("prompt_cache_key") is not None:
                call.record.plan = "key=client"
                return
            stable = _json_key([[_tool_key(t).decode() for t in req.tools], [p.text for p in req.system]])
        if stable == b"[[],[]]":
            return  # no tools and no system prompt: OpenAI's own prefix routing is all there is
        digest = hashlib.blake2b(tenant.encode() + b"\x00" + stable, digest_size=12).hexdigest()
        key = f"tg-{digest}"
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


def _openai_stable_prefix(body: Mapping[str, Any]) -> bytes:
    """An OpenAI chat body's tools and system texts, serialised as ``canonical_prompt`` serialises the
    canonical request's (so a translated request gets the same key)."""
    tools = []
    for t in body.get("tools") or ():
        fn = t.get("function") if isinstance(t, Mapping) else None
        if isinstance(fn, Mapping):
            tool = [fn.get("name"), fn.get("description"), fn.get("parameters") or {}, fn.get("strict")]
            tools.append(_json_key(tool).decode())
    texts: list[Any] = []
    for m in body.get("messages") or ():
        if not (isinstance(m, Mapping) and m.get("role") in ("system", "developer")):
            break  # leading instructions only, as the canonical request's system
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        else:
            texts += [p.get("text") for p in content or () if isinstance(p, Mapping)]
    return _json_key([tools, texts])


# ---- applying a plan -------------------------------------------------------------------------------------


def _control(ttl: TTL) -> dict[str, str]:
    return {"type": "ephemeral", "ttl": ttl}


def _mark_anthropic_body(call: Call, prompt: Prompt, marks: Sequence[tuple[int, TTL]]) -> None:
    """Adds ``cache_control`` to the native body's blocks (a string system prompt or message content
    becomes one text block), through ``call.rewrite``; the client's objects are copied, never mutated."""
    body = call.payload
    tools = list(body.get("tools") or ())
    system = body.get("system")
    system_blocks = [{"type": "text", "text": system}] if isinstance(system, str) else list(system or ())
    messages = list(body.get("messages") or ())
    touched: set[str] = set()
    for index, ttl in marks:
        block = prompt.blocks[index]
        if block.section == "tools":
            tools[block.where[0]] = {**tools[block.where[0]], "cache_control": _control(ttl)}
        elif block.section == "system":
            system_blocks[block.where[0]] = {**system_blocks[block.where[0]], "cache_control": _control(ttl)}
        else:
            m, j = block.where
            msg = dict(messages[m])
            content = msg.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or ())
            parts[j] = {**parts[j], "cache_control": _control(ttl)}
            msg["content"] = parts
            messages[m] = msg
        touched.add(block.section)
    if "tools" in touched:
        call.rewrite("tools", tools)
    if "system" in touched:
        call.rewrite("system", system_blocks)
    if "messages" in touched:
        call.rewrite("messages", messages)


def _mark_canonical(req: ChatRequest, prompt: Prompt, marks: Sequence[tuple[int, TTL]]) -> ChatRequest:
    """``req`` with ``CacheMark``s on the planned blocks."""
    tools = list(req.tools)
    system = list(req.system)
    messages = list(req.messages)
    for index, ttl in marks:
        block = prompt.blocks[index]
        mark = CacheMark(ttl)
        if block.section == "tools":
            tools[block.where[0]] = replace(tools[block.where[0]], cache=mark)
        elif block.section == "system":
            system[block.where[0]] = replace(system[block.where[0]], cache=mark)
        else:
            m, j = block.where
            parts = list(messages[m].content)
            parts[j] = replace(parts[j], cache=mark)
            messages[m] = Message(messages[m].role, tuple(parts), messages[m].name)
    return replace(req, tools=tuple(tools), system=tuple(system), messages=tuple(messages))
