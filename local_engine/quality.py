"""The quality bar for quantized variants, measured against float32 on the same build.

- **Distribution:** over the fixed evaluation text (``perplexity_text.txt``), the mean KL divergence
  ``KL(p_fp32 || p_variant)`` of the next-token distribution (nats) and the share of positions whose
  argmax equals float32's (top-1 agreement).
- **Answers:** ``FACTUAL_QUESTIONS``, short factual chat questions with the words a correct answer
  contains; each is asked greedily through the chat template and scored correct when the answer
  contains one of them (case-insensitive, whole words). The bar: a variant answers at least as many
  correctly as float32.
- **Greedy match (reported, no bar):** over the MT-Bench first turns, whether the first
  ``GREEDY_MATCH_TOKENS`` greedy tokens equal float32's. Near-ties are common in a model this small,
  so this is noisy; it is recorded beside the bars.

Pure numpy over a runner (``forward`` as in ``protocols.Runner``); nothing here imports onnxruntime.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from local_engine.protocols import Runner, TokenizerLike

KL_BAR = 0.0015  # nats, mean over the evaluation text
TOP1_BAR = 0.99
ANSWER_TOKENS = 24
GREEDY_MATCH_TOKENS = 32
MTBENCH_CANDIDATES = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mtbench_questions.jsonl",
    Path("/work/shared/data/mtbench_questions.jsonl"),
)

# (question, accepted answers): an answer is correct when it contains one of them as a whole word.
FACTUAL_QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("Paris",)),
    ("What is the capital of Japan?", ("Tokyo",)),
    ("What is the capital of Italy?", ("Rome",)),
    ("What is the capital of Germany?", ("Berlin",)),
    ("What is the capital of Spain?", ("Madrid",)),
    ("What is the capital of the United Kingdom?", ("London",)),
    ("What is the capital of Russia?", ("Moscow",)),
    ("What is the capital of China?", ("Beijing",)),
    ("What is the capital of Egypt?", ("Cairo",)),
    ("What is the capital of Canada?", ("Ottawa",)),
    ("What is the capital of Australia?", ("Canberra",)),
    ("What is the capital of Greece?", ("Athens",)),
    ("What is the largest planet in our solar system?", ("Jupiter",)),
    ("Which planet is known as the Red Planet?", ("Mars",)),
    ("What is the closest star to Earth?", ("Sun", "the sun")),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("What is the chemical symbol for water?", ("H2O", "H₂O")),
    ("What is the chemical symbol for gold?", ("Au",)),
    ("What gas do plants absorb from the air for photosynthesis?", ("carbon dioxide", "CO2", "CO₂")),
    ("What gas do humans need to breathe to live?", ("oxygen",)),
    ("How many legs does a spider have?", ("eight", "8")),
    ("How many days are in a week?", ("seven", "7")),
    ("How many continents are there on Earth?", ("seven", "7")),
    ("How many hours are in a day?", ("24", "twenty-four")),
    ("What is 2 plus 2?", ("4", "four")),
    ("What is 10 times 10?", ("100", "one hundred")),
    ("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    ("Who painted the Mona Lisa?", ("Leonardo", "da Vinci")),
    ("Who developed the theory of relativity?", ("Einstein",)),
    ("Who was the first president of the United States?", ("Washington",)),
    ("Who discovered penicillin?", ("Fleming",)),
    ("What is the boiling point of water in degrees Celsius?", ("100",)),
    ("What is the freezing point of water in degrees Celsius?", ("0", "zero")),
    ("What is the largest mammal in the world?", ("blue whale", "whale")),
    ("What is the tallest mountain in the world?", ("Everest",)),
    ("What is the longest river in Africa?", ("Nile",)),
    ("What is the largest desert in Africa?", ("Sahara",)),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What color are bananas when they are ripe?", ("yellow",)),
    ("What is the primary language spoken in Brazil?", ("Portuguese",)),
    ("What is the main language spoken in Mexico?", ("Spanish",)),
    ("What is the currency of Japan?", ("yen",)),
    ("What is the currency of the United Kingdom?", ("pound", "sterling")),
    ("What organ pumps blood through the human body?", ("heart",)),
    ("What is the hardest natural substance?", ("diamond",)),
    ("What is the smallest prime number?", ("2", "two")),
    ("What do bees make?", ("honey",)),
    ("What is the freezing form of water called?", ("ice",)),
    ("Which continent is Egypt in?", ("Africa",)),
    ("Which country is home to the kangaroo?", ("Australia",)),
    ("In which country are the pyramids of Giza?", ("Egypt",)),
    ("What is the name of our galaxy?", ("Milky Way",)),
    ("What is the opposite of hot?", ("cold",)),
    ("How many sides does a triangle have?", ("three", "3")),
    ("What is the square root of 9?", ("3", "three")),
    ("Which metal is liquid at room temperature?", ("mercury",)),
    ("What is the natural satellite of the Earth called?", ("Moon",)),
    ("What do caterpillars turn into?", ("butterfl", "moth")),
    ("What is the capital city of the United States?", ("Washington",)),
)


@dataclass(slots=True, frozen=True)
class Distribution:
    kl: float  # mean KL(p_fp32 || p_variant), nats
    top1: float  # share of positions with float32's argmax


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    out: np.ndarray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


def distribution_vs(reference_logits: np.ndarray, logits: np.ndarray) -> Distribution:
    """Mean KL(reference || variant) and top-1 agreement over positions ``[n, vocab]``."""
    lp_ref = log_softmax(reference_logits)
    lp = log_softmax(logits)
    kl = (np.exp(lp_ref) * (lp_ref - lp)).sum(axis=-1)
    top1 = reference_logits.argmax(axis=-1) == logits.argmax(axis=-1)
    return Distribution(kl=float(kl.mean()), top1=float(top1.mean()))


def text_logits(runner: Runner, ids: Sequence[int], chunk: int = 512) -> np.ndarray:
    """Logits at every position of ``ids`` (slot 0, in chunks), ``[len(ids), vocab]``."""
    parts = []
    for start in range(0, len(ids), chunk):
        parts.append(runner.forward([0], [list(ids[start : start + chunk])], [start], all_logits=True))
    return np.concatenate(parts)


def greedy(runner: Runner, prompt: Sequence[int], n: int, stop_ids: frozenset[int]) -> list[int]:
    """Greedy continuation of ``prompt`` in slot 0 (at most ``n`` tokens, ending at a stop id)."""
    logits = runner.forward([0], [list(prompt)], [0])[0]
    out: list[int] = []
    pos = len(prompt)
    while len(out) < n:
        token = int(logits.argmax())
        out.append(token)
        if token in stop_ids or pos + 1 >= runner.max_seq_len:
            break
        logits = runner.forward([0], [[token]], [pos])[0]
        pos += 1
    return out


def chat_ids(tokenizer: Any, question: str) -> list[int]:
    ids: list[int] = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": question}]))
    return ids


def is_correct(answer: str, accepted: Sequence[str]) -> bool:
    """Whether ``answer`` contains one of ``accepted`` as a word (a prefix match for word stems)."""
    text = answer.lower()
    return any(re.search(r"(?<!\w)" + re.escape(word.lower()), text) for word in accepted)


def answer_score(runner: Runner, tokenizer: TokenizerLike) -> tuple[int, list[str]]:
    """How many ``FACTUAL_QUESTIONS`` the runner answers correctly, greedily; and the answers."""
    prompts = [chat_ids(tokenizer, question) for question, _ in FACTUAL_QUESTIONS]
    answers = [
        tokenizer.decode(ids) for ids in greedy_batch(runner, prompts, ANSWER_TOKENS, tokenizer.stop_ids)
    ]
    score = sum(is_correct(a, acc) for a, (_, acc) in zip(answers, FACTUAL_QUESTIONS, strict=True))
    return score, answers


def mtbench_path() -> Path | None:
    """The MT-Bench questions (``$THRIFTGATE_MTBENCH``, else ``../shared/data`` beside the repository)."""
    env = os.environ.get("THRIFTGATE_MTBENCH")
    for path in ([Path(env)] if env else []) + list(MTBENCH_CANDIDATES):
        if path.is_file():
            return path
    return None


def mtbench_first_turns(path: Path) -> list[str]:
    return [json.loads(line)["turns"][0] for line in path.read_text().splitlines() if line.strip()]


def greedy_batch(
    runner: Runner, prompts: Sequence[Sequence[int]], n: int, stop_ids: frozenset[int]
) -> list[list[int]]:
    """Greedy continuations (at most ``n`` tokens each) of many prompts, ``runner.num_slots`` at a time
    with batched decode steps; the same tokens as ``greedy`` one prompt at a time, faster."""
    results: list[list[int]] = []
    for start in range(0, len(prompts), runner.num_slots):
        group = [list(p) for p in prompts[start : start + runner.num_slots]]
        outs = [[int(runner.forward([i], [p], [0])[0].argmax())] for i, p in enumerate(group)]
        pos = [len(p) for p in group]
        while True:
            active = [
                i
                for i, out in enumerate(outs)
                if out[-1] not in stop_ids and len(out) < n and pos[i] + 1 < runner.max_seq_len
            ]
            if not active:
                break
            logits = runner.forward(active, [[outs[i][-1]] for i in active], [pos[i] for i in active])
            for row, i in zip(logits, active, strict=True):
                outs[i].append(int(row.argmax()))
                pos[i] += 1
        results.extend(outs)
    return results


def greedy_match(reference: Sequence[Sequence[int]], runs: Sequence[Sequence[int]]) -> float:
    """Share of prompts whose greedy continuation equals the reference's (its first 32 tokens)."""
    same = [list(a) == list(b) for a, b in zip(reference, runs, strict=True)]
    return float(np.mean(same)) if same else 0.0


def passes(dist: Distribution, answers: int, fp32_answers: int, ppl_ok: bool) -> bool:
    return ppl_ok and dist.kl <= KL_BAR and dist.top1 >= TOP1_BAR and answers >= fp32_answers
