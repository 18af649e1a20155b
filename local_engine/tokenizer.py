"""Tokenizer, incremental detokenizer and chat template for GPT-2-style byte-level BPE models.

Built from a GGUF's ``tokenizer.ggml.*`` metadata with the ``tokenizers`` library alone (no hub):
BPE over the GGUF's tokens and merges, a pre-tokenizer that splits every digit on its own and then
applies GPT-2's byte-level regex, and the control tokens as special added tokens (so ``<|im_start|>``
in text maps to its id). Saved as ``tokenizer.json`` + ``tokenizer_config.json`` (special tokens and
the chat template), which ``transformers.PreTrainedTokenizerFast`` can also read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2.sandbox
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

CONTROL_TOKEN_TYPE = 3
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def build_hf_tokenizer(
    tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int]
) -> HFTokenizer:
    """A ``tokenizers`` BPE equivalent to llama.cpp's ``smollm`` pre-tokenizer + GPT-2 byte-level BPE."""
    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)  # type: ignore[arg-type]
    tok = HFTokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, token_types, strict=True)
        if ty == CONTROL_TOKEN_TYPE
    ]
    tok.add_special_tokens(specials)
    return tok


def _normalize_messages(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Content given as a list of ``{"type": "text", "text": ...}`` parts becomes one string."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if isinstance(part, dict) and part.get("type", "text") == "text":
                    texts.append(str(part.get("text", "")))
                elif isinstance(part, str):
                    texts.append(part)
                else:
                    raise ValueError(f"unsupported content part for a text-only model: {part!r}")
            message = {**message, "content": "".join(texts)}
        elif content is None:
            message = {**message, "content": ""}
        out.append(message)
    return out


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


@dataclass(slots=True)
class IncrementalDecoder:
    """Turns a stream of token ids into text deltas, never splitting a UTF-8 character.

    Holds the undecoded tail bytes between calls (mutated by ``feed``).
    """

    token_bytes: Sequence[bytes]
    special_ids: frozenset[int]
    skip_special_tokens: bool = True
    _pending: bytearray = field(default_factory=bytearray)

    def feed(self, ids: Iterable[int]) -> str:
        for i in ids:
            if i in self.special_ids and self.skip_special_tokens:
                continue
            self._pending += self.token_bytes[i]
        text, rest = _split_utf8(bytes(self._pending))
        self._pending = bytearray(rest)
        return text

    def flush(self) -> str:
        """Returns what is left (an incomplete character becomes U+FFFD) and resets."""
        text = bytes(self._pending).decode("utf-8", errors="replace")
        self._pending.clear()
        return text


def _split_utf8(data: bytes) -> tuple[str, bytes]:
    """Decodes the longest prefix that does not end inside a UTF-8 character."""
    cut = len(data)
    # Walk back at most 3 bytes to the start of a possibly incomplete trailing character.
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 == 0x80:  # continuation byte
            continue
        need = (
            1
            if b < 0x80
            else 2
            if b >> 5 == 0b110
            else 3
            if b >> 4 == 0b1110
            else 4
            if b >> 3 == 0b11110
            else 1
        )
        if need > back:
            cut = len(data) - back
        break
    return data[:cut].decode("utf-8", errors="replace"), data[cut:]


class Tokenizer:
    """Byte-level BPE tokenizer with the model's control tokens and chat template."""

    def __init__(self, hf: HFTokenizer, *, bos_token: str, eos_token: str, chat_template: str) -> None:
        self.hf = hf
        self.bos_token, self.eos_token = bos_token, eos_token
        self.chat_template = chat_template
        self.bos_id = self._id(bos_token)
        self.eos_id = self._id(eos_token)
        self.stop_ids = frozenset(self._id(t) for t in STOP_TOKENS if hf.token_to_id(t) is not None) | {
            self.eos_id
        }
        self.special_ids = frozenset(i for i, t in hf.get_added_tokens_decoder().items() if t.special)
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        self.token_bytes: list[bytes] = []
        for i in range(self.vocab_size):
            piece = hf.id_to_token(i) or ""
            if i in self.special_ids:
                self.token_bytes.append(piece.encode())
            else:
                self.token_bytes.append(bytes(byte_of[ch] for ch in piece if ch in byte_of))
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        self._template = env.from_string(chat_template)

    def _id(self, token: str) -> int:
        i = self.hf.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} not in vocabulary")
        return int(i)

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any]) -> Tokenizer:
        tokens = list(meta["tokenizer.ggml.tokens"])
        hf = build_hf_tokenizer(
            tokens, list(meta["tokenizer.ggml.merges"]), list(meta["tokenizer.ggml.token_type"])
        )
        return cls(
            hf,
            bos_token=tokens[int(meta["tokenizer.ggml.bos_token_id"])],
            eos_token=tokens[int(meta["tokenizer.ggml.eos_token_id"])],
            chat_template=str(meta.get("tokenizer.chat_template", "")),
        )

    @classmethod
    def from_gguf(cls, path: Path) -> Tokenizer:
        """Reads the tokenizer straight from a GGUF file's metadata."""
        import gguf

        reader = gguf.GGUFReader(str(path))
        return cls.from_gguf_metadata(
            {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
        )

    def save(self, model_dir: Path) -> None:
        """Writes ``tokenizer.json`` and ``tokenizer_config.json`` into ``model_dir``."""
        model_dir = Path(model_dir)
        self.hf.save(str(model_dir / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.eos_token,
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 8192,
            "chat_template": self.chat_template,
        }
        (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, model_dir: Path) -> Tokenizer:
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
        hf = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        return cls(
            hf,
            bos_token=config["bos_token"],
            eos_token=config["eos_token"],
            chat_template=config["chat_template"],
        )

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = list(self.hf.encode(text, add_special_tokens=False).ids)
        return [self.bos_id, *ids] if add_special_tokens else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def incremental_decoder(self, skip_special_tokens: bool = True) -> IncrementalDecoder:
        return IncrementalDecoder(self.token_bytes, self.special_ids, skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Renders the model's own chat template (jinja2, as ``transformers`` does)."""
        return str(
            self._template.render(
                messages=_normalize_messages(messages),
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        )
