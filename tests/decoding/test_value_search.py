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
