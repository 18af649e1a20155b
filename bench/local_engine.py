"""Benchmark: our local engine against llama.cpp, onnxruntime-genai and transformers on the same weights.

    python bench/local_engine.py [--quick] [--only ours,llamacpp,ortgenai,hf] [--variants fp32,int4]

Every engine runs in its own subprocess, one after another (never two at once), with 2 threads,
greedy decoding and the same token ids (tokenized once here). Anchors that need other packages run
in `bench/.venv-anchors`, which this program creates and fills on first use (llama-cpp-python is a
~15-minute source build). Writes `bench/results/local_engine.json` (machine, versions, every raw
number) and `bench/results/local_engine.md` (the table and the targets, met or not), and prints
the table. Ratios are against baselines measured in the same run.
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
    args = parser.parse_args()
    args.only = [e for e in args.only.split(",") if e]
    unknown = set(args.only) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}")
    LOGS.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)

    model_dir, ours_error = our_model_dir() if "ours" in args.only else (None, "not requested")
    manifest = json.loads((model_dir / "manifest.json").read_text()) if model_dir else None
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
    report["complete"] = True
    print(write_report(report, args.out))


def write_report(report: dict[str, Any], out: Path) -> str:
    """Derive the ratios and targets, write the JSON and the Markdown; returns the Markdown."""
    report["finished"] = datetime.now(UTC).isoformat()
    report["derived"] = derive(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "local_engine.json").write_text(json.dumps(report, indent=1))
    md = render_markdown(report)
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


if __name__ == "__main__":
    main()
