"""Anchor: llama.cpp through `llama-cpp-python`, on the same GGUF file our engine converts.

Runs in the anchors' venv: `bench/.venv-anchors/bin/python -m bench.anchors.llamacpp --workload W --gguf F`.
Batch-1 requests go through `Llama.generate` (greedy: temp 0, top-k 1, no repeat penalty), which
also reuses the longest cached prefix of the previous request (llama-cpp-python's own prefix cache).
Concurrent streams: the high-level API runs one sequence per context, so N streams go through
llama.cpp's own C API (as its `batched` example and its server do): one context with `n_seq_max` N
and a unified KV cache, every prompt prefilled in one `llama_decode`, then one token per sequence
per `llama_decode`, argmax over `llama_get_logits_ith`.
Perplexity uses a second context with `logits_all=True`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bench.anchors.common import Unsupported, main


class LlamaCppSession:
    def __init__(self, gguf: str, threads: int) -> None:
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.gguf = gguf
        self.threads = threads
        self.llm = llama_cpp.Llama(
            model_path=gguf,
            n_ctx=4096,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.eos = int(self.llm.token_eos())
        self.info = {
            "engine": "llama.cpp",
            "llama_cpp_python": llama_cpp.__version__,
            "threads": threads,
            "dtype": "GGUF as shipped (Q4_1 linears, Q8_0 embedding)",
            "token_ids": "the workload's ids (tokenizer built from the GGUF; same ids as llama.cpp's)",
            "prefix_cache": "Llama.generate reuses the longest prefix of the previous prompt",
            "streams": "llama.cpp C API: one context, n_seq_max N, unified KV, one llama_decode per step",
        }

    def clear(self) -> None:
        self.llm.reset()

    def generate(self, ids: Sequence[int], max_tokens: int, stop_at_eos: bool) -> Iterator[int]:
        gen = self.llm.generate(list(ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
        for i, tok in enumerate(gen):
            yield int(tok)
            if (stop_at_eos and tok == self.eos) or i == max_tokens - 1:
                break
        gen.close()

    def batch_generate(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
        lib = self.llama_cpp
        n = len(prompts)
        total = sum(len(p) for p in prompts)
        params = lib.llama_context_default_params()
        params.n_ctx = total + n * (max_tokens + 8)
        params.n_batch = params.n_ubatch = max(512, n)
        params.n_seq_max = n
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = True
        ctx = lib.llama_init_from_model(self.llm._model.model, params)
        if not ctx:
            raise Unsupported("llama_init_from_model failed for a multi-sequence context")
        batch = lib.llama_batch_init(max(total, n), 0, n)
        vocab = self.llm.n_vocab()
        out: list[list[int]] = [[] for _ in prompts]
        try:
            # prefill every prompt (chunks of n_batch tokens), logits at each prompt's last token
            entries = [
                (t, pos, s, pos == len(p) - 1) for s, p in enumerate(prompts) for pos, t in enumerate(p)
            ]
            last_index: dict[int, int] = {}
            for start in range(0, len(entries), params.n_batch):
                chunk = entries[start : start + params.n_batch]
                self._fill(batch, chunk)
                if lib.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed during prefill")
                last_index.update({e[2]: i for i, e in enumerate(chunk) if e[3]})
                if len(last_index) == n:
                    break
            toks = [self._argmax(ctx, last_index[s], vocab) for s in range(n)]
            for step in range(max_tokens):
                for s in range(n):
                    out[s].append(toks[s])
                if step == max_tokens - 1:
                    break
                self._fill(batch, [(toks[s], len(prompts[s]) + step, s, True) for s in range(n)])
                if lib.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed during decode")
                toks = [self._argmax(ctx, s, vocab) for s in range(n)]
        finally:
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)
        return out

    @staticmethod
    def _fill(batch: object, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        b: Any = batch
        b.n_tokens = len(entries)
        for i, (tok, pos, seq, want_logits) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want_logits

    def _argmax(self, ctx: object, index: int, vocab: int) -> int:
        ptr = self.llama_cpp.llama_get_logits_ith(ctx, index)
        return int(np.ctypeslib.as_array(ptr, shape=(vocab,)).argmax())

    def all_logits(self, ids: Sequence[int]) -> np.ndarray:
        llm = self.llama_cpp.Llama(
            model_path=self.gguf,
            n_ctx=len(ids) + 16,
            n_batch=512,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            logits_all=True,
            verbose=False,
        )
        llm.eval(list(ids))
        logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
        llm.close()
        return logits


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gguf", required=True)


if __name__ == "__main__":
    main(lambda args: LlamaCppSession(args.gguf, args.threads), _args)
