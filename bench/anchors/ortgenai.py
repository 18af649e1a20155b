"""Anchor: onnxruntime-genai's runtime on its own model builder's output (fp32 / int8 / int4).

Runs in the anchors' venv: `bench/.venv-anchors/bin/python -m bench.anchors.ortgenai --workload W --model-dir D`.
Threads are pinned in the model's genai_config.json (`intra_op_num_threads`) when it is built.
Batch-1 requests: `Generator.append_tokens` then `generate_next_token` (greedy search, do_sample
false). Prefix hit: the previous request's generator is rewound (`rewind_to`) to the shared prefix
and only the rest is appended. Concurrent streams: one generator with `batch_size` N (static
batching; the prompts all have the same length). Perplexity appends the text one token at a time
(`get_logits` returns the last position only).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bench.anchors.common import main


class OrtGenaiSession:
    def __init__(self, model_dir: str, threads: int) -> None:
        import onnxruntime
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(model_dir)
        self.eos = 2
        self.gen: Any = None
        self.gen_ids: list[int] = []
        self.gen_max_length = 0
        self.info = {
            "engine": "onnxruntime-genai",
            "onnxruntime_genai": og.__version__,
            "onnxruntime": onnxruntime.__version__,
            "threads": threads,
            "model_dir": model_dir,
            "token_ids": "the workload's ids (tokenizer built from the GGUF; same ids as ort-genai's)",
            "prefix_cache": "Generator.rewind_to the shared prefix of the previous request, then append the rest",
            "streams": "one Generator with batch_size N (static batching, equal-length prompts)",
        }

    def _generator(self, max_length: int, batch_size: int = 1, min_length: int = 0) -> Any:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(
            max_length=max_length, min_length=min_length, do_sample=False, batch_size=batch_size
        )
        return self.og.Generator(self.model, params)

    def clear(self) -> None:
        self.gen = None
        self.gen_ids = []

    def generate(self, ids: Sequence[int], max_tokens: int, stop_at_eos: bool) -> Iterator[int]:
        ids = list(ids)
        shared = 0
        for a, b in zip(self.gen_ids, ids[:-1], strict=False):
            if a != b:
                break
            shared += 1
        if self.gen is not None and shared > 0 and len(ids) + max_tokens <= self.gen_max_length:
            self.gen.rewind_to(shared)
            feed = ids[shared:]
        else:
            self.gen = None
            self.gen_max_length = len(ids) + max_tokens + 64
            min_length = 0 if stop_at_eos else len(ids) + max_tokens  # min_length suppresses EOS
            self.gen = self._generator(self.gen_max_length, min_length=min_length)
            feed = ids
        gen = self.gen
        gen.append_tokens(np.asarray(feed, dtype=np.int32))
        seq = list(ids)
        self.gen_ids = seq
        for i in range(max_tokens):
            gen.generate_next_token()
            tok = int(gen.get_next_tokens()[0])
            seq.append(tok)
            yield tok
            if (stop_at_eos and tok == self.eos) or i == max_tokens - 1 or gen.is_done():
                return

    def batch_generate(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
        length = len(prompts[0])
        gen = self._generator(length + max_tokens, batch_size=len(prompts), min_length=length + max_tokens)
        gen.append_tokens(np.asarray([list(p) for p in prompts], dtype=np.int32))
        out: list[list[int]] = [[] for _ in prompts]
        for _ in range(max_tokens):
            gen.generate_next_token()
            for row, tok in zip(out, gen.get_next_tokens(), strict=True):
                row.append(int(tok))
        return out

    def all_logits(self, ids: Sequence[int]) -> np.ndarray:
        gen = self._generator(len(ids) + 1)
        rows = []
        for tok in ids:
            gen.append_tokens(np.asarray([tok], dtype=np.int32))
            rows.append(np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1))
        return np.stack(rows)


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True)


if __name__ == "__main__":
    main(lambda args: OrtGenaiSession(args.model_dir, args.threads), _args)
