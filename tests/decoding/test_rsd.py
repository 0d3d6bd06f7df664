"""ponder.decoding.rsd_generate: the RSD step loop with tiny random-init models and trivial
scorers, its limits (delta = -inf is the draft alone, +inf the target alone), its statistics,
and its errors; plus the `ponder rsd` CLI on the shipped toy models."""

from __future__ import annotations

import math

import pytest
import torch
from ponder.decoding import StepScorer, rsd_generate
from ponder.toy import ToyOracleScorer, make_problems, make_tokenizer

transformers = pytest.importorskip("transformers")

TOK = make_tokenizer(padding_side="left")
V = len(TOK)
NEW = 24  # max new tokens


def tiny_llama(seed: int, vocab: int = V):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.3, tie_word_embeddings=False, pad_token_id=TOK.pad_token_id,
        bos_token_id=TOK.bos_token_id, eos_token_id=TOK.eos_token_id,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models():
    return tiny_llama(0), tiny_llama(1)


PROBLEMS = ["Q: 12+34=?\n\n", "Q: 5-7+1=?\n\n", "Q: 99=?\n\n"]


class Constant:
    """Scores every step ``value``; records what it was asked."""

    def __init__(self, value):
        self.value, self.calls = value, []

    def score(self, questions, steps):
        self.calls.append((list(questions), [list(s) for s in steps]))
        return [[self.value] * len(s) for s in steps]


def greedy_text(model, prompt, steps=NEW):
    """The model's greedy continuation by full recomputation, decoded, EOS stops."""
    ids = torch.tensor([TOK(prompt)["input_ids"]])
    new = []
    with torch.no_grad():
        for _ in range(steps):
            t = int(model(input_ids=ids).logits[0, -1].argmax())
            new.append(t)
            if t == TOK.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[t]])], 1)
    return TOK.decode(new, skip_special_tokens=True)


def run(models, prm, delta, **kw):
    draft, target = models
    return rsd_generate(draft, target, prm, PROBLEMS, tokenizer=TOK, target_tokenizer=TOK,
                        delta=delta, max_new_tokens=NEW, max_step_tokens=7, **kw)


def test_minus_inf_is_draft_only(models):
    res = run(models, None, -math.inf)
    assert res.texts == [greedy_text(models[0], p) for p in PROBLEMS]
    assert min(len(steps) for steps in res.steps) >= 2  # several steps were stitched together
    s = res.stats
    assert s["target_tokens"] == 0 and s["target_steps"] == 0 and s["prm_tokens"] == 0
    assert s["acceptance_rate"] == 1.0 and s["flops_target"] == 0


def test_plus_inf_is_target_only(models):
    res = run(models, None, math.inf)
    assert res.texts == [greedy_text(models[1], p) for p in PROBLEMS]
    s = res.stats
    assert s["draft_tokens"] == 0 and s["draft_steps"] == 0 and s["flops_draft"] == 0
    assert all(who == "target" for steps in res.steps for _, who in steps)


@pytest.mark.parametrize("value,who", [(0.9, "draft"), (0.1, "target")])
def test_scorer_decides(models, value, who):
    prm = Constant(value)
    res = run(models, prm, 0.7)
    base = run(models, None, -math.inf if who == "draft" else math.inf)
    assert res.texts == base.texts
    assert all(w == who for steps in res.steps for _, w in steps)
    assert prm.calls and prm.calls[0][0] == PROBLEMS  # the questions, then the step lists
    assert all(len(s) == 1 for s in prm.calls[0][1])


def test_statistics_add_up(models):
    class Alternate:  # accepts every other scored step
        n = 0

        def score(self, questions, steps):
            out = []
            for s in steps:
                self.n += 1
                out.append([0.0] * (len(s) - 1) + [float(self.n % 2)])
            return out

    res = run(models, Alternate(), 0.5, verifier=lambda p, t: p.startswith("Q: 1"))
    s = res.stats
    n_steps = sum(len(steps) for steps in res.steps)
    assert s["draft_steps"] + s["target_steps"] == n_steps == s["proposed_draft_steps"]
    assert 0 < s["draft_steps"] < n_steps
    assert s["acceptance_rate"] == s["draft_steps"] / s["proposed_draft_steps"]
    kept_draft = s["draft_tokens"] - s["discarded_draft_tokens"]
    # Every generated token of the texts came from a kept step (special tokens aside).
    assert kept_draft + s["target_tokens"] >= sum(len(TOK(t, add_special_tokens=False)
                                                      ["input_ids"]) for t in res.texts)
    assert s["prm_tokens"] == s["draft_tokens"]
    draft, _target = models
    params = sum(p.numel() for p in draft.parameters())
    assert s["flops_draft"] == 2.0 * params * s["draft_tokens"]
    assert s["flops"] == s["flops_draft"] + s["flops_target"] + s["flops_prm"]
    assert s["accuracy"] == pytest.approx(1 / 3)
    assert s["wall_s"] > 0


def test_non_binary_omega_draws(models):
    res = run(models, Constant(0.5), 0.5, omega="constant", generator=3)
    kinds = {w for steps in res.steps for _, w in steps}
    assert kinds == {"draft", "target"}  # probability 1/2 each: both occur


def test_errors(models):
    draft, target = models
    kw = {"tokenizer": TOK, "max_new_tokens": 4}
    with pytest.raises(ValueError, match="different vocabularies"):
        rsd_generate(tiny_llama(2, vocab=V + 3), target, Constant(1.0), PROBLEMS, **kw)

    class OtherTok:
        def get_vocab(self):
            return {"a": 0}

    with pytest.raises(ValueError, match="tokenizers differ"):
        rsd_generate(draft, target, Constant(1.0), PROBLEMS, target_tokenizer=OtherTok(), **kw)
    with pytest.raises(TypeError, match="prm must have score"):
        rsd_generate(draft, target, object(), PROBLEMS, **kw)
    with pytest.raises(ValueError, match="omega must be one of"):
        rsd_generate(draft, target, Constant(1.0), PROBLEMS, omega="step", **kw)
    with pytest.raises(ValueError, match="only meaningful with omega='binary'"):
        rsd_generate(draft, target, Constant(1.0), PROBLEMS, delta=math.inf, omega="sigmoid",
                     **kw)
    with pytest.raises(ValueError, match="max_steps must be an int >= 1"):
        rsd_generate(draft, target, Constant(1.0), PROBLEMS, max_steps=0, **kw)


def test_oracle_scorer_is_a_step_scorer():
    problems = make_problems(5, seed=1)
    oracle = ToyOracleScorer(problems)
    assert isinstance(oracle, StepScorer)
    p = problems[0]
    steps = p.target.split("\n\n")
    assert oracle.score([p.prompt], [steps]) == [[1.0] * len(steps)]
    wrong = steps[:-1] + ["Answer: 123456"]
    assert oracle.score([p.prompt], [wrong])[0][-1] == 0.0


def test_cli_runs_on_the_toy_models(capsys):
    from ponder.cli import main

    assert main(["rsd", "--n", "4", "--max-new-tokens", "24", "--delta", "0.5"]) == 0
    out = capsys.readouterr().out
    for row in ("draft-only", "target-only", "RSD delta=0.5"):
        assert row in out


def test_cli_free_prm_scores_from_the_draft_pass(capsys):
    import json

    from ponder.cli import main

    assert main(["rsd", "--n", "6", "--prm", "free", "--delta", "0.93", "--json"]) == 0
    rows = {r["run"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    rsd = rows["RSD delta=0.93"]
    assert rsd["proposed_draft_steps"] > 0
    # only the PRM's head is charged: far less than one draft forward per scored token
    assert 0 < rsd["flops_prm"] < 1e-3 * rsd["flops_draft"]
    assert main(["rsd", "--n", "2", "--prm", "free", "--draft", "target"]) == 2
    assert "--prm free is built on the toy draft" in capsys.readouterr().err


def test_cli_data_file(tmp_path, capsys):
    from ponder.cli import main
    from ponder.cli.rsd import read_problems

    path = tmp_path / "problems.jsonl"
    path.write_text('{"prompt": "Q: 1+2=?\\n\\n", "answer": 3}\n\n{"prompt": "Q: 5-1=?\\n\\n", '
                    '"answer": "4"}\n')
    # a string of digits is the integer answer (as a string the toy verifier reads a question)
    assert read_problems(str(path), 10) == (["Q: 1+2=?\n\n", "Q: 5-1=?\n\n"], [3, 4])
    assert read_problems(str(path), 1) == (["Q: 1+2=?\n\n"], [3])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match="has no 'prompt', 'answer'"):
        read_problems(str(bad), 5)
    assert main(["rsd", "--data", str(path), "--prm", "oracle"]) == 2
    assert "--prm oracle knows only the toy test problems" in capsys.readouterr().err


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_carried_caches_give_the_same_tokens(temperature):
    """The draft's and target's KV caches carried across steps (discarded steps masked and
    cropped) give exactly what re-reading every prefix gives, at a fixed seed: on the shipped
    toy models, with a scorer that keeps some draft steps and discards others."""
    from ponder.toy import SPECS, load_toy_model

    draft, tok = load_toy_model("draft")
    target, _ = load_toy_model("target")
    problems = SPECS["target"].splits().test[:6]

    class Alternate:  # keeps a draft step iff the problem's step count so far is even
        def score(self, questions, steps):
            return [[1.0 if len(s) % 2 else 0.0] * len(s) for s in steps]

    runs = [rsd_generate(draft, target, Alternate(), problems, tokenizer=tok, delta=0.5,
                         temperature=temperature, generator=3, batch_size=3, carry_cache=c)
            for c in (True, False)]
    assert runs[0].texts == runs[1].texts
    assert runs[0].steps == runs[1].steps
    who = {w for s in runs[0].steps for _, w in s}
    assert who == {"draft", "target"}  # both kinds of step, so discards were cropped
    for key in ("draft_tokens", "target_tokens", "draft_steps", "target_steps"):
        assert runs[0].stats[key] == runs[1].stats[key]
