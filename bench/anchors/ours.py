"""Our engine (`local_engine`), driven through the same suite as the anchors, plus speculative decoding.

Runs in the main venv: `python -m bench.anchors.ours --workload W --model-dir data/models/... --variant V`.
Batch-1 requests go through `LLMEngine` (add_request, then step() until finished; speculation off
so the baseline is plain decoding); concurrent streams go through `AsyncLLMEngine` (continuous
batching, one asyncio task per stream). `clear()` builds a fresh `LLMEngine` over the same runner,
which empties its prefix cache. The `speculative` phase runs the extraction and chat prompts with
speculative "off", "ngram" and "draft" and compares their greedy outputs token for token.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.anchors.common import main

NUM_SLOTS = 16
MAX_SEQ_LEN = 4096  # the engine default; the KV cache is preallocated for it


class OurSession:
    def __init__(self, model_dir: Path, variant: str, threads: int) -> None:
        import onnxruntime

        from local_engine import LLMEngine
        from local_engine.runner import ModelRunner, load_manifest
        from local_engine.tokenizer import Tokenizer

        self.model_dir = model_dir
        self.threads = threads
        self.manifest = load_manifest(model_dir)
        self.variant = str(self.manifest["default_variant"]) if variant == "default" else variant
        self.tokenizer = Tokenizer.load(model_dir)
        self.runner = ModelRunner(
            model_dir, self.variant, num_slots=NUM_SLOTS, max_seq_len=MAX_SEQ_LEN, threads=threads
        )
        self._engine_cls = LLMEngine
        self._ids = itertools.count()
        self.engine = self.new_engine("off")
        self.info = {
            "engine": "ours",
            "variant": self.variant,
            "default_variant": self.manifest.get("default_variant"),
            "onnxruntime": onnxruntime.__version__,
            "threads": threads,
            "description": self.manifest["variants"][self.variant].get("description"),
            "token_ids": "the workload's ids (tokenizer built from the GGUF; same ids as ours)",
            "prefix_cache": "LLMEngine's block prefix cache (32-token blocks)",
            "streams": "AsyncLLMEngine, one asyncio task per stream (continuous batching)",
        }

    def new_engine(self, speculative: str, draft_runner: Any = None) -> Any:
        return self._engine_cls(
            self.runner,
            self.tokenizer,
            num_slots=NUM_SLOTS,
            speculative=speculative,  # type: ignore[arg-type]
            draft_runner=draft_runner,
        )

    def clear(self) -> None:
        self.engine = self.new_engine("off")

    def _params(self, max_tokens: int, stop_at_eos: bool) -> Any:
        from local_engine import SamplingParams

        return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=not stop_at_eos)

    def generate(self, ids: Sequence[int], max_tokens: int, stop_at_eos: bool) -> Iterator[int]:
        yield from run_request(self.engine, f"r{next(self._ids)}", ids, self._params(max_tokens, stop_at_eos))

    def batch_generate(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
        from local_engine import AsyncLLMEngine

        params = self._params(max_tokens, stop_at_eos=False)

        async def go() -> list[list[int]]:
            engine = AsyncLLMEngine(self.engine, self.tokenizer)
            await engine.start()

            async def one(p: Sequence[int]) -> list[int]:
                return [t async for out in engine.generate(list(p), params) for t in out.token_ids]

            try:
                return list(await asyncio.gather(*(one(p) for p in prompts)))
            finally:
                await engine.stop()

        return asyncio.run(go())

    def all_logits(self, ids: Sequence[int]) -> np.ndarray:
        return np.asarray(self.runner.forward([0], [list(ids)], [0], all_logits=True))


def run_request(engine: Any, rid: str, ids: Sequence[int], params: Any) -> Iterator[int]:
    """Drive a synchronous LLMEngine until request `rid` finishes, yielding its tokens as they come."""
    engine.add_request(rid, list(ids), params)
    finished = False
    try:
        while not finished:
            for out in engine.step():
                if out.request_id == rid:
                    yield from out.new_token_ids
                    finished = out.finished
    finally:
        if not finished:
            engine.abort(rid)
            while engine.has_unfinished():
                engine.step()


def speculative_phase(
    session: OurSession, work: dict[str, Any], quick: bool, draft_variant: str, num_prompts: int = 0
) -> dict[str, Any]:
    """Greedy generation of the extraction and chat prompts with speculation off / ngram / draft.

    Speedup = decode tokens/s with speculation over the same without (time after the first token,
    summed over the prompts). Identical = every prompt's tokens equal the non-speculative ones.
    """
    from local_engine.runner import ModelRunner

    max_tokens = 64 if quick else 96
    modes: dict[str, Any] = {"off": None, "ngram": None}
    if draft_variant and draft_variant != session.variant:
        modes["draft"] = ModelRunner(
            session.model_dir,
            draft_variant,
            num_slots=NUM_SLOTS,
            max_seq_len=MAX_SEQ_LEN,
            threads=session.threads,
        )
    out: dict[str, Any] = {
        "max_tokens": max_tokens,
        "draft_variant": draft_variant if "draft" in modes else None,
    }
    if "draft" not in modes:
        out["draft_skipped"] = "the draft variant is the target itself"
    for workload in ("extraction", "chat"):
        items = work[workload][: num_prompts or (3 if quick else None)]
        base_tokens: dict[str, list[int]] = {}
        res: dict[str, Any] = {}
        for mode, draft_runner in modes.items():
            engine = session.new_engine(mode, draft_runner)
            per_prompt = []
            gen_tokens, gen_s = 0, 0.0
            for i, item in enumerate(items):
                times, tokens = [], []
                start = time.perf_counter()
                for tok in run_request(engine, f"{mode}-{i}", item["ids"], session._params(max_tokens, True)):
                    times.append(time.perf_counter())
                    tokens.append(int(tok))
                gen_tokens += len(tokens) - 1
                gen_s += times[-1] - times[0]
                per_prompt.append(
                    {
                        "name": item["name"],
                        "tokens": len(tokens),
                        "ttft_s": times[0] - start,
                        "total_s": times[-1] - start,
                    }
                )
                if mode == "off":
                    base_tokens[item["name"]] = tokens
                else:
                    per_prompt[-1]["identical"] = tokens == base_tokens[item["name"]]
            stats = engine.stats
            res[mode] = {
                "decode_tok_s": gen_tokens / gen_s if gen_s > 0 else float("nan"),
                "acceptance_rate": stats.acceptance_rate,
                "drafted": stats.drafted_tokens,
                "accepted": stats.accepted_tokens,
                "speculative_steps": stats.speculative_steps,
                "identical": all(p.get("identical", True) for p in per_prompt),
                "prompts": per_prompt,
            }
            if mode != "off":
                res[mode]["speedup"] = res[mode]["decode_tok_s"] / res["off"]["decode_tok_s"]
        out[workload] = res
    return out


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--variant", default="default")
    parser.add_argument("--draft-variant", default="int4")
    parser.add_argument(
        "--spec-prompts", type=int, default=0, help="prompts per speculative workload (0: all)"
    )


def _open(args: argparse.Namespace) -> OurSession:
    return OurSession(args.model_dir, args.variant, args.threads)


def _extra(session: Any, work: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if "speculative" not in args.phases.split(","):
        return {}
    return {
        "speculative": speculative_phase(session, work, args.quick, args.draft_variant, args.spec_prompts)
    }


if __name__ == "__main__":
    main(_open, _args, _extra)
