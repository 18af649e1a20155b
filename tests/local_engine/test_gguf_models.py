"""Any Llama-family GGUF: a small random-weight GGUF written here with the ``gguf`` package is converted by
``build_all(source=..., name=...)`` and checked against transformers loaded from the same file; what the
converter cannot take is refused with an error naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from local_engine import recipes
from local_engine.convert import UnsupportedModel, build_all, check_gguf
from local_engine.gguf_weights import default_source, read_metadata
from local_engine.runner import ModelRunner, load_manifest
from local_engine.tokenizer import Tokenizer
from tests.local_engine.conftest import float32_kv_runner

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 64, 2, 4, 2, 128, 1024
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter permutation of Q/K rows (what our loader and transformers undo)."""
    out, inp = w.shape
    return w.reshape(heads, 2, out // heads // 2, inp).swapaxes(1, 2).reshape(out, inp)


def write_gguf(
    path: Path, *, arch: str = "llama", tokenizer_pre: str = "smollm", f16: bool = True, seed: int = 0
) -> Path:
    """A random 2-layer llama GGUF with SmolLM2's tokenizer and its own (minimal) chat template."""
    import gguf

    meta = read_metadata(gguf.GGUFReader(str(default_source())))
    rng = np.random.default_rng(seed)
    vocab = len(meta["tokenizer.ggml.tokens"])
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-random-llama")
    w.add_block_count(LAYERS)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tokenizer_pre)
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_merges(meta["tokenizer.ggml.merges"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)

    def lin(out: int, inp: int) -> np.ndarray:
        w: np.ndarray = (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)
        return w

    head_dim = HIDDEN // HEADS
    w.add_tensor("token_embd.weight", rng.standard_normal((vocab, HIDDEN)).astype(np.float32))
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
    w.add_tensor("output.weight", lin(vocab, HIDDEN))  # untied head
    for i in range(LAYERS):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        w.add_tensor(f"{p}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        tensors = {
            "attn_q": permute(lin(HEADS * head_dim, HIDDEN), HEADS),
            "attn_k": permute(lin(KV_HEADS * head_dim, HIDDEN), KV_HEADS),
            "attn_v": lin(KV_HEADS * head_dim, HIDDEN),
            "attn_output": lin(HIDDEN, HEADS * head_dim),
            "ffn_gate": lin(FFN, HIDDEN),
            "ffn_up": lin(FFN, HIDDEN),
            "ffn_down": lin(HIDDEN, FFN),
        }
        for name, t in tensors.items():
            w.add_tensor(f"{p}.{name}.weight", t.astype(np.float16) if f16 and name == "ffn_up" else t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.mark.slow
def test_a_random_llama_gguf_converts_and_matches_transformers(
    tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("models")
    manifest_path = build_all(out, source=tiny_gguf, name="tiny-llama")
    assert manifest_path == out / "tiny-llama" / "manifest.json"
    manifest = load_manifest(manifest_path.parent)
    assert manifest["name"] == "tiny-llama" and manifest["complete"]
    # F32/F16 weights: no GGUF block codes to keep (no int4); the recipes need none
    assert set(manifest["variants"]) == {"fp32", "int8", *recipes.BUILT}
    tokenizer = Tokenizer.load(manifest_path.parent)
    assert tokenizer.chat_template == TEMPLATE  # its own template, from the GGUF metadata
    ids = tokenizer.encode(
        tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    )
    assert ids[0] == 1  # <|im_start|>, rendered by this model's template

    torch.set_num_threads(2)
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32
    )
    model.eval()
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    scale = float(np.abs(theirs).max())
    exact = float32_kv_runner(tiny_gguf, "tiny-llama", tmp_path_factory.mktemp("kv32"), max_seq_len=256)
    ours = exact.forward([0], [ids], [0], all_logits=True)
    assert ours.shape == theirs.shape
    assert float(np.abs(ours - theirs).max()) <= 2e-5 * scale  # the conversion, with a float32 cache
    runner = ModelRunner(manifest_path.parent, "fp32", num_slots=1, max_seq_len=256)
    shipped = runner.forward([0], [ids], [0], all_logits=True)  # as built: float16 KV cache
    assert float(np.abs(shipped - theirs).max()) <= 4e-3 * scale


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"arch": "gpt2"}, "architecture 'gpt2'"),
        ({"tokenizer_pre": "llama-bpe"}, "pre-tokenizer 'llama-bpe'"),
    ],
)
def test_unsupported_models_are_refused_naming_why(
    tmp_path: Path, kwargs: dict[str, str], named: str
) -> None:
    path = write_gguf(tmp_path / "bad.gguf", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedModel, match=named):
        check_gguf(path)
    with pytest.raises(UnsupportedModel):
        build_all(tmp_path / "out", source=path, name="bad")


def test_the_shipped_model_is_supported() -> None:
    assert check_gguf(default_source())["general.architecture"] == "llama"
