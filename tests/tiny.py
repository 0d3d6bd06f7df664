"""The tiny random-init Llama the tests build from a config (no download)."""

from __future__ import annotations

import torch


def tiny_llama(seed: int = 0, *, vocab: int = 31, hidden: int = 32, layers: int = 1,
               max_positions: int = 128, cls=None, **config):
    """A Llama with ``hidden`` width, ``2 * hidden`` MLP, two query and two KV heads, untied
    embeddings and the toy tokenizer's special ids (pad 0, bos 1, eos 2), initialised under
    ``torch.manual_seed(seed)``. ``cls``: the model class (``LlamaForCausalLM`` by default);
    ``config``: any other ``LlamaConfig`` field (``num_labels``, ``initializer_range``, ...)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": max_positions, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2, "tie_word_embeddings": False, **config})
    torch.manual_seed(seed)
    return (cls or LlamaForCausalLM)(cfg)
