"""bench/anchors/report.py: agreement, derived ratios and targets from hand-built engine results."""

from __future__ import annotations

from typing import Any

from bench.anchors.report import agreement, derive, render_markdown


def test_agreement_first_divergence_and_share() -> None:
    assert agreement([1, 2, 3, 4], [1, 2, 3, 4]) == {
        "first_divergence": 4,
        "identical_pct": 100.0,
        "exact": True,
    }
    a = agreement([1, 2, 3, 4], [1, 2, 9, 4])
    assert a["first_divergence"] == 2 and a["identical_pct"] == 75.0 and not a["exact"]
    shorter = agreement([1, 2, 3, 4], [1, 2])  # stopped early: diverges where it stopped
    assert shorter["first_divergence"] == 2 and shorter["identical_pct"] == 50.0


def _run(
    engine: str, variant: str, decode: float, ppl: float, tokens: list[int], **extra: Any
) -> dict[str, Any]:
    return {
        "engine": engine,
        "variant": variant,
        "default": extra.pop("default", False),
        "decode": {"128": {"tok_s": decode}, "2048": {"tok_s": decode / 2}},
        "prefill": {"tok_s": 500.0},
        "ppl": {"ppl": ppl, "top1": [1, 2, 3, 4]},
        "greedy": [{"name": "p", "tokens": tokens}],
        "peak_rss_mb": 100.0,
        "model_bytes": 1_000_000,
        **extra,
    }


def _report(results: list[dict[str, Any]]) -> dict[str, Any]:
    report = {
        "started": "t",
        "quick": True,
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "avx2": True,
            "avx512f": False,
            "loadavg_at_start": [1.0, 1.0, 1.0],
        },
        "tokenizer": {"source": "ours", "identical_to_transformers": True},
        "results": results,
    }
    report["derived"] = derive(report)
    return report


def test_targets_compare_ours_with_anchors_in_the_same_run() -> None:
    streams = {"1": {"tok_s": 10.0}, "8": {"tok_s": 35.0}}
    ttft = {"cold_s": 1.0, "hit_s": 0.1, "hit_over_cold": 0.1}
    spec = {
        "extraction": {
            "off": {"decode_tok_s": 10.0},
            "ngram": {"speedup": 2.5, "identical": True, "acceptance_rate": 0.8},
        },
        "chat": {
            "off": {"decode_tok_s": 10.0},
            "ngram": {"speedup": 0.9, "identical": True, "acceptance_rate": 0.2},
        },
    }
    report = _report(
        [
            _run("ours", "fp32", 40.0, 10.0, [1, 2, 3]),
            _run(
                "ours",
                "int4",
                120.0,
                10.4,
                [1, 2, 5],
                default=True,
                streams=streams,
                ttft=ttft,
                speculative=spec,
            ),
            _run("llamacpp", "Q4_1", 100.0, 10.6, [1, 7, 7]),
            _run("ortgenai", "fp32", 50.0, 10.0, [1, 2, 3]),
            _run("ortgenai", "int4", 130.0, 10.5, [1, 2, 3]),
        ]
    )
    derived = report["derived"]
    assert derived["reference"] == "ours-fp32"
    assert derived["per_engine"]["ours-int4"]["ppl_ratio"] == 1.04
    assert derived["per_engine"]["llamacpp-Q4_1"]["agreement"]["mean_first_divergence"] == 1
    met = {t["target"]: t["met"] for t in derived["targets"]}
    assert met["batch-1 decode ours fp32 >= onnxruntime-genai fp32 @ ctx 128"] is False
    assert met["batch-1 decode ours int4 >= onnxruntime-genai int4 @ ctx 128"] is False
    assert met["default variant (int4) decode >= llama.cpp (same GGUF) @ ctx 128"] is True
    assert met["default variant (int4) perplexity within 5% of fp32"] is True
    assert met["aggregate throughput at 8 streams >= 3x one stream (int4)"] is True
    assert met["TTFT with a prefix hit <= 20% of cold (int4, ~1,000-token shared system prompt)"] is True
    # 2.5x on extraction but slower on chat: "never slower" is missed
    spec_target = next(t for t in derived["targets"] if t["target"].startswith("speculative ngram"))
    assert spec_target["met"] is False
    md = render_markdown(report)
    assert "| ours (default) | int4 |" in md and "**NOT met**" in md


def test_a_failed_engine_is_reported_not_measured() -> None:
    report = _report(
        [
            _run("ours", "int4", 120.0, 10.0, [1], default=True),
            {"engine": "llamacpp", "variant": "Q4_1", "error": "exit 1"},
        ]
    )
    met = {t["target"]: t["met"] for t in report["derived"]["targets"]}
    assert met["default variant (int4) decode >= llama.cpp (same GGUF) @ ctx 128"] is None
    assert "failed: exit 1" in render_markdown(report)
