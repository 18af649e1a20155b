"""The trap guard: decisive tokens must match; the shipped model loads, its threshold follows the budget,
and it ranks a near repeat above a swap and a narrowed scope."""

from __future__ import annotations

from cache.guard import (
    FEATURES,
    MODEL_FILE,
    GuardModel,
    decisive_mismatch,
    features,
    load_guard,
    names,
    numbers,
    tokens,
)


def test_decisive_tokens() -> None:
    assert decisive_mismatch("Flights in March 2016?", "Flights in March 2017?") == "numbers"
    assert decisive_mismatch("What happened in March?", "What happened in April?") == "numbers"
    assert decisive_mismatch("Is coffee healthy?", "Isn't coffee healthy?") == "negation"
    assert decisive_mismatch("Why can't I sleep?", "Why can I not sleep?") is None
    assert decisive_mismatch("Cost of 1,000 shares?", "cost of 1000 shares") is None
    assert numbers(tokens("a ps4 or xbox")) == frozenset({"ps4"})
    assert names("Is Apple bigger than Samsung?") == frozenset({"apple", "samsung"})


def test_the_features_see_a_swap() -> None:
    idf: dict[str, float] = {}
    same = features("Move from India to Canada", "Move from India to Canada", 1.0, idf, 5.0)
    swapped = features("Move from India to Canada", "Move from Canada to India", 0.98, idf, 5.0)
    assert same[7] == 0.0 and swapped[7] > 0.0  # order_inversions


def test_a_lower_cased_repeat_keeps_its_names_and_contractions_are_expanded() -> None:
    idf: dict[str, float] = {}
    names_unshared = FEATURES.index("names_unshared")
    lowered = features("Is Apple bigger than Samsung?", "is apple bigger than samsung", 0.99, idf, 5.0)
    other_city = features("Living in Krakow, Poland?", "Living in Warsaw, Poland?", 0.95, idf, 5.0)
    assert lowered[names_unshared] == 0.0 and other_city[names_unshared] == 2.0
    assert tokens("What're you and I'm who?") == tokens("What are you and I am who?")


def test_the_threshold_follows_the_budget() -> None:
    model = GuardModel.from_json(__import__("json").loads(MODEL_FILE.read_text()))
    thresholds = [model.threshold_for(b) for b in (0.01, 0.05, 0.1, 0.2, 0.5)]
    assert thresholds == sorted(thresholds, reverse=True)
    assert thresholds[-1] <= 0.5 + 1e-9 and thresholds[0] > thresholds[-1]


def test_the_shipped_model_ranks_rewordings_above_traps() -> None:
    guard = load_guard(max_wrong_hit_rate=0.1)
    q = "What is the best way to learn French?"
    near = guard.score(q, "What's the best way to learn French", 0.97)
    scope = guard.score(q, "What is the best way to learn French in Canada?", 0.9)
    swap = guard.score("How do I move from India to Canada?", "How do I move from Canada to India?", 0.98)
    number = guard.score("Best phones under 200 dollars?", "Best phones under 300 dollars?", 0.97)
    assert near > scope and near > swap and number == 0.0
    assert guard.accept(q, q, 1.0)


def test_the_same_words_in_the_same_order_are_the_same_question() -> None:
    guard = load_guard(max_wrong_hit_rate=0.1)
    assert guard.accept("What is the capital of France?", "what is the capital of france", 0.99)
    assert guard.score("Move from India to Canada", "move from canada to india", 0.98) < 1.0
