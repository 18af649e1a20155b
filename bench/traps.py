"""Builds the semantic cache's trap and paraphrase pairs from QQP questions (deterministic, seeded).

A *trap* is a pair of questions that look alike but deserve different answers; a *paraphrase* a pair that
deserves the same answer. Kinds:

    negation      a negation added or removed, or a word swapped for its antonym
    number        a number, year, month, weekday or amount changed
    swap          two entities swapped around an asymmetric relation (from A to B, A better than B)
    scope         a place, platform, audience or language changed, or a qualifier added
    conversation  the same last message after different earlier turns
    paraphrase    QQP pairs labelled duplicate, and near repeats (rewording, contractions, politeness)

Questions are split in two by a hash of their text: ``train`` pairs (for fitting the guard,
``bench/guard_train.py``) never share a source question with ``eval`` pairs (``bench/data/``, what the
benchmark reports). Templates and entity lists for swaps are split the same way.

    python -m bench.traps            # writes bench/data/cache_pairs.{eval,train}.jsonl
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _shared_data() -> Path:
    """``../shared/data`` beside the checkout (a worktree under ``/work/wt/`` looks two levels up too)."""
    here = Path(__file__).resolve().parents[1]
    for up in (here.parent, here.parent.parent):
        if (up / "shared" / "data").is_dir():
            return up / "shared" / "data"
    return here.parent / "shared" / "data"


QQP = _shared_data() / "qqp_pairs.dev.jsonl.gz"
OUT = Path(__file__).resolve().parent / "data"
PER_KIND = 320

_MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
ANTONYMS = [
    ("good", "bad"),
    ("best", "worst"),
    ("better", "worse"),
    ("increase", "decrease"),
    ("advantages", "disadvantages"),
    ("before", "after"),
    ("more", "less"),
    ("cheap", "expensive"),
    ("cheapest", "most expensive"),
    ("easy", "hard"),
    ("easiest", "hardest"),
    ("fast", "slow"),
    ("faster", "slower"),
    ("legal", "illegal"),
    ("safe", "dangerous"),
    ("healthy", "unhealthy"),
    ("love", "hate"),
    ("win", "lose"),
    ("rich", "poor"),
    ("high", "low"),
    ("start", "stop"),
    ("buy", "sell"),
    ("import", "export"),
    ("positive", "negative"),
    ("possible", "impossible"),
    ("happy", "sad"),
    ("maximum", "minimum"),
    ("strongest", "weakest"),
    ("biggest", "smallest"),
    ("first", "last"),
    ("old", "new"),
    ("gain", "lose"),
    ("increase", "reduce"),
    ("pros", "cons"),
    ("true", "false"),
    ("always", "never"),
    ("accept", "reject"),
    ("success", "failure"),
    ("men", "women"),
    ("boys", "girls"),
    ("young", "old"),
    ("early", "late"),
    ("hot", "cold"),
]
_AUX = re.compile(r"\b(is|are|was|were|can|could|should|would|will|does|do|did|has|have|must)\b", re.I)
_NEG = re.compile(r"\s+not\b|\b(?:ca|wo|[a-z]+)n't\b|\bnever\s+", re.I)
_NUM = re.compile(r"(?<![\w.])\$?\d+(?:,\d{3})*(?:\.\d+)?%?(?![\w])")
_UNNEG = {"can't": "can", "won't": "will", "cannot": "can"}

SCOPES = {
    "place": [
        "India",
        "the USA",
        "Canada",
        "Germany",
        "Australia",
        "Japan",
        "Brazil",
        "the UK",
        "France",
        "Nigeria",
        "Singapore",
        "Mexico",
        "Delhi",
        "Mumbai",
        "London",
        "New York",
        "Bangalore",
        "California",
        "Texas",
        "Dubai",
    ],
    "platform": ["Android", "iPhone", "Windows", "Mac", "Linux", "iOS", "Ubuntu", "PS4", "Xbox"],
    "language": ["Python", "Java", "C++", "JavaScript", "PHP", "Ruby", "Go", "C#", "R", "Swift"],
    "audience": [
        "beginners",
        "experts",
        "kids",
        "adults",
        "students",
        "seniors",
        "women",
        "men",
        "engineers",
        "doctors",
    ],
}
QUALIFIERS = [
    "in India",
    "for beginners",
    "on Windows",
    "for kids",
    "without a degree",
    "in winter",
    "for a small business",
    "in the USA",
    "at night",
    "for free",
    "on a budget",
    "in Python",
]

SWAP_ENTITIES = [
    [
        "India",
        "Pakistan",
        "China",
        "Japan",
        "Germany",
        "France",
        "Canada",
        "Mexico",
        "Brazil",
        "Russia",
        "Italy",
        "Spain",
        "Egypt",
        "Kenya",
        "Norway",
        "Sweden",
    ],
    ["Python", "Java", "C++", "Rust", "Go", "Ruby", "Perl", "Haskell", "Kotlin", "Scala"],
    ["Apple", "Samsung", "Google", "Microsoft", "Amazon", "Facebook", "Intel", "AMD", "Nokia", "Sony"],
    ["dollars", "euros", "rupees", "pounds", "yen", "pesos", "bitcoin", "francs"],
    ["English", "Spanish", "French", "German", "Hindi", "Mandarin", "Arabic", "Italian", "Russian"],
]
SWAP_TEMPLATES = [
    "How do I move from {a} to {b}?",
    "Is {a} better than {b}?",
    "How do I convert {a} to {b}?",
    "Why is {a} more popular than {b}?",
    "How long is the flight from {a} to {b}?",
    "How do I translate from {a} into {b}?",
    "Did {a} copy {b}?",
    "Why did {a} lose to {b}?",
    "What is the exchange rate from {a} to {b}?",
    "Can {a} replace {b}?",
    "How did {a} influence {b}?",
    "Why is {a} faster than {b}?",
    "Should I switch from {a} to {b}?",
    "Is {a} cheaper than {b}?",
    "How can {a} beat {b}?",
    "Why does {a} hate {b}?",
]
CONTEXTS = [
    ("Let's talk about cooking.", "Sure, what would you like to know?"),
    ("I am planning a trip to Japan.", "Great, how can I help?"),
    ("I run a small bakery.", "Nice. What do you need?"),
    ("We were discussing Python earlier.", "Yes, go on."),
    ("My daughter is eight.", "Understood."),
    ("I work as a nurse in Ohio.", "Thanks for the context."),
    ("Answer as a lawyer would.", "Of course."),
    ("I'm writing a science fiction novel.", "Sounds fun. Ask away."),
]


def split_of(text: str) -> str:
    return "train" if int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 2 == 0 else "eval"


# ---- one transformation per kind: a question in, a trap (or None) out -------------------------------


def negate(q: str, rng: random.Random) -> str | None:
    if _NEG.search(q):

        def drop(m: re.Match[str]) -> str:
            word = m.group(0).strip()
            if word.lower() == "never":
                return " "
            if word.lower().endswith("n't"):
                return _UNNEG.get(word.lower(), word[:-3])
            return ""

        out = _NEG.sub(drop, q, count=1)
        return re.sub(r"\s{2,}", " ", out).strip()
    words = re.findall(r"[A-Za-z]+", q.lower())
    pairs = [(a, b) for a, b in ANTONYMS if a in words] + [(b, a) for a, b in ANTONYMS if b in words]
    if pairs and rng.random() < 0.5:
        a, b = rng.choice(pairs)
        return re.sub(rf"\b{a}\b", b, q, count=1, flags=re.I)
    m = _AUX.search(q, 1)
    if m is None:
        return None
    return q[: m.end()] + " not" + q[m.end() :]


def renumber(q: str, rng: random.Random) -> str | None:
    m = _NUM.search(q)
    if m is not None:
        raw = m.group(0)
        digits = raw.strip("$%").replace(",", "")
        try:
            value = float(digits)
        except ValueError:
            return None
        if 1900 <= value <= 2035 and "." not in digits:
            new = str(int(value) + rng.choice([-10, -5, -3, -2, -1, 1, 2, 3, 5]))
        elif "." in digits:
            new = f"{value * rng.choice([0.5, 2, 3, 1.5]):g}"
        else:
            n = int(value)
            new = str(rng.choice([n + 1, n + 2, n * 2, n * 10, max(n - 1, 0) if n > 1 else n + 3]))
        new = ("$" if raw.startswith("$") else "") + new + ("%" if raw.endswith("%") else "")
        return q[: m.start()] + new + q[m.end() :]
    for names in (_MONTHS, _DAYS, _WORDS):
        for name in names:
            if re.search(rf"\b{name}\b", q, re.I):
                other = rng.choice([n for n in names if n != name])
                return re.sub(
                    rf"\b{name}\b",
                    lambda m, o=other: o.capitalize() if m.group(0)[0].isupper() else o,
                    q,
                    count=1,
                    flags=re.I,
                )
    return None


_FROM_TO = re.compile(r"\bfrom ([A-Z][\w+#]*(?: [A-Z][\w+#]*)?) (to|into) ([A-Z][\w+#]*(?: [A-Z][\w+#]*)?)")
_THAN = re.compile(r"\b([A-Z][\w+#]*) ((?:is |are )?(?:\w+er|more \w+|less \w+) than) ([A-Z][\w+#]*)")


def swap(q: str, rng: random.Random) -> str | None:
    for pat in (_FROM_TO, _THAN):
        m = pat.search(q)
        if m is not None and m.group(1) != m.group(3):
            if pat is _FROM_TO:
                return q[: m.start()] + f"from {m.group(3)} {m.group(2)} {m.group(1)}" + q[m.end() :]
            return q[: m.start()] + f"{m.group(3)} {m.group(2)} {m.group(1)}" + q[m.end() :]
    return None


def rescope(q: str, rng: random.Random) -> str | None:
    for values in SCOPES.values():
        for v in values:
            if re.search(rf"(?<![\w+#]){re.escape(v)}(?![\w+#])", q):
                other = rng.choice([x for x in values if x != v])
                return re.sub(rf"(?<![\w+#]){re.escape(v)}(?![\w+#])", other, q, count=1)
    if len(q) > 120 or not q.endswith("?") or q.count("?") > 1 or "." in q:
        return None
    qual = rng.choice(QUALIFIERS)
    if qual.split()[-1].lower() in q.lower():
        return None
    return q[:-1].rstrip() + " " + qual + "?"


_REWORDS = [
    (r"^What is\b", "What's"),
    (r"^What's\b", "What is"),
    (r"^How do I\b", "How can I"),
    (r"^How can I\b", "How do I"),
    (r"^How do you\b", "How does one"),
    (r"^Which is\b", "What is"),
    (r"\bbest way to\b", "best method to"),
    (r"\bI'm\b", "I am"),
    (r"\bdon't\b", "do not"),
    (r"\bcan't\b", "cannot"),
    (r"^Why do\b", "For what reason do"),
    (r"^Why is\b", "For what reason is"),
    (r"^What are\b", "What're"),
    (r"\bsome\b", "a few"),
]


def reword(q: str, rng: random.Random) -> str:
    out = q
    hits = [(p, r) for p, r in _REWORDS if re.search(p, out)]
    for p, r in rng.sample(hits, min(len(hits), 2)):
        out = re.sub(p, r, out, count=1)
    style = rng.choice(["polite", "lower", "strip", "prefix", "none"])
    if style == "polite":
        out = "Please tell me: " + out[0].lower() + out[1:]
    elif style == "lower":
        out = out.lower()
    elif style == "strip":
        out = out.rstrip("?").rstrip() + (" ?" if rng.random() < 0.5 else "")
    elif style == "prefix":
        out = "Quick question. " + out
    if out == q:
        out = "Hi! " + q
    return out


GENERATORS: dict[str, Callable[[str, random.Random], str | None]] = {
    "negation": negate,
    "number": renumber,
    "swap": swap,
    "scope": rescope,
}


def _pair(a: str, b: str, kind: str, same: bool, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "a": a, "b": b, "same": same, **extra}


def build(split: str, seed: int = 13, per_kind: int = PER_KIND) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}-{split}")
    with gzip.open(QQP, "rt") as f:
        rows = [json.loads(line) for line in f]
    questions = sorted(
        {q for r in rows for q in (r["a"], r["b"]) if split_of(q) == split and 15 < len(q) < 160}
    )
    rng.shuffle(questions)
    out: list[dict[str, Any]] = []
    for kind, gen in GENERATORS.items():
        made: list[dict[str, Any]] = []
        for q in questions:
            if len(made) >= per_kind:
                break
            t = gen(q, rng)
            if t and t.strip() != q.strip():
                made.append(_pair(q, t, kind, False))
        if kind == "swap":  # few natural ones: fill with templates (split by template and entities)
            tmpl = [t for i, t in enumerate(SWAP_TEMPLATES) if (i % 2 == 0) == (split == "train")]
            while len(made) < per_kind:
                group = rng.choice(SWAP_ENTITIES)
                ents = [e for i, e in enumerate(group) if (i % 2 == 0) == (split == "train")]
                a, b = rng.sample(ents, 2)
                t = rng.choice(tmpl)
                made.append(_pair(t.format(a=a, b=b), t.format(a=b, b=a), kind, False, template=True))
        out.extend(made)
    for q in questions[:per_kind]:  # the same words in different conversations
        ca, cb = rng.sample(CONTEXTS, 2)
        out.append(_pair(q, q, "conversation", False, context_a=list(ca), context_b=list(cb)))
    dups = [r for r in rows if r["duplicate"] and split_of(r["a"]) == split and split_of(r["b"]) == split]
    rng.shuffle(dups)
    out.extend(_pair(r["a"], r["b"], "paraphrase", True, source="qqp") for r in dups[:per_kind])
    out.extend(_pair(q, reword(q, rng), "paraphrase", True, source="reworded") for q in questions[-per_kind:])
    return out


def write(pairs: Iterable[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")


def load(split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (OUT / f"cache_pairs.{split}.jsonl").open()]


def main() -> None:
    for split in ("eval", "train"):
        pairs = build(split)
        write(pairs, OUT / f"cache_pairs.{split}.jsonl")
        counts: dict[str, int] = {}
        for p in pairs:
            counts[p["kind"]] = counts.get(p["kind"], 0) + 1
        print(split, counts)


if __name__ == "__main__":
    main()
