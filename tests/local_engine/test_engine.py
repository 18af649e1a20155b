"""LLMEngine over the FakeRunner: the step loop, batching, prefix cache, speculation and stopping; then the
same engine over the real ModelRunner, on the tiny random-weight model (fast) and on the real model (slow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from local_engine.engine import LLMEngine, RequestOutput
from local_engine.runner import ModelRunner
from local_engine.sampling import SamplingParams, TokenLogprob
from local_engine.speculative import SpeculationController
from local_engine.tokenizer import Tokenizer
from tests.local_engine.conftest import chat
from tests.local_engine.fakes import EOS_ID, ByteTokenizer, FakeClock, FakeRunner

TOK = ByteTokenizer()
GREEDY = SamplingParams(max_tokens=40, temperature=0)
PROMPTS = [
    "the cat sat on the mat and the cat sat on the hat",
    "hello world",
    "a" * 70 + " long prompt that spans several prefix cache blocks",
    "zq",
]


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    outputs: list[RequestOutput] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)


def step_into(engine: LLMEngine, results: dict[str, Result]) -> list[RequestOutput]:
    outs = engine.step()
    for out in outs:
        r = results.setdefault(out.request_id, Result())
        assert r.finish_reason is None, "output after finish"
        r.tokens += out.new_token_ids
        r.text += out.new_text
        r.outputs.append(out)
        r.logprobs += out.logprobs or ()
        if out.finished:
            r.finish_reason = out.finish_reason
    return outs


def drain(
    engine: LLMEngine, results: dict[str, Result] | None = None, max_steps: int = 10_000
) -> dict[str, Result]:
    results = {} if results is None else results
    for _ in range(max_steps):
        if not engine.has_unfinished():
            return results
        step_into(engine, results)
    raise AssertionError("engine did not finish")


def generate(engine: LLMEngine, prompt: str, params: SamplingParams = GREEDY, rid: str = "r") -> Result:
    engine.add_request(rid, TOK.encode(prompt), params)
    return drain(engine)[rid]


def make_engine(speculative: str = "off", **kwargs: object) -> LLMEngine:
    runner_kwargs = {k: kwargs.pop(k) for k in ("noise", "clock", "token_cost", "step_cost") if k in kwargs}
    runner = FakeRunner(num_slots=4, max_seq_len=256, **runner_kwargs)  # type: ignore[arg-type]
    return LLMEngine(runner, TOK, speculative=speculative, block_size=8, **kwargs)  # type: ignore[arg-type]


def test_greedy_generation_streams_deltas_and_counts() -> None:
    engine = make_engine()
    res = generate(engine, PROMPTS[0])
    assert res.finish_reason == "length" and len(res.tokens) == 40
    assert res.text == TOK.decode(res.tokens)
    last = res.outputs[-1]
    assert last.finished and last.completion_tokens == 40 and last.prompt_tokens == len(PROMPTS[0])
    assert [o.completion_tokens for o in res.outputs] == list(range(1, 41))
    # greedy is the argmax of a fresh model fed the same tokens
    ref = FakeRunner(num_slots=1, max_seq_len=256)
    ids = TOK.encode(PROMPTS[0])
    logits = ref.forward([0], [ids + res.tokens[:-1]], [0], all_logits=True)
    assert logits[len(ids) - 1 :].argmax(axis=-1).tolist() == res.tokens
    assert engine.scheduler.num_free_slots == 4


@pytest.mark.parametrize("mode", ["ngram", "draft", "auto"])
def test_speculative_greedy_is_identical_to_plain_greedy(mode: str) -> None:
    draft = FakeRunner(num_slots=4, max_seq_len=256, seed=3, noise=0.3) if mode == "draft" else None
    for noise in (0.0, 0.6):
        for prompt in PROMPTS:
            plain = generate(make_engine("off", noise=noise), prompt)
            engine = make_engine(mode, noise=noise, draft_runner=draft)
            spec = generate(engine, prompt)
            assert spec.tokens == plain.tokens, (mode, noise, prompt)
            assert spec.text == plain.text
            assert spec.finish_reason == plain.finish_reason
            if mode != "auto":
                assert engine.stats.speculative_steps > 0
    # with a pure bigram model prompt lookup is almost always right
    engine = make_engine("ngram", noise=0.0)
    generate(engine, PROMPTS[0], SamplingParams(max_tokens=120, temperature=0))
    assert engine.stats.acceptance_rate is not None and engine.stats.acceptance_rate > 0.8
    assert engine.stats.speculative_steps < 60  # several tokens per target forward


@pytest.mark.parametrize(
    ("speculative", "exact", "positions"),
    [("off", None, 1), ("ngram", None, 2), ("auto", None, 2), ("off", True, 2), ("auto", False, 1)],
)
def test_single_sequence_decodes_take_the_verification_kernels_when_exact(
    speculative: str, exact: bool | None, positions: int
) -> None:
    engine = make_engine(speculative, exact_decode=exact)
    generate(engine, "zq", SamplingParams(max_tokens=12, temperature=0))
    runner = engine.runner
    assert isinstance(runner, FakeRunner)
    single = [c for c in runner.calls if c.num_tokens == (1,) and not c.all_logits]
    assert single and all(c.min_positions == positions for c in single)
    # a batched decode of several sequences is never padded
    engine = make_engine(speculative, exact_decode=exact)
    for i, prompt in enumerate(PROMPTS[:3]):
        engine.add_request(str(i), TOK.encode(prompt), SamplingParams(max_tokens=8, temperature=0))
    drain(engine)
    runner = engine.runner
    assert isinstance(runner, FakeRunner)
    batched = [c for c in runner.calls if len(c.slots) > 1]
    assert batched and all(c.min_positions == 1 for c in batched)


def test_speculation_verifies_in_one_forward_and_rolls_back_the_kv() -> None:
    plain_engine = make_engine("off")
    plain = generate(plain_engine, PROMPTS[0])
    engine = make_engine("ngram")
    runner = engine.runner
    assert isinstance(runner, FakeRunner)
    engine.add_request("r", TOK.encode(PROMPTS[0]), SamplingParams(max_tokens=40, temperature=0))
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.new_token_ids
        seq = engine.scheduler.get("r")
        if seq is not None and not seq.in_prefill:
            # the slot's KV below num_computed is exactly a plain run's
            ref = FakeRunner(num_slots=1, max_seq_len=256)
            ref.forward([0], [seq.token_ids[: seq.num_computed_tokens]], [0])
            np.testing.assert_array_equal(
                runner.read_kv(seq.slot, 0, seq.num_computed_tokens).data,  # type: ignore[arg-type]
                ref.read_kv(0, 0, seq.num_computed_tokens).data,
            )
    assert tokens == plain.tokens
    verify = [c for c in runner.calls if c.all_logits]
    assert verify and all(len(c.slots) == 1 and c.num_tokens[0] >= 2 for c in verify)
    assert engine.stats.drafted_tokens > engine.stats.accepted_tokens  # some drafts were rejected


def test_sampled_generation_is_seed_deterministic_with_and_without_speculation() -> None:
    params = SamplingParams(max_tokens=30, temperature=0.8, top_p=0.95, seed=11)
    for mode in ("off", "ngram"):
        a = generate(make_engine(mode), PROMPTS[1], params)
        b = generate(make_engine(mode), PROMPTS[1], params)
        c = generate(make_engine(mode), PROMPTS[1], SamplingParams(max_tokens=30, temperature=0.8, seed=12))
        assert a.tokens == b.tokens
        assert a.tokens != c.tokens


def test_concurrent_requests_match_one_at_a_time_and_batch_their_decodes() -> None:
    alone = {i: generate(make_engine(), p).tokens for i, p in enumerate(PROMPTS)}
    engine = make_engine("auto", max_prefill_chunk=16)
    for i, p in enumerate(PROMPTS):
        engine.add_request(str(i), TOK.encode(p), GREEDY)
    together = drain(engine)
    assert {int(k): v.tokens for k, v in together.items()} == alone
    runner = engine.runner
    assert isinstance(runner, FakeRunner)
    assert max(len(c.slots) for c in runner.calls) == 4  # a batched decode of all four
    assert all(sum(c.num_tokens) <= 16 for c in runner.calls if len(c.slots) == 1 and not c.all_logits)


def test_more_requests_than_slots_queue_and_join_as_slots_free() -> None:
    alone = [
        generate(make_engine(), f"prompt {i}", SamplingParams(max_tokens=5 + i, temperature=0)).tokens
        for i in range(7)
    ]
    engine = make_engine()
    for i in range(7):
        engine.add_request(str(i), TOK.encode(f"prompt {i}"), SamplingParams(max_tokens=5 + i, temperature=0))
    assert len(engine.scheduler.waiting) == 7
    first = engine.step()
    assert [o.request_id for o in first] == ["0"]  # one prefill per step
    assert len(engine.scheduler.running) == 4 and len(engine.scheduler.waiting) == 3
    results = drain(engine)
    assert [results[str(i)].tokens for i in range(1, 7)] == alone[1:]
    assert list(first[0].new_token_ids) + results["0"].tokens == alone[0]


def test_chunked_prefill_does_not_starve_running_decodes() -> None:
    engine = make_engine(max_prefill_chunk=8)
    engine.add_request("short", TOK.encode("hi"), SamplingParams(max_tokens=30, temperature=0))
    engine.step()  # prefill of "short"
    engine.add_request("long", TOK.encode("x" * 100), SamplingParams(max_tokens=3, temperature=0))
    for _ in range(5):
        outs = {o.request_id: o for o in engine.step()}
        assert len(outs["short"].new_token_ids) == 1  # one decode every step during the long prefill
        assert "long" not in outs


def test_prefix_cache_hit_gives_the_same_output_as_a_miss() -> None:
    system = "you are a helpful assistant. " * 3
    engine = make_engine()
    cold = generate(engine, system + "question one", rid="a")
    assert cold.outputs[-1].cached_tokens == 0
    warm = generate(engine, system + "question two", rid="b")
    cached = warm.outputs[-1].cached_tokens
    assert cached >= 80 and cached % 8 == 0
    assert warm.tokens == generate(make_engine(), system + "question two").tokens
    again = generate(engine, system + "question one", rid="c")
    assert again.tokens == cold.tokens
    assert again.outputs[-1].cached_tokens == (len(system + "question one") - 1) // 8 * 8
    assert engine.stats.cached_tokens == cached + again.outputs[-1].cached_tokens


def test_evicting_the_cache_does_not_disturb_a_sequence_served_from_it() -> None:
    system = "shared prefix shared prefix shared prefix "
    engine = make_engine()
    generate(engine, system + "one", rid="a")
    engine.add_request("b", TOK.encode(system + "two"), GREEDY)
    results: dict[str, Result] = {}
    step_into(engine, results)  # admitted, cached KV copied into its slot, prefill done
    assert engine.scheduler.get("b").num_cached_tokens > 0  # type: ignore[union-attr]
    engine.prefix_cache.clear()
    assert drain(engine, results)["b"].tokens == generate(make_engine(), system + "two").tokens


def test_prefix_cache_respects_its_byte_budget() -> None:
    engine = make_engine(prefix_cache_bytes=8 * 16 * 3)  # three blocks of 8 tokens x 16 bytes
    generate(engine, "y" * 60, rid="a")
    assert engine.prefix_cache.used_bytes <= 8 * 16 * 3 and len(engine.prefix_cache) == 3


def test_abort_frees_the_slot_and_reports_abort() -> None:
    engine = make_engine()
    engine.add_request("a", TOK.encode("abc"), SamplingParams(max_tokens=50, temperature=0))
    engine.add_request("b", TOK.encode("abd"), SamplingParams(max_tokens=10, temperature=0))
    results: dict[str, Result] = {}
    step_into(engine, results)
    step_into(engine, results)
    assert engine.scheduler.num_free_slots == 2
    assert engine.abort("a")
    assert engine.scheduler.num_free_slots == 3
    assert not engine.abort("a") and not engine.abort("nope")
    drain(engine, results)
    assert results["a"].finish_reason == "abort" and len(results["a"].tokens) == 2
    assert (
        results["b"].tokens
        == generate(make_engine(), "abd", SamplingParams(max_tokens=10, temperature=0)).tokens
    )


def test_abort_of_a_waiting_request() -> None:
    engine = make_engine()
    engine.add_request("a", TOK.encode("abc"), GREEDY)
    assert engine.abort("a")
    outs = engine.step()
    assert [(o.request_id, o.finish_reason) for o in outs] == [("a", "abort")]
    assert not engine.has_unfinished()


def test_stop_strings_token_ids_and_eos() -> None:
    full = generate(make_engine(), PROMPTS[0], SamplingParams(max_tokens=40, temperature=0))
    stop = full.text[10:13]
    cut = full.text.index(stop)
    for mode in ("off", "ngram"):
        res = generate(
            make_engine(mode), PROMPTS[0], SamplingParams(max_tokens=40, temperature=0, stop=(stop,))
        )
        assert res.finish_reason == "stop"
        assert res.text == full.text[:cut]
        assert len(res.tokens) <= cut + len(stop)
    by_id = generate(
        make_engine(),
        PROMPTS[0],
        SamplingParams(max_tokens=40, temperature=0, stop_token_ids=(full.tokens[5],)),
    )
    first = full.tokens.index(full.tokens[5])
    assert by_id.finish_reason == "stop" and by_id.tokens == full.tokens[: first + 1]
    assert by_id.text == TOK.decode(full.tokens[:first])


def test_eos_stops_unless_ignored() -> None:
    # the fake model always ends a sentence after a full stop
    res = generate(make_engine(), "the end.", GREEDY)
    assert res.finish_reason == "stop" and res.tokens == [EOS_ID] and res.text == ""
    ignored = generate(
        make_engine(), "the end.", SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    )
    assert ignored.tokens[0] == EOS_ID and len(ignored.tokens) == 5 and ignored.finish_reason == "length"


def test_logprobs_are_the_targets_with_and_without_speculation() -> None:
    params = SamplingParams(max_tokens=20, temperature=0, logprobs=2)
    plain = generate(make_engine(), PROMPTS[0], params)
    spec = generate(make_engine("ngram"), PROMPTS[0], params)
    assert [lp.token_id for lp in plain.logprobs] == plain.tokens
    for a, b in zip(plain.logprobs, spec.logprobs, strict=True):
        assert a.token_id == b.token_id and a.top == b.top
        assert a.logprob == pytest.approx(b.logprob)
        assert a.top[0][0] == a.token_id and len(a.top) == 2  # greedy: the chosen token is the top one
    assert generate(make_engine(), "x", SamplingParams(max_tokens=2)).outputs[-1].logprobs is None


def test_context_length_ends_a_generation() -> None:
    runner = FakeRunner(num_slots=1, max_seq_len=20)
    engine = LLMEngine(runner, TOK, speculative="ngram")
    res = generate(engine, "a" * 15, SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))
    assert res.finish_reason == "length" and len(res.tokens) == 5
    with pytest.raises(ValueError):
        engine.add_request("long", TOK.encode("a" * 20), GREEDY)
    with pytest.raises(ValueError):
        engine.add_request("empty", [], GREEDY)


def test_auto_switches_off_speculation_that_does_not_pay() -> None:
    # verification is expensive per token and the noisy model defeats prompt lookup
    clock = FakeClock()
    engine = make_engine("auto", noise=3.0, clock=clock, token_cost=0.02, step_cost=0.01)
    engine.clock = clock
    generate(engine, PROMPTS[0], SamplingParams(max_tokens=100, temperature=0))
    assert engine.controller is not None and not engine.speculation_enabled
    # cheap verification and a predictable model: speculation stays on
    clock = FakeClock()
    engine = make_engine("auto", noise=0.0, clock=clock, token_cost=0.0005, step_cost=0.01)
    engine.clock = clock
    # its first drafts (from the prompt) fail, so it is off until the re-probe finds the repetition
    engine.controller = SpeculationController(probe_steps=8, probe_every=16)
    generate(engine, PROMPTS[0], SamplingParams(max_tokens=100, temperature=0))
    assert engine.speculation_enabled
    assert engine.stats.acceptance_rate is not None and engine.stats.acceptance_rate > 0.5


def test_a_finished_generation_is_cached_for_the_next_turn() -> None:
    engine = make_engine()
    turn1 = TOK.encode("user: hi\nassistant:")
    engine.add_request("a", turn1, GREEDY)
    first = drain(engine)["a"]
    turn2 = turn1 + first.tokens + TOK.encode("\nuser: more\nassistant:")
    engine.add_request("b", turn2, GREEDY)
    second = drain(engine)["b"]
    computed = len(turn1) + len(first.tokens) - 1  # the last generated token never got KV
    assert second.outputs[-1].cached_tokens == computed // 8 * 8
    cold = make_engine()
    cold.add_request("b", turn2, GREEDY)
    assert second.tokens == drain(cold)["b"].tokens


# ---- the same engine over the real ModelRunner, on the tiny random-weight model (fast) ----


@pytest.fixture
def tiny_runner(tiny_model_dir: Path) -> ModelRunner:
    return ModelRunner(tiny_model_dir, "fp32", num_slots=4, max_seq_len=128, threads=1)


def _tiny_run(
    engine: LLMEngine, prompts: dict[str, list[int]], params: SamplingParams
) -> dict[str, list[int]]:
    for rid, ids in prompts.items():
        engine.add_request(rid, ids, params)
    return {rid: r.tokens for rid, r in drain(engine).items()}


TINY_PROMPTS = {
    str(i): [int(t) for t in np.random.default_rng(i).integers(3, 300, size=20 + 7 * i)] for i in range(4)
}
TINY_PARAMS = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


def test_real_runner_speculation_prefix_cache_and_batching_agree(
    tiny_model_dir: Path, tiny_runner: ModelRunner
) -> None:
    alone = {
        rid: _tiny_run(
            LLMEngine(tiny_runner, TOK, speculative="off", exact_decode=True), {rid: ids}, TINY_PARAMS
        )[rid]
        for rid, ids in TINY_PROMPTS.items()
    }
    # speculation: prompt lookup, and a 4-bit copy of the model as the draft
    draft = ModelRunner(tiny_model_dir, "int4", num_slots=4, max_seq_len=128, threads=1)
    for mode, draft_runner in (("ngram", None), ("draft", draft)):
        engine = LLMEngine(tiny_runner, TOK, speculative=mode, draft_runner=draft_runner)  # type: ignore[arg-type]
        assert {
            rid: _tiny_run(engine, {rid: ids}, TINY_PARAMS)[rid] for rid, ids in TINY_PROMPTS.items()
        } == alone
        assert engine.stats.speculative_steps > 0
    # batching: all four at once
    assert _tiny_run(LLMEngine(tiny_runner, TOK, speculative="auto"), TINY_PROMPTS, TINY_PARAMS) == alone
    # prefix cache: a shared 40-token prefix served from the cache gives the cold output
    shared = TINY_PROMPTS["3"][:40]
    engine = LLMEngine(tiny_runner, TOK, speculative="off", block_size=16)
    _tiny_run(engine, {"a": [*shared, 5, 6]}, TINY_PARAMS)
    hit = _tiny_run(engine, {"b": [*shared, 7, 8]}, TINY_PARAMS)["b"]
    assert engine.stats.cached_tokens == 32
    assert (
        hit
        == _tiny_run(LLMEngine(tiny_runner, TOK, speculative="off"), {"b": [*shared, 7, 8]}, TINY_PARAMS)["b"]
    )


# ---- the engine on the real model (float32 target; slow) ----

PARAGRAPH = (
    "The river town of Alder Creek was founded in 1852 by timber merchants who floated logs down "
    "to the sawmills at the coast. When the railway arrived in 1881, the town grew quickly, and by "
    "the turn of the century it had three hotels, a newspaper, and a brick school. The great flood "
    "of 1927 destroyed most of the waterfront, and the mills never reopened."
)


def run(engine: LLMEngine, requests: dict[str, list[int]], params: SamplingParams) -> dict[str, list[int]]:
    for rid, ids in requests.items():
        engine.add_request(rid, ids, params)
    out: dict[str, list[int]] = {rid: [] for rid in requests}
    while engine.has_unfinished():
        for o in engine.step():
            out[o.request_id] += o.new_token_ids
    return out


@pytest.mark.slow
def test_greedy_is_identical_with_prompt_lookup(real_runner: ModelRunner, real_tokenizer: Tokenizer) -> None:
    ids = chat(real_tokenizer, "Repeat this paragraph exactly:\n\n" + PARAGRAPH)
    plain_engine = LLMEngine(real_runner, real_tokenizer, speculative="off", exact_decode=True)
    plain = run(plain_engine, {"r": ids}, GREEDY)["r"]
    engine = LLMEngine(real_runner, real_tokenizer, speculative="ngram")
    spec = run(engine, {"r": ids}, GREEDY)["r"]
    assert spec == plain
    assert engine.stats.acceptance_rate is not None and engine.stats.acceptance_rate > 0.3
    assert "Alder Creek" in real_tokenizer.decode(plain)


@pytest.mark.slow
def test_greedy_is_identical_with_a_draft_model(
    model_dir: Path, real_runner: ModelRunner, real_tokenizer: Tokenizer
) -> None:
    draft = ModelRunner(model_dir, "int4", num_slots=4, max_seq_len=1024, threads=2)
    ids = chat(real_tokenizer, "Summarise in one sentence:\n\n" + PARAGRAPH)
    params = SamplingParams(max_tokens=24, temperature=0)
    plain_engine = LLMEngine(real_runner, real_tokenizer, speculative="off", exact_decode=True)
    plain = run(plain_engine, {"r": ids}, params)["r"]
    engine = LLMEngine(real_runner, real_tokenizer, speculative="draft", draft_runner=draft)
    assert run(engine, {"r": ids}, params)["r"] == plain
    assert engine.stats.speculative_steps > 0 and engine.stats.accepted_tokens > 0


@pytest.mark.slow
def test_prefix_cache_hit_is_identical_to_a_cold_run(
    real_runner: ModelRunner, real_tokenizer: Tokenizer
) -> None:
    system = (
        "You are a careful assistant for a local history society. Use only this source:\n" + PARAGRAPH * 2
    )
    params = SamplingParams(max_tokens=16, temperature=0)
    q1 = chat(real_tokenizer, "When was the town founded?", system)
    q2 = chat(real_tokenizer, "What happened in 1927?", system)
    cold = run(LLMEngine(real_runner, real_tokenizer, speculative="off"), {"q2": q2}, params)["q2"]
    engine = LLMEngine(real_runner, real_tokenizer, speculative="off")
    run(engine, {"q1": q1}, params)
    engine.add_request("q2", q2, params)
    tokens: list[int] = []
    cached = 0
    while engine.has_unfinished():
        for o in engine.step():
            tokens += o.new_token_ids
            cached = o.cached_tokens
    assert cached >= 128
    assert tokens == cold


@pytest.mark.slow
def test_four_concurrent_requests_match_one_at_a_time(
    real_runner: ModelRunner, real_tokenizer: Tokenizer
) -> None:
    questions = [
        "What is the capital of France?",
        "Name three primary colours.",
        "What is 12 plus 30?",
        "Say hello in Spanish.",
    ]
    requests = {str(i): chat(real_tokenizer, q) for i, q in enumerate(questions)}
    params = SamplingParams(max_tokens=16, temperature=0)
    alone = {
        rid: run(LLMEngine(real_runner, real_tokenizer, speculative="off"), {rid: ids}, params)[rid]
        for rid, ids in requests.items()
    }
    together = run(LLMEngine(real_runner, real_tokenizer, speculative="auto"), requests, params)
    assert together == alone
