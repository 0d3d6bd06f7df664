"""Tiny models and toy data shared by test_first.py and first_ddp_script.py."""

from __future__ import annotations


from ponder.toy import make_problems, make_tokenizer
from ponder.train.first import tokenize_records

from tests.tiny import tiny_llama


def tiny_model(seed: int, hidden: int = 32, vocab: int = 31):
    return tiny_llama(seed, vocab=vocab, hidden=hidden).float()


def records(n: int) -> list[dict[str, str]]:
    # 1 to 3 steps: responses of different lengths, so that per-token and per-example
    # normalisation differ
    return [{"prompt": p.prompt, "response": p.target}
            for p in make_problems(n, seed=3, min_steps=1, max_steps=3)]


def examples(n: int) -> list[dict[str, list[int]]]:
    return tokenize_records(make_tokenizer(), records(n))
