"""ponder.decoding.speculative_generate: lossless token-level speculative decoding with tiny
random-init Llama models (peaked logits, so greedy ties cannot occur by rounding)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from ponder.decoding import speculative_generate

transformers = pytest.importorskip("transformers")

VOCAB = 24


def tiny_llama(seed: int, vocab: int = VOCAB, layers: int = 2, hidden: int = 32):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=128, initializer_range=0.3, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models():
    return tiny_llama(0, layers=1, hidden=16), tiny_llama(1)


def greedy_reference(model, ids, mask, steps):
    """Greedy decoding by full recomputation (no cache): the definition."""
    ids, mask = ids.clone(), mask.clone()
    with torch.no_grad():
        for _ in range(steps):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return ids


def prompts():
    ids = torch.tensor([[0, 0, 1, 5, 9], [1, 7, 7, 3, 11], [0, 0, 0, 1, 20]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_equals_target_greedy(models, k):
    draft, target = models
    ids, mask = prompts()
    out = speculative_generate(draft, target, ids, attention_mask=mask, k=k, max_new_tokens=12)
    assert torch.equal(out.sequences, greedy_reference(target, ids, mask, 12))
    assert out.stats["target_forwards"] == out.stats["rounds"] <= 12
    assert 0 <= out.stats["accepted"] <= out.stats["proposed"]


def test_greedy_with_the_target_as_draft_accepts_everything(models):
    _, target = models
    ids, mask = prompts()
    out = speculative_generate(target, target, ids, attention_mask=mask, k=4, max_new_tokens=10)
    assert out.stats["acceptance_rate"] == 1.0
    assert out.stats["rounds"] == 2  # 5 tokens per round
    assert torch.equal(out.sequences, greedy_reference(target, ids, mask, 10))


def test_eos_stops_a_row_and_pads(models):
    draft, target = models
    ids, mask = prompts()
    ref = greedy_reference(target, ids, mask, 12)
    eos = int(ref[0, 7])  # row 0's third new token plays EOS
    out = speculative_generate(draft, target, ids, attention_mask=mask, k=3, max_new_tokens=12,
                               eos_token_id=eos, pad_token_id=0)
    row = out.sequences[0, 5:]
    first = int((row == eos).nonzero()[0])
    assert torch.equal(out.sequences[0, : 5 + first + 1], ref[0, : 5 + first + 1])
    assert (row[first + 1:] == 0).all()


def test_sampled_tokens_have_the_target_distribution(models):
    """The second new token's marginal equals sum_t1 p(t1) p(t2 | t1) of the target
    (chi-square, p < 1e-4 rejects: false-alarm rate 1e-4 for this fixed seed)."""
    draft, target = models
    n = 3000
    prompt = torch.tensor([[1, 5, 9]])
    out = speculative_generate(draft, target, prompt.expand(n, -1), k=2, max_new_tokens=2,
                               temperature=1.0, generator=123)
    with torch.no_grad():
        p1 = torch.softmax(target(prompt).logits[0, -1].double(), -1)
        two = torch.cat([prompt.expand(VOCAB, -1), torch.arange(VOCAB)[:, None]], 1)
        p2_given = torch.softmax(target(two).logits[:, -1].double(), -1)
    for pos, probs in ((3, p1), (4, p1 @ p2_given)):
        counts = np.bincount(out.sequences[:, pos].numpy(), minlength=VOCAB)
        expected = probs.numpy() * n
        big = expected >= 5  # pool the rare tokens into one cell
        obs = np.append(counts[big], counts[~big].sum())
        exp = np.append(expected[big], expected[~big].sum())
        if exp[-1] == 0:
            obs, exp = obs[:-1], exp[:-1]
        assert scipy.stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-4


def test_errors(models):
    draft, target = models
    ids, _mask = prompts()
    with pytest.raises(ValueError, match="different vocabularies"):
        speculative_generate(tiny_llama(2, vocab=VOCAB + 1), target, ids)
    with pytest.raises(ValueError, match="k .* must be an int >= 1"):
        speculative_generate(draft, target, ids, k=0)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        speculative_generate(draft, target, ids[0])
    with pytest.raises(ValueError, match="max_new_tokens"):
        speculative_generate(draft, target, ids, max_new_tokens=0)
