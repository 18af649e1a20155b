"""The fixed prompts of the local engine benchmark, turned into token ids once for every engine.

Texts come from the MT-Bench questions (`../shared/data/mtbench_questions.jsonl`) and from the
documents below, so every run on every machine sees the same tokens. `build_workload(encode, chat)`
returns plain lists of token ids (JSON-serialisable): the parent tokenizes once and each engine,
ours and the anchors, is fed the same ids, so tokenizer differences cannot skew a comparison.

- `prefill`: a 512-token text (prefill speed).
- `contexts`: 128- and 2,048-token texts, continued greedily (decode speed at that context).
- `streams`: 16 different 128-token texts (aggregate throughput at 1/4/8/16 concurrent streams);
  all the same length so engines with static batching need no padding.
- `ttft`: a ~1,000-token system prompt shared by two chat turns: `warm` (seen first) and `hit`
  (a new user turn whose prefix was seen) — time to first token cold vs with a prefix hit.
- `ppl`: a 512-token text for perplexity.
- `greedy`: chat prompts for greedy agreement between variants.
- `extraction`: answers that copy from the prompt (quote, summarise, extract, edit code).
- `chat`: open-ended MT-Bench first turns.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _shared(name: str) -> Path:
    """``../shared/data/NAME`` beside the checkout, or beside the folder of worktrees holding it."""
    root = Path(__file__).resolve().parents[1]
    for base in (root.parent, root.parent.parent):
        if (base / "shared" / "data" / name).exists():
            return base / "shared" / "data" / name
    return root.parent / "shared" / "data" / name


MTBENCH = _shared("mtbench_questions.jsonl")

Encode = Callable[[str], list[int]]
Chat = Callable[[Sequence[dict[str, str]]], list[int]]  # messages → ids ending in the assistant header

ARTICLE = """\
The city council of Riverton voted on Tuesday to convert the old tram depot on Mill Street into a
public library and makerspace. The building, which has stood empty since the tram line closed in
1987, will keep its brick facade and iron roof trusses. Inside, architects from the firm Holm &
Vega plan two floors of reading rooms, a children's wing, and a workshop with 3D printers, laser
cutters and sewing machines that residents can book by the hour. The project is expected to cost
14.2 million dollars, of which 9 million will come from a state heritage grant and the rest from
the city's capital budget. Construction is scheduled to begin in March and to finish within
twenty-two months. Council member Dana Okafor, who proposed the plan, said the depot "belongs to
everyone who grew up hearing the trams" and that the makerspace would give young people "a place
to build things instead of just buying them". Two members voted against the plan, arguing that the
money would be better spent on repairing roads in the northern districts. The library's current
branch on Elm Avenue, which is too small for its 40,000 books, will close when the depot opens and
its staff of eleven will move to the new building.
"""

CODE = """\
def longest_common_subsequence_length(str1, str2):
    m = len(str1)
    n = len(str2)

    dp = [[0] * (n + 1) for _ in range(m + 1)]

    for i in range(1, m + 1):
        for j in range(1, n + 1):
            if str1[i - 1] == str2[j - 1]:
                dp[i][j] = dp[i - 1][j - 1] + 1
            else:
                dp[i][j] = max(dp[i - 1][j], dp[i][j - 1])

    return dp[m][n]
"""

EXTRACTION_PROMPTS: tuple[tuple[str, str], ...] = (
    (
        "quote",
        f"Quote, word for word, the sentence of this article that gives the cost of the project.\n\n{ARTICLE}",
    ),
    ("summarise", f"Summarise this article in three sentences, reusing its own wording.\n\n{ARTICLE}"),
    ("repeat", f"Copy the following text exactly, without any change.\n\n{ARTICLE}"),
    (
        "rename",
        f"Rewrite this Python function with the variable `dp` renamed to `table`. Output only the code.\n\n```python\n{CODE}```",
    ),
    (
        "type_hints",
        f"Add type hints to this Python function and output the whole function.\n\n```python\n{CODE}```",
    ),
)
EXTRACTION_MTBENCH_IDS = (133, 135, 137)  # MT-Bench "extraction" turns that copy spans of their text
CHAT_SAMPLE = 10
GREEDY_PROMPTS = ("What is the capital of France?",)
GREEDY_MTBENCH = 5


def load_mtbench(path: Path = MTBENCH) -> list[dict[str, Any]]:
    """The 80 MT-Bench questions, in file order."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def long_text(questions: Sequence[dict[str, Any]]) -> str:
    """About 7,500 tokens of English: every MT-Bench question and follow-up as a numbered paragraph."""
    parts = []
    for q in questions:
        parts.append(f"Question {q['question_id']} ({q['category']}): {q['turns'][0]}")
        parts.append(f"Follow-up: {q['turns'][1]}")
    return "\n\n".join(parts)


def _window(ids: list[int], start: int, length: int) -> list[int]:
    assert start + length <= len(ids), f"text too short: need {start + length} tokens, have {len(ids)}"
    return ids[start : start + length]


def _spread(questions: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """n questions spread over the categories (round-robin over the category order in the file)."""
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for q in questions:
        by_cat.setdefault(q["category"], []).append(q)
    out: list[dict[str, Any]] = []
    i = 0
    while len(out) < n:
        for qs in by_cat.values():
            if i < len(qs) and len(out) < n:
                out.append(qs[i])
        i += 1
    return out


def build_workload(encode: Encode, chat: Chat, mtbench: Path = MTBENCH) -> dict[str, Any]:
    """Every prompt of the benchmark as token ids (plus the texts, for engines that take text)."""
    questions = load_mtbench(mtbench)
    text = long_text(questions)
    ids = encode(text)

    system_parts: list[str] = []
    for q in questions[::-1]:  # from the end, so it does not repeat the decode texts' beginning
        system_parts.append(f"- {q['turns'][0]}")
        if len(encode("\n".join(system_parts))) >= 950:
            break
    system = (
        "You are the help-desk assistant of a tutoring service. Students send questions like the "
        "examples below; answer briefly and say which example is closest.\n\nExamples:\n"
        + "\n".join(system_parts)
    )

    def turn(user: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    warm = chat(turn("How do I find the median of two sorted arrays?"))
    hit = chat(turn("Can you help me write a persuasive email to my friend?"))
    shared = next(i for i, (a, b) in enumerate(zip(warm, hit, strict=False)) if a != b)

    extraction = [
        {"name": name, "messages": [{"role": "user", "content": p}]} for name, p in EXTRACTION_PROMPTS
    ]
    by_id = {q["question_id"]: q for q in questions}
    for qid in EXTRACTION_MTBENCH_IDS:
        extraction.append(
            {"name": f"mtbench-{qid}", "messages": [{"role": "user", "content": by_id[qid]["turns"][0]}]}
        )
    chat_items: list[dict[str, Any]] = [
        {"name": f"mtbench-{q['question_id']}", "messages": [{"role": "user", "content": q["turns"][0]}]}
        for q in _spread(questions, CHAT_SAMPLE)
    ]
    greedy_items: list[dict[str, Any]] = [
        {"name": p, "messages": [{"role": "user", "content": p}]} for p in GREEDY_PROMPTS
    ]
    greedy_items += chat_items[:GREEDY_MTBENCH]
    for item in (*extraction, *chat_items, *greedy_items):
        item["ids"] = chat(item["messages"])

    return {
        "prefill": _window(ids, 0, 512),
        "contexts": {"128": _window(ids, 600, 128), "2048": _window(ids, 0, 2048)},
        "streams": [_window(ids, 130 * i, 128) for i in range(16)],
        "ttft": {"warm": warm, "hit": hit, "shared_prefix_tokens": shared},
        "ppl": _window(ids, 2100, 512),
        "greedy": greedy_items,
        "extraction": extraction,
        "chat": chat_items,
    }
