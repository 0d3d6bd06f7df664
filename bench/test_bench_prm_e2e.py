"""End-to-end PRM scoring: ``ProcessRewardModel`` (base model + ponder.ops.prm at the step
positions) against the model's own full-logits forward (LM head over every position, softmax
over the vocabulary, then the two label tokens at the step positions).

Model: a random-init LlamaForCausalLM with 4 layers, hidden 1536, intermediate 8960, 12 heads
(2 KV heads), vocabulary 151936, tied embeddings (Qwen2.5-1.5B's widths, 4 of its layers),
float32. Input: batch 1 of L = 1024 tokens with 20 step tags (L = 2048 would put the full-logits
path's logits and softmax at 2 x 1.24 GB next to the 1.7 GB model: more than one engineer's
share of this shared machine's memory).

Peak extra memory: the ``peak_extra_bytes`` fixture of bench/conftest.py (Linux's peak resident
set size during one call minus its value at the reset just before); torch keeps no statistics
for CPU tensors and tracemalloc does not see them.

Run:  python -m pytest bench/test_bench_prm_e2e.py --benchmark-only -q
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

LAYERS, HIDDEN, INTER, HEADS, KV_HEADS, VOCAB = 4, 1536, 8960, 12, 2, 151936
LENGTH, STEPS = 1024, 20
TAG, POS, NEG = 100, 10, 20  # token ids: the step tag and the two labels
GROUP = "prm end to end: 4-layer H=1536 V=151936 Llama, L=1024, 20 steps, fp32"


class _Tok:
    """The bits of a tokenizer ProcessRewardModel's constructor reads (ids are prepared here)."""

    pad_token_id = 0

    def get_vocab(self):
        return {"<tag>": TAG, "+": POS, "-": NEG}


@pytest.fixture(scope="module")
def setup():
    from ponder.rewards import PRMConvention, ProcessRewardModel

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, tie_word_embeddings=True,
        max_position_embeddings=4096)
    model = transformers.LlamaForCausalLM(cfg).eval()
    conv = PRMConvention("bench", "two_label", " <tag>", "<tag>", positive="+", negative="-")
    prm = ProcessRewardModel(model, _Tok(), conv)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(200, VOCAB, (LENGTH,), generator=gen)
    positions = sorted(torch.randperm(LENGTH - 1, generator=gen)[:STEPS].add(1).tolist())
    ids[positions] = TAG
    encoded = [(ids.tolist(), positions)]
    return model, prm, ids, positions, encoded


def full_logits_scores(model, ids, positions):
    with torch.inference_mode():
        logits = model(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None],
                       use_cache=False).logits[0]  # [L, V]
        probs = torch.softmax(logits, -1)
        del logits
        picked = probs[positions][:, [POS, NEG]]
        return (picked[:, 0] / picked.sum(-1)).tolist()


@pytest.mark.parametrize("impl", ["full-logits", "ProcessRewardModel"])
def test_prm_end_to_end(benchmark, peak_extra_bytes, setup, impl):
    model, prm, ids, positions, encoded = setup
    if impl == "full-logits":
        def fn():
            return full_logits_scores(model, ids, positions)
    else:
        def fn():
            return prm._score_encoded(encoded)[0]

    got = fn()  # warm-up, and the two paths must agree
    want = full_logits_scores(model, ids, positions) if impl != "full-logits" else got
    assert got == pytest.approx(want, abs=1e-4)
    extra = peak_extra_bytes(fn)
    benchmark.group = GROUP
    benchmark.extra_info.update(kind="prm-e2e", impl=impl, layers=LAYERS, hidden=HIDDEN,
                                vocab=VOCAB, length=LENGTH, steps=STEPS, dtype="float32",
                                threads=torch.get_num_threads(), peak_extra_bytes=extra)
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
