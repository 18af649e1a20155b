"""llama.cpp's own distance from float32 on the evaluation texts, by the measures of our quality bar.

    python -m bench.anchors.quality_ab --model-dir DIR [--anchor-python bench/.venv-anchors/bin/python]

llama.cpp runs the GGUF as shipped (Q4_1 linears with 8-bit quantized activations, Q8_0 head): the anchor
of the speed bar. Its mean KL divergence from our float32 variant (the same weights, dequantized), top-1
agreement and number of top-1 mismatches are measured over the bar's evaluation text
(``local_engine/perplexity_text.txt``) and the longer text of ``bench/local_variants.py``, so a variant's
numbers can be read against what the reference engine itself gives. The logits come from
``LlamaCppSession.all_logits`` (one context with ``logits_all``) in the anchors' venv, passed back as a
``.npy`` file. Writes ``bench/results/{out}.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"

_DUMP = """
import json, sys
import numpy as np
from bench.anchors.llamacpp import LlamaCppSession
gguf, ids_path, out = sys.argv[1:4]
session = LlamaCppSession(gguf, 2)
np.save(out, session.all_logits(json.load(open(ids_path))))
"""


def llamacpp_logits(python: str, gguf: Path, ids: list[int], tmp: Path) -> np.ndarray:
    ids_path, out = tmp / "ids.json", tmp / "logits.npy"
    ids_path.write_text(json.dumps(ids))
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="2")
    subprocess.run([python, "-c", _DUMP, str(gguf), str(ids_path), str(out)], check=True, cwd=REPO, env=env)
    logits: np.ndarray = np.load(out)
    return logits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, required=True, help="holds the fp32 variant and the tokenizer")
    ap.add_argument("--anchor-python", default=str(REPO / "bench" / ".venv-anchors" / "bin" / "python"))
    ap.add_argument("--out", default="local_quality_llamacpp")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from bench.anchors.environment import gguf_path
    from bench.local_variants import LONG_TEXT_SOURCE, distribution_chunked, long_text
    from local_engine import quality
    from local_engine.convert import PERPLEXITY_TEXT
    from local_engine.runner import ModelRunner
    from local_engine.tokenizer import Tokenizer

    tok = Tokenizer.load(args.model_dir)
    texts = {"evaluation text (the bar)": PERPLEXITY_TEXT.read_text()}
    extra = long_text()
    if extra:
        texts["long text"] = extra
    rows: list[dict[str, Any]] = []
    for label, text in texts.items():
        ids = tok.encode(text)
        runner = ModelRunner(args.model_dir, "fp32", num_slots=1, max_seq_len=len(ids) + 8, threads=2)
        ref = quality.text_logits(runner, ids)
        del runner
        with tempfile.TemporaryDirectory() as tmp:
            theirs = llamacpp_logits(args.anchor_python, gguf_path(), ids, Path(tmp))
        kl, top1 = distribution_chunked(ref, theirs)
        rows.append(
            {"text": label, "tokens": len(ids), "kl": kl, "top1": top1, "flips": round((1 - top1) * len(ids))}
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        del ref, theirs
    report = {"started": datetime.now(UTC).isoformat(), "long_text_source": LONG_TEXT_SOURCE, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# llama.cpp (Q4_1 GGUF as shipped) against our float32, by the quality bar's measures",
        "",
        f"{report['started']}; bench/anchors/quality_ab.py. Long text: {LONG_TEXT_SOURCE}.",
        "",
        "| text | tokens | KL vs fp32 | top-1 (mismatches) |",
        "|---|---|---|---|",
        *(f"| {r['text']} | {r['tokens']} | {r['kl']:.5f} | {r['top1']:.2%} ({r['flips']}) |" for r in rows),
    ]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
