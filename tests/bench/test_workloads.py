"""bench/workloads.py: the fixed prompts have the lengths and shared prefixes the benchmark relies on."""

from __future__ import annotations

from collections.abc import Sequence

from bench.workloads import MTBENCH, build_workload


def _encode(text: str) -> list[int]:  # a stand-in tokenizer: one id per byte
    return list(text.encode())


def _chat(messages: Sequence[dict[str, str]]) -> list[int]:
    rendered = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|assistant|>"
    return _encode(rendered)


def test_workload_shapes() -> None:
    assert MTBENCH.exists()
    w = build_workload(_encode, _chat)
    assert len(w["prefill"]) == 512 and len(w["ppl"]) == 512
    assert {k: len(v) for k, v in w["contexts"].items()} == {"128": 128, "2048": 2048}
    assert len(w["streams"]) == 16 and {len(s) for s in w["streams"]} == {128}
    assert len({tuple(s) for s in w["streams"]}) == 16  # different texts
    ttft = w["ttft"]
    shared = ttft["shared_prefix_tokens"]
    assert ttft["warm"][:shared] == ttft["hit"][:shared] and ttft["warm"][shared] != ttft["hit"][shared]
    assert shared >= 950  # the ~1,000-token system prompt is shared
    assert len(w["chat"]) == 10 and len({c["name"] for c in w["chat"]}) == 10
    assert {e["name"] for e in w["extraction"]} >= {"quote", "summarise", "rename"}
    assert all(item["ids"] for item in (*w["extraction"], *w["chat"], *w["greedy"]))
