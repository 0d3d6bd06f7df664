"""BOLT stage 1: the format filter, prompts, rewards, resumable bootstrapping and the filters."""

import json

import pytest
import torch
from ponder.generation import TextGenerator
from ponder.train.bolt import (
    DEFAULT_FORMAT,
    BoltExample,
    BoltFormat,
    BoltPromptBuilder,
    SequenceClassifierReward,
    VerifierReward,
    bootstrap,
    load_examples,
    make_preference_pairs,
    policy_prompt,
    select_best,
)

from tests.tiny import tiny_llama

F = DEFAULT_FORMAT


# ------------------------------------------------------------------ format


def test_format_round_trip_and_reasons():
    text = F.render("think hard\nstep 2", "42")
    parsed = F.parse(text)
    assert parsed.ok and parsed.thought == "think hard\nstep 2" and parsed.solution == "42"
    assert F.parse("  \n" + text + "\ntrailing junk").solution == "42"  # leading space, run-on
    cases = {
        "42": "no_thought_open",
        "<thought>\nabc": "no_thought_close",
        "<thought>\n  \n</thought>\n<solution>\n42\n</solution>": "empty_thought",
        "<thought>\nabc\n</thought>\n42": "no_solution_open",
        "<thought>\nabc\n</thought>\n<solution>\n42": "no_solution_close",
        "<thought>\nabc\n</thought>\n<solution>\n \n</solution>": "empty_solution",
        "<thought>\na <thought>\nb\n</thought>\n<solution>\n1\n</solution>": "repeated_delimiter",
        "<thought>\na\n</thought>\n<solution>\n1 </thought>\n</solution>": "repeated_delimiter",
    }
    for text, reason in cases.items():
        got = F.parse(text)
        assert not got.ok and got.reason == reason, (text, got)
        assert got.thought == got.solution == ""


def test_format_without_solution_delimiters():
    fmt = BoltFormat(thought_open="seek\n", thought_close="\nseen\n", solution_open="",
                     solution_close="")
    assert fmt.parse("seek\n1+2=3\nseen\nAnswer: 3").solution == "Answer: 3"
    assert fmt.parse("seek\n1+2=3\nseen\n").reason == "empty_solution"
    with pytest.raises(ValueError, match="thought_open"):
        BoltFormat(thought_open=" ")


# ------------------------------------------------------------------ examples and prompts


def test_shipped_examples():
    ex = load_examples()
    assert len(ex) == 10
    assert len({e.query for e in ex}) == 10
    for e in ex:  # long thought, short solution: the shape the method bootstraps
        assert len(e.thought) > len(e.solution) / 2 and len(e.thought) > 300
        assert F.parse(F.render(e.thought, e.solution)).ok


def test_load_examples_jsonl_and_errors(tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text(json.dumps({"query": "q", "thought": "t", "solution": "s"}) + "\n")
    assert load_examples(path) == [BoltExample("q", "t", "s")]
    path.write_text(json.dumps({"query": "q", "thought": " ", "solution": "s"}) + "\n")
    with pytest.raises(ValueError, match="example 0 .* lacks thought"):
        load_examples(path)


def test_prompt_builder_plain():
    ex = [BoltExample(f"q{i}", f"t{i}", f"s{i}") for i in range(10)]
    b = BoltPromptBuilder(ex, m=3, instruction="INSTR", seed=1)
    p = b("my query")
    assert p.startswith("INSTR\n\n") and p.endswith("Query: my query\nResponse:\n")
    shots = b.choose("my query")
    assert len({e.query for e in shots}) == 3
    for e in shots:
        assert f"Query: {e.query}\nResponse:\n" + F.render(e.thought, e.solution) in p
    assert p.count("Query:") == 4
    assert b("my query") == p  # deterministic per query, whatever else is asked
    picks = {tuple(e.query for e in b.choose(f"x{i}")) for i in range(30)}
    assert len(picks) > 5  # and it varies between queries
    assert BoltPromptBuilder(ex, m=0, instruction="")("q") == "Query: q\nResponse:\n"
    with pytest.raises(ValueError, match="m=11"):
        BoltPromptBuilder(ex, m=11)
    with pytest.raises(ValueError, match="query_template"):
        BoltPromptBuilder(ex, query_template="no placeholder")


class ChatTok:
    """A stand-in tokenizer with a chat template (what BoltPromptBuilder reads of one)."""

    chat_template = "x"
    bos_token = "<s>"
    bos_token_id = 1

    def __call__(self, text):
        return {"input_ids": [1, 5]}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        body = "".join(f"[{m['role']}]{m['content']}" for m in messages)
        return "<s>" + body + ("[assistant]" if add_generation_prompt else "")


def test_prompt_builder_chat_template():
    ex = [BoltExample(f"q{i}", f"t{i}", f"s{i}") for i in range(4)]
    b = BoltPromptBuilder(ex, m=2, tokenizer=ChatTok(), instruction="sys")
    p = b("Q?")
    assert p.startswith("[system]sys[user]")  # the tokenizer adds <s>: not written twice
    assert p.endswith("[user]Q?[assistant]") and p.count("[assistant]") == 3
    assert policy_prompt("Q?", ChatTok()) == "[user]Q?[assistant]"
    assert policy_prompt("Q?", None, template="{query}\n\n") == "Q?\n\n"
    with pytest.raises(ValueError, match="no chat template"):
        BoltPromptBuilder(ex, use_chat_template=True)


# ------------------------------------------------------------------ rewards


def test_verifier_reward():
    r = VerifierReward(lambda ref, text: text.strip() == str(ref), correct=2.0, wrong=-1.0)
    assert r(["a", "b"], ["3", "4"], [3, 5]) == [2.0, -1.0]


def test_sequence_classifier_reward_batches_and_truncates():
    from ponder.toy import make_tokenizer
    from transformers import LlamaForSequenceClassification

    tok = make_tokenizer()
    model = tiny_llama(0, vocab=len(tok), hidden=16, max_positions=64, num_labels=2,
                       cls=LlamaForSequenceClassification).eval()
    queries = ["Q: 1+2=?", "Q: 12+34-5=?", "Q: 3=?"]
    sols = ["Answer: 3", "Answer: 41", "Answer: 3 " * 10]
    one = SequenceClassifierReward(model, tok, batch_size=1, head=1)(queries, sols)
    many = SequenceClassifierReward(model, tok, batch_size=3, head=1)(queries, sols)
    assert many == pytest.approx(one, abs=1e-5)  # padding does not change a score
    with torch.no_grad():  # the score is the head's logit on the conversation
        ids = tok(["Q: 1+2=?\n\nAnswer: 3"], return_tensors="pt")
        assert one[0] == pytest.approx(float(model(**ids).logits[0, 1]), abs=1e-5)
    # left truncation keeps the end of the conversation: two conversations that differ only
    # in their first characters score the same once cut to 8 tokens
    short = SequenceClassifierReward(model, tok, max_length=8)
    a, b = short(["Q: 11+2=?", "Q: 99+2=?"], ["Answer: 13", "Answer: 13"])
    assert a == pytest.approx(b, abs=1e-6)
    right = SequenceClassifierReward(model, tok, max_length=8, truncation_side="right")
    a, b = right(["Q: 1+2=?", "Q: 1+2=?"], ["Answer: 13", "Answer: 99"])
    assert a == pytest.approx(b, abs=1e-6)
    with pytest.raises(ValueError, match="head=2"):
        SequenceClassifierReward(model, tok, head=2)


# ------------------------------------------------------------------ bootstrapping


class Canned(TextGenerator):
    """Deterministic samples: per query (read from the prompt's last "Query:" line) a list of
    responses; records the prompts it saw and how many calls it served."""

    def __init__(self, table, fail_after=None):
        self.table = table
        self.calls = 0
        self.seen = []
        self.fail_after = fail_after

    def _sample_groups(self, prompts, n, seed, *, max_new_tokens, temperature, top_p, stop,
                       logprobs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.seen += prompts
        out = []
        for p in prompts:
            q = p.rsplit("Query: ", 1)[1].split("\n")[0]
            out.append(self.table[q][:n])
        return out


def _table():
    good = lambda ans, t="t": F.render(t, ans)  # noqa: E731
    return {
        "a": [good("1"), good("2", "longer thought"), "junk", good("1", "x")],
        "b": [good("9"), good("9"), good("9"), good("9")],
        "c": ["junk", "<thought>\n", F.render(" ", "1"), "more junk"],
        "d": [good("4"), good("5"), good("6"), good("7")],
    }


def _reward(queries, solutions, refs):
    return [float(s) for s in solutions]  # the solution is a number: its value is its reward


def _builder():
    return BoltPromptBuilder(load_examples(), m=2)


def test_bootstrap_select_and_statistics(tmp_path):
    gen = Canned(_table())
    samples = tmp_path / "s.jsonl"
    stats = bootstrap(list("abcd"), gen, _builder(), _reward, samples, n=4, progress=False,
                      queries_per_call=3)
    assert gen.calls == 2 and stats.samples == 16 and stats.format_kept == 11
    assert stats.format_dropped == {"no_thought_open": 3, "no_thought_close": 1,
                                    "empty_thought": 1}
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["0", "1", "2", "3"]
    assert all(s["reward"] is None for s in lines[2]["samples"])  # malformed: never scored
    chosen, st = select_best(samples, tmp_path / "best.jsonl", percentile=20)
    rewards = sorted([1, 2, 1, 9, 9, 9, 9, 4, 5, 6, 7])
    assert st.threshold == pytest.approx(rewards[2])  # (11 - 1) * 0.2 = 2: the 3rd smallest
    assert st.percentile_dropped == 2 and st.queries_without_sample == 1
    assert {c["query"]: c["solution"] for c in chosen} == {"a": "2", "b": "9", "d": "7"}
    assert chosen[0]["thought"] == "longer thought"
    assert chosen[0]["response"] == F.render("longer thought", "2")
    out = [json.loads(x) for x in (tmp_path / "best.jsonl").read_text().splitlines()]
    assert out == chosen
    _, st2 = select_best(samples, percentile=0, min_reward=8)
    assert st2.threshold == 1 and st2.min_reward_dropped == 7 and st2.queries_kept == 1
    _, st30 = select_best(samples, percentile=30)  # threshold 4 drops all of a's samples
    assert st30.threshold == 4 and st30.percentile_dropped == 3 and st30.queries_kept == 2
    text = "\n".join(st.lines())
    assert "no_thought_open 3" in text and "kept 3 queries" in text


def test_bootstrap_resumes_without_duplicates(tmp_path):
    samples = tmp_path / "s.jsonl"
    gen = Canned(_table(), fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        bootstrap(list("abcd"), gen, _builder(), _reward, samples, n=4, progress=False,
                  queries_per_call=2)
    with open(samples, "a") as f:  # a torn line, as a kill during a write leaves
        f.write('{"id": "2", "que')
    gen2 = Canned(_table())
    stats = bootstrap(list("abcd"), gen2, _builder(), _reward, samples, n=4, progress=False,
                      queries_per_call=2)
    assert stats.skipped == 2 and len(gen2.seen) == 2
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="cannot resume .* n=3"):
        bootstrap(list("abcd"), Canned(_table()), _builder(), _reward, samples, n=3,
                  progress=False)
    other = tmp_path / "notes.jsonl"  # not a file ponder wrote: left alone, with an error
    other.write_text("a note\n")
    with pytest.raises(ValueError, match="not a JSON object"):
        bootstrap(["a"], Canned(_table()), _builder(), _reward, other, n=4, progress=False)
    assert other.read_text() == "a note\n"


def test_bootstrap_checks_reward_output(tmp_path):
    with pytest.raises(ValueError, match="2 scores for 4"):
        bootstrap(["b"], Canned(_table()), _builder(), lambda q, s, r: [1.0, 2.0],
                  tmp_path / "s.jsonl", n=4, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap(["b"], Canned(_table()), _builder(), lambda q, s, r: [float("nan")] * 4,
                  tmp_path / "t.jsonl", n=4, progress=False)


def test_bootstrap_default_stop_is_next_query():
    seen = {}

    class Spy(Canned):
        def _sample_groups(self, prompts, n, seed, **kw):
            seen["stop"] = kw["stop"]
            seen["seed"] = seed
            return super()._sample_groups(prompts, n, seed, **kw)

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        bootstrap([{"query": "a", "id": "x"}], Spy(_table()), _builder(), _reward,
                  f"{d}/s.jsonl", n=2, progress=False)
    assert seen["stop"] == ("\n\nQuery:",) and len(seen["seed"]) == 1


def test_preference_pairs_best_vs_worst():
    pairs = make_preference_pairs(
        ["q1", "q2", "q3"],
        [["a", "b", "c"], ["d", "e"], ["f", "g", "h"]],
        [[0.5, None, 2.0], [1.0, 1.0], [3.0, 1.0, 1.0]])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("c", "b"), ("f", "h")]
    assert pairs[0]["rejected_reward"] is None


# ------------------------------------------------------------------ stages 2 and 3 (tiny models)


def tiny_lm(seed=0, hidden=32):
    """A one-layer Llama over the toy character tokenizer, random init (seeded)."""
    from ponder.toy import make_tokenizer

    tok = make_tokenizer()
    return tiny_llama(seed, vocab=len(tok), hidden=hidden), tok


TOY_FMT = BoltFormat(thought_open="seek\n", thought_close="\nseen\n", solution_open="",
                     solution_close="")


def _completion_logprob(model, tok, prompt, completion):
    """Sum of log p(completion tokens + eos | prompt) under ``model``."""
    p = tok(prompt)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    lp = logits.gather(1, targets[:, None])[:, 0]
    return float(lp[len(p) - 1:].sum())


def test_sft_learns_the_completion_only(tmp_path):
    from ponder.train.bolt import sft

    model, tok = tiny_lm()
    records = [{"query": f"Q: {a}+{b}=?", "thought": f"{a}+{b}={a + b}",
                "solution": f"Answer: {a + b}"} for a, b in [(1, 2), (3, 4), (5, 1), (2, 2)]]
    prompt = "Q: 1+2=?\n\n"
    completion = TOY_FMT.render("1+2=3", "Answer: 3")
    before = _completion_logprob(model, tok, prompt, completion)
    trainer = sft(model, tok, records, tmp_path / "sft", fmt=TOY_FMT,
                  prompt_template="{query}\n\n", learning_rate=2e-2, batch_size=4,
                  max_steps=12, progress=False, save=True)
    batch = next(iter(trainer.get_train_dataloader()))
    mask, ids = batch["labels"] != -100, batch["input_ids"]
    # the prompt carries no loss: the mask starts after "Q: a+b=?\n\n" (and <bos>)
    for row in range(ids.shape[0]):
        text = tok.decode(ids[row][mask[row]])
        assert text.startswith("seek\n") and text.endswith("<eos>") and "Q:" not in text
    after = _completion_logprob(model, tok, prompt, completion)
    assert after > before + 15  # about 30 tokens: from near-uniform to learnt
    assert (tmp_path / "sft" / "model.safetensors").is_file()


def test_dpo_pass_moves_towards_chosen(tmp_path):
    from ponder.train.bolt import _frozen_copy, dpo_pass

    model, tok = tiny_lm(1)
    ref = _frozen_copy(model)
    # an easy preference (a digit that does not depend on the query), learnt in a few steps
    pairs = [{"query": f"Q: {a}+1=?", "chosen": "Answer: 11", "rejected": "Answer: 00"}
             for a in range(1, 9)]

    def margin(m):
        return sum(_completion_logprob(m, tok, p["query"] + "\n\n", p["chosen"])
                   - _completion_logprob(m, tok, p["query"] + "\n\n", p["rejected"])
                   for p in pairs)

    trainer = dpo_pass(model, ref, tok, pairs, tmp_path / "dpo",
                       prompt_template="{query}\n\n", learning_rate=5e-3, batch_size=4,
                       epochs=2, progress=False)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start
    assert losses[-1] < 0.6
    assert margin(model) > margin(ref) + 1.0
    assert margin(ref) == pytest.approx(margin(_frozen_copy(ref)))


def test_online_dpo_loop(tmp_path):
    from ponder.train.bolt import online_dpo

    model, tok = tiny_lm(2)
    answers = {"Q: 1+1=?": "2", "Q: 2+2=?": "4", "Q: 3+3=?": "6"}

    class Samples(TextGenerator):  # well formed, right or wrong, and one malformed
        def _sample_groups(self, prompts, n, seed, **kw):
            out = []
            for p in prompts:
                a = answers[p.strip()]
                out.append([TOY_FMT.render("x", f"Answer: {a}"),
                            TOY_FMT.render("y", "Answer: 0"), "Answer: " + a][:n])
            return out

    seen = []
    history = online_dpo(
        model, tok, [{"query": q, "reference": int(a)} for q, a in answers.items()],
        VerifierReward(lambda ref, s: s == f"Answer: {ref}"), tmp_path / "dpo",
        generator=Samples(), fmt=TOY_FMT, prompt_template="{query}\n\n", iterations=2, n=3,
        learning_rate=1e-3, batch_size=3, progress=False,
        on_iteration=lambda r, m: seen.append(r.iteration))
    assert seen == [0, 1] and len(history) == 2
    h = history[0]
    assert h.samples == 9 and h.format_rate == pytest.approx(6 / 9) and h.pairs == 3
    assert h.mean_reward == pytest.approx(0.5) and len(h.losses) == 1
    assert (tmp_path / "dpo" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="reference must be"):
        online_dpo(model, tok, ["q"], _reward, tmp_path, reference="other")
