"""Scoring a draft step from the draft's own generation pass (rsd_generate(prm_from_draft=True),
ponder.toy.prm_check's pass features): the same scores as the PRM re-reading the text, the same
RSD decisions, only the head's FLOPs counted; the shipped free-scoring PRM judges the draft's
greedy steps better than the ER-rollout one; and a PRM on the target with its own carried KV
cache (prm_cache=True) scores as re-reading does."""

from __future__ import annotations

import math

import pytest
import torch
from ponder.decoding import DraftPassScorer, rsd_generate
from ponder.toy import SPECS, load_toy_model, verify

pytest.importorskip("transformers")

N = 12  # test problems per RSD run


@pytest.fixture(scope="module")
def toy():
    draft, tok = load_toy_model("draft")
    target, _ = load_toy_model("target")
    return draft, target, tok, SPECS["target"].splits().test[:N]


@pytest.fixture(scope="module")
def hidden_prm():
    """A check PRM on the draft with hidden-state features and a random (non-zero) head."""
    from ponder.toy.prm_check import as_prm, build_check_prm

    model, tok = build_check_prm(("draft",), hidden=True, seed=1)
    torch.manual_seed(2)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.3)
        model.head.bias.fill_(0.5)
    return as_prm(model.eval(), tok)


class Both:
    """Scores from the pass, and records the re-reading PRM's score of the same tokens."""

    def __init__(self, prm, tok):
        self.prm, self.tok, self.pairs = prm, tok, []
        self.pass_model = prm.pass_model

    def score(self, questions, steps):
        return self.prm.score(questions, steps)

    def draft_pass_flops(self, tokens, steps):
        return self.prm.draft_pass_flops(tokens, steps)

    def score_draft_pass(self, passes):
        free = self.prm.score_draft_pass(passes)
        questions, steps = [], []
        for p in passes:
            ids = p.ids.tolist()
            questions.append(self.tok.decode(ids[:p.spans[0][0]], skip_special_tokens=True))
            steps.append([self.tok.decode(ids[a:b], skip_special_tokens=True)
                          for a, b in p.spans])
        reread = [s[-1] for s in self.prm.score(questions, steps)]
        self.pairs += list(zip(free, reread))
        return free


@pytest.mark.parametrize(("which", "carry_cache", "temperature"),
                         [("shipped", True, 0.0), ("hidden", False, 1.0), ("hidden", True, 1.0)])
def test_pass_scores_equal_the_rereading_prm(toy, hidden_prm, which, carry_cache, temperature):
    from ponder.toy import load_toy_prm

    draft, target, tok, problems = toy
    prm = load_toy_prm(kind="check-draft-local") if which == "shipped" else hidden_prm
    assert isinstance(prm, DraftPassScorer)
    both = Both(prm, tok)
    kw = {"tokenizer": tok, "max_new_tokens": 64, "generator": 0, "carry_cache": carry_cache,
          "verifier": verify, "temperature": temperature}
    delta = 0.9 if which == "shipped" else 0.6
    free = rsd_generate(draft, target, both, problems, delta=delta, prm_from_draft=True, **kw)
    pairs = torch.tensor(both.pairs)
    # every proposed step was scored; some kept and some discarded, so target-written steps
    # sit in the prefixes the later passes read
    assert len(pairs) == free.stats["proposed_draft_steps"] > N
    assert 0 < free.stats["draft_steps"] and 0 < free.stats["target_steps"]
    assert pairs[:, 0].std() > 0.01  # the scores are not a constant
    assert torch.allclose(pairs[:, 0], pairs[:, 1], atol=1e-4)
    # the same decisions as the PRM re-reading every prefix
    reread = rsd_generate(draft, target, prm, problems, delta=delta, **kw)
    assert reread.texts == free.texts and reread.steps == free.steps


def test_flops_count_only_the_head(toy):
    from ponder.decoding import num_parameters
    from ponder.toy import load_toy_prm

    draft, target, tok, problems = toy
    prm = load_toy_prm(kind="check-draft-local")
    kw = {"tokenizer": tok, "max_new_tokens": 64, "generator": 0, "delta": 0.9}
    free = rsd_generate(draft, target, prm, problems, prm_from_draft=True, **kw).stats
    reread = rsd_generate(draft, target, prm, problems, **kw).stats
    head = sum(p.numel() for n, p in prm.model.named_parameters() if ".lms." not in n)
    assert head == 152
    per_step = 2 * (head + 16)  # the MLP and head weights, and the tanh
    per_token = 3 * 31 + 2 * 7  # log-softmax over the 31-token vocabulary, the pooling
    assert free["flops_prm"] == per_token * free["prm_tokens"] + per_step * \
        free["proposed_draft_steps"]
    assert free["flops"] == free["flops_draft"] + free["flops_target"] + free["flops_prm"]
    # re-reading costs a draft forward per scored token; the pass costs < 0.1% of that
    assert reread["flops_prm"] == 2.0 * num_parameters(prm.model) * reread["prm_tokens"]
    assert free["prm_tokens"] == reread["prm_tokens"]
    assert free["flops_prm"] < 1e-3 * reread["flops_prm"]
    assert free["flops"] < reread["flops"]


def test_prm_from_draft_needs_a_pass_scorer(toy):
    draft, target, tok, problems = toy

    class TextOnly:
        def score(self, questions, steps):
            return [[1.0] * len(s) for s in steps]

    with pytest.raises(TypeError, match="prm_from_draft"):
        rsd_generate(draft, target, TextOnly(), problems[:2], tokenizer=tok, delta=0.5,
                     prm_from_draft=True)
    # the limits never call the PRM: the flag is harmless there
    res = rsd_generate(draft, target, TextOnly(), problems[:2], tokenizer=tok, delta=-math.inf,
                       prm_from_draft=True, max_new_tokens=32)
    assert res.stats["flops_prm"] == 0.0


def test_pass_features_refuse_the_wrong_hidden_size(hidden_prm):
    feats = hidden_prm.model.features
    with pytest.raises(ValueError, match="hidden must be"):
        feats.pass_features(torch.tensor([1, 5, 4]), torch.zeros(3, 31), torch.zeros(3, 7),
                            [(1, 3)])


def test_local_labels_judge_greedy_draft_steps_better(toy):
    """On held-out greedy draft solutions, the step AUC (exact local labels) of the shipped
    free-scoring PRM beats the ER-rollout draft PRM's."""
    from ponder.toy import load_toy_prm
    from ponder.toy.prm import label_solution

    draft, _, tok, _ = toy
    problems = SPECS["target"].splits().test[N:N + 120]
    res = rsd_generate(draft, draft, None, problems, tokenizer=tok, delta=-math.inf,
                       max_new_tokens=64, generator=0)
    questions, steps, labels = [], [], []
    for p, text in zip(problems, res.texts):
        s, lab = label_solution(p, text, "local")
        questions.append(p.question)
        steps.append(s)
        labels.append(lab)

    def auc(prm):
        scores = prm.score(questions, steps)
        pos = [x for sc, lab in zip(scores, labels) for x, y in zip(sc, lab) if y == 1.0]
        neg = [x for sc, lab in zip(scores, labels) for x, y in zip(sc, lab) if y == 0.0]
        assert len(neg) >= 10
        wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
        return wins / (len(pos) * len(neg))

    local, er = auc(load_toy_prm(kind="check-draft-local")), auc(load_toy_prm(kind="check-draft"))
    assert local > 0.85
    assert local > er + 0.03


def test_prm_with_its_own_carried_cache_scores_as_rereading(toy):
    from ponder.toy import load_toy_prm

    draft, target, tok, problems = toy
    prm = load_toy_prm()  # on the target: its LM reads only the new tokens with prm_cache
    both = Both(prm, tok)
    kw = {"tokenizer": tok, "max_new_tokens": 64, "generator": 0, "delta": 0.3,
          "prm_parameters": 1_057_816}  # the wrapper has no .model to count
    cached = rsd_generate(draft, target, both, problems, **kw)
    pairs = torch.tensor(both.pairs)
    assert len(pairs) == cached.stats["proposed_draft_steps"]
    assert 0 < cached.stats["target_steps"] and 0 < cached.stats["draft_steps"]
    assert torch.allclose(pairs[:, 0], pairs[:, 1], atol=1e-4)
    plain = rsd_generate(draft, target, prm, problems, prm_cache=False, **kw)
    assert plain.texts == cached.texts and plain.steps == cached.steps
    assert plain.stats["flops_prm"] == cached.stats["flops_prm"] > 0
