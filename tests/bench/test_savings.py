"""The headline benchmark's workload and scoring (bench/savings_workload.py, bench/savings.py): the mix, the
seed, the order a pair's questions and a chat's turns keep, disjoint splits, and the label rules."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.savings import Answer, Scorer, quality
from bench.savings_workload import MIX, build
from tests.upstream.tokens import answer_text

N = 200


@pytest.fixture(scope="module")
def workload():  # type: ignore[no-untyped-def]
    return build(N, "report", seed=3)


def test_the_mix_by_request_count(workload) -> None:  # type: ignore[no-untyped-def]
    counts = Counter(r.share for r in [*workload.requests, *workload.batch])
    assert sum(counts.values()) == N
    assert counts["support"] + counts["trivial"] == round(N * MIX["support"])
    assert counts["chat"] == round(N * MIX["chat"]) and counts["routing"] == round(N * MIX["routing"])
    assert counts["batch"] == N - round(N * MIX["support"]) - round(N * MIX["chat"]) - round(
        N * MIX["routing"]
    )
    assert counts["trivial"] > 0
    assert {r.model for r in workload.requests if r.share == "routing"} == {"auto"}


def test_seeded_and_ordered(workload) -> None:  # type: ignore[no-untyped-def]
    again = build(N, "report", seed=3)
    assert [r.id for r in again.requests] == [r.id for r in workload.requests]
    position = {r.id: i for i, r in enumerate(workload.requests)}
    for r in workload.requests:
        if r.after is not None:  # a pair's second question, a chat's next turn: after what it follows
            assert position[r.after] < position[r.id]
            assert workload.requests[position[r.after]].tenant == r.tenant


def test_dev_and_report_draw_disjoint_rows() -> None:
    dev, report = build(N, "dev", seed=3), build(N, "report", seed=3)

    def texts(w):  # type: ignore[no-untyped-def]
        return {r.text for r in w.requests if r.share in ("support", "routing")}

    assert not texts(dev) & texts(report)
    with pytest.raises(ValueError):
        build(N, "test")


def test_labels_score_answers(workload) -> None:  # type: ignore[no-untyped-def]
    scorer = Scorer(workload)
    by_id = {r.id: r for r in workload.requests}
    second = next(r for r in workload.requests if r.share == "support" and r.after is not None)
    first = by_id[second.after]  # type: ignore[index]
    origin = {answer_text(first.text, 200): "gpt-4o"}
    own = Answer(second.id, 200, answer_text(second.text, 200), 0.1, "gpt-4o")
    assert scorer.score(second, own, origin) == (True, False)
    hit = Answer(second.id, 200, answer_text(first.text, 200), 0.01, "gpt-4o", cache="hit-semantic")
    duplicate = second.label["duplicate"]
    assert scorer.score(second, hit, origin) == (duplicate, not duplicate)  # right only for a duplicate

    routed = next(r for r in workload.requests if r.share == "routing")
    weak = Answer(routed.id, 200, answer_text(routed.text, 200), 0.1, "gpt-4o-mini")
    assert scorer.score(routed, weak, {}) == (routed.label["weak"], False)
    strong = Answer(routed.id, 200, answer_text(routed.text, 200), 0.1, "gpt-4o")
    assert scorer.score(routed, strong, {}) == (routed.label["strong"], False)

    trivial = next(r for r in workload.requests if r.share == "trivial")
    local_right = Answer(
        trivial.id, 200, f"It is {trivial.label['expected'].title()}.", 1.0, "smollm2-135m-instruct"
    )
    local_wrong = Answer(trivial.id, 200, "I am not sure.", 1.0, "smollm2-135m-instruct")
    assert scorer.score(trivial, local_right, {}) == (True, False)
    assert scorer.score(trivial, local_wrong, {}) == (False, False)

    failed = Answer(routed.id, 502, "upstream failed", 0.1, "")
    assert scorer.score(routed, failed, {}) == (False, False)
    totals = quality(workload, scorer, {routed.id: failed})["total"]
    assert totals["errors"] == N  # every request without an answer counts as an error (and as wrong)


def test_cost_parts_add_up_to_the_logged_cost() -> None:
    """The breakdown splits each row's cost into uncached input, cache writes, reads and output at the
    served model's prices, scaled to the cost the log holds (a batch item's is half the listed price)."""
    from bench.savings import gateway_breakdown

    row = {
        "tenant": "chat-app",
        "requested_model": "claude-sonnet-4-5",
        "served_model": "claude-sonnet-4-5",
        "input_tokens": 1_000_000,
        "output_tokens": 1_000_000,
        "cache_read_tokens": 1_000_000,
        "cache_write_5m_tokens": 1_000_000,
        "cache_write_1h_tokens": 0,
        "cost_usd": None,
    }
    listed = gateway_breakdown([row])["chat"]
    assert listed["input_usd"] == pytest.approx(3.0) and listed["output_usd"] == pytest.approx(15.0)
    assert listed["cache_read_usd"] == pytest.approx(0.3) and listed["cache_write_usd"] == pytest.approx(3.75)
    assert listed["cache_read_tokens"] == 1_000_000 and listed["requests"] == 1
    batch = {**row, "tenant": "bulk", "cost_usd": 11.025}  # half of 22.05
    halved = gateway_breakdown([batch])["batch"]
    assert sum(halved[f"{k}_usd"] for k in ("input", "cache_write", "cache_read", "output")) == pytest.approx(
        11.025
    )
    assert halved["output_usd"] == pytest.approx(7.5)
    local = {
        **row,
        "tenant": "support-1",
        "requested_model": "gpt-4o-mini",
        "served_model": "smollm2-135m-instruct",
    }
    assert gateway_breakdown([{**local, "cost_usd": 0.0}])["trivial"]["output_usd"] == 0.0
