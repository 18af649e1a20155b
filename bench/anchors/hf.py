"""Anchor: Hugging Face `transformers` on PyTorch CPU, float32, on the folder exported from the GGUF.

Runs in the main venv: `python -m bench.anchors.hf --workload W --model-dir data/bench/hf-...`.
Batch-1 requests use a greedy forward loop over a `DynamicCache` (what `generate` does inside,
but yielding each token as it is chosen); a prefix hit crops the cache of the previous request to
the shared prefix (transformers' documented prompt-reuse pattern). Concurrent streams use
`model.generate` on a batch (static batching; the prompts all have the same length).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bench.anchors.common import main


class HFSession:
    def __init__(self, model_dir: str, threads: int) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.eos = int(self.model.config.eos_token_id)
        self.cache: Any = None
        self.cached_ids: list[int] = []
        self.info = {
            "engine": "transformers",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "dtype": "float32",
            "token_ids": "the workload's ids (tokenizer built from the GGUF; same ids as ours)",
            "prefix_cache": "DynamicCache of the previous request, cropped to the shared prefix",
            "streams": "model.generate on a batch (static batching, equal-length prompts)",
        }

    def clear(self) -> None:
        self.cache = None
        self.cached_ids = []

    def generate(self, ids: Sequence[int], max_tokens: int, stop_at_eos: bool) -> Iterator[int]:
        from transformers import DynamicCache

        torch = self.torch
        ids = list(ids)
        shared = 0
        for a, b in zip(self.cached_ids, ids[:-1], strict=False):  # always feed at least one token
            if a != b:
                break
            shared += 1
        if self.cache is not None and shared > 0:
            drop = len(self.cached_ids) - shared
            if drop > 0:
                self.cache.crop(-drop)  # transformers 5 takes the number of positions to remove
        else:
            self.cache, shared = DynamicCache(), 0
        seq = ids[:shared]
        feed = ids[shared:]
        with torch.inference_mode():
            for i in range(max_tokens):
                out = self.model(
                    input_ids=torch.tensor([feed]),
                    past_key_values=self.cache,
                    use_cache=True,
                    position_ids=torch.arange(len(seq), len(seq) + len(feed)).unsqueeze(0),
                )
                seq += feed
                tok = int(out.logits[0, -1].argmax())
                self.cached_ids = list(seq)
                yield tok
                if (stop_at_eos and tok == self.eos) or i == max_tokens - 1:
                    return
                feed = [tok]

    def batch_generate(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
        torch = self.torch
        inp = torch.tensor([list(p) for p in prompts])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=inp,
                attention_mask=torch.ones_like(inp),
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self.eos,
            )
        return [row[inp.shape[1] :].tolist() for row in out]

    def all_logits(self, ids: Sequence[int]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([list(ids)]), use_cache=False)
        return np.asarray(out.logits[0].float().numpy())


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True)


def _open(args: argparse.Namespace) -> HFSession:
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    return HFSession(args.model_dir, args.threads)


if __name__ == "__main__":
    main(_open, _args)
