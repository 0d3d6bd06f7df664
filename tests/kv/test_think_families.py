"""ThinK on more Hugging Face families, through the one generic path, and never silently dense.

Each family: a tiny random-init model from its config, ``generate`` with ThinK against the
plain-torch reference (:func:`ponder.kv.think_generate_reference`, no code shared with the
cache), token for token. Families with sliding-window layers (Gemma2, Gemma3, Qwen3 with
``use_sliding_window``) keep transformers' dense window cache on those layers; their prompts are
longer than the window so that it bites.
"""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ponder import kv
from ponder.kv._compat import cache_kwarg, output_cache

VOCAB, PAD, EOS, WINDOW = 64, 0, 1, 16
COMMON = {
    "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
    "pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": 2, "initializer_range": 0.2,
}
# family -> (config class, model class, config overrides)
FAMILIES = {
    # softcapping (5.0 bites at these logits), a scale that is not 1/sqrt(D), sliding + global
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               {"head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 24,
                "attn_logit_softcapping": 5.0, "final_logit_softcapping": None}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               {"head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 24,
                "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),  # fused qkv projection
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),  # q/k norms over all heads
    "cohere": ("CohereConfig", "CohereForCausalLM", {}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"attention_multiplier": 0.2}),
    "qwen3-sliding": ("Qwen3Config", "Qwen3ForCausalLM",
                      {"head_dim": 16, "use_sliding_window": True, "sliding_window": WINDOW,
                       "max_window_layers": 1}),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 32}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None}),
}
GEN = {"max_new_tokens": 6, "do_sample": False, "output_logits": True,
       "return_dict_in_generate": True, "eos_token_id": None, "pad_token_id": PAD}
SETTINGS = {"prune_ratio": 0.5, "window": 8, "recent": 4}


def _model(family: str, seed: int = 0):
    config_name, model_name, over = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**COMMON, **over})
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).eval()


def _batch(length: int = 36):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5], ids[1, :5] = 0, PAD  # left padding
    return ids, mask


def _max_logit_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_reference(family):
    model = _model(family)
    ids, mask = _batch()
    if not getattr(model, "_supports_attention_backend", False):
        # Older transformers (Qwen2-MoE before 4.57): the attention bypasses the registry.
        with pytest.raises(ValueError, match="attention-function registry"):
            kv.apply_think(model)
        return
    ref = kv.think_generate_reference(model, ids, mask, **SETTINGS, **GEN)
    kv.apply_think(model, **SETTINGS)
    think = model.generate(input_ids=ids, attention_mask=mask, **GEN)
    assert torch.equal(think.sequences, ref.sequences)
    assert _max_logit_diff(think, ref) < 1e-4
    cache = output_cache(think)
    kinds = [type(layer).__name__ for layer in cache.layers]
    text = model.config.get_text_config(decoder=True)
    expected = [
        "ThinKLayer" if t == "full_attention" else "DynamicSlidingWindowLayer"
        for t in (getattr(text, "layer_types", None) or ["full_attention"] * 2)
    ]
    assert kinds == expected
    # ThinK changed something (otherwise the comparison above proves little).
    kv.remove_think(model)
    dense = model.generate(input_ids=ids, attention_mask=mask, **GEN)
    assert _max_logit_diff(dense, think) > 1e-3


def test_gemma2_softcap_decode_uses_the_cap():
    """Without soft-capping the same compressed cache gives other logits: the cap is applied."""
    model = kv.apply_think(_model("gemma2"), **SETTINGS)
    ids, mask = _batch()
    think = model.generate(input_ids=ids, attention_mask=mask, **GEN)
    model.config.attn_logit_softcapping = None
    for module in model.modules():
        if hasattr(module, "attn_logit_softcapping"):
            module.attn_logit_softcapping = None
    uncapped = model.generate(input_ids=ids, attention_mask=mask, **GEN)
    assert _max_logit_diff(think, uncapped) > 1e-3


def test_think_cache_without_config_on_a_sliding_model_is_an_error():
    model = kv.apply_think(_model("gemma3"), **SETTINGS)
    ids, _ = _batch()
    with pytest.raises(RuntimeError, match="config=model.config"):
        model(ids, use_cache=True, **{cache_kwarg(model): kv.ThinKCache(kv.think_settings(model))})
    cache = kv.ThinKCache(kv.think_settings(model), config=model.config)
    model(ids, use_cache=True, **{cache_kwarg(model): cache})
    assert isinstance(cache.layers[1], kv.ThinKLayer) and cache.layers[1].compressed


# ------------------------------------------------------------------------------------------------
# Never silently dense
# ------------------------------------------------------------------------------------------------


def _llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON)).eval()


def test_static_cache_implementation_warns_once():
    model = kv.apply_think(_llama(), **SETTINGS)
    ids, mask = _batch(length=12)
    gen = {**GEN, "max_new_tokens": 2, "cache_implementation": "static"}
    with pytest.warns(kv.ThinKDenseWarning, match=r"StaticCache.*runs dense.*ThinKCache"):
        out = model.generate(input_ids=ids, attention_mask=mask, **gen)
    assert not isinstance(output_cache(out), kv.ThinKCache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per model and kind: no second warning
        model.generate(input_ids=ids, attention_mask=mask, **gen)
    # Plain generate still gets ThinK, silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.generate(input_ids=ids, attention_mask=mask, **{**GEN, "max_new_tokens": 2})
    assert isinstance(output_cache(out), kv.ThinKCache)


def test_explicit_dynamic_cache_warns_and_plain_forward_does_not():
    model = kv.apply_think(_llama(), **SETTINGS)
    ids, mask = _batch(length=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(ids, attention_mask=mask)  # no cache given: a one-off forward, no warning
    with pytest.warns(kv.ThinKDenseWarning, match="DynamicCache"):
        model(ids, attention_mask=mask, use_cache=True,
              **{cache_kwarg(model): transformers.DynamicCache()})
    other = kv.apply_think(_llama(), **SETTINGS)  # a fresh model: warned once per model
    with pytest.warns(kv.ThinKDenseWarning, match="DynamicCache"):
        other.generate(input_ids=ids, attention_mask=mask, **{cache_kwarg(other):
                       transformers.DynamicCache()}, **{**GEN, "max_new_tokens": 2})
    kv.remove_think(model)  # unpatched: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(ids, attention_mask=mask, use_cache=True,
              **{cache_kwarg(model): transformers.DynamicCache()})


def test_output_attentions_is_refused():
    model = kv.apply_think(_llama(), **SETTINGS)
    ids, mask = _batch(length=12)
    with pytest.raises(ValueError, match="output_attentions"):
        model.generate(input_ids=ids, attention_mask=mask, output_attentions=True,
                       **{**GEN, "max_new_tokens": 2})
    with pytest.raises(ValueError, match="output_attentions"):
        model(ids, attention_mask=mask, output_attentions=True)


# ------------------------------------------------------------------------------------------------
# Across transformers versions (the lower bound runs all of tests/kv in CI; these pin the
# conventions that differ, whichever release is installed here)
# ------------------------------------------------------------------------------------------------


def test_crop_takes_either_convention(monkeypatch):
    from ponder.kv import _compat

    model = kv.apply_think(_llama(), **SETTINGS)
    ids, _ = _batch(length=20)
    cache = kv.ThinKCache(kv.think_settings(model), max_cache_len=40)
    model(ids[:1], use_cache=True, **{cache_kwarg(model): cache})
    layer = cache.layers[0]
    cache.crop(-2)  # newer transformers: minus the tokens to remove
    assert layer.seen == 18
    monkeypatch.setattr(_compat, "CROP_TAKES_LENGTH", True)
    layer.crop(15)  # older transformers: the new length
    assert layer.seen == 15 and layer.n_pruned + layer.n_recent == 15
    layer.crop(30)  # longer than held: nothing to do
    assert layer.seen == 15
    monkeypatch.setattr(_compat, "CROP_TAKES_LENGTH", False)
    with pytest.raises(ValueError, match="negative"):
        layer.crop(3)
    assert layer.get_mask_sizes(1) == layer.get_mask_sizes(torch.arange(15, 16)) == (16, 0)
    assert cache.max_cache_len == 40  # a property (read-only on Cache in some releases)
