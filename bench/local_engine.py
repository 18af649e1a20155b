"""Benchmark: our local engine against llama.cpp, onnxruntime-genai and transformers on the same weights.

    python bench/local_engine.py [--quick] [--only ours,llamacpp,ortgenai,hf] [--variants fp32,int4]
                                 [--extras-only]

Every engine runs in its own subprocess, one after another (never two at once), with 2 threads,
greedy decoding and the same token ids (tokenized once here). Anchors that need other packages run
in `bench/.venv-anchors`, which this program creates and fills on first use (llama-cpp-python is a
~15-minute source build). Writes `bench/results/local_engine.json` (machine, versions, every raw
number) and `bench/results/local_engine.md` (the table and the targets, met or not), and prints
the table. Ratios are against baselines measured in the same run.

After the engines, the "engine extras" (``extras``, in this process, our default variant): the quality
bar of every variant from the manifest (KL, top-1, factual answers, MT-Bench greedy match); decode speed
with greedy and with the default sampling and the sampling cost per token; 8 streams against one,
decode-only and end to end; constrained decoding (schema-valid share over generated schema / tool cases
and the mask's cost per token); speculative decoding on the default variant (identical greedy output and
speed-up on the extraction prompts); and the peak RSS of 8 sequences of 2,048 tokens (a subprocess).
``--extras-only`` runs just those.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.anchors import environment as env  # noqa: E402
from bench.anchors.report import derive, render_markdown  # noqa: E402
from bench.workloads import build_workload  # noqa: E402

ENGINES = ("ours", "llamacpp", "ortgenai", "hf")
MODELS = REPO / "data" / "models"
RESULTS = REPO / "bench" / "results"
LOGS = env.WORK / "logs"
SUITE = "prefill,decode,ttft,streams,greedy,ppl"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def our_model_dir() -> tuple[Path | None, str | None]:
    """Build (or reuse) our converted model; returns its directory, or None and why not."""
    try:
        from local_engine.convert import build_all

        log("building / checking our model (local_engine.convert.build_all)")
        return build_all(MODELS).parent, None
    except Exception as exc:  # our engine is still being written: report, don't crash
        return None, f"{type(exc).__name__}: {exc}"


def tokenize(model_dir: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The workload as token ids, from our tokenizer when it exists, checked against transformers'."""
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(env.HF_DIR))

    def hf_chat(messages: Any) -> list[int]:
        out: Any = hf_tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    hf_work = build_workload(lambda t: hf_tok.encode(t, add_special_tokens=False), hf_chat)
    if model_dir is None:
        return hf_work, {"source": "transformers tokenizer of the GGUF export (ours unavailable)"}
    from local_engine.tokenizer import Tokenizer

    ours = Tokenizer.load(model_dir)
    work = build_workload(ours.encode, lambda m: ours.encode(ours.apply_chat_template(list(m))))
    same = json.dumps(work, sort_keys=True) == json.dumps(hf_work, sort_keys=True)
    return work, {"source": "our Tokenizer (local_engine.tokenizer)", "identical_to_transformers": same}


def engine_runs(
    args: argparse.Namespace, model_dir: Path | None, manifest: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The subprocesses to run, most telling first (an interrupted run still answers the main
    questions): our default variant, llama.cpp, ort-genai at that precision, our fp32 (the agreement
    reference), ort-genai fp32, transformers, then the other variants."""
    runs: list[dict[str, Any]] = []
    main_py = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable
    anchor_py = str(env.ANCHOR_PYTHON)
    default = str(manifest.get("default_variant", "fp32")) if manifest else "fp32"
    if "ours" in args.only and model_dir is not None and manifest is not None:
        if args.variants:
            variants = args.variants.split(",")
        else:
            variants = sorted({"fp32", default}) if args.quick else list(manifest["variants"])
        # the default variant speculates on every prompt; fp32 (whose draft is the int4 variant; an
        # int4 default cannot draft for itself) on a few, to keep the run short
        spec_variants = {default} if args.quick else {default, "fp32"}
        for v in variants:
            phases = SUITE + (",speculative" if v in spec_variants else "")
            cmd = [main_py, "-m", "bench.anchors.ours", "--model-dir", str(model_dir), "--variant", v]
            if v != default:
                cmd += ["--spec-prompts", "4"]
            runs.append(
                {"engine": "ours", "variant": v, "cmd": cmd, "phases": phases, "default": v == default}
            )
    if "llamacpp" in args.only:
        cmd = [anchor_py, "-m", "bench.anchors.llamacpp", "--gguf", str(env.gguf_path())]
        runs.append(
            {
                "engine": "llamacpp",
                "variant": "Q4_1",
                "cmd": cmd,
                "phases": SUITE,
                "needs": "llama-cpp-python",
            }
        )
    if "ortgenai" in args.only:
        quick_set = sorted({"fp32", default.split("-")[0]} & set(env.ORTGENAI_PRECISIONS))
        precisions = args.precisions.split(",") if args.precisions else None
        for p in precisions or (quick_set if args.quick else env.ORTGENAI_PRECISIONS):
            cmd = [anchor_py, "-m", "bench.anchors.ortgenai", "--model-dir", str(env.ortgenai_dir(p))]
            runs.append(
                {
                    "engine": "ortgenai",
                    "variant": p,
                    "cmd": cmd,
                    "phases": SUITE,
                    "needs": "onnxruntime-genai",
                }
            )
    if "hf" in args.only:
        cmd = [main_py, "-m", "bench.anchors.hf", "--model-dir", str(env.HF_DIR)]
        runs.append({"engine": "hf", "variant": "fp32", "cmd": cmd, "phases": SUITE})
    default_precision = default.split("-")[0]
    order = [
        ("ours", default),
        ("llamacpp", "Q4_1"),
        ("ortgenai", default_precision),
        ("ours", "fp32"),
        ("ortgenai", "fp32"),
        ("hf", "fp32"),
    ]
    runs.sort(
        key=lambda r: order.index((r["engine"], r["variant"])) if (r["engine"], r["variant"]) in order else 99
    )
    return runs


def run_engine(run: dict[str, Any], workload: Path, quick: bool, timeout: float) -> dict[str, Any]:
    """One engine in its own subprocess; returns its JSON plus wall time and load averages."""
    name = f"{run['engine']}-{run['variant']}"
    partial = LOGS / f"partial-{name}.json"
    partial.unlink(missing_ok=True)
    cmd = [*run["cmd"], "--workload", str(workload), "--threads", "2", "--phases", run["phases"]]
    cmd += ["--partial", str(partial)]
    if quick:
        cmd.append("--quick")
    log_path = LOGS / f"run-{name}.log"
    log(f"running {name} (log: {log_path})")
    envvars = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    load_before = os.getloadavg()
    started = time.perf_counter()
    with log_path.open("w") as err:
        try:
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO, env=envvars, timeout=timeout
            )
            rc, stdout = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as exc:
            rc, stdout = (
                -1,
                (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""),
            )
    wall = time.perf_counter() - started
    meta = {"wall_s": round(wall, 1), "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if rc != 0 or not lines:
        tail = log_path.read_text()[-1500:]
        log(f"{name} failed (exit {rc}): {tail[-300:]}")
        error = {"error": f"exit {rc}" + (" (timeout)" if rc == -1 else ""), "log_tail": tail}
        if partial.exists():  # keep the phases it finished
            return {**meta, **json.loads(partial.read_text()), **error}
        return {**meta, **error}
    log(f"{name} done in {wall:.0f}s")
    return {**meta, **json.loads(lines[-1])}


def setup_anchors(args: argparse.Namespace) -> dict[str, Any]:
    """Install / build what the requested anchors need; returns versions and any failure reasons."""
    status: dict[str, Any] = {}
    if {"llamacpp", "ortgenai"} & set(args.only):
        status["packages"] = env.ensure_anchor_venv(LOGS)
    if {"ortgenai", "hf"} & set(args.only):
        env.export_hf_folder(env.gguf_path())
    if "ortgenai" in args.only and status["packages"].get("onnxruntime-genai"):
        for p in env.ORTGENAI_PRECISIONS:
            try:
                env.build_ortgenai(p, env.HF_DIR, LOGS)
            except RuntimeError as exc:
                status[f"ortgenai-{p}"] = str(exc)
    return status


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    flags = Path("/proc/cpuinfo").read_text()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx2": " avx2" in flags,
        "avx512f": " avx512f" in flags,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer tokens and one context (~5 minutes)")
    parser.add_argument("--only", default=",".join(ENGINES), help="engines to run: " + ",".join(ENGINES))
    parser.add_argument("--variants", default="", help="our variants to run (default: all in the manifest)")
    parser.add_argument(
        "--precisions", default="", help="onnxruntime-genai precisions (default: fp32,int8,int4)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per engine subprocess")
    parser.add_argument("--extras-only", action="store_true", help="only the engine extras (see above)")
    parser.add_argument(
        "--phases",
        default="",
        help=f"with --extras-only: only these extras phases ({','.join(EXTRAS_PHASES)}; default all); "
        "results go to local_engine_extras_<phases>.json/.md",
    )
    parser.add_argument("--rss-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        print(json.dumps(rss_child(args.rss_child)))
        return
    args.only = [e for e in args.only.split(",") if e]
    unknown = set(args.only) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}")
    LOGS.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)

    model_dir, ours_error = our_model_dir() if "ours" in args.only else (None, "not requested")
    manifest = json.loads((model_dir / "manifest.json").read_text()) if model_dir else None
    if args.extras_only:  # in this process; no anchors, no subprocesses
        args.out.mkdir(parents=True, exist_ok=True)
        assert model_dir is not None and manifest is not None, ours_error
        phases = [p for p in args.phases.split(",") if p]
        if set(phases) - set(EXTRAS_PHASES):
            parser.error(f"unknown phases {sorted(set(phases) - set(EXTRAS_PHASES))}")
        extras = run_extras(model_dir, manifest, args.quick, set(phases) or None)
        name = "local_engine_extras" + ("_" + "_".join(phases) if phases else "")
        (args.out / f"{name}.json").write_text(json.dumps(extras, indent=1))
        md = render_extras(extras)
        (args.out / f"{name}.md").write_text(md)
        print(md)
        return

    setup = setup_anchors(args)
    env.export_hf_folder(env.gguf_path())  # the tokenizer cross-check needs it
    work, tokenizer_info = tokenize(model_dir)
    workload_path = env.WORK / "workload.json"
    workload_path.write_text(json.dumps(work))

    report: dict[str, Any] = {
        "benchmark": "local_engine",
        "quick": args.quick,
        "started": started.isoformat(),
        "machine": machine(),
        "threads": 2,
        "tokenizer": tokenizer_info,
        "ours_unavailable": ours_error,
        "setup": setup,
        "manifest_default_variant": manifest.get("default_variant") if manifest else None,
        "workload": {k: len(v) if isinstance(v, list) else None for k, v in work.items()},
        "results": [],
    }
    for run in engine_runs(args, model_dir, manifest):
        entry = {k: run[k] for k in ("engine", "variant")} | {"default": run.get("default", False)}
        need = run.get("needs")
        if need and not setup.get("packages", {}).get(need):
            entry["error"] = f"{need} could not be installed; see {LOGS}/pip-{need}.log"
        elif run["engine"] == "ortgenai" and f"ortgenai-{run['variant']}" in setup:
            entry["error"] = setup[f"ortgenai-{run['variant']}"]
        else:
            entry.update(run_engine(run, workload_path, args.quick, args.timeout))
        entry["model_bytes"] = model_bytes(run["engine"], run["variant"], model_dir, manifest)
        report["results"].append(entry)
        write_report(report, args.out)  # after every engine, so an interrupted run still leaves its numbers
    if model_dir is not None and manifest is not None:
        report["extras"] = run_extras(model_dir, manifest, args.quick)
    report["complete"] = True
    print(write_report(report, args.out))


def write_report(report: dict[str, Any], out: Path) -> str:
    """Derive the ratios and targets, write the JSON and the Markdown; returns the Markdown."""
    report["finished"] = datetime.now(UTC).isoformat()
    report["derived"] = derive(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "local_engine.json").write_text(json.dumps(report, indent=1))
    md = render_markdown(report)
    if report.get("extras"):
        md += "\n" + render_extras(report["extras"])
    (out / "local_engine.md").write_text(md)
    return md


def model_bytes(
    engine: str, variant: str, model_dir: Path | None, manifest: dict[str, Any] | None
) -> int | None:
    """Size on disk of the model files the engine loads (ONNX graph + external data, GGUF, safetensors)."""
    if engine == "ours" and model_dir is not None and manifest is not None:
        onnx_file = model_dir / manifest["variants"][variant]["file"]
        return sum(p.stat().st_size for p in onnx_file.parent.iterdir() if p.name.startswith(onnx_file.name))
    if engine == "llamacpp":
        return env.gguf_path().stat().st_size
    if engine == "ortgenai" and env.ortgenai_dir(variant).exists():
        return sum(p.stat().st_size for p in env.ortgenai_dir(variant).glob("model.onnx*"))
    if engine == "hf" and env.HF_DIR.exists():
        return sum(p.stat().st_size for p in env.HF_DIR.glob("*.safetensors"))
    return None


# ---- engine extras: in this process, our default variant ----


EXTRAS_PHASES = ("sampling", "streams", "structured", "speculative", "kv_cache", "rss")


def run_extras(
    model_dir: Path, manifest: dict[str, Any], quick: bool, phases: set[str] | None = None
) -> dict[str, Any]:
    from local_engine.runner import ModelRunner
    from local_engine.tokenizer import Tokenizer

    default = str(manifest["default_variant"])
    tok = Tokenizer.load(model_dir)
    from local_engine.quality import mtbench_path

    mt = mtbench_path()
    assert mt is not None, "the MT-Bench questions (../shared/data or $THRIFTGATE_MTBENCH) are missing"
    work = build_workload(tok.encode, lambda m: tok.encode(tok.apply_chat_template(list(m))), mt)
    out: dict[str, Any] = {"default_variant": default, "quick": quick, "loadavg_at_start": os.getloadavg()}
    out["quality"] = {
        name: {**v.get("quality", {}), **v.get("speed", {}), "passed": v.get("passed_quality_bar")}
        for name, v in manifest["variants"].items()
    }
    runner = ModelRunner(model_dir, default, num_slots=8, max_seq_len=2048, threads=2)
    for name, fn in (
        ("sampling", lambda: bench_sampling(runner, tok, work, quick)),
        ("streams", lambda: bench_streams(runner, tok, work, quick)),
        ("structured", lambda: bench_structured(runner, tok, quick)),
        ("speculative", lambda: bench_speculative(runner, tok, work, quick)),
    ):
        if phases is not None and name not in phases:
            continue
        log(f"extras: {name}")
        started = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as exc:  # one broken phase must not lose the others
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"extras: {name} done in {time.perf_counter() - started:.0f}s")
    if phases is None or "kv_cache" in phases:
        log("extras: float16 KV cache against a float32 one")
        try:
            out["kv_cache"] = bench_kv_cache(model_dir, tok, work, quick)
        except Exception as exc:
            out["kv_cache"] = {"error": f"{type(exc).__name__}: {exc}"}
    if phases is None or "rss" in phases:
        log("extras: peak RSS of 8 x 2048 tokens (subprocess)")
        out["rss"] = bench_rss(model_dir, default, quick)
    out["loadavg_at_end"] = os.getloadavg()
    return out


def _engine(runner: Any, tok: Any, **kw: Any) -> Any:
    from local_engine.engine import LLMEngine

    compiler = kw.pop("compiler", None)
    return LLMEngine(runner, tok, grammar_compiler=(lambda: compiler) if compiler else None, **kw)


def _run(
    engine: Any, requests: dict[str, list[int]], params: Any
) -> tuple[dict[str, list[int]], dict[str, str]]:
    for rid, ids in requests.items():
        engine.add_request(rid, ids, params)
    tokens: dict[str, list[int]] = {rid: [] for rid in requests}
    reasons: dict[str, str] = {}
    while engine.has_unfinished():
        for o in engine.step():
            tokens[o.request_id] += o.new_token_ids
            if o.finished:
                reasons[o.request_id] = o.finish_reason
    return tokens, reasons


def bench_sampling(runner: Any, tok: Any, work: dict[str, Any], quick: bool) -> dict[str, Any]:
    """One stream's decode tok/s (prefill excluded) with greedy and with sampling, and the cost of
    sampling one token from real logits against one decode step."""
    from local_engine.sampling import SamplingParams, make_rng, sample_logits

    n = 32 if quick else 96
    ctx = work["contexts"]["128"]
    settings = {
        "greedy": SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True),
        "default (T 0.2, top-p 0.9)": SamplingParams(
            max_tokens=n, temperature=0.2, top_p=0.9, ignore_eos=True, seed=1
        ),
        "T 0.7": SamplingParams(max_tokens=n, temperature=0.7, ignore_eos=True, seed=1),
        "T 1.0, top-k 50, top-p 0.95": SamplingParams(
            max_tokens=n, temperature=1.0, top_k=50, top_p=0.95, ignore_eos=True, seed=1
        ),
    }
    out: dict[str, Any] = {}
    for _round in range(2):
        for name, params in settings.items():
            engine = _engine(runner, tok, speculative="off")
            engine.add_request("r", ctx, params)
            engine.step()  # prefill + first token
            started = time.perf_counter()
            steps = 0
            while engine.has_unfinished():
                engine.step()
                steps += 1
            rate = steps / (time.perf_counter() - started)
            out[name] = max(out.get(name, 0.0), rate)
    logits = runner.forward([0], [ctx], [0])[0]
    step_s = []
    for i in range(8):
        t0 = time.perf_counter()
        runner.forward([0], [[ctx[i]]], [len(ctx) + i])
        step_s.append(time.perf_counter() - t0)
    cost = {}
    rng = make_rng(0)
    for name, params in settings.items():
        t0 = time.perf_counter()
        for _ in range(50):
            sample_logits(logits, params, rng)
        cost[name] = (time.perf_counter() - t0) / 50
    step = float(np.median(step_s))
    return {
        "decode_tok_s": out,
        "decode_step_ms": step * 1000,
        "sample_ms": {k: v * 1000 for k, v in cost.items()},
        "sample_share_of_step": {k: v / step for k, v in cost.items()},
    }


def bench_streams(runner: Any, tok: Any, work: dict[str, Any], quick: bool) -> dict[str, Any]:
    """8 streams against one with the default sampling: decode-only aggregate (batched decode steps,
    sampling included, timed after every prompt is in) and end to end (prefill included)."""
    from local_engine.sampling import SamplingParams

    n = 24 if quick else 64
    params = SamplingParams(max_tokens=n, temperature=0.2, top_p=0.9, ignore_eos=True, seed=1)
    prompts = work["streams"][:8]
    out: dict[str, Any] = {}
    for count in (1, 8):
        requests = {f"s{i}": prompts[i] for i in range(count)}
        best_e2e = best_decode = 0.0
        for _round in range(2):
            engine = _engine(runner, tok, speculative="off", prefix_cache_bytes=0)
            started = time.perf_counter()
            for rid, ids in requests.items():
                engine.add_request(rid, ids, params)
            produced = 0
            decode_tokens = 0
            decode_s = 0.0
            while engine.has_unfinished():
                prefilling = any(s.in_prefill for s in engine.scheduler.running) or engine.scheduler.waiting
                t0 = time.perf_counter()
                outs = engine.step()
                made = sum(len(o.new_token_ids) for o in outs)
                produced += made
                if not prefilling:
                    decode_s += time.perf_counter() - t0
                    decode_tokens += made
            wall = time.perf_counter() - started
            best_e2e = max(best_e2e, produced / wall)
            best_decode = max(best_decode, decode_tokens / decode_s if decode_s else 0.0)
        out[str(count)] = {"end_to_end_tok_s": best_e2e, "decode_only_tok_s": best_decode}
    out["ratio_end_to_end"] = out["8"]["end_to_end_tok_s"] / out["1"]["end_to_end_tok_s"]
    out["ratio_decode_only"] = out["8"]["decode_only_tok_s"] / out["1"]["decode_only_tok_s"]
    return out


TOPICS = (
    "a city",
    "a book",
    "a movie",
    "a person",
    "a product",
    "a recipe",
    "a planet",
    "a car",
    "a company",
    "a sports team",
    "a song",
    "an animal",
    "a country",
    "a job offer",
    "a hotel",
    "a laptop",
)


def random_schema(rng: np.random.Generator, depth: int = 0) -> dict[str, Any]:
    """A random object schema of the kinds APIs receive: strings (some bounded), integers with ranges,
    numbers, booleans, enums, arrays and, one level down, nested objects; some properties optional."""
    kinds = ["string", "bstring", "integer", "number", "boolean", "enum", "array"] + (
        ["object"] if depth < 1 else []
    )
    props: dict[str, Any] = {}
    for i in range(int(rng.integers(1, 6))):
        kind = str(rng.choice(kinds))
        name = f"{rng.choice(['name', 'count', 'score', 'label', 'items', 'info', 'flag', 'kind'])!s}_{i}"
        if kind == "string":
            props[name] = {"type": "string"}
        elif kind == "bstring":
            props[name] = {"type": "string", "maxLength": int(rng.integers(3, 40))}
        elif kind == "integer":
            lo = int(rng.integers(-100, 100))
            props[name] = {"type": "integer", "minimum": lo, "maximum": lo + int(rng.integers(1, 1000))}
        elif kind == "number":
            props[name] = {"type": "number"}
        elif kind == "boolean":
            props[name] = {"type": "boolean"}
        elif kind == "enum":
            props[name] = {"enum": [f"v{j}" for j in range(int(rng.integers(2, 5)))]}
        elif kind == "array":
            item = {"type": str(rng.choice(["string", "integer"]))}
            props[name] = {"type": "array", "items": item, "maxItems": int(rng.integers(1, 5))}
        else:
            props[name] = random_schema(rng, depth + 1)
    required = [k for k in props if rng.random() < 0.7]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def structured_cases(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` cases: JSON-schema outputs, JSON-object outputs and forced tool calls over 1-3 tools."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        topic = str(rng.choice(TOPICS))
        kind = ("schema", "schema", "object", "tool")[i % 4]
        temperature = 0.0 if i % 2 == 0 else 0.7
        if kind == "tool":
            tools = [(f"tool_{j}", random_schema(rng)) for j in range(int(rng.integers(1, 4)))]
            prompt = f"Use a tool to record {topic}."
            cases.append({"kind": kind, "tools": tools, "prompt": prompt, "temperature": temperature})
        else:
            schema = random_schema(rng) if kind == "schema" else None
            prompt = f"Describe {topic} as JSON."
            cases.append({"kind": kind, "schema": schema, "prompt": prompt, "temperature": temperature})
    return cases


def bench_structured(runner: Any, tok: Any, quick: bool) -> dict[str, Any]:
    """Schema-valid share over generated cases (8 at a time, batched), and the constraint's cost per
    token (mask + advance) against a decode step."""
    import jsonschema

    from local_engine.constrained import (
        GrammarCompiler,
        ToolCallParser,
        json_schema_grammar,
        tool_call_grammar,
    )
    from local_engine.sampling import SamplingParams

    compiler = GrammarCompiler(tok.hf.to_str(), runner.vocab_size, tok.stop_ids)
    cases = structured_cases(48 if quick else 208)
    failures: list[dict[str, Any]] = []
    valid = 0
    tokens_total = 0
    started = time.perf_counter()
    for start in range(0, len(cases), 8):
        group = cases[start : start + 8]
        engine = _engine(runner, tok, speculative="auto", compiler=compiler)
        for j, case in enumerate(group):
            grammar = (
                tool_call_grammar(case["tools"], allow_text=False)
                if case["kind"] == "tool"
                else json_schema_grammar(case["schema"])
            )
            messages = [{"role": "user", "content": case["prompt"]}]
            ids = tok.encode(tok.apply_chat_template(messages))
            params = SamplingParams(max_tokens=160, temperature=case["temperature"], seed=j, grammar=grammar)
            engine.add_request(str(start + j), ids, params)
        got, reasons = _collect(engine)
        for j, case in enumerate(group):
            text = tok.decode(got[str(start + j)])
            tokens_total += len(got[str(start + j)])
            try:
                if case["kind"] == "tool":
                    parser = ToolCallParser()
                    args = "".join(t for k, t in parser.feed(text) + parser.finish() if k == "args")
                    schemas = dict(case["tools"])
                    assert parser.name in schemas, f"unknown tool {parser.name!r}"
                    jsonschema.validate(json.loads(args), schemas[parser.name])
                else:
                    value = json.loads(text)
                    jsonschema.validate(value, case["schema"] or {"type": "object"})
                valid += 1
            except Exception as exc:
                failures.append(
                    {
                        "case": start + j,
                        "text": text[:300],
                        "error": str(exc)[:200],
                        "reason": reasons.get(str(start + j)),
                    }
                )
    wall = time.perf_counter() - started
    # the constraint's own cost per token, against a decode step of this runner
    constraint = compiler.constraint(json_schema_grammar(random_schema(np.random.default_rng(5))))
    logits = runner.forward([0], [[1, 2, 3]], [0])[0]
    costs = []
    step = []
    for i in range(24):
        t0 = time.perf_counter()
        masked = constraint.apply(logits)
        token = int(masked.argmax())
        constraint.advance(token)
        costs.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        logits = runner.forward([0], [[token]], [3 + i])[0]
        step.append(time.perf_counter() - t1)
        if constraint.done:
            break
    return {
        "cases": len(cases),
        "valid": valid,
        "valid_share": valid / len(cases),
        "tokens": tokens_total,
        "aggregate_tok_s": tokens_total / wall,
        "constraint_ms_per_token": float(np.median(costs)) * 1000,
        "decode_step_ms": float(np.median(step)) * 1000,
        "overhead_per_token": float(np.median(costs) / np.median(step)),
        "failures": failures[:10],
    }


def _collect(engine: Any) -> tuple[dict[str, list[int]], dict[str, str]]:
    tokens: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    while engine.has_unfinished():
        for o in engine.step():
            tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finished:
                reasons[o.request_id] = o.finish_reason
    return tokens, reasons


def bench_speculative(runner: Any, tok: Any, work: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Prompt-lookup speculation on the default variant, greedy: identical output to plain greedy,
    and the decode speed-up on the extraction prompts."""
    from local_engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=48 if quick else 96, temperature=0.0)
    items = work["extraction"][:3] if quick else work["extraction"]
    out: dict[str, Any] = {"prompts": len(items)}
    # "exact": plain greedy through the verification kernels (one-sequence steps padded to two
    # positions, which is what the engine does whenever speculation is on); "off": plain greedy with
    # one-position steps, the fastest plain decoding and the speed-up's baseline.
    modes = {"off": ("off", False), "exact": ("off", True), "ngram": ("ngram", True)}
    timings: dict[str, float] = dict.fromkeys(modes, 0.0)
    tokens: dict[str, dict[str, list[int]]] = {m: {} for m in modes}
    for mode in (*modes, *modes):
        total = 0.0
        speculative, exact = modes[mode]
        for item in items:
            engine = _engine(runner, tok, speculative=speculative, exact_decode=exact, prefix_cache_bytes=0)
            engine.add_request("r", item["ids"], params)
            engine.step()  # prefill and first token: not decode
            started = time.perf_counter()
            got = []
            while engine.has_unfinished():
                for o in engine.step():
                    got += o.new_token_ids
            total += time.perf_counter() - started
            tokens[mode][item["name"]] = got
        timings[mode] = min(timings[mode], total) if timings[mode] else total
    out["identical"] = tokens["exact"] == tokens["ngram"]
    out["speedup"] = timings["off"] / timings["ngram"]
    out["speedup_vs_exact_plain"] = timings["exact"] / timings["ngram"]
    out["exact_plain_cost"] = timings["exact"] / timings["off"]
    out["differing_prompts"] = [k for k in tokens["exact"] if tokens["exact"][k] != tokens["ngram"][k]]
    out["unpadded_plain_differs_on"] = [k for k in tokens["off"] if tokens["off"][k] != tokens["ngram"][k]]
    out["loadavg"] = os.getloadavg()
    return out


def bench_kv_cache(model_dir: Path, tok: Any, work: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The float16 KV cache against a float32 one on the same float32 weights: KL divergence and top-1
    agreement over the evaluation text (``quality.text_logits``: chunks of 512 read the earlier chunks
    from the cache), and decode speed at 128 and 2,048 tokens of context, CPU time per step with one
    thread (the wall time of a shared machine is noise) and wall tok/s with two."""
    from local_engine import quality
    from local_engine.convert import PERPLEXITY_TEXT, save_model
    from local_engine.gguf_weights import default_source, load_gguf
    from local_engine.graph import build_decoder
    from local_engine.runner import ModelRunner

    wide_dir = LOGS / "kv-float32"
    if not (wide_dir / "fp32" / "model.onnx").exists():
        model = load_gguf(default_source(), "kv-float32")
        save_model(build_decoder(model.config, model.weights, kv_dtype="float32"), wide_dir / "fp32")
        manifest = json.loads((model_dir / "manifest.json").read_text())
        (wide_dir / "manifest.json").write_text(
            json.dumps({"config": manifest["config"], "variants": {"fp32": {"file": "fp32/model.onnx"}}})
        )
    ids = tok.encode(PERPLEXITY_TEXT.read_text())[: 1024 if quick else 4096]
    out: dict[str, Any] = {"positions": len(ids)}
    runners = {
        "float16": ModelRunner(model_dir, "fp32", num_slots=1, max_seq_len=4096, threads=2),
        "float32": ModelRunner(wide_dir, "fp32", num_slots=1, max_seq_len=4096, threads=2),
    }
    ref = quality.text_logits(runners["float32"], ids)
    dist = quality.distribution_vs(ref, quality.text_logits(runners["float16"], ids))
    out["kl_vs_float32_kv"] = dist.kl
    out["top1_vs_float32_kv"] = dist.top1
    del ref, runners
    steps = 16 if quick else 48
    for threads in (1, 2):
        for kind, path in (("float16", model_dir), ("float32", wide_dir)):
            runner = ModelRunner(path, "fp32", num_slots=1, max_seq_len=2304, threads=threads)
            for ctx in (128, 2048):
                quality.text_logits(runner, ids[:ctx] if len(ids) >= ctx else (ids * 4)[:ctx])
                cpu, wall = time.process_time(), time.perf_counter()
                for i in range(steps):
                    runner.forward([0], [[ids[i]]], [ctx + i])
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                key = f"{kind}_ctx{ctx}_threads{threads}"
                out[key] = {"cpu_ms_per_step": cpu / steps * 1000, "tok_s": steps / wall}
    return out


def bench_rss(model_dir: Path, variant: str, quick: bool) -> dict[str, Any]:
    spec = LOGS / "rss-spec.json"
    spec.write_text(json.dumps({"model_dir": str(model_dir), "variant": variant, "quick": quick}))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.local_engine", "--rss-child", str(spec)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=3600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": proc.stderr[-500:]}


def rss_child(spec_path: Path) -> dict[str, Any]:
    """In a fresh process: the engine as the gateway loads it (8 slots of 2,048 positions, the default
    prefix cache), 8 concurrent sequences filled to 2,048 tokens; the process's peak RSS."""
    import asyncio

    from local_engine.async_engine import AsyncLLMEngine
    from local_engine.sampling import SamplingParams

    spec = json.loads(spec_path.read_text())
    engine = AsyncLLMEngine.from_model_dir(
        Path(spec["model_dir"]), spec["variant"], num_slots=8, max_seq_len=2048, speculative="off"
    )
    gen = 8 if spec["quick"] else 48
    text = (REPO / "local_engine" / "perplexity_text.txt").read_text() * 40
    base = engine.tokenizer.encode(text)

    async def main() -> list[int]:
        await engine.start()

        async def one(i: int) -> int:
            ids = base[i * 7 : i * 7 + 2048 - gen - 1]
            params = SamplingParams(max_tokens=gen, temperature=0.2, top_p=0.9, ignore_eos=True, seed=i)
            n = 0
            async for out in engine.generate(ids, params):
                n += len(out.token_ids)
            return len(ids) + n

        try:
            return list(await asyncio.gather(*(one(i) for i in range(8))))
        finally:
            await engine.stop()

    lengths = asyncio.run(main())
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return {
        "sequences": 8,
        "positions": lengths,
        "peak_rss_mb": hwm / 1024,
        "kv_mb": engine.engine.runner.kv_nbytes / 2**20,
    }


def render_extras(x: dict[str, Any]) -> str:
    lines = [
        f"## Engine extras (ours, default variant {x['default_variant']}{', quick' if x.get('quick') else ''})",
        "",
    ]
    lines.append(
        f"Load average at start {x.get('loadavg_at_start')}, at end {x.get('loadavg_at_end')} (2 cores, shared)."
    )
    lines += ["", "### Quality bar of every variant (from the build's manifest; against fp32)", ""]
    lines.append(
        "| variant | KL (nats) | top-1 | answers | MT-Bench greedy-32 match | ppl ratio | decode tok/s @128 (build) | passes |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, q in x.get("quality", {}).items():
        mt = q.get("mtbench_greedy32_match")
        lines.append(
            f"| {name} | {q.get('kl_vs_fp32', float('nan')):.5f} | {100 * q.get('top1_agreement', 0):.2f}% | "
            f"{q.get('answer_score')}/{q.get('answer_questions')} | {'-' if mt is None else f'{100 * mt:.0f}%'} | "
            f"{q.get('perplexity_ratio', float('nan')):.3f} | {q.get('decode_tokens_per_s_ctx128', 0):.1f} | {q.get('passed')} |"
        )
    s = x.get("sampling", {})
    if "decode_tok_s" in s:
        lines += [
            "",
            "### Sampling (one stream, ctx 128, decode only)",
            "",
            "| sampling | decode tok/s | sampling ms/token | share of a decode step |",
            "|---|---|---|---|",
        ]
        for k, v in s["decode_tok_s"].items():
            lines.append(
                f"| {k} | {v:.1f} | {s['sample_ms'][k]:.3f} | {100 * s['sample_share_of_step'][k]:.1f}% |"
            )
        lines.append(f"\nDecode step {s['decode_step_ms']:.2f} ms.")
    elif s:
        lines.append(f"\nsampling: {s}")
    st = x.get("streams", {})
    if "1" in st:
        lines += [
            "",
            "### 8 streams against one (default sampling)",
            "",
            "| streams | decode-only tok/s | end-to-end tok/s |",
            "|---|---|---|",
        ]
        for c in ("1", "8"):
            lines.append(f"| {c} | {st[c]['decode_only_tok_s']:.1f} | {st[c]['end_to_end_tok_s']:.1f} |")
        lines.append(
            f"\nRatios: decode-only {st['ratio_decode_only']:.2f}x (target 3x), end to end {st['ratio_end_to_end']:.2f}x (target 2.5x)."
        )
    elif st:
        lines.append(f"\nstreams: {st}")
    so = x.get("structured", {})
    if "cases" in so:
        lines += [
            "",
            "### Constrained decoding",
            "",
            f"{so['valid']}/{so['cases']} generated cases schema-valid ({100 * so['valid_share']:.1f}%), "
            f"{so['tokens']} tokens at {so['aggregate_tok_s']:.1f} tok/s aggregate; the mask costs "
            f"{so['constraint_ms_per_token']:.3f} ms a token against a {so['decode_step_ms']:.2f} ms decode step "
            f"({100 * so['overhead_per_token']:.1f}% overhead, target <= 15%).",
        ]
    elif so:
        lines.append(f"\nstructured: {so}")
    sp = x.get("speculative", {})
    if "speedup" in sp:
        lines += [
            "",
            "### Speculative decoding (prompt lookup, default variant, greedy, extraction prompts)",
            "",
            f"Identical output to plain greedy through the verification kernels: {sp['identical']} "
            f"(differing: {sp['differing_prompts']}); speed-up {sp['speedup']:.2f}x against plain one-position "
            f"decoding (target 2x), {sp.get('speedup_vs_exact_plain', float('nan')):.2f}x against plain "
            f"decoding padded to two positions (which costs {sp.get('exact_plain_cost', float('nan')):.2f}x "
            f"the one-position steps). Plain one-position greedy differs from it on "
            f"{sp.get('unpadded_plain_differs_on')} (the M=1 kernels sum in another order). "
            f"Load average {sp.get('loadavg')}.",
        ]
    elif sp:
        lines.append(f"\nspeculative: {sp}")
    kv = x.get("kv_cache", {})
    if "kl_vs_float32_kv" in kv:
        lines += [
            "",
            "### float16 KV cache against float32 (fp32 weights)",
            "",
            f"Over {kv['positions']} positions of the evaluation text: KL {kv['kl_vs_float32_kv']:.6f} nats, "
            f"top-1 agreement {100 * kv['top1_vs_float32_kv']:.2f}%.",
            "",
            "| KV | ctx | threads | CPU ms/step | tok/s |",
            "|---|---|---|---|---|",
        ]
        for key, v in kv.items():
            if isinstance(v, dict):
                kind, ctx, threads = key.split("_")
                lines.append(
                    f"| {kind} | {ctx[3:]} | {threads[7:]} | {v['cpu_ms_per_step']:.1f} | {v['tok_s']:.1f} |"
                )
    elif kv:
        lines.append(f"\nkv_cache: {kv}")
    r = x.get("rss", {})
    if "peak_rss_mb" in r:
        lines += [
            "",
            "### Memory",
            "",
            f"Peak RSS {r['peak_rss_mb']:.0f} MB for 8 sequences of up to {max(r['positions'])} positions "
            f"(engine process; KV cache {r['kv_mb']:.0f} MB preallocated; target 1,500 MB).",
        ]
    elif r:
        lines.append(f"\nrss: {r}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
