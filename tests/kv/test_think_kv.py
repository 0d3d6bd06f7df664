"""ponder.kv: the ThinK cache and the Hugging Face patch, on tiny random-init models.

The oracle is :func:`ponder.kv.think_generate_reference` (plain torch, dense cache, ThinK as
masks in eager fp32 attention; no code shared with the cache). Models use GQA (4 query heads,
2 KV heads, D = 16) and an initializer range of 0.2 so that greedy choices are not near-ties.
"""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ponder import kv
from ponder.kv import cache as kv_cache
from ponder.kv._compat import cache_kwarg, output_cache
from ponder.ops.think import kept_channels

VOCAB, PAD, EOS = 64, 0, 1
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def _config(family: str, **over):
    common = {
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": 2, "initializer_range": 0.2,
    }
    common.update(over)
    if family == "llama":
        return transformers.LlamaConfig(**common)
    if family == "mistral":
        return transformers.MistralConfig(sliding_window=None, **common)
    if family == "qwen2":
        return transformers.Qwen2Config(**common)
    return transformers.Qwen3Config(head_dim=16, **common)


def _model(family: str, seed: int = 0, **over):
    torch.manual_seed(seed)
    cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
           "qwen2": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM}[family]
    return cls(_config(family, **over)).eval()


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    m = _model(request.param)
    yield m
    kv.remove_think(m)


def _batch(batch: int = 2, length: int = 40, pads=(0, 5), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate(pads[:batch]):
        mask[row, :n] = 0
        ids[row, :n] = PAD
    return ids, mask


GEN = {"max_new_tokens": 8, "do_sample": False, "output_logits": True,
       "return_dict_in_generate": True, "eos_token_id": None, "pad_token_id": PAD}


def _generate(model, ids, mask, **kw):
    return model.generate(input_ids=ids, attention_mask=mask, **{**GEN, **kw})


def _step(model, ids, cache, **kw):
    """``model(ids, cache=cache, use_cache=True, ...)`` under either name of the cache keyword."""
    return model(ids, use_cache=True, **{cache_kwarg(model): cache}, **kw)


def _max_logit_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))


# ------------------------------------------------------------------------------------------------
# Equivalences
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pads", [(0, 0), (0, 5)], ids=["no-pad", "left-pad"])
def test_prune_ratio_zero_equals_eager(model, pads):
    ids, mask = _batch(pads=pads)
    kv.remove_think(model)
    model.set_attn_implementation("eager")
    eager = _generate(model, ids, mask)
    kv.apply_think(model, prune_ratio=0.0, window=8, recent=8)
    think = _generate(model, ids, mask)
    assert isinstance(output_cache(think), kv.ThinKCache)
    assert torch.equal(think.sequences, eager.sequences)
    assert _max_logit_diff(think, eager) < 1e-4


@pytest.mark.parametrize(
    "pads,evict",
    [((0, 0), None), ((0, 5), None), ((0, 5), "snapkv"), ((3, 30), "snapkv")],
    ids=["no-pad", "left-pad", "snapkv", "snapkv-pads-kept"],
)
def test_prune_matches_reference_token_for_token(model, pads, evict):
    ids, mask = _batch(pads=pads)
    settings = {"prune_ratio": 0.4, "window": 8, "recent": 4, "evict": evict,
                    "token_budget": 16 if evict else None}
    ref = kv.think_generate_reference(model, ids, mask, **settings, **GEN)
    kv.apply_think(model, **settings)
    think = _generate(model, ids, mask)
    assert torch.equal(think.sequences, ref.sequences)
    assert _max_logit_diff(think, ref) < 1e-4
    # ThinK changed something (otherwise the comparison above proves little).
    kv.remove_think(model)
    dense = _generate(model, ids, mask)
    assert _max_logit_diff(dense, think) > 1e-3


@pytest.mark.parametrize("evict", [None, "snapkv"])
def test_fold_matches_reference_token_for_token(model, evict):
    """Generated tokens pruned in blocks (fold_block): still the reference, token for token."""
    ids, mask = _batch(pads=(0, 5))
    settings = {"prune_ratio": 0.5, "window": 8, "recent": 4, "fold_block": 3, "evict": evict,
                    "token_budget": 16 if evict else None}
    gen = {"max_new_tokens": 14}
    ref = kv.think_generate_reference(model, ids, mask, **settings, **{**GEN, **gen})
    kv.apply_think(model, **settings)
    think = _generate(model, ids, mask, **gen)
    assert torch.equal(think.sequences, ref.sequences)
    assert _max_logit_diff(think, ref) < 1e-4
    layer = output_cache(think).layers[0]
    # 13 tokens fed after prefill: full-width store 4 -> 7 -> fold to 4 ... four folds of 3.
    assert (layer.n_recent, layer.n_pruned) == (5, (16 if evict else 40) - 4 + 12)
    assert not output_cache(think).is_croppable


def test_sampling_matches_reference(model):
    ids, mask = _batch()
    settings = {"prune_ratio": 0.5, "window": 4, "recent": 4}
    sample = {"do_sample": True, "temperature": 1.0, "top_k": 0, "max_new_tokens": 12}
    torch.manual_seed(123)
    ref = kv.think_generate_reference(model, ids, mask, **settings, **{**GEN, **sample})
    kv.apply_think(model, **settings)
    torch.manual_seed(123)
    think = _generate(model, ids, mask, **sample)
    assert torch.equal(think.sequences, ref.sequences)


def test_beam_search_prune_zero_equals_dense():
    m = _model("llama")
    ids, mask = _batch(pads=(0, 3))
    beams = {"num_beams": 3, "num_return_sequences": 2, "do_sample": False, "max_new_tokens": 6,
                 "eos_token_id": None, "pad_token_id": PAD}
    dense = m.generate(input_ids=ids, attention_mask=mask, **beams)
    kv.apply_think(m, prune_ratio=0.0, window=4, recent=4)
    think = m.generate(input_ids=ids, attention_mask=mask, **beams)
    assert torch.equal(think, dense)


def test_assisted_generation_crops_the_think_cache():
    """Speculative (assisted) generate: the target verifies draft tokens in chunks and crops the
    rejected ones. With nothing pruned it equals plain generate; pruned, it runs on a ThinK cache
    (its first forward holds the prompt and the first draft token: that is what gets scored)."""
    m = _model("llama")
    draft = _model("llama", seed=3, num_hidden_layers=1)
    ids, mask = _batch(batch=1, pads=(0,))
    gen = {"max_new_tokens": 12, "do_sample": False, "eos_token_id": None, "pad_token_id": PAD}
    kv.apply_think(m, prune_ratio=0.0, window=8, recent=4)
    plain = m.generate(input_ids=ids, attention_mask=mask, **gen)
    crops = []
    original = kv.ThinKLayer.crop

    def spy(self, n):
        before = self.seen
        original(self, n)
        crops.append(before - self.seen)  # tokens removed (crop's argument differs by version)

    kv.ThinKLayer.crop = spy
    try:
        assisted = m.generate(input_ids=ids, attention_mask=mask, assistant_model=draft, **gen)
        assert torch.equal(assisted, plain)
        assert any(n > 0 for n in crops)  # some draft tokens were rejected and cropped
        kv.apply_think(m, prune_ratio=0.4, window=8, recent=4)
        out = m.generate(input_ids=ids, attention_mask=mask, assistant_model=draft,
                         return_dict_in_generate=True, **gen)
        assert isinstance(output_cache(out), kv.ThinKCache) and out.sequences.shape == (1, 52)
    finally:
        kv.ThinKLayer.crop = original


def test_step_by_step_forward_and_multi_token_chunks():
    """A hand-made ThinKCache through model(...): chunks of S > 1 after prefill equal S = 1."""
    m = kv.apply_think(_model("qwen2"), prune_ratio=0.4, window=8, recent=4)
    ids, _mask = _batch(batch=1, length=30, pads=(0,))
    nxt = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(5))
    one = kv.ThinKCache(kv.think_settings(m))
    _step(m, ids, one)
    step_logits = [_step(m, nxt[:, i:i + 1], one).logits[:, -1] for i in range(5)]
    chunk = kv.ThinKCache(kv.think_settings(m))
    _step(m, ids, chunk)
    _step(m, nxt[:, :2], chunk)
    out = _step(m, nxt[:, 2:], chunk).logits  # [1, 3, V]
    for i in range(3):
        torch.testing.assert_close(out[:, i], step_logits[2 + i], atol=1e-5, rtol=1e-5)
    assert one.get_seq_length() == chunk.get_seq_length() == 35


def test_decode_follows_the_stores_when_they_grow(monkeypatch):
    """Without a capacity hint the full-width stores grow (new tensors) during decode: each
    step's kernel plan must follow them, so the logits equal those of a cache sized up front."""
    monkeypatch.setattr(kv_cache, "_GROW_MIN", 0)  # grow by 1.5x only: several regrowths
    m = kv.apply_think(_model("llama"), prune_ratio=0.4, window=8, recent=4)
    ids, _ = _batch(batch=1, length=30, pads=(0,))
    nxt = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(6))
    grown = kv.ThinKCache(kv.think_settings(m))
    sized = kv.ThinKCache(kv.think_settings(m), max_cache_len=42)
    buffers = set()
    with torch.inference_mode():  # the per-step fast path (no autograd)
        _step(m, ids, grown)
        _step(m, ids, sized)
    for i in range(12):
        with torch.inference_mode():
            a = _step(m, nxt[:, i:i + 1], grown).logits
            b = _step(m, nxt[:, i:i + 1], sized).logits
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        layer = grown.layers[0]
        buffers.add(id(layer.k_recent_buf))
        assert layer._plan.holds(layer.k_pruned_buf, layer.idx, layer.k_recent_buf, layer.v_buf,
                                 layer.starts)
    assert len(buffers) >= 3  # the store was replaced at least twice along the way
    assert grown.layers[0].k_recent_buf.shape[2] >= 16


def test_fold_chunks_store_like_single_steps():
    """A chunk of S > 1 tokens folds on the way exactly as S single steps do.

    (Layer 0's keys and values of the new tokens do not depend on attention, so its stores must
    be equal; later layers differ: a chunk's queries see the stores after all its folds.)
    """
    m = kv.apply_think(_model("llama"), prune_ratio=0.4, window=8, recent=2, fold_block=2)
    ids, _ = _batch(batch=1, length=16, pads=(0,))
    nxt = torch.randint(3, VOCAB, (1, 7), generator=torch.Generator().manual_seed(7))
    one = kv.ThinKCache(kv.think_settings(m))
    _step(m, ids, one)
    for i in range(7):
        _step(m, nxt[:, i:i + 1], one)
    chunk = kv.ThinKCache(kv.think_settings(m))
    _step(m, ids, chunk)
    _step(m, nxt[:, :2], chunk)
    _step(m, nxt[:, 2:], chunk)  # 5 tokens, two folds inside
    a, b = one.layers[0], chunk.layers[0]
    assert (a.n_pruned, a.n_recent) == (b.n_pruned, b.n_recent) == (14 + 6, 3)
    torch.testing.assert_close(a.k_pruned, b.k_pruned, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.k_recent, b.k_recent, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.v, b.v, atol=1e-6, rtol=1e-6)


def test_crop_then_continue_equals_uncropped():
    m = kv.apply_think(_model("llama"), prune_ratio=0.4, window=8, recent=4)
    ids, _ = _batch(batch=1, length=24, pads=(0,))
    nxt = torch.randint(3, VOCAB, (1, 4), generator=torch.Generator().manual_seed(6))
    cache = kv.ThinKCache(kv.think_settings(m))
    _step(m, ids, cache)
    first = [_step(m, nxt[:, i:i + 1], cache).logits[:, -1] for i in range(4)]
    cache.crop(-2)  # forget nxt[2], nxt[3] (full-width store)
    assert cache.get_seq_length() == 26
    again = _step(m, nxt[:, 2:3], cache).logits[:, -1]
    torch.testing.assert_close(again, first[2], atol=1e-6, rtol=1e-6)
    cache.crop(-10)  # into the pruned store (no eviction: tokens are still in order)
    assert cache.get_seq_length() == 17
    assert cache.layers[0].n_pruned + cache.layers[0].n_recent == 17


def test_crop_into_evicted_prompt_is_an_error():
    m = kv.apply_think(_model("llama"), evict="snapkv", token_budget=12, window=8, recent=4)
    ids, _ = _batch(batch=1, length=30, pads=(0,))
    cache = kv.ThinKCache(kv.think_settings(m))
    _step(m, ids, cache)
    cache.crop(-2)
    with pytest.raises(ValueError, match="evicted"):
        cache.crop(-5)


def test_batch_select_and_repeat():
    m = kv.apply_think(_model("mistral"), prune_ratio=0.4, window=8, recent=4)
    ids, mask = _batch(pads=(0, 5))
    cache = kv.ThinKCache(kv.think_settings(m))
    _step(m, ids, cache, attention_mask=mask)
    layer = cache.layers[0]
    assert layer.starts.tolist() == [0, 5]
    cache.batch_repeat_interleave(2)
    assert layer.k_pruned.shape[0] == 4 and layer.starts.tolist() == [0, 0, 5, 5]
    cache.batch_select_indices(torch.tensor([3]))
    assert layer.k_pruned.shape[0] == 1 and layer.starts.tolist() == [5]
    cache.reorder_cache(torch.tensor([0, 0]))
    assert layer.v_buf.shape[0] == 2


# ------------------------------------------------------------------------------------------------
# Bytes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, 0.4, 0.5])
def test_cache_nbytes_equals_formula(ratio):
    m = _model("llama")
    ids, mask = _batch(length=40, pads=(0, 5))
    new = 8
    dense = _generate(m, ids, mask, max_new_tokens=new)
    kv.apply_think(m, prune_ratio=ratio, window=8, recent=8)
    think = _generate(m, ids, mask, max_new_tokens=new)
    b, hkv, d, layers, esize = 2, 2, 16, 2, 4
    n = 40 + new - 1  # the last generated token is never fed back
    assert kv.cache_nbytes(output_cache(dense)) == layers * 2 * b * hkv * n * d * esize
    t = kept_channels(d, ratio)
    lp = 40 - 8
    per_layer = (
        b * hkv * n * d * esize  # values: untouched
        + b * hkv * lp * t * esize  # pruned keys: T = D - floor(lambda D) channels
        + b * hkv * (n - lp) * d * esize  # recent prompt + generated keys at full width
        + b * hkv * t * 8  # channel indices (int64)
        + b * 8  # starts (left padding)
    )
    assert kv.cache_nbytes(output_cache(think)) == layers * per_layer
    # no spare capacity
    assert kv.cache_nbytes(output_cache(think), used=True) == layers * per_layer
    assert kv.cache_nbytes(output_cache(dense), used=True) == kv.cache_nbytes(output_cache(dense))
    assert t == d - math.floor(ratio * d)


def test_cache_nbytes_counts_spare_capacity_as_held():
    m = kv.apply_think(_model("llama"), prune_ratio=0.5, window=8, recent=8)
    ids, _ = _batch(batch=1, length=20, pads=(0,))
    cache = kv.ThinKCache(kv.think_settings(m), max_cache_len=100)
    _step(m, ids, cache)
    hkv, d, layers, esize = 2, 16, 2, 4
    used = layers * (hkv * 20 * d * esize + hkv * 12 * 8 * esize + hkv * 8 * d * esize
                     + hkv * 8 * 8)
    assert kv.cache_nbytes(cache, used=True) == used
    assert kv.cache_nbytes(cache) == used + layers * 2 * hkv * 80 * d * esize  # 80 tokens ahead


def test_cache_nbytes_with_fold():
    m = _model("llama")
    ids, mask = _batch(length=40, pads=(0, 5))
    kv.apply_think(m, prune_ratio=0.5, window=8, recent=8, fold_block=4)
    think = _generate(m, ids, mask, max_new_tokens=12)
    b, hkv, d, layers, esize = 2, 2, 16, 2, 4
    n = 40 + 12 - 1
    # 11 tokens after prefill: the full-width store 8 -> 12 -> fold 4 (twice) -> 11.
    lp, lr = 32 + 8, 11
    held = (b * hkv * n * d * esize + b * hkv * lp * 8 * esize + b * hkv * 12 * d * esize
            + b * hkv * 8 * 8 + b * 8)
    used = held - b * hkv * (12 - lr) * d * esize
    assert kv.cache_nbytes(output_cache(think)) == layers * held
    assert kv.cache_nbytes(output_cache(think), used=True) == layers * used


def test_cache_nbytes_errors_and_dense():
    with pytest.raises(TypeError, match="Cache"):
        kv.cache_nbytes(torch.zeros(3))
    cache = transformers.DynamicCache()
    assert kv.cache_nbytes(cache) == 0
    cache.update(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), 0)
    assert kv.cache_nbytes(cache) == 2 * 40 * 4


# ------------------------------------------------------------------------------------------------
# SnapKV
# ------------------------------------------------------------------------------------------------


def test_snapkv_keep_shape_window_and_padding():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 4, 8, generator=g)
    k = torch.randn(2, 2, 20, 8, generator=g)
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[1, :6] = False
    pos = kv.snapkv_keep(q, k, valid, budget=10, scale=8 ** -0.5)
    assert pos.shape == (2, 2, 10)
    assert torch.equal(pos[..., -4:], torch.arange(16, 20).expand(2, 2, 4))
    assert bool((pos.diff(dim=-1) > 0).all())
    assert bool((pos[1] >= 6).all())  # row 1 has 10 real prefix tokens for 6 places
    scores = kv.snapkv_scores(q, k, valid, 8 ** -0.5)
    assert scores.shape == (2, 2, 16) and bool(torch.isinf(scores[1, :, :6]).all())
    # The chosen prefix tokens are the best scored ones.
    for b in range(2):
        for h in range(2):
            chosen = scores[b, h, pos[b, h, :6]]
            others = scores[b, h][~torch.isin(torch.arange(16), pos[b, h, :6])]
            assert chosen.min() >= others.max()


def test_snapkv_keeps_budget_per_head():
    m = kv.apply_think(_model("llama"), prune_ratio=0.4, window=8, recent=4, evict="snapkv",
                       token_budget=16)
    ids, mask = _batch(pads=(0, 30))  # row 1: 10 real tokens, fewer than the budget
    out = _generate(m, ids, mask, max_new_tokens=3)
    layer = output_cache(out).layers[1]
    assert layer.n_pruned + layer.n_recent == 16 + 2
    assert layer.starts.tolist() == [0, 6]  # 16 - 10 padded tokens kept in row 1, first
    assert output_cache(out).get_seq_length() == 42


# ------------------------------------------------------------------------------------------------
# Patch lifecycle and errors
# ------------------------------------------------------------------------------------------------


def test_apply_and_remove_restore_the_model():
    m = _model("qwen2")
    before = m.config._attn_implementation
    assert kv.apply_think(m, prune_ratio=0.5) is m
    assert m.config._attn_implementation == kv.ATTN_NAME
    assert kv.think_settings(m).prune_ratio == 0.5
    kv.apply_think(m, prune_ratio=0.25)  # re-applying changes the settings
    assert kv.think_settings(m).prune_ratio == 0.25
    kv.remove_think(m)
    assert m.config._attn_implementation == before
    assert kv.think_settings(m) is None
    ids, mask = _batch()
    out = _generate(m, ids, mask, max_new_tokens=2)
    assert type(output_cache(out)) is transformers.DynamicCache
    assert kv.remove_think(m) is m  # idempotent


def test_patched_model_without_think_cache_is_sdpa():
    m = _model("llama")
    ids, mask = _batch(pads=(0, 5))
    dense = m(ids, attention_mask=mask).logits
    kv.apply_think(m)
    torch.testing.assert_close(m(ids, attention_mask=mask).logits, dense, atol=1e-5, rtol=1e-5)


def test_one_settings_object_with_fields_replaced():
    base = kv.ThinKSettings(prune_ratio=0.25, window=8, recent=4)
    m = kv.apply_think(_model("llama"), base, recent=2)
    assert kv.think_settings(m) == kv.ThinKSettings(prune_ratio=0.25, window=8, recent=2)
    assert kv.ThinKCache(base).settings == base
    assert kv.ThinKCache(base, window=16).settings.window == 16
    with pytest.raises(ValueError, match="window"):
        kv.ThinKCache(base, window=0)  # replaced fields are validated again
    with pytest.raises(TypeError, match="ThinKSettings"):
        kv.ThinKCache({"window": 8})
    with pytest.raises(TypeError, match="windw"):
        kv.apply_think(m, windw=8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prune_ratio": 1.0}, "prune_ratio"),
        ({"prune_ratio": -0.1}, "prune_ratio"),
        ({"window": 0}, "window"),
        ({"recent": -1}, "recent"),
        ({"evict": "h2o", "token_budget": 64}, "evict"),
        ({"token_budget": 64}, "token_budget"),
        ({"evict": "snapkv"}, "token_budget"),
        ({"evict": "snapkv", "token_budget": 16, "window": 32}, "token_budget"),
        ({"backend": "gpu"}, "backend"),
        ({"fold_block": 0}, "fold_block"),
    ],
)
def test_bad_settings_raise_value_error(kwargs, match):
    m = _model("llama")
    with pytest.raises(ValueError, match=match):
        kv.apply_think(m, **kwargs)
    assert m.config._attn_implementation != kv.ATTN_NAME  # nothing was patched
    with pytest.raises(ValueError, match=match):
        kv.ThinKCache(**kwargs)


@pytest.mark.parametrize("kwargs", [{"prune_ratio": "0.4"}, {"window": 2.5}])
def test_bad_setting_types_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        kv.ThinKSettings(**kwargs)


def test_unsupported_models_raise_with_the_reason():
    torch.manual_seed(0)
    bloom = transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=VOCAB, hidden_size=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="bloom.*attention-function registry"):
        kv.apply_think(bloom)
    assert bloom.config._attn_implementation != kv.ATTN_NAME
    sliding = transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, sliding_window=16))
    with pytest.raises(ValueError, match="every layer uses sliding-window"):
        kv.apply_think(sliding)


def test_right_padding_is_an_error():
    m = kv.apply_think(_model("llama"))
    ids, mask = _batch(pads=(0, 0))
    mask[1, -3:] = 0
    with pytest.raises(ValueError, match="left padding"):
        _step(m, ids, kv.ThinKCache(), attention_mask=mask)


def test_think_cache_needs_the_patch():
    m = _model("llama")
    ids, _ = _batch(batch=1, pads=(0,))
    # The message is ponder's (RuntimeError) where transformers' SDPA touches the keys first;
    # older releases hand them straight to torch, which names the ThinKStep it got.
    with pytest.raises((RuntimeError, TypeError), match="apply_think|ThinKStep"):
        _step(m, ids, kv.ThinKCache())


# ------------------------------------------------------------------------------------------------
# Low precision and backends
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_prune_zero_close_to_sdpa(dtype):
    """With nothing pruned, ThinK in fp16/bf16 is as close to fp32 as SDPA in fp16/bf16 is
    (the flash-attention rule of docs/design.md, 2x, on the logits of the decode steps)."""
    ids, mask = _batch(pads=(0, 5))
    ref = _model("llama")
    fp32 = _generate(ref, ids, mask)
    low = _model("llama").to(dtype)
    sdpa = _generate(low, ids, mask)
    kv.apply_think(low, prune_ratio=0.0, window=8, recent=8)
    think = _generate(low, ids, mask)
    # Teacher-forced comparison would be cleaner; sequences agree here, so the steps align.
    assert torch.equal(think.sequences, sdpa.sequences)
    assert torch.equal(sdpa.sequences, fp32.sequences)
    err_sdpa = _max_logit_diff(sdpa, fp32)
    err_think = _max_logit_diff(think, fp32)
    assert err_think <= 2 * err_sdpa + 1e-3


def test_backends_agree(cpu_backend):
    m = _model("llama")
    ids, mask = _batch(batch=2, length=20, pads=(0, 3))
    kv.apply_think(m, prune_ratio=0.4, window=8, recent=4, backend="torch")
    ref = _generate(m, ids, mask, max_new_tokens=4)
    kv.apply_think(m, prune_ratio=0.4, window=8, recent=4, backend=cpu_backend)
    out = _generate(m, ids, mask, max_new_tokens=4)
    assert torch.equal(out.sequences, ref.sequences)
    assert _max_logit_diff(out, ref) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_generate_matches_cpu(dtype):
    """On a GPU (Triton backend): the same tokens as on the CPU, logits within the dtype's error."""
    ids, mask = _batch(pads=(0, 5))
    settings = {"prune_ratio": 0.4, "window": 8, "recent": 4}
    cpu = kv.apply_think(_model("llama").to(dtype), **settings, backend="torch")
    ref = _generate(cpu, ids, mask)
    gpu = kv.apply_think(_model("llama").to(device="cuda", dtype=dtype), **settings)
    out = _generate(gpu, ids.cuda(), mask.cuda())
    assert isinstance(output_cache(out), kv.ThinKCache)
    if dtype == torch.float32:
        assert torch.equal(out.sequences.cpu(), ref.sequences)
    tol = 1e-3 if dtype == torch.float32 else 0.1
    first = (out.logits[0].cpu() - ref.logits[0]).abs().max().item()  # prefill: same input
    assert first < tol
