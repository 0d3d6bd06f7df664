"""Value-guided beam search and best-of-N: the value is read at the LAST token of a candidate."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from ponder.decoding import value_search as vs  # noqa: E402
from ponder.toy.tokenizer import make_tokenizer  # noqa: E402
from ponder.train.oreo import ValueModel  # noqa: E402
from tests.train.oreo_common import tiny_policy  # noqa: E402


class LastTokenValue(torch.nn.Module):
    """V(prefix) = pref[token at each position]: the value at the last token is pref[last]."""

    def __init__(self, pref: torch.Tensor):
        super().__init__()
        self.head = torch.nn.Linear(len(pref), 1, bias=False)
        self.head.weight.data = pref[None].clone()

    def hidden_states(self, ids, mask):
        return torch.nn.functional.one_hot(ids, self.head.in_features).float()


def _setup():
    tok = make_tokenizer()
    policy = tiny_policy(3).eval()
    pref = torch.linspace(-1, 1, 31)[torch.randperm(31, generator=torch.Generator().manual_seed(0))]
    return tok, policy, LastTokenValue(pref), pref


def test_score_values_reads_the_last_token_and_matches_the_full_head():
    tok, policy, fake, pref = _setup()
    seqs = [[1, 5, 9], [1, 7]]
    assert vs.score_values(fake, seqs, 0) == pytest.approx([pref[9].item(), pref[7].item()])
    vm = ValueModel.from_policy(policy)
    torch.nn.init.normal_(vm.head.weight)
    got = vs.score_values(vm, seqs, 0)
    with torch.no_grad():
        full = [vm(torch.tensor([s]))[0, -1].item() for s in seqs]
    assert got == pytest.approx(full, rel=1e-5, abs=1e-6)


def test_best_of_n_picks_the_highest_last_token_value():
    tok, policy, fake, pref = _setup()
    prompts = ["Q: 1+2=?\n\n", "Q: 3*4=?\n\n"]
    res = vs.value_best_of_n(policy, fake, tok, prompts, n=6, max_new_tokens=8, seed=0)
    # the same draws, by hand
    heads = [tok(p)["input_ids"] for p in prompts]
    gen = torch.Generator().manual_seed(0)
    new, ended = vs._generate(policy, [heads[p] for p in (0,) * 6 + (1,) * 6], eos=2, pad=0,
                              delimiter=(), max_tokens=[8] * 12, temperature=1.0, top_p=None,
                              generator=gen, batch_size=256)
    for p in range(2):
        cands = []
        for i in range(6 * p, 6 * p + 6):
            r = new[i][:-1] if ended[i] else new[i]
            last = (heads[p] + r)[-1]
            cands.append(pref[last].item())
        assert res.values[p] == pytest.approx(max(cands))
        assert res.values[p] == pytest.approx(pref[(heads[p] + res.ids[p])[-1]].item())
    assert res.sampled_tokens == sum(len(x) for x in new)


def test_beam_search_keeps_the_best_and_is_seeded():
    tok, policy, fake, pref = _setup()
    prompts = ["Q: 1+2=?\n\n", "Q: 3*4=?\n\n", "Q: 5-1=?\n\n"]
    kw = dict(beam_width=2, max_steps=3, step_delimiter="\n", max_step_tokens=4,
              max_new_tokens=10, seed=1)
    a = vs.value_beam_search(policy, fake, tok, prompts, **kw)
    b = vs.value_beam_search(policy, fake, tok, prompts, **kw)
    assert a.ids == b.ids and a.values == b.values
    heads = [tok(p)["input_ids"] for p in prompts]
    for p in range(3):
        assert a.values[p] == pytest.approx(pref[(heads[p] + a.ids[p])[-1]].item())
        assert len(a.ids[p]) <= 10
        assert 2 not in a.ids[p]  # EOS never kept in the response


def test_errors():
    tok, policy, fake, _ = _setup()
    with pytest.raises(ValueError, match="beam_width"):
        vs.value_beam_search(policy, fake, tok, ["Q"], beam_width=0)
    with pytest.raises(TypeError, match="prompts"):
        vs.value_beam_search(policy, fake, tok, "Q")
    with pytest.raises(ValueError, match="n must"):
        vs.value_best_of_n(policy, fake, tok, ["Q"], n=0)
    # best-of-N checks its prompts and temperature as the beam search does (a str would be
    # read as one prompt per character)
    with pytest.raises(TypeError, match="value_best_of_n: prompts"):
        vs.value_best_of_n(policy, fake, tok, "Q", n=2)
    with pytest.raises(ValueError, match="value_best_of_n: temperature"):
        vs.value_best_of_n(policy, fake, tok, ["Q"], n=2, temperature=0.0)


def test_beam_search_with_carried_caches_equals_recomputing_the_prefixes():
    tok, _, fake, _ = _setup()
    # float64: the carried keys and values equal the recomputed ones far below any sampling
    # boundary, so the seeded draws are the same
    policy = tiny_policy(3).double().eval()
    prompts = ["Q: 1+2=?\n\n", "Q: 3*4=?\n\n", "Q: 5-1=?\n\n"]
    kw = {"beam_width": 3, "max_steps": 4, "step_delimiter": "\n", "max_step_tokens": 5,
          "max_new_tokens": 16, "seed": 7, "batch_size": 7}  # several batches per step
    a = vs.value_beam_search(policy, fake, tok, prompts, reuse_cache=True, **kw)
    b = vs.value_beam_search(policy, fake, tok, prompts, reuse_cache=False, **kw)
    assert a.ids == b.ids and a.values == b.values and a.finished == b.finished
    assert a.sampled_tokens == b.sampled_tokens
    assert max(len(x) for x in a.ids) > 5  # more than one step was taken
    with pytest.raises(TypeError, match="reuse_cache"):
        vs.value_beam_search(policy, fake, tok, prompts, reuse_cache=1)


def test_carried_keys_and_values_are_those_of_a_fresh_prefill():
    tok = make_tokenizer()
    policy = tiny_policy(3).double().eval()
    prompts = [tok("Q: 1+2=?\n\n")["input_ids"], tok("Q: 13*4=?\n\n")["input_ids"]]
    gen = torch.Generator().manual_seed(0)
    kw = {"eos": 2, "pad": 0, "delimiter": [4], "temperature": 1.0, "top_p": None,
          "generator": gen, "batch_size": 256, "reuse": True}
    rows = vs._sample_steps(policy, [vs._Source(p) for p in prompts], [2, 3],
                            max_tokens=[4, 4], **kw)
    # a second step from the carried caches of two rows (different lengths: left padding)
    src = [vs._Source(prompts[0] + rows[0].new, rows[0].kv()),
           vs._Source(prompts[1] + rows[4].new, rows[4].kv())]
    rows2 = vs._sample_steps(policy, src, [1, 2], max_tokens=[4, 4], **kw)
    for seq, row in ((prompts[0] + rows[0].new, rows[0]), (prompts[1] + rows[4].new, rows[4]),
                     (src[1].ids + rows2[2].new, rows2[2])):
        kv = row.kv()
        assert kv is not None and kv[0][0].shape[1] == len(seq) - 1
        with torch.no_grad():
            out = policy(input_ids=torch.tensor([seq[:-1]]), use_cache=True)
        for (k, v), layer in zip(kv, out.past_key_values.layers):
            torch.testing.assert_close(k, layer.keys[0], rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(v, layer.values[0], rtol=1e-9, atol=1e-10)


def test_carried_value_caches_give_the_values_of_the_full_sequences():
    tok = make_tokenizer()
    policy = tiny_policy(3).double().eval()
    value = ValueModel.from_policy(tiny_policy(4)).double().eval()
    torch.nn.init.normal_(value.head.weight, generator=torch.Generator().manual_seed(2))
    assert vs._value_backbone(value) is not None
    prompts = ["Q: 1+2=?\n\n", "Q: 3*4=?\n\n", "Q: 25-1=?\n\n"]
    kw = {"beam_width": 3, "max_steps": 4, "step_delimiter": "\n", "max_step_tokens": 5,
          "max_new_tokens": 16, "seed": 3, "batch_size": 7}
    a = vs.value_beam_search(policy, value, tok, prompts, reuse_cache=True, **kw)
    b = vs.value_beam_search(policy, value, tok, prompts, reuse_cache=False, **kw)
    assert a.ids == b.ids and a.finished == b.finished
    assert a.values == pytest.approx(b.values, rel=1e-9, abs=1e-12)
    assert max(len(x) for x in a.ids) > 5
    # the values of the chosen responses, read from the full sequences
    heads = [tok(p)["input_ids"] for p in prompts]
    full = vs.score_values(value, [h + r for h, r in zip(heads, a.ids)], 0)
    assert a.values == pytest.approx(full, rel=1e-9, abs=1e-12)
    # carried: beam caches + new tokens, one candidate with no new token (its beam's value)
    seqs = [heads[0] + [5, 6], heads[1] + [7]]
    first = vs._score_carried(value, value.backbone, [(None, s, 0.0) for s in seqs], 0, 256)
    more = [(first[0].kv(), [8, 9, 4], 0.0), (first[1].kv(), [], first[1].value)]
    got = vs._score_carried(value, value.backbone, more, 0, 256)
    want = vs.score_values(value, [seqs[0] + [8, 9, 4], seqs[1]], 0)
    assert [g.value for g in got] == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert got[0].kv()[0][0].shape[1] == len(seqs[0]) + 3
