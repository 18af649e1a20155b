"""Derived numbers (agreement, ratios, targets) and the Markdown table of bench/local_engine.py. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

ENGINE_NAMES = {
    "ours": "ours",
    "llamacpp": "llama.cpp",
    "ortgenai": "onnxruntime-genai",
    "hf": "transformers",
}


def agreement(ref: Sequence[int], other: Sequence[int]) -> dict[str, Any]:
    """First position where `other` departs from `ref` (len if never) and the share of equal positions."""
    first = next(
        (i for i, (a, b) in enumerate(zip(ref, other, strict=False)) if a != b), min(len(ref), len(other))
    )
    same = sum(a == b for a, b in zip(ref, other, strict=False))
    longest = max(len(ref), len(other), 1)
    return {
        "first_divergence": first,
        "identical_pct": 100.0 * same / longest,
        "exact": list(ref) == list(other),
    }


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not math.isnan(float(x)) else None


def reference(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Our fp32 run, else transformers float32: the baseline for agreement and perplexity ratios."""
    for engine in ("ours", "hf"):
        for r in results:
            if r["engine"] == engine and r["variant"] == "fp32" and isinstance(r.get("greedy"), list):
                return r
    return None


def derive(report: dict[str, Any]) -> dict[str, Any]:
    """Agreement and ppl vs the reference, stream scaling, TTFT ratios, and the targets (met / not met)."""
    results = report["results"]
    ref = reference(results)
    ref_name = f"{ref['engine']}-{ref['variant']}" if ref else None
    ref_ppl = _num(_get(ref, "ppl", "ppl")) if ref else None
    per: dict[str, Any] = {}
    for r in results:
        key = f"{r['engine']}-{r['variant']}"
        d: dict[str, Any] = {}
        if ref and isinstance(r.get("greedy"), list):
            rows = [
                agreement(a["tokens"], b["tokens"]) | {"prompt": a["name"]}
                for a, b in zip(ref["greedy"], r["greedy"], strict=False)
            ]
            d["agreement"] = {
                "vs": ref_name,
                "prompts": rows,
                "identical_pct": sum(x["identical_pct"] for x in rows) / len(rows),
                "exact_prompts": sum(x["exact"] for x in rows),
                "mean_first_divergence": sum(x["first_divergence"] for x in rows) / len(rows),
            }
        ppl = _num(_get(r, "ppl", "ppl"))
        if ppl is not None and ref_ppl:
            d["ppl_ratio"] = ppl / ref_ppl
            top1, ref_top1 = _get(r, "ppl", "top1"), _get(ref, "ppl", "top1")
            if top1 and ref_top1:
                d["top1_agreement_pct"] = (
                    100.0 * sum(a == b for a, b in zip(top1, ref_top1, strict=False)) / len(top1)
                )
        one = _num(_get(r, "streams", "1", "tok_s"))
        if one:
            d["stream_scaling"] = {
                n: _num(_get(r, "streams", n, "tok_s")) / one  # type: ignore[operator]
                for n in ("4", "8", "16")
                if _num(_get(r, "streams", n, "tok_s"))
            }
        per[key] = d
    return {"reference": ref_name, "per_engine": per, "targets": targets(results, per)}


def _find(
    results: list[dict[str, Any]], engine: str, variant: str | None = None, default: bool = False
) -> dict[str, Any] | None:
    for r in results:
        if (
            r["engine"] == engine
            and (variant is None or r["variant"] == variant)
            and (not default or r.get("default"))
        ):
            return r
    return None


def targets(results: list[dict[str, Any]], per: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with met True/False (None: could not be measured) and the numbers behind it."""
    out: list[dict[str, Any]] = []

    def add(name: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "met": met, "detail": detail})

    for precision, ours_variants in (("fp32", ["fp32"]), ("int8", ["int8"]), ("int4", ["int4", "int4-b32"])):
        anchor = _find(results, "ortgenai", precision)
        for v in ours_variants:
            ours = _find(results, "ours", v)
            if ours is None:
                continue
            for ctx in ("128", "2048"):
                a, o = _num(_get(anchor, "decode", ctx, "tok_s")), _num(_get(ours, "decode", ctx, "tok_s"))
                met = None if a is None or o is None else o >= a
                add(
                    f"batch-1 decode ours {v} >= onnxruntime-genai {precision} @ ctx {ctx}",
                    met,
                    f"{_fmt(o)} vs {_fmt(a)} tok/s" + (f" ({o / a:.2f}x)" if a and o else ""),
                )
    default = _find(results, "ours", default=True)
    llama = _find(results, "llamacpp")
    if default is not None:
        dv = default["variant"]
        for ctx in ("128", "2048"):
            a, o = _num(_get(llama, "decode", ctx, "tok_s")), _num(_get(default, "decode", ctx, "tok_s"))
            add(
                f"default variant ({dv}) decode >= llama.cpp (same GGUF) @ ctx {ctx}",
                None if a is None or o is None else o >= a,
                f"{_fmt(o)} vs {_fmt(a)} tok/s" + (f" ({o / a:.2f}x)" if a and o else ""),
            )
        ratio = per.get(f"ours-{dv}", {}).get("ppl_ratio")
        add(
            f"default variant ({dv}) perplexity within 5% of fp32",
            None if ratio is None else ratio <= 1.05,
            "ppl ratio " + _fmt(ratio, 3),
        )
        scaling = per.get(f"ours-{dv}", {}).get("stream_scaling", {}).get("8")
        add(
            f"aggregate throughput at 8 streams >= 3x one stream ({dv})",
            None if scaling is None else scaling >= 3.0,
            f"{_fmt(scaling, 2)}x",
        )
        ttft = _num(_get(default, "ttft", "hit_over_cold"))
        add(
            f"TTFT with a prefix hit <= 20% of cold ({dv}, ~1,000-token shared system prompt)",
            None if ttft is None else ttft <= 0.20,
            f"hit {_fmt(_ms(_get(default, 'ttft', 'hit_s')))} ms / cold {_fmt(_ms(_get(default, 'ttft', 'cold_s')))} ms = {_fmt(ttft, 2)}",
        )
        for r in results:
            if r["engine"] != "ours" or "speculative" not in r:
                continue
            spec = r["speculative"]
            for mode in ("ngram", "draft"):
                ex, ch = _get(spec, "extraction", mode), _get(spec, "chat", mode)
                if ex is None:
                    continue
                s_ex, s_ch = _num(ex.get("speedup")), _num(_get(ch, "speedup"))
                ident = bool(ex.get("identical")) and bool(_get(ch, "identical"))
                add(
                    f"speculative {mode} ({r['variant']}) >= 2x on extraction, identical greedy output, never slower",
                    None if s_ex is None else (s_ex >= 2.0 and ident and (s_ch is None or s_ch >= 1.0)),
                    f"extraction {_fmt(s_ex, 2)}x, chat {_fmt(s_ch, 2)}x, identical output: {ident}, "
                    f"acceptance extraction {_pct(ex.get('acceptance_rate'))} / chat {_pct(_get(ch, 'acceptance_rate'))}",
                )
    return out


def _fmt(x: Any, digits: int = 1) -> str:
    v = _num(x)
    return "-" if v is None else f"{v:.{digits}f}"


def _ms(x: Any) -> float | None:
    v = _num(x)
    return None if v is None else 1000 * v


def _pct(x: Any) -> str:
    v = _num(x)
    return "-" if v is None else f"{100 * v:.0f}%"


def render_markdown(report: dict[str, Any]) -> str:
    """The results table, the speculative table, the targets and the caveats, as Markdown."""
    derived = report["derived"]
    m = report["machine"]
    lines = [
        "# Local engine benchmark",
        "",
        f"{report['started']} · {'quick' if report['quick'] else 'full'} run · {m['cpu']} ({m['cores']} cores, "
        f"AVX2 {m['avx2']}, AVX-512 {m['avx512f']}) · 2 threads · greedy · load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['loadavg_at_start'])}",
        f"Token ids: {report['tokenizer'].get('source')}"
        + (
            f" (identical to transformers': {report['tokenizer']['identical_to_transformers']})"
            if "identical_to_transformers" in report["tokenizer"]
            else ""
        ),
        f"Agreement and perplexity ratios are against {derived['reference']}. Timings are medians of 3 runs.",
        "",
        "| engine | variant | size MB | peak RSS MB | prefill 512 tok/s | decode tok/s @128 | @2048 "
        "| aggregate tok/s 1 / 4 / 8 / 16 streams | TTFT cold ms | TTFT hit ms | hit/cold | ppl | ppl ratio "
        "| greedy identical % (exact prompts, mean first divergence) | load avg during |",
        "|" + "---|" * 15,
    ]
    for r in report["results"]:
        key = f"{r['engine']}-{r['variant']}"
        d = derived["per_engine"].get(key, {})
        name = ENGINE_NAMES[r["engine"]] + (" (default)" if r.get("default") else "")
        if "error" in r:
            if not any(k in r for k in ("prefill", "decode", "ttft", "streams", "greedy", "ppl")):
                lines.append(
                    f"| {name} | {r['variant']} | {_mb(r.get('model_bytes'))} | failed: {r['error']} |"
                    + " |" * 11
                )
                continue
            name += f" (incomplete: {r['error']})"
        streams = " / ".join(
            _fmt(_get(r, "streams", n, "tok_s")) if _get(r, "streams", n, "tok_s") is not None else "n/a"
            for n in ("1", "4", "8", "16")
        )
        ag = d.get("agreement")
        agree = (
            "-"
            if not ag
            else f"{ag['identical_pct']:.0f}% ({ag['exact_prompts']}/{len(ag['prompts'])}, {ag['mean_first_divergence']:.1f})"
        )
        hit = _get(r, "ttft", "hit_s")
        load = f"{r.get('loadavg_before', [0])[0]:.1f}→{r.get('loadavg_after', [0])[0]:.1f}"
        lines.append(
            f"| {name} | {r['variant']} | {_mb(r.get('model_bytes'))} | {_fmt(r.get('peak_rss_mb'), 0)} "
            f"| {_fmt(_get(r, 'prefill', 'tok_s'))} | {_fmt(_get(r, 'decode', '128', 'tok_s'))} "
            f"| {_fmt(_get(r, 'decode', '2048', 'tok_s'))} | {streams} | {_fmt(_ms(_get(r, 'ttft', 'cold_s')), 0)} "
            f"| {_fmt(_ms(hit), 0)} | {_fmt(_get(r, 'ttft', 'hit_over_cold'), 2)} | {_fmt(_get(r, 'ppl', 'ppl'), 2)} "
            f"| {_fmt(d.get('ppl_ratio'), 3)} | {agree} | {load} |"
        )
    spec_rows = [r for r in report["results"] if "speculative" in r]
    if spec_rows:
        lines += [
            "",
            "## Speculative decoding (ours, batch 1, greedy; speedup vs our own non-speculative decode)",
            "",
            "| variant | workload | mode | decode tok/s | speedup | acceptance | identical output |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in spec_rows:
            spec = r["speculative"]
            for workload in ("extraction", "chat"):
                for mode, s in (_get(spec, workload) or {}).items():
                    lines.append(
                        f"| {r['variant']} | {workload} | {mode} | {_fmt(s.get('decode_tok_s'))} "
                        f"| {_fmt(s.get('speedup'), 2) if mode != 'off' else '1.00'} | {_pct(s.get('acceptance_rate'))} "
                        f"| {s.get('identical') if mode != 'off' else '(baseline)'} |"
                    )
            if spec.get("draft_skipped"):
                lines.append(f"| {r['variant']} | - | draft | skipped: {spec['draft_skipped']} | | | |")
    lines += ["", "## Targets", ""]
    for t in derived["targets"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"- **{mark}**: {t['target']} — {t['detail']}")
    lines += ["", "## How each engine was driven", ""]
    for r in report["results"]:
        info = r.get("info") or {}
        if info:
            lines.append(
                f"- {ENGINE_NAMES[r['engine']]} {r['variant']}: prefix cache: {info.get('prefix_cache')}; "
                f"streams: {info.get('streams')}"
            )
    if report.get("ours_unavailable") and report["ours_unavailable"] != "not requested":
        lines.append(f"- ours unavailable: {report['ours_unavailable']}")
    return "\n".join(lines) + "\n"


def _mb(x: Any) -> str:
    v = _num(x)
    return "-" if v is None else f"{v / 1e6:.0f}"
