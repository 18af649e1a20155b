from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from local_engine.gguf_weights import default_source
from local_engine.tokenizer import Tokenizer

TEXTS = [
    "Hello world! The year 2024 had 366 days.",
    "<|im_start|>user\nWhat is 3.14159 * 2?<|im_end|>\n",
    "  multiple   spaces\n\n\ttabs  ünïcödé 日本語 🤖🚀 emoji",
    "def f(x):\n    return x**2  # 1000000\n",
    "Ça coûte 12,50 € — naïve café, Привет мир, مرحبا",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """Built from the GGUF metadata, saved and loaded back (what a model directory holds)."""
    built = Tokenizer.from_gguf(default_source())
    out = tmp_path_factory.mktemp("tokenizer")
    built.save(out)
    return Tokenizer.load(out)


@pytest.fixture(scope="module")
def reference() -> Any:
    """transformers' own GGUF tokenizer conversion, from the local file (no hub)."""
    from transformers import AutoTokenizer

    src = default_source()
    return AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)


def test_special_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.bos_id == 1 and tokenizer.eos_id == 2
    assert tokenizer.stop_ids == frozenset({0, 2})
    assert tokenizer.encode("<|im_start|>assistant<|im_end|>")[0] == 1
    assert tokenizer.encode("<|im_start|>assistant<|im_end|>")[-1] == 2
    assert tokenizer.encode("hi", add_special_tokens=True)[0] == 1


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_same_ids_as_transformers(tokenizer: Tokenizer, reference: Any, text: str) -> None:
    ids = tokenizer.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_digits_are_split_individually(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("12345")
    assert len(ids) == 5
    assert [tokenizer.decode([i]) for i in ids] == list("12345")


def test_decode_skips_special_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("<|im_start|>assistant\nHi<|im_end|>")
    assert tokenizer.decode(ids) == "assistant\nHi"


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_decoder_never_emits_half_characters(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    decoder = tokenizer.incremental_decoder(skip_special_tokens=False)
    deltas = [decoder.feed([i]) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + decoder.flush() == text


def test_incremental_decoder_holds_back_split_emoji(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("🤖")
    assert len(ids) > 1, "the emoji is several byte-level tokens"
    decoder = tokenizer.incremental_decoder()
    assert [decoder.feed([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert decoder.feed(ids[-1:]) == "🤖"


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2+2?"},
    ],
    [{"role": "user", "content": "multi\nline\n\n  text 🤖"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_is_byte_identical_to_transformers(
    tokenizer: Tokenizer,
    reference: Any,
    messages: list[dict[str, str]],
    add_generation_prompt: bool,
) -> None:
    ours = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == theirs
    assert tokenizer.encode(ours) == reference.encode(theirs, add_special_tokens=False)


def test_chat_template_default_system_prompt_and_content_parts(tokenizer: Tokenizer) -> None:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]
    )
    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    )


def test_saved_files_load_in_transformers(tokenizer: Tokenizer, tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tokenizer.save(tmp_path)
    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    messages = CONVERSATIONS[1]
    assert hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == tokenizer.apply_chat_template(messages)
    assert hf.encode(TEXTS[2], add_special_tokens=False) == tokenizer.encode(TEXTS[2])
