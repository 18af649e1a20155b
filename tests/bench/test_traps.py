"""The trap and paraphrase pairs: at least 300 of each trap kind and of paraphrases, each trap really
differs, and no evaluation pair shares a source question with a training pair."""

from __future__ import annotations

from collections import Counter

from bench import traps


def test_the_committed_pairs_have_every_kind_and_are_disjoint() -> None:
    ev, tr = traps.load("eval"), traps.load("train")
    counts = Counter(p["kind"] for p in ev)
    for kind in ("negation", "number", "swap", "scope", "conversation"):
        assert counts[kind] >= 300
    assert counts["paraphrase"] >= 300 and all(p["same"] for p in ev if p["kind"] == "paraphrase")
    assert not any(p["same"] for p in ev if p["kind"] != "paraphrase")
    assert all(p["a"] != p["b"] for p in ev if p["kind"] not in ("conversation",))
    assert all(p["context_a"] != p["context_b"] for p in ev if p["kind"] == "conversation")
    train_questions = {q for p in tr for q in (p["a"], p["b"])}
    assert not train_questions & {p["a"] for p in ev if not p.get("template")}


def test_generators() -> None:
    import random

    rng = random.Random(0)
    assert traps.negate("Why can't I sleep?", rng) == "Why can I sleep?"
    assert traps.renumber("Flights in 2016?", rng) not in (None, "Flights in 2016?")
    assert traps.swap("How do I fly from India to Canada?", rng) == "How do I fly from Canada to India?"
    assert traps.rescope("Is Python hard to learn?", rng) not in (None, "Is Python hard to learn?")
