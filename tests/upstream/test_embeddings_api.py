"""OpenAI embeddings (tests/upstream/embeddings_api.py): float, base64 and token-array inputs."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from tests.upstream.conftest import (
    KEY,
    OPENAI_HEADERS,
)


def test_embeddings_float_base64_and_token_arrays(url: str, oai: openai.OpenAI, http: httpx.Client) -> None:
    client = oai
    r = client.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta gamma"], encoding_format="float"
    )
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 1536
    assert r.usage.prompt_tokens == 3 == r.usage.total_tokens
    assert abs(float(np.linalg.norm(r.data[0].embedding)) - 1.0) < 1e-5
    assert r.data[0].embedding != r.data[1].embedding
    small = client.embeddings.create(
        model="text-embedding-3-large", input="alpha", dimensions=64, encoding_format="float"
    )
    assert len(small.data[0].embedding) == 64
    tokens = client.embeddings.create(
        model="text-embedding-3-small", input=[[1, 2, 3]], encoding_format="float"
    )
    assert tokens.usage.prompt_tokens == 3

    raw = http.post("/v1/embeddings", headers=OPENAI_HEADERS, timeout=10,
                     json={"model": "text-embedding-3-small", "input": "alpha", "encoding_format": "base64"})  # fmt: skip
    vec = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vec, r.data[0].embedding)
    # the SDK asks for base64 by default and decodes it itself (its strict types expect floats)
    default = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY).embeddings.create(
        model="text-embedding-3-small", input="alpha"
    )
    assert np.allclose(default.data[0].embedding, r.data[0].embedding)


def test_dimensions_over_the_model_are_refused(oai: openai.OpenAI) -> None:
    """As OpenAI answers; found by the gateway's fuzz test (707205078 dimensions: a 2.8 GB vector)."""
    with pytest.raises(openai.BadRequestError, match="less than or equal to 1536"):
        oai.embeddings.create(model="text-embedding-3-small", input="alpha", dimensions=1537)
    assert (
        len(
            oai.embeddings.create(
                model="text-embedding-3-small", input="a", dimensions=1536, encoding_format="float"
            )
            .data[0]
            .embedding
        )
        == 1536
    )
