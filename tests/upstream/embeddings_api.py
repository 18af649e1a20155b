"""OpenAI ``POST /v1/embeddings``: deterministic unit vectors seeded by a hash of (model, input).

Inputs: a string, a list of strings, a token array or a list of token arrays (a token array counts
one token per id). ``dimensions`` is honoured up to the model's own (1536, 3072 for text-embedding-3-large; more is a 400);
``encoding_format`` "base64" sends little-endian float32 bytes.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from tests.upstream.reply import Ctx, Reply, SimError, optional, require
from tests.upstream.tokens import count_tokens, json_text, stable_hash

EMBEDDING_DIMS = {"text-embedding-3-large": 3072}
DEFAULT_EMBEDDING_DIMS = 1536


def _embedding_inputs(raw: Any) -> list[tuple[str, int]]:
    """Each input as (digest seed, token count): strings, lists of strings, token arrays."""
    if isinstance(raw, str):
        return [(raw, count_tokens(raw))]
    if isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        return [(json_text(raw), len(raw))]
    if isinstance(raw, list) and raw:
        out = []
        for item in raw:
            if isinstance(item, str):
                out.append((item, count_tokens(item)))
            elif isinstance(item, list) and all(isinstance(x, int) for x in item):
                out.append((json_text(item), len(item)))
            else:
                raise SimError(400, "'input' items must be strings or arrays of token ids.", param="input")
        return out
    raise SimError(
        400, "'input' must be a non-empty string, array of strings or token arrays.", param="input"
    )


def embedding_vector(model: str, text: str, dims: int) -> np.ndarray:
    """A deterministic unit vector for ``text`` (float32, ``dims`` long)."""
    seed = int(stable_hash(model, text), 16) % (2**63)
    vec = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return vec / np.linalg.norm(vec)


def embeddings(body: Any, ctx: Ctx) -> Reply:
    """``POST /v1/embeddings``."""
    model = require(body, "model", str, "a string")
    assert isinstance(model, str)
    if "input" not in body:
        raise SimError(
            400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    optional(body, {"dimensions": (int, "an integer"), "encoding_format": (str, "a string")})
    inputs = _embedding_inputs(body["input"])
    native = EMBEDDING_DIMS.get(model, DEFAULT_EMBEDDING_DIMS)
    dims = body.get("dimensions") or native
    if not isinstance(dims, int) or dims < 1:
        raise SimError(400, "'dimensions' must be a positive integer.", param="dimensions")
    if dims > native:  # as OpenAI answers (a fuzzed 707205078 had the simulator build a 2.8 GB vector)
        raise SimError(
            400,
            f"Invalid value for 'dimensions' = {dims}. Must be less than or equal to {native}.",
            param="dimensions",
        )
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise SimError(400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    data = []
    for i, (text, _) in enumerate(inputs):
        vec = embedding_vector(model, text, dims)
        value: Any = (
            base64.b64encode(vec.astype("<f4").tobytes()).decode() if encoding == "base64" else vec.tolist()
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(t for _, t in inputs)
    return Reply.json(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
