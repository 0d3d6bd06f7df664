"""ponder.toy.retrieval_model: the constructed lookup model answers at every context length."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch
from ponder.toy import make_retrieval
from ponder.toy.retrieval_model import (
    MAX_KEY_DIGITS,
    build_retrieval_model,
    evaluate_retrieval,
)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return build_retrieval_model()


@pytest.mark.parametrize("budget", [40, 300, 2048])
def test_answers_every_lookup(model_and_tokenizer, budget):
    # Chance is 1 in 10 per example; all 12 right by luck has probability 1e-12.
    model, tok = model_and_tokenizer
    examples = make_retrieval(12, context_tokens=budget, seed=budget)
    result = evaluate_retrieval(model, tok, examples, batch_size=4)
    assert result["correct"] == [True] * 12


def test_other_key_widths():
    for digits in (1, 2, MAX_KEY_DIGITS):
        model, tok = build_retrieval_model(digits)
        budget = 60 if digits == 1 else 400  # 1-digit keys: at most 10 pairs
        examples = make_retrieval(8, context_tokens=budget, seed=digits, key_digits=digits)
        assert evaluate_retrieval(model, tok, examples)["accuracy"] == 1.0


def test_the_answer_comes_from_the_cache(model_and_tokenizer):
    # Cutting the queried pair's value out of the cache must break the lookup: the digit is read
    # in a decode step, not computed during prefill.
    model, tok = model_and_tokenizer
    (e,) = make_retrieval(1, context_tokens=300, seed=7)
    at = e.prompt.index(e.key + "=") + len(e.key) + 2  # the value digit's character
    blanked = e.prompt[:at] + "+" + e.prompt[at + 1:]
    enc = tok([blanked], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=0)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:])
    assert text[0] == "v" and text != e.answer


def test_validation():
    with pytest.raises(ValueError, match="key_digits"):
        build_retrieval_model(MAX_KEY_DIGITS + 1)
    with pytest.raises(TypeError, match="key_digits"):
        build_retrieval_model(4.0)
    with pytest.raises(ValueError, match="match_scale"):
        build_retrieval_model(match_scale=0)
    with pytest.raises(ValueError, match="examples"):
        evaluate_retrieval(*build_retrieval_model(), [])
