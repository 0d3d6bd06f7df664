"""Tiny models and toy data shared by test_first.py and first_ddp_script.py."""

from __future__ import annotations

import torch

from ponder.toy import make_problems, make_tokenizer
from ponder.train.first import tokenize_records


def tiny_model(seed: int, hidden: int = 32, vocab: int = 31):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False)
    return LlamaForCausalLM(config).float()


def records(n: int) -> list[dict[str, str]]:
    # 1 to 3 steps: responses of different lengths, so that per-token and per-example
    # normalisation differ
    return [{"prompt": p.prompt, "response": p.target}
            for p in make_problems(n, seed=3, min_steps=1, max_steps=3)]


def examples(n: int) -> list[dict[str, list[int]]]:
    return tokenize_records(make_tokenizer(), records(n))
