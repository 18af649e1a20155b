"""The headline benchmark's workload (``bench/savings.py``): a seeded mix of labelled requests.

    build(n, split, seed) -> Workload

By request count: 35% support questions, 25% chat turns, 25% mixed-difficulty prompts sent to ``auto``,
15% bulk classification items sent as one batch job. Every request carries what is needed to score its
answer without reading the simulator's text for meaning:

* **support** (tenants ``support-1..3``, model ``gpt-4o``): QQP pairs. Each pair's first question is asked,
  and later (by the same tenant) its second question, which is a duplicate (the first answer is right for
  it) or not (the first answer is wrong). A fifth of the pairs are asked by a second tenant too (the same
  two questions: an answer must never cross tenants). A tenth of the support requests are **trivial
  prompts** (capitals, colours, small sums: one expected word) that the bot sends with its small model,
  ``gpt-4o-mini``: where the config allows, the local model serves them and its answer is checked for
  the expected word.
* **chat** (tenant ``chat-app``, model ``claude-sonnet-4-5`` through the Anthropic API): conversations of
  ``CHAT_TURNS`` turns from MT-Bench questions, one long system prompt and a set of tools shared by every
  user; each turn carries the conversation so far (the answers the client actually got).
* **routing** (tenant ``analytics``, model ``auto``): the routing pairs' held-out prompts (never seen by the
  shipped classifier), with whether the weak and the strong model answer each correctly.
* **batch** (tenant ``bulk``, model ``gpt-4o``): questions to classify, one job through ``/v1/batches``;
  5% of the items repeat an earlier one (bulk data has duplicates).

Splits: ``dev`` and ``report`` draw from disjoint rows (QQP pairs 8,000-20,000 vs 20,000-60,000 of the
seeded shuffle the guard benchmark uses — the guard was trained on 2,000-8,000; the routing held-out set's
even vs odd positions). Configurations are tuned on ``dev``; the published table is ``report``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.guard_train import qqp_rows
from bench.workloads import load_mtbench
from routing.train import DEFAULT_DATA, load_pairs, split

Share = Literal["support", "trivial", "chat", "routing", "batch"]
SHARES: tuple[Share, ...] = ("support", "trivial", "chat", "routing", "batch")
MIX = {"support": 0.35, "chat": 0.25, "routing": 0.25, "batch": 0.15}
TRIVIAL_SHARE = 0.10  # of the support share
SECOND_TENANT_SHARE = 0.2  # of the support pairs
BATCH_DUPLICATES = 0.05
CHAT_TURNS = 3
SUPPORT_TENANTS = ("support-1", "support-2", "support-3")
TENANTS = (*SUPPORT_TENANTS, "chat-app", "analytics", "bulk")
STRONG = "gpt-4o"
WEAK = "gpt-4o-mini"
CHAT_MODEL = "claude-sonnet-4-5"
MAX_TOKENS = {"support": 200, "trivial": 16, "chat": 300, "routing": 200, "batch": 16}

TRIVIAL: tuple[tuple[str, str], ...] = (
    ("What is the capital of France? Answer with one word.", "paris"),
    ("What is the capital of Japan? Answer with one word.", "tokyo"),
    ("What is the capital of Italy? Answer with one word.", "rome"),
    ("What is the capital of Germany? Answer with one word.", "berlin"),
    ("What is the capital of Spain? Answer with one word.", "madrid"),
    ("What is the capital of England? Answer with one word.", "london"),
    ("What is the capital of Russia? Answer with one word.", "moscow"),
    ("What is the capital of Egypt? Answer with one word.", "cairo"),
    ("What is the capital of China? Answer with one word.", "beijing"),
    ("What is the capital of Greece? Answer with one word.", "athens"),
    ("Reply with the single word: yes", "yes"),
    ("Say hello.", "hello"),
    ("What color is the sky on a clear day? One word.", "blue"),
    ("What color is grass? One word.", "green"),
    ("How many days are in a week? Answer with a number.", "7"),
    ("What is 2 + 2? Answer with a number.", "4"),
    ("What is 3 + 4? Answer with a number.", "7"),
    ("Translate 'thank you' into French.", "merci"),
    ("Translate 'hello' into Spanish.", "hola"),
    ("What is the opposite of hot? One word.", "cold"),
    ("What animal says meow? One word.", "cat"),
    ("What animal barks? One word.", "dog"),
    ("How many legs does a spider have? Answer with a number.", "8"),
    ("What is the first month of the year?", "january"),
    ("What planet do we live on?", "earth"),
)

SYSTEM_PROMPT_HEAD = (
    "You are Nimbus, the in-app assistant of Nimbus Cloud Storage. Follow the policies below in every "
    "answer. Be concise, cite the policy section you relied on, and never invent account details.\n\n"
)
POLICY_TOPICS = (
    "account recovery",
    "two-factor authentication",
    "billing disputes",
    "refund windows",
    "storage quotas",
    "shared folders",
    "data export",
    "deletion and retention",
    "enterprise single sign-on",
    "API rate limits",
    "desktop sync conflicts",
    "mobile uploads",
    "security incidents",
    "accessibility",
    "education discounts",
    "team administration",
)
TOOLS: list[dict[str, Any]] = [
    {
        "name": name,
        "description": desc,
        "input_schema": {
            "type": "object",
            "properties": {
                p: {"type": "string", "description": f"The {p.replace('_', ' ')}."} for p in props
            },
            "required": list(props[:1]),
        },
    }
    for name, desc, props in (
        ("lookup_account", "Look up the signed-in user's plan, quota and billing status.", ("user_id",)),
        ("search_help_center", "Search the help center articles.", ("query", "locale")),
        ("open_ticket", "Open a support ticket for a human agent.", ("summary", "priority", "category")),
        ("get_file_history", "List the versions of a file.", ("file_id", "since")),
    )
]


def system_prompt() -> str:
    """A ~2,300-token policy document shared by every chat user (deterministic)."""
    rng = random.Random(12)
    verbs = ("must", "should", "may", "never", "always")
    parts = [SYSTEM_PROMPT_HEAD]
    for i, topic in enumerate(POLICY_TOPICS, 1):
        parts.append(f"## Section {i}: {topic}\n")
        for j in range(1, 4):
            parts.append(
                f"{i}.{j} The assistant {rng.choice(verbs)} explain {topic} step {j} in plain words, "
                f"point the user to Settings > {topic.title()} and, when the user is blocked for more than "
                f"{rng.randint(2, 48)} hours, offer to open a ticket with priority {rng.choice(('low', 'normal', 'high'))}.\n"
            )
    return "".join(parts)


@dataclass(slots=True)
class Request:
    """One request of the workload. ``after``: the id of a request that must be answered first (the
    first question of a pair, the previous chat turn). ``label`` holds what scores the answer:
    support ``{pair, duplicate, origin}``, trivial ``{expected}``, routing ``{weak, strong}``."""

    id: str
    share: Share
    tenant: str
    model: str
    text: str
    after: str | None = None
    conversation: str | None = None
    label: dict[str, Any] = field(default_factory=dict)

    @property
    def max_tokens(self) -> int:
        return MAX_TOKENS[self.share]


@dataclass(slots=True)
class Workload:
    requests: list[Request]
    """Interactive requests in the order they are started (support, trivial, chat, routing)."""
    batch: list[Request]
    """The bulk job's items, in file order."""
    duplicates: dict[str, bool]
    """Support: ``{text_a + "\\0" + text_b: duplicate}`` for every labelled pair, both orders."""
    meta: dict[str, Any]


def _qqp(split_name: str) -> list[dict[str, Any]]:
    rows = qqp_rows()
    return rows[8000:20000] if split_name == "dev" else rows[20000:]


def _routing(split_name: str) -> list[dict[str, Any]]:
    rows = load_pairs(DEFAULT_DATA)
    _, test = split(len(rows))
    picked = test[0::2] if split_name == "dev" else test[1::2]
    return [rows[int(i)] for i in picked]


def _interleave(rng: random.Random, streams: list[list[Request]]) -> Iterator[Request]:
    """Merge ordered streams at random, keeping each stream's order."""
    live = [list(s) for s in streams if s]
    while live:
        pick = rng.choices(range(len(live)), weights=[len(s) for s in live])[0]
        yield live[pick].pop(0)
        if not live[pick]:
            live.pop(pick)


def build(n: int, split_name: str = "report", seed: int = 12) -> Workload:
    """``n`` requests in the mix above (batch items included), seeded."""
    if split_name not in ("dev", "report"):
        raise ValueError(f"split must be 'dev' or 'report', not {split_name!r}")
    rng = random.Random(seed)
    n_support_total = round(n * MIX["support"])
    n_support = (n_support_total - round(n_support_total * TRIVIAL_SHARE)) // 2 * 2  # whole pairs
    n_trivial = n_support_total - n_support
    n_chat = round(n * MIX["chat"])
    n_routing = round(n * MIX["routing"])
    n_batch = n - n_support_total - n_chat - n_routing

    qqp = _qqp(split_name)
    rng.shuffle(qqp)
    duplicates: dict[str, bool] = {}
    per_tenant: dict[str, list[Request]] = {t: [] for t in SUPPORT_TENANTS}
    made, p = 0, 0
    while made < n_support:
        row = qqp[p]
        p += 1
        dup = bool(row["duplicate"])
        duplicates[row["a"] + "\0" + row["b"]] = duplicates[row["b"] + "\0" + row["a"]] = dup
        tenants = [rng.choice(SUPPORT_TENANTS)]
        if rng.random() < SECOND_TENANT_SHARE and n_support - made >= 4:
            tenants.append(rng.choice([t for t in SUPPORT_TENANTS if t != tenants[0]]))
        for t in tenants:
            first = Request(f"s{p}-{t}-a", "support", t, STRONG, row["a"], label={"pair": p, "first": True})
            second = Request(
                f"s{p}-{t}-b", "support", t, STRONG, row["b"], after=first.id,
                label={"pair": p, "first": False, "duplicate": dup},
            )  # fmt: skip
            per_tenant[t] += [first, second]
            made += 2
    for i in range(n_trivial):
        prompt, expected = TRIVIAL[rng.randrange(len(TRIVIAL))]
        t = rng.choice(SUPPORT_TENANTS)
        per_tenant[t].append(Request(f"t{i}-{t}", "trivial", t, WEAK, prompt, label={"expected": expected}))
    support_stream: list[Request] = []
    for t in SUPPORT_TENANTS:
        reqs = per_tenant[t]
        rng.shuffle(reqs)
        pos = {r.id: k for k, r in enumerate(reqs)}
        for r in list(reqs):  # a pair's second question after its first
            if r.after is not None and pos[r.after] > pos[r.id]:
                i, j = pos[r.after], pos[r.id]
                reqs[i], reqs[j] = reqs[j], reqs[i]
                pos[reqs[i].id], pos[reqs[j].id] = i, j
        support_stream += reqs

    questions = load_mtbench(DEFAULT_DATA.parent / "mtbench_questions.jsonl")
    rng.shuffle(questions)
    followups = (
        "Can you make that shorter?",
        "Which policy section applies here?",
        "Thanks. What should I do next?",
    )
    chats: list[list[Request]] = []
    c = 0
    while sum(len(s) for s in chats) < n_chat:
        q = questions[c % len(questions)]
        turns = [q["turns"][0], q["turns"][1], followups[c % len(followups)]][:CHAT_TURNS]
        turns = turns[: n_chat - sum(len(s) for s in chats)]
        conv: list[Request] = []
        for k, text in enumerate(turns):
            conv.append(
                Request(
                    f"c{c}-{k}", "chat", "chat-app", CHAT_MODEL, text,
                    after=conv[-1].id if conv else None, conversation=f"c{c}",
                )
            )  # fmt: skip
        chats.append(conv)
        c += 1

    routing_rows = _routing(split_name)
    rng.shuffle(routing_rows)
    routing_reqs = [
        Request(f"r{i}", "routing", "analytics", "auto", row["prompt"],
                label={"weak": bool(row["weak_correct"]), "strong": bool(row["strong_correct"])})
        for i, row in enumerate(routing_rows[:n_routing])
    ]  # fmt: skip

    pool = [row["a"] for row in qqp[p : p + n_batch]]
    batch: list[Request] = []
    for i in range(n_batch):
        if batch and rng.random() < BATCH_DUPLICATES:
            question = batch[rng.randrange(len(batch))].label["question"]
        else:
            question = pool[i]
        text = f"{question}\n\nClassify this customer question as account, billing, technical or other."
        batch.append(Request(f"b{i}", "batch", "bulk", STRONG, text, label={"question": question}))

    requests = list(_interleave(rng, [support_stream, *chats, routing_reqs]))
    meta = {
        "n": n,
        "split": split_name,
        "seed": seed,
        "counts": {
            "support": n_support,
            "trivial": n_trivial,
            "chat": n_chat,
            "routing": n_routing,
            "batch": n_batch,
        },
        "conversations": len(chats),
        "support_pairs": p,
        "tenants": list(TENANTS),
    }
    return Workload(requests, batch, duplicates, meta)
