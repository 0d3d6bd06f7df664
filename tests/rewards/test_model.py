"""ProcessRewardModel: formats, scores equal to the full-logits computation, batching, errors."""

import pytest
import torch
from ponder.rewards import (
    PRMConvention,
    ProcessRewardModel,
    math_shepherd,
    qwen_math_prm,
    toy_convention,
    value_head,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny():
    from ponder.toy import make_tokenizer
    from ponder.toy.models import _BASE_CONFIG

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{**_BASE_CONFIG, "hidden_size": 32,
                                      "intermediate_size": 64, "num_hidden_layers": 2,
                                      "num_attention_heads": 4, "num_key_value_heads": 2})
    model = transformers.LlamaForCausalLM(cfg).eval()
    return model, make_tokenizer()


QUESTIONS = ["Q: 12+34-5=?", "Q: 7+1=?", "Q: 12+34-5=?\n\n", "Q: 99-9=?"]
STEPS = [["12+34=46", "46-5=41", "Answer: 41"], ["7+1=8"], ["12+34=47", "47-5=42", "Answer: 42"],
         ["99-9=90", "Answer: 90"]]


def test_formats():
    assert math_shepherd().format("What is 2+3?", ["Step 1: 2+3=5", "Step 2: The answer is 5"]) \
        == "What is 2+3? Step 1: 2+3=5 ки\nStep 2: The answer is 5 ки"
    # The prompt form of a question reads the same as the question; tags in steps are removed.
    toy = toy_convention()
    assert toy.format("Q: 2+3=?\n\n", ["2+3=5 ", "Answer: 5"]) == \
        "Q: 2+3=?\n\n2+3=5 k\n\nAnswer: 5 k"
    assert toy.format("Q: 2+3=?", ["2+3k=5"]) == "Q: 2+3=?\n\n2+3 =5 k"
    assert value_head().format("Q", ["a\nb", "c"]) == "Q\na b\nc\n"
    with pytest.raises(ValueError, match="needs tokenizer"):
        qwen_math_prm().format("Q", ["a"])
    with pytest.raises(ValueError, match="kind"):
        PRMConvention("x", "three_label", " k", "k")
    with pytest.raises(ValueError, match="tag_token"):
        PRMConvention("x", "two_label", " k", "z")
    with pytest.raises(TypeError, match="steps"):
        toy.format("Q", "a step")


def _full_logits_scores(model, tok, conv, question, steps):
    """The slow definition: the LM head over every position, then the two label logits at the
    tags, softmax over those two (= sigmoid of their difference)."""
    ids = tok(conv.format(question, steps), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]  # [L, V]
    vocab = tok.get_vocab()
    pos, neg = vocab[conv.positive], vocab[conv.negative]
    at = (ids[0] == vocab[conv.tag_token]).nonzero().flatten()
    two = logits[at][:, [pos, neg]]
    return torch.softmax(two.double(), -1)[:, 0].tolist()


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_scores_equal_full_logits(tiny, batch_size):
    model, tok = tiny
    prm = ProcessRewardModel(model, tok, toy_convention(), batch_size=batch_size)
    got = prm.score(QUESTIONS, STEPS)
    assert [len(s) for s in got] == [len(s) for s in STEPS]
    for q, s, g in zip(QUESTIONS, STEPS, got):
        want = _full_logits_scores(model, tok, toy_convention(), q, s)
        assert g == pytest.approx(want, abs=2e-6)
        assert all(0.0 <= x <= 1.0 for x in g)
    # Aggregates and a candidate without steps.
    assert prm.score(["Q: 1+1=?"], [[]]) == [[]]
    agg = prm.score_aggregate(QUESTIONS, STEPS, "min")
    assert agg == pytest.approx([min(s) for s in got], abs=1e-7)


def test_value_head_and_explicit_two_label_head(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    w, b = torch.randn(32), torch.tensor(0.3)
    conv = PRMConvention("toy-value", "value", " k", "k", "\n\n", "\n\n", None, None)
    prm = ProcessRewardModel(model, tok, conv, head=w, bias=b)
    got = prm.score(QUESTIONS[:2], STEPS[:2])
    for q, s, g in zip(QUESTIONS[:2], STEPS[:2], got):
        ids = tok(conv.format(q, s), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = model.model(input_ids=ids).last_hidden_state[0]
        at = ids[0] == tok.get_vocab()["k"]
        assert g == pytest.approx(torch.sigmoid(h[at] @ w + b).tolist(), abs=2e-6)
    # An explicit [2, H] head equal to the LM head's label rows gives the LM-head scores.
    rows = model.lm_head.weight[[tok.get_vocab()["+"], tok.get_vocab()["-"]]].detach()
    explicit = ProcessRewardModel(model, tok, toy_convention(), head=rows)
    flat = [x for s in explicit.score(QUESTIONS, STEPS) for x in s]
    want = [x for s in ProcessRewardModel(model, tok, toy_convention()).score(QUESTIONS, STEPS)
            for x in s]
    assert flat == pytest.approx(want, abs=1e-7)


def test_errors(tiny):
    model, tok = tiny
    prm = ProcessRewardModel(model, tok, toy_convention())
    with pytest.raises(ValueError, match="2 questions but 1 step lists"):
        prm.score(["a", "b"], [["x"]])
    with pytest.raises(TypeError, match="not a str"):
        prm.score("Q: 1+1=?", [["2"]])
    with pytest.raises(ValueError, match="batch_size"):
        prm.score(["Q"], [["x"]], batch_size=0)
    with pytest.raises(ValueError, match="needs head="):
        ProcessRewardModel(model, tok, value_head())
    with pytest.raises(ValueError, match=r"\[2, H\]"):
        ProcessRewardModel(model, tok, toy_convention(), head=torch.zeros(3, 32))
    with pytest.raises(TypeError, match="PRMConvention"):
        ProcessRewardModel(model, tok, "toy")
    short = ProcessRewardModel(model, tok, toy_convention(), max_length=8)
    with pytest.raises(ValueError, match="max_length=8"):
        short.score(QUESTIONS[:1], STEPS[:1])
